//! Healing metrics in Prometheus' text format: per cluster, the drift gauges the seed's own
//! monitoring watched (AuthRevision spread, key-count spread between members), ready members,
//! whether members diverge, heals by result, heal duration and the time from a divergence's
//! first sighting to the decision to heal. `manifests/prometheus-rules.yaml` alerts on them and
//! `manifests/grafana-dashboard.json` charts them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crds::{Phase, StorageClusterStatus};

/// Upper bounds (seconds) of the heal and detection histograms' buckets.
const BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// A cumulative Prometheus histogram of durations in seconds.
#[derive(Clone, Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (cumulative, as Prometheus wants).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    /// An empty histogram with buckets up to each of `bounds`.
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    /// Records one observation of `seconds`.
    pub(crate) fn observe(&mut self, seconds: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Appends the series of histogram `name` with `labels` (`k="v",…`, or empty) to `out`.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let bucket = |le: &str| match labels {
            "" => format!("{{le=\"{le}\"}}"),
            labels => format!("{{{labels},le=\"{le}\"}}"),
        };
        let plain = match labels {
            "" => String::new(),
            labels => format!("{{{labels}}}"),
        };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{} {count}", bucket(&bound.to_string()));
        }
        let _ = writeln!(out, "{name}_bucket{} {}", bucket("+Inf"), self.count);
        let _ = writeln!(out, "{name}_sum{plain} {}", self.sum);
        let _ = writeln!(out, "{name}_count{plain} {}", self.count);
    }
}

/// What is known of one cluster.
#[derive(Clone, Debug)]
struct Cluster {
    replicas: i64,
    ready: i64,
    auth_revision_drift: u64,
    key_count_spread: u64,
    diverged: bool,
    heals_succeeded: u64,
    heals_failed: u64,
    heal_duration: Histogram,
    detection: Histogram,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            replicas: 0,
            ready: 0,
            auth_revision_drift: 0,
            key_count_spread: 0,
            diverged: false,
            heals_succeeded: 0,
            heals_failed: 0,
            heal_duration: Histogram::new(&BUCKETS),
            detection: Histogram::new(&BUCKETS),
        }
    }
}

/// The healing metrics of every cluster this operator runs.
#[derive(Debug, Default)]
pub struct HealMetrics {
    clusters: Mutex<BTreeMap<String, Cluster>>,
}

impl HealMetrics {
    fn with(&self, cluster: &str, update: impl FnOnce(&mut Cluster)) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        update(clusters.entry(cluster.to_string()).or_default());
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
        self.with(cluster, |c| {
            c.replicas = replicas.into();
            c.ready = status.ready_replicas.into();
            c.auth_revision_drift = status.auth_revision_drift;
            c.key_count_spread = spread;
            c.diverged = status.phase == Phase::Diverged
                || status
                    .conditions
                    .iter()
                    .any(|cond| cond.type_ == crds::condition::DIVERGED && cond.status == "True");
        });
    }

    /// A divergence of `cluster` was confirmed `after` its first sighting.
    pub fn detected(&self, cluster: &str, after: Duration) {
        self.with(cluster, |c| c.detection.observe(after.as_secs_f64()));
    }

    /// A heal of `cluster` ended after `took`.
    pub fn heal_finished(&self, cluster: &str, succeeded: bool, took: Duration) {
        self.with(cluster, |c| {
            if succeeded {
                c.heals_succeeded += 1;
            } else {
                c.heals_failed += 1;
            }
            c.heal_duration.observe(took.as_secs_f64());
        });
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: &dyn Fn(&Cluster) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (cluster, c) in clusters.iter() {
                let _ = writeln!(out, "{name}{{cluster=\"{cluster}\"}} {}", value(c));
            }
        };
        gauge(
            "mend_cluster_replicas",
            "Members the spec asks for.",
            &|c| c.replicas.to_string(),
        );
        gauge(
            "mend_cluster_members_ready",
            "Members answering probes.",
            &|c| c.ready.to_string(),
        );
        gauge(
            "mend_cluster_auth_revision_drift",
            "Highest minus lowest AuthRevision among members.",
            &|c| c.auth_revision_drift.to_string(),
        );
        gauge(
            "mend_cluster_key_count_spread",
            "Most minus fewest keys held by a reachable member.",
            &|c| c.key_count_spread.to_string(),
        );
        gauge(
            "mend_cluster_diverged",
            "1 while members disagree on their data.",
            &|c| u8::from(c.diverged).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP mend_heals_total Heals run, by result.\n# TYPE mend_heals_total counter"
        );
        for (cluster, c) in clusters.iter() {
            let _ = writeln!(
                out,
                "mend_heals_total{{cluster=\"{cluster}\",result=\"succeeded\"}} {}",
                c.heals_succeeded
            );
            let _ = writeln!(
                out,
                "mend_heals_total{{cluster=\"{cluster}\",result=\"failed\"}} {}",
                c.heals_failed
            );
        }
        for (name, help, pick) in [
            (
                "mend_heal_duration_seconds",
                "Time from a heal's first step to its last.",
                (|c: &Cluster| &c.heal_duration) as fn(&Cluster) -> &Histogram,
            ),
            (
                "mend_divergence_detection_seconds",
                "Time from the first probe showing a divergence to the decision to heal.",
                |c: &Cluster| &c.detection,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (cluster, c) in clusters.iter() {
                pick(c).render(&mut out, name, &format!("cluster=\"{cluster}\""));
            }
        }
        out
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
        let text = metrics.render();
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
    }
}
