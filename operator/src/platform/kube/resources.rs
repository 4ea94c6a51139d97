//! The child objects of a `StorageCluster`, as pure functions of it: member pods and their
//! volumes, the peer and client Services, the PodDisruptionBudget, the NetworkPolicy and the
//! generated root Secret.
//! Nothing here talks to the API server; [`crate::controller::reconcile()`] applies what these build.
//!
//! Every child carries the cluster's labels ([`labels`]) and an [`APPLIED_HASH`] annotation: a
//! digest of the object as built, which lets a reconcile skip a child whose live copy was
//! applied from the very same desired state. The workload (pods, Services, the
//! PodDisruptionBudget, the NetworkPolicy) carries a controller owner reference to the cluster,
//! so Kubernetes' garbage collector removes it with the cluster. The data does not: volume claims and the
//! generated root Secret (the password of the data's root user) have no owner, so deleting the
//! cluster never deletes them behind the operator's back; the operator's finalizer deletes them
//! only when `spec.storage.retentionPolicy` is `Delete`.

use std::collections::{BTreeMap, BTreeSet};

use crds::StorageCluster;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, HTTPGetAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;

/// Client port of every member (etcd's).
pub const CLIENT_PORT: i32 = 2379;
/// Peer (raft) port of every member (etcd's).
pub const PEER_PORT: i32 = 2380;
/// `/metrics`, `/health`, `/readyz` and `/livez` of every member.
pub const METRICS_PORT: i32 = 2381;
/// Where the member's volume is mounted.
pub const DATA_MOUNT: &str = "/var/lib/mend";
/// The member's data directory: a subdirectory, so a filesystem's `lost+found` at the volume's
/// root is not mistaken for member data.
pub const DATA_DIR: &str = "/var/lib/mend/data";
/// Annotation holding the digest of the desired object a child was applied from.
pub const APPLIED_HASH: &str = "mend.dev/applied-hash";
/// Annotation on a member pod: the revision of the member template it was made from (see
/// [`template_revision`]); a pod on another revision than the spec's is restarted by a rolling
/// update.
pub const TEMPLATE_REVISION: &str = "mend.dev/template-revision";
/// Label naming the member a pod or volume belongs to.
pub const MEMBER_LABEL: &str = "mend.dev/member";
/// On a member's new volume claim after its old one was lost: the member must be rebuilt as a
/// new member (removed, re-added as a learner) before its pod starts. Removed when it rejoins.
pub const REBUILD_LABEL: &str = "mend.dev/rebuild";

/// Bytes in a Kubernetes quantity such as `1Gi`, `500M` or `1073741824` (what a volume claim's
/// capacity says); `None` for a form a capacity never takes.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    (value >= 0.0).then_some((value * factor as f64) as u64)
}

/// Whether a volume claim (its metadata) awaits the rebuild of its member.
pub fn awaits_rebuild(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(REBUILD_LABEL))
}
/// The label of the operator's own pods (its Deployment's pod template in `manifests/`): the
/// NetworkPolicies admit pods carrying it, in the operator's namespace, to the client port.
pub const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "mend-operator");

/// User the members run as (no root in the container).
const MEMBER_UID: i64 = 65532;

/// Whether a member starts a new cluster or joins a running one (`--initial-cluster-state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// The members bootstrap the cluster together.
    New,
    /// The member was added to a running cluster (`member add`) and catches up from it.
    Existing,
}

