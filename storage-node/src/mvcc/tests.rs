//! Unit tests of the KV semantics on an in-memory backend.

use super::*;
use crate::api::{Compare, CompareResult, CompareTarget};
use crate::backend::Backend;
use redb::ReadableTableMetadata;

struct Kv {
    backend: Backend,
    state: KvState,
}

impl Kv {
    fn new() -> Kv {
        let backend = Backend::in_memory().unwrap();
        let (state, _) = KvState::load(&backend.begin_read().unwrap()).unwrap();
        Kv { backend, state }
    }

    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut KvWriter<'_, '_>) -> Result<T>,
    ) -> Result<(T, Vec<Event>)> {
        let txn = self.backend.begin_write().unwrap();
        let mut w = KvWriter::new(&txn, &mut self.state)?;
        let out = f(&mut w)?;
        let events = w.finish();
        txn.commit().unwrap();
        Ok((out, events))
    }

    fn put(&mut self, key: &str, value: &str) -> i64 {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        self.write(|w| w.put(&req)).unwrap().0.revision
    }

    fn delete(&mut self, key: &str, end: &str) -> DeleteRangeResponse {
        let req = DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: true,
        };
        self.write(|w| w.delete_range(&req)).unwrap().0
    }

    fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        range_committed(&self.backend.begin_read().unwrap(), &self.state, &req)
    }

    fn get(&self, key: &str, end: &str, revision: i64) -> Result<Vec<(String, String)>> {
        let req = RangeRequest {
            key: key.into(),
            range_end: end.into(),
            revision,
            ..Default::default()
        };
        Ok(self
            .range(req)?
            .kvs
            .into_iter()
            .map(|kv| (s(&kv.key), s(&kv.value)))
            .collect())
    }

    fn compact(&mut self, rev: i64) -> Result<()> {
        let txn = self.backend.begin_write().unwrap();
        compact(&txn, &mut self.state, rev)?;
        txn.commit().unwrap();
        Ok(())
    }

    fn hash(&self, rev: i64) -> Result<HashKv> {
        hash_kv(&self.backend.begin_read().unwrap(), &self.state, rev)
    }
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn put_sets_revisions_and_versions_like_etcd() {
    let mut kv = Kv::new();
    // As in etcd, an empty store is at revision 1: the first write makes revision 2.
    assert_eq!(kv.put("a", "1"), 2);
    assert_eq!(kv.put("b", "1"), 3);
    assert_eq!(kv.put("a", "2"), 4);
    let a = kv
        .range(RangeRequest {
            key: "a".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(a.revision, 4);
    let a = &a.kvs[0];
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 4, 2));
    kv.delete("a", "");
    assert_eq!(kv.put("a", "3"), 6);
    let a = &kv
        .range(RangeRequest {
            key: "a".into(),
            ..Default::default()
        })
        .unwrap()
        .kvs[0];
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (6, 6, 1),
        "a new life after delete"
    );
}

#[test]
fn range_serves_single_keys_ranges_prefixes_everything_and_past_revisions() {
    let mut kv = Kv::new();
    for k in ["a", "ab", "abc", "b", "c"] {
        kv.put(k, k);
    }
    kv.put("a", "new");
    assert_eq!(kv.get("ab", "", 0).unwrap(), pairs(&[("ab", "ab")]));
    assert_eq!(
        kv.get("ab", "b", 0).unwrap(),
        pairs(&[("ab", "ab"), ("abc", "abc")])
    );
    assert_eq!(
        kv.get("a", "b", 0).unwrap().len(),
        3,
        "prefix a via range end b"
    );
    assert_eq!(
        kv.get("b", "\0", 0).unwrap(),
        pairs(&[("b", "b"), ("c", "c")])
    );
    assert_eq!(kv.get("\0", "\0", 0).unwrap().len(), 5);
    assert_eq!(
        kv.get("a", "", 2).unwrap(),
        pairs(&[("a", "a")]),
        "value at revision 2"
    );
    assert_eq!(
        kv.get("c", "", 5).unwrap(),
        pairs(&[]),
        "c did not exist yet"
    );
    assert_eq!(
        kv.get("z", "a", 0).unwrap(),
        pairs(&[]),
        "an inverted range is empty"
    );
}

