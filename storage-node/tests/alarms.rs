//! Alarms and the backend quota in the engine: what an active alarm refuses, what a member past
//! its quota answers, alarms kept across a restart, defragment, and the whole-backend hash.

mod common;

use common::*;
use storage_node::api::*;
use storage_node::quota::Quota;
use storage_node::{Store, StoreConfig};

fn alarm(action: AlarmAction, member_id: u64, alarm: AlarmType) -> Request {
    Request::Alarm(AlarmRequest {
        action,
        member_id,
        alarm,
    })
}

fn alarms(r: Result<Response, String>) -> Vec<AlarmMember> {
    match r.unwrap() {
        Response::Alarm(a) => a.alarms,
        other => panic!("not an alarm response: {other:?}"),
    }
}

fn grant(id: i64) -> Request {
    Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id })
}

fn txn(success: Vec<RequestOp>) -> Request {
    Request::Txn(TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    })
}

fn range(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

#[test]
fn nospace_refuses_what_needs_space_and_serves_the_rest() {
    let s = Store::in_memory(config()).unwrap();
    let mut log = Log::default();
    propose(&s, &mut log, "", put("a", "1")).unwrap();
    propose(&s, &mut log, "", put("b", "2")).unwrap();
    let raised = propose(
        &s,
        &mut log,
        "",
        alarm(AlarmAction::Activate, 7, AlarmType::NoSpace),
    );
    let nospace = AlarmMember {
        member_id: 7,
        alarm: AlarmType::NoSpace,
    };
    assert_eq!(alarms(raised), vec![nospace]);

    for refused in [
        put("c", "3"),
        grant(5),
        txn(vec![RequestOp::Put(PutRequest {
            key: b"c".to_vec(),
            ..Default::default()
        })]),
    ] {
        let kind = refused.kind();
        assert_eq!(
            propose(&s, &mut log, "", refused).unwrap_err(),
            NOSPACE,
            "{kind}"
        );
    }
    assert_eq!(
        s.status().rejections.get("no_space"),
        Some(&3),
        "counted as refusals"
    );
    // Reads, deletes, read-only txns and compaction still work.
    assert!(propose(&s, &mut log, "", Request::Range(range("a"))).is_ok());
    assert!(propose(&s, &mut log, "", txn(vec![RequestOp::Range(range("a"))])).is_ok());
    assert!(propose(&s, &mut log, "", del("a", "")).is_ok());
    let revision = s.status().revision;
    assert!(
        propose(
            &s,
            &mut log,
            "",
            Request::Compaction(CompactionRequest {
                revision,
                physical: true
            })
        )
        .is_ok()
    );
    assert_eq!(value(&s, "c"), None);

    // Disarming lets writes through again.
    let cleared = propose(
        &s,
        &mut log,
        "",
        alarm(AlarmAction::Deactivate, 7, AlarmType::NoSpace),
    );
    assert_eq!(alarms(cleared), vec![nospace]);
    assert!(propose(&s, &mut log, "", put("c", "3")).is_ok());
    assert_eq!(value(&s, "c").as_deref(), Some("3"));
}

#[test]
fn corrupt_refuses_every_kv_and_lease_request_but_not_auth_or_alarms() {
    let s = Store::in_memory(config()).unwrap();
    let mut log = Log::default();
    propose(
        &s,
        &mut log,
        "",
        alarm(AlarmAction::Activate, 1, AlarmType::Corrupt),
    )
    .unwrap();
    for refused in [
        put("a", "1"),
        del("a", ""),
        Request::Range(range("a")),
        grant(5),
        Request::LeaseRevoke(LeaseRevokeRequest { id: 5 }),
        Request::Compaction(CompactionRequest {
            revision: 1,
            physical: false,
        }),
    ] {
        let kind = refused.kind();
        assert_eq!(
            propose(&s, &mut log, "", refused).unwrap_err(),
            "etcdserver: corrupt cluster",
            "{kind}"
        );
    }
    assert!(propose(&s, &mut log, "", user_add("root")).is_ok());
    let listed = propose(
        &s,
        &mut log,
        "",
        alarm(AlarmAction::Get, 0, AlarmType::None),
    );
    assert_eq!(alarms(listed).len(), 1);
}

#[test]
fn a_write_past_this_members_quota_applies_but_is_answered_nospace() {
    let dir = tempfile::tempdir().unwrap();
    let size = {
        let s = Store::open(dir.path(), config()).unwrap();
        s.status().db_size
    };
    // A quota this file already exceeds: the next write is past it.
    let cfg = StoreConfig {
        quota: Quota::Bytes(size / 2),
        ..config()
    };
    let s = Store::open(dir.path(), cfg).unwrap();
    assert!(!s.quota_available(300), "a put no longer fits");
    assert!(s.quota_available(0), "a delete always fits");
    let mut log = Log::default();
    assert_eq!(
        propose(&s, &mut log, "", put("k", "v")).unwrap_err(),
        NOSPACE
    );
    // Every member applies the same entries; only the answer depends on this member's file.
    assert_eq!(value(&s, "k").as_deref(), Some("v"));
    assert!(
        s.alarms(AlarmType::None).is_empty(),
        "raising is the node's job"
    );
    assert!(propose(&s, &mut log, "", del("k", "")).is_ok());
}

#[test]
fn alarms_survive_a_restart_and_travel_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::default();
    {
        let s = Store::open(dir.path(), config()).unwrap();
        propose(
            &s,
            &mut log,
            "",
            alarm(AlarmAction::Activate, 3, AlarmType::NoSpace),
        )
        .unwrap();
    }
    let s = Store::open(dir.path(), config()).unwrap();
    let expected = vec![AlarmMember {
        member_id: 3,
        alarm: AlarmType::NoSpace,
    }];
    assert_eq!(s.alarms(AlarmType::None), expected);
    assert_eq!(s.status().alarms, expected);
    assert_eq!(
        propose(&s, &mut log, "", put("k", "v")).unwrap_err(),
        NOSPACE
    );

    let mut snapshot = Vec::new();
    s.write_snapshot(&mut snapshot).unwrap();
    let fresh = Store::in_memory(config()).unwrap();
    fresh.install_snapshot(snapshot.as_slice()).unwrap();
    assert_eq!(fresh.alarms(AlarmType::NoSpace), expected);
}

