//! The durable raft log: entries, the vote, and the committed and last purged log IDs, in a
//! redb file of their own beside the engine's ([`LOG_FILE`]; the engine's is
//! [`crate::backend::DB_FILE`]).
//!
//! A separate file keeps the log's fsyncs (one per append) apart from the engine's (one per
//! applied batch), and lets either be inspected or rebuilt without the other.
//!
//! # Durability
//! An append commits its entries without an fsync (redb's `Durability::None`): they are
//! readable at once, so openraft sends them to the followers while this member's disk write is
//! still under way, as etcd's leader does. A flusher thread then makes every such append
//! durable with one `Immediate` commit (group commit: appends that arrive during an fsync
//! share the next one) and only then reports them flushed (the `IOFlushed` callback): openraft
//! counts an entry toward a quorum on this member only once it is on disk. Every other write
//! (vote, truncation, purge) commits `Immediate` itself, returns only once fsynced, and first
//! reports the appends its fsync also covered, so completions reach openraft in log order.
//!
//! # Format
//! Table `raft_log`: log index → postcard bytes of the openraft entry. Table `raft_meta`:
//! `format_version`, `vote`, `committed`, `last_purged`, each postcard-encoded. Indexes are
//! openraft's (from 0), not the engine's (see [`crate::raft`]).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Entry, Error, LogId, TypeConfig, Vote, blocking};
use crate::entry::Member;

/// Name of the raft log file inside the data directory.
pub const LOG_FILE: &str = "raft.redb";

/// On-disk format written by this build; opening a log of another format fails.
const FORMAT_VERSION: u64 = 1;

/// Log entries: index → postcard-encoded openraft entry.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");

/// Single values, by the names in [`key`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// Keys of [`META`].
mod key {
    /// Format of the file (u64).
    pub const FORMAT_VERSION: &str = "format_version";
    /// The last saved vote.
    pub const VOTE: &str = "vote";
    /// The last saved committed log ID (absent: none saved).
    pub const COMMITTED: &str = "committed";
    /// The last purged log ID: entries at or below it are gone.
    pub const LAST_PURGED: &str = "last_purged";
}

/// Everything a member's raft log holds, read by offline tools.
#[derive(Debug, Default)]
pub struct LogContents {
    /// The last saved vote.
    pub vote: Option<Vote>,
    /// The last saved committed log ID.
    pub committed: Option<LogId>,
    /// Entries at or below this were purged.
    pub last_purged: Option<LogId>,
    /// The entries still held, in index order.
    pub entries: Vec<Entry>,
}

/// The raft log of one member. Clones share the same file (openraft's log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Durations of the durable commits (etcd's `etcd_disk_wal_fsync_duration_seconds`).
    fsyncs: prometheus_client::metrics::histogram::Histogram,
    flusher: Arc<Flusher>,
    /// The newest entries, decoded: replication and the state machine read what was just
    /// appended from here instead of from redb.
    tail: Arc<Mutex<Tail>>,
}

/// Entries most recently appended, mirroring the end of the log: a contiguous run of indexes
/// that redb holds with the same contents.
#[derive(Default)]
struct Tail {
    entries: std::collections::BTreeMap<u64, Entry>,
}

/// How many of the newest entries [`Tail`] keeps.
const TAIL_ENTRIES: usize = 1024;

impl Tail {
    /// Records entries just committed to redb, in index order.
    fn appended(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first().map(|e| e.log_id.index()) else {
            return;
        };
        // Appending at or below the current end replaces what follows (redb's inserts did);
        // past the end would leave a gap this mirror cannot represent.
        let contiguous = self
            .entries
            .last_key_value()
            .is_none_or(|(&last, _)| first <= last + 1);
        if !contiguous {
            self.entries.clear();
        }
        self.entries.split_off(&first);
        for entry in entries {
            self.entries.insert(entry.log_id.index(), entry.clone());
        }
        while self.entries.len() > TAIL_ENTRIES {
            self.entries.pop_first();
        }
    }

