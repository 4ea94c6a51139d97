//! Maintenance side by side with etcd 3.4, in one run on one machine: a 3-member Mend cluster
//! and a 3-member etcd cluster (`/usr/bin/etcd`) are each filled with about 1 GiB of values,
//! then, alternating between the two, measured with the same clients:
//! - snapshot save (`etcdctl snapshot save` from the leader): MiB/s, and the latency of
//!   sequential 256-byte puts while it streams, next to the same puts with no snapshot;
//! - snapshot restore (`storage-node snapshot restore` / `etcdctl snapshot restore`): MiB/s;
//! - compaction after half the keys were deleted, and defragment of one follower after it:
//!   their times, and the follower's database size before and after.
//!
//! Both run with an 8 GiB backend quota.
//!
//! `cargo build --release -p storage-node && cargo bench -p storage-node --bench maintenance`.
//! `MEND_BENCH_MIB` sets the size to fill (default 1024), `MEND_BENCH_VALUE` the value size in
//! bytes (default 1000), `MEND_BENCH_ROUNDS` the rounds (default 2).

#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use storage_node::pb::etcdserverpb::kv_client::KvClient;
use storage_node::pb::etcdserverpb::{DeleteRangeRequest, PutRequest};
use storage_node::tools::benchmark as load;

/// Both systems' backend quota: 8 GiB, etcd's largest recommended, so neither stops the fill.
const QUOTA: i64 = 8 << 30;

/// One system under measurement.
struct System {
    name: &'static str,
    endpoints: Vec<String>,
    restore: fn(&Path, &Path) -> Command,
}

fn mend_restore(file: &Path, dir: &Path) -> Command {
    let mut c = Command::new(cluster::storage_node_bin());
    c.args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(dir);
    c
}

