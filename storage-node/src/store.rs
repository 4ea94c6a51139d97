//! The engine as a whole: open a data directory, apply committed entries, serve reads.
//!
//! # The fix for etcd 11651
//! Each batch of entries is applied in one redb write transaction, and that same transaction
//! records the consistent index (index and term of the last applied entry) for every kind of
//! entry: KV, txn, compaction, lease, auth, membership, blank. Either all of a batch's effects
//! and its index reach the disk or none do, so after any crash the entries above the persisted
//! index are exactly those whose effects are missing, and replaying the log from there is
//! idempotent. Entries at or below the applied index are skipped.
//!
//! # The fault switch
//! [`StoreConfig::unsafe_reproduce_etcd_11651`] brings the bug back on purpose, for tests and
//! demos: auth entries then commit their effects without the consistent index, as etcd did
//! before PR 11652, so a restart before the next KV write re-applies them and this member's
//! AuthRevision drifts ahead of its peers'.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::alarm::Alarms;
use crate::api::{
    AlarmMember, AlarmType, Command, Event, KeyInterval, PermissionType, RangeRequest,
    RangeResponse, Request, Response, TxnRequest, TxnResponse,
};
use crate::apply::{ApplyError, Engine, Failure, Limits};
use crate::auth::{self, AuthInfo, AuthStore, Role, User};
use crate::backend::{self, Backend, put_u64, put_value, read_u64, read_value};
use crate::entry::{Entry, EntryPayload, LogId, StoredMembership};
use crate::lease::{Lease, Leases};
use crate::mvcc::{self, HashKv, KvState};
use crate::quota::{self, Quota};
use crate::schema::meta;
use crate::snapshot::{self, SnapshotMeta};

/// Engine settings. Those that shape applied results must be equal on every member.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// How long a simple token lives without use (etcd: `--auth-token-ttl`, 300 s).
    pub token_ttl: Duration,
    /// Lease TTLs below this are raised to it, in seconds (etcd derives 2 s from its default
    /// election timeout).
    pub min_lease_ttl: i64,
    /// Most operations in one txn branch (etcd: `--max-txn-ops`, 128).
    pub max_txn_ops: usize,
    /// Reproduce etcd issue 11651: auth entries commit without the consistent index. Never
    /// enable this outside tests and demos: a restart then replays auth changes.
    pub unsafe_reproduce_etcd_11651: bool,
    /// `None`: every applied batch is fsync'd before `apply_batch` returns. `Some(d)`: batches
    /// commit atomically but are fsync'd at most every `d` (and before every snapshot), as
    /// etcd's backend does; a crash then loses the last applied batches, which the caller must
    /// still hold in its log to apply again (the raft log does: it is only purged below a
    /// snapshot, and a snapshot first makes everything it covers durable).
    pub apply_sync_interval: Option<Duration>,
    /// The backend quota (etcd: `--quota-backend-bytes`). It is judged against this member's
    /// own file, so members may judge one request differently; it changes responses, never
    /// what is applied.
    pub quota: Quota,
    /// TEST FAULT (`--unsafe-test-corrupt-puts-if`): while this file exists, every applied Put
    /// stores its value with the bytes inverted, so this member's data silently differs from
    /// its peers' at the same revision. Never set outside tests.
    pub unsafe_test_corrupt_puts_if: Option<PathBuf>,
    /// JWT tokens instead of simple ones (`--auth-token jwt,...`).
    pub jwt: Option<Arc<auth::jwt::Jwt>>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            token_ttl: Duration::from_secs(300),
            min_lease_ttl: 2,
            max_txn_ops: crate::api::DEFAULT_MAX_TXN_OPS,
            unsafe_reproduce_etcd_11651: false,
            apply_sync_interval: None,
            quota: Quota::default(),
            unsafe_test_corrupt_puts_if: None,
            jwt: None,
        }
    }
}

