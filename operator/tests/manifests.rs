//! Every YAML file of `manifests/`, `manifests/operator/` and `manifests/namespaced/` parses
//! strictly into its Kubernetes type; the cluster-wide kustomization installs exactly the
//! operator's files (not the CRD, not the example) and the namespace-scoped one nothing
//! cluster-wide; the Deployment is hardened as promised and carries the label the members'
//! NetworkPolicies admit; and both installs grant exactly `operator::controller::API_CALLS`.
//! Where `kubectl` is installed, both kustomizations are also rendered by its kustomize.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crds::StorageCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use operator::controller::API_CALLS;
use operator::yaml::parse_strict;
use serde::Deserialize;
use serde_json::Value;

/// `raw` (one document of a manifest) parsed strictly into `T`.
fn from_value_strict<T: serde::de::DeserializeOwned + serde::Serialize>(
    raw: Value,
) -> Result<T, String> {
    let yaml = serde_saphyr::to_string(&raw).map_err(|e| e.to_string())?;
    parse_strict(&yaml)
}

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// The directories holding Kubernetes objects (`monitoring/` needs the Prometheus Operator's
/// types and has its own test).
const DIRS: [&str; 3] = ["", "operator/", "namespaced/"];

/// The objects of `file` (a path under `manifests/`).
fn objects_of(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(manifests().join(file)).expect("readable");
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Every YAML file of [`DIRS`] (kustomizations aside), as a path under `manifests/`.
fn files() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in DIRS {
        for entry in std::fs::read_dir(manifests().join(dir)).expect("manifests/") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if path.extension().is_some_and(|e| e == "yaml") && name != "kustomization.yaml" {
                out.insert(format!("{dir}{name}"));
            }
        }
    }
    out
}

/// The objects of every file of [`files`], with their file.
fn objects() -> Vec<(String, Value)> {
    files()
        .into_iter()
        .flat_map(|file| {
            objects_of(&file)
                .into_iter()
                .map(move |o| (file.clone(), o))
        })
        .collect()
}

/// Objects of `kind` in `file`, parsed strictly.
fn of_kind_in<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, kind: &str) -> Vec<T> {
    objects_of(file)
        .into_iter()
        .filter(|o| o["kind"] == kind)
        .map(|o| from_value_strict(o).unwrap_or_else(|e| panic!("{file}: {kind}: {e}")))
        .collect()
}

/// The one Deployment, the operator's.
fn deployment() -> Deployment {
    let [deployment]: [Deployment; 1] = of_kind_in("operator/deployment.yaml", "Deployment")
        .try_into()
        .expect("one Deployment");
    deployment
}

#[test]
fn every_manifest_parses_strictly_into_its_kubernetes_type() {
    let objects = objects();
    assert!(objects.len() >= 9, "{} objects", objects.len());
    for (file, object) in objects {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let parsed = match kind.as_str() {
            "Namespace" => from_value_strict::<Namespace>(object).map(drop),
            "ServiceAccount" => from_value_strict::<ServiceAccount>(object).map(drop),
            "ClusterRole" => from_value_strict::<ClusterRole>(object).map(drop),
            "ClusterRoleBinding" => from_value_strict::<ClusterRoleBinding>(object).map(drop),
            "Role" => from_value_strict::<Role>(object).map(drop),
            "RoleBinding" => from_value_strict::<RoleBinding>(object).map(drop),
            "Deployment" => from_value_strict::<Deployment>(object).map(drop),
            "CustomResourceDefinition" => {
                from_value_strict::<CustomResourceDefinition>(object).map(drop)
            }
            "StorageCluster" => from_value_strict::<StorageCluster>(object).map(drop),
            other => Err(format!("no Kubernetes type known for kind {other:?}")),
        };
        parsed.unwrap_or_else(|e| panic!("{file}: {kind}: {e}"));
    }
}

#[test]
fn a_misspelt_field_in_a_manifest_is_refused() {
    let text =
        std::fs::read_to_string(manifests().join("operator/deployment.yaml")).expect("deployment");
    let typo = text.replacen("replicas: 2", "replicas: 2\n  replcas: 2", 1);
    let err = parse_strict::<Deployment>(&typo).expect_err("typo refused");
    assert!(err.contains(".spec.replcas"), "{err}");
}

/// A `kustomization.yaml`, with every field one here may have (anything else is refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<Value>,
}

/// The kustomization of `dir` (under `manifests/`, with its trailing `/`), parsed strictly.
fn kustomization(dir: &str) -> Kustomization {
    let text = std::fs::read_to_string(manifests().join(dir).join("kustomization.yaml"))
        .expect("kustomization");
    let k: Kustomization = serde_saphyr::from_str(&text).expect("strict kustomization");
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    k
}

