//! The controller's Prometheus metrics: reconciles, failures by error label, reconcile
//! duration, leadership, Events the API server did not take; in one registry with the healing
//! metrics ([`crate::metrics`]) and the process metrics, which `operator run` serves.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds (seconds) of the reconcile duration histogram's buckets; a probe of
/// unreachable members can take several seconds, so the buckets reach past that.
const BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Failed reconciles of one error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: &'static str,
}

/// Events of one reason the API server did not take.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Counters and the duration histogram, shared by the reconciler and the `/metrics` handler.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabel, Counter>,
    event_failures: Family<ReasonLabel, Counter>,
    duration: Histogram,
    leader: Gauge,
    /// The healing metrics of every cluster (drift gauges, heals, durations).
    pub heal: crate::metrics::HealMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let (reconciles, failures, event_failures) =
            (Counter::default(), Family::default(), Family::default());
        let (duration, leader) = (Histogram::new(BUCKETS), Gauge::default());
        let heal = crate::metrics::HealMetrics::default();
        let mut registry = crate::metrics::registry();
        heal.register(&mut registry);
        registry.register(
            "mend_operator_reconciles",
            "Reconciles of StorageClusters",
            reconciles.clone(),
        );
        registry.register(
            "mend_operator_reconcile_failures",
            "Failed reconciles by error",
            failures.clone(),
        );
        registry.register(
            "mend_operator_event_failures",
            "Events the API server did not take, by reason",
            event_failures.clone(),
        );
        registry.register_with_unit(
            "mend_operator_reconcile_duration",
            "Time one reconcile takes",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "mend_operator_leader",
            "Whether this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            event_failures,
            duration,
            leader,
            heal,
        }
    }
}

/// Measures one reconcile: counted when created, its duration recorded when dropped.
pub struct ReconcileTimer<'m> {
    metrics: &'m Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile and measures it until the timer is dropped.
    pub fn reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile under the error's label.
    pub fn failure(&self, label: &'static str) {
        self.failures
            .get_or_create(&ErrorLabel { error: label })
            .inc();
    }

    /// Counts an Event (of `reason`) the API server did not take.
    pub fn event_failed(&self, reason: &str) {
        self.event_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records whether this replica holds the leader lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Whether this replica holds the leader lease.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Everything (controller, healing and process metrics) in Prometheus' text format.
    pub fn render(&self) -> String {
        crate::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_reconciles_failures_by_label_and_durations() {
        let metrics = Metrics::default();
        drop(metrics.reconcile());
        drop(metrics.reconcile());
        metrics.failure("kube");
        metrics.event_failed("HealStep");
        metrics.set_leader(true);
        let text = metrics.render();
        assert!(
            text.contains("mend_operator_reconciles_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("mend_operator_reconcile_failures_total{error=\"kube\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mend_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("mend_operator_reconcile_duration_seconds_count 2\n"),
            "{text}"
        );
        assert!(text.contains("mend_operator_leader 1\n"), "{text}");
        assert!(
            text.contains("mend_operator_event_failures_total{reason=\"HealStep\"} 1\n"),
            "{text}"
        );
    }
}
