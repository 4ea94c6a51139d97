//! `storage-node benchmark` as a user runs it: each load against a running cluster does what
//! it says (the keys, leases and events are there), and `--compare-etcd` runs both systems
//! side by side and leaves no process behind.

mod cluster;

use std::process::{Command, Output};

use cluster::{Cluster, Options, ok};

fn benchmark(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .arg("benchmark")
        .args(args)
        .output()
        .expect("run storage-node benchmark")
}

fn succeeds(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "benchmark failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Keys member 0 holds, as etcdctl counts them.
fn key_count(c: &Cluster) -> i64 {
    let out = ok(c.etcdctl(0, &["get", "", "--prefix", "--limit=1", "-w", "json"]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    json["count"].as_i64().unwrap_or(0)
}

#[test]
fn each_load_does_what_it_says_against_a_running_cluster() {
    let c = Cluster::start(3, Options::default());
    let endpoints = c.endpoints();
    let common = [
        "--endpoints",
        endpoints.as_str(),
        "--conns",
        "3",
        "--clients",
        "4",
    ];
    let run = |args: &[&str]| succeeds(benchmark(&[&common[..], args].concat()));

    let out = run(&[
        "--total",
        "50",
        "put",
        "--key-space-size",
        "1000",
        "--sequential-keys",
    ]);
    assert!(out.starts_with("put:    4 clients      50 ops"), "{out}");
    assert_eq!(key_count(&c), 50, "one key per put");

    let out = run(&[
        "--total",
        "10",
        "txn-put",
        "--txn-ops",
        "3",
        "--key-space-size",
        "100000",
        "--sequential-keys",
        "--key-size",
        "12",
    ]);
    assert!(
        out.starts_with("txn-put:    4 clients      10 ops"),
        "{out}"
    );
    assert_eq!(key_count(&c), 50 + 30, "three keys per txn");

    for consistency in ["l", "s"] {
        let out = run(&[
            "--total",
            "40",
            "range",
            "00000001",
            "--consistency",
            consistency,
        ]);
        assert!(out.starts_with("range:    4 clients      40 ops"), "{out}");
    }

    let out = run(&["--total", "20", "lease-keepalive"]);
    assert!(
        out.starts_with("lease-keepalive:    4 clients      20 ops"),
        "{out}"
    );
    let leases = ok(c.etcdctl(0, &["lease", "list"]));
    assert!(
        leases.starts_with("found 4 leases"),
        "one lease per client: {leases}"
    );

    // Every watcher sees every put: 3 streams x 2 watchers x 5 puts.
    let out = run(&[
        "watch-latency",
        "--streams",
        "3",
        "--watchers-per-stream",
        "2",
        "--put-total",
        "5",
        "--put-rate",
        "50",
    ]);
    assert!(
        out.starts_with("watch-latency:    6 clients      30 ops"),
        "{out}"
    );
}

#[test]
fn bad_arguments_and_unreachable_endpoints_get_a_clear_error() {
    let out = benchmark(&[
        "--endpoints",
        "http://127.0.0.1:1",
        "--user",
        "nocolon",
        "put",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("storage-node benchmark: endpoint http://127.0.0.1:1:"),
        "{err}"
    );

    let c = Cluster::start(1, Options::default());
    let out = benchmark(&["--endpoints", &c.endpoints(), "--user", "nocolon", "put"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err, "storage-node benchmark: --user takes NAME:PASSWORD\n");

    let out = benchmark(&["--endpoints", &c.endpoints(), "suite"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        "storage-node benchmark: suite runs only with --compare-etcd\n"
    );
}

#[test]
fn compare_etcd_runs_both_clusters_side_by_side_and_stops_them() {
    let out = succeeds(benchmark(&[
        "--compare-etcd",
        "--rounds",
        "2",
        "--total",
        "160",
        "--user",
        "bench:benchpw",
        "suite",
    ]));
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 8, "a header and seven loads:\n{out}");
    for load in [
        "put, 1 client",
        "put, 64 clients",
        "watch latency, 1000 watchers",
    ] {
        assert!(
            rows.iter().any(|r| r.starts_with(&format!("| {load} |"))),
            "{out}"
        );
        for system in ["etcd", "mend"] {
            for round in [1, 2] {
                let line = format!("{load} round {round} {system}:");
                assert!(out.contains(&line), "{line} missing:\n{out}");
            }
        }
    }
    for system in ["etcd", "mend"] {
        let rss = format!("resident memory after the loads, {system}: ");
        let line = out.lines().find(|l| l.starts_with(&rss)).expect(&rss);
        assert_eq!(line.matches(" MiB").count(), 3, "{line}");
    }
    // The first line names both clusters' endpoints: nothing listens there any more.
    let first = out.lines().next().unwrap_or_default();
    let ports: Vec<u16> = first
        .split("http://127.0.0.1:")
        .skip(1)
        .filter_map(|p| {
            p.split(|ch: char| !ch.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(ports.len(), 6, "{first}");
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a member still listens on {port}"
        );
    }
}