/// What applying one entry did.
#[derive(Debug)]
pub enum Outcome {
    /// The entry was at or below the applied index: already applied, nothing done.
    Skipped,
    /// A blank entry advanced the index.
    Blank,
    /// A membership entry was recorded.
    Membership,
    /// A request was applied or refused; a refusal changed no data.
    Command {
        /// The response, or why the request was refused.
        response: Result<Response, ApplyError>,
        /// KV changes in revision order (empty for refusals and non-KV requests).
        events: Vec<Event>,
    },
}

/// A point-in-time view of the engine, for status RPCs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Last applied entry whose effects are on disk (what a restart resumes after).
    pub consistent_index: LogId,
    /// Last applied entry (ahead of `consistent_index` only under the fault switch).
    pub applied: LogId,
    /// Current KV revision.
    pub revision: i64,
    /// Revision of the last compaction.
    pub compact_revision: i64,
    /// Live keys.
    pub key_count: u64,
    /// Granted leases.
    pub lease_count: u64,
    /// Whether authentication is on.
    pub auth_enabled: bool,
    /// The AuthRevision.
    pub auth_revision: u64,
    /// Size of the database file in bytes.
    pub db_size: u64,
    /// Whether the etcd 11651 fault switch is on.
    pub unsafe_reproduce_etcd_11651: bool,
    /// Entries applied since open.
    pub applied_entries: u64,
    /// Entries skipped as already applied since open.
    pub skipped_entries: u64,
    /// Requests refused at apply since open, by [`ApplyError::reason`].
    pub rejections: BTreeMap<&'static str, u64>,
    /// Active alarms, by member.
    pub alarms: Vec<AlarmMember>,
    /// The backend quota in bytes, `None` when unlimited.
    pub quota_bytes: Option<u64>,
}

#[derive(Default)]
struct Counters {
    applied: u64,
    skipped: u64,
    rejected: BTreeMap<&'static str, u64>,
}

struct State {
    engine: Engine,
    applied: LogId,
    persisted: LogId,
    membership: Option<StoredMembership>,
    counters: Counters,
    /// When the last fsync'd commit happened (for `apply_sync_interval`).
    last_sync: Instant,
    /// Whether a commit since then was not fsync'd.
    unsynced: bool,
}

impl State {
    fn load(backend: &Backend, config: &StoreConfig) -> backend::Result<State> {
        let txn = backend.begin_read()?;
        let (kv, attached) = KvState::load(&txn)?;
        let leases = Leases::load(&txn, attached)?;
        let auth = AuthStore::load(&txn, config.token_ttl)?;
        let membership: Option<StoredMembership> = read_value(&txn, meta::MEMBERSHIP)?;
        let members = membership
            .as_ref()
            .map(|m| m.membership.members.keys().copied().collect());
        let alarms = Alarms::load(&txn, members)?;
        let persisted = LogId {
            index: read_u64(&txn, meta::CONSISTENT_INDEX)?,
            term: read_u64(&txn, meta::CONSISTENT_TERM)?,
        };
        Ok(State {
            engine: Engine {
                kv,
                leases,
                auth,
                alarms,
            },
            applied: persisted,
            persisted,
            membership,
            counters: Counters::default(),
            last_sync: Instant::now(),
            unsynced: false,
        })
    }
}

/// One member's engine.
pub struct Store {
    backend: Backend,
    config: StoreConfig,
    state: RwLock<State>,
    /// Durations of the commits of applied batches and of the syncs that make them durable
    /// (etcd's `etcd_disk_backend_commit_duration_seconds`).
    commits: prometheus_client::metrics::histogram::Histogram,
}

impl Store {
    /// Opens the store in `dir`, creating it when empty, and rebuilds the in-memory index.
    pub fn open(dir: &Path, config: StoreConfig) -> backend::Result<Store> {
        Store::with_backend(Backend::open(dir)?, config)
    }

    /// A store held in memory only (benchmarks and model tests).
    pub fn in_memory(config: StoreConfig) -> backend::Result<Store> {
        Store::with_backend(Backend::in_memory()?, config)
    }

