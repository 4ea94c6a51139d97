//! The watchable store, on etcd's model. Every watcher is *synced* (it has been sent every
//! change it wants up to the last published revision, and gets new ones as they are applied)
//! or *unsynced* (behind: created at an older revision, or its client did not keep up).
//!
//! - After each applied entry the state machine [publishes](Watchers::publish) its events.
//!   They go to the synced watchers whose keys they touch, found through an index (exact keys,
//!   prefixes, other ranges) without reading history. Sending never waits: a watcher whose
//!   stream's outbox is full moves to the unsynced group at the revision it missed, so an apply
//!   never waits on a client and a slow client holds up only its own stream.
//! - A background task ([`Watchers::run`]) brings unsynced watchers up to date from the
//!   engine's history: one bounded range of revisions read for many watchers at once. A watcher
//!   that has everything published moves to the synced group.
//! - A compaction cancels only watchers whose next revision is below it, the ones that still
//!   need history that is gone; synced watchers never read history.
//! - Progress: watchers created with `progress_notify` get an empty response at an interval
//!   while synced; a stream's progress request is answered once every watcher on it is synced,
//!   so the revision it reports is never ahead of the events sent (etcd ≥ 3.5.13).
//!
//! Everything a stream receives, from here and from its own handler (created, canceled), goes
//! through one outbox, in order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::api::{Event, EventKind, KeyInterval};
use crate::mvcc;
use crate::store::Store;

/// Revisions read from history per catch-up round.
const SYNC_REVISIONS: i64 = 1000;
/// Unsynced watchers brought up per round (etcd's figure).
const SYNC_WATCHERS: usize = 512;
/// How often watchers held back by a full outbox are retried (etcd's figure).
const RETRY: Duration = Duration::from_millis(100);
/// The most revisions read while publishing waits, to close the gap between a catch-up read and
/// the revisions published meanwhile (so a watcher can become synced under steady writes).
const CLOSE_GAP: i64 = 100;

/// What a watch stream is sent, in order. `watch_id` is the stream's ID for the watcher
/// (-1 where etcd uses it: a refused create, a progress answer to the stream).
#[derive(Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Delivery {
    /// The watcher was created, at the published `revision`.
    Created { watch_id: i64, revision: i64 },
    /// The watcher was not created, for `reason`.
    Refused { watch_id: i64, reason: String },
    /// The client canceled the watcher.
    Canceled { watch_id: i64 },
    /// Changes for one watcher, up to `revision`; `fragment` when the client accepts a large
    /// response split in fragments.
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Event>,
        fragment: bool,
    },
    /// The watcher needed history below `compact_revision`, which is gone; it is removed.
    Compacted {
        watch_id: i64,
        compact_revision: i64,
    },
    /// Every change up to `revision` was sent: watch ID -1 answers the stream's progress
    /// request, a watcher's own ID is its periodic progress notification.
    Progress { watch_id: i64, revision: i64 },
}

/// A watcher's definition, from its create request.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// The stream's ID for the watcher.
    pub watch_id: i64,
    /// The first key.
    pub key: Vec<u8>,
    /// The end of the range (empty: the key alone; `\0`: every key from `key` on).
    pub range_end: Vec<u8>,
    /// The first revision wanted; 0 for changes after now.
    pub start_revision: i64,
    /// Send each event's previous value.
    pub prev_kv: bool,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
    /// Send an empty response at the progress interval while synced.
    pub progress_notify: bool,
    /// The client accepts fragmented responses.
    pub fragment: bool,
}

/// Why a watcher was not created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The stream already has a watcher with that ID.
    #[error("etcdserver: duplicate watch ID")]
    Duplicate,
    /// The stream holds as many watchers as it may.
    #[error("etcdserver: too many watchers on this stream (at most {0})")]
    TooMany(usize),
}

/// A watcher: its stream and its ID there.
type Key = (u64, i64);

/// Where a watcher stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// Up to date; it wants changes from `min` on (above the published revision for a watch
    /// of a future revision).
    Synced { min: i64 },
    /// Owed every change from `next` on, to be read from history.
    Unsynced { next: i64 },
}

struct Watcher {
    spec: Spec,
    interval: KeyInterval,
    shape: Shape,
    position: Position,
}

