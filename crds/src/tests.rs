//! The resource's defaults, names, subresources and schema as the API server will see them, and
//! its CEL rules evaluated client-side (kube's `cel` feature) as the API server would.

use kube::CustomResourceExt;
use kube::core::cel::{validate_cel, validate_cel_update};
use serde_json::{Map, Value, json};

use super::*;

fn crd_json() -> Value {
    serde_json::to_value(StorageCluster::crd()).expect("CRD serializes")
}

fn schema() -> Value {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// A `StorageCluster` named `c` whose spec is `spec` with the schema's defaults filled in.
fn cluster(spec: Value) -> StorageCluster {
    let spec: StorageClusterSpec = serde_json::from_value(spec).expect("spec parses");
    StorageCluster::new("c", spec)
}

/// The messages of the CEL rules `new` breaks, as an update of `old` (a create when `None`).
fn cel_messages(new: &StorageCluster, old: Option<&StorageCluster>) -> Vec<String> {
    let result = match old {
        Some(old) => validate_cel_update(new, old),
        None => validate_cel(new),
    };
    match result {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .as_slice()
            .iter()
            .map(|e| e.message.clone())
            .collect(),
    }
}

#[test]
fn an_empty_spec_gets_the_documented_defaults() {
    let spec: StorageClusterSpec = serde_json::from_value(json!({})).expect("parses");
    assert_eq!(spec.replicas, 3);
    assert_eq!(
        spec.image,
        format!(
            "ghcr.io/mend-dev/storage-node:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(spec.storage.size, "1Gi");
    assert_eq!(spec.storage.storage_class_name, None);
    assert_eq!(spec.storage.retention_policy, RetentionPolicy::Retain);
    assert_eq!(spec.resources, None);
    assert!(spec.auth.enabled);
    assert_eq!(spec.auth.root_secret_ref, None);
    assert_eq!(spec.healing.mode, HealingMode::Automatic);
    assert_eq!(spec.healing.probe_interval_seconds, 10);
    assert_eq!(spec.healing.consecutive_probes, 3);
    assert_eq!(spec.healing.backup_retention, 3);
    assert_eq!(spec.healing.backoff.min_seconds, 30);
    assert_eq!(spec.healing.backoff.max_seconds, 1800);
    assert_eq!(spec.healing.quorum_recovery, crate::QuorumRecovery::Manual);
    assert_eq!(spec.backup, None);
    assert_eq!(spec.bootstrap, None);
    assert_eq!(spec.placement, Placement::default());
    assert_eq!(spec.network, Network::default());
}

#[test]
fn the_schema_states_the_same_defaults_the_api_server_applies() {
    let spec = &schema()["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["default"], 3);
    assert_eq!(spec["image"]["default"], DEFAULT_IMAGE);
    assert_eq!(
        spec["storage"]["default"],
        json!({"size": "1Gi", "retentionPolicy": "Retain"})
    );
    assert_eq!(
        spec["storage"]["properties"]["retentionPolicy"]["enum"],
        json!(["Retain", "Delete"])
    );
    assert_eq!(spec["auth"]["default"], json!({"enabled": true}));
    assert_eq!(
        spec["healing"]["default"],
        json!({"mode": "Automatic", "probeIntervalSeconds": 10, "consecutiveProbes": 3,
               "backupRetention": 3, "backoff": {"minSeconds": 30, "maxSeconds": 1800},
               "quorumRecovery": "Manual"})
    );
}

#[test]
fn the_crd_has_names_subresources_and_printer_columns_for_kubectl() {
    let crd = crd_json();
    assert_eq!(crd["metadata"]["name"], "storageclusters.mend.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["stc"]));
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
        [
            "Replicas", "Members", "Ready", "Leader", "Phase", "Drift", "Backup", "Age"
        ]
    );
}

#[test]
fn conditions_and_members_merge_by_key_under_server_side_apply() {
    let status = &schema()["properties"]["status"]["properties"];
    for (list, key) in [("conditions", "type"), ("members", "name")] {
        assert_eq!(status[list]["x-kubernetes-list-type"], "map", "{list}");
        assert_eq!(status[list]["x-kubernetes-list-map-keys"], json!([key]));
        // A list-map key must always be present.
        let required = status[list]["items"]["required"].as_array().expect(list);
        assert!(required.contains(&json!(key)), "{list}: {key} not required");
    }
}

#[test]
fn the_schema_bounds_replicas_and_probe_settings() {
    let spec = &schema()["properties"]["spec"]["properties"];
    let bounds = |node: &Value| (node["minimum"].as_f64(), node["maximum"].as_f64());
    assert_eq!(bounds(&spec["replicas"]), (Some(1.0), Some(7.0)));
    let healing = &spec["healing"]["properties"];
    assert_eq!(
        bounds(&healing["probeIntervalSeconds"]),
        (Some(2.0), Some(3600.0))
    );
    assert_eq!(healing["consecutiveProbes"]["minimum"].as_f64(), Some(1.0));
    assert_eq!(
        healing["mode"]["enum"],
        json!(["Automatic", "ObserveOnly", "Disabled"])
    );
}

#[test]
fn an_even_replica_count_is_refused_with_a_message_that_says_to_make_it_odd() {
    for replicas in [1, 3, 5, 7] {
        let ok = cluster(json!({"replicas": replicas}));
        assert_eq!(cel_messages(&ok, None), Vec::<String>::new(), "{replicas}");
    }
    for replicas in [2, 4, 6] {
        let even = cluster(json!({"replicas": replicas}));
        assert_eq!(
            cel_messages(&even, None),
            ["replicas must be odd (1, 3, 5 or 7) so a majority survives a member loss"],
            "{replicas}"
        );
    }
}

#[test]
fn the_storage_class_cannot_be_set_changed_or_removed_after_creation() {
    let none = cluster(json!({}));
    let fast = cluster(json!({"storage": {"storageClassName": "fast"}}));
    let slow = cluster(json!({"storage": {"storageClassName": "slow"}}));
    let bigger_fast = cluster(json!({"storage": {"storageClassName": "fast", "size": "2Gi"}}));
    for (old, new) in [(&none, &none), (&fast, &fast), (&fast, &bigger_fast)] {
        assert_eq!(cel_messages(new, Some(old)), Vec::<String>::new());
    }
    for (old, new) in [(&none, &fast), (&fast, &none), (&fast, &slow)] {
        let messages = cel_messages(new, Some(old));
        assert_eq!(
            messages,
            [STORAGE_CLASS_FROZEN_MESSAGE],
            "{old:?} → {new:?}"
        );
    }
    assert_eq!(cel_messages(&fast, None), Vec::<String>::new());
}

#[test]
fn tls_cannot_change_after_creation() {
    let plain = cluster(json!({}));
    let own_ca = cluster(json!({"tls": {}}));
    let issuer = cluster(json!({"tls": {"certManager": {"issuerRef": {"name": "ca"}}}}));
    let other = cluster(json!({"tls": {"certManager": {"issuerRef": {"name": "other-ca"}}}}));
    for (old, new) in [(&plain, &plain), (&own_ca, &own_ca), (&issuer, &issuer)] {
        assert_eq!(cel_messages(new, Some(old)), Vec::<String>::new());
    }
    for (old, new) in [
        (&plain, &own_ca),
        (&issuer, &plain),
        (&own_ca, &issuer),
        (&issuer, &other),
    ] {
        assert_eq!(
            cel_messages(new, Some(old)),
            [TLS_FROZEN_MESSAGE],
            "{old:?} → {new:?}"
        );
    }
    let reference = &issuer
        .spec
        .tls
        .as_ref()
        .unwrap()
        .cert_manager
        .as_ref()
        .unwrap()
        .issuer_ref;
    assert_eq!(
        (reference.kind.as_str(), reference.group.as_str()),
        ("Issuer", "cert-manager.io")
    );
}

#[test]
fn the_storage_size_must_be_a_positive_quantity() {
    for size in ["1Gi", "512Mi", "10G", "1.5Gi", "100", ".5Ti", "0.5Gi"] {
        let ok = cluster(json!({"storage": {"size": size}}));
        assert_eq!(cel_messages(&ok, None), Vec::<String>::new(), "{size}");
    }
    for size in [
        "", "0", "0Gi", "0.0Mi", "1 Gi", "1GB", "lots", "-1Gi", "Gi", "1gi",
    ] {
        let bad = cluster(json!({"storage": {"size": size}}));
        let messages = cel_messages(&bad, None);
        assert_eq!(messages.len(), 1, "{size:?}: {messages:?}");
        assert!(messages[0].starts_with("storage.size must be"), "{size:?}");
    }
}

#[test]
fn a_name_the_children_could_not_carry_is_refused_with_what_to_choose() {
    let named = |name: &str| {
        let mut c = cluster(json!({}));
        c.metadata.name = Some(name.to_string());
        c
    };
    let longest = format!("a{}", "b".repeat(MAX_NAME_LENGTH - 1));
    for name in ["demo", "a", "etcd-main", "x1", longest.as_str()] {
        assert_eq!(
            cel_messages(&named(name), None),
            Vec::<String>::new(),
            "{name}"
        );
    }
    // The client Service `<name>-client` must still be a DNS-1035 label of at most 63.
    assert_eq!(format!("{longest}-client").len(), 63);
    let too_long = format!("{longest}b");
    for name in [
        "9lives",
        "demo.prod",
        "Demo",
        "demo-",
        "-demo",
        "de_mo",
        too_long.as_str(),
    ] {
        assert_eq!(cel_messages(&named(name), None), [NAME_MESSAGE], "{name}");
    }
}

#[test]
fn each_declared_client_selects_pods_namespaces_or_addresses_and_an_ip_block_stands_alone() {
    let with = |clients: Value| cluster(json!({"network": {"clients": clients}}));
    for clients in [
        json!([]),
        json!([{"podSelector": {"matchLabels": {"app": "api"}}}]),
        json!([{"namespaceSelector": {}}]),
        json!([{"namespaceSelector": {"matchLabels": {"team": "a"}},
                "podSelector": {"matchLabels": {"app": "api"}}}]),
        json!([{"ipBlock": {"cidr": "10.0.0.0/24"}}, {"namespaceSelector": {}}]),
    ] {
        assert_eq!(
            cel_messages(&with(clients.clone()), None),
            Vec::<String>::new(),
            "{clients}"
        );
    }
    assert_eq!(
        cel_messages(&with(json!([{"podSelector": {}}, {}])), None),
        [CLIENT_NAMES_SOMEONE_MESSAGE]
    );
    assert_eq!(
        cel_messages(
            &with(json!([{"ipBlock": {"cidr": "10.0.0.0/24"}, "namespaceSelector": {}}])),
            None
        ),
        [CLIENT_IP_BLOCK_ALONE_MESSAGE]
    );
    let clients = &schema()["properties"]["spec"]["properties"]["network"]["properties"]["clients"];
    assert_eq!(clients["maxItems"], 32);
}

/// Keys a structural schema may not use anywhere (apiextensions.k8s.io/v1 refuses them).
const FORBIDDEN_KEYS: [&str; 8] = [
    "$ref",
    "$schema",
    "$defs",
    "definitions",
    "id",
    "additionalItems",
    "patternProperties",
    "dependencies",
];

/// The logical junctors; what they may say is restricted.
const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];

/// Keys that may not appear anywhere inside a junctor (except `type` in the int-or-string form).
const NOT_IN_JUNCTORS: [&str; 5] = [
    "description",
    "type",
    "default",
    "additionalProperties",
    "nullable",
];

/// Every violation of Kubernetes' structural-schema rules in `schema`, one line each with its
/// path: a type on every node (unless it preserves unknown fields or is int-or-string),
/// `type: object` wherever properties are declared and `type: array` wherever items are, no
/// `$ref` or other refused keys, junctors that only restrict fields also declared outside them
/// and carry no type/default/description/nullable/additionalProperties, and `metadata`
/// restricted to `name` and `generateName` only.
fn structural_violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check_node(schema, "", &mut out);
    if let Some(metadata) = schema
        .pointer("/properties/metadata")
        .and_then(Value::as_object)
    {
        for key in metadata
            .keys()
            .filter(|k| !["type", "properties"].contains(&k.as_str()))
        {
            out.push(format!(".metadata: {key} is not allowed on metadata"));
        }
        let fields = metadata.get("properties").and_then(Value::as_object);
        for name in fields.into_iter().flat_map(Map::keys) {
            if name != "name" && name != "generateName" {
                out.push(format!(
                    ".metadata.{name}: only name and generateName may be restricted"
                ));
            }
        }
    }
    out
}

fn check_node(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        out.push(format!("{path}: a schema must be an object"));
        return;
    };
    for key in FORBIDDEN_KEYS.iter().filter(|k| map.contains_key(**k)) {
        out.push(format!("{path}: {key} is not allowed"));
    }
    if map.get("uniqueItems") == Some(&Value::Bool(true)) {
        out.push(format!("{path}: uniqueItems: true is not allowed"));
    }
    let flag = |key: &str| map.get(key) == Some(&Value::Bool(true));
    let int_or_string = flag("x-kubernetes-int-or-string");
    let ty = map
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    if ty.is_none() && !int_or_string && !flag("x-kubernetes-preserve-unknown-fields") {
        out.push(format!("{path}: no type"));
    }
    let has_properties = map.contains_key("properties");
    let has_additional = map
        .get("additionalProperties")
        .is_some_and(Value::is_object);
    if (has_properties || has_additional) && ty != Some("object") {
        out.push(format!("{path}: properties without type: object"));
    }
    if has_properties && map.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    if map.contains_key("items") && ty != Some("array") {
        out.push(format!("{path}: items without type: array"));
    }
    for junctor in JUNCTORS {
        for (i, branch) in branches(map.get(junctor)).enumerate() {
            check_inside_junctor(
                branch,
                Some(map),
                int_or_string,
                &format!("{path}/{junctor}[{i}]"),
                out,
            );
        }
    }
    for (name, child) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        check_node(child, &format!("{path}.{name}"), out);
    }
    if let Some(extra) = map.get("additionalProperties").filter(|v| v.is_object()) {
        check_node(extra, &format!("{path}{{*}}"), out);
    }
    match map.get("items") {
        Some(Value::Array(_)) => out.push(format!("{path}: items must be a single schema")),
        Some(items) => check_node(items, &format!("{path}[*]"), out),
        None => {}
    }
}