#[test]
fn range_limit_sets_more_and_count_covers_the_whole_range() {
    let mut kv = Kv::new();
    for k in ["k1", "k2", "k3", "k4"] {
        kv.put(k, "v");
    }
    let r = kv
        .range(RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 4));
    let r = kv
        .range(RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            limit: 4,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (4, false, 4));
    let r = kv
        .range(RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 4));
    let r = kv
        .range(RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert!(
        r.kvs
            .iter()
            .all(|kv| kv.value.is_empty() && !kv.key.is_empty())
    );
}

#[test]
fn range_sorts_by_every_target_in_both_orders() {
    let mut kv = Kv::new();
    kv.put("b", "2");
    kv.put("a", "3");
    kv.put("c", "1");
    kv.put("b", "4");
    let keys = |target, order| {
        let req = RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            sort_target: target,
            sort_order: order,
            ..Default::default()
        };
        kv.range(req)
            .unwrap()
            .kvs
            .iter()
            .map(|kv| s(&kv.key))
            .collect::<Vec<_>>()
            .join("")
    };
    assert_eq!(keys(SortTarget::Key, SortOrder::None), "abc");
    assert_eq!(keys(SortTarget::Key, SortOrder::Descend), "cba");
    assert_eq!(keys(SortTarget::Value, SortOrder::Ascend), "cab");
    assert_eq!(
        keys(SortTarget::Value, SortOrder::None),
        "cab",
        "non-key target defaults to ascending"
    );
    assert_eq!(keys(SortTarget::Mod, SortOrder::Descend), "bca");
    assert_eq!(keys(SortTarget::Create, SortOrder::Ascend), "bac");
    assert_eq!(
        keys(SortTarget::Version, SortOrder::Descend),
        "bac",
        "ties keep key order"
    );
}

#[test]
fn sorted_range_with_limit_sorts_before_truncating() {
    let mut kv = Kv::new();
    for k in ["a", "b", "c"] {
        kv.put(k, "v");
    }
    let req = RangeRequest {
        key: "\0".into(),
        range_end: "\0".into(),
        limit: 1,
        sort_order: SortOrder::Descend,
        ..Default::default()
    };
    let r = kv.range(req).unwrap();
    assert_eq!(
        (s(&r.kvs[0].key), r.more, r.count),
        ("c".to_string(), true, 3)
    );
}

#[test]
fn range_filters_by_mod_and_create_revision() {
    let mut kv = Kv::new();
    kv.put("a", "1"); // 2
    kv.put("b", "1"); // 3
    kv.put("c", "1"); // 4
    kv.put("a", "2"); // 5
    let keys = |req: RangeRequest| {
        kv.range(RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            ..req
        })
        .unwrap()
        .kvs
        .iter()
        .map(|kv| s(&kv.key))
        .collect::<String>()
    };
    assert_eq!(
        keys(RangeRequest {
            min_mod_revision: 4,
            ..Default::default()
        }),
        "ac"
    );
    assert_eq!(
        keys(RangeRequest {
            max_mod_revision: 4,
            ..Default::default()
        }),
        "bc"
    );
    assert_eq!(
        keys(RangeRequest {
            min_create_revision: 3,
            ..Default::default()
        }),
        "bc"
    );
    assert_eq!(
        keys(RangeRequest {
            max_create_revision: 2,
            ..Default::default()
        }),
        "a"
    );
}

#[test]
fn delete_range_returns_prev_kvs_under_one_revision() {
    let mut kv = Kv::new();
    for k in ["a", "b", "c"] {
        kv.put(k, k);
    }
    let d = kv.delete("a", "c");
    assert_eq!((d.deleted, d.revision), (2, 5));
    assert_eq!(
        d.prev_kvs.iter().map(|kv| s(&kv.key)).collect::<String>(),
        "ab"
    );
    let d = kv.delete("zzz", "");
    assert_eq!(
        (d.deleted, d.revision),
        (0, 5),
        "deleting nothing does not advance the revision"
    );
    assert_eq!(kv.state.live_keys, 1);
}

