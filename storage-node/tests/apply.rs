//! Applying entries through the engine's public API: KV, txn, lease and auth semantics, and the
//! applied-index bookkeeping.

mod common;

use common::*;
use storage_node::api::*;
use storage_node::entry::{EntryPayload, Member, Membership};
use storage_node::{Outcome, Store};

fn store() -> Store {
    Store::in_memory(config()).unwrap()
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult) -> Compare {
    Compare {
        result,
        target,
        key: key.into(),
        range_end: vec![],
    }
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Request {
    Request::Txn(TxnRequest {
        compare,
        success,
        failure,
    })
}

fn txn_response(r: Result<Response, String>) -> TxnResponse {
    match r.unwrap() {
        Response::Txn(t) => t,
        other => panic!("not a txn response: {other:?}"),
    }
}

#[test]
fn txn_runs_the_branch_its_compares_choose_under_one_revision() {
    let s = store();
    let mut log = Log::default();
    propose(&s, &mut log, "", put("k", "1")).unwrap();
    let t = txn_response(propose(
        &s,
        &mut log,
        "",
        txn(
            vec![cmp(
                "k",
                CompareTarget::Value(b"1".to_vec()),
                CompareResult::Equal,
            )],
            vec![
                op_put("a", "x"),
                op_put("b", "y"),
                RequestOp::Range(RangeRequest {
                    key: "a".into(),
                    ..Default::default()
                }),
            ],
            vec![op_put("c", "z")],
        ),
    ));
    assert!(t.succeeded);
    assert_eq!(t.revision, 3, "k at 2, then two puts in one revision");
    match &t.responses[2] {
        ResponseOp::Range(r) => assert_eq!(r.kvs[0].value, b"x", "a txn reads its own writes"),
        other => panic!("{other:?}"),
    }
    let t = txn_response(propose(
        &s,
        &mut log,
        "",
        txn(
            vec![cmp("k", CompareTarget::Version(5), CompareResult::Greater)],
            vec![op_put("a", "never")],
            vec![op_put("c", "z")],
        ),
    ));
    assert!(!t.succeeded);
    assert_eq!(
        values(&s, "a", "d"),
        vec![
            ("a".into(), "x".into()),
            ("b".into(), "y".into()),
            ("c".into(), "z".into())
        ]
    );
    let t = txn_response(propose(
        &s,
        &mut log,
        "",
        txn(
            vec![],
            vec![RequestOp::Range(RangeRequest {
                key: "a".into(),
                ..Default::default()
            })],
            vec![],
        ),
    ));
    assert_eq!(
        t.revision, 4,
        "a read-only txn does not advance the revision"
    );
}

#[test]
fn nested_txn_compares_see_the_state_before_the_outer_txn() {
    let s = store();
    let mut log = Log::default();
    propose(&s, &mut log, "", put("flag", "off")).unwrap();
    let nested = RequestOp::Txn(TxnRequest {
        compare: vec![cmp(
            "flag",
            CompareTarget::Value(b"off".to_vec()),
            CompareResult::Equal,
        )],
        success: vec![op_put("saw", "off")],
        failure: vec![op_put("saw", "on")],
    });
    let t = txn_response(propose(
        &s,
        &mut log,
        "",
        txn(vec![], vec![op_put("flag", "on"), nested], vec![]),
    ));
    assert!(t.succeeded);
    assert_eq!(value(&s, "saw").as_deref(), Some("off"));
    assert_eq!(value(&s, "flag").as_deref(), Some("on"));
}

#[test]
fn a_txn_that_would_fail_half_way_changes_nothing() {
    let s = store();
    let mut log = Log::default();
    let bad = txn(
        vec![],
        vec![
            op_put("a", "1"),
            RequestOp::Put(PutRequest {
                key: "missing".into(),
                ignore_value: true,
                ..Default::default()
            }),
        ],
        vec![],
    );
    assert_eq!(
        propose(&s, &mut log, "", bad).unwrap_err(),
        "etcdserver: key not found"
    );
    let bad = txn(
        vec![],
        vec![
            op_put("a", "1"),
            RequestOp::Put(PutRequest {
                key: "b".into(),
                lease: 99,
                ..Default::default()
            }),
        ],
        vec![],
    );
    assert_eq!(
        propose(&s, &mut log, "", bad).unwrap_err(),
        "lease not found"
    );
    let bad = txn(
        vec![],
        vec![
            op_put("a", "1"),
            RequestOp::Range(RangeRequest {
                key: "a".into(),
                revision: 50,
                ..Default::default()
            }),
        ],
        vec![],
    );
    assert_eq!(
        propose(&s, &mut log, "", bad).unwrap_err(),
        "mvcc: required revision is a future revision"
    );
    let dup = txn(vec![], vec![op_put("a", "1"), op_put("a", "2")], vec![]);
    assert_eq!(
        propose(&s, &mut log, "", dup).unwrap_err(),
        "etcdserver: duplicate key given in txn request"
    );
    let status = s.status();
    assert_eq!(
        (status.revision, status.key_count, status.applied.index),
        (1, 0, 4)
    );
    assert_eq!(
        status.consistent_index.index, 4,
        "refusals still advance the consistent index"
    );
}

#[test]
fn invalid_requests_are_refused_with_etcd_messages() {
    let s = store();
    let mut log = Log::default();
    assert_eq!(
        propose(&s, &mut log, "", put("", "v")).unwrap_err(),
        "etcdserver: key is not provided"
    );
    let both = Request::Put(PutRequest {
        key: "k".into(),
        value: "v".into(),
        ignore_value: true,
        ..Default::default()
    });
    assert_eq!(
        propose(&s, &mut log, "", both).unwrap_err(),
        "etcdserver: value is provided"
    );
    assert_eq!(
        propose(
            &s,
            &mut log,
            "",
            Request::Compaction(CompactionRequest {
                revision: 5,
                physical: false
            })
        )
        .unwrap_err(),
        "mvcc: required revision is a future revision"
    );
    assert_eq!(s.status().rejections.get("invalid_request"), Some(&2));
}

#[test]
fn leases_attach_keys_and_revoking_deletes_them_in_one_revision() {
    let s = store();
    let mut log = Log::default();
    let granted = propose(
        &s,
        &mut log,
        "",
        Request::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 1 }),
    )
    .unwrap();
    assert_eq!(
        granted,
        Response::LeaseGrant(LeaseGrantResponse {
            revision: 1,
            id: 7,
            ttl: 2
        }),
        "TTL raised to the minimum"
    );
    assert_eq!(
        propose(
            &s,
            &mut log,
            "",
            Request::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 10 })
        )
        .unwrap_err(),
        "lease already exists"
    );
    for k in ["a", "b"] {
        propose(
            &s,
            &mut log,
            "",
            Request::Put(PutRequest {
                key: k.into(),
                value: "v".into(),
                lease: 7,
                ..Default::default()
            }),
        )
        .unwrap();
    }
    propose(&s, &mut log, "", put("c", "no lease")).unwrap();
    let lease = s.lease(7).unwrap();
    assert_eq!(
        lease.keys.iter().cloned().collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(
        propose(
            &s,
            &mut log,
            "",
            Request::Put(PutRequest {
                key: "d".into(),
                lease: 8,
                ..Default::default()
            })
        )
        .unwrap_err(),
        "lease not found"
    );
    let revoked = propose(
        &s,
        &mut log,
        "",
        Request::LeaseRevoke(LeaseRevokeRequest { id: 7 }),
    )
    .unwrap();
    assert_eq!(
        revoked,
        Response::LeaseRevoke(LeaseRevokeResponse { revision: 5 })
    );
    assert_eq!(
        values(&s, "\0", "\0"),
        vec![("c".into(), "no lease".into())]
    );
    assert!(s.lease(7).is_none());
    assert_eq!(
        propose(
            &s,
            &mut log,
            "",
            Request::LeaseRevoke(LeaseRevokeRequest { id: 7 })
        )
        .unwrap_err(),
        "lease not found"
    );
}

