//! A load generator for any etcd v3 endpoints (Mend or etcd): concurrent clients issuing puts,
//! reporting throughput and latency percentiles. Used by the cluster benchmark, and meant to
//! be reused for side-by-side comparisons with etcd.

use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::pb::etcdserverpb::PutRequest;
use crate::pb::etcdserverpb::kv_client::KvClient;

/// What a load run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Concurrent clients.
    pub clients: usize,
    /// Puts acknowledged.
    pub ops: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

impl Report {
    /// Acknowledged puts per second.
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>3} clients: {:>6} puts in {:>6.2} s = {:>8.0} puts/s, p50 {:>7.2} ms, p99 {:>7.2} ms",
            self.clients,
            self.ops,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An endpoint URL is unusable.
    #[error("endpoint {0}: {1}")]
    Endpoint(String, String),
    /// A put failed.
    #[error("put failed: {0}")]
    Put(#[from] tonic::Status),
}

/// Issues `total` puts of `value_size`-byte values from `clients` concurrent clients spread
/// round-robin over `endpoints`, each client waiting for one put before the next.
pub async fn put_load(
    endpoints: &[String],
    clients: usize,
    total: usize,
    value_size: usize,
) -> Result<Report, Error> {
    let mut channels = Vec::new();
    for url in endpoints {
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::Endpoint(url.clone(), e.to_string()))?
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        channels.push(channel);
    }
    if channels.is_empty() {
        return Err(Error::Endpoint(String::new(), "no endpoints".into()));
    }
    let clients = clients.max(1);
    let value = vec![b'v'; value_size];
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let channel: Channel = channels[c % channels.len()].clone();
        let value = value.clone();
        let share = total / clients + usize::from(c < total % clients);
        tasks.spawn(async move {
            let mut kv = KvClient::new(channel);
            let mut latencies = Vec::with_capacity(share);
            for n in 0..share {
                let request = PutRequest {
                    key: format!("bench/{c:03}/{n:08}").into_bytes(),
                    value: value.clone(),
                    ..PutRequest::default()
                };
                let t = Instant::now();
                kv.put(request).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(joined) = tasks.join_next().await {
        let batch = joined.map_err(|e| Error::Endpoint(String::new(), e.to_string()))??;
        latencies.extend(batch);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(Report {
        clients,
        ops: latencies.len(),
        elapsed,
        p50: pick(0.5),
        p99: pick(0.99),
    })
}
