//! Every YAML file under `manifests/` parses strictly into its Kubernetes type, the
//! kustomization lists exactly the operator's install files (not the CRD, not the example), the Deployment is hardened as promised, and
//! the RBAC grants exactly `operator::controller::API_CALLS`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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

/// The objects of every YAML file under `manifests/` (kustomization aside), with their file.
fn objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(manifests())
        .expect("manifests/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            out.push((name.clone(), doc));
        }
    }
    out
}

/// Objects of `kind` across the manifests, parsed strictly.
fn of_kind<T: serde::de::DeserializeOwned + serde::Serialize>(kind: &str) -> Vec<T> {
    objects()
        .into_iter()
        .filter(|(_, o)| o["kind"] == kind)
        .map(|(file, o)| from_value_strict(o).unwrap_or_else(|e| panic!("{file}: {kind}: {e}")))
        .collect()
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
    let text = std::fs::read_to_string(manifests().join("deployment.yaml")).expect("deployment");
    let typo = text.replacen("replicas: 2", "replicas: 2\n  replcas: 2", 1);
    let err = parse_strict::<Deployment>(&typo).expect_err("typo refused");
    assert!(err.contains(".spec.replcas"), "{err}");
}

/// `kustomization.yaml`, with every field it may have (anything else is refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // Fields are read by the deserializer's checks, not by the test.
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
}

/// `kubectl delete -k manifests/` must remove the operator only: the CRD (whose deletion would
/// delete every StorageCluster) and the example cluster are applied on their own.
#[test]
fn the_kustomization_installs_every_manifest_but_the_crd_and_the_example() {
    let text =
        std::fs::read_to_string(manifests().join("kustomization.yaml")).expect("kustomization");
    let k: Kustomization = serde_saphyr::from_str(&text).expect("strict kustomization");
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    let listed: BTreeSet<String> = k.resources.iter().cloned().collect();
    assert_eq!(listed.len(), k.resources.len(), "listed twice");
    let files: BTreeSet<String> = objects()
        .into_iter()
        .map(|(file, _)| file)
        .filter(|f| f != "storagecluster-example.yaml" && f != "crd.yaml")
        .collect();
    assert_eq!(listed, files);
    assert!(!listed.contains("crd.yaml"));
}

#[test]
fn the_operator_runs_two_hardened_replicas_with_health_probes() {
    let [deployment]: [Deployment; 1] = of_kind("Deployment").try_into().expect("one Deployment");
    let spec = deployment.spec;
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
    let [deployment]: [Deployment; 1] = of_kind("Deployment").try_into().expect("one Deployment");
    let pod = deployment.spec.template.spec.expect("pod spec");
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
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
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

#[test]
fn rbac_grants_exactly_the_calls_the_operator_makes() {
    let [cluster_role]: [ClusterRole; 1] = of_kind("ClusterRole").try_into().expect("one");
    let [role]: [Role; 1] = of_kind("Role").try_into().expect("one Role");
    let cluster_wide = grants(cluster_role.rules.as_deref().unwrap_or_default());
    let namespaced = grants(role.rules.as_deref().unwrap_or_default());
    assert!(
        namespaced
            .iter()
            .all(|(_, g, r)| g == "coordination.k8s.io" && r == "leases"),
        "the Role is for the election Lease only: {namespaced:?}"
    );
    assert_eq!(role.metadata.namespace.as_deref(), Some("mend-system"));
    assert!(cluster_wide.is_disjoint(&namespaced));
    let granted: BTreeSet<_> = cluster_wide.union(&namespaced).cloned().collect();
    let called: BTreeSet<_> = API_CALLS
        .iter()
        .map(|(v, g, r)| (v.to_string(), g.to_string(), r.to_string()))
        .collect();
    let missing: Vec<_> = called.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&called).collect();
    assert!(missing.is_empty(), "called but not granted: {missing:?}");
    assert!(extra.is_empty(), "granted but never called: {extra:?}");
}

#[test]
fn the_bindings_name_the_roles_and_the_operators_service_account() {
    let [account]: [ServiceAccount; 1] = of_kind("ServiceAccount").try_into().expect("one");
    let [crb]: [ClusterRoleBinding; 1] = of_kind("ClusterRoleBinding").try_into().expect("one");
    let [rb]: [RoleBinding; 1] = of_kind("RoleBinding").try_into().expect("one");
    let [cluster_role]: [ClusterRole; 1] = of_kind("ClusterRole").try_into().expect("one");
    let [role]: [Role; 1] = of_kind("Role").try_into().expect("one");
    assert_eq!(Some(crb.role_ref.name), cluster_role.metadata.name);
    assert_eq!(Some(rb.role_ref.name), role.metadata.name);
    for subjects in [crb.subjects, rb.subjects] {
        let subject = &subjects.expect("subjects")[0];
        assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
        assert_eq!(subject.namespace, account.metadata.namespace);
    }
}
