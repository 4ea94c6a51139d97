//! What the replicated log carries: entries with their log ID and payload, and the cluster
//! membership an entry can set.
//!
//! These mirror openraft's entry model (blank entries from new leaders, normal entries, and
//! membership changes, including joint configurations) so that the raft layer maps onto them
//! one to one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::api::Command;

/// Position of an entry in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogId {
    /// Term of the leader that created the entry.
    pub term: u64,
    /// Index in the log, from 1.
    pub index: u64,
}

/// One committed log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where the entry sits in the log.
    pub log_id: LogId,
    /// What it carries.
    pub payload: EntryPayload,
}

/// The payload of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// An empty entry a new leader commits to establish its term.
    Blank,
    /// A client request.
    Normal(Command),
    /// A new cluster configuration.
    Membership(Membership),
}

/// A member's identity and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Human-readable name (`--name`).
    pub name: String,
    /// URLs peers reach it on.
    pub peer_urls: Vec<String>,
    /// URLs clients reach it on.
    pub client_urls: Vec<String>,
}

/// A cluster configuration: one voter set, or two during a joint change; members in no voter
/// set are learners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voter sets (one, or two while changing).
    pub configs: Vec<BTreeSet<u64>>,
    /// Every member, voters and learners, by ID.
    pub members: BTreeMap<u64, Member>,
}

impl Membership {
    /// Whether `id` votes in any of the configurations.
    pub fn is_voter(&self, id: u64) -> bool {
        self.configs.iter().any(|c| c.contains(&id))
    }
}

/// A membership with the entry that set it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMembership {
    /// The entry that carried it.
    pub log_id: LogId,
    /// The configuration.
    pub membership: Membership,
}
