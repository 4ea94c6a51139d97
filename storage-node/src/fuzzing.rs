//! What the fuzzing properties share (tests only): their case counts, edits that damage valid
//! encodings, and hostile etcd requests as protobuf messages.
//!
//! The fuzzing properties feed hostile input to everything that decodes bytes from the
//! network: client requests (`server::convert`, `server::gateway`), the `:authority` filter
//! (`server::authority`) and peer messages (`raft::network`). They live in test modules named
//! `fuzz`, so `cargo nextest run -p storage-node fuzz` runs them all; every test run runs a
//! short fuzz, and `PROPTEST_CASES` makes it as long as wanted.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::pb::etcdserverpb as pb;

/// A property's configuration: `cases` cases, or `PROPTEST_CASES` when it is set.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig::with_cases(cases)
}

/// Arbitrary bytes, at most `max` of them.
pub(crate) fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// One change to an encoding, at positions relative to its length.
#[derive(Clone, Debug)]
pub(crate) enum Edit {
    /// A byte XORed with a non-zero mask.
    Flip(Index, u8),
    /// A byte inserted.
    Insert(Index, u8),
    /// A byte removed.
    Remove(Index),
    /// The encoding cut short.
    Truncate(Index),
    /// A run of up to 64 bytes copied to another place (a field or frame repeated).
    Repeat(Index, u8, Index),
}

/// A few edits.
pub(crate) fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        4 => (any::<Index>(), 1..=u8::MAX).prop_map(|(at, mask)| Edit::Flip(at, mask)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
        2 => any::<Index>().prop_map(Edit::Remove),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), 1..=64u8, any::<Index>())
            .prop_map(|(from, len, to)| Edit::Repeat(from, len, to)),
    ];
    vec(edit, 1..=4)
}

/// `bytes` with `edits` applied in order (an edit of an empty encoding inserts or does nothing).
pub(crate) fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match edit {
            Edit::Insert(at, byte) => bytes.insert(at.index(len + 1), *byte),
            _ if len == 0 => {}
            Edit::Flip(at, mask) => bytes[at.index(len)] ^= mask,
            Edit::Remove(at) => {
                bytes.remove(at.index(len));
            }
            Edit::Truncate(at) => bytes.truncate(at.index(len)),
            Edit::Repeat(from, run, to) => {
                let from = from.index(len);
                let run = bytes[from..len.min(from + usize::from(*run))].to_vec();
                let to = to.index(len + 1);
                bytes.splice(to..to, run);
            }
        }
    }
    bytes
}

/// A number, often one of the extremes.
pub(crate) fn number() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(-1),
        Just(i64::MIN),
        Just(i64::MAX),
        any::<i64>()
    ]
}

/// An enum field's number: mostly one of the `known` numbers `0..known`, rarely any (a
/// request holds many, and one unknown number is enough to refuse it).
pub(crate) fn enum_number(known: i32) -> impl Strategy<Value = i32> {
    prop_oneof![99 => 0..known, 1 => any::<i32>()]
}

/// A key: mostly one of a few (so that writes clash), rarely empty or arbitrary bytes.
pub(crate) fn key() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        98 => "[a-c]{1,2}".prop_map(String::into_bytes),
        1 => Just(Vec::new()),
        1 => bytes(8),
    ]
}

/// A range end: none (the key alone), `\0` (every key from the key on), or another key.
pub(crate) fn range_end() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![Just(Vec::new()), Just(vec![0]), key()]
}

/// A range request, its sort options sometimes numbers no enum value has.
pub(crate) fn wire_range() -> impl Strategy<Value = pb::RangeRequest> {
    (
        (key(), range_end(), number(), number()),
        (enum_number(3), enum_number(5)),
        any::<[bool; 3]>(),
        [number(), number(), number(), number()],
    )
        .prop_map(
            |(
                (key, range_end, limit, revision),
                (sort_order, sort_target),
                [serializable, keys_only, count_only],
                [min_mod, max_mod, min_create, max_create],
            )| pb::RangeRequest {
                key,
                range_end,
                limit,
                revision,
                sort_order,
                sort_target,
                serializable,
                keys_only,
                count_only,
                min_mod_revision: min_mod,
                max_mod_revision: max_mod,
                min_create_revision: min_create,
                max_create_revision: max_create,
            },
        )
}

