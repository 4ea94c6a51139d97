//! Applying one committed request to the engine, as etcd's apply chain does.
//!
//! Active alarms come first, as etcd 3.6 orders its appliers (corrupt, then capped, then auth):
//! CORRUPT refuses every KV and lease request, NOSPACE the requests that need space (puts,
//! txns with puts, lease grants). Then the auth check (the header's user and AuthRevision
//! against this member's auth store, for every key the request touches), then the
//! request-specific checks that need state (lease exists, `ignore_*` keys exist, txn range
//! revisions), and only then the writes, so a rejected request changes nothing. The caller owns
//! the redb transaction and the consistent index, and judges the backend quota: see `store`.

use std::time::Instant;

use redb::WriteTransaction;
use thiserror::Error;

use crate::alarm::Alarms;
use crate::api::{
    AlarmType, AuthRequest, Command, CompactionResponse, DeleteRangeRequest, Event, InvalidRequest,
    LeaseGrantResponse, LeaseRevokeResponse, PermissionType, PutRequest, Request, RequestOp,
    Response, ResponseOp, TxnRequest, TxnResponse,
};
use crate::auth::{self, AuthInfo, AuthStore};
use crate::backend;
use crate::lease::{self, Leases};
use crate::mvcc::{self, KvState, KvWriter};
use crate::quota;

/// Why an applied request was refused. Refusals change no data but still advance the applied
/// index, as in etcd.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Malformed request.
    #[error(transparent)]
    Invalid(InvalidRequest),
    /// Refused by the KV store.
    #[error(transparent)]
    Kv(mvcc::Error),
    /// Refused by the lessor.
    #[error(transparent)]
    Lease(lease::Error),
    /// Refused by the auth store.
    #[error(transparent)]
    Auth(auth::Error),
    /// The request needs space and the NOSPACE alarm is active, or this member's backend is
    /// past its quota (the write was then applied all the same, as in etcd).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The CORRUPT alarm is active.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
}

impl ApplyError {
    /// A stable label for metrics (`reason` of the rejection counter).
    pub fn reason(&self) -> &'static str {
        use auth::Error as A;
        match self {
            ApplyError::Invalid(_) => "invalid_request",
            ApplyError::Kv(mvcc::Error::Compacted) => "compacted",
            ApplyError::Kv(mvcc::Error::FutureRev) => "future_revision",
            ApplyError::Kv(mvcc::Error::KeyNotFound) => "key_not_found",
            ApplyError::Kv(_) => "kv",
            ApplyError::Lease(lease::Error::NotFound) => "lease_not_found",
            ApplyError::Lease(_) => "lease",
            ApplyError::Auth(A::OldRevision) => "auth_old_revision",
            ApplyError::Auth(A::PermissionDenied) => "permission_denied",
            ApplyError::Auth(A::UserEmpty) => "user_empty",
            ApplyError::Auth(_) => "auth",
            ApplyError::NoSpace => "no_space",
            ApplyError::Corrupt => "corrupt",
        }
    }
}

/// Either a refusal to report to the client, or a storage failure that stops applying.
pub(crate) enum Failure {
    Rejected(ApplyError),
    Storage(backend::Error),
}

impl From<backend::Error> for Failure {
    fn from(e: backend::Error) -> Self {
        Failure::Storage(e)
    }
}

impl From<InvalidRequest> for Failure {
    fn from(e: InvalidRequest) -> Self {
        Failure::Rejected(ApplyError::Invalid(e))
    }
}

impl From<mvcc::Error> for Failure {
    fn from(e: mvcc::Error) -> Self {
        match e {
            mvcc::Error::Backend(b) => Failure::Storage(b),
            mvcc::Error::Invalid(i) => Failure::Rejected(ApplyError::Invalid(i)),
            other => Failure::Rejected(ApplyError::Kv(other)),
        }
    }
}

impl From<lease::Error> for Failure {
    fn from(e: lease::Error) -> Self {
        match e {
            lease::Error::Backend(b) => Failure::Storage(b),
            other => Failure::Rejected(ApplyError::Lease(other)),
        }
    }
}

impl From<auth::Error> for Failure {
    fn from(e: auth::Error) -> Self {
        match e {
            auth::Error::Backend(b) => Failure::Storage(b),
            other => Failure::Rejected(ApplyError::Auth(other)),
        }
    }
}

/// The engine's in-memory state, next to its tables.
pub(crate) struct Engine {
    pub(crate) kv: KvState,
    pub(crate) leases: Leases,
    pub(crate) auth: AuthStore,
    pub(crate) alarms: Alarms,
}

/// Settings every member must share, since they shape applied results.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) min_lease_ttl: i64,
    pub(crate) max_txn_ops: usize,
}

