//! Offline tools behind the `storage-node` command: the etcd 11651 demo and `dump-db`.

pub mod demo;
pub mod dump;
