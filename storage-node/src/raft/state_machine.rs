//! The engine as openraft's state machine, and its snapshots.
//!
//! # Applied state
//! The engine's persisted consistent index is openraft's last applied log ID (shifted by one,
//! see [`crate::raft`]): no separate record is kept. Under the fault switch
//! ([`crate::StoreConfig::unsafe_reproduce_etcd_11651`]) that index lags behind auth entries
//! after a restart, so openraft applies them a second time: that replay is the reproduction of
//! etcd 11651 and is deliberately left as the engine reports it.
//!
//! # Applying
//! Entries that the stream already holds are applied together, in one engine transaction (one
//! fsync). Then the [`Listeners`] hear of it: the lessor of every lease granted or revoked, the
//! alarm raiser of an entry that went past this member's quota while no NOSPACE alarm is
//! active (etcd raises the alarm from its apply loop), and each command's [`Waiters`] entry of
//! its outcome; last, every openraft responder is answered. A storage error stops applying and
//! is returned to openraft.
//!
//! # Snapshots
//! A snapshot is the engine's own checksummed stream ([`Store::write_snapshot`]), held in
//! memory. The current one lives in memory only and is not persisted: the engine is durable on
//! its own, so after a restart openraft rebuilds a snapshot when it needs one (it does so at
//! startup if the log was purged). A persisted snapshot would also be wrong under the fault
//! switch: openraft installs a snapshot newer than the applied state at startup, which would
//! hide the replay the switch exists to reproduce.

use std::io::{self, Cursor};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};
use tokio::sync::Notify;

use super::lessor::Lessor;
use super::{
    Error, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig, Waiters,
    blocking, entry_to_engine, log_id_from_engine, stored_membership_from_engine,
};
use crate::api::{AlarmType, Request, Response};
use crate::apply::ApplyError;
use crate::entry::EntryPayload;
use crate::snapshot;
use crate::store::{Outcome, Store};
use crate::watchers::Watchers;

/// The current snapshot, shared by the state machine and the builders it hands out.
type Slot = Arc<Mutex<Option<Current>>>;

#[derive(Clone)]
struct Current {
    meta: SnapshotMeta,
    data: Arc<Vec<u8>>,
}

/// Makes `meta`/`data` the current snapshot unless the current one is newer (a build that
/// started before an install finished must not replace the installed snapshot).
fn keep(slot: &Slot, meta: SnapshotMeta, data: Arc<Vec<u8>>) {
    // The critical section only swaps a value, so a poisoned lock still holds a usable one.
    let mut current = slot.lock().unwrap_or_else(|p| p.into_inner());
    if current
        .as_ref()
        .is_none_or(|c| c.meta.last_log_id <= meta.last_log_id)
    {
        *current = Some(Current { meta, data });
    }
}

/// openraft's snapshot meta for what the engine's stream covers.
fn meta_from_engine(meta: snapshot::SnapshotMeta) -> Result<SnapshotMeta, Error> {
    Ok(SnapshotMeta {
        last_log_id: log_id_from_engine(meta.applied),
        last_membership: stored_membership_from_engine(meta.membership)?,
    })
}

/// The parts of a member that follow what the state machine applies.
#[derive(Clone, Debug)]
pub struct Listeners {
    /// Requests waiting for their local result.
    pub waiters: Arc<Waiters>,
    /// Lease deadlines, for expiry on the leader.
    pub lessor: Arc<Lessor>,
    /// Woken when an entry went past this member's quota and no NOSPACE alarm is active.
    pub over_quota: Arc<Notify>,
    /// The watchers, sent the events of every applied entry.
    pub watchers: Arc<Watchers>,
}

impl Listeners {
    /// Listeners for a member whose engine is `store`, with etcd's default watch progress
    /// interval (10 minutes) and Mend's default watchers per stream.
    pub fn new(store: &Arc<Store>) -> Listeners {
        Listeners::with_watchers(store, Duration::from_secs(600), 100_000)
    }

    /// Listeners whose watchers hear progress every `progress_interval`, at most
    /// `watchers_per_stream` on a stream.
    pub fn with_watchers(
        store: &Arc<Store>,
        progress_interval: Duration,
        watchers_per_stream: usize,
    ) -> Listeners {
        Listeners {
            waiters: Arc::new(Waiters::new()),
            lessor: Arc::new(Lessor::new(store.lease_ttls(), Instant::now())),
            over_quota: Arc::new(Notify::new()),
            watchers: Arc::new(Watchers::new(
                store.clone(),
                progress_interval,
                watchers_per_stream,
            )),
        }
    }
}

/// What an entry does to leases, found before the entry is handed to the engine.
#[derive(Clone, Copy)]
enum LeaseChange {
    Grant(i64),
    Revoke(i64),
}

/// The engine, driven by openraft.
pub struct StateMachine {
    store: Arc<Store>,
    listeners: Listeners,
    current: Slot,
}

impl StateMachine {
    /// The state machine over `store`, telling `listeners` what applies.
    pub fn new(store: Arc<Store>, listeners: Listeners) -> StateMachine {
        StateMachine {
            store,
            listeners,
            current: Slot::default(),
        }
    }

