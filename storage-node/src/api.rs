//! The engine's request and response values.
//!
//! They mirror etcd's `etcdserverpb`, `mvccpb` and `authpb` messages field for field (names and
//! meaning), without any wire format: the gRPC layer converts protobuf messages to and from these
//! in one place. A raft log entry carries a [`Command`]: the header the proposing member filled
//! in (user, the AuthRevision it checked against) and one [`Request`].
//!
//! Request validation that etcd performs before proposing (empty keys, conflicting flags,
//! duplicate keys in a txn) lives here too, so the server and the applier share one definition.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A key-value pair as stored and returned (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the put that created the key (in its current life).
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// Number of modifications since creation; 0 for a deleted key.
    pub version: i64,
    /// The value.
    pub value: Vec<u8>,
    /// ID of the lease the key is attached to, 0 when none.
    pub lease: i64,
}

/// What changed at one revision, as Watch reports it (etcd's `mvccpb.Event`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` are set.
    pub kv: KeyValue,
    /// The key before the change, when it existed.
    pub prev_kv: Option<KeyValue>,
}

/// The kind of an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A key was written.
    Put,
    /// A key was deleted.
    Delete,
}

/// Who proposed a request and against which AuthRevision its permissions were checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    /// Request ID chosen by the proposer.
    pub id: u64,
    /// Authenticated user; empty when auth is off or the caller is anonymous.
    pub username: String,
    /// The proposer's AuthRevision when it resolved the caller's token; 0 without auth.
    pub auth_revision: u64,
}

/// The payload of one normal raft entry (etcd's `InternalRaftRequest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Proposer's header.
    pub header: RequestHeader,
    /// The operation.
    pub request: Request,
}

/// Every operation that goes through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// A linearizable read (etcd applies these when they go through raft).
    Range(RangeRequest),
    /// Write one key.
    Put(PutRequest),
    /// Delete a key or a range.
    DeleteRange(DeleteRangeRequest),
    /// Conditional multi-operation transaction.
    Txn(TxnRequest),
    /// Discard history below a revision.
    Compaction(CompactionRequest),
    /// Create a lease.
    LeaseGrant(LeaseGrantRequest),
    /// Revoke a lease, deleting the keys attached to it.
    LeaseRevoke(LeaseRevokeRequest),
    /// An auth store operation.
    Auth(AuthRequest),
    /// List, raise or clear an alarm (etcd's `AlarmRequest`, applied like any entry).
    Alarm(AlarmRequest),
}

impl Request {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Range(_) => "range",
            Request::Put(_) => "put",
            Request::DeleteRange(_) => "delete_range",
            Request::Txn(_) => "txn",
            Request::Compaction(_) => "compaction",
            Request::LeaseGrant(_) => "lease_grant",
            Request::LeaseRevoke(_) => "lease_revoke",
            Request::Auth(_) => "auth",
            Request::Alarm(_) => "alarm",
        }
    }

    /// Whether this is an auth operation (the kind etcd before PR 11652 applied without
    /// persisting the consistent index).
    pub fn is_auth(&self) -> bool {
        matches!(self, Request::Auth(_))
    }
}

/// Sort order of a range (etcd's `RangeRequest.SortOrder`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (the store's natural order).
    #[default]
    None,
    /// Ascending by the target.
    Ascend,
    /// Descending by the target.
    Descend,
}

/// Field a range is sorted by (etcd's `RangeRequest.SortTarget`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// Read keys (etcd's `RangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key; with an empty `range_end`, the only key.
    pub key: Vec<u8>,
    /// Exclusive end; empty for a single key, `[0]` for every key from `key` on.
    pub range_end: Vec<u8>,
    /// Maximum number of keys returned; 0 for no limit.
    pub limit: i64,
    /// Revision to read at; 0 or less for the current one.
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort field.
    pub sort_target: SortTarget,
    /// Served from the local member without a quorum read.
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Lower bound on mod revision (0: none).
    pub min_mod_revision: i64,
    /// Upper bound on mod revision (0: none).
    pub max_mod_revision: i64,
    /// Lower bound on create revision (0: none).
    pub min_create_revision: i64,
    /// Upper bound on create revision (0: none).
    pub max_create_revision: i64,
}