impl ClusterState {
    fn flag(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// How `member` starts, given the members whose volume exists (`with_data`): a member whose
/// volume is gone while others have data joins the running cluster (`existing`); otherwise it
/// founds the cluster with the others, or restarts on its own data, where the node ignores the
/// flag (it keeps the identity stored in its data directory).
pub fn start_state(member: &str, with_data: &BTreeSet<&str>) -> ClusterState {
    if with_data.is_empty() || with_data.contains(member) {
        ClusterState::New
    } else {
        ClusterState::Existing
    }
}

/// Where a member's wiped data is kept, on its own volume beside the data directory.
pub const BACKUP_DIR: &str = "/var/lib/mend/backups";
/// Label naming the member a backup pod backs up.
pub const BACKUP_OF_LABEL: &str = "mend.dev/backup-of";

/// The one-off pod that moves `member`'s data aside into [`BACKUP_DIR`] as `backup` (the
/// heal's back-up-and-wipe step), keeping `spec.healing.backupRetention` backups. It mounts
/// the member's volume, so it runs only while the member's pod is gone. It carries the
/// cluster's labels but not the member selector, so neither the Services nor the
/// PodDisruptionBudget count it.
pub fn backup_pod(cluster: &StorageCluster, member: &str, backup: &str) -> Pod {
    let mut pod = member_pod(cluster, member, ClusterState::Existing);
    pod.metadata.name = Some(backup_pod_name(member));
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.remove("app.kubernetes.io/name");
    labels.remove(MEMBER_LABEL);
    labels.insert(BACKUP_OF_LABEL.to_string(), member.to_string());
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.hostname = None;
        spec.subdomain = None;
        spec.restart_policy = Some("Never".to_string());
        // Only the data volume: moving data aside needs no certificate.
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| v.name == "data");
        }
        for container in &mut spec.containers {
            if let Some(mounts) = container.volume_mounts.as_mut() {
                mounts.retain(|m| m.name == "data");
            }
            container.name = "backup".to_string();
            container.args = Some(vec![
                "backup-data".to_string(),
                format!("--data-dir={DATA_DIR}"),
                format!("--backup-dir={BACKUP_DIR}"),
                format!("--name={backup}"),
                format!("--keep={}", cluster.spec.healing.backup_retention.max(1)),
            ]);
            container.ports = None;
            container.readiness_probe = None;
            container.liveness_probe = None;
            container.startup_probe = None;
        }
    }
    pod
}

/// The name of `member`'s backup pod.
pub fn backup_pod_name(member: &str) -> String {
    format!("{member}-backup")
}

/// A member's peer URL.
pub fn peer_url(cluster: &StorageCluster, member: &str) -> String {
    format!(
        "{}://{}:{PEER_PORT}",
        scheme(cluster),
        member_host(cluster, member)
    )
}

/// `https` for a cluster with `spec.tls` (both ports), `http` otherwise.
pub fn scheme(cluster: &StorageCluster) -> &'static str {
    if cluster.spec.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// The labels every child carries; the first two also select the member pods.
pub fn labels(cluster: &StorageCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "storage-node".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), cluster.name_any()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "mend-operator".to_string(),
        ),
    ])
}

/// Labels selecting the member pods of `cluster`.
pub fn selector_labels(cluster: &StorageCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "storage-node".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), cluster.name_any()),
    ])
}

