//! Healing metrics: per cluster, the drift gauges the seed's own monitoring watched
//! (AuthRevision spread, key-count spread between members), ready members, whether members
//! diverge, heals by result, heal duration and the time from a divergence's first sighting to
//! the decision to heal. `manifests/prometheus-rules.yaml` alerts on them and
//! `manifests/grafana-dashboard.json` charts them.
//!
//! Kept in `prometheus-client` instruments and served in Prometheus' text format: both drivers
//! build one registry ([`registry`]) with the process metrics, add these ([`HealMetrics::register`])
//! and, for `operator run`, the controller's own, and serve [`encode`] of it.

use std::time::Duration;

use crds::{Phase, StorageClusterStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of `/metrics`: Prometheus' text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A registry holding the process metrics (`process_*`), for a driver to add its own to.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(storage_node::metrics::Process));
    registry
}

/// Everything in `registry`, in Prometheus' text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail, and no collector of ours returns an error.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// Upper bounds (seconds) of the heal and detection histograms' buckets.
const BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

fn durations() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The series of one cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

/// One cluster's heals that ended with `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealResult {
    cluster: String,
    result: &'static str,
}

type Gauges = Family<ClusterLabel, Gauge>;
type Durations = Family<ClusterLabel, Histogram, fn() -> Histogram>;

/// The healing metrics of every cluster this operator runs. Clones share the instruments.
#[derive(Clone, Debug)]
pub struct HealMetrics {
    replicas: Gauges,
    ready: Gauges,
    auth_revision_drift: Gauges,
    key_count_spread: Gauges,
    diverged: Gauges,
    heals: Family<HealResult, Counter>,
    heal_duration: Durations,
    detection: Durations,
}

impl Default for HealMetrics {
    fn default() -> Self {
        HealMetrics {
            replicas: Gauges::default(),
            ready: Gauges::default(),
            auth_revision_drift: Gauges::default(),
            key_count_spread: Gauges::default(),
            diverged: Gauges::default(),
            heals: Family::default(),
            heal_duration: Durations::new_with_constructor(durations),
            detection: Durations::new_with_constructor(durations),
        }
    }
}