/// A put request, rarely with a value or lease its ignore flags forbid.
pub(crate) fn wire_put() -> impl Strategy<Value = pb::PutRequest> {
    let ignore = || proptest::bool::weighted(0.05);
    let flags = (any::<bool>(), ignore(), ignore()).prop_map(|(a, b, c)| [a, b, c]);
    (key(), bytes(8), number(), flags).prop_map(
        |(key, value, lease, [prev_kv, ignore_value, ignore_lease])| pb::PutRequest {
            key,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        },
    )
}

/// A delete request.
pub(crate) fn wire_delete() -> impl Strategy<Value = pb::DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| {
        pb::DeleteRangeRequest {
            key,
            range_end,
            prev_kv,
        }
    })
}

/// A compare, its enums sometimes unknown numbers and its union sometimes not its target's.
pub(crate) fn wire_compare() -> impl Strategy<Value = pb::Compare> {
    use pb::compare::TargetUnion;
    let union = prop_oneof![
        number().prop_map(TargetUnion::Version),
        number().prop_map(TargetUnion::CreateRevision),
        number().prop_map(TargetUnion::ModRevision),
        bytes(8).prop_map(TargetUnion::Value),
        number().prop_map(TargetUnion::Lease),
    ];
    (
        enum_number(4),
        enum_number(5),
        key(),
        range_end(),
        proptest::option::of(union),
    )
        .prop_map(
            |(result, target, key, range_end, target_union)| pb::Compare {
                result,
                target,
                key,
                range_end,
                target_union,
            },
        )
}

/// A txn of `op`s: a few compares and operations in each branch.
fn txn_of(
    op: impl Strategy<Value = pb::RequestOp> + Clone,
) -> impl Strategy<Value = pb::TxnRequest> {
    (
        vec(wire_compare(), 0..3),
        vec(op.clone(), 0..4),
        vec(op, 0..4),
    )
        .prop_map(|(compare, success, failure)| pb::TxnRequest {
            compare,
            success,
            failure,
        })
}

/// A hostile txn: nested up to four deep, with clashing writes and, rarely (so that about a
/// third of the txns are valid), empty operations, empty keys, conflicting flags and unknown
/// enum numbers.
pub(crate) fn wire_txn() -> impl Strategy<Value = pb::TxnRequest> {
    use pb::request_op::Request;
    let leaf = prop_oneof![
        1 => Just(None),
        // Mostly puts and deletes: they are what clash.
        25 => wire_range().prop_map(|r| Some(Request::RequestRange(r))),
        50 => wire_put().prop_map(|r| Some(Request::RequestPut(r))),
        25 => wire_delete().prop_map(|r| Some(Request::RequestDeleteRange(r))),
    ]
    .prop_map(|request| pb::RequestOp { request });
    let op = leaf.prop_recursive(4, 32, 4, |inner| {
        txn_of(inner).prop_map(|t| pb::RequestOp {
            request: Some(Request::RequestTxn(t)),
        })
    });
    txn_of(op)
}

/// Whether converting `txn` must fail: an operation with nothing set, or an enum number no
/// value has.
fn unconvertible(txn: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    let bad_compare = |c: &pb::Compare| !(0..4).contains(&c.result) || !(0..5).contains(&c.target);
    txn.compare.iter().any(bad_compare)
        || txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| match &op.request {
                None => true,
                Some(Request::RequestRange(r)) => !known_sort(r),
                Some(Request::RequestTxn(t)) => unconvertible(t),
                Some(Request::RequestPut(_) | Request::RequestDeleteRange(_)) => false,
            })
}

