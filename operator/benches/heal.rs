//! Heal timing on local processes: a 3-member cluster holding N keys (10k and 100k by
//! default), the etcd 11651 trigger with the fault switch, then the time from the divergence
//! (the first write that a member drops) to its detection, and the heal's duration.
//!
//! `cargo bench -p operator --bench heal` (set `MEND_HEAL_KEYS=10000,100000` to choose sizes).

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use operator::detector::{self, Finding, Tolerance};
use operator::planner::{self, Decision, Mode};
use operator::platform::local::LocalPlatform;
use operator::probe::Prober;

const ROOT: &str = "root:rootpw";

fn main() {
    let sizes: Vec<usize> = std::env::var("MEND_HEAL_KEYS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for keys in sizes {
        let (detect, heal) = run(&runtime, keys);
        println!(
            "{keys:>7} keys: divergence -> detection {:>6.2} s (a probe round per second, 3 rounds required), heal {:>6.2} s",
            detect.as_secs_f64(),
            heal.as_secs_f64()
        );
    }
}

fn run(runtime: &tokio::runtime::Runtime, keys: usize) -> (Duration, Duration) {
    let work = tempfile::tempdir().expect("workdir");
    let args = [
        "--unsafe-reproduce-etcd-11651",
        "--bcrypt-cost",
        "4",
        "--snapshot-count",
        "10000",
    ]
    .map(String::from)
    .to_vec();
    let mut platform =
        LocalPlatform::new(cluster::storage_node_bin(), work.path(), 3, args).expect("platform");
    platform.start_all().expect("start");
    let endpoints: Vec<String> = platform.members.iter().map(|m| m.endpoint()).collect();
    let prober = Prober::new(
        common::targets(&platform),
        operator::members::Credentials {
            login: Some(("root".into(), "rootpw".into())),
            tls: None,
        },
        Duration::from_secs(5),
    );
    settle(runtime, &prober);
    runtime
        .block_on(storage_node::tools::benchmark::put_load(
            &endpoints, 64, keys, 256,
        ))
        .expect("load");
    let ctl = |i: usize, args: &[&str]| cluster::ok(cluster::etcdctl(&endpoints[i], args));
    ctl(1, &["user", "add", ROOT]);
    ctl(1, &["user", "grant-role", "root", "root"]);
    ctl(1, &["auth", "enable"]);
    ctl(1, &["--user", ROOT, "role", "add", "app"]);
    ctl(
        1,
        &[
            "--user",
            ROOT,
            "role",
            "grant-permission",
            "app",
            "read",
            "x",
        ],
    );
    settle(runtime, &prober);
    platform.stop_member("node1").expect("stop");
    platform.restart("node1").expect("restart");
    settle(runtime, &prober);
    // The divergence starts with this write: node1 drops it.
    let diverged = Instant::now();
    ctl(1, &["--user", ROOT, "put", "diverging", "v"]);
    let mut history = Vec::new();
    let findings = loop {
        history.push(runtime.block_on(prober.round()));
        let findings = detector::detect(&history, Tolerance::default());
        if findings
            .iter()
            .any(|f| matches!(f, Finding::AuthRevisionDrift { .. }))
        {
            break findings;
        }
        // The probe interval of the default StorageCluster spec is 10 s; one second here.
        std::thread::sleep(Duration::from_secs(1));
    };
    let detected = diverged.elapsed();
    let last = history.last().expect("a round");
    let members = common::members(last);
    let Decision::Heal(plan) = planner::plan(&findings, &members, Mode::Automatic) else {
        panic!("no plan for {findings:?}");
    };
    let names = common::names(last, &platform);
    let started = Instant::now();
    common::heal(
        runtime,
        &mut platform,
        &prober,
        plan,
        names,
        Duration::from_secs(600),
    );
    (detected, started.elapsed())
}

/// Waits until every member answers at one applied index.
fn settle(runtime: &tokio::runtime::Runtime, prober: &Prober) {
    assert!(cluster::wait_until(cluster::DEADLINE, || {
        let round = runtime.block_on(prober.round());
        let applied: std::collections::BTreeSet<u64> =
            round.members.iter().map(|o| o.applied_index).collect();
        applied.len() == 1 && round.members.iter().all(|o| o.reachable && o.raft_term > 0)
    }));
}