    fn with_backend(backend: Backend, config: StoreConfig) -> backend::Result<Store> {
        if config.unsafe_reproduce_etcd_11651 {
            tracing::warn!(
                "FAULT SWITCH ON: unsafe_reproduce_etcd_11651 - auth changes are committed without \
                 the consistent index, as in etcd before PR 11652; a restart will replay them and \
                 this member's AuthRevision will drift. For tests and demos only."
            );
        }
        let state = State::load(&backend, &config)?;
        tracing::info!(
            consistent_index = state.persisted.index,
            revision = state.engine.kv.current,
            auth_revision = state.engine.auth.revision(),
            "store opened"
        );
        Ok(Store {
            backend,
            config,
            state: RwLock::new(state),
            commits: crate::metrics::disk_durations(),
        })
    }

    /// The durations of this engine's commits of applied entries, each from its start until
    /// it returned (with the fsync when it was durable), and of the syncs that make earlier
    /// commits durable: a handle on the histogram the store records into.
    pub fn commit_durations(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.commits.clone()
    }

    /// Commits `txn`, timing it.
    fn commit(&self, txn: redb::WriteTransaction) -> backend::Result<()> {
        let started = Instant::now();
        txn.commit()?;
        self.commits.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Writers reload the state after any failure, so a poisoned lock holds a usable state.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one committed entry.
    pub fn apply(&self, entry: &Entry) -> backend::Result<Outcome> {
        let mut outcomes = self.apply_batch(std::slice::from_ref(entry))?;
        Ok(outcomes.pop().unwrap_or(Outcome::Skipped))
    }

    /// Applies committed entries, in order, in one write transaction that also records the
    /// consistent index. On a storage error nothing of the batch is kept (the in-memory state
    /// is reloaded from disk) and the error is returned: the caller must stop applying.
    #[tracing::instrument(level = "debug", skip_all, fields(first = entries.first().map(|e| e.log_id.index), count = entries.len()))]
    pub fn apply_batch(&self, entries: &[Entry]) -> backend::Result<Vec<Outcome>> {
        let mut state = self.write();
        let result = self.apply_locked(&mut state, entries);
        if let Err(error) = &result {
            tracing::error!(%error, "apply failed; reloading state from disk");
            match State::load(&self.backend, &self.config) {
                Ok(mut fresh) => {
                    fresh.counters = std::mem::take(&mut state.counters);
                    *state = fresh;
                }
                Err(reload) => tracing::error!(error = %reload, "reload after failed apply failed"),
            }
        }
        result
    }

    fn apply_locked(&self, state: &mut State, entries: &[Entry]) -> backend::Result<Vec<Outcome>> {
        let mut txn = self.backend.begin_write()?;
        let now = Instant::now();
        let sync = match self.config.apply_sync_interval {
            None => true,
            Some(interval) => now.duration_since(state.last_sync) >= interval,
        };
        if !sync {
            // Atomic but not yet fsync'd: the next synced commit persists it too.
            txn.set_durability(redb::Durability::None)
                .map_err(|e| backend::Error::from(redb::Error::from(e)))?;
        }
        let limits = Limits {
            min_lease_ttl: self.config.min_lease_ttl,
            max_txn_ops: self.config.max_txn_ops,
        };
        // The quota is judged on the file as the batch begins (it only grows at commit).
        let size = self.backend.size();
        let mut persist = None;
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = self.faulty(entry);
            if entry.log_id.index <= state.applied.index {
                state.counters.skipped += 1;
                outcomes.push(Outcome::Skipped);
                continue;
            }
            let outcome = match &entry.payload {
                EntryPayload::Blank => Outcome::Blank,
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership {
                        log_id: entry.log_id,
                        membership: membership.clone(),
                    };
                    put_value(&txn, meta::MEMBERSHIP, &stored)?;
                    // A removed member's alarms would otherwise outlive it: a CORRUPT alarm
                    // for an ID that is gone blocks every write and nobody can be healed.
                    state
                        .engine
                        .alarms
                        .retain_members(&txn, &membership.members)?;
                    state.membership = Some(stored);
                    Outcome::Membership
                }
                EntryPayload::Normal(cmd) => match state.engine.apply(&txn, limits, cmd, now) {
                    Ok((response, events)) => {
                        // etcd's quota applier: a request past this member's quota is applied
                        // (every member must apply the same entries) but answered NOSPACE, and
                        // the member then raises the alarm.
                        let fits = self.config.quota.available(size, quota::cost(&cmd.request));
                        Outcome::Command {
                            response: if fits {
                                Ok(response)
                            } else {
                                Err(ApplyError::NoSpace)
                            },
                            events,
                        }
                    }
                    Err(Failure::Storage(e)) => return Err(e),
                    Err(Failure::Rejected(reason)) => {
                        if matches!(reason, ApplyError::Auth(auth::Error::OldRevision)) {
                            tracing::warn!(
                                index = entry.log_id.index,
                                header_auth_revision = cmd.header.auth_revision,
                                auth_revision = state.engine.auth.revision(),
                                "rejected entry proposed at an older AuthRevision"
                            );
                        }
                        *state.counters.rejected.entry(reason.reason()).or_default() += 1;
                        Outcome::Command {
                            response: Err(reason),
                            events: Vec::new(),
                        }
                    }
                },
            };
            let bugged = self.config.unsafe_reproduce_etcd_11651
                && matches!(&entry.payload, EntryPayload::Normal(cmd) if cmd.request.is_auth());
            if !bugged {
                persist = Some(entry.log_id);
            }
            state.applied = entry.log_id;
            state.counters.applied += 1;
            outcomes.push(outcome);
        }
        if let Some(log_id) = persist {
            put_u64(&txn, meta::CONSISTENT_INDEX, log_id.index)?;
            put_u64(&txn, meta::CONSISTENT_TERM, log_id.term)?;
        }
        self.commit(txn)?;
        if sync {
            state.last_sync = now;
            state.unsynced = false;
        } else {
            state.unsynced = true;
        }
        if let Some(log_id) = persist {
            state.persisted = log_id;
        }
        Ok(outcomes)
    }

    /// `entry` as the test fault `unsafe_test_corrupt_puts_if` makes this member apply it.
    fn faulty<'e>(&self, entry: &'e Entry) -> Cow<'e, Entry> {
        let armed = || {
            self.config
                .unsafe_test_corrupt_puts_if
                .as_ref()
                .is_some_and(|f| f.exists())
        };
        match &entry.payload {
            EntryPayload::Normal(Command {
                header,
                request: Request::Put(put),
            }) if armed() => {
                let mut put = put.clone();
                put.value.iter_mut().for_each(|b| *b = !*b);
                Cow::Owned(Entry {
                    log_id: entry.log_id,
                    payload: EntryPayload::Normal(Command {
                        header: header.clone(),
                        request: Request::Put(put),
                    }),
                })
            }
            _ => Cow::Borrowed(entry),
        }
    }

    /// Makes every applied batch durable (a no-op cost when each batch already was).
    pub fn sync(&self) -> backend::Result<()> {
        let mut state = self.write();
        self.sync_locked(&mut state)
    }

    /// Makes applied batches durable once they have waited `apply_sync_interval`, as etcd's
    /// backend commits its batch on a timer: an idle member does not keep its last applies
    /// unsynced (a crash would then lose them from the engine, to be re-applied from the log).
    pub fn sync_if_due(&self) -> backend::Result<()> {
        let Some(interval) = self.config.apply_sync_interval else {
            return Ok(());
        };
        let mut state = self.write();
        if state.unsynced && state.last_sync.elapsed() >= interval {
            self.sync_locked(&mut state)?;
        }
        Ok(())
    }

    fn sync_locked(&self, state: &mut State) -> backend::Result<()> {
        // An empty commit with the default (immediate) durability persists every earlier
        // non-durable commit with it.
        self.commit(self.backend.begin_write()?)?;
        state.last_sync = Instant::now();
        state.unsynced = false;
        Ok(())
    }

    /// Writes a consistent snapshot of everything applied so far to `out`. Everything the
    /// snapshot covers is made durable first: whoever keeps the snapshot may then drop the log
    /// entries below it.
    pub fn write_snapshot(
        &self,
        out: impl std::io::Write,
    ) -> Result<SnapshotMeta, snapshot::Error> {
        let (meta, txn) = {
            let mut state = self.write();
            if self.config.apply_sync_interval.is_some() {
                self.sync_locked(&mut state)?;
            }
            let meta = SnapshotMeta {
                applied: state.applied,
                membership: state.membership.clone(),
            };
            // Opened under the lock, the read transaction sees exactly the effects up to `applied`.
            (meta, self.backend.begin_read()?)
        };
        snapshot::write(&txn, &meta, out)?;
        Ok(meta)
    }

    /// Replaces the whole state with a snapshot read from `input`, atomically: on any error
    /// the store keeps what it had.
    pub fn install_snapshot(
        &self,
        input: impl std::io::Read,
    ) -> Result<SnapshotMeta, snapshot::Error> {
        self.replace(|txn| snapshot::install(txn, input), |_| Ok(()))
    }

    /// Makes this store a member of a new cluster built from a snapshot file (`snapshot
    /// restore`; the file's seal is checked before anything is committed): the snapshot's keys
    /// and revisions, leases, users, roles and AuthRevision, with `membership` as the only
    /// configuration ever applied (its entry becomes the consistent index) and no alarms: those
    /// named the old cluster's members.
    pub fn restore_snapshot(
        &self,
        file: impl std::io::Read,
        membership: &StoredMembership,
    ) -> Result<SnapshotMeta, snapshot::Error> {
        self.replace(
            |txn| snapshot::install_file(txn, file),
            |txn| {
                put_u64(txn, meta::CONSISTENT_INDEX, membership.log_id.index)?;
                put_u64(txn, meta::CONSISTENT_TERM, membership.log_id.term)?;
                put_value(txn, meta::MEMBERSHIP, membership)?;
                let mut table = txn.open_table(crate::schema::META)?;
                table.remove(meta::ALARMS)?;
                Ok(())
            },
        )
    }

    /// Installs a snapshot with `install`, lets `adjust` change the result in the same
    /// transaction, commits, and reloads the in-memory state.
    fn replace(
        &self,
        install: impl FnOnce(&redb::WriteTransaction) -> Result<SnapshotMeta, snapshot::Error>,
        adjust: impl FnOnce(&redb::WriteTransaction) -> backend::Result<()>,
    ) -> Result<SnapshotMeta, snapshot::Error> {
        let mut state = self.write();
        let txn = self.backend.begin_write()?;
        let meta = install(&txn)?;
        adjust(&txn)?;
        txn.commit().map_err(backend::Error::from)?;
        let mut fresh = State::load(&self.backend, &self.config)?;
        fresh.counters = std::mem::take(&mut state.counters);
        *state = fresh;
        tracing::info!(
            applied_index = state.applied.index,
            revision = state.engine.kv.current,
            "installed snapshot"
        );
        Ok(meta)
    }

    /// Serves a range from the last applied state (a serializable read).
    pub fn range(&self, req: &RangeRequest) -> mvcc::Result<RangeResponse> {
        let state = self.read();
        let txn = self.backend.begin_read()?;
        mvcc::range_committed(&txn, &state.engine.kv, req)
    }

    /// Serves a txn that writes nothing from the last applied state.
    pub fn read_only_txn(&self, req: &TxnRequest) -> mvcc::Result<TxnResponse> {
        let state = self.read();
        let txn = self.backend.begin_read()?;
        mvcc::read_only_txn(&txn, &state.engine.kv, req)
    }

    /// Checksums the whole backend (etcd's Hash), with the revision it was taken at.
    pub fn hash(&self) -> backend::Result<(u32, i64)> {
        let state = self.read();
        let txn = self.backend.begin_read()?;
        Ok((backend::hash(&txn)?, state.engine.kv.current))
    }

    /// Whether a request costing `cost` bytes fits the quota now (checked before proposing,
    /// as etcd's quota interceptor does).
    pub fn quota_available(&self, cost: u64) -> bool {
        self.config.quota.available(self.backend.size(), cost)
    }

    /// Active alarms of type `alarm` (every one for [`AlarmType::None`]), as applied here.
    pub fn alarms(&self, alarm: AlarmType) -> Vec<AlarmMember> {
        self.read().engine.alarms.get(alarm)
    }

    /// Compacts the backend file (etcd's defragment) and returns its size before and after.
    /// Applies and reads wait meanwhile; a transaction still open elsewhere (a snapshot being
    /// sent) is waited for up to `patience`.
    pub fn defragment(&self, patience: Duration) -> backend::Result<(u64, u64)> {
        let before = self.backend.size();
        let give_up = Instant::now() + patience;
        loop {
            {
                let mut state = self.write();
                self.sync_locked(&mut state)?;
                match self.backend.compact() {
                    Ok(()) => {
                        let after = self.backend.size();
                        tracing::info!(before, after, "defragmented");
                        return Ok((before, after));
                    }
                    Err(backend::Error::InUse) if Instant::now() < give_up => {}
                    Err(e) => return Err(e),
                }
            }
            // Outside the lock, so whoever holds the transaction can finish.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checksums the KV history up to `revision` (0: the current one).
    pub fn hash_kv(&self, revision: i64) -> mvcc::Result<HashKv> {
        let state = self.read();
        let txn = self.backend.begin_read()?;
        mvcc::hash_kv(&txn, &state.engine.kv, revision)
    }

    /// Changes to keys in `[key, range_end)` at revisions `from..=to` (Watch catch-up).
    pub fn events_between(
        &self,
        from: i64,
        to: i64,
        key: &[u8],
        range_end: &[u8],
    ) -> mvcc::Result<Vec<Event>> {
        // The key index (for previous versions) is read under the engine's lock, which holds
        // applies back for the length of the read: callers bound `from..=to`.
        let state = self.read();
        let txn = self.backend.begin_read()?;
        mvcc::events_between(
            &txn,
            &state.engine.kv,
            from,
            to,
            &KeyInterval::of(key, range_end),
        )
    }

    /// The current and the compacted revision.
    pub fn revisions(&self) -> (i64, i64) {
        let state = self.read();
        (state.engine.kv.current, state.engine.kv.compacted)
    }

    /// The engine's counters and positions.
    pub fn status(&self) -> Status {
        let state = self.read();
        Status {
            consistent_index: state.persisted,
            applied: state.applied,
            revision: state.engine.kv.current,
            compact_revision: state.engine.kv.compacted,
            key_count: state.engine.kv.live_keys,
            lease_count: state.engine.leases.all().count() as u64,
            auth_enabled: state.engine.auth.enabled(),
            auth_revision: state.engine.auth.revision(),
            db_size: self.backend.size(),
            unsafe_reproduce_etcd_11651: self.config.unsafe_reproduce_etcd_11651,
            applied_entries: state.counters.applied,
            skipped_entries: state.counters.skipped,
            rejections: state.counters.rejected.clone(),
            alarms: state.engine.alarms.get(AlarmType::None),
            quota_bytes: self.config.quota.bytes(),
        }
    }

    /// Last applied entry.
    pub fn applied(&self) -> LogId {
        self.read().applied
    }

    /// Bytes of the database file holding live data.
    pub fn db_size_in_use(&self) -> backend::Result<u64> {
        self.backend.size_in_use()
    }

    /// The membership as last applied.
    pub fn membership(&self) -> Option<StoredMembership> {
        self.read().membership.clone()
    }

    /// Whether auth is on, and the AuthRevision (etcd's AuthStatus).
    pub fn auth_status(&self) -> (bool, u64) {
        let state = self.read();
        (state.engine.auth.enabled(), state.engine.auth.revision())
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> auth::Result<User> {
        self.read().engine.auth.user(name).cloned()
    }

    /// Names of all users, sorted.
    pub fn users(&self) -> Vec<String> {
        self.read()
            .engine
            .auth
            .users()
            .map(|u| u.name.clone())
            .collect()
    }

    /// A role by name.
    pub fn role(&self, name: &str) -> auth::Result<Role> {
        self.read().engine.auth.role(name).cloned()
    }

    /// Names of all roles, sorted.
    pub fn roles(&self) -> Vec<String> {
        self.read()
            .engine
            .auth
            .roles()
            .map(|r| r.name.clone())
            .collect()
    }

    /// Verifies a login and returns the AuthRevision it was checked at; the proposer then
    /// proposes an Authenticate entry. bcrypt runs outside the store lock.
    pub fn check_password(&self, name: &str, password: &str) -> auth::Result<u64> {
        let (hash, revision) = {
            let state = self.read();
            (
                state.engine.auth.password_hash(name)?,
                state.engine.auth.revision(),
            )
        };
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(revision),
            _ => Err(auth::Error::AuthFailed),
        }
    }

    /// The current AuthRevision.
    pub fn auth_revision(&self) -> u64 {
        self.read().engine.auth.revision()
    }

    /// The user and AuthRevision a token stands for: the header to propose with. A simple
    /// token stands for the current AuthRevision; a JWT token for the one it was issued at.
    pub fn auth_info_from_token(&self, token: &str, now: Instant) -> auth::Result<AuthInfo> {
        if let Some(jwt) = &self.config.jwt {
            let (username, revision) = jwt.verify(token).ok_or(auth::Error::InvalidAuthToken)?;
            return Ok(AuthInfo { username, revision });
        }
        self.read().engine.auth.info_from_token(token, now)
    }

    /// The JWT signer, when tokens are JWT (Authenticate then signs one instead of proposing a
    /// simple token).
    pub fn jwt(&self) -> Option<&auth::jwt::Jwt> {
        self.config.jwt.as_deref()
    }

    /// Checks an access against the local auth store (serializable reads are checked here,
    /// writes again at apply).
    pub fn check_permission(
        &self,
        info: &AuthInfo,
        key: &[u8],
        range_end: &[u8],
        access: PermissionType,
    ) -> auth::Result<()> {
        self.read()
            .engine
            .auth
            .check_op(info, key, range_end, access)
    }

    /// Checks every access a txn makes (its compares and both branches) against the local auth
    /// store, as a read-only txn is checked before it is served.
    pub fn check_txn_permission(&self, info: &AuthInfo, req: &TxnRequest) -> auth::Result<()> {
        self.read().engine.check_txn_auth(info, req)
    }

    /// Checks that the caller may read or change the auth store (etcd's `IsAdminPermitted`).
    pub fn check_admin(&self, info: &AuthInfo) -> auth::Result<()> {
        self.read().engine.auth.check_admin(info)
    }

    /// Lease `id`, with its attached keys.
    pub fn lease(&self, id: i64) -> Option<Lease> {
        self.read().engine.leases.get(id).cloned()
    }

    /// All leases.
    pub fn leases(&self) -> Vec<Lease> {
        self.read().engine.leases.all().cloned().collect()
    }

    /// Every lease's ID and granted TTL, without the attached keys.
    pub fn lease_ttls(&self) -> Vec<(i64, i64)> {
        self.read()
            .engine
            .leases
            .all()
            .map(|l| (l.id, l.ttl))
            .collect()
    }

    /// Lease `id`'s granted TTL, `None` when there is no such lease.
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.read().engine.leases.get(id).map(|l| l.ttl)
    }
}
