//! The Kubernetes controller: runs `StorageCluster`s as member pods and reports their state.
//!
//! A kube-runtime `Controller` watches `StorageCluster`s and the children they own, and calls
//! [`reconcile()`] for each, behind the operator's [`FINALIZER`]: check the spec, make sure the
//! root credentials exist, create the missing children with server-side apply, probe the members
//! over the etcd API, bootstrap auth once they answer, assess the probes with the healing loop's
//! [`Healer`] (detector and planner) and write the status built by [`crate::status`]
//! (server-side apply on the status subresource); for a deleted cluster, apply its retention
//! policy. Errors requeue the object with a per-object exponential backoff ([`error_policy`]).
//!
//! # Why bare pods and not a StatefulSet
//! Each member is its own Pod with its own PersistentVolumeClaim, both created by the
//! operator. Healing rebuilds one member while the others keep serving: remove it from the
//! cluster, back up and wipe its data, start it again with `--initial-cluster-state existing`,
//! add it back. A StatefulSet shares one pod template across its members, so one member cannot
//! get different flags (`existing` for the rebuilt one, `new` for the founders), it recreates a
//! deleted pod at once with the template's flags (racing the wipe), and its volume claims
//! outlive the set and cannot be replaced one at a time through it. With bare pods the operator
//! decides, member by member, when a pod is deleted, which volume it mounts and with which flags
//! it starts, which is exactly what the procedure needs. The price, restarting pods the
//! operator's way (one at a time, quorum kept), is the healing loop's job anyway.
//!
//! # A finalizer, for the data only
//! The workload (pods, Services, the PodDisruptionBudget, the NetworkPolicy) carries an owner
//! reference to its cluster, so Kubernetes' garbage collector deletes it with the cluster. The
//! data does not: volume claims and the generated root Secret have no owner, so deleting a
//! `StorageCluster` (or the CRD, or the namespace's cluster objects) never deletes member data
//! on its own. The operator's finalizer ([`FINALIZER`], kube-runtime's `finalizer` helper) runs
//! the cleanup before the cluster goes: with `spec.storage.retentionPolicy: Delete` it deletes
//! the claims and the generated Secret; with `Retain` (the default) it keeps them and says how
//! to delete them (an Event). The price of a finalizer: a cluster deleted while no operator
//! runs stays `Terminating` until one runs again (or the finalizer is removed by hand).
//!
//! # Layout
//! - [`resources`] (in [`crate::platform::kube`]): the children as pure functions of the
//!   resource.
//! - [`reconcile`](mod@reconcile): one pass over one resource, and the error policy.
//! - [`events`]: Kubernetes Events, one per distinct note.
//! - [`stalls`]: why members cannot start (unschedulable, volume Pending, refused at create).
//! - [`lease`]: leader election on a `coordination.k8s.io` Lease.
//! - [`metrics`] and [`run`](mod@run): `operator run`, its `/metrics`, `/healthz`, `/readyz`.

pub mod certificates;
pub mod events;
pub mod lease;
pub mod metrics;
pub mod reconcile;
pub use crate::platform::kube::{FIELD_MANAGER, resources};
pub mod run;
pub mod stalls;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crds::StorageCluster;
use kube::Client;

use crate::healer::Healer;
use crate::members;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;

pub use reconcile::{error_policy, reconcile};
pub use run::{RunArgs, run, run_cli};

/// The operator's finalizer on every `StorageCluster`: its cleanup applies the retention
/// policy before the cluster is deleted.
pub const FINALIZER: &str = "mend.dev/cleanup";

