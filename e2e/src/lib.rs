//! Mend's end-to-end test bed: whole-system tests with real processes, in the spirit of
//! etcd's `tests/robustness`.
//!
//! # Layout
//! - `tests/chaos.rs`: a seeded monkey (random users, roles, grants, role bindings, writes
//!   through random members, SIGKILLs of members) against a 3-member cluster under
//!   `operator local`, with a watcher on the operator's status; with the fix, members never
//!   diverge and every acknowledged write is on every member.
//! - `tests/kubernetes.rs`: install `manifests/` on a real cluster (KUBECONFIG), create a
//!   `StorageCluster`, wait for `Available` (ignored without a cluster).
//!
//! The process fixtures are shared with the crates' own tests: `storage-node/tests/cluster`
//! (members on loopback, etcdctl) and `operator/tests/common/local_operator.rs`. The scripted
//! reproductions of etcd issue 11651 live beside the code they exercise
//! (`storage-node/tests/seed.rs`, `operator/tests/local.rs`).
