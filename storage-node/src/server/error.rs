//! Errors answered to clients, with etcd's gRPC codes and messages.
//!
//! [`ServerError`] is the one table: each variant is one of etcd's `api/v3rpc/rpctypes` errors,
//! its message is etcd's string and [`ServerError::code`] etcd's gRPC code, as etcd 3.4 and 3.5
//! define them (the two agree on every entry here). clientv3 and `etcdctl` recognise errors by
//! these exact strings, so they must not drift.
//!
//! Engine errors ([`ApplyError`], [`mvcc::Error`], [`lease::Error`], [`auth::Error`],
//! [`InvalidRequest`], [`backend::Error`]) and request conversion errors ([`convert::Error`])
//! convert into it the way etcd's `togRPCError` maps its own errors; errors etcd has no entry
//! for are answered as `Unknown` with their message, as `togRPCError` does. Every source type
//! also converts straight into a [`tonic::Status`].

use thiserror::Error;
use tonic::{Code, Status};

use crate::api::InvalidRequest;
use crate::apply::ApplyError;
use crate::raft::node::NodeError;
use crate::server::convert;
use crate::{auth, backend, lease, mvcc};

/// An error answered to a client, as etcd answers it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerError {
    // Request validation.
    /// A key-based request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a missing key, or an empty txn operation.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn with more operations than `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Two writes of one txn branch touch the same key.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// An unknown sort order or target (etcd 3.6 added this check and message).
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A request larger than `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A request etcd has no message for but cannot be represented (see [`convert::Error`]).
    #[error(transparent)]
    Malformed(convert::Error),

    // KV store.
    /// The revision asked for is below the last compaction.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for has not happened yet.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// The backend quota is exhausted (the NOSPACE alarm).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// Too many proposals are waiting to be applied.
    #[error("etcdserver: too many requests")]
    TooManyRequests,

    // Leases.
    /// No lease has this ID.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with this ID exists already.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// The TTL exceeds the largest one allowed.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,

    // Membership.
    /// A member with this ID exists already.
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    /// Another member has one of these peer URLs.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    /// The change would leave too few started members for a quorum.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    /// Malformed member URLs.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// No member has this ID.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// Promoting a member that is not a learner.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// Promoting a learner whose log lags the leader's.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// Adding a learner beyond the limit.
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// A peer of another cluster.
    #[error("etcdserver: cluster ID mismatch")]
    ClusterIdMismatch,

    // Auth.
    /// Enabling auth without a root user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// Enabling auth while root lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// The user exists already.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// No user name where one is needed.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// No such user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// The role exists already.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// No role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Wrong user or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A permission grant without the permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// The user lacks the permission.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// Revoking a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// Revoking a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// A token-based operation while auth is off.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// Unknown or expired token.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A change that would lock everybody out, or an invalid permission range.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The request's permissions were checked at an older AuthRevision than the applier's.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,

    // Raft and server state.
    /// The cluster has no leader.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request needs the leader and this member is not it.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The leader changed while the request was in flight.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The cluster version does not support the request.
    #[error("etcdserver: not capable")]
    NotCapable,
    /// The member is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The request was not applied in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Timed out, probably because the previous leader failed.
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    /// Timed out, probably because the connection to the leader was lost.
    #[error("etcdserver: request timed out, possibly due to connection lost")]
    TimeoutDueToConnectionLost,
    /// A linearizable read waited too long for the applied index.
    #[error("etcdserver: request timed out, waiting for the applied index took too long")]
    TimeoutWaitAppliedIndex,
    /// MoveLeader did not see the new leader in time (etcd's `ErrTimeoutLeaderTransfer`).
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    /// The cluster cannot serve (no quorum).
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// Members disagree on their data (the CORRUPT alarm).
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// A learner was asked for something only voters serve.
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// Leadership cannot move to the requested member.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// The server cancelled a watch.
    #[error("etcdserver: watch canceled")]
    WatchCanceled,
    /// The client cancelled the request.
    #[error("etcdserver: request canceled")]
    Canceled,
    /// The client's deadline passed.
    #[error("etcdserver: context deadline exceeded")]
    DeadlineExceeded,

    // Downgrade (etcd 3.5).
    /// A downgrade target that is not `major.minor[.patch]`.
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    /// A downgrade target the cluster cannot go to.
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    /// Cancelling a downgrade when none is in progress.
    #[error("etcdserver: no inflight downgrade job")]
    NoInflightDowngrade,

    /// An error etcd has no entry for: answered as `Unknown` with its message.
    #[error("{0}")]
    Unknown(String),
}

impl ServerError {
    /// etcd's gRPC code for this error.
    pub fn code(&self) -> Code {
        use ServerError as E;
        match self {
            E::EmptyKey
            | E::KeyNotFound
            | E::ValueProvided
            | E::LeaseProvided
            | E::TooManyOps
            | E::DuplicateKey
            | E::InvalidSortOption
            | E::RequestTooLarge
            | E::Malformed(_)
            | E::MemberBadUrls
            | E::UserEmpty
            | E::RoleEmpty
            | E::AuthFailed
            | E::PermissionNotGiven
            | E::InvalidAuthMgmt
            | E::AuthOldRevision
            | E::WrongDowngradeVersionFormat
            | E::InvalidDowngradeTargetVersion => Code::InvalidArgument,
            E::Compacted | E::FutureRev | E::LeaseTtlTooLarge => Code::OutOfRange,
            E::NoSpace | E::TooManyRequests => Code::ResourceExhausted,
            E::LeaseNotFound | E::MemberNotFound => Code::NotFound,
            E::LeaseExist
            | E::MemberExist
            | E::PeerUrlExist
            | E::MemberNotEnoughStarted
            | E::MemberNotLearner
            | E::LearnerNotReady
            | E::TooManyLearners
            | E::ClusterIdMismatch
            | E::RootUserNotExist
            | E::RootRoleNotExist
            | E::UserAlreadyExist
            | E::UserNotFound
            | E::RoleAlreadyExist
            | E::RoleNotFound
            | E::RoleNotGranted
            | E::PermissionNotGranted
            | E::AuthNotEnabled
            | E::NotLeader
            | E::BadLeaderTransferee
            | E::NoInflightDowngrade => Code::FailedPrecondition,
            E::PermissionDenied => Code::PermissionDenied,
            E::InvalidAuthToken => Code::Unauthenticated,
            E::NoLeader
            | E::LeaderChanged
            | E::NotCapable
            | E::Stopped
            | E::Timeout
            | E::TimeoutDueToLeaderFail
            | E::TimeoutDueToConnectionLost
            | E::TimeoutWaitAppliedIndex
            | E::TimeoutLeaderTransfer
            | E::Unhealthy
            | E::NotSupportedForLearner => Code::Unavailable,
            E::Corrupt => Code::DataLoss,
            E::WatchCanceled | E::Canceled => Code::Cancelled,
            E::DeadlineExceeded => Code::DeadlineExceeded,
            E::Unknown(_) => Code::Unknown,
        }
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<InvalidRequest> for ServerError {
    fn from(e: InvalidRequest) -> Self {
        match e {
            InvalidRequest::EmptyKey => ServerError::EmptyKey,
            InvalidRequest::ValueProvided => ServerError::ValueProvided,
            InvalidRequest::LeaseProvided => ServerError::LeaseProvided,
            InvalidRequest::DuplicateKey => ServerError::DuplicateKey,
            InvalidRequest::TooManyOps => ServerError::TooManyOps,
        }
    }
}

impl From<mvcc::Error> for ServerError {
    fn from(e: mvcc::Error) -> Self {
        match e {
            mvcc::Error::Compacted => ServerError::Compacted,
            mvcc::Error::FutureRev => ServerError::FutureRev,
            mvcc::Error::KeyNotFound => ServerError::KeyNotFound,
            mvcc::Error::Invalid(i) => i.into(),
            e @ mvcc::Error::NotReadOnly => ServerError::Unknown(e.to_string()),
            mvcc::Error::Backend(b) => b.into(),
        }
    }
}

impl From<lease::Error> for ServerError {
    fn from(e: lease::Error) -> Self {
        match e {
            // etcd's lessor answers a grant of the reserved ID 0 with "lease not found".
            lease::Error::NotFound | lease::Error::ZeroId => ServerError::LeaseNotFound,
            lease::Error::Exists => ServerError::LeaseExist,
            lease::Error::TtlTooLarge => ServerError::LeaseTtlTooLarge,
            lease::Error::Backend(b) => b.into(),
        }
    }
}

impl From<auth::Error> for ServerError {
    fn from(e: auth::Error) -> Self {
        use auth::Error as A;
        match e {
            A::UserEmpty => ServerError::UserEmpty,
            A::UserAlreadyExist => ServerError::UserAlreadyExist,
            A::UserNotFound => ServerError::UserNotFound,
            A::RoleEmpty => ServerError::RoleEmpty,
            A::RoleAlreadyExist => ServerError::RoleAlreadyExist,
            A::RoleNotFound => ServerError::RoleNotFound,
            A::AuthFailed => ServerError::AuthFailed,
            A::PermissionDenied => ServerError::PermissionDenied,
            A::RoleNotGranted => ServerError::RoleNotGranted,
            A::PermissionNotGranted => ServerError::PermissionNotGranted,
            A::AuthNotEnabled => ServerError::AuthNotEnabled,
            A::InvalidAuthToken => ServerError::InvalidAuthToken,
            A::InvalidAuthMgmt => ServerError::InvalidAuthMgmt,
            A::OldRevision => ServerError::AuthOldRevision,
            A::RootUserNotExist => ServerError::RootUserNotExist,
            A::RootRoleNotExist => ServerError::RootRoleNotExist,
            // etcd returns bcrypt's own error unmapped, hence Unknown; so is a verify-only
            // JWT key's refusal to sign.
            e @ (A::PasswordHash(_) | A::CannotSign) => ServerError::Unknown(e.to_string()),
            A::Backend(b) => b.into(),
        }
    }
}

impl From<backend::Error> for ServerError {
    /// etcd has no entry for storage failures (its backend panics instead); the message tells
    /// the operator what broke.
    fn from(e: backend::Error) -> Self {
        ServerError::Unknown(e.to_string())
    }
}

impl From<ApplyError> for ServerError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Invalid(i) => i.into(),
            ApplyError::Kv(k) => k.into(),
            ApplyError::Lease(l) => l.into(),
            ApplyError::Auth(a) => a.into(),
            ApplyError::NoSpace => ServerError::NoSpace,
            ApplyError::Corrupt => ServerError::Corrupt,
        }
    }
}

impl From<convert::Error> for ServerError {
    fn from(e: convert::Error) -> Self {
        match e {
            convert::Error::InvalidSortOption => ServerError::InvalidSortOption,
            convert::Error::EmptyRequestOp => ServerError::KeyNotFound,
            convert::Error::PermissionNotGiven => ServerError::PermissionNotGiven,
            e @ (convert::Error::CompareResult(_)
            | convert::Error::CompareTarget(_)
            | convert::Error::PermissionType(_)
            | convert::Error::AlarmAction(_)
            | convert::Error::AlarmType(_)) => ServerError::Malformed(e),
        }
    }
}

/// Lets handlers answer any engine or conversion error with `?`.
macro_rules! status_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Status {
            fn from(e: $t) -> Self {
                ServerError::from(e).into()
            }
        }
    )*};
}
status_from!(
    InvalidRequest,
    mvcc::Error,
    lease::Error,
    auth::Error,
    backend::Error,
    ApplyError,
    convert::Error
);

/// A failure to serve a request through replication.
pub fn node_status(e: NodeError) -> Status {
    let error = match e {
        NodeError::Apply(e) => e.into(),
        NodeError::NoLeader => ServerError::NoLeader,
        NodeError::NotLeader => ServerError::NotLeader,
        NodeError::Timeout => ServerError::Timeout,
        NodeError::MemberNotFound => ServerError::MemberNotFound,
        NodeError::PeerUrlExists => ServerError::PeerUrlExist,
        NodeError::NotLearner => ServerError::MemberNotLearner,
        NodeError::LearnerNotReady => ServerError::LearnerNotReady,
        NodeError::BadTransferee => ServerError::BadLeaderTransferee,
        NodeError::TransferTimeout => ServerError::TimeoutLeaderTransfer,
        // etcd has no message for this; the member set would become empty.
        NodeError::LastVoter => {
            return Status::failed_precondition(
                "etcdserver: re-configuration failed: cannot remove the last voting member",
            );
        }
        other => ServerError::Unknown(format!("etcdserver: {other}")),
    };
    error.into()
}

/// An engine answer of the wrong kind: a bug, reported rather than panicked on.
pub fn unexpected(response: crate::api::Response) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result {response:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_status(status: Status, code: Code, message: &str) {
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(status.message(), message);
    }

    #[test]
    fn kv_errors_carry_etcds_codes_and_messages() {
        assert_status(
            InvalidRequest::EmptyKey.into(),
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        assert_status(
            mvcc::Error::Compacted.into(),
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert_status(
            mvcc::Error::FutureRev.into(),
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        assert_status(
            mvcc::Error::Invalid(InvalidRequest::DuplicateKey).into(),
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
        assert_status(
            ApplyError::Invalid(InvalidRequest::TooManyOps).into(),
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        assert_status(
            mvcc::Error::KeyNotFound.into(),
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
    }

    #[test]
    fn lease_errors_carry_etcds_codes_and_messages() {
        assert_status(
            lease::Error::NotFound.into(),
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
        assert_status(
            lease::Error::ZeroId.into(),
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
        assert_status(
            ApplyError::Lease(lease::Error::Exists).into(),
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
        );
        assert_status(
            lease::Error::TtlTooLarge.into(),
            Code::OutOfRange,
            "etcdserver: too large lease TTL",
        );
    }

    #[test]
    fn auth_errors_carry_etcds_codes_and_messages() {
        let cases = [
            (
                auth::Error::UserAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                auth::Error::UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                auth::Error::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                auth::Error::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                auth::Error::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                auth::Error::OldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            (
                auth::Error::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                auth::Error::RootRoleNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                auth::Error::InvalidAuthMgmt,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
        ];
        for (err, code, message) in cases {
            assert_status(err.into(), code, message);
        }
    }

    #[test]
    fn server_side_errors_carry_etcds_codes_and_messages() {
        let cases = [
            (
                ServerError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                ServerError::NotLeader,
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                ServerError::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                ServerError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                ServerError::MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                ServerError::MemberNotEnoughStarted,
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                ServerError::PeerUrlExist,
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                ServerError::LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                ServerError::Corrupt,
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
            (
                ServerError::WrongDowngradeVersionFormat,
                Code::InvalidArgument,
                "etcdserver: wrong downgrade target version format",
            ),
            (
                ServerError::InvalidDowngradeTargetVersion,
                Code::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
            (
                ServerError::NoInflightDowngrade,
                Code::FailedPrecondition,
                "etcdserver: no inflight downgrade job",
            ),
        ];
        for (err, code, message) in cases {
            assert_status(err.into(), code, message);
        }
    }

    #[test]
    fn alarm_refusals_carry_etcds_codes_and_messages() {
        assert_status(
            ApplyError::NoSpace.into(),
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        );
        assert_status(
            ApplyError::Corrupt.into(),
            Code::DataLoss,
            "etcdserver: corrupt cluster",
        );
    }

    #[test]
    fn conversion_errors_use_etcds_message_where_it_has_one() {
        assert_status(
            convert::Error::InvalidSortOption.into(),
            Code::InvalidArgument,
            "etcdserver: invalid sort option",
        );
        assert_status(
            convert::Error::EmptyRequestOp.into(),
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
        assert_status(
            convert::Error::PermissionNotGiven.into(),
            Code::InvalidArgument,
            "etcdserver: permission not given",
        );
        let status = Status::from(convert::Error::CompareTarget(9));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("compare target 9"), "{status:?}");
    }

    #[test]
    fn errors_etcd_does_not_know_are_unknown_with_their_message() {
        let status = Status::from(auth::Error::PasswordHash("cost 99".into()));
        assert_eq!(status.code(), Code::Unknown);
        assert!(status.message().contains("cost 99"), "{status:?}");
        let corrupt = backend::Error::Corrupt {
            table: "kv",
            detail: "bad revision".into(),
        };
        let status = Status::from(ApplyError::Kv(mvcc::Error::Backend(corrupt)));
        assert_eq!(status.code(), Code::Unknown);
        assert!(status.message().contains("bad revision"), "{status:?}");
    }
}
