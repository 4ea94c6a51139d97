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
