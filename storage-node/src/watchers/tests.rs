use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::api::{Command, CompactionRequest, DeleteRangeRequest, PutRequest, Request};
use crate::entry::{Entry, EntryPayload, LogId};
use crate::store::{Outcome, StoreConfig};

/// An engine in memory and its watchers, with writes applied and published as the state
/// machine does.
struct Bed {
    store: Arc<Store>,
    watchers: Arc<Watchers>,
    index: u64,
}

impl Bed {
    fn new() -> Bed {
        let store = Arc::new(Store::in_memory(StoreConfig::default()).expect("store"));
        let watchers = Arc::new(Watchers::new(store.clone(), Duration::from_secs(600), 4));
        Bed {
            store,
            watchers,
            index: 0,
        }
    }

    fn apply(&mut self, request: Request) {
        self.index += 1;
        let entry = Entry {
            log_id: LogId {
                term: 1,
                index: self.index,
            },
            payload: EntryPayload::Normal(Command {
                header: Default::default(),
                request,
            }),
        };
        let outcomes = self.store.apply_batch(&[entry]).expect("apply");
        self.watchers
            .publish(outcomes.iter().filter_map(|o| match o {
                Outcome::Command { events, .. } => Some(events.as_slice()),
                _ => None,
            }));
    }

    fn put(&mut self, key: &str, value: &str) {
        self.apply(Request::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }));
    }

    fn delete(&mut self, key: &str) {
        self.apply(Request::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        }));
    }

    fn compact(&mut self, revision: i64) {
        self.apply(Request::Compaction(CompactionRequest {
            revision,
            physical: true,
        }));
    }

    /// A stream with an outbox of `capacity`.
    fn stream(&self, capacity: usize) -> (Opened, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(capacity);
        let stream = self.watchers.open(tx.clone());
        (Opened { stream, tx }, rx)
    }
}

/// A stream and its outbox's sender, as the server holds them.
struct Opened {
    stream: WatchStream,
    tx: mpsc::Sender<Delivery>,
}

impl Opened {
    fn watch(&self, spec: Spec) -> Result<(), Refusal> {
        let permit = self.tx.try_reserve().expect("room for Created");
        self.stream.watch(spec, permit)
    }

    fn cancel(&self, watch_id: i64) -> bool {
        self.stream.cancel(watch_id)
    }

    fn request_progress(&self) {
        self.stream.request_progress()
    }
}

fn spec(watch_id: i64, key: &str, range_end: &str, start_revision: i64) -> Spec {
    Spec {
        watch_id,
        key: key.into(),
        range_end: range_end.into(),
        start_revision,
        ..Spec::default()
    }
}

