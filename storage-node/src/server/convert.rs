//! Protobuf messages to and from the engine's values, in one place. Requests from the wire
//! can carry enum numbers this server does not know: those are refused with a clear error.

use crate::api;
use crate::pb::authpb;
use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;

/// A wire request that maps to no engine request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `sort_order` or `sort_target` is not one of the enum's numbers (etcd 3.6's message; 3.4
    /// and 3.5 silently served such ranges unsorted).
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A txn operation with none of its fields set (etcd's `checkRequestOp` answers this with
    /// "key not found").
    #[error("etcdserver: key not found")]
    EmptyRequestOp,
    /// `Compare.result` is not one of the enum's numbers.
    #[error("unknown compare result {0} (expected EQUAL, GREATER, LESS or NOT_EQUAL)")]
    CompareResult(i32),
    /// `Compare.target` is not one of the enum's numbers.
    #[error("unknown compare target {0} (expected VERSION, CREATE, MOD, VALUE or LEASE)")]
    CompareTarget(i32),
    /// A permission grant without the permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// `Permission.permType` is not one of the enum's numbers.
    #[error("unknown permission type {0} (expected READ, WRITE or READWRITE)")]
    PermissionType(i32),
    /// `AlarmRequest.action` is not one of the enum's numbers.
    #[error("unknown alarm action {0} (expected GET, ACTIVATE or DEACTIVATE)")]
    AlarmAction(i32),
    /// An alarm type that is not one of the enum's numbers.
    #[error("unknown alarm type {0} (expected NONE, NOSPACE or CORRUPT)")]
    AlarmType(i32),
}

