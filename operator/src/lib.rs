//! Mend's operator: runs, watches and heals `StorageCluster`s.
//!
//! # Layout
//! One healing loop, [`healing`], serves both drivers: each pass probes every member, assesses
//! the round, decides, runs at most one step of a heal and hands back what to record.
//! - Pure decision code: [`detector`] (probe rounds in, findings out, tolerant of changes still
//!   in flight), [`planner`] (findings in, a recovery plan or a reason to wait out, and the
//!   safety rules each step is held to right before it runs), [`healer`] (the loop's memory
//!   between passes: evidence, backoff when drift returns), [`maintenance`] (when scheduled
//!   defragmentation is due and which member goes next), [`rollout`] (which member a rolling
//!   update restarts next), [`quorum`] (whether a majority is gone for good and which member
//!   to recover from), [`status`] (observations and
//!   decisions to the resource's status).
//! - I/O that observes and acts: [`probe`] (one probe round of every member; what could not be
//!   observed stays unknown), [`members`] (the etcd API seam: probes, auth bootstrap,
//!   membership changes; [`client`]: channels and tokens), [`executor`] (one step of a plan at
//!   a time, each re-checked on a fresh observation), [`platform`] (where members live:
//!   [`platform::local`] processes or [`platform::kube`] pods and volumes), [`bootstrap`]
//!   (turning auth on), [`metrics`] (healing metrics), [`pki`] (the CA and certificates of
//!   clusters with `spec.tls`), [`backup`] (backups to an object store and restores from one;
//!   when one is due is decided from values).
//! - Drivers: [`controller`] (Kubernetes, `operator run`) and [`supervisor`] (`operator
//!   local`), with [`demo`] (`operator demo`) on top of the supervisor.
//! - [`yaml`]: strict YAML parsing; [`crd_yaml`]: the `StorageCluster` CRD as YAML, for
//!   `manifests/crd.yaml`.

pub mod backup;
pub mod bootstrap;
pub mod client;
pub mod controller;
pub mod demo;
pub mod detector;
pub mod executor;
pub mod healer;
pub mod healing;
pub mod maintenance;
pub mod members;
pub mod metrics;
pub mod pki;
pub mod planner;
pub mod platform;
pub mod probe;
pub mod quorum;
pub mod rollout;
pub mod status;
pub mod supervisor;
pub mod yaml;

use kube::CustomResourceExt;

/// The `StorageCluster` CustomResourceDefinition as YAML (what `operator crd` prints and
/// `manifests/crd.yaml` holds).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&crds::StorageCluster::crd())
}
