//! `manifests/crd.yaml` is exactly what `operator crd` prints and parses strictly as a
//! CustomResourceDefinition; the example resource parses as a `StorageCluster`.

use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use operator::yaml::parse_strict;

const COMMITTED: &str = include_str!("../../manifests/crd.yaml");
const EXAMPLE: &str = include_str!("../../manifests/storagecluster-example.yaml");

/// `operator` run with `args`: its exit code, stdout and stderr.
fn operator(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(args)
        .output()
        .expect("operator runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_committed_crd_is_what_operator_crd_prints() {
    let (code, stdout, stderr) = operator(&["crd"]);
    assert_eq!(code, Some(0), "operator crd failed: {stderr}");
    assert!(
        COMMITTED == stdout,
        "manifests/crd.yaml is stale: regenerate it with\n  cargo run -p operator -- crd > manifests/crd.yaml"
    );
}

#[test]
fn operator_without_a_subcommand_prints_help_and_exits_2() {
    let (code, _, stderr) = operator(&[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("Usage: operator"), "{stderr}");
    assert!(stderr.contains("crd"), "{stderr}");
}

#[test]
fn the_committed_crd_parses_strictly_into_the_kubernetes_type() {
    let parsed: CustomResourceDefinition =
        parse_strict(COMMITTED).unwrap_or_else(|e| panic!("manifests/crd.yaml: {e}"));
    assert_eq!(parsed, crds::StorageCluster::crd());
}

#[test]
fn the_strict_parse_refuses_a_field_the_type_does_not_know() {
    let with_typo = COMMITTED.replacen("  scope: Namespaced", "  scope: Namespaced\n  scoep: x", 1);
    assert_eq!(
        parse_strict::<CustomResourceDefinition>(&with_typo).err(),
        Some(r#"fields unknown to the type: [".spec.scoep"]"#.to_string())
    );
}

#[test]
fn the_example_storage_cluster_parses_strictly_with_the_values_it_states() {
    let example: crds::StorageCluster = parse_strict(EXAMPLE)
        .unwrap_or_else(|e| panic!("manifests/storagecluster-example.yaml: {e}"));
    assert_eq!(example.metadata.name.as_deref(), Some("example"));
    assert_eq!(example.spec.replicas, 3);
    assert_eq!(example.spec.storage.size, "1Gi");
    assert!(example.spec.auth.enabled);
    assert_eq!(example.spec.healing.mode, crds::HealingMode::Automatic);
    assert_eq!(example.spec.healing.probe_interval_seconds, 10);
}