/// A count as a gauge's value.
fn value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl HealMetrics {
    /// Adds every healing metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, gauges) in [
            (
                "mend_cluster_replicas",
                "Members the spec asks for",
                &self.replicas,
            ),
            (
                "mend_cluster_members_ready",
                "Members answering probes",
                &self.ready,
            ),
            (
                "mend_cluster_auth_revision_drift",
                "Highest minus lowest AuthRevision among members",
                &self.auth_revision_drift,
            ),
            (
                "mend_cluster_key_count_spread",
                "Most minus fewest keys held by a reachable member",
                &self.key_count_spread,
            ),
            (
                "mend_cluster_diverged",
                "1 while members disagree on their data",
                &self.diverged,
            ),
        ] {
            registry.register(name, help, gauges.clone());
        }
        registry.register("mend_heals", "Heals run, by result", self.heals.clone());
        registry.register_with_unit(
            "mend_heal_duration",
            "Time from a heal's first step to its last",
            Unit::Seconds,
            self.heal_duration.clone(),
        );
        registry.register_with_unit(
            "mend_divergence_detection",
            "Time from the first probe showing a divergence to the decision to heal",
            Unit::Seconds,
            self.detection.clone(),
        );
    }

    /// The label of `cluster`, with every series of the cluster created (at zero when new):
    /// a cluster shows all its series from its first observation on.
    fn cluster(&self, cluster: &str) -> ClusterLabel {
        let label = ClusterLabel {
            cluster: cluster.to_string(),
        };
        for gauges in [
            &self.replicas,
            &self.ready,
            &self.auth_revision_drift,
            &self.key_count_spread,
            &self.diverged,
        ] {
            drop(gauges.get_or_create(&label));
        }
        for result in ["succeeded", "failed"] {
            drop(self.heals.get_or_create(&HealResult {
                cluster: label.cluster.clone(),
                result,
            }));
        }
        drop(self.heal_duration.get_or_create(&label));
        drop(self.detection.get_or_create(&label));
        label
    }

    /// Records what the latest status of `cluster` says.
    pub fn observe_status(&self, cluster: &str, replicas: i32, status: &StorageClusterStatus) {
        let healthy: Vec<u64> = status
            .members
            .iter()
            .filter(|m| m.healthy)
            .filter_map(|m| m.key_count)
            .collect();
        let spread = match (healthy.iter().max(), healthy.iter().min()) {
            (Some(max), Some(min)) => max - min,
            _ => 0,
        };
        let diverged = status.phase == Phase::Diverged
            || status
                .conditions
                .iter()
                .any(|cond| cond.type_ == crds::condition::DIVERGED && cond.status == "True");
        let label = self.cluster(cluster);
        self.replicas.get_or_create(&label).set(replicas.into());
        self.ready
            .get_or_create(&label)
            .set(status.ready_replicas.into());
        self.auth_revision_drift
            .get_or_create(&label)
            .set(value(status.auth_revision_drift));
        self.key_count_spread
            .get_or_create(&label)
            .set(value(spread));
        self.diverged.get_or_create(&label).set(i64::from(diverged));
    }

    /// A divergence of `cluster` was confirmed `after` its first sighting.
    pub fn detected(&self, cluster: &str, after: Duration) {
        let label = self.cluster(cluster);
        self.detection
            .get_or_create(&label)
            .observe(after.as_secs_f64());
    }

    /// A heal of `cluster` ended after `took`.
    pub fn heal_finished(&self, cluster: &str, succeeded: bool, took: Duration) {
        let label = self.cluster(cluster);
        self.heals
            .get_or_create(&HealResult {
                cluster: label.cluster.clone(),
                result: if succeeded { "succeeded" } else { "failed" },
            })
            .inc();
        self.heal_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::MemberStatus;

    fn member(keys: u64, healthy: bool) -> MemberStatus {
        MemberStatus {
            name: "m".into(),
            healthy,
            key_count: Some(keys),
            ..MemberStatus::default()
        }
    }

    #[test]
    fn the_seed_shows_as_drift_and_key_spread_then_a_heal_is_counted() {
        let metrics = HealMetrics::default();
        let status = StorageClusterStatus {
            phase: Phase::Diverged,
            ready_replicas: 3,
            auth_revision_drift: 2,
            members: vec![
                member(5, true),
                member(10, true),
                member(15, true),
                member(99, false),
            ],
            ..StorageClusterStatus::default()
        };
        metrics.observe_status("seed", 3, &status);
        metrics.detected("seed", Duration::from_millis(2500));
        metrics.heal_finished("seed", true, Duration::from_millis(700));
        let mut registry = registry();
        metrics.register(&mut registry);
        let text = encode(&registry);
        for line in [
            "mend_cluster_auth_revision_drift{cluster=\"seed\"} 2",
            "mend_cluster_key_count_spread{cluster=\"seed\"} 10",
            "mend_cluster_diverged{cluster=\"seed\"} 1",
            "mend_cluster_members_ready{cluster=\"seed\"} 3",
            "mend_heals_total{cluster=\"seed\",result=\"succeeded\"} 1",
            "mend_heals_total{cluster=\"seed\",result=\"failed\"} 0",
            "mend_heal_duration_seconds_bucket{cluster=\"seed\",le=\"0.5\"} 0",
            "mend_heal_duration_seconds_bucket{cluster=\"seed\",le=\"1\"} 1",
            "mend_heal_duration_seconds_count{cluster=\"seed\"} 1",
            "mend_divergence_detection_seconds_bucket{cluster=\"seed\",le=\"2\"} 0",
            "mend_divergence_detection_seconds_bucket{cluster=\"seed\",le=\"5\"} 1",
            "mend_divergence_detection_seconds_bucket{cluster=\"seed\",le=\"+Inf\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        for family in [
            "# TYPE mend_heals_total counter",
            "# TYPE mend_heal_duration_seconds histogram",
            "# TYPE mend_cluster_diverged gauge",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(
                text.lines().any(|l| l == family),
                "missing {family} in\n{text}"
            );
        }
    }
}
