//! Multi-version key-value semantics, as etcd's `mvcc` package defines them.
//!
//! Every write transaction gets the next main revision; each key it changes gets a sub revision
//! inside it. Every version of every key is a record in the `kv` table, found through the
//! in-memory [`index`]. Reads at a revision, compaction, HashKV and the event feed for Watch all
//! come from these two. Nothing here knows about leases or auth: the applier checks those
//! before calling in.

pub(crate) mod index;
mod record;

use std::cmp::Ordering;

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use thiserror::Error;

use crate::api::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, InvalidRequest, KeyInterval, KeyValue, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use crate::backend::{self, get_u64, put_u64};
use crate::schema::{KV, META, meta};
use index::{Index, Revision};

/// A KV operation the store refuses.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The revision asked for is below the last compaction.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for has not happened yet.
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// A txn that writes was handed to the read-only path: only raft may apply it.
    #[error("mend: a txn that writes cannot be served as a read")]
    NotReadOnly,
    /// Storage failed.
    #[error(transparent)]
    Backend(#[from] backend::Error),
}

impl From<redb::StorageError> for Error {
    fn from(e: redb::StorageError) -> Self {
        Error::Backend(e.into())
    }
}

impl From<redb::TableError> for Error {
    fn from(e: redb::TableError) -> Self {
        Error::Backend(e.into())
    }
}

/// Result of KV operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// HashKV's answer: a checksum of the KV history up to a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKv {
    /// CRC-32C over every stored version up to `hash_revision`, in revision order.
    pub hash: u32,
    /// Compaction revision of the store when hashed (history below it is not covered).
    pub compact_revision: i64,
    /// Revision the hash covers.
    pub hash_revision: i64,
}

/// A live key and the lease it is attached to.
pub(crate) type Attached = (Vec<u8>, i64);

/// The in-memory half of the KV store: the index and the revision counters.
pub(crate) struct KvState {
    pub(crate) index: Index,
    /// Revision of the last write transaction.
    pub(crate) current: i64,
    /// History below this revision is gone.
    pub(crate) compacted: i64,
    /// Keys live at `current`.
    pub(crate) live_keys: u64,
}

impl KvState {
    /// Rebuilds the index from the `kv` table; also returns the live keys attached to a lease.
    pub(crate) fn load(txn: &ReadTransaction) -> Result<(KvState, Vec<Attached>), backend::Error> {
        let table = txn.open_table(KV)?;
        let mut index = Index::default();
        // As in etcd, an empty store is at revision 1: the first write makes revision 2.
        let mut current = 1;
        for item in table.iter()? {
            let (k, v) = item?;
            let (main, sub) = k.value();
            let (kv, tombstone) = record::decode(main, v.value())?;
            index.record(&kv.key, Revision { main, sub }, tombstone);
            current = main;
        }
        let compacted =
            get_u64(&txn.open_table(META)?, meta::FINISHED_COMPACT_REVISION)?.unwrap_or(0) as i64;
        let mut leases = Vec::new();
        let mut live_keys = 0;
        for (key, rev) in index.live_now() {
            live_keys += 1;
            let kv = fetch(&table, rev)?;
            if kv.lease != 0 {
                leases.push((key.to_vec(), kv.lease));
            }
        }
        // Compaction may have removed the newest records (deletions), never the revision.
        let current = current.max(compacted);
        Ok((
            KvState {
                index,
                current,
                compacted,
                live_keys,
            },
            leases,
        ))
    }
}

/// Reads the version at `rev`, which the index says exists.
fn fetch(
    table: &impl ReadableTable<(i64, i64), &'static [u8]>,
    rev: Revision,
) -> Result<KeyValue, backend::Error> {
    let value = table
        .get((rev.main, rev.sub))?
        .ok_or_else(|| backend::Error::Corrupt {
            table: "kv",
            detail: format!(
                "index names revision {}/{} which is not stored",
                rev.main, rev.sub
            ),
        })?;
    Ok(record::decode(rev.main, value.value())?.0)
}

/// Checks that revision `at` (0: now) can be read when the store is at `now`.
fn readable(state: &KvState, at: i64, now: i64) -> Result<i64> {
    let at = if at <= 0 { now } else { at };
    if at > now {
        return Err(Error::FutureRev);
    }
    if at < state.compacted {
        return Err(Error::Compacted);
    }
    Ok(at)
}

