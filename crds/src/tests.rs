//! The resource's defaults, names, subresources and schema as the API server will see them.

use kube::CustomResourceExt;
use serde_json::Value;

use super::*;

fn crd_json() -> Value {
    serde_json::to_value(StorageCluster::crd()).expect("CRD serializes")
}

fn schema() -> Value {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn an_empty_spec_gets_the_documented_defaults() {
    let spec: StorageClusterSpec = serde_json::from_value(serde_json::json!({})).expect("parses");
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.storage.size, "1Gi");
    assert!(spec.auth.enabled);
    assert_eq!(spec.healing.mode, HealingMode::Automatic);
    assert_eq!(spec.healing.probe_interval_seconds, 10);
    assert_eq!(spec.healing.consecutive_probes, 3);
    assert_eq!(spec.healing.backup_retention, 3);
}

#[test]
fn the_crd_has_names_subresources_and_printer_columns_for_kubectl() {
    let crd = crd_json();
    assert_eq!(crd["metadata"]["name"], "storageclusters.mend.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "stc");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let scale = &version["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        ["Replicas", "Ready", "Leader", "Phase", "Drift", "Age"]
    );
}

#[test]
fn the_schema_validates_replicas_and_freezes_the_storage_class() {
    let spec = &schema()["properties"]["spec"]["properties"];
    let replicas = &spec["replicas"];
    assert_eq!(replicas["minimum"].as_f64(), Some(1.0));
    assert_eq!(replicas["maximum"].as_f64(), Some(7.0));
    assert_eq!(replicas["default"].as_f64(), Some(3.0));
    assert_eq!(
        replicas["x-kubernetes-validations"][0]["rule"],
        "self % 2 == 1"
    );
    assert!(
        replicas["x-kubernetes-validations"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("odd"))
    );
    let class = &spec["storage"]["properties"]["storageClassName"];
    assert_eq!(
        class["x-kubernetes-validations"][0]["rule"],
        "self == oldSelf"
    );
    let interval = &spec["healing"]["properties"]["probeIntervalSeconds"];
    assert_eq!(
        (interval["minimum"].as_f64(), interval["maximum"].as_f64()),
        (Some(2.0), Some(3600.0))
    );
}

/// Kubernetes' structural-schema rules that a generated schema can break: every node states
/// its type (or preserves unknown fields / is int-or-string), no `$ref`, and `anyOf`/`oneOf`/
/// `allOf` branches carry no `type`, `default`, `description` or nested `$ref`.
fn structural_violations(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        return;
    };
    if map.contains_key("$ref") {
        out.push(format!("{path}: $ref"));
    }
    let typed = map.contains_key("type")
        || map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !typed && !path.ends_with("/anyOf") && !path.contains("/anyOf[") && !path.contains("/oneOf[")
    {
        out.push(format!("{path}: no type"));
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = map.get(key).and_then(Value::as_array) {
            for (i, branch) in branches.iter().enumerate() {
                for forbidden in ["type", "default", "description"] {
                    if branch.get(forbidden).is_some() {
                        out.push(format!("{path}/{key}[{i}]: {forbidden} inside {key}"));
                    }
                }
            }
        }
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural_violations(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = map.get("items") {
        structural_violations(items, &format!("{path}[]"), out);
    }
    if let Some(extra) = map.get("additionalProperties").filter(|v| v.is_object()) {
        structural_violations(extra, &format!("{path}{{}}"), out);
    }
}

#[test]
fn the_schema_is_structural() {
    let mut violations = Vec::new();
    structural_violations(&schema(), "", &mut violations);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_structural_check_catches_what_kubernetes_refuses() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "linked": {"$ref": "#/definitions/x", "type": "object"},
            "choice": {"type": "string", "anyOf": [{"type": "string"}]}
        }
    });
    let mut violations = Vec::new();
    structural_violations(&bad, "", &mut violations);
    assert_eq!(violations.len(), 3, "{violations:#?}");
}