/// A junctor's branches: `not` holds one schema, the others a list.
fn branches(junctor: Option<&Value>) -> impl Iterator<Item = &Value> {
    let (list, single) = match junctor {
        Some(Value::Array(list)) => (list.as_slice(), None),
        Some(single) => (&[][..], Some(single)),
        None => (&[][..], None),
    };
    list.iter().chain(single)
}

/// Checks `node`, found inside a junctor, against `outer`: the schema at the same place outside
/// every junctor (`None` when that place is not declared there).
fn check_inside_junctor(
    node: &Value,
    outer: Option<&Map<String, Value>>,
    int_or_string: bool,
    path: &str,
    out: &mut Vec<String>,
) {
    let Some(map) = node.as_object() else {
        return;
    };
    for key in NOT_IN_JUNCTORS.iter().filter(|k| map.contains_key(**k)) {
        if !(int_or_string && *key == "type") {
            out.push(format!("{path}: {key} inside a junctor"));
        }
    }
    for key in FORBIDDEN_KEYS.iter().filter(|k| map.contains_key(**k)) {
        out.push(format!("{path}: {key} is not allowed"));
    }
    for (name, child) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let declared = outer
            .and_then(|o| o.get("properties"))
            .and_then(|p| p.get(name))
            .and_then(Value::as_object);
        if declared.is_none() {
            out.push(format!("{path}.{name}: only declared inside a junctor"));
        }
        check_inside_junctor(child, declared, false, &format!("{path}.{name}"), out);
    }
    if let Some(items) = map.get("items") {
        let declared = outer
            .and_then(|o| o.get("items"))
            .and_then(Value::as_object);
        if declared.is_none() {
            out.push(format!("{path}[*]: items only declared inside a junctor"));
        }
        check_inside_junctor(items, declared, false, &format!("{path}[*]"), out);
    }
    for junctor in JUNCTORS {
        for (i, branch) in branches(map.get(junctor)).enumerate() {
            check_inside_junctor(
                branch,
                outer,
                int_or_string,
                &format!("{path}/{junctor}[{i}]"),
                out,
            );
        }
    }
}

