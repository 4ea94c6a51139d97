//! Probing a real cluster and deciding from the probes: with the etcd 11651 fault switch, a
//! member restarted after auth changes drifts ahead, writes through the others are dropped on
//! it, and the detector and planner see exactly that; without the switch, nothing is found. A
//! CORRUPT alarm the members' corruption check raised is read (with auth on) as a finding.

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;
mod common;

use std::time::Duration;

use cluster::{Cluster, DEADLINE, Options, ok, wait_until};
use operator::detector::{self, AlarmKind, Finding, Tolerance};
use operator::planner::{self, Decision, Mode};
use operator::probe::Prober;

const ROOT: (&str, &str) = ("root", "rootpw");

/// Auth changes, then a restart of member 0 before any KV write, then a write through member 1.
fn play(c: &mut Cluster) {
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "grant-role", "root", "root"],
        vec!["role", "add", "app"],
        vec!["auth", "enable"],
    ] {
        ok(c.etcdctl(1, &args));
    }
    ok(c.etcdctl(
        1,
        &[
            "--user",
            "root:rootpw",
            "role",
            "grant-permission",
            "app",
            "read",
            "x",
        ],
    ));
    assert!(wait_until(DEADLINE, || {
        let applied: std::collections::BTreeSet<u64> = (0..3)
            .map(|i| c.members[i].metric("mend_applied_index").unwrap_or(0.0) as u64)
            .collect();
        applied.len() == 1
    }));
    assert!(c.member(0).stop());
    c.member(0).start();
    c.wait_healthy();
    ok(c.etcdctl(1, &["--user", "root:rootpw", "put", "k", "v"]));
}

fn probe_rounds(c: &Cluster, n: usize) -> Vec<detector::Round> {
    let prober = Prober::new(
        c.members
            .iter()
            .enumerate()
            .map(|(i, m)| operator::probe::Target {
                name: format!("node{}", i + 1),
                endpoint: m.endpoint(),
                metrics: None,
            })
            .collect(),
        operator::members::Credentials {
            login: Some((ROOT.0.into(), ROOT.1.into())),
            tls: None,
        },
        Duration::from_secs(5),
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    common::settled_rounds(&runtime, &prober, n, DEADLINE)
}

#[test]
fn drift_on_a_real_cluster_is_found_and_planned_from_the_lowest_auth_revision() {
    let mut c = Cluster::start(
        3,
        Options {
            fault_switch: true,
            ..Options::default()
        },
    );
    play(&mut c);
    let rounds = probe_rounds(&c, 3);
    let findings = detector::detect(&rounds, Tolerance::default());
    let last = rounds.last().expect("a round");
    let drift = findings
        .iter()
        .find_map(|f| match f {
            Finding::AuthRevisionDrift { revisions } => Some(revisions.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no drift found: {findings:?} in {last:?}"));
    let restarted = last.members[0].member;
    let highest = drift.iter().max_by_key(|(_, r)| **r).map(|(id, _)| *id);
    assert_eq!(highest, Some(restarted), "{drift:?}");
    assert!(
        findings
            .iter()
            .any(|f| matches!(f, Finding::DataDivergence { .. })),
        "the write through member 1 is missing on the restarted member: {findings:?}"
    );
    match planner::plan(&findings, &common::members(last), Mode::Automatic) {
        Decision::Heal(plan) => {
            assert_ne!(plan.source, restarted);
            assert!(
                plan.steps
                    .contains(&planner::Step::Remove { member: restarted })
            );
        }
        other => panic!("expected a plan, got {other:?}"),
    }
}

#[test]
fn with_the_fix_the_same_script_gives_no_finding() {
    let mut c = Cluster::start(3, Options::default());
    play(&mut c);
    let rounds = probe_rounds(&c, 3);
    let findings = detector::detect(&rounds, Tolerance::default());
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(
        planner::plan(
            &findings,
            &common::members(rounds.last().expect("a round")),
            Mode::Automatic
        ),
        Decision::Healthy
    );
}

#[test]
fn a_corrupt_alarm_is_a_finding_and_its_member_is_rebuilt_from_the_majority() {
    let c = Cluster::start(
        3,
        Options {
            extra_args: vec![
                "--experimental-corrupt-check-time=500ms".into(),
                "--unsafe-test-corrupt-puts-if=corrupt-puts".into(),
            ],
            ..Options::default()
        },
    );
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "grant-role", "root", "root"],
        vec!["auth", "enable"],
    ] {
        ok(c.etcdctl(0, &args));
    }
    // Member 2 stores the next put with its value inverted: same revision, other data.
    let fault = c.members[2].dir.join("corrupt-puts");
    std::fs::write(&fault, b"").expect("arm the fault");
    ok(c.etcdctl(0, &["--user", "root:rootpw", "put", "k", "v"]));
    for i in 0..3 {
        ok(c.etcdctl(i, &["--user", "root:rootpw", "get", "k"]));
    }
    std::fs::remove_file(&fault).expect("disarm the fault");
    assert!(
        wait_until(DEADLINE, || {
            !ok(c.etcdctl(0, &["--user", "root:rootpw", "alarm", "list"])).is_empty()
        }),
        "no alarm:\n{}",
        c.logs()
    );
    let rounds = probe_rounds(&c, 3);
    let last = rounds.last().expect("a round");
    let named = last.members[2].member;
    let findings = detector::detect(&rounds, Tolerance::default());
    assert!(
        findings.contains(&Finding::Alarm {
            member: named,
            alarm: AlarmKind::Corrupt
        }),
        "{findings:?} in {last:?}"
    );
    match planner::plan(&findings, &common::members(last), Mode::Automatic) {
        Decision::Heal(plan) => {
            assert_ne!(plan.source, named);
            assert!(
                plan.steps
                    .contains(&planner::Step::Remove { member: named })
            );
        }
        other => panic!("expected a plan, got {other:?}"),
    }
}