/// The files (paths under `manifests/`) the kustomization of `dir` installs, following the
/// directories it lists to their own kustomizations.
fn installed(dir: &str) -> BTreeSet<String> {
    let k = kustomization(dir);
    let mut out = BTreeSet::new();
    for resource in &k.resources {
        let path = Path::new(dir).join(resource);
        if manifests().join(&path).is_dir() {
            // `namespaced/../operator` as `operator/`.
            let normal: PathBuf = path.components().fold(PathBuf::new(), |mut p, c| {
                match c {
                    std::path::Component::ParentDir => {
                        p.pop();
                    }
                    c => p.push(c),
                }
                p
            });
            out.extend(installed(&format!("{}/", normal.display())));
        } else {
            assert!(
                out.insert(path.display().to_string()),
                "{dir}: {resource} listed twice"
            );
        }
    }
    out
}

/// `kubectl delete -k manifests/` must remove the operator only: the CRD (whose deletion would
/// delete every StorageCluster) and the example cluster are applied on their own.
#[test]
fn the_kustomization_installs_every_manifest_but_the_crd_and_the_example() {
    let everything: BTreeSet<String> = files()
        .into_iter()
        .filter(|f| !f.starts_with("namespaced/"))
        .filter(|f| f != "storagecluster-example.yaml" && f != "crd.yaml")
        .collect();
    assert_eq!(installed(""), everything);
    let k = kustomization("");
    assert!(k.namespace.is_none() && k.patches.is_empty(), "{k:?}");
}

/// `kubectl apply -k manifests/namespaced/` needs no cluster-wide right: it installs the
/// operator's own files and a Role, and no Namespace, ClusterRole, ClusterRoleBinding or CRD.
#[test]
fn the_namespaced_kustomization_installs_the_operator_and_a_role_and_nothing_cluster_wide() {
    let installed = installed("namespaced/");
    let operator: BTreeSet<String> = files()
        .into_iter()
        .filter(|f| f.starts_with("operator/") || f == "namespaced/rbac.yaml")
        .collect();
    assert_eq!(installed, operator);
    for file in &installed {
        for object in objects_of(file) {
            let kind = object["kind"].as_str().unwrap_or_default();
            assert!(
                ![
                    "Namespace",
                    "ClusterRole",
                    "ClusterRoleBinding",
                    "CustomResourceDefinition"
                ]
                .contains(&kind),
                "{file}: {kind}"
            );
        }
    }
    let k = kustomization("namespaced/");
    assert_eq!(k.namespace.as_deref(), Some("mend-system"));
    let patch = serde_json::to_string(&k.patches).expect("json");
    assert!(
        patch.contains("--watch-namespace=$(POD_NAMESPACE)"),
        "{patch}"
    );
}

#[test]
fn the_operator_runs_two_hardened_replicas_with_health_probes() {
    let spec = deployment().spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("mend-operator"));
    let container = &pod.containers[0];
    assert_eq!(
        container.args.as_deref().map(|a| a[0].as_str()),
        Some("run")
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );
    let resources = container.resources.as_ref().expect("resources");
    assert!(resources.requests.is_some() && resources.limits.is_some());
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
}

#[test]
fn the_operator_image_carries_the_workspace_version_as_the_storage_node_default_does() {
    let pod = deployment().spec.template.spec.expect("pod spec");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some(format!("ghcr.io/mend-dev/operator:{version}").as_str())
    );
    assert_eq!(
        crds::DEFAULT_IMAGE,
        format!("ghcr.io/mend-dev/storage-node:{version}")
    );
}

/// (verb, group, resource) triples a rule grants; wildcards fail the test.
fn grants(rules: &[PolicyRule]) -> Grants {
    let mut out = BTreeSet::new();
    for rule in rules {
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for verb in &rule.verbs {
            for group in &groups {
                for resource in &resources {
                    assert!(
                        ![verb, group, resource].iter().any(|s| s.contains('*')),
                        "wildcard in {rule:?}"
                    );
                    out.insert((verb.clone(), group.clone(), resource.clone()));
                }
            }
        }
    }
    out
}

/// (verb, group, resource) triples.
type Grants = BTreeSet<(String, String, String)>;

/// The grants of the ClusterRole (cluster-wide) or Role (namespaced) and of the
/// leader-election Role.
fn install_grants(file: &str, kind: &str) -> (Grants, Grants) {
    let rules = |rules: Option<Vec<PolicyRule>>| grants(rules.as_deref().unwrap_or_default());
    let operator = match kind {
        "ClusterRole" => {
            let [role]: [ClusterRole; 1] = of_kind_in(file, kind).try_into().expect("one");
            rules(role.rules)
        }
        _ => {
            let [role]: [Role; 1] = of_kind_in(file, kind).try_into().expect("one");
            rules(role.rules)
        }
    };
    let [election]: [Role; 1] = of_kind_in("operator/leader-election.yaml", "Role")
        .try_into()
        .expect("one Role");
    assert_eq!(election.metadata.namespace.as_deref(), Some("mend-system"));
    (operator, rules(election.rules))
}