/// Whether the range's sort options are numbers of the enums' values.
fn known_sort(r: &pb::RangeRequest) -> bool {
    (0..3).contains(&r.sort_order) && (0..5).contains(&r.sort_target)
}

/// Whether etcd refuses the put: no key, or a value or lease given with its ignore flag.
fn put_invalid(p: &pb::PutRequest) -> bool {
    p.key.is_empty() || (p.ignore_value && !p.value.is_empty()) || (p.ignore_lease && p.lease != 0)
}

/// Whether validating `txn` must fail for another reason than two writes of one key: an
/// invalid operation, or more than `max_ops` compares or operations in a branch.
fn invalid(txn: &pb::TxnRequest, max_ops: usize) -> bool {
    use pb::request_op::Request;
    [txn.compare.len(), txn.success.len(), txn.failure.len()]
        .iter()
        .any(|&n| n > max_ops)
        || txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| match &op.request {
                Some(Request::RequestRange(r)) => r.key.is_empty(),
                Some(Request::RequestPut(p)) => put_invalid(p),
                Some(Request::RequestDeleteRange(d)) => d.key.is_empty(),
                Some(Request::RequestTxn(t)) => invalid(t, max_ops),
                None => false,
            })
}

/// Converts and validates a wire txn as the Txn service does, under etcd's default
/// `--max-txn-ops` and a limit of 3 that generated txns reach, and checks the outcome against
/// the model above: an unconvertible txn is refused by the conversion, an invalid one by the
/// validation, and anything else refused is a duplicate key.
pub(crate) fn check_txn(wire: pb::TxnRequest) -> Result<(), TestCaseError> {
    const LIMITS: [usize; 2] = [crate::api::DEFAULT_MAX_TXN_OPS, 3];
    let unconvertible = unconvertible(&wire);
    let invalid = LIMITS.map(|limit| invalid(&wire, limit));
    let txn = match crate::server::convert::txn_request(wire) {
        Err(_) => {
            prop_assert!(unconvertible, "a valid txn was not converted");
            return Ok(());
        }
        Ok(txn) => txn,
    };
    prop_assert!(!unconvertible, "an unconvertible txn was converted");
    for (limit, invalid) in LIMITS.into_iter().zip(invalid) {
        match txn.validate(limit) {
            Ok(()) => prop_assert!(!invalid, "an invalid txn passed validation"),
            Err(crate::api::InvalidRequest::DuplicateKey) => {}
            Err(e) => prop_assert!(invalid, "a valid txn was refused: {e}"),
        }
    }
    Ok(())
}

/// Converts and validates a wire range as the Range service does: the conversion refuses
/// unknown sort options, the validation an empty key.
pub(crate) fn check_range(wire: pb::RangeRequest) -> Result<(), TestCaseError> {
    let (known, empty) = (known_sort(&wire), wire.key.is_empty());
    match crate::server::convert::range_request(wire) {
        Err(_) => prop_assert!(!known),
        Ok(range) => {
            prop_assert!(known);
            prop_assert_eq!(range.validate().is_err(), empty);
        }
    }
    Ok(())
}

/// Converts and validates a wire put as the Put service does.
pub(crate) fn check_put(wire: pb::PutRequest) -> Result<(), TestCaseError> {
    let invalid = put_invalid(&wire);
    let put = crate::server::convert::put_request(wire);
    prop_assert_eq!(put.validate().is_err(), invalid);
    Ok(())
}

/// Converts and validates a wire delete as the DeleteRange service does.
pub(crate) fn check_delete(wire: pb::DeleteRangeRequest) -> Result<(), TestCaseError> {
    let empty = wire.key.is_empty();
    let delete = crate::server::convert::delete_range_request(wire);
    prop_assert_eq!(delete.validate().is_err(), empty);
    Ok(())
}

/// Text: mostly short names, sometimes any characters.
pub(crate) fn text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![3 => "[a-z0-9]{0,8}", 1 => "\\PC{0,8}"]
}