#[test]
fn put_with_ignore_flags_keeps_the_current_value_or_lease() {
    let mut kv = Kv::new();
    let req = PutRequest {
        key: "k".into(),
        value: "v".into(),
        lease: 7,
        ..Default::default()
    };
    kv.write(|w| w.put(&req)).unwrap();
    let keep_value = PutRequest {
        key: "k".into(),
        ignore_value: true,
        lease: 8,
        ..Default::default()
    };
    kv.write(|w| w.put(&keep_value)).unwrap();
    let got = &kv
        .range(RangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .unwrap()
        .kvs[0];
    assert_eq!((s(&got.value), got.lease, got.version), ("v".into(), 8, 2));
    let keep_lease = PutRequest {
        key: "k".into(),
        value: "w".into(),
        ignore_lease: true,
        ..Default::default()
    };
    kv.write(|w| w.put(&keep_lease)).unwrap();
    let got = &kv
        .range(RangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .unwrap()
        .kvs[0];
    assert_eq!((s(&got.value), got.lease), ("w".into(), 8));
    let missing = PutRequest {
        key: "nope".into(),
        ignore_value: true,
        ..Default::default()
    };
    assert!(matches!(
        kv.write(|w| w.put(&missing)),
        Err(Error::KeyNotFound)
    ));
}

#[test]
fn empty_keys_are_refused() {
    let mut kv = Kv::new();
    let put = PutRequest {
        key: vec![],
        value: "v".into(),
        ..Default::default()
    };
    assert!(matches!(
        kv.write(|w| w.put(&put)),
        Err(Error::Invalid(InvalidRequest::EmptyKey))
    ));
    assert!(matches!(
        kv.range(RangeRequest::default()),
        Err(Error::Invalid(InvalidRequest::EmptyKey))
    ));
    assert_eq!(kv.state.current, 1, "an empty store is at revision 1");
}

#[test]
fn compaction_discards_history_and_bounds_readable_revisions() {
    let mut kv = Kv::new();
    kv.put("a", "1"); // 2
    kv.put("a", "2"); // 3
    kv.put("b", "1"); // 4
    kv.delete("b", ""); // 5
    kv.put("c", "1"); // 6
    kv.compact(5).unwrap();
    assert!(matches!(kv.get("a", "", 4), Err(Error::Compacted)));
    assert_eq!(
        kv.get("a", "", 5).unwrap(),
        pairs(&[("a", "2")]),
        "the compaction revision stays readable"
    );
    assert_eq!(
        kv.get("\0", "\0", 6).unwrap(),
        pairs(&[("a", "2"), ("c", "1")])
    );
    assert!(matches!(kv.get("a", "", 7), Err(Error::FutureRev)));
    assert!(matches!(kv.compact(5), Err(Error::Compacted)));
    assert!(matches!(kv.compact(4), Err(Error::Compacted)));
    assert!(matches!(kv.compact(9), Err(Error::FutureRev)));
    let records = kv
        .backend
        .begin_read()
        .unwrap()
        .open_table(KV)
        .unwrap()
        .len()
        .unwrap();
    assert_eq!(records, 2, "only a@3 and c@6 remain");
}

#[test]
fn hash_kv_is_equal_for_equal_histories_and_fixed_for_a_past_revision() {
    let (mut a, mut b) = (Kv::new(), Kv::new());
    for kv in [&mut a, &mut b] {
        kv.put("x", "1");
        kv.put("y", "2");
    }
    assert_eq!(a.hash(0).unwrap(), b.hash(0).unwrap());
    let at3 = a.hash(3).unwrap();
    a.put("z", "3");
    assert_eq!(
        a.hash(3).unwrap(),
        at3,
        "later writes do not change a past hash"
    );
    b.put("z", "different");
    assert_ne!(a.hash(4).unwrap().hash, b.hash(4).unwrap().hash);
    assert_eq!(a.hash(0).unwrap().hash_revision, 4);
    a.compact(3).unwrap();
    assert!(matches!(a.hash(2), Err(Error::Compacted)));
    assert!(matches!(a.hash(5), Err(Error::FutureRev)));
    assert_eq!(a.hash(4).unwrap().compact_revision, 3);
}

#[test]
fn writes_report_events_with_previous_values() {
    let mut kv = Kv::new();
    kv.put("a", "1");
    let req = PutRequest {
        key: "a".into(),
        value: "2".into(),
        ..Default::default()
    };
    let (_, events) = kv.write(|w| w.put(&req)).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, s(&events[0].kv.value)),
        (EventKind::Put, "2".into())
    );
    assert_eq!(s(&events[0].prev_kv.as_ref().unwrap().value), "1");
    kv.delete("a", "");
    let all = events_between(
        &kv.backend.begin_read().unwrap(),
        &kv.state,
        1,
        kv.state.current,
        &KeyInterval::of(b"a", b""),
    )
    .unwrap();
    // A bounded read stops at its last revision.
    let first_two = events_between(
        &kv.backend.begin_read().unwrap(),
        &kv.state,
        1,
        3,
        &KeyInterval::of(b"a", b""),
    )
    .unwrap();
    assert_eq!(first_two.len(), 2);
    let kinds: Vec<_> = all
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.mod_revision,
                e.prev_kv.as_ref().map(|p| s(&p.value)),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Put, 2, None),
            (EventKind::Put, 3, Some("1".into())),
            (EventKind::Delete, 4, Some("2".into()))
        ]
    );
    kv.compact(3).unwrap();
    assert!(matches!(
        events_between(
            &kv.backend.begin_read().unwrap(),
            &kv.state,
            2,
            4,
            &KeyInterval::of(b"a", b"")
        ),
        Err(Error::Compacted)
    ));
}

