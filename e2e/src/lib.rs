//! Mend's end-to-end test bed.
//!
//! It will hold, in the spirit of etcd's `tests/robustness`: process fixtures for storage-node
//! clusters on loopback, the chaos "monkey" (random users, roles, grants, writes through random
//! endpoints, restarts and kills), a consistency watcher comparing members, and scripted
//! reproductions of etcd issue 11651. Nothing is here yet: the cluster and healing issues fill it.