#[test]
fn overwriting_a_key_moves_it_to_the_new_lease() {
    let s = store();
    let mut log = Log::default();
    for id in [1, 2] {
        propose(
            &s,
            &mut log,
            "",
            Request::LeaseGrant(LeaseGrantRequest { id, ttl: 60 }),
        )
        .unwrap();
    }
    propose(
        &s,
        &mut log,
        "",
        Request::Put(PutRequest {
            key: "k".into(),
            lease: 1,
            ..Default::default()
        }),
    )
    .unwrap();
    propose(
        &s,
        &mut log,
        "",
        Request::Put(PutRequest {
            key: "k".into(),
            lease: 2,
            ..Default::default()
        }),
    )
    .unwrap();
    propose(
        &s,
        &mut log,
        "",
        Request::LeaseRevoke(LeaseRevokeRequest { id: 1 }),
    )
    .unwrap();
    assert!(
        value(&s, "k").is_some(),
        "revoking the old lease leaves the key"
    );
    assert_eq!(s.leases().len(), 1);
}

#[test]
fn entries_at_or_below_the_applied_index_are_skipped() {
    let s = store();
    let mut log = Log::default();
    propose(&s, &mut log, "", put("k", "1")).unwrap();
    propose(&s, &mut log, "", put("k", "2")).unwrap();
    for entry in &log.entries {
        assert!(matches!(s.apply(entry).unwrap(), Outcome::Skipped));
    }
    assert_eq!(value(&s, "k").as_deref(), Some("2"));
    assert_eq!(s.status().skipped_entries, 2);
}