/// [`selector_labels`] as a label selector string (`k=v,k=v`), for lists and `status.selector`.
pub fn selector(cluster: &StorageCluster) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The cluster's members, in order (pod names and `--name`): those the status lists (the
/// member table the operator wrote last, which a resize changes one member at a time), or,
/// before any, `<cluster>-0` to `<cluster>-(replicas-1)`; and the member a resize in progress
/// made the place of (`status.healing.progress`) until the table lists it.
pub fn member_names(cluster: &StorageCluster) -> Vec<String> {
    let status = cluster.status.as_ref();
    let mut names: Vec<String> = status
        .map(|s| s.members.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    if names.is_empty() {
        names = (0..cluster.spec.replicas.max(0))
            .map(|i| format!("{}-{i}", cluster.name_any()))
            .collect();
    }
    let made = status
        .and_then(|s| s.healing.as_ref()?.progress.as_ref())
        .and_then(|p| {
            let create = p.steps.iter().position(|s| s.action == "Create")?;
            let new = format!("{:x}", crate::planner::NEW_MEMBER);
            (create < p.next as usize).then(|| p.names.get(&new).cloned())?
        });
    if let Some(name) = made
        && !names.contains(&name)
    {
        names.push(name);
    }
    names
}

/// The headless Service giving each member a stable DNS name.
pub fn peer_service_name(cluster: &StorageCluster) -> String {
    format!("{}-peer", cluster.name_any())
}

/// The Service clients use.
pub fn client_service_name(cluster: &StorageCluster) -> String {
    format!("{}-client", cluster.name_any())
}

/// The Secret the operator generates when `spec.auth.rootSecretRef` is absent.
pub fn generated_secret_name(cluster: &StorageCluster) -> String {
    format!("{}-root", cluster.name_any())
}

/// A member's volume claim.
pub fn pvc_name(member: &str) -> String {
    format!("data-{member}")
}

/// A member's stable host name: `<pod>.<peer service>.<namespace>.svc`.
pub fn member_host(cluster: &StorageCluster, member: &str) -> String {
    format!(
        "{member}.{}.{}.svc",
        peer_service_name(cluster),
        cluster.namespace().unwrap_or_default()
    )
}

/// A member's client URL, as it advertises it and the operator probes it.
pub fn client_url(cluster: &StorageCluster, member: &str) -> String {
    format!(
        "{}://{}:{CLIENT_PORT}",
        scheme(cluster),
        member_host(cluster, member)
    )
}

/// Base URL of `member`'s metrics endpoint (`/metrics`, `/health`).
pub fn metrics_url(cluster: &StorageCluster, member: &str) -> String {
    format!("http://{}:{METRICS_PORT}", member_host(cluster, member))
}

/// `--initial-cluster`: every member's name and peer URL.
pub fn initial_cluster(cluster: &StorageCluster) -> String {
    member_names(cluster)
        .iter()
        .map(|m| format!("{m}={}", peer_url(cluster, m)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of a child named `name`: the cluster's namespace, labels and owner reference.
pub(crate) fn child_meta(cluster: &StorageCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels(cluster)),
        owner_references: owner_reference(cluster).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Metadata of a child that holds data (a volume claim, the generated root Secret): the
/// cluster's namespace and labels, and no owner, so that it outlives the cluster unless the
/// retention policy says otherwise.
pub(crate) fn data_meta(cluster: &StorageCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        owner_references: None,
        ..child_meta(cluster, name)
    }
}

/// Whether an object (its metadata) bears every label of `cluster`'s children: the operator
/// made it for this cluster.
pub fn made_for(cluster: &StorageCluster, meta: &ObjectMeta) -> bool {
    let labels = meta.labels.as_ref();
    self::labels(cluster)
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The value under `key` in `secret`'s data, as non-empty UTF-8 text.
pub fn secret_text<'s>(secret: &'s Secret, key: &str) -> Option<&'s str> {
    let value = secret.data.as_ref()?.get(key)?;
    std::str::from_utf8(&value.0).ok().filter(|v| !v.is_empty())
}

/// Labels selecting every child the operator made for `cluster` (and only those: a claim
/// someone else labelled `app.kubernetes.io/instance` is not the operator's).
pub fn owned_selector(cluster: &StorageCluster) -> String {
    labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The controller owner reference to `cluster` (none when it has no UID yet, which only a
/// resource that was never stored lacks). Without `blockOwnerDeletion`: setting it needs
/// `update` on `storageclusters/finalizers`, a permission the operator has no other use for.
fn owner_reference(cluster: &StorageCluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

/// Sets the [`APPLIED_HASH`] annotation of `object` to the digest of `object` as it is.
pub(crate) fn stamp<K: Resource + Serialize>(mut object: K) -> K {
    let hash = digest(&object);
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH.to_string(), hash);
    object
}

/// FNV-1a of the object's JSON: stable across runs and builds (unlike std's `DefaultHasher`),
/// which is all a change detector needs.
pub(crate) fn digest<T: Serialize>(object: &T) -> String {
    // Serializing plain data to a Vec cannot fail; an empty input would only cost one re-apply.
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The digest a live child was applied from, if it carries one.
pub fn applied_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH))
        .map(String::as_str)
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        ..ServicePort::default()
    }
}

/// The headless Service behind the members' DNS names. It publishes members before they are
/// ready: a member must resolve its peers to form the cluster, before any of them can be ready.
pub fn peer_service(cluster: &StorageCluster) -> Service {
    stamp(Service {
        metadata: child_meta(cluster, peer_service_name(cluster)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster)),
            ports: Some(vec![port("peer", PEER_PORT), port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The Service clients connect to (ready members only).
pub fn client_service(cluster: &StorageCluster) -> Service {
    stamp(Service {
        metadata: child_meta(cluster, client_service_name(cluster)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(cluster)),
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// At most one member down by voluntary disruption (drains), as the healing procedure allows.
pub fn pod_disruption_budget(cluster: &StorageCluster) -> PodDisruptionBudget {
    stamp(PodDisruptionBudget {
        metadata: child_meta(cluster, cluster.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// Who may reach the members (named after the cluster, as the PodDisruptionBudget): the peer
/// port only from the cluster's own members (anyone else reaching it could append entries,
/// vote or change the membership); the client port only from the operator's pods in
/// `operator_namespace` and the clients `spec.network.clients` declares; the metrics port from
/// anywhere, as it serves only metrics and health, no keys (Prometheus scrapes it from its own
/// namespace; the kubelet's probes come from the pod's own node, which a NetworkPolicy cannot
/// block). Ingress only: what members call (each other, DNS) is left alone.
pub fn network_policy(cluster: &StorageCluster, operator_namespace: &str) -> NetworkPolicy {
    let members = LabelSelector {
        match_labels: Some(selector_labels(cluster)),
        match_expressions: None,
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            // Set by the API server on every namespace (Kubernetes 1.22 and later).
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                operator_namespace.to_string(),
            )])),
            match_expressions: None,
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                OPERATOR_POD_LABEL.0.to_string(),
                OPERATOR_POD_LABEL.1.to_string(),
            )])),
            match_expressions: None,
        }),
        ip_block: None,
    };
    let clients = std::iter::once(operator)
        .chain(cluster.spec.network.clients.iter().cloned())
        .collect();
    let to = |port: i32, from: Option<Vec<NetworkPolicyPeer>>| NetworkPolicyIngressRule {
        from,
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".to_string()),
            end_port: None,
        }]),
    };
    stamp(NetworkPolicy {
        metadata: child_meta(cluster, cluster.name_any()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(members.clone()),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                to(
                    PEER_PORT,
                    Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(members),
                        ..NetworkPolicyPeer::default()
                    }]),
                ),
                to(CLIENT_PORT, Some(clients)),
                to(METRICS_PORT, None),
            ]),
            egress: None,
        }),
    })
}

