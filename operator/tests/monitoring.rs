//! The alerts and the dashboard in `manifests/monitoring/` parse, and every metric they query
//! is one the operator exports (a renamed metric would silently empty a panel or an alert).

use std::collections::BTreeSet;
use std::time::Duration;

use operator::metrics::HealMetrics;
use serde_json::Value;

const RULES: &str = include_str!("../../manifests/monitoring/prometheus-rules.yaml");
const DASHBOARD: &str = include_str!("../../manifests/monitoring/grafana-dashboard.json");

/// Names of the series the operator exports (histograms with their suffixes).
fn exported() -> BTreeSet<String> {
    let metrics = HealMetrics::default();
    metrics.observe_status("c", 3, &crds::StorageClusterStatus::default());
    metrics.detected("c", Duration::from_secs(1));
    metrics.heal_finished("c", true, Duration::from_secs(1));
    metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect()
}

/// Every `mend_…` metric name in a PromQL expression.
fn queried(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("mend_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn every_alert_queries_an_exported_metric() {
    let rules: Value = serde_saphyr::from_str(RULES).expect("prometheus-rules.yaml parses");
    assert_eq!(rules["kind"], "PrometheusRule");
    let exported = exported();
    let mut alerts = 0;
    for group in rules["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr");
            let names = queried(expr);
            assert!(!names.is_empty(), "{expr} queries no Mend metric");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "alert {} queries unknown {name}",
                    rule["alert"]
                );
            }
            assert!(rule["annotations"]["summary"].is_string());
            alerts += 1;
        }
    }
    assert!(alerts >= 5);
}

#[test]
fn every_dashboard_panel_queries_an_exported_metric() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("grafana-dashboard.json parses");
    let exported = exported();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = queried(expr);
            assert!(!names.is_empty(), "{expr} queries no Mend metric");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "panel {} queries unknown {name}",
                    panel["title"]
                );
            }
        }
    }
}