/// Result of a range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// Store revision when the range was served.
    pub revision: i64,
    /// Matching pairs (empty for count-only).
    pub kvs: Vec<KeyValue>,
    /// More keys match than `limit` let through.
    pub more: bool,
    /// Number of keys in the range at the read revision.
    pub count: i64,
}

/// Write a key (etcd's `PutRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    /// Return the previous pair.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// Result of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// Store revision after the put.
    pub revision: i64,
    /// Previous pair, when asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// Delete keys (etcd's `DeleteRangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// First key; with an empty `range_end`, the only key.
    pub key: Vec<u8>,
    /// Exclusive end, as in [`RangeRequest`].
    pub range_end: Vec<u8>,
    /// Return the deleted pairs.
    pub prev_kv: bool,
}

/// Result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Store revision after the delete.
    pub revision: i64,
    /// Number of keys deleted.
    pub deleted: i64,
    /// Deleted pairs, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// One operation inside a txn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A range.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// The result of one txn operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// Result of a range.
    Range(RangeResponse),
    /// Result of a put.
    Put(PutResponse),
    /// Result of a delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a nested txn.
    Txn(TxnResponse),
}

/// How a compare relates the stored field to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// `==`
    Equal,
    /// `>`
    Greater,
    /// `<`
    Less,
    /// `!=`
    NotEqual,
}

/// The field a compare looks at, with the value compared against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version.
    Version(i64),
    /// The key's create revision.
    Create(i64),
    /// The key's mod revision.
    Mod(i64),
    /// The key's value.
    Value(Vec<u8>),
    /// The key's lease.
    Lease(i64),
}

/// One guard of a txn (etcd's `Compare`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// Relation.
    pub result: CompareResult,
    /// Field and value.
    pub target: CompareTarget,
    /// Key compared.
    pub key: Vec<u8>,
    /// Compare every key in `[key, range_end)` when set.
    pub range_end: Vec<u8>,
}

/// Conditional transaction (etcd's `TxnRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// Guards; all must hold for `success` to run.
    pub compare: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Operations run otherwise.
    pub failure: Vec<RequestOp>,
}

/// Result of a txn.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Store revision after the txn.
    pub revision: i64,
    /// Whether the compares held.
    pub succeeded: bool,
    /// One result per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// Compact history (etcd's `CompactionRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRequest {
    /// Revisions below this one are discarded.
    pub revision: i64,
    /// Accepted for compatibility: compaction here always completes before the response.
    pub physical: bool,
}

/// Result of a compaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionResponse {
    /// Store revision.
    pub revision: i64,
}

/// Create a lease (etcd's `LeaseGrantRequest`; the proposer picks the ID when the client
/// leaves it 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// Time to live in seconds.
    pub ttl: i64,
    /// Lease ID (non-zero once proposed).
    pub id: i64,
}

/// Result of a lease grant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    /// Store revision.
    pub revision: i64,
    /// Lease ID.
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
}

/// Revoke a lease (etcd's `LeaseRevokeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeRequest {
    /// Lease ID.
    pub id: i64,
}

/// Result of a lease revoke.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    /// Store revision after the attached keys were deleted.
    pub revision: i64,
}

/// Kind of access a permission grants (etcd's `authpb.Permission.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PermissionType {
    /// Range reads.
    Read,
    /// Puts and deletes.
    Write,
    /// Both.
    ReadWrite,
}

impl PermissionType {
    /// Whether this grant allows `access`.
    pub fn allows(self, access: PermissionType) -> bool {
        self == PermissionType::ReadWrite || self == access
    }
}

/// A key-range permission held by a role (etcd's `authpb.Permission`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Permission {
    /// Access granted.
    pub perm_type: PermissionType,
    /// First key.
    pub key: Vec<u8>,
    /// Exclusive end; empty for the single key, `[0]` for every key from `key` on.
    pub range_end: Vec<u8>,
}

