//! Mend's operator: runs, watches and heals `StorageCluster`s.
//!
//! # Layout
//! The healing loop is probe → detector → planner → executor, the same on Kubernetes and for
//! local processes. Built so far, the pure decision half:
//! - [`detector`]: probe rounds in, findings out (AuthRevision drift, divergence, lagging and
//!   unreachable members), with tolerance for changes still in flight.
//! - [`planner`]: findings and members in, a recovery plan (or a reason to wait) out.
//! - [`probe`]: one probe round of every member over the etcd v3 API.
//! - [`executor`]: runs a plan against a real cluster (etcd API + [`platform`]).
//! - [`platform`]: where members live; [`platform::local`] runs them as local processes.
//! - [`controller`]: the Kubernetes controller (`operator run`): member pods, Services,
//!   volumes, status, auth bootstrap, leader election.
//! - [`crd_yaml`]: the `StorageCluster` CRD as YAML, for `manifests/crd.yaml`.
//!
//! The Kubernetes platform for the executor and `operator local` come with the self-healing
//! issue.

pub mod controller;
pub mod detector;
pub mod executor;
pub mod planner;
pub mod platform;
pub mod probe;

use kube::CustomResourceExt;

/// The `StorageCluster` CustomResourceDefinition as YAML (what `operator crd` prints and
/// `manifests/crd.yaml` holds).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&crds::StorageCluster::crd())
}
