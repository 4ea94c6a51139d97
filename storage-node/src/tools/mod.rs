//! Tools behind the `storage-node` command and the benchmarks: the etcd 11651 demo, `dump-db`
//! and `dump-log` for stopped members, `snapshot status|restore`, and `benchmark`, a load
//! generator for any etcd v3 endpoints that also compares Mend with etcd side by side.

pub mod backup;
pub mod benchmark;
pub mod demo;
pub mod dump;
pub mod snapshot;