impl Watcher {
    /// The event as this watcher is sent it; `None` when it does not want it.
    fn wanted(&self, event: &Event, from: i64) -> Option<Event> {
        let skip = match event.kind {
            EventKind::Put => self.spec.no_put,
            EventKind::Delete => self.spec.no_delete,
        };
        if skip || event.kv.mod_revision < from || !self.interval.contains(&event.kv.key) {
            return None;
        }
        let mut event = event.clone();
        if !self.spec.prev_kv {
            event.prev_kv = None;
        }
        Some(event)
    }
}

/// How a synced watcher is found from a changed key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Shape {
    /// One key.
    Exact(Vec<u8>),
    /// Every key with this prefix.
    Prefix(Vec<u8>),
    /// Any other range: checked against every change.
    Range,
}

impl Shape {
    fn of(key: &[u8], range_end: &[u8]) -> Shape {
        if range_end.is_empty() {
            return Shape::Exact(key.to_vec());
        }
        let mut end = key.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return if end == range_end {
                    Shape::Prefix(key.to_vec())
                } else {
                    Shape::Range
                };
            }
        }
        Shape::Range
    }
}

/// The synced watchers by shape.
#[derive(Default)]
struct Index {
    exact: HashMap<Vec<u8>, HashSet<Key>>,
    prefix: HashMap<Vec<u8>, HashSet<Key>>,
    ranges: HashSet<Key>,
}

impl Index {
    fn insert(&mut self, key: Key, shape: &Shape) {
        match shape {
            Shape::Exact(k) => self.exact.entry(k.clone()).or_default().insert(key),
            Shape::Prefix(p) => self.prefix.entry(p.clone()).or_default().insert(key),
            Shape::Range => self.ranges.insert(key),
        };
    }

    fn remove(&mut self, key: Key, shape: &Shape) {
        let (map, k) = match shape {
            Shape::Exact(k) => (&mut self.exact, k),
            Shape::Prefix(p) => (&mut self.prefix, p),
            Shape::Range => {
                self.ranges.remove(&key);
                return;
            }
        };
        if let Some(set) = map.get_mut(k) {
            set.remove(&key);
            if set.is_empty() {
                map.remove(k);
            }
        }
    }

    /// The synced watchers that may want a change to `key` (ranges still to be checked).
    fn candidates(&self, key: &[u8], out: &mut Vec<Key>) {
        if let Some(set) = self.exact.get(key) {
            out.extend(set);
        }
        if !self.prefix.is_empty() {
            for len in 1..=key.len() {
                if let Some(set) = self.prefix.get(&key[..len]) {
                    out.extend(set);
                }
            }
        }
        out.extend(&self.ranges);
    }
}

/// One watch stream's outbox and bookkeeping.
struct Stream {
    outbox: mpsc::Sender<Delivery>,
    ids: HashSet<i64>,
    unsynced: usize,
    /// A progress request waits for every watcher on the stream to be synced.
    progress_pending: bool,
}

#[derive(Default)]
struct Groups {
    /// The revision of the last published change.
    published: i64,
    next_stream: u64,
    streams: HashMap<u64, Stream>,
    watchers: HashMap<Key, Watcher>,
    index: Index,
    unsynced: HashSet<Key>,
}

impl Groups {
    fn send(&mut self, stream: u64, delivery: Delivery) -> bool {
        self.streams
            .get(&stream)
            .is_some_and(|s| s.outbox.try_send(delivery).is_ok())
    }

    /// Moves a synced watcher to the unsynced group, owed everything from `next` on.
    fn unsync(&mut self, key: Key, next: i64) {
        let Some(w) = self.watchers.get_mut(&key) else {
            return;
        };
        if let Position::Synced { .. } = w.position {
            self.index.remove(key, &w.shape);
            w.position = Position::Unsynced { next };
            self.unsynced.insert(key);
            if let Some(s) = self.streams.get_mut(&key.0) {
                s.unsynced += 1;
            }
        }
    }

    /// Moves an unsynced watcher, which has everything published, to the synced group.
    fn sync(&mut self, key: Key) {
        let published = self.published;
        let Some(w) = self.watchers.get_mut(&key) else {
            return;
        };
        if let Position::Unsynced { .. } = w.position {
            w.position = Position::Synced { min: published + 1 };
            self.index.insert(key, &w.shape);
            self.unsynced.remove(&key);
            if let Some(s) = self.streams.get_mut(&key.0) {
                s.unsynced -= 1;
            }
            self.answer_progress(key.0);
        }
    }

