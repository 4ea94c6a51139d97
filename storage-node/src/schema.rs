//! Every table and meta key of the backend, in one place.
//!
//! Changing a name or an encoding here changes the on-disk format: bump [`FORMAT_VERSION`].

use redb::TableDefinition;

/// On-disk format written by this build; opening a store of another format fails.
pub const FORMAT_VERSION: u64 = 1;

/// Every version of every key: (main revision, sub revision) → encoded record
/// (see `mvcc::record`). A delete writes a tombstone record.
pub const KV: TableDefinition<(i64, i64), &[u8]> = TableDefinition::new("kv");

/// Store-wide values: the consistent index, AuthRevision, compaction marks, membership,
/// alarms.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Granted leases: lease ID → TTL in seconds. Attached keys are derived from the KV records.
pub const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");

/// Auth users: name → encoded `auth::User`.
pub const AUTH_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_users");

/// Auth roles: name → encoded `auth::Role`.
pub const AUTH_ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_roles");

/// Keys of [`META`].
pub mod meta {
    /// Format of the files (u64).
    pub const FORMAT_VERSION: &str = "format_version";
    /// Index of the last applied raft entry whose effects are on disk (u64).
    pub const CONSISTENT_INDEX: &str = "consistent_index";
    /// Term of that entry (u64).
    pub const CONSISTENT_TERM: &str = "consistent_term";
    /// Revision of the auth store (u64).
    pub const AUTH_REVISION: &str = "auth_revision";
    /// Whether authentication is enabled (u64: 0 or 1).
    pub const AUTH_ENABLED: &str = "auth_enabled";
    /// Revision a compaction was last requested at (i64).
    pub const SCHEDULED_COMPACT_REVISION: &str = "scheduled_compact_revision";
    /// Revision the last finished compaction removed history below (i64).
    pub const FINISHED_COMPACT_REVISION: &str = "finished_compact_revision";
    /// Cluster membership as last applied (encoded `membership::Membership`).
    pub const MEMBERSHIP: &str = "membership";
    /// Active alarms, sorted (encoded `Vec<api::AlarmMember>`; absent: none).
    pub const ALARMS: &str = "alarms";
}