/// Auth store operations that go through the log.
///
/// Passwords arrive hashed: the proposer hashes them (bcrypt is slow and salted, so hashing at
/// apply would cost every member the work and give each a different hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRequest {
    /// Turn authentication on (needs user `root` with role `root`).
    Enable,
    /// Turn authentication off.
    Disable,
    /// Register a token for a user whose password the proposer already checked.
    Authenticate {
        /// User name.
        name: String,
        /// Token chosen by the proposer.
        simple_token: String,
    },
    /// Create a user.
    UserAdd {
        /// User name.
        name: String,
        /// bcrypt hash; `None` for a user that cannot log in with a password.
        hashed_password: Option<String>,
    },
    /// Delete a user.
    UserDelete {
        /// User name.
        name: String,
    },
    /// Set a user's password.
    UserChangePassword {
        /// User name.
        name: String,
        /// New bcrypt hash.
        hashed_password: String,
    },
    /// Give a user a role.
    UserGrantRole {
        /// User name.
        user: String,
        /// Role name.
        role: String,
    },
    /// Take a role from a user.
    UserRevokeRole {
        /// User name.
        name: String,
        /// Role name.
        role: String,
    },
    /// Create a role.
    RoleAdd {
        /// Role name.
        name: String,
    },
    /// Delete a role (and revoke it from every user).
    RoleDelete {
        /// Role name.
        role: String,
    },
    /// Add or change a key-range permission of a role.
    RoleGrantPermission {
        /// Role name.
        name: String,
        /// The permission.
        perm: Permission,
    },
    /// Remove a key-range permission from a role.
    RoleRevokePermission {
        /// Role name.
        role: String,
        /// First key of the permission.
        key: Vec<u8>,
        /// Range end of the permission.
        range_end: Vec<u8>,
    },
}

/// A condition a member raises for the whole cluster (etcd's `AlarmType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmType {
    /// No alarm; in a request, every alarm.
    None,
    /// The backend reached its quota: writes that need space are refused.
    NoSpace,
    /// The member's data was found to differ from its peers': KV and lease requests are
    /// refused.
    Corrupt,
}

impl AlarmType {
    /// etcd's name for the alarm, as its text formats print it.
    pub fn name(self) -> &'static str {
        match self {
            AlarmType::None => "NONE",
            AlarmType::NoSpace => "NOSPACE",
            AlarmType::Corrupt => "CORRUPT",
        }
    }
}

/// What an alarm request does (etcd's `AlarmRequest.AlarmAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    /// List the active alarms of a type (all of them for [`AlarmType::None`]).
    Get,
    /// Raise an alarm for a member.
    Activate,
    /// Clear a member's alarm.
    Deactivate,
}

/// List, raise or clear alarms (etcd's `AlarmRequest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmRequest {
    /// What to do.
    pub action: AlarmAction,
    /// The member the alarm is about (ignored by [`AlarmAction::Get`]).
    pub member_id: u64,
    /// The alarm; [`AlarmType::None`] lists every alarm and activates nothing.
    pub alarm: AlarmType,
}

/// One active alarm (etcd's `AlarmMember`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    /// The member that raised it.
    pub member_id: u64,
    /// The alarm.
    pub alarm: AlarmType,
}

/// Result of an alarm request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmResponse {
    /// For a get, the matching alarms; otherwise the alarm raised or cleared, if that
    /// changed anything.
    pub alarms: Vec<AlarmMember>,
}

/// What an applied request returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Result of a range.
    Range(RangeResponse),
    /// Result of a put.
    Put(PutResponse),
    /// Result of a delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a txn.
    Txn(TxnResponse),
    /// Result of a compaction.
    Compaction(CompactionResponse),
    /// Result of a lease grant.
    LeaseGrant(LeaseGrantResponse),
    /// Result of a lease revoke.
    LeaseRevoke(LeaseRevokeResponse),
    /// An auth operation completed; `revision` is the KV store revision (the response header).
    Auth {
        /// Store revision.
        revision: i64,
    },
    /// A token was registered.
    Authenticate {
        /// The token.
        token: String,
    },
    /// Result of an alarm request.
    Alarm(AlarmResponse),
}

/// A request etcd would refuse before proposing it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidRequest {
    /// A key-based request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// Two writes of one txn branch touch the same key.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A txn branch or compare list is longer than allowed.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
}

/// Most operations etcd accepts in one txn branch (its `--max-txn-ops` default).
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

impl RangeRequest {
    /// Checks the request as etcd does before serving it.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        if self.key.is_empty() {
            return Err(InvalidRequest::EmptyKey);
        }
        Ok(())
    }
}

impl PutRequest {
    /// Checks the request as etcd does before proposing it.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        if self.key.is_empty() {
            return Err(InvalidRequest::EmptyKey);
        }
        if self.ignore_value && !self.value.is_empty() {
            return Err(InvalidRequest::ValueProvided);
        }
        if self.ignore_lease && self.lease != 0 {
            return Err(InvalidRequest::LeaseProvided);
        }
        Ok(())
    }
}