    fn remove(&mut self, key: Key) -> bool {
        let Some(w) = self.watchers.remove(&key) else {
            return false;
        };
        let stream = self.streams.get_mut(&key.0);
        match w.position {
            Position::Synced { .. } => self.index.remove(key, &w.shape),
            Position::Unsynced { .. } => {
                self.unsynced.remove(&key);
                if let Some(s) = stream {
                    s.unsynced -= 1;
                }
            }
        }
        if let Some(s) = self.streams.get_mut(&key.0) {
            s.ids.remove(&key.1);
        }
        self.answer_progress(key.0);
        true
    }

    /// Answers the stream's pending progress request once all its watchers are synced.
    fn answer_progress(&mut self, stream: u64) {
        let published = self.published;
        if let Some(s) = self.streams.get_mut(&stream)
            && s.progress_pending
            && s.unsynced == 0
            && s.outbox
                .try_send(Delivery::Progress {
                    watch_id: -1,
                    revision: published,
                })
                .is_ok()
        {
            s.progress_pending = false;
        }
    }

    /// Answers the progress requests a full outbox held back.
    fn retry_progress(&mut self) {
        let waiting: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.progress_pending && s.unsynced == 0)
            .map(|(id, _)| *id)
            .collect();
        for stream in waiting {
            self.answer_progress(stream);
        }
    }

    /// Sends the synced watchers the changes of one revision.
    fn fan_out(&mut self, revision: i64, events: &[Event]) {
        if self.watchers.is_empty() {
            return;
        }
        let mut batches: HashMap<Key, Vec<Event>> = HashMap::new();
        let mut candidates = Vec::new();
        for event in events {
            candidates.clear();
            self.index.candidates(&event.kv.key, &mut candidates);
            for key in &candidates {
                let Some(w) = self.watchers.get(key) else {
                    continue;
                };
                let Position::Synced { min } = w.position else {
                    continue;
                };
                if let Some(event) = w.wanted(event, min) {
                    batches.entry(*key).or_default().push(event);
                }
            }
        }
        for (key, events) in batches {
            let fragment = self.watchers.get(&key).is_some_and(|w| w.spec.fragment);
            let delivery = Delivery::Events {
                watch_id: key.1,
                revision,
                events,
                fragment,
            };
            if !self.send(key.0, delivery) {
                // Full (or gone): it catches up from history, from this revision.
                self.unsync(key, revision);
            }
        }
    }
}

/// Every watcher of this member.
pub struct Watchers {
    groups: Mutex<Groups>,
    store: Arc<Store>,
    /// Wakes the catch-up task.
    wake: Notify,
    /// How often `progress_notify` watchers hear from a quiet stream.
    progress_interval: Duration,
    /// The most watchers one stream may hold.
    max_per_stream: usize,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("Watchers")
            .field("published", &g.published)
            .field("watchers", &g.watchers.len())
            .field("unsynced", &g.unsynced.len())
            .finish()
    }
}