/// An auth store operation of any kind.
fn auth_request() -> impl Strategy<Value = crate::api::AuthRequest> {
    use crate::api::{AuthRequest, Permission, PermissionType};
    let perm_type = prop_oneof![
        Just(PermissionType::Read),
        Just(PermissionType::Write),
        Just(PermissionType::ReadWrite),
    ];
    let perm = (perm_type, key(), range_end()).prop_map(|(perm_type, key, range_end)| Permission {
        perm_type,
        key,
        range_end,
    });
    prop_oneof![
        Just(AuthRequest::Enable),
        Just(AuthRequest::Disable),
        (text(), text())
            .prop_map(|(name, simple_token)| AuthRequest::Authenticate { name, simple_token }),
        (text(), proptest::option::of(text())).prop_map(|(name, hashed_password)| {
            AuthRequest::UserAdd {
                name,
                hashed_password,
            }
        }),
        text().prop_map(|name| AuthRequest::UserDelete { name }),
        (text(), text()).prop_map(|(name, hashed_password)| AuthRequest::UserChangePassword {
            name,
            hashed_password
        }),
        (text(), text()).prop_map(|(user, role)| AuthRequest::UserGrantRole { user, role }),
        (text(), text()).prop_map(|(name, role)| AuthRequest::UserRevokeRole { name, role }),
        text().prop_map(|name| AuthRequest::RoleAdd { name }),
        text().prop_map(|role| AuthRequest::RoleDelete { role }),
        (text(), perm).prop_map(|(name, perm)| AuthRequest::RoleGrantPermission { name, perm }),
        (text(), key(), range_end()).prop_map(|(role, key, range_end)| {
            AuthRequest::RoleRevokePermission {
                role,
                key,
                range_end,
            }
        }),
    ]
}

/// A log entry's command, of any request kind, its KV requests as the client port makes them
/// from hostile messages it accepts. Boxed: its value trees are large, and strategies holding
/// them inline overflow the test thread's stack in debug builds.
pub(crate) fn command() -> BoxedStrategy<crate::api::Command> {
    use crate::api::{self, Request};
    use crate::server::convert;
    let alarm_type = prop_oneof![
        Just(api::AlarmType::None),
        Just(api::AlarmType::NoSpace),
        Just(api::AlarmType::Corrupt),
    ];
    let alarm_action = prop_oneof![
        Just(api::AlarmAction::Get),
        Just(api::AlarmAction::Activate),
        Just(api::AlarmAction::Deactivate),
    ];
    let request = prop_oneof![
        wire_range().prop_filter_map("converts", |r| convert::range_request(r)
            .ok()
            .map(Request::Range)),
        wire_put().prop_map(|p| Request::Put(convert::put_request(p))),
        wire_delete().prop_map(|d| Request::DeleteRange(convert::delete_range_request(d))),
        wire_txn().prop_filter_map("converts", |t| convert::txn_request(t)
            .ok()
            .map(Request::Txn)),
        (number(), any::<bool>()).prop_map(|(revision, physical)| {
            Request::Compaction(api::CompactionRequest { revision, physical })
        }),
        (number(), number())
            .prop_map(|(ttl, id)| Request::LeaseGrant(api::LeaseGrantRequest { ttl, id })),
        number().prop_map(|id| Request::LeaseRevoke(api::LeaseRevokeRequest { id })),
        auth_request().prop_map(Request::Auth),
        (alarm_action, any::<u64>(), alarm_type).prop_map(|(action, member_id, alarm)| {
            Request::Alarm(api::AlarmRequest {
                action,
                member_id,
                alarm,
            })
        }),
    ];
    let header = (any::<u64>(), text(), any::<u64>()).prop_map(|(id, username, auth_revision)| {
        api::RequestHeader {
            id,
            username,
            auth_revision,
        }
    });
    (header, request)
        .prop_map(|(header, request)| api::Command { header, request })
        .boxed()
}