impl DeleteRangeRequest {
    /// Checks the request as etcd does before proposing it.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        if self.key.is_empty() {
            return Err(InvalidRequest::EmptyKey);
        }
        Ok(())
    }
}

impl TxnRequest {
    /// Checks every operation (recursively), the branch sizes, and that no two writes of a
    /// branch touch the same key, as etcd does before proposing.
    pub fn validate(&self, max_ops: usize) -> Result<(), InvalidRequest> {
        if self.compare.len() > max_ops
            || self.success.len() > max_ops
            || self.failure.len() > max_ops
        {
            return Err(InvalidRequest::TooManyOps);
        }
        for op in self.success.iter().chain(&self.failure) {
            match op {
                RequestOp::Range(r) => r.validate()?,
                RequestOp::Put(p) => p.validate()?,
                RequestOp::DeleteRange(d) => d.validate()?,
                RequestOp::Txn(t) => t.validate(max_ops)?,
            }
        }
        branch_writes(&self.success)?;
        branch_writes(&self.failure)?;
        Ok(())
    }

    /// Whether neither branch writes, nested txns included (etcd's `isTxnReadonly`): such a
    /// txn is served from a member's state, not proposed.
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|op| match op {
            RequestOp::Range(_) => true,
            RequestOp::Txn(t) => t.is_read_only(),
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
        })
    }

    /// Whether every operation is a serializable range (etcd's `isTxnSerializable`): such a
    /// txn needs no read point. A nested txn makes it linearizable, as in etcd.
    pub fn is_serializable(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(|op| matches!(op, RequestOp::Range(r) if r.serializable))
    }
}

/// A half-open key interval; `end == None` means unbounded.
#[derive(Clone, Debug)]
pub(crate) struct KeyInterval {
    pub(crate) start: Vec<u8>,
    pub(crate) end: Option<Vec<u8>>,
}

