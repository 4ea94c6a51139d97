//! Tools behind the `storage-node` command and the benchmarks: the etcd 11651 demo, `dump-db`
//! and `dump-log` for stopped members, `snapshot status|restore`, and a load generator for
//! any etcd v3 endpoints.

pub mod backup;
pub mod demo;
pub mod dump;
pub mod load;
pub mod snapshot;