#[test]
fn writes_are_checked_against_the_header_user_and_auth_revision() {
    let s = store();
    let mut log = Log::default();
    enable_auth(&s, &mut log);
    propose(&s, &mut log, "alice", put("app/x", "mine")).unwrap();
    assert_eq!(
        propose(&s, &mut log, "alice", put("other", "v")).unwrap_err(),
        "auth: permission denied"
    );
    assert_eq!(
        propose(&s, &mut log, "alice", del("app/", "\0")).unwrap_err(),
        "auth: permission denied",
        "a range beyond her prefix"
    );
    let sneaky = txn(
        vec![],
        vec![op_put("app/y", "ok")],
        vec![op_put("other", "v")],
    );
    assert_eq!(
        propose(&s, &mut log, "alice", sneaky).unwrap_err(),
        "auth: permission denied",
        "both branches are checked"
    );
    assert_eq!(
        propose(
            &s,
            &mut log,
            "alice",
            auth(AuthRequest::RoleAdd {
                name: "mine".into()
            })
        )
        .unwrap_err(),
        "auth: permission denied"
    );
    let stale = RequestHeader {
        id: 0,
        username: "root".into(),
        auth_revision: s.auth_status().1 - 1,
    };
    let entry = log.push(stale, put("app/z", "stale"));
    assert_eq!(
        response(s.apply(&entry).unwrap()).unwrap_err(),
        "auth: revision in header is old"
    );
    let anonymous = log.push(RequestHeader::default(), put("app/z", "anon"));
    assert_eq!(
        response(s.apply(&anonymous).unwrap()).unwrap_err(),
        "auth: user name is empty"
    );
    assert_eq!(
        values(&s, "\0", "\0"),
        vec![("app/x".into(), "mine".into())]
    );
    let rejections = s.status().rejections;
    assert_eq!(rejections.get("permission_denied"), Some(&4));
    assert_eq!(rejections.get("auth_old_revision"), Some(&1));
    assert_eq!(rejections.get("user_empty"), Some(&1));
    assert_eq!(s.status().applied.index, log.entries.len() as u64);
}

