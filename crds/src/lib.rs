//! Mend's Kubernetes resource types: the `StorageCluster` custom resource (group `mend.dev`,
//! version `v1alpha1`), its spec with schema defaults and CEL validation, and its status in
//! Kubernetes API conventions. The CRD YAML in `manifests/` is generated from these types
//! (`operator crd`). Types only: the controller lives in the `operator` crate.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types a `StorageCluster` reports.
pub mod condition {
    /// Every member serves and a quorum agrees.
    pub const AVAILABLE: &str = "Available";
    /// Members are being created, added or restarted.
    pub const PROGRESSING: &str = "Progressing";
    /// A member is down or lagging.
    pub const DEGRADED: &str = "Degraded";
    /// Members disagree on their data (AuthRevision drift, HashKV mismatch).
    pub const DIVERGED: &str = "Diverged";
    /// A heal is running.
    pub const HEALING: &str = "Healing";
}

/// A self-healing, etcd-compatible key-value cluster.
// kube's printcolumn(...) repeats the same keys per column by design; clippy reads that as a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mend.dev",
    version = "v1alpha1",
    kind = "StorageCluster",
    namespaced,
    status = "StorageClusterStatus",
    shortname = "stc",
    category = "mend",
    doc = "A self-healing, etcd-compatible key-value cluster run by Mend",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Drift",
        type_ = "integer",
        json_path = ".status.authRevisionDrift"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StorageClusterSpec {
    /// Members: odd, 1 to 7, so a majority survives the loss of a minority.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self % 2 == 1").message("replicas must be odd (1, 3, 5 or 7) so a majority survives a member loss"))]
    #[schemars(range(min = 1, max = 7))]
    pub replicas: i32,
    /// storage-node container image. The default names no published image yet: it is a
    /// placeholder, so set this to where you push a storage-node build.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Each member's volume.
    #[serde(default)]
    pub storage: Storage,
    /// Each member's CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Authentication.
    #[serde(default)]
    pub auth: Auth,
    /// Divergence detection and repair.
    #[serde(default)]
    pub healing: Healing,
    /// Where members may run.
    #[serde(default)]
    pub placement: Placement,
}

/// A member's volume.
// The storage-class rule sits on the object, not the field: a rule on an optional field runs
// only when both old and new values exist, so setting or removing the class would slip through.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(STORAGE_CLASS_FROZEN).message(STORAGE_CLASS_FROZEN_MESSAGE).field_path(".storageClassName"))]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Volume size, a Kubernetes quantity such as `1Gi`.
    #[serde(default = "default_storage_size")]
    // The bound keeps the API server's cost estimate of the CEL rule small.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(QUANTITY).message("storage.size must be a positive Kubernetes quantity such as 1Gi, 512Mi or 10G"))]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when absent. Fixed at creation: existing
    /// volumes would not follow a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// CEL: `storageClassName` is neither set, changed nor removed after creation.
const STORAGE_CLASS_FROZEN: &str = "has(self.storageClassName) == has(oldSelf.storageClassName) \
    && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)";

/// What the API server answers when [`STORAGE_CLASS_FROZEN`] fails.
const STORAGE_CLASS_FROZEN_MESSAGE: &str = "storage.storageClassName cannot be set, changed or \
    removed after creation (existing volumes would not follow): put back the previous value, or \
    create a new StorageCluster with the storage class you want";

/// CEL: a positive quantity in Kubernetes' notation: digits, an optional fraction and an optional
/// binary or decimal suffix (signs and exponents are left out: a volume size never needs them),
/// and not zero (the second match).
const QUANTITY: &str = r"self.matches('^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$') && !self.matches('^[0.]*[A-Za-z]*$')";

impl Default for Storage {
    fn default() -> Self {
        Storage {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Authentication of the cluster's clients.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// Turn etcd authentication on (root user and role created by the operator).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Secret holding the root user's `username` and `password`; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_secret_ref: Option<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            enabled: true,
            root_secret_ref: None,
        }
    }
}

