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
//! Healing on Kubernetes (a `platform::kube` for the executor, driven from the controller)
//! comes with the self-healing issue.

pub mod bootstrap;
pub mod controller;
pub mod demo;
pub mod detector;
pub mod executor;
pub mod healer;
pub mod metrics;
pub mod planner;
pub mod platform;
pub mod probe;
pub mod status;
pub mod supervisor;
pub mod yaml;

use kube::CustomResourceExt;

/// The `StorageCluster` CustomResourceDefinition as YAML (what `operator crd` prints and
/// `manifests/crd.yaml` holds).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&crds::StorageCluster::crd())
}