/// What arrived so far: (watch ID, revision, keys@revision) per delivery.
fn drain(rx: &mut mpsc::Receiver<Delivery>) -> Vec<(i64, i64, Vec<String>)> {
    let mut out = Vec::new();
    while let Ok(d) = rx.try_recv() {
        match d {
            Delivery::Events {
                watch_id,
                revision,
                events,
                ..
            } => out.push((
                watch_id,
                revision,
                events
                    .iter()
                    .map(|e| {
                        let key = String::from_utf8_lossy(&e.kv.key).into_owned();
                        format!("{key}@{}", e.kv.mod_revision)
                    })
                    .collect(),
            )),
            Delivery::Compacted {
                watch_id,
                compact_revision,
            } => out.push((watch_id, compact_revision, vec!["compacted".into()])),
            Delivery::Progress { watch_id, revision } => {
                out.push((watch_id, revision, vec!["progress".into()]))
            }
            Delivery::Created { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn synced_watchers_get_the_changes_to_their_keys_only() {
    let mut bed = Bed::new();
    let (stream, mut rx) = bed.stream(16);
    stream.watch(spec(1, "a", "", 0)).expect("exact");
    stream.watch(spec(2, "p/", "p0", 0)).expect("prefix");
    stream.watch(spec(3, "b", "d", 0)).expect("range");
    let mut deletes_only = spec(4, "p/", "p0", 0);
    deletes_only.no_put = true;
    stream.watch(deletes_only).expect("filtered");
    bed.put("a", "1"); // 2
    bed.put("p/x", "1"); // 3
    bed.put("c", "1"); // 4
    bed.put("ab", "1"); // 5: nobody's
    bed.delete("p/x"); // 6
    let mut got = drain(&mut rx);
    // Deliveries of one revision come in no set order between watchers.
    got.sort_by_key(|(id, rev, _)| (*rev, *id));
    assert_eq!(
        got,
        vec![
            (1, 2, keys(&["a@2"])),
            (2, 3, keys(&["p/x@3"])),
            (3, 4, keys(&["c@4"])),
            (2, 6, keys(&["p/x@6"])),
            (4, 6, keys(&["p/x@6"])),
        ]
    );
}

#[test]
fn a_watcher_from_history_catches_up_then_follows() {
    let mut bed = Bed::new();
    bed.put("k", "1"); // 2
    bed.put("k", "2"); // 3
    let (stream, mut rx) = bed.stream(16);
    stream.watch(spec(7, "k", "", 2)).expect("watch");
    assert!(drain(&mut rx).is_empty(), "history comes from the catch-up");
    bed.put("k", "3"); // 4: published while unsynced, read from history too
    bed.watchers.catch_up();
    bed.put("k", "4"); // 5: synced now
    assert_eq!(
        drain(&mut rx),
        vec![(7, 4, keys(&["k@2", "k@3", "k@4"])), (7, 5, keys(&["k@5"]))]
    );
}

#[test]
fn a_compaction_cancels_only_watchers_that_still_need_the_history() {
    let mut bed = Bed::new();
    let (stream, mut rx) = bed.stream(16);
    stream.watch(spec(1, "k", "", 0)).expect("synced");
    for v in ["1", "2", "3"] {
        bed.put("k", v); // 2, 3, 4
    }
    let (old, mut old_rx) = bed.stream(16);
    old.watch(spec(2, "k", "", 2)).expect("from history");
    bed.compact(4);
    bed.watchers.catch_up();
    assert_eq!(drain(&mut old_rx), vec![(2, 4, keys(&["compacted"]))]);
    // The synced watcher, created before revision 2, goes on.
    bed.put("k", "5"); // 5
    let got = drain(&mut rx);
    assert_eq!(got.last(), Some(&(1, 5, keys(&["k@5"]))), "{got:?}");
    assert_eq!(got.len(), 4, "{got:?}");
    // Starting at the compaction revision itself is allowed, as in etcd.
    let (at, mut at_rx) = bed.stream(16);
    at.watch(spec(3, "k", "", 4)).expect("at the compaction");
    bed.watchers.catch_up();
    assert_eq!(drain(&mut at_rx), vec![(3, 5, keys(&["k@4", "k@5"]))]);
}

#[test]
fn a_full_outbox_moves_the_watcher_behind_and_it_loses_nothing() {
    let mut bed = Bed::new();
    let (stream, mut rx) = bed.stream(2);
    stream.watch(spec(1, "k", "", 0)).expect("watch");
    assert!(drain(&mut rx).is_empty(), "only Created so far");
    for i in 0..6 {
        bed.put("k", &i.to_string()); // 2..=7; the outbox holds 2
    }
    let mut seen = drain(&mut rx);
    assert_eq!(seen.len(), 2);
    // The reader caught up with its outbox; the catch-up sends the rest, then it follows.
    bed.watchers.catch_up();
    bed.put("k", "x"); // 8
    seen.extend(drain(&mut rx));
    let revisions: Vec<String> = seen.into_iter().flat_map(|(_, _, k)| k).collect();
    let expected: Vec<String> = (2..=8).map(|r| format!("k@{r}")).collect();
    assert_eq!(revisions, expected);
}

#[test]
fn a_progress_request_waits_until_every_watcher_on_the_stream_is_synced() {
    let mut bed = Bed::new();
    bed.put("k", "1"); // 2
    let (stream, mut rx) = bed.stream(16);
    stream.request_progress();
    assert_eq!(drain(&mut rx), vec![(-1, 2, keys(&["progress"]))]);
    stream.watch(spec(1, "k", "", 2)).expect("behind");
    stream.request_progress();
    assert!(
        drain(&mut rx).is_empty(),
        "not before the watcher has its history"
    );
    bed.watchers.catch_up();
    assert_eq!(
        drain(&mut rx),
        vec![(1, 2, keys(&["k@2"])), (-1, 2, keys(&["progress"]))]
    );
}

#[test]
fn a_stream_refuses_duplicate_ids_and_watchers_past_its_limit() {
    let bed = Bed::new();
    let (stream, _rx) = bed.stream(16);
    for id in 0..4 {
        stream.watch(spec(id, "k", "", 0)).expect("watch");
    }
    assert_eq!(stream.watch(spec(1, "k", "", 0)), Err(Refusal::Duplicate));
    assert_eq!(stream.watch(spec(9, "k", "", 0)), Err(Refusal::TooMany(4)));
    assert!(stream.cancel(1));
    assert!(!stream.cancel(1));
    stream.watch(spec(9, "k", "", 0)).expect("room again");
    drop(stream);
    assert!(
        bed.watchers.lock().watchers.is_empty(),
        "dropped with its stream"
    );
}

#[test]
fn shapes_are_told_from_key_and_range_end() {
    assert_eq!(Shape::of(b"a", b""), Shape::Exact(b"a".to_vec()));
    assert_eq!(Shape::of(b"a/", b"a0"), Shape::Prefix(b"a/".to_vec()));
    assert_eq!(Shape::of(b"a\xff", b"b"), Shape::Prefix(b"a\xff".to_vec()));
    assert_eq!(Shape::of(b"a", b"c"), Shape::Range);
    assert_eq!(Shape::of(b"\0", b"\0"), Shape::Range);
}
