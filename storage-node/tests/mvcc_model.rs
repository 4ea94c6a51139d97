//! Property test: the engine's KV semantics against a plain model that keeps a full copy of
//! the key space at every revision. Random sequences of put, delete, txn, compact and
//! range-at-revision must give the same results and the same revisions.

mod common;

use std::collections::BTreeMap;

use common::{Log, response};
use proptest::prelude::*;
use storage_node::Store;
use storage_node::api::*;

fn key(k: u8) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        k: u8,
        v: u8,
    },
    Delete {
        k: u8,
        end: Option<u8>,
    },
    /// If `version(k) == version`, put every `puts` key, else delete every `deletes` key.
    Txn {
        k: u8,
        version: i64,
        puts: Vec<u8>,
        deletes: Vec<u8>,
    },
    /// Compact at the current revision minus `back`.
    Compact {
        back: i64,
    },
    /// Range at the current revision minus `back` (0 or less reads now).
    Range {
        k: u8,
        end: Option<u8>,
        back: i64,
        limit: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..8;
    prop_oneof![
        4 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Put { k, v }),
        1 => (k.clone(), proptest::option::of(0u8..9)).prop_map(|(k, end)| Op::Delete { k, end }),
        1 => (k.clone(), 0i64..3, proptest::collection::btree_set(0u8..8, 0..3), proptest::collection::btree_set(0u8..8, 0..3))
            .prop_map(|(k, version, puts, deletes)| Op::Txn { k, version, puts: puts.into_iter().collect(), deletes: deletes.into_iter().collect() }),
        1 => (0i64..4).prop_map(|back| Op::Compact { back }),
        3 => (k, proptest::option::of(0u8..9), 0i64..6, 0i64..4).prop_map(|(k, end, back, limit)| Op::Range { k, end, back, limit }),
    ]
}

/// The key space at every revision; `history[r]` is the state at revision `r`.
struct Model {
    history: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compacted: i64,
}

impl Model {
    fn current(&self) -> i64 {
        self.history.len() as i64 - 1
    }

    fn in_range(k: &[u8], start: u8, end: Option<u8>) -> bool {
        match end {
            None => k == key(start).as_slice(),
            Some(end) => k >= key(start).as_slice() && k < key(end).as_slice(),
        }
    }

    /// Runs writes against a copy of the current state; a new revision only if anything changed.
    fn write(&mut self, f: impl FnOnce(&mut BTreeMap<Vec<u8>, KeyValue>, i64) -> bool) {
        let rev = self.current() + 1;
        let mut next = self.history.last().cloned().unwrap_or_default();
        if f(&mut next, rev) {
            self.history.push(next);
        }
    }

    fn put(map: &mut BTreeMap<Vec<u8>, KeyValue>, rev: i64, k: u8, value: Vec<u8>) {
        let prev = map.get(&key(k));
        let kv = KeyValue {
            key: key(k),
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
            value,
            lease: 0,
        };
        map.insert(key(k), kv);
    }

    fn delete(map: &mut BTreeMap<Vec<u8>, KeyValue>, k: u8, end: Option<u8>) -> bool {
        let before = map.len();
        map.retain(|key, _| !Model::in_range(key, k, end));
        map.len() != before
    }

    fn range(
        &self,
        k: u8,
        end: Option<u8>,
        at: i64,
        limit: i64,
    ) -> Result<(Vec<KeyValue>, i64, bool), String> {
        let at = if at <= 0 { self.current() } else { at };
        if at > self.current() {
            return Err("mvcc: required revision is a future revision".into());
        }
        if at < self.compacted {
            return Err("mvcc: required revision has been compacted".into());
        }
        let mut kvs: Vec<KeyValue> = self.history[at as usize]
            .values()
            .filter(|kv| Model::in_range(&kv.key, k, end))
            .cloned()
            .collect();
        let count = kvs.len() as i64;
        let more = limit > 0 && kvs.len() > limit as usize;
        if more {
            kvs.truncate(limit as usize);
        }
        Ok((kvs, count, more))
    }
}

fn end_bytes(end: Option<u8>) -> Vec<u8> {
    end.map(key).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let store = Store::in_memory(storage_node::StoreConfig::default()).unwrap();
        let mut log = Log::default();
        // As in etcd, an empty store is at revision 1 (revisions 0 and 1 are both empty).
        let mut model = Model { history: vec![BTreeMap::new(); 2], compacted: 0 };
        let mut apply = |request: Request| response(store.apply(&log.push(RequestHeader::default(), request)).unwrap());
        for op in ops {
            match op {
                Op::Put { k, v } => {
                    let got = apply(Request::Put(PutRequest { key: key(k), value: vec![v], ..Default::default() })).unwrap();
                    model.write(|map, rev| { Model::put(map, rev, k, vec![v]); true });
                    prop_assert_eq!(got, Response::Put(PutResponse { revision: model.current(), prev_kv: None }));
                }
                Op::Delete { k, end } => {
                    let got = apply(Request::DeleteRange(DeleteRangeRequest { key: key(k), range_end: end_bytes(end), prev_kv: false })).unwrap();
                    let before = model.history.last().cloned().unwrap_or_default();
                    model.write(|map, _| Model::delete(map, k, end));
                    let deleted = before.keys().filter(|key| Model::in_range(key, k, end)).count() as i64;
                    prop_assert_eq!(got, Response::DeleteRange(DeleteRangeResponse { revision: model.current(), deleted, prev_kvs: vec![] }));
                }
                Op::Txn { k, version, puts, deletes } => {
                    let compare = vec![Compare { result: CompareResult::Equal, target: CompareTarget::Version(version), key: key(k), range_end: vec![] }];
                    let success = puts.iter().map(|p| RequestOp::Put(PutRequest { key: key(*p), value: vec![*p], ..Default::default() })).collect();
                    let failure = deletes.iter().map(|d| RequestOp::DeleteRange(DeleteRangeRequest { key: key(*d), ..Default::default() })).collect();
                    let got = apply(Request::Txn(TxnRequest { compare, success, failure })).unwrap();
                    let current_version = model.history.last().and_then(|m| m.get(&key(k))).map_or(0, |kv| kv.version);
                    let succeeded = current_version == version;
                    model.write(|map, rev| {
                        if succeeded {
                            puts.iter().for_each(|p| Model::put(map, rev, *p, vec![*p]));
                            !puts.is_empty()
                        } else {
                            let before = map.len();
                            deletes.iter().for_each(|d| { Model::delete(map, *d, None); });
                            map.len() != before
                        }
                    });
                    let Response::Txn(t) = got else { panic!("txn response expected") };
                    prop_assert_eq!((t.succeeded, t.revision), (succeeded, model.current()));
                }
                Op::Compact { back } => {
                    let revision = model.current() - back;
                    let got = apply(Request::Compaction(CompactionRequest { revision, physical: false }));
                    if revision <= model.compacted {
                        prop_assert_eq!(got, Err("mvcc: required revision has been compacted".to_string()));
                    } else {
                        prop_assert!(got.is_ok());
                        model.compacted = revision;
                    }
                }
                Op::Range { k, end, back, limit } => {
                    let at = model.current() - back;
                    let req = RangeRequest { key: key(k), range_end: end_bytes(end), revision: at, limit, ..Default::default() };
                    let got = store.range(&req).map(|r| (r.kvs, r.count, r.more)).map_err(|e| e.to_string());
                    prop_assert_eq!(got, model.range(k, end, at, limit));
                }
            }
        }
        prop_assert_eq!(store.status().revision, model.current());
        prop_assert_eq!(store.status().key_count, model.history.last().map_or(0, |m| m.len() as u64));
    }
}