    /// Tells the lessor what the batch did to leases. A grant is looked up in the engine when
    /// its answer is not the grant itself: past the quota the grant applies but is answered
    /// NOSPACE.
    fn follow_leases(&self, changes: &[Option<LeaseChange>], outcomes: &[Outcome]) {
        let now = Instant::now();
        let lessor = &self.listeners.lessor;
        for (change, outcome) in changes.iter().zip(outcomes) {
            let Outcome::Command { response, .. } = outcome else {
                continue;
            };
            match (change, response) {
                (Some(LeaseChange::Grant(_)), Ok(Response::LeaseGrant(g))) => {
                    lessor.granted(g.id, g.ttl, now)
                }
                (Some(LeaseChange::Grant(id)), Err(ApplyError::NoSpace)) => {
                    if let Some(ttl) = self.store.lease_ttl(*id) {
                        lessor.granted(*id, ttl, now);
                    }
                }
                (Some(LeaseChange::Revoke(id)), Ok(Response::LeaseRevoke(_))) => {
                    lessor.revoked(*id)
                }
                _ => {}
            }
        }
    }

    /// Applies one batch in one engine transaction, then hands out the outcomes.
    async fn apply_batch(&self, batch: Vec<EntryResponder<TypeConfig>>) -> Result<(), Error> {
        let (entries, responders): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|(entry, responder)| (entry_to_engine(entry), responder))
            .unzip();
        let ids: Vec<Option<u64>> = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(cmd) => Some(cmd.header.id),
                _ => None,
            })
            .collect();
        let lease_changes: Vec<Option<LeaseChange>> = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(cmd) => match &cmd.request {
                    Request::LeaseGrant(g) => Some(LeaseChange::Grant(g.id)),
                    Request::LeaseRevoke(r) => Some(LeaseChange::Revoke(r.id)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let store = self.store.clone();
        let outcomes = match blocking(move || Ok(store.apply_batch(&entries)?)).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // Nothing of the batch was kept and raft stops here: tell the waiters now
                // rather than leave them to time out.
                for id in ids.into_iter().flatten() {
                    self.listeners.waiters.cancel(id);
                }
                return Err(e);
            }
        };
        // The lessor first: a client told its lease is granted may renew it at once.
        self.follow_leases(&lease_changes, &outcomes);
        self.listeners
            .watchers
            .publish(outcomes.iter().filter_map(|o| match o {
                Outcome::Command { events, .. } => Some(events.as_slice()),
                _ => None,
            }));
        let over_quota = outcomes.iter().any(|o| {
            matches!(
                o,
                Outcome::Command {
                    response: Err(ApplyError::NoSpace),
                    ..
                }
            )
        });
        if over_quota && self.store.alarms(AlarmType::NoSpace).is_empty() {
            self.listeners.over_quota.notify_one();
        }
        for ((id, outcome), responder) in ids.into_iter().zip(outcomes).zip(responders) {
            match (id, outcome) {
                (Some(id), outcome @ Outcome::Command { .. }) => {
                    self.listeners.waiters.complete(id, outcome)
                }
                // The engine had applied this command before (its index was past it), so
                // there is no local result to hand over.
                (Some(id), _) => self.listeners.waiters.cancel(id),
                (None, _) => {}
            }
            if let Some(responder) = responder {
                responder.send(());
            }
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        // Both come from the engine's in-memory state under its lock, without touching redb,
        // so this is cheap enough for an async thread.
        let applied = log_id_from_engine(self.store.applied());
        let membership = stored_membership_from_engine(self.store.membership())?;
        Ok((applied, membership))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut ended = false;
        while !ended {
            let Some(first) = entries.try_next().await? else {
                break;
            };
            let mut batch = vec![first];
            // Take what the stream has ready without waiting: one transaction for all of it.
            // A pending poll consumes nothing, so dropping its future loses no entry.
            while let Some(next) = entries.try_next().now_or_never() {
                match next? {
                    Some(item) => batch.push(item),
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            self.apply_batch(batch).await?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            current: self.current.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let store = self.store.clone();
        let (installed, data) = blocking(move || {
            let installed = store.install_snapshot(data.as_slice())?;
            Ok((installed, data))
        })
        .await?;
        let found = log_id_from_engine(installed.applied);
        if found != meta.last_log_id {
            return Err(Error::SnapshotMismatch {
                expected: meta.last_log_id,
                found,
            }
            .into());
        }
        keep(&self.current, meta.clone(), Arc::new(data));
        self.listeners
            .lessor
            .reload(self.store.lease_ttls(), Instant::now());
        self.listeners.watchers.reset();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // openraft takes the data by value: each caller gets its own copy of the bytes.
        Ok(current.map(|c| Snapshot {
            meta: c.meta,
            snapshot: Cursor::new(Vec::clone(&c.data)),
        }))
    }
}

/// Builds a snapshot of the engine off the state machine's task.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    current: Slot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let store = self.store.clone();
        // The engine streams from one read transaction opened under its lock, so the bytes and
        // the meta describe the same applied entry even while entries keep applying.
        let (meta, data) = blocking(move || {
            let mut data = Vec::new();
            let meta = store.write_snapshot(&mut data)?;
            Ok((meta, data))
        })
        .await?;
        let meta = meta_from_engine(meta)?;
        let data = Arc::new(data);
        keep(&self.current, meta.clone(), data.clone());
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            bytes = data.len(),
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(Vec::clone(&data)),
        })
    }
}