#[test]
fn the_schema_is_structural() {
    let violations = structural_violations(&schema());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_structural_check_catches_what_kubernetes_refuses() {
    let bad = json!({
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "untyped": {"description": "no type"},
            "linked": {"$ref": "#/definitions/x", "type": "object"},
            "untypedObject": {"properties": {"a": {"type": "string"}}},
            "choice": {"type": "string", "anyOf": [{"type": "string"}]},
            "hidden": {"type": "object", "properties": {"a": {"type": "string"}},
                       "oneOf": [{"properties": {"b": {"default": 1}}}]},
            "list": {"type": "array", "items": [{"type": "string"}]},
            "quantity": {"x-kubernetes-int-or-string": true,
                         "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "anything": {"x-kubernetes-preserve-unknown-fields": true}
        }
    });
    let mut violations = structural_violations(&bad);
    violations.sort();
    assert_eq!(
        violations,
        [
            ".choice/anyOf[0]: type inside a junctor",
            ".hidden/oneOf[0].b: default inside a junctor",
            ".hidden/oneOf[0].b: only declared inside a junctor",
            ".linked: $ref is not allowed",
            ".list: items must be a single schema",
            ".metadata.labels: only name and generateName may be restricted",
            ".untyped: no type",
            ".untypedObject: no type",
            ".untypedObject: properties without type: object",
        ]
    );
}