#[test]
fn reads_inside_a_write_see_its_own_changes() {
    let mut kv = Kv::new();
    kv.put("a", "old");
    let (seen, _) = kv
        .write(|w| {
            w.put(&PutRequest {
                key: "a".into(),
                value: "new".into(),
                ..Default::default()
            })?;
            w.range(&RangeRequest {
                key: "a".into(),
                ..Default::default()
            })
        })
        .unwrap();
    assert_eq!((s(&seen.kvs[0].value), seen.revision), ("new".into(), 3));
}

#[test]
fn compares_on_missing_keys_follow_etcd() {
    let mut kv = Kv::new();
    kv.put("a", "v");
    let cmp = |target, result, key: &str| Compare {
        target,
        result,
        key: key.into(),
        range_end: vec![],
    };
    let (results, _) = kv
        .write(|w| {
            Ok(vec![
                w.compare(&cmp(
                    CompareTarget::Version(0),
                    CompareResult::Equal,
                    "missing",
                ))?,
                w.compare(&cmp(
                    CompareTarget::Value(vec![]),
                    CompareResult::Equal,
                    "missing",
                ))?,
                w.compare(&cmp(
                    CompareTarget::Value(b"v".to_vec()),
                    CompareResult::Equal,
                    "a",
                ))?,
                w.compare(&cmp(CompareTarget::Create(0), CompareResult::Greater, "a"))?,
                w.compare(&cmp(CompareTarget::Mod(1), CompareResult::Less, "a"))?,
            ])
        })
        .unwrap();
    assert_eq!(results, vec![true, false, true, true, false]);
}

#[test]
fn the_index_is_rebuilt_from_disk() {
    let mut kv = Kv::new();
    kv.put("a", "1");
    kv.put("b", "1");
    kv.delete("a", "");
    kv.put("c", "1");
    kv.compact(4).unwrap();
    let (reloaded, _) = KvState::load(&kv.backend.begin_read().unwrap()).unwrap();
    assert_eq!(
        (reloaded.current, reloaded.compacted, reloaded.live_keys),
        (5, 4, 2)
    );
    kv.compact(5).unwrap();
    kv.delete("\0", "\0");
    kv.compact(6).unwrap();
    let (reloaded, _) = KvState::load(&kv.backend.begin_read().unwrap()).unwrap();
    assert_eq!(
        (reloaded.current, reloaded.live_keys),
        (6, 0),
        "the revision survives compacting everything away"
    );
}