impl KeyInterval {
    /// The interval a (key, range_end) pair names, with etcd's conventions.
    pub(crate) fn of(key: &[u8], range_end: &[u8]) -> KeyInterval {
        let end = match range_end {
            [] => Some(successor(key)),
            [0] => None,
            end => Some(end.to_vec()),
        };
        KeyInterval {
            start: key.to_vec(),
            end,
        }
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// The smallest key greater than `key`.
pub(crate) fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// Deleted key ranges as disjoint intervals ordered by start, so that asking whether a key is
/// deleted costs one ordered lookup however many deletes a txn holds.
#[derive(Default)]
struct DeletedRanges {
    /// start → end (`None`: unbounded); intervals neither overlap nor touch.
    by_start: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl DeletedRanges {
    /// Adds `interval`, merging it with every interval it overlaps or touches.
    fn insert(&mut self, interval: KeyInterval) {
        let KeyInterval { mut start, mut end } = interval;
        if end.as_deref().is_some_and(|e| e <= start.as_slice()) {
            return; // empty: deletes nothing
        }
        let reaches = |end: &Option<Vec<u8>>, key: &[u8]| end.as_deref().is_none_or(|e| e >= key);
        let later = |a: Option<Vec<u8>>, b: Option<Vec<u8>>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let before = self.by_start.range(..=start.clone()).next_back();
        if let Some((s, _)) = before.filter(|(_, e)| reaches(e, &start)) {
            let s = s.clone();
            let e = self.by_start.remove(&s).flatten();
            end = later(end, e);
            start = s;
        }
        loop {
            let next = self.by_start.range(start.clone()..).next();
            let Some((s, _)) = next.filter(|(s, _)| reaches(&end, s)) else {
                break;
            };
            let s = s.clone();
            let e = self.by_start.remove(&s).flatten();
            end = later(end, e);
        }
        self.by_start.insert(start, end);
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.by_start
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, end)| end.as_deref().is_none_or(|e| key < e))
    }

    fn extend(&mut self, other: DeletedRanges) {
        for (start, end) in other.by_start {
            self.insert(KeyInterval { start, end });
        }
    }
}

/// The keys put and the ranges deleted by one txn branch, nested txns included; fails when a
/// put overlaps another put or a delete of the same branch (etcd's `checkIntervals`). Every
/// check is a hash or ordered lookup, so a request of many operations or deep nesting costs
/// about its size, not its size squared.
fn branch_writes(ops: &[RequestOp]) -> Result<(HashSet<&[u8]>, DeletedRanges), InvalidRequest> {
    let mut dels = DeletedRanges::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            dels.insert(KeyInterval::of(&d.key, &d.range_end));
        }
    }
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        let RequestOp::Txn(txn) = op else { continue };
        let (then_puts, then_dels) = branch_writes(&txn.success)?;
        let (else_puts, else_dels) = branch_writes(&txn.failure)?;
        for &key in &then_puts {
            if puts.contains(key) || dels.contains(key) {
                return Err(InvalidRequest::DuplicateKey);
            }
        }
        for &key in &else_puts {
            // A key put by both branches of one nested txn is fine: only one branch runs.
            let clash = puts.contains(key) && !then_puts.contains(key);
            if clash || dels.contains(key) {
                return Err(InvalidRequest::DuplicateKey);
            }
        }
        puts.extend(then_puts);
        puts.extend(else_puts);
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if dels.contains(&p.key) || !puts.insert(&p.key) {
            return Err(InvalidRequest::DuplicateKey);
        }
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: key.into(),
            ..Default::default()
        })
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: false,
        })
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn put_without_key_is_refused() {
        assert_eq!(
            PutRequest::default().validate(),
            Err(InvalidRequest::EmptyKey)
        );
    }

    #[test]
    fn ignore_value_with_a_value_is_refused() {
        let p = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(p.validate(), Err(InvalidRequest::ValueProvided));
        let p = PutRequest {
            key: b"k".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(p.validate(), Err(InvalidRequest::LeaseProvided));
    }

    #[test]
    fn txn_with_two_puts_of_one_key_is_refused() {
        let t = txn(vec![put("a"), put("a")], vec![]);
        assert_eq!(
            t.validate(DEFAULT_MAX_TXN_OPS),
            Err(InvalidRequest::DuplicateKey)
        );
    }

    #[test]
    fn txn_putting_a_deleted_key_is_refused() {
        let t = txn(vec![del("a", "c"), put("b")], vec![]);
        assert_eq!(
            t.validate(DEFAULT_MAX_TXN_OPS),
            Err(InvalidRequest::DuplicateKey)
        );
        let t = txn(
            vec![put("b"), RequestOp::Txn(txn(vec![del("b", "")], vec![]))],
            vec![],
        );
        assert_eq!(
            t.validate(DEFAULT_MAX_TXN_OPS),
            Err(InvalidRequest::DuplicateKey)
        );
    }

    #[test]
    fn txn_branches_may_write_the_same_key() {
        let t = txn(vec![put("a")], vec![put("a")]);
        assert_eq!(t.validate(DEFAULT_MAX_TXN_OPS), Ok(()));
        let nested = RequestOp::Txn(txn(vec![put("x")], vec![put("x")]));
        assert_eq!(
            txn(vec![nested], vec![]).validate(DEFAULT_MAX_TXN_OPS),
            Ok(())
        );
        let t = txn(vec![del("a", ""), del("a", "z")], vec![]);
        assert_eq!(
            t.validate(DEFAULT_MAX_TXN_OPS),
            Ok(()),
            "overlapping deletes are allowed"
        );
    }

    #[test]
    fn txn_longer_than_the_limit_is_refused() {
        let t = txn(vec![put("a"), put("b"), put("c")], vec![]);
        assert_eq!(t.validate(2), Err(InvalidRequest::TooManyOps));
    }

    #[test]
    fn key_interval_follows_etcd_conventions() {
        let single = KeyInterval::of(b"a", b"");
        assert!(single.contains(b"a") && !single.contains(b"a\0") && !single.contains(b"b"));
        let from = KeyInterval::of(b"b", b"\0");
        assert!(from.contains(b"zzz") && !from.contains(b"a"));
        let range = KeyInterval::of(b"a", b"c");
        assert!(range.contains(b"b") && !range.contains(b"c"));
    }

    /// etcd's `checkIntervals` written plainly (every check a scan), the model for the
    /// ordered-lookup version.
    fn model_writes(ops: &[RequestOp]) -> Option<(Vec<Vec<u8>>, Vec<KeyInterval>)> {
        let mut dels: Vec<KeyInterval> = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::DeleteRange(d) => Some(KeyInterval::of(&d.key, &d.range_end)),
                _ => None,
            })
            .collect();
        let deleted = |dels: &[KeyInterval], key: &[u8]| dels.iter().any(|d| d.contains(key));
        let mut puts: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            let RequestOp::Txn(t) = op else { continue };
            let (then_puts, then_dels) = model_writes(&t.success)?;
            let (else_puts, else_dels) = model_writes(&t.failure)?;
            for k in &then_puts {
                if puts.contains(k) || deleted(&dels, k) {
                    return None;
                }
            }
            for k in &else_puts {
                if (puts.contains(k) && !then_puts.contains(k)) || deleted(&dels, k) {
                    return None;
                }
            }
            puts.extend(then_puts);
            puts.extend(else_puts);
            dels.extend(then_dels);
            dels.extend(else_dels);
        }
        for op in ops {
            let RequestOp::Put(p) = op else { continue };
            if puts.contains(&p.key) || deleted(&dels, &p.key) {
                return None;
            }
            puts.push(p.key.clone());
        }
        Some((puts, dels))
    }

    fn ops_strategy() -> impl proptest::strategy::Strategy<Value = Vec<RequestOp>> {
        use proptest::prelude::*;
        // A key space of four letters, so clashes are common.
        let key = || "[a-d]{1,2}".prop_map(String::into_bytes);
        let leaf = prop_oneof![
            key().prop_map(|key| {
                RequestOp::Put(PutRequest {
                    key,
                    ..Default::default()
                })
            }),
            (key(), prop_oneof![Just(Vec::new()), Just(vec![0]), key()]).prop_map(
                |(key, range_end)| RequestOp::DeleteRange(DeleteRangeRequest {
                    key,
                    range_end,
                    ..Default::default()
                })
            ),
        ];
        let op = leaf.prop_recursive(3, 24, 4, |inner| {
            (
                proptest::collection::vec(inner.clone(), 0..4),
                proptest::collection::vec(inner, 0..4),
            )
                .prop_map(|(success, failure)| {
                    RequestOp::Txn(TxnRequest {
                        success,
                        failure,
                        ..Default::default()
                    })
                })
        });
        proptest::collection::vec(op, 0..6)
    }

    proptest::proptest! {
        #[test]
        fn duplicate_key_check_agrees_with_etcds_model(ops in ops_strategy()) {
            let fast = branch_writes(&ops).map(|(puts, _)| {
                let mut puts: Vec<Vec<u8>> = puts.into_iter().map(<[u8]>::to_vec).collect();
                puts.sort();
                puts
            });
            // The model lists a key put by both branches of a nested txn twice.
            let model = model_writes(&ops).map(|(mut puts, _)| {
                puts.sort();
                puts.dedup();
                puts
            });
            proptest::prop_assert_eq!(fast.ok(), model);
        }

        #[test]
        fn merged_deletes_contain_what_the_intervals_do(
            intervals in proptest::collection::vec(
                ("[a-d]{1,2}", "[a-d]{0,2}", proptest::bool::ANY), 0..8),
            probe in "[a-d]{0,3}",
        ) {
            let mut merged = DeletedRanges::default();
            let mut plain = Vec::new();
            for (key, end, unbounded) in &intervals {
                let end: &[u8] = if *unbounded { &[0] } else { end.as_bytes() };
                let interval = KeyInterval::of(key.as_bytes(), end);
                plain.push(interval.clone());
                merged.insert(interval);
            }
            let expected = plain.iter().any(|i| i.contains(probe.as_bytes()));
            proptest::prop_assert_eq!(merged.contains(probe.as_bytes()), expected);
        }
    }

    #[test]
    fn many_distinct_puts_in_nested_txns_are_accepted_and_one_repeat_is_not() {
        // 64 nested txns of 1000 puts each: 64 000 keys, all distinct.
        let nested = |n: usize| {
            RequestOp::Txn(txn(
                (0..1000).map(|i| put(&format!("k{n}-{i}"))).collect(),
                Vec::new(),
            ))
        };
        let mut request = txn((0..64).map(nested).collect(), Vec::new());
        assert_eq!(request.validate(usize::MAX), Ok(()));
        request.success.push(put("k63-999"));
        assert_eq!(
            request.validate(usize::MAX),
            Err(InvalidRequest::DuplicateKey)
        );
    }
}
