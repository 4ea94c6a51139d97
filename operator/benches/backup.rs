//! Backups and restores of a 100k-key cluster (256-byte values, set `MEND_BACKUP_KEYS` for
//! another count), side by side with etcd 3.4 in the same run: a 3-member Mend cluster and a
//! 3-member etcd cluster are loaded with the same client, then, alternating between the two
//! (`MEND_BACKUP_ROUNDS` rounds, 3 by default):
//! - `etcdctl snapshot save` from a follower, the same etcdctl for both;
//! - the restore of that file into one member's data directory (`storage-node snapshot
//!   restore` and `etcdctl snapshot restore`, each engine's own tool);
//! - for Mend, the operator's whole backup ([`operator::backup::take`]: snapshot, check,
//!   upload in parts) to moto's S3 server, the throughput the operator gets from a real
//!   S3-compatible server (etcd has no backup to object storage of its own).
//!
//! `cargo bench -p operator --bench backup` (needs moto's server: `bash .ci/test` installs it).

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;
#[path = "../tests/common/s3.rs"]
mod s3;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Cluster, Etcd, Options, ok};

fn main() {
    let keys: usize = std::env::var("MEND_BACKUP_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("MEND_BACKUP_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let s3 = s3::S3::start();
    let mend = Cluster::start(3, Options::default());
    let etcd = Etcd::start(3, &[]);
    let mend_endpoints: Vec<String> = mend.endpoints().split(',').map(String::from).collect();
    for (name, endpoints) in [("mend", &mend_endpoints), ("etcd", &etcd.endpoints)] {
        let started = Instant::now();
        runtime
            .block_on(storage_node::tools::benchmark::put_load(
                endpoints, 64, keys, 256,
            ))
            .expect("load");
        println!(
            "{name}: loaded {keys} keys of 256 bytes in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let work = tempfile::tempdir().expect("workdir");
    let members = operator::members::Grpc::new(Duration::from_secs(5));
    let store = operator::backup::Store::open(
        &crds::BackupStore {
            s3: Some(crds::S3Store {
                bucket: s3::S3::BUCKET.into(),
                prefix: Some("bench".into()),
                endpoint: Some(s3.endpoint.clone()),
                ..Default::default()
            }),
            directory: None,
        },
        "bench",
        Some(&operator::backup::S3Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        }),
    )
    .expect("store");
    let retention = crds::BackupRetention {
        count: 1,
        max_age: None,
    };
    println!(
        "{:<6} {:>5} {:>10} {:>14} {:>13} {:>20}",
        "engine", "round", "size MB", "snapshot MB/s", "restore s", "backup to S3 MB/s"
    );
    for round in 1..=rounds {
        for engine in ["mend", "etcd"] {
            let endpoint = match engine {
                "mend" => mend_endpoints[1].clone(),
                _ => etcd.endpoints[1].clone(),
            };
            let file = work.path().join(format!("{engine}-{round}.db"));
            let started = Instant::now();
            ok(cluster::etcdctl(
                &endpoint,
                &["snapshot", "save", &file.display().to_string()],
            ));
            let saved = started.elapsed();
            let size = std::fs::metadata(&file).expect("snapshot").len() as f64 / 1e6;
            let restored = restore(
                engine,
                &file,
                &work.path().join(format!("{engine}-{round}")),
            );
            let backup = (engine == "mend").then(|| {
                let started = Instant::now();
                let outcome = runtime.block_on(operator::backup::take(
                    &members,
                    "node2",
                    endpoint.clone(),
                    operator::members::Credentials::default(),
                    &store,
                    &retention,
                    work.path(),
                ));
                let (record, _) = outcome.expect("backup");
                record.size as f64 / 1e6 / started.elapsed().as_secs_f64()
            });
            println!(
                "{engine:<6} {round:>5} {size:>10.1} {:>14.1} {:>13.2} {:>20}",
                size / saved.as_secs_f64(),
                restored.as_secs_f64(),
                backup.map_or("-".to_string(), |b| format!("{b:.1}")),
            );
        }
    }
}

/// Restores `file` into the new directory `dir` with the engine's own tool; the time it took.
fn restore(engine: &str, file: &Path, dir: &Path) -> Duration {
    let mut command = match engine {
        "mend" => {
            let mut c = Command::new(cluster::storage_node_bin());
            c.args(["snapshot", "restore"]);
            c
        }
        _ => {
            let mut c = Command::new("etcdctl");
            c.env("ETCDCTL_API", "3").args(["snapshot", "restore"]);
            c
        }
    };
    command
        .arg(file)
        .args(["--name", "m1", "--initial-cluster", "m1=http://127.0.0.1:1"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:1"])
        .arg("--data-dir")
        .arg(dir);
    let started = Instant::now();
    let output = command.output().expect("restore");
    assert!(output.status.success(), "{engine} restore: {output:?}");
    started.elapsed()
}