/// Both installs: the operator's role and the leader-election Role grant, together, exactly
/// [`API_CALLS`], the latter only Leases.
#[test]
fn rbac_grants_exactly_the_calls_the_operator_makes() {
    let called: BTreeSet<_> = API_CALLS
        .iter()
        .map(|(v, g, r)| (v.to_string(), g.to_string(), r.to_string()))
        .collect();
    for (file, kind) in [
        ("rbac.yaml", "ClusterRole"),
        ("namespaced/rbac.yaml", "Role"),
    ] {
        let (operator, election) = install_grants(file, kind);
        assert!(
            election
                .iter()
                .all(|(_, g, r)| g == "coordination.k8s.io" && r == "leases"),
            "the election Role is for the Lease only: {election:?}"
        );
        assert!(operator.is_disjoint(&election), "{file}");
        let granted: BTreeSet<_> = operator.union(&election).cloned().collect();
        let missing: Vec<_> = called.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&called).collect();
        assert!(
            missing.is_empty(),
            "{file}: called but not granted: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "{file}: granted but never called: {extra:?}"
        );
    }
}

#[test]
fn the_bindings_name_the_roles_and_the_operators_service_account() {
    let [account]: [ServiceAccount; 1] =
        of_kind_in("operator/serviceaccount.yaml", "ServiceAccount")
            .try_into()
            .expect("one");
    let [crb]: [ClusterRoleBinding; 1] = of_kind_in("rbac.yaml", "ClusterRoleBinding")
        .try_into()
        .expect("one");
    let [cluster_role]: [ClusterRole; 1] = of_kind_in("rbac.yaml", "ClusterRole")
        .try_into()
        .expect("one");
    assert_eq!(crb.role_ref.kind, "ClusterRole");
    assert_eq!(Some(crb.role_ref.name), cluster_role.metadata.name);
    let mut subjects = vec![crb.subjects];
    for file in ["operator/leader-election.yaml", "namespaced/rbac.yaml"] {
        let [rb]: [RoleBinding; 1] = of_kind_in(file, "RoleBinding").try_into().expect("one");
        let [role]: [Role; 1] = of_kind_in(file, "Role").try_into().expect("one");
        assert_eq!(rb.role_ref.kind, "Role", "{file}");
        assert_eq!(Some(rb.role_ref.name), role.metadata.name, "{file}");
        assert_eq!(rb.metadata.namespace, role.metadata.namespace, "{file}");
        subjects.push(rb.subjects);
    }
    for subjects in subjects {
        let subject = &subjects.expect("subjects")[0];
        assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
        assert_eq!(subject.namespace, account.metadata.namespace);
    }
}

/// The members' NetworkPolicies admit the operator's pods to the client port by this label.
#[test]
fn the_operator_pods_carry_the_label_the_members_network_policies_admit() {
    let (key, value) = operator::platform::kube::resources::OPERATOR_POD_LABEL;
    let labels = deployment()
        .spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(labels.get(key).map(String::as_str), Some(value));
}

/// `kubectl kustomize DIR`'s objects, or `None` (said why) without a working kubectl.
fn rendered(dir: &str) -> Option<Vec<Value>> {
    let output = match Command::new("kubectl")
        .arg("kustomize")
        .arg(manifests().join(dir))
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("kubectl not run ({e}): the kustomizations are not rendered");
            return None;
        }
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&output.stdout))
        .expect("rendered YAML");
    Some(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Objects as sortable JSON text, to compare sets of them.
fn canonical(objects: impl IntoIterator<Item = Value>) -> BTreeSet<String> {
    objects.into_iter().map(|o| o.to_string()).collect()
}

/// What kustomize makes of the two kustomizations: the cluster-wide one is exactly its files'
/// objects; the namespaced one puts everything in its namespace, runs the operator with
/// `--watch-namespace=$(POD_NAMESPACE)` (its own namespace, from the downward API) and holds
/// nothing cluster-wide.
#[test]
fn kustomize_renders_both_installs_as_described() {
    let Some(cluster_wide) = rendered("") else {
        return;
    };
    let files = canonical(installed("").iter().flat_map(|f| objects_of(f)));
    assert_eq!(canonical(cluster_wide), files);

    let Some(namespaced) = rendered("namespaced") else {
        return;
    };
    let kinds: Vec<&str> = namespaced
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Deployment"
        ]
    );
    for object in &namespaced {
        assert_eq!(object["metadata"]["namespace"], "mend-system", "{object}");
    }
    let deployment = namespaced
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .cloned()
        .expect("Deployment");
    let deployment: Deployment = from_value_strict(deployment).expect("strict Deployment");
    let pod = deployment.spec.template.spec.expect("pod spec");
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(
        args.last().map(String::as_str),
        Some("--watch-namespace=$(POD_NAMESPACE)"),
        "{args:?}"
    );
    let pod_namespace = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAMESPACE")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(pod_namespace.as_deref(), Some("metadata.namespace"));
}
