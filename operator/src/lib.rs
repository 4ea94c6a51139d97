//! Mend's operator: runs, watches and heals `StorageCluster`s.
//!
//! # Layout
//! The healing loop is probe → detector → planner → executor, the same on Kubernetes and for
//! local processes:
//! - [`probe`]: one probe round of every member over the etcd v3 API ([`client`]: channels and
//!   tokens).
//! - [`detector`]: probe rounds in, findings out (AuthRevision drift, divergence, lagging and
//!   unreachable members), with tolerance for changes still in flight.
//! - [`planner`]: findings and members in, a recovery plan (or a reason to wait) out.
//! - [`healer`]: the loop's memory between rounds (evidence, backoff when drift returns).
//! - [`executor`]: runs a plan one idempotent step at a time, resumable from its progress.
//! - [`platform`]: where members live: [`platform::local`] (processes) or [`platform::kube`]
//!   (pods and volumes).
//! - [`status`]: observations and decisions to the resource's status; [`metrics`]: healing
//!   metrics; [`bootstrap`]: turning auth on.
//! - [`controller`]: the Kubernetes controller (`operator run`); [`supervisor`]: `operator
//!   local`; [`demo`]: `operator demo`.
//! - [`yaml`]: strict YAML parsing; [`crd_yaml`]: the `StorageCluster` CRD as YAML, for
//!   `manifests/crd.yaml`.

pub mod bootstrap;
pub mod client;
pub mod controller;
pub mod demo;
pub mod detector;
pub mod executor;
pub mod healer;
pub mod healing;
pub mod members;
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