impl Engine {
    /// Applies `cmd` inside `txn`, returning its response and the KV events it caused.
    pub(crate) fn apply(
        &mut self,
        txn: &WriteTransaction,
        limits: Limits,
        cmd: &Command,
        now: Instant,
    ) -> Result<(Response, Vec<Event>), Failure> {
        self.check_alarms(&cmd.request).map_err(Failure::Rejected)?;
        let info = AuthInfo {
            username: cmd.header.username.clone(),
            revision: cmd.header.auth_revision,
        };
        match &cmd.request {
            Request::Range(r) => {
                r.validate()?;
                self.auth
                    .check_op(&info, &r.key, &r.range_end, PermissionType::Read)?;
                let w = KvWriter::new(txn, &mut self.kv)?;
                Ok((Response::Range(w.range(r)?), Vec::new()))
            }
            Request::Put(p) => {
                p.validate()?;
                self.check_put(&info, p)?;
                if p.lease != 0 && !self.leases.exists(p.lease) {
                    return Err(lease::Error::NotFound.into());
                }
                let mut w = KvWriter::new(txn, &mut self.kv)?;
                let resp = w.put(p)?;
                Ok((Response::Put(resp), finish(&mut self.leases, w)))
            }
            Request::DeleteRange(d) => {
                d.validate()?;
                self.check_delete(&info, d)?;
                let mut w = KvWriter::new(txn, &mut self.kv)?;
                let resp = w.delete_range(d)?;
                Ok((Response::DeleteRange(resp), finish(&mut self.leases, w)))
            }
            Request::Txn(t) => {
                t.validate(limits.max_txn_ops)?;
                self.check_txn_auth(&info, t)?;
                let mut w = KvWriter::new(txn, &mut self.kv)?;
                let mut path = Vec::new();
                compare_path(&w, t, &mut path)?;
                check_txn_ops(&w, &self.leases, t, &path, &mut 0)?;
                let resp = run_txn(&mut w, t, &path, &mut 0)?;
                Ok((Response::Txn(resp), finish(&mut self.leases, w)))
            }
            Request::Compaction(c) => {
                mvcc::compact(txn, &mut self.kv, c.revision)?;
                Ok((
                    Response::Compaction(CompactionResponse {
                        revision: self.kv.current,
                    }),
                    Vec::new(),
                ))
            }
            Request::LeaseGrant(g) => {
                let lease = self.leases.grant(txn, g, limits.min_lease_ttl)?;
                let resp = LeaseGrantResponse {
                    revision: self.kv.current,
                    id: lease.id,
                    ttl: lease.ttl,
                };
                Ok((Response::LeaseGrant(resp), Vec::new()))
            }
            Request::LeaseRevoke(r) => {
                let keys = self
                    .leases
                    .get(r.id)
                    .ok_or(lease::Error::NotFound)?
                    .keys
                    .clone();
                self.check_lease_puts(&info, r.id)?;
                let mut w = KvWriter::new(txn, &mut self.kv)?;
                for key in keys {
                    w.delete_range(&DeleteRangeRequest {
                        key,
                        range_end: Vec::new(),
                        prev_kv: false,
                    })?;
                }
                let revision = w.now();
                let events = finish(&mut self.leases, w);
                self.leases.remove(txn, r.id)?;
                Ok((
                    Response::LeaseRevoke(LeaseRevokeResponse { revision }),
                    events,
                ))
            }
            Request::Auth(a) => {
                if !matches!(a, AuthRequest::Authenticate { .. }) {
                    self.auth.check_admin(&info)?;
                }
                let resp = match self.auth.apply(txn, a, now)? {
                    auth::Applied::Token(token) => Response::Authenticate { token },
                    auth::Applied::Done => Response::Auth {
                        revision: self.kv.current,
                    },
                };
                Ok((resp, Vec::new()))
            }
            // etcd checks the caller's permission for alarms before proposing, not at apply:
            // members raise their own alarms without a user.
            Request::Alarm(a) => Ok((Response::Alarm(self.alarms.apply(txn, a)?), Vec::new())),
        }
    }

    /// What the active alarms refuse (etcd's corrupt and capped appliers).
    fn check_alarms(&self, request: &Request) -> Result<(), ApplyError> {
        if self.alarms.is_active(AlarmType::Corrupt)
            && matches!(
                request,
                Request::Range(_)
                    | Request::Put(_)
                    | Request::DeleteRange(_)
                    | Request::Txn(_)
                    | Request::Compaction(_)
                    | Request::LeaseGrant(_)
                    | Request::LeaseRevoke(_)
            )
        {
            return Err(ApplyError::Corrupt);
        }
        if self.alarms.is_active(AlarmType::NoSpace) && quota::cost(request) > 0 {
            return Err(ApplyError::NoSpace);
        }
        Ok(())
    }

