//! `manifests/crd.yaml` is exactly what the types generate, and parses as a
//! CustomResourceDefinition.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

const COMMITTED: &str = include_str!("../../manifests/crd.yaml");

#[test]
fn the_committed_crd_is_the_generated_one() {
    let generated = operator::crd_yaml().expect("CRD serializes");
    assert!(
        COMMITTED == generated,
        "manifests/crd.yaml is stale: regenerate it with\n  cargo run -p operator -- crd > manifests/crd.yaml"
    );
}

#[test]
fn the_committed_crd_parses_into_the_kubernetes_type_unchanged() {
    let parsed: CustomResourceDefinition =
        serde_saphyr::from_str(COMMITTED).expect("manifests/crd.yaml parses as a CRD");
    // Equal after a round trip through the typed form: no field was unknown or lost.
    assert_eq!(parsed, crds::StorageCluster::crd());
}

#[test]
fn the_example_storage_cluster_parses_with_the_values_it_states() {
    let example: crds::StorageCluster =
        serde_saphyr::from_str(include_str!("../../manifests/storagecluster-example.yaml"))
            .expect("manifests/storagecluster-example.yaml parses as a StorageCluster");
    assert_eq!(example.metadata.name.as_deref(), Some("example"));
    assert_eq!(example.spec.replicas, 3);
    assert_eq!(example.spec.storage.size, "1Gi");
    assert!(example.spec.auth.enabled);
    assert_eq!(example.spec.healing.mode, crds::HealingMode::Automatic);
    assert_eq!(example.spec.healing.probe_interval_seconds, 10);
}