/// What the operator may do about divergence.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HealingMode {
    /// Detect and heal.
    #[default]
    Automatic,
    /// Detect and report the plan; never act.
    ObserveOnly,
    /// Do not probe.
    Disabled,
}

/// Divergence detection and repair.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Healing {
    /// Whether to heal, only report, or do nothing.
    #[serde(default)]
    pub mode: HealingMode,
    /// Seconds between probes of the members.
    #[serde(default = "default_probe_interval")]
    #[schemars(range(min = 2, max = 3600))]
    pub probe_interval_seconds: u32,
    /// Probes in a row a finding must persist before the operator acts.
    #[serde(default = "default_consecutive_probes")]
    #[schemars(range(min = 1, max = 100))]
    pub consecutive_probes: u32,
    /// Backups of wiped member data to keep.
    #[serde(default = "default_backup_retention")]
    #[schemars(range(min = 0, max = 100))]
    pub backup_retention: u32,
}

impl Default for Healing {
    fn default() -> Self {
        Healing {
            mode: HealingMode::default(),
            probe_interval_seconds: default_probe_interval(),
            consecutive_probes: default_consecutive_probes(),
            backup_retention: default_backup_retention(),
        }
    }
}

/// Pod placement of the members.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Node labels members must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints members tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Lifecycle phase, for `kubectl get`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, nothing running yet.
    #[default]
    Pending,
    /// Members are starting and forming the cluster.
    Bootstrapping,
    /// Serving, members agree.
    Available,
    /// Serving with a member down or lagging.
    Degraded,
    /// Members disagree on their data.
    Diverged,
    /// A heal is running.
    Healing,
    /// The cluster cannot serve.
    Failed,
}

/// A member's role in raft.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leads.
    Leader,
    /// Votes and follows.
    Follower,
    /// Replicates without voting.
    Learner,
}

/// One member, as the last probe saw it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod (or local process) name.
    pub name: String,
    /// Member ID, hex as etcdctl prints it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub member_id: String,
    /// Client URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// Raft role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Answered the last probe.
    pub healthy: bool,
    /// AuthRevision of its auth store.
    #[serde(default)]
    pub auth_revision: u64,
    /// Key-value store revision.
    #[serde(default)]
    pub revision: i64,
    /// Last index in its raft log.
    #[serde(default)]
    pub raft_index: u64,
    /// Last applied index.
    #[serde(default)]
    pub applied_index: u64,
    /// Database size in bytes.
    #[serde(default)]
    pub db_size: i64,
    /// Live keys.
    #[serde(default)]
    pub key_count: u64,
    /// HashKV, when taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_kv: Option<u32>,
    /// Revision the HashKV was taken at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_revision: Option<i64>,
}

/// Progress of healing.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealingStatus {
    /// The running plan, one step per entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<String>,
    /// Index in `plan` of the step running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// How the last heal ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Heals run so far.
    #[serde(default)]
    pub count: u32,
}

/// What the operator observed and did (Kubernetes API conventions).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Available, Progressing, Degraded, Diverged, Healing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // One entry per type, merged by type under server-side apply, as Kubernetes' own conditions.
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: Phase,
    /// Members running.
    #[serde(default)]
    pub replicas: i32,
    /// Members answering probes.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the member pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Name of the leading member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Every member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub members: Vec<MemberStatus>,
    /// Highest minus lowest AuthRevision among members (0 when they agree).
    #[serde(default)]
    pub auth_revision_drift: u64,
    /// Healing progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healing: Option<HealingStatus>,
}

fn default_replicas() -> i32 {
    3
}

fn default_image() -> String {
    // A placeholder: no registry publishes this image yet (see the field's documentation).
    "ghcr.io/mend-dev/storage-node:latest".to_string()
}

fn default_storage_size() -> String {
    "1Gi".to_string()
}

fn default_true() -> bool {
    true
}

fn default_probe_interval() -> u32 {
    10
}

fn default_consecutive_probes() -> u32 {
    3
}

fn default_backup_retention() -> u32 {
    3
}

#[cfg(test)]
mod tests;