    /// Entries in `[from, until)` if this mirror holds every one of them.
    fn get(&self, from: u64, until: Option<u64>) -> Option<Vec<Entry>> {
        let (&first, _) = self.entries.first_key_value()?;
        let (&last, _) = self.entries.last_key_value()?;
        let until = until.unwrap_or(last + 1);
        if from < first || until > last + 1 {
            return None;
        }
        if until <= from {
            return Some(Vec::new());
        }
        Some(
            self.entries
                .range(from..until)
                .map(|(_, e)| e.clone())
                .collect(),
        )
    }
}

/// Appends committed but not yet fsynced, and the order of durable commits.
#[derive(Default)]
struct Flusher {
    /// Callbacks of appends whose entries are committed without an fsync, in log order.
    pending: Mutex<Vec<IOFlushed<TypeConfig>>>,
    /// Wakes the flusher thread when `pending` gains a callback.
    wake: Condvar,
    /// Held from the start of a durable commit until the callbacks it covers were called, so
    /// the flusher thread and other durable writes never report out of order.
    order: Mutex<()>,
    /// The committed log ID openraft last saved, not yet written: the next durable commit
    /// writes it (`Some(None)`: remove it).
    committed: Mutex<Option<Option<LogId>>>,
}

impl Flusher {
    fn lock_pending(&self) -> MutexGuard<'_, Vec<IOFlushed<TypeConfig>>> {
        // A panic while holding the list leaves it usable: it only ever holds callbacks.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_order(&self) -> MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_committed(&self) -> MutexGuard<'_, Option<Option<LogId>>> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the committed log ID saved since the last durable commit into `txn`.
    fn write_committed(&self, txn: &WriteTransaction) -> Result<(), Error> {
        match self.lock_committed().take() {
            None => Ok(()),
            Some(Some(id)) => put_meta(txn, key::COMMITTED, &id),
            Some(None) => {
                txn.open_table(META)?.remove(key::COMMITTED)?;
                Ok(())
            }
        }
    }

    /// Reports every pending append as `result` (called after a durable commit, under the
    /// order lock).
    fn complete_pending(&self, result: &Result<(), Error>) {
        let flushed = std::mem::take(&mut *self.lock_pending());
        for callback in flushed {
            callback.io_completed(match result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            });
        }
    }
}

/// How often an idle flusher thread checks whether its log is still open.
const FLUSHER_IDLE_CHECK: Duration = Duration::from_millis(200);

