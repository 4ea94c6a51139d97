//! The controller's Prometheus metrics, kept in atomics and rendered in the text exposition
//! format by hand: reconciles, failures by error label, reconcile duration, leadership, Events
//! the API server did not take.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Upper bounds (seconds) of the reconcile duration histogram's buckets; a probe of
/// unreachable members can take several seconds, so the buckets reach past that.
const BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counters and the duration histogram, shared by the reconciler and the `/metrics` handler.
#[derive(Debug)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    event_failures: Mutex<BTreeMap<String, u64>>,
    histogram: Mutex<crate::metrics::Histogram>,
    leader: AtomicBool,
    /// The healing metrics of every cluster (drift gauges, heals, durations).
    pub heal: crate::metrics::HealMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: AtomicU64::default(),
            failures: Mutex::default(),
            event_failures: Mutex::default(),
            histogram: Mutex::new(crate::metrics::Histogram::new(&BUCKETS)),
            leader: AtomicBool::default(),
            heal: crate::metrics::HealMetrics::default(),
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
            .histogram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile and measures it until the timer is dropped.
    pub fn reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile under the error's label.
    pub fn failure(&self, label: &'static str) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label)
            .or_default() += 1;
    }

    /// Counts an Event (of `reason`) the API server did not take.
    pub fn event_failed(&self, reason: &str) {
        *self
            .event_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// Records whether this replica holds the leader lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Whether this replica holds the leader lease.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Everything in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = self.heal.render();
        let _ = writeln!(
            out,
            "# HELP mend_operator_reconciles_total Reconciles of StorageClusters.\n\
             # TYPE mend_operator_reconciles_total counter\n\
             mend_operator_reconciles_total {}",
            self.reconciles.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP mend_operator_reconcile_failures_total Failed reconciles by error.\n\
             # TYPE mend_operator_reconcile_failures_total counter\n",
        );
        for (label, count) in self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "mend_operator_reconcile_failures_total{{error=\"{label}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP mend_operator_event_failures_total Events the API server did not take, by \
             reason.\n\
             # TYPE mend_operator_event_failures_total counter\n",
        );
        for (reason, count) in self
            .event_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "mend_operator_event_failures_total{{reason=\"{reason}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP mend_operator_reconcile_duration_seconds Time one reconcile takes.\n\
             # TYPE mend_operator_reconcile_duration_seconds histogram\n",
        );
        self.histogram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .render(&mut out, "mend_operator_reconcile_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP mend_operator_leader Whether this replica holds the leader lease.\n\
             # TYPE mend_operator_leader gauge\n\
             mend_operator_leader {}",
            u8::from(self.is_leader())
        );
        out
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