fn etcd_restore(file: &Path, dir: &Path) -> Command {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(dir);
    c
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// `endpoint status` of one endpoint: (leader's member ID, this member's ID, dbSize).
fn status(endpoint: &str) -> (u64, u64, u64) {
    let out = cluster::ok(cluster::etcdctl(
        endpoint,
        &["endpoint", "status", "-w", "json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    let s = &v[0]["Status"];
    (
        s["leader"].as_u64().unwrap_or(0),
        s["header"]["member_id"].as_u64().unwrap_or(0),
        s["dbSize"].as_u64().unwrap_or(0),
    )
}

fn leader(endpoints: &[String]) -> String {
    endpoints
        .iter()
        .find(|e| {
            let (leader, me, _) = status(e);
            leader == me
        })
        .cloned()
        .unwrap_or_else(|| endpoints[0].clone())
}

/// Sequential 256-byte puts through `endpoint` until `stop`: their latencies.
async fn sequential_puts(endpoint: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut kv = KvClient::connect(endpoint).await.expect("connect");
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let put = PutRequest {
            key: format!("probe/{n:08}").into_bytes(),
            value: vec![b'p'; 256],
            ..PutRequest::default()
        };
        let t = Instant::now();
        kv.put(put).await.expect("put");
        latencies.push(t.elapsed());
        n += 1;
    }
    latencies
}

fn percentile(latencies: &mut [Duration], q: f64) -> f64 {
    latencies.sort();
    let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
    latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Runs `work` while sequential puts go to `endpoint`; returns its result and the puts' p50
/// and p99 in ms.
fn with_probe<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    endpoint: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> (T, f64, f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let probe = runtime.spawn(sequential_puts(endpoint.to_string(), stop.clone()));
    let result = work();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = runtime.block_on(probe).expect("probe");
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    (result, p50, p99, latencies.len())
}

fn main() {
    let fill_mib: u64 = std::env::var("MEND_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let value: usize = std::env::var("MEND_BENCH_VALUE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rounds: usize = std::env::var("MEND_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mend = cluster::Cluster::start(
        3,
        cluster::Options {
            quota_backend_bytes: Some(QUOTA),
            ..cluster::Options::default()
        },
    );
    let etcd = cluster::Etcd::start(3, &[format!("--quota-backend-bytes={QUOTA}")]);
    let systems = [
        System {
            name: "mend",
            endpoints: mend.members.iter().map(|m| m.endpoint()).collect(),
            restore: mend_restore,
        },
        System {
            name: "etcd",
            endpoints: etcd.endpoints.clone(),
            restore: etcd_restore,
        },
    ];
    let puts = (fill_mib << 20) as usize / value;
    for s in &systems {
        let report = runtime
            .block_on(load::put_load(&s.endpoints, 64, puts, value))
            .expect("fill");
        let (_, _, db) = status(&s.endpoints[0]);
        println!(
            "{}: filled with {puts} puts of {value} B ({:.0} puts/s), dbSize {:.0} MiB",
            s.name,
            report.throughput(),
            mib(db)
        );
    }

    let work = tempfile::tempdir().expect("temp dir");
    for round in 1..=rounds {
        for s in &systems {
            let leader = leader(&s.endpoints);
            let follower = s
                .endpoints
                .iter()
                .find(|e| **e != leader)
                .cloned()
                .unwrap_or_else(|| leader.clone());
            let ((), p50, p99, n) = with_probe(&runtime, &follower, || {
                std::thread::sleep(Duration::from_secs(3));
            });
            println!(
                "round {round} {}: puts with no snapshot: {n} puts, p50 {p50:.2} ms, p99 {p99:.2} ms",
                s.name
            );
            let file: PathBuf = work.path().join(format!("{}-{round}.db", s.name));
            let save_from = leader.clone();
            let save_file = file.clone();
            let (elapsed, p50, p99, n) = with_probe(&runtime, &follower, move || {
                let t = Instant::now();
                cluster::ok(cluster::etcdctl(
                    &save_from,
                    &[
                        "snapshot",
                        "save",
                        save_file.to_str().expect("path"),
                        "--command-timeout=600s",
                    ],
                ));
                t.elapsed()
            });
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            println!(
                "round {round} {}: snapshot save {:.0} MiB in {:.2} s = {:.0} MiB/s; puts meanwhile: {n}, p50 {p50:.2} ms, p99 {p99:.2} ms",
                s.name,
                mib(size),
                elapsed.as_secs_f64(),
                mib(size) / elapsed.as_secs_f64()
            );
            let target = work.path().join(format!("{}-{round}.restored", s.name));
            let t = Instant::now();
            let out = (s.restore)(&file, &target).output().expect("restore");
            assert!(
                out.status.success(),
                "{} restore: {}",
                s.name,
                String::from_utf8_lossy(&out.stderr)
            );
            let elapsed = t.elapsed();
            println!(
                "round {round} {}: snapshot restore {:.0} MiB in {:.2} s = {:.0} MiB/s",
                s.name,
                mib(size),
                elapsed.as_secs_f64(),
                mib(size) / elapsed.as_secs_f64()
            );
            let _ = std::fs::remove_dir_all(&target);
            let _ = std::fs::remove_file(&file);
        }
    }

    // Defragment: delete half the keys (every other client's), compact, defragment one
    // follower; time the compaction and the defragment and read dbSize before and after.
    for s in &systems {
        let leader = leader(&s.endpoints);
        let endpoint = s
            .endpoints
            .iter()
            .find(|e| **e != leader)
            .cloned()
            .unwrap_or_else(|| leader.clone());
        let revision = runtime.block_on(async {
            let mut kv = KvClient::connect(leader.clone()).await.expect("connect");
            let mut revision = 0;
            for c in (0..64).step_by(2) {
                let key = format!("bench/{c:03}/").into_bytes();
                let mut end = key.clone();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                let resp = kv
                    .delete_range(DeleteRangeRequest {
                        key,
                        range_end: end,
                        ..DeleteRangeRequest::default()
                    })
                    .await
                    .expect("delete");
                revision = resp.into_inner().header.map_or(0, |h| h.revision);
            }
            revision
        });
        let t = Instant::now();
        let compacted = cluster::etcdctl(
            &leader,
            &[
                "compaction",
                "--physical",
                &revision.to_string(),
                "--command-timeout=600s",
            ],
        );
        if !compacted.status.success() {
            // A compaction that outlasts the request timeout goes on; it is done once a read
            // below its revision is refused.
            println!(
                "{}: compaction answered {}",
                s.name,
                String::from_utf8_lossy(&compacted.stderr).trim()
            );
            let done = cluster::wait_until(Duration::from_secs(600), || {
                let out =
                    cluster::etcdctl(&leader, &["get", "x", "--rev", &(revision - 1).to_string()]);
                String::from_utf8_lossy(&out.stderr).contains("compacted")
            });
            assert!(done, "{}: the compaction never finished", s.name);
        }
        let compaction = t.elapsed();
        let db_before = status(&endpoint).2;
        let t = Instant::now();
        cluster::ok(cluster::etcdctl(
            &endpoint,
            &["defrag", "--command-timeout=600s"],
        ));
        let elapsed = t.elapsed();
        let (_, _, db_after) = status(&endpoint);
        println!(
            "{}: compaction at {revision} after deleting half the keys: {:.2} s; defragment of a follower: {:.2} s, dbSize {:.0} MiB -> {:.0} MiB ({:.0} MiB reclaimed)",
            s.name,
            compaction.as_secs_f64(),
            elapsed.as_secs_f64(),
            mib(db_before),
            mib(db_after),
            mib(db_before.saturating_sub(db_after))
        );
    }
}