/// A member's volume claim, sized and classed from `spec.storage`.
pub fn pvc(cluster: &StorageCluster, member: &str) -> PersistentVolumeClaim {
    let mut metadata = data_meta(cluster, pvc_name(member));
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MEMBER_LABEL.to_string(), member.to_string());
    stamp(PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: cluster.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(cluster.spec.storage.size.clone()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

/// The generated root credentials: user `root` and `password`.
pub fn root_secret(cluster: &StorageCluster, password: &str) -> Secret {
    Secret {
        metadata: data_meta(cluster, generated_secret_name(cluster)),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([
            ("username".to_string(), ByteString(b"root".to_vec())),
            (
                "password".to_string(),
                ByteString(password.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// The storage-node command line of `member`: etcd's flags, listening on every address (listen
/// URLs must be IPs) and advertising the member's stable DNS name.
pub fn member_args(cluster: &StorageCluster, member: &str, state: ClusterState) -> Vec<String> {
    let host = member_host(cluster, member);
    let scheme = scheme(cluster);
    let token = format!(
        "{}-{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    );
    [
        ("--name", member.to_string()),
        ("--data-dir", DATA_DIR.to_string()),
        (
            "--listen-client-urls",
            format!("{scheme}://0.0.0.0:{CLIENT_PORT}"),
        ),
        (
            "--advertise-client-urls",
            format!("{scheme}://{host}:{CLIENT_PORT}"),
        ),
        (
            "--listen-peer-urls",
            format!("{scheme}://0.0.0.0:{PEER_PORT}"),
        ),
        (
            "--initial-advertise-peer-urls",
            format!("{scheme}://{host}:{PEER_PORT}"),
        ),
        ("--initial-cluster", initial_cluster(cluster)),
        ("--initial-cluster-state", state.flag().to_string()),
        ("--initial-cluster-token", token),
        (
            "--listen-metrics-urls",
            format!("http://0.0.0.0:{METRICS_PORT}"),
        ),
        ("--log-format", "json".to_string()),
    ]
    .into_iter()
    .map(|(flag, value)| format!("{flag}={value}"))
    .chain(
        cluster
            .spec
            .tls
            .iter()
            .flat_map(|_| super::tls::member_args()),
    )
    .chain(cluster.spec.auto_compaction.iter().flat_map(|c| c.flags()))
    .chain(
        // Not Ready, so behind no client Service, until the operator turned auth on.
        cluster
            .spec
            .auth
            .enabled
            .then(|| "--ready-only-with-auth".to_string()),
    )
    .collect()
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("metrics".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

/// The pod of `member`, with its own volume claim, started as `state` says. Placement and
/// resources come from the spec.
pub fn member_pod(cluster: &StorageCluster, member: &str, state: ClusterState) -> Pod {
    let mut metadata = child_meta(cluster, member.to_string());
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MEMBER_LABEL.to_string(), member.to_string());
    let placement = &cluster.spec.placement;
    let container = Container {
        name: "storage-node".to_string(),
        image: Some(cluster.spec.image.clone()),
        command: Some(vec!["storage-node".to_string()]),
        args: Some(member_args(cluster, member, state)),
        ports: Some(vec![
            container_port("client", CLIENT_PORT),
            container_port("peer", PEER_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        // Ready: the member has a leader, so it serves (the client Service sends it clients).
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        // Alive: the process answers, leader or not. A member without a leader is waiting
        // for its peers (starting together, a slow volume, a quorum loss); restarting it
        // brings no leader back and makes a quorum loss longer, as etcd-druid's members
        // know (liveness there does not need a leader either).
        liveness_probe: Some(http_probe("/livez", 10, 6)),
        // Until the first answer, liveness waits: opening the database and replaying the log
        // after a restart may take minutes on a large member (up to 30 × 10 s here).
        startup_probe: Some(http_probe("/livez", 10, 30)),
        resources: Some(
            cluster
                .spec
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: "data".to_string(),
                mount_path: DATA_MOUNT.to_string(),
                ..VolumeMount::default()
            })
            .chain(cluster.spec.tls.iter().map(|_| super::tls::volume_mount()))
            .collect(),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut pod = Pod {
        metadata,
        spec: Some(PodSpec {
            hostname: Some(member.to_string()),
            subdomain: Some(peer_service_name(cluster)),
            containers: vec![container],
            volumes: Some(
                std::iter::once(Volume {
                    name: "data".to_string(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: pvc_name(member),
                        read_only: None,
                    }),
                    ..Volume::default()
                })
                .chain(
                    cluster
                        .spec
                        .tls
                        .iter()
                        .map(|_| super::tls::volume(cluster, member)),
                )
                .collect(),
            ),
            // Service links would put `<SERVICE>_*` variables in the environment, where the
            // node reads its `ETCD_*` flags: a Service named `etcd-...` could set one.
            enable_service_links: Some(false),
            // A member never calls the Kubernetes API: a token in its filesystem would only
            // hand the namespace's default service account to whoever breaks into it.
            automount_service_account_token: Some(false),
            restart_policy: Some("Always".to_string()),
            termination_grace_period_seconds: Some(30),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(MEMBER_UID),
                run_as_group: Some(MEMBER_UID),
                fs_group: Some(MEMBER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: (!placement.node_selector.is_empty())
                .then(|| placement.node_selector.clone()),
            tolerations: (!placement.tolerations.is_empty()).then(|| placement.tolerations.clone()),
            affinity: Some(
                placement
                    .affinity
                    .clone()
                    .unwrap_or_else(|| spread_members(cluster)),
            ),
            priority_class_name: placement.priority_class_name.clone(),
            ..PodSpec::default()
        }),
        status: None,
    };
    let revision = template_revision_of_spec(pod.spec.as_ref());
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_REVISION.to_string(), revision);
    stamp(pod)
}

/// The revision of the member template a pod spec holds: a digest of the spec without the
/// flags that only matter to an empty data directory and change with the membership
/// (`--initial-cluster`, `--initial-cluster-state`), so a pod started to join and one started
/// with the cluster share it, and only a change of image, flags, resources or placement makes
/// another.
fn template_revision_of_spec(spec: Option<&PodSpec>) -> String {
    let mut spec = spec.cloned().unwrap_or_default();
    for container in &mut spec.containers {
        if let Some(args) = &mut container.args {
            args.retain(|a| {
                !a.starts_with("--initial-cluster=") && !a.starts_with("--initial-cluster-state=")
            });
        }
    }
    digest(&spec)
}

/// The template revision member `member` of `cluster` should run.
pub fn template_revision(cluster: &StorageCluster, member: &str) -> String {
    template_revision_of_spec(member_pod(cluster, member, ClusterState::New).spec.as_ref())
}

/// The template revision a live member pod runs, when it carries one.
pub fn running_revision(pod: &ObjectMeta) -> Option<&str> {
    pod.annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_REVISION))
        .map(String::as_str)
}

/// What a member requests when `spec.resources` is absent (the values its documentation
/// states): CPU and memory requests, so a member is not BestEffort (the first evicted under
/// memory pressure, refused by a quota that asks for requests); no limits, as a CPU limit
/// throttles a member's heartbeats and a memory limit would kill it at a peak.
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                Quantity(crds::DEFAULT_CPU_REQUEST.to_string()),
            ),
            (
                "memory".to_string(),
                Quantity(crds::DEFAULT_MEMORY_REQUEST.to_string()),
            ),
        ])),
        ..ResourceRequirements::default()
    }
}

/// Without affinity rules in the spec: members on different nodes where possible, so a node
/// loss takes one member, not the quorum. Preferred, not required, so a cluster of fewer
/// nodes than members still starts.
fn spread_members(cluster: &StorageCluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".to_string(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(cluster)),
                            match_expressions: None,
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    }
}

/// What is wrong with a spec the API server should have refused (a CRD installed without its
/// validation, or an older CRD version), phrased as what to fix; `None` when it is valid.
pub fn spec_problem(cluster: &StorageCluster) -> Option<String> {
    let name = cluster.name_any();
    if !is_valid_name(&name) {
        return Some(format!("{name:?} cannot be used: {}", crds::NAME_MESSAGE));
    }
    let replicas = cluster.spec.replicas;
    if !(1..=7).contains(&replicas) {
        return Some(format!(
            "spec.replicas is {replicas}: set it to 1, 3, 5 or 7"
        ));
    }
    if replicas % 2 == 0 {
        return Some(format!(
            "spec.replicas is {replicas}, an even number: set it to {} or {} so a majority \
             survives a member loss",
            replicas - 1,
            replicas + 1
        ));
    }
    if let Some(problem) = super::super::auto_compaction_problem(&cluster.spec) {
        return Some(problem);
    }
    if let Some(problem) = crate::backup::spec_problem(&cluster.spec, false) {
        return Some(problem);
    }
    if let Some(problem) = crate::maintenance::schedule_problem(&cluster.spec) {
        return Some(problem);
    }
    if cluster.spec.image.trim().is_empty() {
        return Some("spec.image is empty: set the storage-node image to run".to_string());
    }
    if cluster.namespace().is_none() {
        return Some("the StorageCluster has no namespace".to_string());
    }
    let clients = &cluster.spec.network.clients;
    let empty = |p: &NetworkPolicyPeer| {
        p.pod_selector.is_none() && p.namespace_selector.is_none() && p.ip_block.is_none()
    };
    if let Some(i) = clients.iter().position(empty) {
        return Some(format!(
            "spec.network.clients[{i}]: {}",
            crds::CLIENT_NAMES_SOMEONE_MESSAGE
        ));
    }
    let mixed = |p: &NetworkPolicyPeer| {
        p.ip_block.is_some() && (p.pod_selector.is_some() || p.namespace_selector.is_some())
    };
    if let Some(i) = clients.iter().position(mixed) {
        return Some(format!(
            "spec.network.clients[{i}]: {}",
            crds::CLIENT_IP_BLOCK_ALONE_MESSAGE
        ));
    }
    None
}

/// Whether `name` passes the CRD's rule on `metadata.name` (a DNS-1035 label of at most
/// [`crds::MAX_NAME_LENGTH`] characters).
fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= crds::MAX_NAME_LENGTH
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_read_as_bytes() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("512Mi"), Some(512 << 20));
        assert_eq!(quantity_bytes("10G"), Some(10_000_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("1073741824"), Some(1 << 30));
        assert_eq!(quantity_bytes("1Zi"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }
    use crate::controller::fixtures::cluster;

    #[test]
    fn members_advertise_stable_names_and_listen_on_every_address() {
        let sc = cluster("demo", 3);
        let args = member_args(&sc, "demo-1", ClusterState::New);
        assert!(args.contains(&"--name=demo-1".to_string()));
        assert!(args.contains(&"--listen-client-urls=http://0.0.0.0:2379".to_string()));
        assert!(args.contains(
            &"--advertise-client-urls=http://demo-1.demo-peer.default.svc:2379".to_string()
        ));
        assert!(args.contains(&"--initial-cluster-state=new".to_string()));
        assert!(
            args.contains(
                &"--initial-cluster=demo-0=http://demo-0.demo-peer.default.svc:2380,\
              demo-1=http://demo-1.demo-peer.default.svc:2380,\
              demo-2=http://demo-2.demo-peer.default.svc:2380"
                    .to_string()
            )
        );
        let joining = member_args(&sc, "demo-1", ClusterState::Existing);
        assert!(joining.contains(&"--initial-cluster-state=existing".to_string()));
        // Auth is on by default: not Ready before the operator turned it on.
        assert!(args.contains(&"--ready-only-with-auth".to_string()));
        let mut open = sc.clone();
        open.spec.auth.enabled = false;
        let args = member_args(&open, "demo-1", ClusterState::New);
        assert!(!args.contains(&"--ready-only-with-auth".to_string()));
    }

    #[test]
    fn with_tls_members_serve_https_and_their_backup_pod_needs_no_certificate() {
        let mut sc = cluster("demo", 3);
        sc.spec.tls = Some(crds::Tls::default());
        assert_eq!(
            client_url(&sc, "demo-0"),
            "https://demo-0.demo-peer.default.svc:2379"
        );
        let args = member_args(&sc, "demo-0", ClusterState::New);
        assert!(
            args.contains(
                &"--initial-cluster=demo-0=https://demo-0.demo-peer.default.svc:2380,\
            demo-1=https://demo-1.demo-peer.default.svc:2380,\
            demo-2=https://demo-2.demo-peer.default.svc:2380"
                    .to_string()
            )
        );
        assert!(args.contains(&"--key-file=/etc/mend/tls/tls.key".to_string()));
        // Probes and Prometheus keep plain HTTP on the metrics port.
        assert!(args.contains(&"--listen-metrics-urls=http://0.0.0.0:2381".to_string()));
        let backup = backup_pod(&sc, "demo-0", "0001-demo-0");
        let spec = backup.spec.expect("spec");
        let volumes: Vec<_> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["data"]);
        let mounts: Vec<_> = spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(mounts, ["data"]);
    }

    #[test]
    fn auto_compaction_reaches_every_member_and_a_bad_one_is_refused_in_etcds_words() {
        let with = |compaction: serde_json::Value| {
            let mut sc = cluster("demo", 3);
            sc.spec.auto_compaction = Some(serde_json::from_value(compaction).expect("spec"));
            sc
        };
        let sc = with(serde_json::json!({ "retention": "1h" }));
        assert_eq!(spec_problem(&sc), None);
        let args = member_args(&sc, "demo-2", ClusterState::New);
        assert!(args.contains(&"--auto-compaction-mode=periodic".to_string()));
        assert!(args.contains(&"--auto-compaction-retention=1h".to_string()));
        let args = member_args(&cluster("demo", 3), "demo-2", ClusterState::New);
        assert!(
            !args.iter().any(|a| a.starts_with("--auto-compaction")),
            "none by default"
        );
        let bad = spec_problem(&with(serde_json::json!({ "retention": "1.5" }))).expect("refused");
        assert!(bad.contains("missing unit in duration"), "{bad}");
        let count = with(serde_json::json!({ "mode": "Revision", "retention": "1h" }));
        let bad = spec_problem(&count).expect("refused");
        assert!(bad.contains("count of revisions"), "{bad}");
        let count = with(serde_json::json!({ "mode": "Revision", "retention": "10000" }));
        assert_eq!(spec_problem(&count), None);
    }

    #[test]
    fn the_workload_is_owned_by_the_cluster_and_the_data_is_not() {
        let sc = cluster("demo", 3);
        let workload = [
            peer_service(&sc).metadata,
            client_service(&sc).metadata,
            pod_disruption_budget(&sc).metadata,
            network_policy(&sc, "mend-system").metadata,
            member_pod(&sc, "demo-0", ClusterState::New).metadata,
        ];
        let data = [pvc(&sc, "demo-0").metadata, root_secret(&sc, "pw").metadata];
        for meta in &workload {
            let owner = &meta.owner_references.as_ref().expect("owner")[0];
            assert_eq!(owner.kind, "StorageCluster");
            assert_eq!(owner.controller, Some(true));
        }
        for meta in &data {
            assert_eq!(meta.owner_references, None, "{:?}", meta.name);
        }
        for meta in workload.into_iter().chain(data) {
            let labels = meta.labels.expect("labels");
            assert_eq!(labels["app.kubernetes.io/instance"], "demo");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "mend-operator");
        }
    }

    #[test]
    fn the_applied_hash_changes_with_the_desired_state_only() {
        let sc = cluster("demo", 3);
        let a = member_pod(&sc, "demo-0", ClusterState::New);
        let b = member_pod(&sc, "demo-0", ClusterState::New);
        assert_eq!(applied_hash(&a.metadata), applied_hash(&b.metadata));
        let mut other = sc.clone();
        other.spec.image = "elsewhere/storage-node:2".to_string();
        let c = member_pod(&other, "demo-0", ClusterState::New);
        assert_ne!(applied_hash(&a.metadata), applied_hash(&c.metadata));
    }

    #[test]
    fn a_member_without_its_volume_joins_a_cluster_that_has_data() {
        let none = BTreeSet::new();
        assert_eq!(start_state("demo-0", &none), ClusterState::New);
        let some = BTreeSet::from(["demo-0", "demo-2"]);
        assert_eq!(start_state("demo-0", &some), ClusterState::New);
        assert_eq!(start_state("demo-1", &some), ClusterState::Existing);
    }

    #[test]
    fn members_spread_over_nodes_unless_the_spec_places_them() {
        let sc = cluster("demo", 3);
        let pod = member_pod(&sc, "demo-0", ClusterState::New);
        let spread = pod
            .spec
            .and_then(|s| s.affinity)
            .and_then(|a| a.pod_anti_affinity);
        let term = &spread
            .expect("anti-affinity")
            .preferred_during_scheduling_ignored_during_execution
            .expect("preferred")[0];
        assert_eq!(
            term.pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        let mut placed = sc.clone();
        placed.spec.placement.affinity = Some(Affinity::default());
        let pod = member_pod(&placed, "demo-0", ClusterState::New);
        assert_eq!(pod.spec.and_then(|s| s.affinity), Some(Affinity::default()));
    }

    #[test]
    fn liveness_asks_only_whether_the_member_answers_and_readiness_asks_for_a_leader() {
        let pod = member_pod(&cluster("demo", 3), "demo-0", ClusterState::New);
        let container = &pod.spec.expect("spec").containers[0];
        let probe = |p: &Option<Probe>| {
            let p = p.clone().expect("probe");
            let get = p.http_get.expect("HTTP probe");
            (
                get.path.expect("path"),
                get.port,
                p.period_seconds.unwrap_or(10) * p.failure_threshold.unwrap_or(3),
            )
        };
        let metrics = IntOrString::String("metrics".to_string());
        // /livez answers while the process runs, leader or not (storage-node's
        // a_member_without_a_leader_is_alive_but_neither_healthy_nor_ready); /readyz needs one.
        let (path, port, _) = probe(&container.liveness_probe);
        assert_eq!((path.as_str(), &port), ("/livez", &metrics));
        let (path, port, _) = probe(&container.readiness_probe);
        assert_eq!((path.as_str(), &port), ("/readyz", &metrics));
        // A slow start (database open, log replay) has minutes before liveness counts.
        let (path, _, patience) = probe(&container.startup_probe);
        assert_eq!(path, "/livez");
        assert!(patience >= 300, "{patience} s");
        assert!(
            container
                .liveness_probe
                .as_ref()
                .is_some_and(|p| p.initial_delay_seconds.is_none()),
            "the startup probe holds liveness back, not a fixed delay"
        );
    }

    #[test]
    fn members_request_cpu_and_memory_unless_the_spec_says_otherwise() {
        let requests = |sc: &StorageCluster| {
            member_pod(sc, "demo-0", ClusterState::New)
                .spec
                .expect("spec")
                .containers[0]
                .resources
                .clone()
                .expect("resources")
        };
        let defaults = requests(&cluster("demo", 3));
        let wanted = BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".to_string())),
            ("memory".to_string(), Quantity("256Mi".to_string())),
        ]);
        assert_eq!(defaults.requests, Some(wanted));
        assert_eq!(defaults.limits, None);
        let mut none = cluster("demo", 3);
        none.spec.resources = Some(ResourceRequirements::default());
        assert_eq!(requests(&none), ResourceRequirements::default());
    }

    #[test]
    fn a_name_the_crd_would_refuse_is_refused_here_too() {
        for name in ["demo", "a1", &"a".repeat(crds::MAX_NAME_LENGTH)] {
            assert_eq!(spec_problem(&cluster(name, 3)), None, "{name}");
        }
        for name in ["9lives", "demo.prod", "Demo", "demo-", &"a".repeat(57)] {
            let problem = spec_problem(&cluster(name, 3)).expect("refused");
            assert!(problem.contains("DNS-1035"), "{problem}");
        }
    }

    #[test]
    fn a_declared_client_the_network_policy_would_refuse_is_refused_here_too() {
        let with = |clients: serde_json::Value| {
            let mut sc = cluster("demo", 3);
            sc.spec.network.clients = serde_json::from_value(clients).expect("peers");
            spec_problem(&sc)
        };
        assert_eq!(with(serde_json::json!([{ "namespaceSelector": {} }])), None);
        let empty = with(serde_json::json!([{ "podSelector": {} }, {}])).expect("refused");
        assert!(empty.starts_with("spec.network.clients[1]: "), "{empty}");
        let mixed = with(serde_json::json!([
            { "ipBlock": { "cidr": "10.0.0.0/8" }, "podSelector": {} },
        ]))
        .expect("refused");
        assert!(mixed.contains("separate entries"), "{mixed}");
    }

    #[test]
    fn even_or_out_of_range_replicas_say_what_to_set() {
        assert_eq!(spec_problem(&cluster("demo", 3)), None);
        let even = spec_problem(&cluster("demo", 4)).expect("even refused");
        assert!(even.contains("set it to 3 or 5"), "{even}");
        let zero = spec_problem(&cluster("demo", 0)).expect("zero refused");
        assert!(zero.contains("1, 3, 5 or 7"), "{zero}");
        assert!(spec_problem(&cluster("demo", 9)).is_some());
    }
}