/// The flusher thread: waits for pending appends, makes them durable with one `Immediate`
/// commit (which persists every earlier non-durable one; it writes only the committed log ID),
/// then reports them.
/// Ends once the log is closed.
fn flush_appends(
    db: Weak<Database>,
    flusher: Arc<Flusher>,
    fsyncs: prometheus_client::metrics::histogram::Histogram,
) {
    loop {
        {
            let mut pending = flusher.lock_pending();
            while pending.is_empty() {
                if db.strong_count() == 0 {
                    return;
                }
                pending = flusher
                    .wake
                    .wait_timeout(pending, FLUSHER_IDLE_CHECK)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let Some(db) = db.upgrade() else {
            return;
        };
        let _order = flusher.lock_order();
        let started = std::time::Instant::now();
        let result = db.begin_write().map_err(Error::from).and_then(|txn| {
            flusher.write_committed(&txn)?;
            txn.commit().map_err(Error::from)
        });
        if result.is_ok() {
            fsyncs.observe(started.elapsed().as_secs_f64());
        } else if let Err(error) = &result {
            tracing::error!(%error, "the raft log's fsync failed");
        }
        flusher.complete_pending(&result);
    }
}

impl LogStore {
    /// Opens (or creates) the raft log in `dir`. Blocking: call it before starting raft, or
    /// from a blocking task.
    pub fn open(dir: &Path) -> Result<LogStore, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(LOG_FILE);
        let db = crate::backend::create_database(&path).map_err(|e| match e {
            crate::backend::Error::Redb(e) => Error::Redb(e),
            crate::backend::Error::Io { source, .. } => Error::Io { path, source },
            other => Error::Engine(other),
        })?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        let found: Option<u64> = get_meta(&txn.open_table(META)?, key::FORMAT_VERSION)?;
        match found {
            None => put_meta(&txn, key::FORMAT_VERSION, &FORMAT_VERSION)?,
            Some(v) if v == FORMAT_VERSION => {}
            Some(found) => {
                return Err(Error::Format {
                    found,
                    expected: FORMAT_VERSION,
                });
            }
        }
        txn.commit()?;
        let db = Arc::new(db);
        let fsyncs = crate::metrics::disk_durations();
        let flusher = Arc::new(Flusher::default());
        let (weak, thread_flusher, thread_fsyncs) =
            (Arc::downgrade(&db), flusher.clone(), fsyncs.clone());
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_appends(weak, thread_flusher, thread_fsyncs))
            .map_err(|source| Error::Io {
                path: dir.join(LOG_FILE),
                source,
            })?;
        Ok(LogStore {
            db,
            fsyncs,
            flusher,
            tail: Arc::default(),
        })
    }

    /// The durations of this log's fsyncs: every durable commit, from its start until the
    /// data is on disk (a handle on the histogram this log records into).
    pub fn fsync_durations(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.fsyncs.clone()
    }

    /// Reads the whole raft log of a stopped member in `dir` (for `dump-log`). Fails if the
    /// file is missing or a running member holds it.
    pub fn read_all(dir: &Path) -> Result<LogContents, Error> {
        let path = dir.join(LOG_FILE);
        std::fs::metadata(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        // Opened writable although only read: redb refuses a read-only open of a file that
        // needs recovery, which is exactly the state a killed member leaves behind. Recovery
        // is what the member itself would do on its next start.
        let db = Database::open(&path)?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let found: Option<u64> = get_meta(&meta, key::FORMAT_VERSION)?;
        if found != Some(FORMAT_VERSION) {
            return Err(Error::Format {
                found: found.unwrap_or(0),
                expected: FORMAT_VERSION,
            });
        }
        Ok(LogContents {
            vote: get_meta(&meta, key::VOTE)?,
            committed: get_meta(&meta, key::COMMITTED)?,
            last_purged: get_meta(&meta, key::LAST_PURGED)?,
            entries: read_entries(&txn, 0, None)?,
        })
    }

    fn lock_tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads in a blocking task, on a snapshot of the last committed state.
    async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, Error> + Send + 'static,
    {
        let db = self.db.clone();
        blocking(move || f(&db.begin_read()?)).await
    }

    /// Runs `f` in one write transaction in a blocking task and commits it durably. The
    /// commit also persists the pending appends: they are reported, in order, before this
    /// write returns.
    async fn write<F>(&self, f: F) -> Result<(), Error>
    where
        F: FnOnce(&WriteTransaction) -> Result<(), Error> + Send + 'static,
    {
        let db = self.db.clone();
        let fsyncs = self.fsyncs.clone();
        let flusher = self.flusher.clone();
        blocking(move || {
            let _order = flusher.lock_order();
            let commit = || {
                let txn = db.begin_write()?;
                f(&txn)?;
                flusher.write_committed(&txn)?;
                let started = std::time::Instant::now();
                // The durability rule: a durable commit returns only once the write is
                // fsynced. Every caller reports completion to openraft after this returns,
                // never before: a vote, an entry or a purged log ID openraft acts on is
                // already on disk.
                txn.commit()?;
                fsyncs.observe(started.elapsed().as_secs_f64());
                Ok(())
            };
            let result = commit();
            flusher.complete_pending(&result);
            result
        })
        .await
    }

    /// etcd's `--force-new-cluster` on this member's log, before raft runs: a membership of
    /// member `me` alone (as `member`) is appended after the last entry, at a term above every
    /// term in the log and the vote, with `me`'s vote for itself committed at that term and the
    /// new entry committed, so raft starts as a one-member cluster that leads at once and
    /// applies everything it holds. Entries already in the log are kept (etcd drops those past
    /// its commit index; any of them may have been acknowledged by the majority that is gone).
    /// Durable when it returns; returns the new entry's ID.
    pub async fn force_new_cluster(&mut self, me: u64, member: Member) -> Result<LogId, Error> {
        let (last, vote) = self
            .read(|txn| {
                let meta = txn.open_table(META)?;
                let vote: Option<Vote> = get_meta(&meta, key::VOTE)?;
                let last_purged: Option<LogId> = get_meta(&meta, key::LAST_PURGED)?;
                let last = match txn.open_table(LOG)?.last()? {
                    Some((_, v)) => Some(decode::<Entry>("entry", v.value())?.log_id),
                    None => last_purged,
                };
                Ok((last, vote))
            })
            .await?;
        let term = last
            .map_or(0, |id| id.committed_leader_id().term)
            .max(vote.map_or(0, |v| v.leader_id().term))
            + 1;
        let index = last.map_or(0, |id| id.index() + 1);
        let membership = super::Membership::new(
            vec![std::collections::BTreeSet::from([me])],
            std::collections::BTreeMap::from([(me, member)]),
        )
        .map_err(Error::Membership)?;
        let entry = Entry {
            log_id: LogId::new_term_index(term, index),
            payload: openraft::EntryPayload::Membership(membership),
        };
        let log_id = entry.log_id;
        let vote = Vote::new_committed(term, me);
        // The write below stores the committed ID the flusher holds, in the same commit.
        *self.flusher.lock_committed() = Some(Some(log_id));
        self.write(move |txn| {
            txn.open_table(LOG)?
                .insert(index, encode("entry", &entry)?.as_slice())?;
            put_meta(txn, key::VOTE, &vote)
        })
        .await?;
        // The in-memory tail learns the entry from the table on the next read.
        self.lock_tail().entries.clear();
        Ok(log_id)
    }

    /// Commits entries without an fsync and hands their callback to the flusher thread.
    async fn append_entries(
        &self,
        entries: Vec<Entry>,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), Error> {
        let db = self.db.clone();
        let flusher = self.flusher.clone();
        let tail = self.tail.clone();
        blocking(move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::None)
                .map_err(|e| Error::Redb(redb::Error::from(e)))?;
            {
                let mut log = txn.open_table(LOG)?;
                for entry in &entries {
                    log.insert(entry.log_id.index(), encode("entry", entry)?.as_slice())?;
                }
            }
            txn.commit()?;
            tail.lock()
                .unwrap_or_else(|p| p.into_inner())
                .appended(&entries);
            // Readable now; reported flushed only once an `Immediate` commit covered it.
            flusher.lock_pending().push(callback);
            flusher.wake.notify_one();
            Ok(())
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (from, until) = index_bounds(&range);
        if let Some(entries) = self.lock_tail().get(from, until) {
            return Ok(entries);
        }
        Ok(self.read(move |txn| read_entries(txn, from, until)).await?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self
            .read(|txn| get_meta(&txn.open_table(META)?, key::VOTE))
            .await?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(self
            .read(|txn| {
                let last_purged: Option<LogId> =
                    get_meta(&txn.open_table(META)?, key::LAST_PURGED)?;
                let last = match txn.open_table(LOG)?.last()? {
                    Some((_, v)) => Some(decode::<Entry>("entry", v.value())?.log_id),
                    // With every entry purged, the last log ID is the last purged one.
                    None => last_purged,
                };
                Ok(LogState {
                    last_purged_log_id: last_purged,
                    last_log_id: last,
                })
            })
            .await?)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        // Returns only after the durable commit in `write`: the vote is on disk before
        // openraft answers any vote request with it.
        Ok(self
            .write(move |txn| put_meta(txn, key::VOTE, &vote))
            .await?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Kept in memory until the next durable commit (an append's fsync, usually right
        // after): openraft can lose it and learn it again from the leader.
        *self.flusher.lock_committed() = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(committed) = *self.flusher.lock_committed() {
            return Ok(committed);
        }
        Ok(self
            .read(|txn| get_meta(&txn.open_table(META)?, key::COMMITTED))
            .await?)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Returns once the entries are readable; `callback` is called once they are durable.
        Ok(self
            .append_entries(entries.into_iter().collect(), callback)
            .await?)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.write(move |txn| {
            txn.open_table(LOG)?.retain_in(from.., |_, _| false)?;
            Ok(())
        })
        .await?;
        self.lock_tail().entries.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.write(move |txn| {
            // One transaction: the marker and the deletion land together, so the log never
            // shows a gap below its first entry that the marker does not explain.
            put_meta(txn, key::LAST_PURGED, &log_id)?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index(), |_, _| false)?;
            Ok(())
        })
        .await?;
        let mut tail = self.lock_tail();
        tail.entries = tail.entries.split_off(&(log_id.index() + 1));
        Ok(())
    }
}

/// A range of indexes as `[from, until)`, `until` `None` for no upper end.
fn index_bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let until = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    (from, until)
}

/// Entries with index in `[from, until)`, checking each is stored under its own index.
fn read_entries(txn: &ReadTransaction, from: u64, until: Option<u64>) -> Result<Vec<Entry>, Error> {
    let log = txn.open_table(LOG)?;
    let items = match until {
        // redb refuses an inverted range; an empty one simply holds nothing.
        Some(until) if until <= from => return Ok(Vec::new()),
        Some(until) => log.range(from..until)?,
        None => log.range(from..)?,
    };
    let mut entries = Vec::new();
    for item in items {
        let (k, v) = item?;
        let entry: Entry = decode("entry", v.value())?;
        if entry.log_id.index() != k.value() {
            return Err(Error::Corrupt {
                what: "entry",
                detail: format!("index {} stored under {}", entry.log_id.index(), k.value()),
            });
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn get_meta<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, Error> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => decode(key, v.value()).map(Some),
    }
}

fn put_meta<T: Serialize>(
    txn: &WriteTransaction,
    key: &'static str,
    value: &T,
) -> Result<(), Error> {
    txn.open_table(META)?
        .insert(key, encode(key, value)?.as_slice())?;
    Ok(())
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, Error> {
    postcard::to_stdvec(value).map_err(|e| Error::Encode {
        what,
        detail: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt {
        what,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raft_log_does_not_share_the_engine_file() {
        assert_ne!(LOG_FILE, crate::backend::DB_FILE);
    }

    #[test]
    fn index_bounds_cover_every_bound_kind() {
        assert_eq!(index_bounds(&(3..7)), (3, Some(7)));
        assert_eq!(index_bounds(&(3..=7)), (3, Some(8)));
        assert_eq!(index_bounds(&(..)), (0, None));
        assert_eq!(index_bounds(&(5..)), (5, None));
        assert_eq!(index_bounds(&(..=u64::MAX)), (0, None));
        assert_eq!(
            index_bounds(&(Bound::Excluded(2), Bound::Unbounded)),
            (3, None)
        );
    }

    #[test]
    fn a_log_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(LogStore::open(dir.path()).unwrap());
        {
            let db = Database::create(dir.path().join(LOG_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            put_meta(&txn, key::FORMAT_VERSION, &99u64).unwrap();
            txn.commit().unwrap();
        }
        let err = LogStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, Error::Format { found: 99, .. }), "{err}");
        let err = LogStore::read_all(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Format { found: 99, .. }), "{err}");
    }

    #[test]
    fn read_all_of_a_missing_log_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = LogStore::read_all(dir.path()).unwrap_err();
        assert!(err.to_string().contains(LOG_FILE), "{err}");
    }
}
