//! The heal, end to end on local processes: the etcd 11651 trigger with the fault switch on,
//! then probe → detect → plan → execute, and afterwards every member agrees and every
//! acknowledged write is readable from every member.

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;
mod common;

use std::time::Duration;

use cluster::{DEADLINE, etcdctl, ok, storage_node_bin};
use operator::detector::{self, Finding, Round, Tolerance};
use operator::planner::{self, Decision, Mode};
use operator::platform::local::LocalPlatform;
use operator::probe::Prober;

const ROOT: &str = "root:rootpw";

fn settled_rounds(runtime: &tokio::runtime::Runtime, prober: &Prober, n: usize) -> Vec<Round> {
    common::settled_rounds(runtime, prober, n, DEADLINE)
}

#[test]
fn the_seed_is_detected_and_healed_and_no_acknowledged_write_is_lost() {
    let work = tempfile::tempdir().expect("workdir");
    let node_args = [
        "--unsafe-reproduce-etcd-11651",
        "--bcrypt-cost",
        "4",
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
        "--snapshot-count",
        "50",
    ]
    .map(String::from)
    .to_vec();
    let mut platform =
        LocalPlatform::new(storage_node_bin(), work.path(), 3, node_args).expect("platform");
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
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    settled_rounds(&runtime, &prober, 1);

    // The seed's trigger: auth on, a grant, a restart before any KV write, writes through
    // the other members.
    for args in [
        vec!["user", "add", ROOT],
        vec!["user", "grant-role", "root", "root"],
        vec!["auth", "enable"],
    ] {
        ok(etcdctl(&endpoints[1], &args));
    }
    ok(etcdctl(
        &endpoints[1],
        &["--user", ROOT, "role", "add", "app"],
    ));
    ok(etcdctl(
        &endpoints[1],
        &[
            "--user",
            ROOT,
            "role",
            "grant-permission",
            "app",
            "read",
            "x",
        ],
    ));
    settled_rounds(&runtime, &prober, 1);
    platform.stop_member("node1").expect("stop");
    platform.restart("node1").expect("restart");
    settled_rounds(&runtime, &prober, 1);
    let mut acknowledged = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        for n in 0..5 {
            let key = format!("k{i}-{n}");
            ok(etcdctl(endpoint, &["--user", ROOT, "put", &key, "v"]));
            acknowledged.push(key);
        }
    }

    // Detect and plan.
    let rounds = settled_rounds(&runtime, &prober, 3);
    let findings = detector::detect(&rounds, Tolerance::default());
    assert!(
        findings
            .iter()
            .any(|f| matches!(f, Finding::AuthRevisionDrift { .. })),
        "{findings:?}"
    );
    let last = rounds.last().expect("a round");
    let members = common::members(last);
    let Decision::Heal(plan) = planner::plan(&findings, &members, Mode::Automatic) else {
        panic!("expected a plan for {findings:?}");
    };

    // Heal.
    let names = common::names(last, &platform);
    common::heal(
        &runtime,
        &mut platform,
        &prober,
        plan.clone(),
        names,
        DEADLINE,
    );

    // Every member agrees and holds every acknowledged write.
    let after = settled_rounds(&runtime, &prober, 3);
    let findings = detector::detect(&after, Tolerance::default());
    assert!(
        findings.is_empty(),
        "still diverged after the heal: {findings:?}"
    );
    for endpoint in &endpoints {
        for key in &acknowledged {
            assert_eq!(
                ok(etcdctl(
                    endpoint,
                    &["--user", ROOT, "get", "--consistency=s", key]
                )),
                format!("{key}\nv\n"),
                "{key} missing on {endpoint}"
            );
        }
    }
    // The wiped data was kept as backups.
    let backups = std::fs::read_dir(work.path().join("backups"))
        .expect("backups dir")
        .count();
    assert_eq!(
        backups,
        plan.steps
            .iter()
            .filter(|s| matches!(s, planner::Step::Backup { .. }))
            .count()
    );
}