impl Watchers {
    /// No watchers yet, at the engine's current revision.
    pub fn new(store: Arc<Store>, progress_interval: Duration, max_per_stream: usize) -> Watchers {
        let published = store.revisions().0;
        // tokio's interval refuses a zero period.
        let progress_interval = progress_interval.max(Duration::from_millis(10));
        Watchers {
            groups: Mutex::new(Groups {
                published,
                ..Groups::default()
            }),
            store,
            wake: Notify::new(),
            progress_interval,
            max_per_stream,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Groups> {
        // No critical section leaves the groups half-changed on a panic it could raise.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands each applied entry's events (in log order) to the synced watchers.
    pub fn publish<'a>(&self, changes: impl IntoIterator<Item = &'a [Event]>) {
        let mut g = self.lock();
        for events in changes {
            let Some(last) = events.last() else {
                continue;
            };
            let revision = last.kv.mod_revision;
            g.fan_out(revision, events);
            g.published = revision;
        }
    }

    /// The engine's state was replaced (a snapshot installed): every watcher catches up from
    /// history after the last revision it was sent.
    pub fn reset(&self) {
        let current = self.store.revisions().0;
        let mut g = self.lock();
        let next = g.published + 1;
        let synced: Vec<Key> = g
            .watchers
            .iter()
            .filter(|(_, w)| matches!(w.position, Position::Synced { .. }))
            .map(|(k, _)| *k)
            .collect();
        for key in synced {
            g.unsync(key, next);
        }
        g.published = current;
        drop(g);
        self.wake.notify_one();
    }

    /// A new stream, sent everything through `outbox`; its watchers go when it is dropped.
    pub fn open(self: &Arc<Self>, outbox: mpsc::Sender<Delivery>) -> WatchStream {
        let mut g = self.lock();
        let id = g.next_stream;
        g.next_stream += 1;
        g.streams.insert(
            id,
            Stream {
                outbox,
                ids: HashSet::new(),
                unsynced: 0,
                progress_pending: false,
            },
        );
        WatchStream {
            id,
            watchers: self.clone(),
        }
    }

    /// Brings unsynced watchers up to date, sends progress notifications and retries what a
    /// full outbox held back, until the member is gone.
    pub async fn run(watchers: Weak<Watchers>) {
        let mut progress = match watchers.upgrade() {
            Some(w) => tokio::time::interval(w.progress_interval),
            None => return,
        };
        progress.tick().await;
        loop {
            let Some(w) = watchers.upgrade() else {
                return;
            };
            let notify = tokio::select! {
                () = w.wake.notified() => false,
                () = tokio::time::sleep(RETRY) => false,
                _ = progress.tick() => true,
            };
            if notify {
                w.notify_progress();
            }
            {
                let mut g = w.lock();
                g.retry_progress();
                if g.unsynced.is_empty() {
                    continue;
                }
            }
            let worker = w.clone();
            drop(w);
            if let Err(e) = tokio::task::spawn_blocking(move || worker.catch_up()).await {
                tracing::error!(error = %e, "watch catch-up failed");
            }
        }
    }

    /// Sends every synced `progress_notify` watcher the published revision.
    fn notify_progress(&self) {
        let mut g = self.lock();
        let revision = g.published;
        let due: Vec<Key> = g
            .watchers
            .iter()
            .filter(|(_, w)| {
                w.spec.progress_notify && matches!(w.position, Position::Synced { .. })
            })
            .map(|(k, _)| *k)
            .collect();
        for (stream, watch_id) in due {
            // A full outbox already has something on the way to the client.
            g.send(stream, Delivery::Progress { watch_id, revision });
        }
    }

    /// One catch-up round: history for up to [`SYNC_WATCHERS`] unsynced watchers, read once.
    fn catch_up(&self) {
        let compacted = self.store.revisions().1;
        // Watchers owed history below the compaction are canceled; the rest read it.
        let (reading, published) = {
            let mut g = self.lock();
            // A stream with a full outbox cannot take anything now: its watchers wait (and
            // history is not read again for them until it can).
            let batch: Vec<(Key, i64)> = g
                .unsynced
                .iter()
                .filter(|k| g.streams.get(&k.0).is_some_and(|s| s.outbox.capacity() > 0))
                .take(SYNC_WATCHERS)
                .filter_map(|k| match g.watchers.get(k)?.position {
                    Position::Unsynced { next } => Some((*k, next)),
                    Position::Synced { .. } => None,
                })
                .collect();
            let mut reading = Vec::with_capacity(batch.len());
            for (key, next) in batch {
                if next < compacted {
                    let gone = Delivery::Compacted {
                        watch_id: key.1,
                        compact_revision: compacted,
                    };
                    if g.send(key.0, gone) {
                        g.remove(key);
                    }
                } else {
                    reading.push((key, next));
                }
            }
            (reading, g.published)
        };
        let Some(from) = reading.iter().map(|(_, next)| *next).min() else {
            return;
        };
        let mut to = published.min(from.saturating_add(SYNC_REVISIONS - 1));
        let mut events = match self.history(from, to) {
            Some(events) => events,
            None => return,
        };
        let mut g = self.lock();
        if g.published > to && to == published && g.published - to <= CLOSE_GAP {
            // Publishing waits for this short read, so the watchers end up synced.
            match self.history(to + 1, g.published) {
                Some(more) => {
                    events.extend(more);
                    to = g.published;
                }
                None => return,
            }
        }
        for (key, next) in reading {
            let Some(w) = g.watchers.get(&key) else {
                continue;
            };
            if w.position != (Position::Unsynced { next }) {
                continue;
            }
            let mine: Vec<Event> = events.iter().filter_map(|e| w.wanted(e, next)).collect();
            if !mine.is_empty() {
                let delivery = Delivery::Events {
                    watch_id: key.1,
                    revision: to,
                    events: mine,
                    fragment: w.spec.fragment,
                };
                if !g.send(key.0, delivery) {
                    // Full: retried from `next` in a later round.
                    continue;
                }
            }
            if to == g.published {
                g.sync(key);
            } else if let Some(w) = g.watchers.get_mut(&key) {
                w.position = Position::Unsynced {
                    next: next.max(to + 1),
                };
            }
        }
        if !g.unsynced.is_empty() {
            drop(g);
            self.wake.notify_one();
        }
    }

    /// Every change at `from..=to`; `None` (logged) when the engine cannot read it now: a
    /// compaction that raced this read is seen by the next round.
    fn history(&self, from: i64, to: i64) -> Option<Vec<Event>> {
        match self.store.events_between(from, to, b"\0", b"\0") {
            Ok(events) => Some(events),
            Err(mvcc::Error::Compacted) => None,
            Err(e) => {
                tracing::warn!(error = %e, from, to, "reading watch history failed");
                None
            }
        }
    }
}

/// One watch stream's handle on the watchers: its watchers are removed when it is dropped.
pub struct WatchStream {
    id: u64,
    watchers: Arc<Watchers>,
}

impl WatchStream {
    /// Adds a watcher: synced when it starts after the published revision, unsynced (to catch
    /// up from history) when it starts at or below it. Its `Created` goes out through `created`
    /// (a slot the caller reserved in the outbox) before anything else for it can.
    pub fn watch(&self, spec: Spec, created: mpsc::Permit<'_, Delivery>) -> Result<(), Refusal> {
        let mut g = self.watchers.lock();
        let published = g.published;
        let key = (self.id, spec.watch_id);
        let stream = g.streams.get_mut(&self.id).expect("stream is open");
        if stream.ids.contains(&spec.watch_id) {
            return Err(Refusal::Duplicate);
        }
        if stream.ids.len() >= self.watchers.max_per_stream {
            return Err(Refusal::TooMany(self.watchers.max_per_stream));
        }
        stream.ids.insert(spec.watch_id);
        let position = if spec.start_revision == 0 || spec.start_revision > published {
            Position::Synced {
                min: spec.start_revision.max(published + 1),
            }
        } else {
            stream.unsynced += 1;
            Position::Unsynced {
                next: spec.start_revision,
            }
        };
        let watcher = Watcher {
            interval: KeyInterval::of(&spec.key, &spec.range_end),
            shape: Shape::of(&spec.key, &spec.range_end),
            spec,
            position,
        };
        match position {
            Position::Synced { .. } => g.index.insert(key, &watcher.shape),
            Position::Unsynced { .. } => {
                g.unsynced.insert(key);
            }
        }
        g.watchers.insert(key, watcher);
        created.send(Delivery::Created {
            watch_id: key.1,
            revision: published,
        });
        drop(g);
        if matches!(position, Position::Unsynced { .. }) {
            self.watchers.wake.notify_one();
        }
        Ok(())
    }

    /// Whether the stream has a watcher `watch_id`.
    pub fn contains(&self, watch_id: i64) -> bool {
        self.watchers
            .lock()
            .watchers
            .contains_key(&(self.id, watch_id))
    }

    /// Removes watcher `watch_id`; false when the stream has no such watcher.
    pub fn cancel(&self, watch_id: i64) -> bool {
        self.watchers.lock().remove((self.id, watch_id))
    }

    /// Asks for a progress response (watch ID -1): sent once every watcher on the stream has
    /// been sent everything published.
    pub fn request_progress(&self) {
        let mut g = self.watchers.lock();
        if let Some(s) = g.streams.get_mut(&self.id) {
            s.progress_pending = true;
        }
        g.answer_progress(self.id);
        let pending = g.streams.get(&self.id).is_some_and(|s| s.progress_pending);
        drop(g);
        if pending {
            self.watchers.wake.notify_one();
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let mut g = self.watchers.lock();
        let ids: Vec<i64> = g
            .streams
            .get(&self.id)
            .map(|s| s.ids.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            g.remove((self.id, id));
        }
        g.streams.remove(&self.id);
    }
}

#[cfg(test)]
mod tests;