/// Serves a range as etcd does, with the store at revision `now`.
pub(crate) fn range(
    table: &impl ReadableTable<(i64, i64), &'static [u8]>,
    state: &KvState,
    req: &RangeRequest,
    now: i64,
) -> Result<RangeResponse> {
    req.validate()?;
    let at = readable(state, req.revision, now)?;
    let interval = KeyInterval::of(&req.key, &req.range_end);
    let filtered = req.sort_order != SortOrder::None
        || req.sort_target != SortTarget::Key
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // One more than the limit tells whether there is more.
    let wanted = match (req.count_only, filtered, req.limit) {
        (true, _, _) => 0,
        (false, false, limit) if limit > 0 => limit as usize + 1,
        _ => usize::MAX,
    };
    let mut count = 0i64;
    let mut revs = Vec::new();
    for (_, rev) in state.index.range_at(&interval, at) {
        count += 1;
        if revs.len() < wanted {
            revs.push(rev);
        }
    }
    let mut kvs = revs
        .into_iter()
        .map(|rev| fetch(table, rev))
        .collect::<Result<Vec<_>, _>>()?;
    kvs.retain(|kv| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    });
    sort(&mut kvs, req.sort_order, req.sort_target);
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(RangeResponse {
        revision: now,
        kvs,
        more,
        count,
    })
}

/// Sorts as etcd does: a non-key target without an order sorts ascending; ties keep key order.
fn sort(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let by = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
        _ => kvs.sort_by(by),
    }
}

/// Whether every key in the compare's range satisfies it at revision `now`.
fn compare(
    table: &impl ReadableTable<(i64, i64), &'static [u8]>,
    state: &KvState,
    c: &Compare,
    now: i64,
) -> Result<bool> {
    let interval = KeyInterval::of(&c.key, &c.range_end);
    let mut any = false;
    for (_, rev) in state.index.range_at(&interval, now) {
        any = true;
        if !compare_kv(c, &fetch(table, rev)?) {
            return Ok(false);
        }
    }
    if any {
        return Ok(true);
    }
    // A missing key has no value to compare (gRPC cannot tell nil from empty); its other
    // fields compare as zero.
    Ok(!matches!(c.target, CompareTarget::Value(_)) && compare_kv(c, &KeyValue::default()))
}

/// Whether `kv` satisfies a compare (etcd's `compareKV`).
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ordering = match &c.target {
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

/// A write transaction on the KV store: every change it makes shares one main revision.
pub(crate) struct KvWriter<'s, 't> {
    table: Table<'t, (i64, i64), &'static [u8]>,
    state: &'s mut KvState,
    main: i64,
    sub: i64,
    events: Vec<Event>,
}

impl<'s, 't> KvWriter<'s, 't> {
    /// Starts writing the next revision inside `txn`.
    pub(crate) fn new(txn: &'t WriteTransaction, state: &'s mut KvState) -> Result<Self> {
        let main = state.current + 1;
        Ok(KvWriter {
            table: txn.open_table(KV)?,
            state,
            main,
            sub: 0,
            events: Vec::new(),
        })
    }

    /// The revision reads inside this transaction see: the next one once something changed.
    pub(crate) fn now(&self) -> i64 {
        if self.events.is_empty() {
            self.state.current
        } else {
            self.main
        }
    }

    /// A range that sees this transaction's own writes.
    pub(crate) fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        range(&self.table, self.state, req, self.now())
    }

    /// Checks that a range inside a txn could be served (etcd's `checkRange`).
    pub(crate) fn check_range(&self, req: &RangeRequest) -> Result<()> {
        readable(self.state, req.revision, self.now()).map(|_| ())
    }

    /// The live version of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let rev = self.state.index.live_at(key, self.now());
        Ok(rev.map(|rev| fetch(&self.table, rev)).transpose()?)
    }

    /// Whether every key in the compare's range satisfies it (etcd's `applyCompare`).
    pub(crate) fn compare(&self, c: &Compare) -> Result<bool> {
        compare(&self.table, self.state, c, self.now())
    }

    fn write(&mut self, kv: KeyValue, tombstone: bool, prev: Option<KeyValue>) -> Result<()> {
        let rev = Revision {
            main: self.main,
            sub: self.sub,
        };
        self.table.insert(
            (rev.main, rev.sub),
            record::encode(&kv, tombstone).as_slice(),
        )?;
        self.state.index.record(&kv.key, rev, tombstone);
        self.sub += 1;
        match (tombstone, prev.is_some()) {
            (true, true) => self.state.live_keys -= 1,
            (false, false) => self.state.live_keys += 1,
            _ => {}
        }
        let kind = if tombstone {
            EventKind::Delete
        } else {
            EventKind::Put
        };
        self.events.push(Event {
            kind,
            kv,
            prev_kv: prev,
        });
        Ok(())
    }

    /// Writes a key (the lease, if any, was checked by the caller).
    pub(crate) fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        req.validate()?;
        let prev = self.get(&req.key)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound);
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(self.main, |p| p.create_revision),
            mod_revision: self.main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let prev_kv = if req.prev_kv { prev.clone() } else { None };
        self.write(kv, false, prev)?;
        Ok(PutResponse {
            revision: self.main,
            prev_kv,
        })
    }

    /// Deletes every key in the range.
    pub(crate) fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        req.validate()?;
        let interval = KeyInterval::of(&req.key, &req.range_end);
        let revs: Vec<Revision> = self
            .state
            .index
            .range_at(&interval, self.now())
            .map(|(_, rev)| rev)
            .collect();
        let deleted = revs.len() as i64;
        let mut prev_kvs = Vec::new();
        for rev in revs {
            let prev = fetch(&self.table, rev)?;
            let tombstone = KeyValue {
                key: prev.key.clone(),
                mod_revision: self.main,
                ..KeyValue::default()
            };
            if req.prev_kv {
                prev_kvs.push(prev.clone());
            }
            self.write(tombstone, true, Some(prev))?;
        }
        Ok(DeleteRangeResponse {
            revision: self.now(),
            deleted,
            prev_kvs,
        })
    }

    /// Ends the transaction: the store's revision advances if anything changed. Returns what
    /// changed, in order.
    pub(crate) fn finish(self) -> Vec<Event> {
        if !self.events.is_empty() {
            self.state.current = self.main;
        }
        self.events
    }
}

