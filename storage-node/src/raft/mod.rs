//! Replication: openraft's type configuration for Mend, and the mapping between openraft's
//! values and the engine's own log types ([`crate::entry`]).
//!
//! # Layout
//! - this file: [`TypeConfig`], short aliases, and conversions to and from the engine's types.
//! - `log_store`: the durable raft log (its own redb file beside the engine's).
//! - `state_machine`: the engine as openraft's state machine; snapshots.
//! - `waiters`: hands each applied command's local result to the request waiting for it.

use std::fmt;

use openraft::type_config::alias;

use crate::api::Command;
use crate::entry::Member;

pub mod waiters;

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
