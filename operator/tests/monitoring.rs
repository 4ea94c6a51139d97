//! The alerts, the dashboard and the PodMonitors in `manifests/monitoring/` parse, and every
//! metric the alerts and the dashboard query is one that is exported (a renamed metric would
//! silently empty a panel or an alert): the operator's names come from its own registry, the
//! members' from the `/metrics` of a real storage-node cluster's leader.

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster::{Cluster, DEADLINE, Options, wait_until};
use operator::controller::metrics::Metrics;
use serde_json::Value;

const RULES: &str = include_str!("../../manifests/monitoring/prometheus-rules.yaml");
const DASHBOARD: &str = include_str!("../../manifests/monitoring/grafana-dashboard.json");
const POD_MONITORS: &str = include_str!("../../manifests/monitoring/podmonitors.yaml");
const EXAMPLE: &str = include_str!("../../manifests/storagecluster-example.yaml");

/// Prefixes of the metric names Mend's components export.
const PREFIXES: [&str; 4] = ["mend_", "etcd_", "grpc_", "process_"];

/// The series names of every family a text exposition declares (a histogram's with their
/// suffixes), families without samples included.
fn families(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind) in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
    {
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name.to_string());
    }
    names
}

/// What the operator (controller and healing metrics) and a storage-node member export.
fn exported() -> BTreeSet<String> {
    let metrics = Metrics::default();
    metrics
        .heal
        .observe_status("c", 3, &crds::StorageClusterStatus::default());
    metrics.heal.detected("c", Duration::from_secs(1));
    metrics
        .heal
        .heal_finished("c", true, Duration::from_secs(1));
    drop(metrics.reconcile());
    metrics.failure("kube");
    metrics.event_failed("HealStep");
    let mut names = families(&metrics.render());

    // The leader of three: it has round trips to its peers, so every family has series.
    let c = Cluster::start(3, Options::default());
    let leader = &c.members[c.wait_leader()];
    let mut member = String::new();
    assert!(
        wait_until(DEADLINE, || {
            member = leader.http_get("/metrics").unwrap_or_default().1;
            member.contains("# TYPE etcd_network_peer_round_trip_time_seconds histogram")
        }),
        "the leader never showed round trips:\n{member}"
    );
    names.extend(families(&member));
    names
}

/// Every metric name in a PromQL expression: identifiers with an exported prefix that are not
/// functions, label names (in matchers and `by`/`without` lists) or durations.
fn queried(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let (mut i, mut skip_group) = (0, false);
    while i < chars.len() {
        match chars[i] {
            // Label matchers and range durations: skip to the closing bracket.
            open @ ('{' | '[') => {
                let close = if open == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_group => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_group = false;
                i += 1;
            }
            c if ident(c) => {
                let start = i;
                while i < chars.len() && ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if word == "by" || word == "without" {
                    skip_group = true;
                } else if next != Some(&'(') && PREFIXES.iter().any(|p| word.starts_with(p)) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql_but_not_labels_or_functions() {
    assert_eq!(
        queried(
            r#"sum by (cluster, grpc_code) (rate(grpc_server_handled_total{grpc_method="Put"}[5m]))"#
        ),
        ["grpc_server_handled_total"]
    );
    assert_eq!(
        queried("max by (cluster) (mend_a) < max by (cluster) (mend_b)"),
        ["mend_a", "mend_b"]
    );
    assert_eq!(
        queried("histogram_quantile(0.99, sum by (le) (rate(etcd_x_bucket[5m])))"),
        ["etcd_x_bucket"]
    );
}

/// Every metric of every expression in `exprs` (named by `what`) is exported.
fn check(exprs: &[(String, String)], exported: &BTreeSet<String>) {
    for (what, expr) in exprs {
        let names = queried(expr);
        assert!(!names.is_empty(), "{what}: {expr} queries no Mend metric");
        for name in names {
            assert!(
                exported.contains(&name),
                "{what} queries {name}, which nothing exports"
            );
        }
    }
}

#[test]
fn every_alert_and_dashboard_panel_queries_an_exported_metric() {
    let rules: Value = serde_saphyr::from_str(RULES).expect("prometheus-rules.yaml parses");
    assert_eq!(rules["kind"], "PrometheusRule");
    let mut alerts = Vec::new();
    for group in rules["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert!(rule["annotations"]["summary"].is_string());
            alerts.push((
                format!("alert {}", rule["alert"]),
                rule["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    assert!(alerts.len() >= 5);

    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("grafana-dashboard.json parses");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push((
                format!("panel {}", panel["title"]),
                target["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    // The members' own health beside the healing panels.
    for name in [
        "etcd_server_has_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "etcd_disk_backend_commit_duration_seconds_bucket",
        "etcd_network_peer_round_trip_time_seconds_bucket",
        "grpc_server_handled_total",
    ] {
        assert!(
            queries
                .iter()
                .any(|(_, expr)| queried(expr).iter().any(|q| q == name)),
            "no panel charts {name}"
        );
    }

    let exported = exported();
    check(&alerts, &exported);
    check(&queries, &exported);
}

#[test]
fn the_pod_monitors_select_the_operator_and_the_member_pods() {
    let monitors: Vec<Value> =
        serde_saphyr::from_multiple(POD_MONITORS).expect("podmonitors.yaml parses");
    assert!(monitors.iter().all(|m| m["kind"] == "PodMonitor"));
    let cluster: crds::StorageCluster =
        operator::yaml::parse_strict(EXAMPLE).expect("the example StorageCluster parses");
    let labels = operator::platform::kube::resources::labels(&cluster);
    let members = monitors
        .iter()
        .find(|m| m["metadata"]["name"] == "mend-members")
        .expect("the members' PodMonitor");
    let selected = members["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (key, value) in selected {
        assert_eq!(
            labels.get(key).map(String::as_str),
            value.as_str(),
            "member pods carry {key}"
        );
    }
    assert_eq!(
        members["spec"]["podMetricsEndpoints"][0]["port"], "metrics",
        "the members' metrics port, as the operator names it"
    );
}