    /// etcd's `authApplierV3.Put`: write access to the key, to every key already on the lease
    /// (so nobody attaches keys to a lease they could not revoke), read access for `prev_kv`.
    fn check_put(&self, info: &AuthInfo, p: &PutRequest) -> Result<(), auth::Error> {
        self.auth
            .check_op(info, &p.key, &[], PermissionType::Write)?;
        self.check_lease_puts(info, p.lease)?;
        if p.prev_kv {
            self.auth
                .check_op(info, &p.key, &[], PermissionType::Read)?;
        }
        Ok(())
    }

    fn check_delete(&self, info: &AuthInfo, d: &DeleteRangeRequest) -> Result<(), auth::Error> {
        self.auth
            .check_op(info, &d.key, &d.range_end, PermissionType::Write)?;
        if d.prev_kv {
            self.auth
                .check_op(info, &d.key, &d.range_end, PermissionType::Read)?;
        }
        Ok(())
    }

    fn check_lease_puts(&self, info: &AuthInfo, id: i64) -> Result<(), auth::Error> {
        if !self.auth.enabled() {
            return Ok(());
        }
        if let Some(lease) = self.leases.get(id) {
            for key in &lease.keys {
                self.auth.check_op(info, key, &[], PermissionType::Write)?;
            }
        }
        Ok(())
    }

    /// Every compare needs read access, every operation of both branches (nested txns
    /// included) its own access.
    pub(crate) fn check_txn_auth(
        &self,
        info: &AuthInfo,
        t: &TxnRequest,
    ) -> Result<(), auth::Error> {
        for c in &t.compare {
            self.auth
                .check_op(info, &c.key, &c.range_end, PermissionType::Read)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                RequestOp::Range(r) => {
                    self.auth
                        .check_op(info, &r.key, &r.range_end, PermissionType::Read)?
                }
                RequestOp::Put(p) => self.check_put(info, p)?,
                RequestOp::DeleteRange(d) => self.check_delete(info, d)?,
                RequestOp::Txn(n) => self.check_txn_auth(info, n)?,
            }
        }
        Ok(())
    }
}

/// Ends a KV write and keeps lease attachments in step with what it changed.
fn finish(leases: &mut Leases, w: KvWriter<'_, '_>) -> Vec<Event> {
    let events = w.finish();
    leases.observe(&events);
    events
}

/// Evaluates the compares of `t` and of every nested txn on the chosen path, all against the
/// state before the txn writes anything (etcd's `compareToPath`).
fn compare_path(w: &KvWriter<'_, '_>, t: &TxnRequest, path: &mut Vec<bool>) -> Result<(), Failure> {
    let mut ok = true;
    for c in &t.compare {
        if !w.compare(c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let RequestOp::Txn(nested) = op {
            compare_path(w, nested, path)?;
        }
    }
    Ok(())
}

/// Refuses, before any write, what would fail half-way (etcd's `checkRequests`).
fn check_txn_ops(
    w: &KvWriter<'_, '_>,
    leases: &Leases,
    t: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<(), Failure> {
    let ok = path[*pos];
    *pos += 1;
    for op in if ok { &t.success } else { &t.failure } {
        match op {
            RequestOp::Put(p) => {
                if (p.ignore_value || p.ignore_lease) && w.get(&p.key)?.is_none() {
                    return Err(mvcc::Error::KeyNotFound.into());
                }
                if p.lease != 0 && !leases.exists(p.lease) {
                    return Err(lease::Error::NotFound.into());
                }
            }
            RequestOp::Range(r) => w.check_range(r)?,
            RequestOp::Txn(nested) => check_txn_ops(w, leases, nested, path, pos)?,
            RequestOp::DeleteRange(_) => {}
        }
    }
    Ok(())
}

fn run_txn(
    w: &mut KvWriter<'_, '_>,
    t: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse, Failure> {
    let succeeded = path[*pos];
    *pos += 1;
    let mut responses = Vec::new();
    for op in if succeeded { &t.success } else { &t.failure } {
        responses.push(match op {
            RequestOp::Range(r) => ResponseOp::Range(w.range(r)?),
            RequestOp::Put(p) => ResponseOp::Put(w.put(p)?),
            RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(w.delete_range(d)?),
            RequestOp::Txn(nested) => ResponseOp::Txn(run_txn(w, nested, path, pos)?),
        });
    }
    Ok(TxnResponse {
        revision: w.now(),
        succeeded,
        responses,
    })
}