#[test]
fn passwords_are_verified_against_the_stored_hash() {
    let s = store();
    let mut log = Log::default();
    enable_auth(&s, &mut log);
    assert_eq!(s.check_password("alice", "pw").unwrap(), s.auth_status().1);
    assert!(matches!(
        s.check_password("alice", "wrong"),
        Err(storage_node::auth::Error::AuthFailed)
    ));
    assert!(matches!(
        s.check_password("nobody", "pw"),
        Err(storage_node::auth::Error::AuthFailed)
    ));
    let token = storage_node::auth::generate_simple_token(log.next_id().index);
    let login = auth(AuthRequest::Authenticate {
        name: "alice".into(),
        simple_token: token.clone(),
    });
    assert_eq!(
        propose(&s, &mut log, "", login).unwrap(),
        Response::Authenticate {
            token: token.clone()
        }
    );
    let info = s
        .auth_info_from_token(&token, std::time::Instant::now())
        .unwrap();
    assert_eq!(info.username, "alice");
    assert!(
        s.check_permission(&info, b"app/1", b"", PermissionType::Read)
            .is_ok()
    );
    assert!(
        s.check_permission(&info, b"x", b"", PermissionType::Read)
            .is_err()
    );
}

#[test]
fn membership_and_blank_entries_advance_the_index_and_membership_persists() {
    let dir = tempfile::tempdir().unwrap();
    let membership = Membership {
        configs: vec![[1, 2].into_iter().collect()],
        members: [
            (
                1,
                Member {
                    name: "n1".into(),
                    ..Default::default()
                },
            ),
            (
                3,
                Member {
                    name: "n3".into(),
                    ..Default::default()
                },
            ),
        ]
        .into_iter()
        .collect(),
    };
    {
        let s = Store::open(dir.path(), config()).unwrap();
        let mut log = Log::default();
        s.apply(&log.push_payload(EntryPayload::Blank)).unwrap();
        s.apply(&log.push_payload(EntryPayload::Membership(membership.clone())))
            .unwrap();
        assert_eq!(s.status().consistent_index.index, 2);
    }
    let s = Store::open(dir.path(), config()).unwrap();
    let stored = s.membership().unwrap();
    assert_eq!((stored.log_id.index, &stored.membership), (2, &membership));
    assert!(stored.membership.is_voter(2) && !stored.membership.is_voter(3));
    assert_eq!(s.status().consistent_index.index, 2);
}

#[test]
fn a_batch_applies_in_order_and_reports_each_entry() {
    let s = store();
    let mut log = Log::default();
    let entries: Vec<_> = (0..64)
        .map(|i| log.push(RequestHeader::default(), put(&format!("k{i:02}"), "v")))
        .collect();
    let outcomes = s.apply_batch(&entries).unwrap();
    assert_eq!(outcomes.len(), 64);
    assert!(
        matches!(&outcomes[63], Outcome::Command { response: Ok(Response::Put(p)), .. } if p.revision == 65)
    );
    let status = s.status();
    assert_eq!(
        (
            status.key_count,
            status.revision,
            status.consistent_index.index
        ),
        (64, 65, 64)
    );
}

#[test]
fn the_fault_switch_is_reported_in_status() {
    assert!(!store().status().unsafe_reproduce_etcd_11651);
    assert!(
        Store::in_memory(faulty())
            .unwrap()
            .status()
            .unsafe_reproduce_etcd_11651
    );
}

