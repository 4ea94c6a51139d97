//! Mend's storage node: an etcd-v3-compatible key-value engine that carries the fix for etcd
//! issue 11651 (auth operations that did not persist the consistent index).
//!
//! This crate holds the state machine: everything a member does with a committed log entry,
//! and every read it serves from its own state. Replication and the gRPC API build on it.
//!
//! # Layout
//! Modules depend only on those above them in this list:
//! - [`metrics`]: instruments fed where things happen (fsyncs, commits, peer round trips, gRPC
//!   calls) under etcd's metric names, and the process metrics.
//! - [`api`]: request and response values mirroring etcd's protobuf messages, and request
//!   validation.
//! - [`schema`]: every table and meta key of the on-disk format.
//! - [`backend`]: the redb database and typed meta access.
//! - [`mvcc`]: revisions, the key index, range/put/delete, compaction, HashKV, the event feed.
//! - [`lease`]: lease grant/revoke and key attachment.
//! - [`auth`]: users, roles, permissions, AuthRevision, tokens, permission checks.
//! - [`alarm`]: the active alarms (NOSPACE, CORRUPT), kept in the backend.
//! - [`quota`]: the backend quota and what each request costs against it.
//! - [`entry`]: log entries and cluster membership.
//! - [`apply`]: applying one request: alarm and auth checks, state checks, writes.
//! - [`tls`]: TLS on the client and peer ports from etcd's flags, accepted connections and
//!   what is known of their clients.
//! - [`raft`]: openraft types, the durable raft log, the engine as raft state machine.
//! - [`snapshot`]: streaming a consistent copy of every table out, and installing one.
//! - [`store`]: the engine as a whole: open, apply batches atomically with the consistent
//!   index (the fix), reads, status, and the fault switch that brings the bug back.
//! - [`watchers`]: the watchable store: synced and unsynced watchers, the fan-out of applied
//!   events, catch-up from history.
//! - [`server`]: the etcd v3 gRPC services, their JSON gateway, the HTTP endpoint, and starting
//!   a member.
//! - [`cli`]: the serving node's flags, in etcd's spelling, and bootstrap identities.
//! - [`tools`]: offline tools: the etcd 11651 demo, `snapshot status|restore`, `dump-db`.
//! - `fuzzing` (tests only): what the fuzzing properties of the decoding modules share.

pub mod alarm;
pub mod api;
pub mod apply;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod compactor;
pub mod entry;
#[cfg(test)]
mod fuzzing;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod quota;
pub mod raft;
pub mod schema;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod tools;
pub mod watchers;

pub use store::{Outcome, Status, Store, StoreConfig};

/// Code generated from the `.proto` files: the etcd v3 API and Mend's peer protocol.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// etcd's key-value messages.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
        include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
    }
    /// etcd's auth messages.
    pub mod authpb {
        tonic::include_proto!("authpb");
        include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
    }
    /// etcd's v3 services and their messages.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
    }
    /// Mend's member-to-member service.
    pub mod mendpeer {
        tonic::include_proto!("mendpeer");
    }
}