/// Discards history below `rev` (keeping each key's version live at `rev`).
pub(crate) fn compact(txn: &WriteTransaction, state: &mut KvState, rev: i64) -> Result<()> {
    if rev <= state.compacted {
        return Err(Error::Compacted);
    }
    if rev > state.current {
        return Err(Error::FutureRev);
    }
    put_u64(txn, meta::SCHEDULED_COMPACT_REVISION, rev as u64)?;
    let removed = state.index.compact(rev);
    let mut table = txn.open_table(KV)?;
    for r in &removed {
        table.remove((r.main, r.sub))?;
    }
    put_u64(txn, meta::FINISHED_COMPACT_REVISION, rev as u64)?;
    state.compacted = rev;
    tracing::debug!(revision = rev, removed = removed.len(), "compacted");
    Ok(())
}

/// Serves a range on the last committed state.
pub(crate) fn range_committed(
    txn: &ReadTransaction,
    state: &KvState,
    req: &RangeRequest,
) -> Result<RangeResponse> {
    range(&txn.open_table(KV)?, state, req, state.current)
}

/// Serves a txn that writes nothing (see `TxnRequest::is_read_only`) on the last committed
/// state: the branch its compares choose, nested txns included, all at the current revision.
pub(crate) fn read_only_txn(
    txn: &ReadTransaction,
    state: &KvState,
    t: &TxnRequest,
) -> Result<TxnResponse> {
    fn run(
        table: &impl ReadableTable<(i64, i64), &'static [u8]>,
        state: &KvState,
        t: &TxnRequest,
    ) -> Result<TxnResponse> {
        let mut succeeded = true;
        for c in &t.compare {
            if !compare(table, state, c, state.current)? {
                succeeded = false;
                break;
            }
        }
        let mut responses = Vec::new();
        for op in if succeeded { &t.success } else { &t.failure } {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(range(table, state, r, state.current)?),
                RequestOp::Txn(nested) => ResponseOp::Txn(run(table, state, nested)?),
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                    return Err(Error::NotReadOnly);
                }
            });
        }
        Ok(TxnResponse {
            revision: state.current,
            succeeded,
            responses,
        })
    }
    run(&txn.open_table(KV)?, state, t)
}

/// Checksums the history up to `rev` (0: now).
pub(crate) fn hash_kv(txn: &ReadTransaction, state: &KvState, rev: i64) -> Result<HashKv> {
    let at = readable(state, rev, state.current)?;
    let table = txn.open_table(KV)?;
    let mut hash = 0u32;
    for item in table.range(..(at + 1, 0))? {
        let (k, v) = item?;
        let (main, sub) = k.value();
        hash = crc32c::crc32c_append(hash, &main.to_be_bytes());
        hash = crc32c::crc32c_append(hash, &sub.to_be_bytes());
        hash = crc32c::crc32c_append(hash, v.value());
    }
    Ok(HashKv {
        hash,
        compact_revision: state.compacted,
        hash_revision: at,
    })
}

/// Every change to keys in `interval` at revisions `from..=to`, in order, with previous
/// versions: what a watcher behind the current revision catches up with.
pub(crate) fn events_between(
    txn: &ReadTransaction,
    state: &KvState,
    from: i64,
    to: i64,
    interval: &KeyInterval,
) -> Result<Vec<Event>> {
    if from < state.compacted {
        return Err(Error::Compacted);
    }
    let mut events = Vec::new();
    if to < from {
        return Ok(events);
    }
    let table = txn.open_table(KV)?;
    for item in table.range((from.max(1), 0)..(to.saturating_add(1), 0))? {
        let (k, v) = item?;
        let (main, sub) = k.value();
        let (kv, tombstone) = record::decode(main, v.value())?;
        if !interval.contains(&kv.key) {
            continue;
        }
        let prev_kv = match state.index.before(&kv.key, Revision { main, sub }) {
            Some(rev) => Some(fetch(&table, rev)?),
            None => None,
        };
        let kind = if tombstone {
            EventKind::Delete
        } else {
            EventKind::Put
        };
        events.push(Event { kind, kv, prev_kv });
    }
    Ok(events)
}

#[cfg(test)]
mod tests;