/// A txn that writes nothing is served from the state without the log: its answer, errors
/// included, must be the one applying it through the log gives.
#[test]
fn read_only_txns_served_from_the_state_answer_as_applied_ones() {
    let s = store();
    let mut log = Log::default();
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("b", "5")] {
        propose(&s, &mut log, "", put(k, v)).unwrap();
    }
    propose(&s, &mut log, "", del("c", "")).unwrap();
    propose(
        &s,
        &mut log,
        "",
        Request::Compaction(CompactionRequest {
            revision: 2,
            physical: false,
        }),
    )
    .unwrap();
    let range = |key: &str, end: &str, revision: i64| {
        RequestOp::Range(RangeRequest {
            key: key.into(),
            range_end: end.into(),
            revision,
            ..Default::default()
        })
    };
    let value_is = |key: &str, value: &str| {
        cmp(
            key,
            CompareTarget::Value(value.into()),
            CompareResult::Equal,
        )
    };
    let nested = |compare, success, failure| {
        RequestOp::Txn(TxnRequest {
            compare,
            success,
            failure,
        })
    };
    let cases = [
        (vec![], vec![], vec![]),
        (
            vec![value_is("a", "3")],
            vec![range("a", "z", 0), range("a", "", 3)],
            vec![range("b", "", 0)],
        ),
        (
            vec![value_is("a", "1")],
            vec![range("a", "z", 0)],
            vec![range("a", "\0", 4), range("c", "", 5)],
        ),
        (
            vec![cmp("c", CompareTarget::Version(0), CompareResult::Equal)],
            vec![nested(
                vec![cmp("b", CompareTarget::Mod(5), CompareResult::Greater)],
                vec![range("b", "", 0)],
                vec![range("a", "", 0)],
            )],
            vec![],
        ),
        (vec![], vec![range("a", "", 1)], vec![]),
        (vec![], vec![range("a", "", 100)], vec![]),
    ];
    for (compare, success, failure) in cases {
        let t = TxnRequest {
            compare,
            success,
            failure,
        };
        assert!(t.is_read_only(), "{t:?}");
        let served = s.read_only_txn(&t).map_err(|e| e.to_string());
        let applied = propose(&s, &mut log, "", Request::Txn(t.clone())).map(txn_response_of);
        assert_eq!(served, applied, "{t:?}");
    }
    let write = TxnRequest {
        success: vec![nested(vec![], vec![op_put("x", "1")], vec![])],
        ..Default::default()
    };
    assert!(!write.is_read_only());
    assert!(
        s.read_only_txn(&write).is_err(),
        "a write is never served as a read"
    );
    assert_eq!(value(&s, "x"), None);
}

fn txn_response_of(r: Response) -> TxnResponse {
    txn_response(Ok(r))
}

#[test]
fn an_alarm_applied_after_its_member_was_removed_is_not_raised_and_writes_go_on() {
    // The periodic corruption check can propose a member's CORRUPT alarm just before the
    // operator removes that member; the alarm entry then lands after the membership entry.
    let dir = tempfile::tempdir().unwrap();
    let member = |name: &str| Member {
        name: name.into(),
        ..Default::default()
    };
    let after_removal = Membership {
        configs: vec![[1, 3].into_iter().collect()],
        members: [(1, member("n1")), (3, member("n3"))].into_iter().collect(),
    };
    let alarm = |member_id| {
        Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate,
            member_id,
            alarm: AlarmType::Corrupt,
        })
    };
    let mut log = Log::default();
    {
        let s = Store::open(dir.path(), config()).unwrap();
        s.apply(&log.push_payload(EntryPayload::Membership(after_removal)))
            .unwrap();
        s.apply(&log.push(RequestHeader::default(), alarm(2)))
            .unwrap();
        assert!(s.alarms(AlarmType::None).is_empty(), "member 2 left");
        let written = s.apply(&log.push(RequestHeader::default(), put("k", "v")));
        assert!(
            matches!(
                written,
                Ok(Outcome::Command {
                    response: Ok(_),
                    ..
                })
            ),
            "{written:?}"
        );
    }
    // After a restart the membership is known before any entry is applied.
    let s = Store::open(dir.path(), config()).unwrap();
    s.apply(&log.push(RequestHeader::default(), alarm(2)))
        .unwrap();
    assert!(s.alarms(AlarmType::None).is_empty());
    s.apply(&log.push(RequestHeader::default(), alarm(3)))
        .unwrap();
    assert_eq!(
        s.alarms(AlarmType::Corrupt).len(),
        1,
        "a member's alarm is raised"
    );
}
