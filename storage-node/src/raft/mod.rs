//! Replication: openraft's type configuration for Mend, and the mapping between openraft's
//! values and the engine's own log types ([`crate::entry`]).
//!
//! # Layout
//! - this file: [`TypeConfig`], short aliases, the raft layer's [`enum@Error`], and
//!   conversions to and from the engine's types.
//! - [`log_store`]: the durable raft log (its own redb file beside the engine's).
//! - [`state_machine`]: the engine as openraft's state machine; snapshots.
//! - [`waiters`]: hands each applied command's local result to the request waiting for it.
//! - [`network`]: the peer protocol over gRPC, both sides.
//! - `nesting`: decoding peer messages with a bound on how deep values nest.
//! - [`lessor`]: lease expiry on the leader; renewals forwarded to it.
//! - [`alarm`]: raising this member's NOSPACE alarm when an apply went past its quota.
//! - [`corrupt`]: the corruption checks: KV hashes compared at a common revision, CORRUPT
//!   alarms naming the members outside the majority.
//! - [`node`]: a running member: proposals answered from the local apply, read points,
//!   membership changes, leader transfer.
//!
//! # Log indexes
//! openraft numbers its log from 0: `Raft::initialize` writes the first membership at index 0.
//! The engine numbers entries from 1, as etcd does, and uses index 0 for "nothing applied" (the
//! consistent index is never 0). So the engine's index is openraft's plus one, in both
//! directions, and only [`log_id_to_engine`] and [`log_id_from_engine`] know it. Terms are equal.

use std::fmt;
use std::io;
use std::path::PathBuf;

use openraft::type_config::alias;
use thiserror::Error;

use crate::api::Command;
use crate::entry::{self, Member};
use crate::{backend, snapshot};

pub mod alarm;
pub mod corrupt;
pub mod lessor;
pub mod log_store;
mod nesting;
pub mod network;
pub mod node;
pub mod state_machine;
pub mod waiters;

pub use log_store::{LogContents, LogStore};
pub use state_machine::{Listeners, SnapshotBuilder, StateMachine};
pub use waiters::Waiters;