/// A range request.
pub fn range_request(r: pb::RangeRequest) -> Result<api::RangeRequest, Error> {
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = match SortOrder::try_from(r.sort_order) {
        Ok(SortOrder::None) => api::SortOrder::None,
        Ok(SortOrder::Ascend) => api::SortOrder::Ascend,
        Ok(SortOrder::Descend) => api::SortOrder::Descend,
        Err(_) => return Err(Error::InvalidSortOption),
    };
    let sort_target = match SortTarget::try_from(r.sort_target) {
        Ok(SortTarget::Key) => api::SortTarget::Key,
        Ok(SortTarget::Version) => api::SortTarget::Version,
        Ok(SortTarget::Create) => api::SortTarget::Create,
        Ok(SortTarget::Mod) => api::SortTarget::Mod,
        Ok(SortTarget::Value) => api::SortTarget::Value,
        Err(_) => return Err(Error::InvalidSortOption),
    };
    Ok(api::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

/// An alarm request.
pub fn alarm_request(r: pb::AlarmRequest) -> Result<api::AlarmRequest, Error> {
    use pb::alarm_request::AlarmAction;
    let action = match AlarmAction::try_from(r.action) {
        Ok(AlarmAction::Get) => api::AlarmAction::Get,
        Ok(AlarmAction::Activate) => api::AlarmAction::Activate,
        Ok(AlarmAction::Deactivate) => api::AlarmAction::Deactivate,
        Err(_) => return Err(Error::AlarmAction(r.action)),
    };
    Ok(api::AlarmRequest {
        action,
        member_id: r.member_id,
        alarm: alarm_type(r.alarm)?,
    })
}

fn alarm_type(t: i32) -> Result<api::AlarmType, Error> {
    match pb::AlarmType::try_from(t) {
        Ok(pb::AlarmType::None) => Ok(api::AlarmType::None),
        Ok(pb::AlarmType::Nospace) => Ok(api::AlarmType::NoSpace),
        Ok(pb::AlarmType::Corrupt) => Ok(api::AlarmType::Corrupt),
        Err(_) => Err(Error::AlarmType(t)),
    }
}

/// An active alarm.
pub fn alarm_member(a: api::AlarmMember) -> pb::AlarmMember {
    let alarm = match a.alarm {
        api::AlarmType::None => pb::AlarmType::None,
        api::AlarmType::NoSpace => pb::AlarmType::Nospace,
        api::AlarmType::Corrupt => pb::AlarmType::Corrupt,
    };
    pb::AlarmMember {
        member_id: a.member_id,
        alarm: alarm.into(),
    }
}

/// A put request.
pub fn put_request(r: pb::PutRequest) -> api::PutRequest {
    api::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// A delete request.
pub fn delete_range_request(r: pb::DeleteRangeRequest) -> api::DeleteRangeRequest {
    api::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

/// A compaction request.
pub fn compaction_request(r: pb::CompactionRequest) -> api::CompactionRequest {
    api::CompactionRequest {
        revision: r.revision,
        physical: r.physical,
    }
}

fn compare(c: pb::Compare) -> Result<api::Compare, Error> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let result = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => api::CompareResult::Equal,
        Ok(CompareResult::Greater) => api::CompareResult::Greater,
        Ok(CompareResult::Less) => api::CompareResult::Less,
        Ok(CompareResult::NotEqual) => api::CompareResult::NotEqual,
        Err(_) => return Err(Error::CompareResult(c.result)),
    };
    // As etcd's generated getters do, a union that does not match the target reads as the
    // target's zero value.
    let union = c.target_union;
    let target = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Version) => api::CompareTarget::Version(match union {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Create) => api::CompareTarget::Create(match union {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => api::CompareTarget::Mod(match union {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Value) => api::CompareTarget::Value(match union {
            Some(TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        Ok(CompareTarget::Lease) => api::CompareTarget::Lease(match union {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => return Err(Error::CompareTarget(c.target)),
    };
    Ok(api::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

fn request_op(op: pb::RequestOp) -> Result<api::RequestOp, Error> {
    use pb::request_op::Request;
    Ok(match op.request {
        Some(Request::RequestRange(r)) => api::RequestOp::Range(range_request(r)?),
        Some(Request::RequestPut(r)) => api::RequestOp::Put(put_request(r)),
        Some(Request::RequestDeleteRange(r)) => {
            api::RequestOp::DeleteRange(delete_range_request(r))
        }
        Some(Request::RequestTxn(r)) => api::RequestOp::Txn(txn_request(r)?),
        None => return Err(Error::EmptyRequestOp),
    })
}

/// A txn request, nested txns included.
pub fn txn_request(r: pb::TxnRequest) -> Result<api::TxnRequest, Error> {
    Ok(api::TxnRequest {
        compare: r
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: r
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: r
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

/// A permission to grant.
pub fn permission_request(p: authpb::Permission) -> Result<api::Permission, Error> {
    use authpb::permission::Type;
    let perm_type = match Type::try_from(p.perm_type) {
        Ok(Type::Read) => api::PermissionType::Read,
        Ok(Type::Write) => api::PermissionType::Write,
        Ok(Type::Readwrite) => api::PermissionType::ReadWrite,
        Err(_) => return Err(Error::PermissionType(p.perm_type)),
    };
    Ok(api::Permission {
        perm_type,
        key: p.key,
        range_end: p.range_end,
    })
}

/// A granted permission, as RoleGet returns it.
pub fn permission(p: api::Permission) -> authpb::Permission {
    use authpb::permission::Type;
    let perm_type = match p.perm_type {
        api::PermissionType::Read => Type::Read,
        api::PermissionType::Write => Type::Write,
        api::PermissionType::ReadWrite => Type::Readwrite,
    };
    authpb::Permission {
        perm_type: perm_type as i32,
        key: p.key,
        range_end: p.range_end,
    }
}

/// A key-value pair.
pub fn key_value(kv: api::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A watch event.
pub fn event(e: api::Event) -> mvccpb::Event {
    let kind = match e.kind {
        api::EventKind::Put => mvccpb::event::EventType::Put,
        api::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(e.kv)),
        prev_kv: e.prev_kv.map(key_value),
    }
}

/// A range response with its header.
pub fn range_response(
    r: api::RangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

/// A put response with its header.
pub fn put_response(r: api::PutResponse, header: Option<pb::ResponseHeader>) -> pb::PutResponse {
    pb::PutResponse {
        header,
        prev_kv: r.prev_kv.map(key_value),
    }
}

/// A delete response with its header.
pub fn delete_range_response(
    r: api::DeleteRangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// A txn response with its header; nested responses carry the same header, as in etcd.
pub fn txn_response(r: api::TxnResponse, header: Option<pb::ResponseHeader>) -> pb::TxnResponse {
    use pb::response_op::Response;
    // As etcd: the responses inside a transaction carry only their revision in their header.
    let nested = |revision| {
        Some(pb::ResponseHeader {
            revision,
            ..pb::ResponseHeader::default()
        })
    };
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                api::ResponseOp::Range(r) => {
                    let header = nested(r.revision);
                    Response::ResponseRange(range_response(r, header))
                }
                api::ResponseOp::Put(r) => {
                    let header = nested(r.revision);
                    Response::ResponsePut(put_response(r, header))
                }
                api::ResponseOp::DeleteRange(r) => {
                    let header = nested(r.revision);
                    Response::ResponseDeleteRange(delete_range_response(r, header))
                }
                // etcd leaves a nested transaction's header empty.
                api::ResponseOp::Txn(r) => Response::ResponseTxn(txn_response(r, nested(0))),
            }),
        })
        .collect();
    pb::TxnResponse {
        header,
        succeeded: r.succeeded,
        responses,
    }
}

/// A compaction response with its header.
pub fn compaction_response(
    _r: api::CompactionResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::CompactionResponse {
    pb::CompactionResponse { header }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_txn_with_every_compare_target_converts() {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        let wire = pb::TxnRequest {
            compare: vec![
                pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: b"k".to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(TargetUnion::Value(b"v".to_vec())),
                },
                pb::Compare {
                    result: CompareResult::Greater as i32,
                    target: CompareTarget::Mod as i32,
                    key: b"k".to_vec(),
                    range_end: Vec::new(),
                    // A mismatched union reads as the target's zero value.
                    target_union: Some(TargetUnion::Version(7)),
                },
            ],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(pb::TxnRequest {
                    compare: Vec::new(),
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: b"a".to_vec(),
                            value: b"1".to_vec(),
                            ..Default::default()
                        })),
                    }],
                    failure: Vec::new(),
                })),
            }],
            failure: Vec::new(),
        };
        let txn = txn_request(wire).expect("converts");
        assert_eq!(
            txn.compare[0].target,
            api::CompareTarget::Value(b"v".to_vec())
        );
        assert_eq!(txn.compare[1].result, api::CompareResult::Greater);
        assert_eq!(txn.compare[1].target, api::CompareTarget::Mod(0));
        match &txn.success[0] {
            api::RequestOp::Txn(inner) => match &inner.success[0] {
                api::RequestOp::Put(p) => assert_eq!(p.key, b"a"),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_enum_numbers_are_refused() {
        let bad = pb::RangeRequest {
            key: b"k".to_vec(),
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(range_request(bad).unwrap_err(), Error::InvalidSortOption);
        let perm = authpb::Permission {
            perm_type: 5,
            key: b"k".to_vec(),
            range_end: Vec::new(),
        };
        assert!(permission_request(perm).is_err());
        let op = pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(txn_request(op).unwrap_err(), Error::EmptyRequestOp);
    }

    #[test]
    fn permissions_round_trip_every_type() {
        for t in [
            api::PermissionType::Read,
            api::PermissionType::Write,
            api::PermissionType::ReadWrite,
        ] {
            let p = api::Permission {
                perm_type: t,
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            };
            assert_eq!(permission_request(permission(p.clone())), Ok(p));
        }
    }

    /// Hostile client requests: arbitrary bytes, and hostile or damaged messages, decoded as
    /// each request the client port takes, then converted and validated as its service does.
    mod fuzz {
        use super::*;
        use crate::fuzzing::{self, check_delete, check_put, check_range, check_txn, config};
        use pb::request_op::Request;
        use proptest::prelude::*;
        use prost::Message;

        /// Converts an alarm request as the Alarm service does: unknown action or alarm
        /// numbers are refused.
        fn check_alarm(wire: pb::AlarmRequest) -> Result<(), TestCaseError> {
            let known = (0..3).contains(&wire.action) && (0..3).contains(&wire.alarm);
            prop_assert_eq!(alarm_request(wire).is_ok(), known);
            Ok(())
        }

        /// Converts a permission as RoleGrantPermission does: an unknown type is refused.
        fn check_permission(wire: authpb::Permission) -> Result<(), TestCaseError> {
            let known = (0..3).contains(&wire.perm_type);
            prop_assert_eq!(permission_request(wire).is_ok(), known);
            Ok(())
        }

        /// Decodes `bytes` as every request the client port takes; those the services convert
        /// are converted and validated, and checked.
        fn take_as_every_request(bytes: &[u8]) -> Result<(), TestCaseError> {
            macro_rules! decode_only {
                ($($request:ty),* $(,)?) => {
                    $( let _ = <$request>::decode(bytes); )*
                };
            }
            decode_only!(
                pb::CompactionRequest,
                pb::HashRequest,
                pb::HashKvRequest,
                pb::SnapshotRequest,
                pb::WatchRequest,
                pb::LeaseGrantRequest,
                pb::LeaseRevokeRequest,
                pb::LeaseKeepAliveRequest,
                pb::LeaseTimeToLiveRequest,
                pb::LeaseLeasesRequest,
                pb::MemberAddRequest,
                pb::MemberRemoveRequest,
                pb::MemberUpdateRequest,
                pb::MemberListRequest,
                pb::MemberPromoteRequest,
                pb::DefragmentRequest,
                pb::MoveLeaderRequest,
                pb::DowngradeRequest,
                pb::StatusRequest,
                pb::AuthEnableRequest,
                pb::AuthDisableRequest,
                pb::AuthStatusRequest,
                pb::AuthenticateRequest,
                pb::AuthUserAddRequest,
                pb::AuthUserGetRequest,
                pb::AuthUserDeleteRequest,
                pb::AuthUserChangePasswordRequest,
                pb::AuthUserGrantRoleRequest,
                pb::AuthUserRevokeRoleRequest,
                pb::AuthRoleAddRequest,
                pb::AuthRoleGetRequest,
                pb::AuthUserListRequest,
                pb::AuthRoleListRequest,
                pb::AuthRoleDeleteRequest,
                pb::AuthRoleRevokePermissionRequest,
            );
            if let Ok(wire) = pb::RangeRequest::decode(bytes) {
                check_range(wire)?;
            }
            if let Ok(wire) = pb::PutRequest::decode(bytes) {
                check_put(wire)?;
            }
            if let Ok(wire) = pb::DeleteRangeRequest::decode(bytes) {
                check_delete(wire)?;
            }
            if let Ok(wire) = pb::TxnRequest::decode(bytes) {
                check_txn(wire)?;
            }
            if let Ok(wire) = pb::AlarmRequest::decode(bytes) {
                check_alarm(wire)?;
            }
            if let Ok(pb::AuthRoleGrantPermissionRequest {
                perm: Some(perm), ..
            }) = pb::AuthRoleGrantPermissionRequest::decode(bytes)
            {
                check_permission(perm)?;
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn arbitrary_bytes_as_any_request_decode_or_are_refused(
                bytes in fuzzing::bytes(512),
            ) {
                take_as_every_request(&bytes)?;
            }

            #[test]
            fn hostile_txns_are_converted_and_validated_as_the_model_says(
                txn in fuzzing::wire_txn(),
            ) {
                let decoded = pb::TxnRequest::decode(&txn.encode_to_vec()[..]);
                prop_assert_eq!(decoded.as_ref(), Ok(&txn));
                check_txn(txn)?;
            }

            #[test]
            fn damaged_txn_encodings_decode_or_are_refused(
                txn in fuzzing::wire_txn(),
                edits in fuzzing::edits(),
            ) {
                take_as_every_request(&fuzzing::mutate(txn.encode_to_vec(), &edits))?;
            }

            #[test]
            fn hostile_requests_are_converted_and_validated_as_the_model_says(
                range in fuzzing::wire_range(),
                put in fuzzing::wire_put(),
                delete in fuzzing::wire_delete(),
                alarm in (fuzzing::enum_number(3), any::<u64>(), fuzzing::enum_number(3)),
                perm in (fuzzing::enum_number(3), fuzzing::key(), fuzzing::range_end()),
                edits in fuzzing::edits(),
            ) {
                let (action, member_id, alarm) = alarm;
                let alarm = pb::AlarmRequest { action, member_id, alarm };
                let (perm_type, key, range_end) = perm;
                let perm = authpb::Permission { perm_type, key, range_end };
                let damaged = [
                    range.encode_to_vec(),
                    put.encode_to_vec(),
                    delete.encode_to_vec(),
                    alarm.encode_to_vec(),
                    perm.encode_to_vec(),
                ];
                check_range(range)?;
                check_put(put)?;
                check_delete(delete)?;
                check_alarm(alarm)?;
                check_permission(perm)?;
                for bytes in damaged {
                    take_as_every_request(&fuzzing::mutate(bytes, &edits))?;
                }
            }
        }

        proptest! {
            #![proptest_config(config(32))]

            #[test]
            fn a_txn_branch_longer_than_the_limit_is_refused(
                ops in 0..400usize,
                branch in 0..3usize,
            ) {
                let compare = pb::Compare {
                    key: b"k".to_vec(),
                    ..Default::default()
                };
                let puts = (0..ops).map(|i| pb::RequestOp {
                    request: Some(Request::RequestPut(pb::PutRequest {
                        key: format!("k{i}").into_bytes(),
                        ..Default::default()
                    })),
                });
                let mut txn = pb::TxnRequest::default();
                match branch {
                    0 => txn.compare = vec![compare; ops],
                    1 => txn.success = puts.collect(),
                    _ => txn.failure = puts.collect(),
                }
                let txn = pb::TxnRequest::decode(&txn.encode_to_vec()[..]).expect("decodes");
                let txn = txn_request(txn).expect("converts");
                let refused = txn.validate(api::DEFAULT_MAX_TXN_OPS);
                let too_many = ops > api::DEFAULT_MAX_TXN_OPS;
                prop_assert_eq!(refused.err(), too_many.then_some(api::InvalidRequest::TooManyOps));
            }
        }

        /// A txn nesting `depth` txns, each holding a put of its own key besides the next one.
        fn nested(depth: usize) -> pb::TxnRequest {
            let put = |level: usize| pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: format!("k{level}").into_bytes(),
                    ..Default::default()
                })),
            };
            let mut txn = pb::TxnRequest {
                success: vec![put(depth)],
                ..Default::default()
            };
            for level in (0..depth).rev() {
                txn = pb::TxnRequest {
                    success: vec![
                        put(level),
                        pb::RequestOp {
                            request: Some(Request::RequestTxn(txn)),
                        },
                    ],
                    ..Default::default()
                };
            }
            txn
        }

        #[test]
        fn every_txn_nesting_the_client_port_decodes_crosses_the_peer_port() {
            use crate::raft::network::{decode, encode};
            use crate::raft::{Entry, TypeConfig, Vote};
            let mut refused = None;
            for depth in 0..=60 {
                let Ok(wire) = pb::TxnRequest::decode(&nested(depth).encode_to_vec()[..]) else {
                    refused.get_or_insert(depth);
                    continue;
                };
                assert!(
                    refused.is_none(),
                    "depth {depth} decodes, a shallower one did not"
                );
                let txn = txn_request(wire).expect("converts");
                assert_eq!(txn.validate(api::DEFAULT_MAX_TXN_OPS), Ok(()));
                let command = api::Command {
                    header: api::RequestHeader::default(),
                    request: api::Request::Txn(txn),
                };
                // The deepest a member sends it: in an entry of an AppendEntries.
                let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
                    vote: Vote::new(1, 1),
                    prev_log_id: None,
                    entries: vec![Entry {
                        log_id: crate::raft::LogId::new_term_index(1, 0),
                        payload: openraft::EntryPayload::Normal(command.clone()),
                    }],
                    leader_commit: None,
                };
                let blob = encode(&append).expect("encodes");
                let decoded: openraft::raft::AppendEntriesRequest<TypeConfig> =
                    decode(&blob).unwrap_or_else(|e| panic!("depth {depth}: {e}"));
                match &decoded.entries[..] {
                    [
                        Entry {
                            payload: openraft::EntryPayload::Normal(c),
                            ..
                        },
                    ] => assert_eq!(c, &command, "depth {depth}"),
                    other => panic!("depth {depth}: {other:?}"),
                }
            }
            // The range covers the client port's limit.
            assert!(refused.is_some(), "every depth up to 60 decodes");
        }

        #[test]
        fn a_request_of_a_hundred_thousand_operations_is_refused() {
            // Two bytes per empty operation (`success`, length 0), seven per put of a one-byte
            // key: requests far below the 1.5 MiB limit holding far more than 128 operations.
            let empty = [0x12, 0x00].repeat(100_000);
            let txn = pb::TxnRequest::decode(&empty[..]).expect("decodes");
            assert_eq!(txn.success.len(), 100_000);
            assert_eq!(txn_request(txn), Err(Error::EmptyRequestOp));
            let puts = [0x12, 0x05, 0x12, 0x03, 0x0a, 0x01, b'k'].repeat(100_000);
            let txn =
                txn_request(pb::TxnRequest::decode(&puts[..]).expect("decodes")).expect("converts");
            assert_eq!(
                txn.validate(api::DEFAULT_MAX_TXN_OPS),
                Err(api::InvalidRequest::TooManyOps)
            );
        }
    }
}
