//! What idle watchers cost writes, side by side with etcd 3.4 in one run on one machine: a
//! 3-member Mend cluster and a 3-member etcd cluster (`/usr/bin/etcd`), alternating, the same
//! client for both. Each round, per system: write a history of `MEND_BENCH_REVISIONS` revisions
//! (default 20000; 64 clients), measure sequential put latency, open `MEND_BENCH_WATCHERS`
//! watchers (default 200, on 4 streams) on prefixes nobody writes, write as much history again,
//! and measure sequential put latency with them open. `MEND_BENCH_PUTS` sets the measured puts
//! (default 500), `MEND_BENCH_ROUNDS` the rounds (default 2).
//!
//! `cargo build --release -p storage-node && cargo bench -p storage-node --bench watch`.

#[path = "../tests/cluster/mod.rs"]
mod cluster;

use storage_node::pb::etcdserverpb::watch_client::WatchClient;
use storage_node::pb::etcdserverpb::watch_request::RequestUnion;
use storage_node::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use storage_node::tools::benchmark as load;
use tokio::sync::mpsc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Open watch streams, held (and never read: nothing is written under their prefixes).
struct Idle {
    _streams: Vec<(mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>)>,
}

/// `count` watchers from now on prefixes `idle/<i>/`, spread over 4 streams on `endpoint`.
async fn idle_watchers(endpoint: &str, count: usize) -> Idle {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut streams = Vec::new();
    let per_stream = count.div_ceil(4);
    for s in 0..4 {
        let (tx, rx) = mpsc::channel(per_stream.max(1));
        let mine: Vec<usize> = (s * per_stream..((s + 1) * per_stream).min(count)).collect();
        // etcd sends the response headers with the first response: queue the creates first.
        for i in &mine {
            let key = format!("idle/{i}/").into_bytes();
            let mut range_end = key.clone();
            if let Some(last) = range_end.last_mut() {
                *last += 1;
            }
            let create = WatchCreateRequest {
                key,
                range_end,
                ..WatchCreateRequest::default()
            };
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await
            .expect("queue");
        }
        let request = tonic::Request::new(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        );
        let mut responses = WatchClient::new(channel.clone())
            .watch(request)
            .await
            .expect("watch")
            .into_inner();
        for _ in &mine {
            let created = responses.message().await.expect("watch").expect("created");
            assert!(created.created, "{created:?}");
        }
        streams.push((tx, responses));
    }
    Idle { _streams: streams }
}

fn main() {
    let revisions = env("MEND_BENCH_REVISIONS", 20_000);
    let watchers = env("MEND_BENCH_WATCHERS", 200);
    let puts = env("MEND_BENCH_PUTS", 500);
    let rounds = env("MEND_BENCH_ROUNDS", 2);
    let mut mend = cluster::Cluster::start(3, cluster::Options::default());
    mend.wait_healthy();
    let etcd = cluster::Etcd::start(3, &[]);
    let systems = [
        (
            "mend",
            mend.members
                .iter()
                .map(|m| m.endpoint())
                .collect::<Vec<_>>(),
        ),
        ("etcd", etcd.endpoints.clone()),
    ];
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!(
        "sequential put latency (256-byte values), before and after {watchers} idle watchers over \
         {revisions} more revisions of history"
    );
    for round in 1..=rounds {
        for (name, endpoints) in &systems {
            runtime.block_on(async {
                let fill = load::put_load(endpoints, 64, revisions, 256)
                    .await
                    .expect("fill");
                let before = load::put_load(&endpoints[..1], 1, puts, 256)
                    .await
                    .expect("puts");
                let idle = idle_watchers(&endpoints[0], watchers).await;
                load::put_load(endpoints, 64, revisions, 256)
                    .await
                    .expect("fill");
                let after = load::put_load(&endpoints[..1], 1, puts, 256)
                    .await
                    .expect("puts");
                drop(idle);
                println!(
                    "round {round} {name}: fill {:.0} puts/s; p50 {:.2} ms -> {:.2} ms ({:.2}x), \
                     p99 {:.2} ms -> {:.2} ms",
                    fill.throughput(),
                    before.p50.as_secs_f64() * 1e3,
                    after.p50.as_secs_f64() * 1e3,
                    after.p50.as_secs_f64() / before.p50.as_secs_f64(),
                    before.p99.as_secs_f64() * 1e3,
                    after.p99.as_secs_f64() * 1e3,
                );
            });
        }
    }
}