#[test]
fn defragment_gives_compacted_space_back_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), config()).unwrap();
    let mut log = Log::default();
    let value_of = |i: usize| format!("{i:0>4}{}", "x".repeat(20_000));
    for i in 0..200 {
        propose(&s, &mut log, "", put(&format!("k{}", i % 4), &value_of(i))).unwrap();
    }
    let revision = s.status().revision;
    let compact = Request::Compaction(CompactionRequest {
        revision,
        physical: true,
    });
    propose(&s, &mut log, "", compact).unwrap();
    let (hash, _) = s.hash().unwrap();
    let (before, after) = s.defragment(std::time::Duration::from_secs(5)).unwrap();
    assert!(after < before / 2, "{before} -> {after}");
    assert_eq!(s.status().db_size, after);
    assert_eq!(s.hash().unwrap().0, hash, "the same data");
    assert_eq!(value(&s, "k3"), Some(value_of(199)));
    drop(s);
    let reopened = Store::open(dir.path(), config()).unwrap();
    assert_eq!(value(&reopened, "k0"), Some(value_of(196)));
    assert!(propose(&reopened, &mut log, "", put("after", "1")).is_ok());
}

#[test]
fn the_whole_backend_hash_is_equal_for_equal_data_and_sees_more_than_kv() {
    let (log, reference) = workload(11, 300);
    let replica = Store::in_memory(config()).unwrap();
    replica.apply_batch(&log.entries).unwrap();
    assert_eq!(replica.hash().unwrap(), reference.hash().unwrap());
    // A change outside the KV history: HashKV stays, Hash moves.
    let hash_kv = replica.hash_kv(0).unwrap();
    let mut log = log;
    propose(&replica, &mut log, "root", user_add("someone")).unwrap();
    assert_eq!(replica.hash_kv(0).unwrap(), hash_kv);
    assert_ne!(replica.hash().unwrap(), reference.hash().unwrap());
}