/// Every (verb, API group, resource) the operator calls, and so exactly what its RBAC grants
/// (`manifests/`: the Lease rules in a Role in the operator's namespace,
/// `operator/leader-election.yaml`; the rest in the ClusterRole of `rbac.yaml`, or in the Role
/// of `namespaced/rbac.yaml` for the namespace-scoped install). A test holds them equal, and
/// the mocked API server tests check every request they see against this table.
pub const API_CALLS: &[(&str, &str, &str)] = &[
    // The watched resource, and its status written by server-side apply; the finalizer is
    // added and removed by a JSON patch of the resource.
    ("list", "mend.dev", "storageclusters"),
    ("watch", "mend.dev", "storageclusters"),
    ("patch", "mend.dev", "storageclusters"),
    ("patch", "mend.dev", "storageclusters/status"),
    // Children: listed by label each reconcile, watched by the Controller (`owns`), created and
    // updated by server-side apply: a PATCH, which the API server authorizes as `create` too
    // when the object does not exist yet. Owner references delete the workload with the
    // cluster.
    ("list", "", "pods"),
    ("watch", "", "pods"),
    ("create", "", "pods"),
    ("patch", "", "pods"),
    // Healing: a rebuilt member's pod is deleted and awaited, and so is the one-off pod that
    // moves its data aside (created, watched by name until it finishes).
    ("get", "", "pods"),
    ("delete", "", "pods"),
    // spec.tls: a member whose certificate was renewed is restarted through an eviction, so
    // the PodDisruptionBudget is checked at that moment.
    ("create", "", "pods/eviction"),
    // Volume claims: not owned by the cluster (the data outlives it unless the retention
    // policy is Delete, when the finalizer deletes them).
    ("list", "", "persistentvolumeclaims"),
    ("watch", "", "persistentvolumeclaims"),
    ("create", "", "persistentvolumeclaims"),
    ("patch", "", "persistentvolumeclaims"),
    ("delete", "", "persistentvolumeclaims"),
    // Healing: the capacity of a member's claim, read before its data is moved into the
    // backups on it.
    ("get", "", "persistentvolumeclaims"),
    ("list", "", "services"),
    ("watch", "", "services"),
    ("create", "", "services"),
    ("patch", "", "services"),
    ("list", "policy", "poddisruptionbudgets"),
    ("watch", "policy", "poddisruptionbudgets"),
    ("create", "policy", "poddisruptionbudgets"),
    ("patch", "policy", "poddisruptionbudgets"),
    ("list", "networking.k8s.io", "networkpolicies"),
    ("watch", "networking.k8s.io", "networkpolicies"),
    ("create", "networking.k8s.io", "networkpolicies"),
    ("patch", "networking.k8s.io", "networkpolicies"),
    // spec.tls with spec.tls.certManager: a Certificate per member, the operator and the
    // clients, read by name and applied (server-side) when missing or changed.
    ("get", "cert-manager.io", "certificates"),
    ("create", "cert-manager.io", "certificates"),
    ("patch", "cert-manager.io", "certificates"),
    // Root credentials and, with spec.tls, certificates: read by name, the generated ones
    // created (never applied over an existing Secret); never listed or watched, so the
    // operator cannot read Secrets it was not pointed at (a role cannot name them in advance:
    // each cluster names its own). Patched only to remove the cluster's owner reference an
    // older operator set, and to renew a certificate it issued; the generated root Secret and
    // CA are deleted by the finalizer under the Delete retention policy.
    ("get", "", "secrets"),
    ("create", "", "secrets"),
    ("patch", "", "secrets"),
    ("delete", "", "secrets"),
    // Events: kube-runtime's Recorder creates one, and patches it when it repeats.
    ("create", "events.k8s.io", "events"),
    ("patch", "events.k8s.io", "events"),
    // Leader election.
    ("get", "coordination.k8s.io", "leases"),
    ("create", "coordination.k8s.io", "leases"),
    ("update", "coordination.k8s.io", "leases"),
];