openraft::declare_raft_types!(
    /// Mend's raft types: etcd-style commands over members with names and URLs.
    pub TypeConfig:
        D = Command,
        R = (),
        NodeId = u64,
        Node = Member,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// A member running raft over the engine.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;
/// A raft log ID.
pub type LogId = alias::LogIdOf<TypeConfig>;
/// A raft log entry.
pub type Entry = alias::EntryOf<TypeConfig>;
/// A raft vote.
pub type Vote = alias::VoteOf<TypeConfig>;
/// A raft membership.
pub type Membership = openraft::Membership<u64, Member>;
/// A membership with the log ID of the entry that set it.
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers.
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
/// The bytes of a snapshot: the engine's checksummed stream, held in memory.
pub type SnapshotData = io::Cursor<Vec<u8>>;
/// A snapshot with its meta.
pub type Snapshot = alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Why the raft log or the state machine failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// redb reported a failure in the raft log file.
    #[error("raft log: {0}")]
    Redb(#[from] redb::Error),
    /// The raft log file could not be used.
    #[error("raft log: {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A stored value does not decode: the file is corrupt or of another format.
    #[error("raft log: corrupt {what}: {detail}")]
    Corrupt {
        /// The table or value.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A value could not be encoded for storage.
    #[error("raft log: cannot encode {what}: {detail}")]
    Encode {
        /// The table or value.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The raft log file was written by a build with another on-disk format.
    #[error("raft log: format {found} is not supported (this build reads {expected})")]
    Format {
        /// Format found on disk.
        found: u64,
        /// Format this build writes.
        expected: u64,
    },
    /// The engine failed to apply entries.
    #[error(transparent)]
    Engine(#[from] backend::Error),
    /// The engine failed to write or install a snapshot.
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    /// A membership does not hold together (a voter without a member entry).
    #[error("invalid membership: {0}")]
    Membership(#[source] openraft::errors::MembershipError<u64>),
    /// An installed snapshot covers other entries than its meta says.
    #[error("snapshot stream ends at {found:?}, its meta says {expected:?}")]
    SnapshotMismatch {
        /// Last log ID in the meta openraft passed.
        expected: Option<LogId>,
        /// Last log ID the engine's stream carried.
        found: Option<LogId>,
    },
    /// A blocking task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

crate::backend::redb_errors_into!(Error);

impl From<Error> for io::Error {
    /// openraft's storage traits speak `io::Error`; the kind keeps corruption apart from
    /// failures that may be transient.
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Corrupt { .. }
            | Error::Format { .. }
            | Error::Membership(_)
            | Error::SnapshotMismatch { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Runs blocking work (redb, fsync, the engine) off the async threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// The engine's position for an openraft log ID (index shifted by one, see the module doc).
pub fn log_id_to_engine(id: &LogId) -> entry::LogId {
    entry::LogId {
        term: id.committed_leader_id().term,
        index: id.index() + 1,
    }
}

/// openraft's log ID for an engine position; `None` for the engine's "nothing applied".
pub fn log_id_from_engine(id: entry::LogId) -> Option<LogId> {
    let index = id.index.checked_sub(1)?;
    Some(LogId::new_term_index(id.term, index))
}

/// The engine's copy of a membership: voter sets and every member.
pub fn membership_to_engine(m: &Membership) -> entry::Membership {
    entry::Membership {
        configs: m.get_joint_config().clone(),
        members: m.nodes().map(|(id, node)| (*id, node.clone())).collect(),
    }
}

/// openraft's membership for the engine's copy; fails when a voter has no member entry.
pub fn membership_from_engine(m: entry::Membership) -> Result<Membership, Error> {
    Membership::new(m.configs, m.members).map_err(Error::Membership)
}

/// openraft's stored membership for the engine's; the empty default when none was applied.
pub fn stored_membership_from_engine(
    m: Option<entry::StoredMembership>,
) -> Result<StoredMembership, Error> {
    match m {
        None => Ok(StoredMembership::default()),
        Some(m) => Ok(StoredMembership::new(
            log_id_from_engine(m.log_id),
            membership_from_engine(m.membership)?,
        )),
    }
}

/// The engine's entry for an openraft entry; takes it by value so commands are moved, not copied.
pub fn entry_to_engine(e: Entry) -> entry::Entry {
    let payload = match e.payload {
        openraft::EntryPayload::Blank => entry::EntryPayload::Blank,
        openraft::EntryPayload::Normal(cmd) => entry::EntryPayload::Normal(cmd),
        openraft::EntryPayload::Membership(m) => {
            entry::EntryPayload::Membership(membership_to_engine(&m))
        }
    };
    entry::Entry {
        log_id: log_id_to_engine(&e.log_id),
        payload,
    }
}

/// openraft's entry for an engine entry; fails for index 0 (not an entry) and for an invalid
/// membership.
pub fn entry_from_engine(e: entry::Entry) -> Result<Entry, Error> {
    let log_id = log_id_from_engine(e.log_id).ok_or_else(|| Error::Corrupt {
        what: "entry",
        detail: "engine entries start at index 1".into(),
    })?;
    let payload = match e.payload {
        entry::EntryPayload::Blank => openraft::EntryPayload::Blank,
        entry::EntryPayload::Normal(cmd) => openraft::EntryPayload::Normal(cmd),
        entry::EntryPayload::Membership(m) => {
            openraft::EntryPayload::Membership(membership_from_engine(m)?)
        }
    };
    Ok(Entry { log_id, payload })
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{:x}", self.request.kind(), self.header.id)
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_urls.join(","))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::api::{PutRequest, Request, RequestHeader};

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            peer_urls: vec![format!("http://{name}:2380")],
            client_urls: vec![format!("http://{name}:2379")],
        }
    }

    fn members(ids: &[u64]) -> BTreeMap<u64, Member> {
        ids.iter()
            .map(|&id| (id, member(&format!("m{id}"))))
            .collect()
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn round_trip(e: Entry) {
        let engine = entry_to_engine(e.clone());
        assert_eq!(engine.log_id.index, e.log_id.index() + 1);
        assert_eq!(entry_from_engine(engine).unwrap(), e);
    }

    #[test]
    fn log_ids_shift_by_one_and_engine_zero_is_nothing_applied() {
        let id = LogId::new_term_index(3, 0);
        assert_eq!(log_id_to_engine(&id), entry::LogId { term: 3, index: 1 });
        assert_eq!(log_id_from_engine(log_id_to_engine(&id)), Some(id));
        assert_eq!(log_id_from_engine(entry::LogId::default()), None);
    }

    #[test]
    fn blank_and_normal_entries_round_trip() {
        round_trip(Entry {
            log_id: LogId::new_term_index(2, 7),
            payload: openraft::EntryPayload::Blank,
        });
        let cmd = Command {
            header: RequestHeader {
                id: 42,
                username: "alice".into(),
                auth_revision: 3,
            },
            request: Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
        };
        round_trip(Entry {
            log_id: LogId::new_term_index(2, 8),
            payload: openraft::EntryPayload::Normal(cmd),
        });
    }

    #[test]
    fn joint_membership_with_learners_round_trips() {
        // Voters {1,2,3} changing to {3,4}; 5 is a learner in both.
        let m = Membership::new(
            vec![set(&[1, 2, 3]), set(&[3, 4])],
            members(&[1, 2, 3, 4, 5]),
        )
        .unwrap();
        let engine = membership_to_engine(&m);
        assert_eq!(engine.configs, vec![set(&[1, 2, 3]), set(&[3, 4])]);
        assert!(engine.is_voter(4) && !engine.is_voter(5));
        assert_eq!(engine.members[&5], member("m5"));
        assert_eq!(membership_from_engine(engine).unwrap(), m);
        round_trip(Entry {
            log_id: LogId::new_term_index(0, 0),
            payload: openraft::EntryPayload::Membership(m),
        });
    }

    #[test]
    fn a_voter_without_a_member_entry_is_refused() {
        let engine = entry::Membership {
            configs: vec![set(&[1, 2])],
            members: members(&[1]),
        };
        let err = membership_from_engine(engine).unwrap_err();
        assert!(matches!(err, Error::Membership(_)), "{err}");
    }

    #[test]
    fn stored_membership_keeps_its_log_id_and_none_is_the_default() {
        assert_eq!(
            stored_membership_from_engine(None).unwrap(),
            StoredMembership::default()
        );
        let stored = entry::StoredMembership {
            log_id: entry::LogId { term: 1, index: 1 },
            membership: entry::Membership {
                configs: vec![set(&[1])],
                members: members(&[1, 2]),
            },
        };
        let got = stored_membership_from_engine(Some(stored)).unwrap();
        assert_eq!(got.log_id(), &Some(LogId::new_term_index(1, 0)));
        assert_eq!(got.membership().learner_ids().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn engine_entry_zero_is_not_an_entry() {
        let e = entry::Entry {
            log_id: entry::LogId::default(),
            payload: entry::EntryPayload::Blank,
        };
        assert!(matches!(entry_from_engine(e), Err(Error::Corrupt { .. })));
    }
}
