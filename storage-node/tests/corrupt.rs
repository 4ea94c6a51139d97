//! The corruption checks with real processes and etcdctl: the leader's periodic check names the
//! member whose data differs in a CORRUPT alarm and writes then fail as etcd fails them, a
//! healthy cluster stays unalarmed under the check, the initial check refuses to start a member
//! whose data differs (and starts one the majority agrees with), and removing the named member
//! clears its alarm.
//!
//! One member's data is made to differ with the hidden test fault
//! `--unsafe-test-corrupt-puts-if FILE`: while FILE exists in its data directory, the Puts it
//! applies store inverted values, at the same revisions as its peers'.

mod cluster;

use std::collections::BTreeSet;

use cluster::{Cluster, DEADLINE, Options, fails, ok, wait_until};

/// The fault file, inside a member's data directory.
const FAULT_FILE: &str = "corrupt-puts";

/// etcd's error for writes under a CORRUPT alarm (etcd 3.4 `rpctypes.ErrGRPCCorrupt`).
const CORRUPT: &str = "etcdserver: corrupt cluster";

fn options(extra: &[&str]) -> Options {
    let mut extra_args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    extra_args.push(format!("--unsafe-test-corrupt-puts-if={FAULT_FILE}"));
    Options {
        extra_args,
        ..Options::default()
    }
}

/// Member `i`'s ID in decimal, as `alarm list` prints it.
fn member_id(c: &Cluster, i: usize) -> u64 {
    let out = ok(c.etcdctl(i, &["endpoint", "status", "-w", "json"]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("status json");
    json[0]["Status"]["header"]["member_id"]
        .as_u64()
        .expect("member_id")
}

/// `alarm list` through member `i`, one line per alarm (etcdctl ends each with a space).
fn alarm_list(c: &Cluster, i: usize) -> BTreeSet<String> {
    ok(c.etcdctl(i, &["alarm", "list"]))
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// Puts `key` while member `i` corrupts the Puts it applies, and waits until every member
/// applied it (so the fault file can go and later writes are stored as sent).
fn corrupt_put_on(c: &Cluster, i: usize, key: &str) {
    let file = c.members[i].dir.join(FAULT_FILE);
    std::fs::write(&file, b"").expect("arm the fault");
    ok(c.etcdctl(i, &["put", key, "v"]));
    // Read through every member at the same (linearizable) point: each has applied the put.
    for reader in 0..c.members.len() {
        ok(c.etcdctl(reader, &["get", key]));
    }
    std::fs::remove_file(&file).expect("disarm the fault");
}

/// A member whose index is not `leader`.
fn follower(leader: usize) -> usize {
    (leader + 1) % 3
}

#[test]
fn periodic_check_names_the_diverged_member_and_removing_it_clears_the_alarm() {
    let c = Cluster::start(3, options(&["--experimental-corrupt-check-time=500ms"]));
    ok(c.etcdctl(0, &["put", "before", "1"]));
    let leader = c.wait_leader();
    let bad = follower(leader);
    corrupt_put_on(&c, bad, "diverged");
    let id = member_id(&c, bad);
    let expected = BTreeSet::from([format!("memberID:{id} alarm:CORRUPT")]);
    let mut alarms = BTreeSet::new();
    assert!(
        wait_until(DEADLINE, || {
            alarms = alarm_list(&c, leader);
            !alarms.is_empty()
        }),
        "no alarm:\n{}",
        c.logs()
    );
    assert_eq!(alarms, expected, "only the diverged member is named");
    for i in 0..3 {
        let err = fails(c.etcdctl(i, &["put", "after", "1"]));
        assert!(err.contains(CORRUPT), "write through {i}: {err}");
    }
    // Reads still work, as in etcd.
    ok(c.etcdctl(leader, &["get", "before"]));

    ok(c.etcdctl(leader, &["member", "remove", &format!("{id:x}")]));
    assert!(
        wait_until(DEADLINE, || alarm_list(&c, leader).is_empty()),
        "the removed member's alarm stays:\n{}",
        c.logs()
    );
    let stays = (0..3).find(|i| *i != bad && *i != leader).unwrap_or(leader);
    assert!(alarm_list(&c, stays).is_empty());
    assert_eq!(ok(c.etcdctl(leader, &["put", "after", "1"])), "OK\n");
}

#[test]
fn periodic_check_names_the_leader_when_its_own_data_differs() {
    let c = Cluster::start(3, options(&["--experimental-corrupt-check-time=500ms"]));
    let leader = c.wait_leader();
    corrupt_put_on(&c, leader, "diverged");
    let id = member_id(&c, leader);
    let mut alarms = BTreeSet::new();
    assert!(
        wait_until(DEADLINE, || {
            alarms = alarm_list(&c, follower(leader));
            !alarms.is_empty()
        }),
        "no alarm:\n{}",
        c.logs()
    );
    assert_eq!(
        alarms,
        BTreeSet::from([format!("memberID:{id} alarm:CORRUPT")]),
        "the leader is in the minority and named, not its peers"
    );
}

#[test]
fn a_healthy_cluster_raises_no_alarm_under_the_periodic_check() {
    let c = Cluster::start(3, options(&["--experimental-corrupt-check-time=300ms"]));
    for i in 0..20 {
        ok(c.etcdctl(i % 3, &["put", &format!("k{i}"), "v"]));
    }
    ok(c.etcdctl(0, &["compact", "10"]));
    ok(c.etcdctl(1, &["del", "k1"]));
    let leader = c.wait_leader();
    // Several completed checks on the leader, after the writes and the compaction.
    let checks = |c: &Cluster| {
        c.members[leader]
            .log()
            .matches("finished peer corruption check")
            .count()
    };
    let before = checks(&c);
    assert!(
        wait_until(DEADLINE, || checks(&c) >= before + 3),
        "the leader does not check:\n{}",
        c.logs()
    );
    for i in 0..3 {
        assert!(alarm_list(&c, i).is_empty(), "alarm on member {i}");
    }
    assert!(!c.members[leader].log().contains("found hash mismatch"));
    assert_eq!(ok(c.etcdctl(2, &["put", "still", "writable"])), "OK\n");
}

#[test]
fn initial_check_refuses_to_start_the_diverged_member_and_starts_the_others() {
    let mut c = Cluster::start(3, options(&["--experimental-initial-corrupt-check"]));
    ok(c.etcdctl(0, &["put", "before", "1"]));
    let leader = c.wait_leader();
    let bad = follower(leader);
    let good = follower(bad);
    corrupt_put_on(&c, bad, "diverged");

    // A member the majority agrees with starts, naming the one that differs.
    assert!(c.member(good).stop());
    c.member(good).start();
    c.wait_healthy();
    assert!(
        c.members[good]
            .log()
            .contains("this member agrees with the majority"),
        "{}",
        c.members[good].log()
    );

    // The diverged member compares itself with the two others and exits.
    assert!(c.member(bad).stop());
    c.member(bad).start();
    assert!(
        wait_until(DEADLINE, || !c.member(bad).is_running()),
        "the diverged member keeps running:\n{}",
        c.members[bad].log()
    );
    let log = c.members[bad].log();
    assert!(log.contains("found data inconsistency with peers"), "{log}");
    // The two others still serve, without an alarm (only the periodic check raises one).
    assert_eq!(ok(c.etcdctl(leader, &["put", "after", "1"])), "OK\n");
    assert!(alarm_list(&c, leader).is_empty());
}