/// Why a reconcile (or the controller) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The root credentials Secret is missing or incomplete.
    #[error("secret {name}: {reason}")]
    Secret {
        /// The Secret.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate Secret (`spec.tls`) is unusable, or not issued yet (`waiting`).
    #[error("certificate {name}: {reason}")]
    Certificate {
        /// The Secret or cert-manager Certificate.
        name: String,
        /// What is wrong and what to do.
        reason: String,
        /// Whether it is only not issued yet (cert-manager at work).
        waiting: bool,
    },
    /// No randomness for a generated password.
    #[error("generating the root password: {0}")]
    Random(String),
    /// The members did not accept the auth bootstrap (retried).
    #[error("auth bootstrap: {0}")]
    Bootstrap(#[from] crate::bootstrap::Error),
    /// The operator's own configuration (kubeconfig, listen address) is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Leadership was lost: another replica may be reconciling now.
    #[error("lost the leader lease {0}")]
    LostLease(String),
    /// Adding or removing the operator's finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Secret { .. } => "secret",
            Error::Certificate { .. } => "certificate",
            Error::Random(_) => "random",
            Error::Bootstrap(_) => "bootstrap",
            Error::Config(_) => "config",
            Error::LostLease(_) => "lost_lease",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Result of controller operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A cluster's healing loop and the `metadata.generation` of the spec it was made for.
/// A cluster's healing loop, the `metadata.generation` of the spec it was made for, and when
/// its last pass probed the members.
struct ClusterLoop {
    generation: Option<i64>,
    healer: Healer,
    last_pass: Option<tokio::time::Instant>,
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events on the resources.
    pub events: events::Events,
    /// Counters and timings for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// The members' etcd API.
    pub members: Arc<dyn members::Members>,
    /// The operator's own namespace: each cluster's NetworkPolicy admits the operator's pods
    /// there to the client port.
    pub operator_namespace: String,
    /// Failures in a row per object, for the backoff.
    failures: Mutex<HashMap<ObjectRef<StorageCluster>, u32>>,
    /// The healing loop's memory (probe history, findings) per cluster, with the generation
    /// of the spec it was made for.
    healers: Mutex<HashMap<ObjectRef<StorageCluster>, ClusterLoop>>,
    /// The backup each cluster is taking, in the background.
    backups: Mutex<HashMap<ObjectRef<StorageCluster>, crate::backup::Job>>,
}

impl Context {
    /// A context for reconciles through `client`, publishing Events as `reporter`, for an
    /// operator running in `operator_namespace`.
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Arc<metrics::Metrics>,
        members: Arc<dyn members::Members>,
        operator_namespace: String,
    ) -> Context {
        Context {
            events: events::Events::new(client.clone(), reporter),
            client,
            metrics,
            members,
            operator_namespace,
            failures: Mutex::default(),
            healers: Mutex::default(),
            backups: Mutex::default(),
        }
    }

    /// Takes the backup `object` is taking, if any (put it back with
    /// [`Context::put_backup_job`]).
    pub(crate) fn backup_job(
        &self,
        object: &ObjectRef<StorageCluster>,
    ) -> Option<crate::backup::Job> {
        self.backups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(object)
    }

    /// Keeps `job` as the backup `object` is taking.
    pub(crate) fn put_backup_job(
        &self,
        object: ObjectRef<StorageCluster>,
        job: Option<crate::backup::Job>,
    ) {
        if let Some(job) = job {
            self.backups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(object, job);
        }
    }

    /// Counts a failure of `object` and returns how long to wait before retrying it.
    fn backoff(&self, object: ObjectRef<StorageCluster>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(object).or_default();
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// Forgets the failures of `object` after it reconciled.
    fn succeeded(&self, object: &ObjectRef<StorageCluster>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(object);
    }
}

/// Exponential backoff after `failures` in a row: 1 s, 2 s, 4 s, ... capped at 5 minutes.
pub fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(9);
    Duration::from_secs(1u64 << exponent).min(Duration::from_secs(300))
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_in_a_row_and_stops_at_five_minutes() {
        let delays: Vec<u64> = (1..=11).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    #[tokio::test]
    async fn failures_are_counted_per_object_and_forgotten_after_a_success() {
        let (ctx, _verifier, _) = Context::test();
        let a = ObjectRef::new("a").within("default");
        let b = ObjectRef::new("b").within("default");
        assert_eq!(ctx.backoff(a.clone()), Duration::from_secs(1));
        assert_eq!(ctx.backoff(a.clone()), Duration::from_secs(2));
        assert_eq!(ctx.backoff(b.clone()), Duration::from_secs(1));
        ctx.succeeded(&a);
        assert_eq!(ctx.backoff(a), Duration::from_secs(1));
    }
}
