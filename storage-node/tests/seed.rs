//! The seed of Mend, end to end with real processes and etcdctl: etcd issue 11651.
//!
//! Auth enabled, a role granted a permission, members restarted before any KV write, then
//! writes through each member. With the fault switch the restarted members replay auth
//! entries, AuthRevisions drift apart, and writes vanish silently on some members while
//! `endpoint status` shows equal raft term and index. Without the switch (the fix) every
//! member agrees. And the leader's corruption check names the member whose data differs.

mod cluster;

use std::collections::BTreeSet;

use cluster::{Cluster, DEADLINE, Options, ok, wait_until};

const ROOT: &str = "root:rootpw";

/// `endpoint status` of member `i`. Status needs no login; logging in would append an entry.
fn status_json(c: &Cluster, i: usize) -> serde_json::Value {
    let out = ok(c.etcdctl(i, &["endpoint", "status", "-w", "json"]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("status json");
    json[0]["Status"].clone()
}

fn auth_revision(c: &Cluster, i: usize) -> u64 {
    c.members[i]
        .metric("mend_auth_revision")
        .expect("auth revision metric") as u64
}

/// Whether member `i` holds `key`, read locally (serializable) as root.
fn holds(c: &Cluster, i: usize, key: &str) -> bool {
    let out = ok(c.etcdctl(i, &["--user", ROOT, "get", "--consistency=s", key]));
    !out.is_empty()
}

/// Runs the seed's script; returns the members' AuthRevisions after the restarts.
fn play_seed(c: &mut Cluster) -> Vec<u64> {
    // The member that will not restart leads, so restarts cause no election (a new leader's
    // blank entry would persist the consistent index everywhere and hide the replay).
    let leader = c.wait_leader();
    if leader != 2 {
        let json = status_json(c, 2);
        let target = format!("{:x}", json["header"]["member_id"].as_u64().expect("id"));
        ok(cluster::etcdctl(&c.endpoints(), &["move-leader", &target]));
        assert!(wait_until(DEADLINE, || c.leader() == Some(2)));
    }
    for args in [
        vec!["user", "add", ROOT],
        vec!["user", "grant-role", "root", "root"],
        vec!["user", "add", "app:apppw"],
        vec!["role", "add", "app"],
        vec!["user", "grant-role", "app", "app"],
        vec!["auth", "enable"],
    ] {
        ok(c.etcdctl(2, &args));
    }
    ok(c.etcdctl(
        2,
        &[
            "--user",
            ROOT,
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "a",
            "--prefix=true",
        ],
    ));
    // First restart, before any KV write, once the member has applied the grant.
    wait_applied_equal(c);
    assert!(c.member(0).stop());
    c.member(0).start();
    c.wait_healthy();
    // More grants, then the second restart, again before any KV write and after applying the
    // grants: it replays them, which puts that member above the first one. A leader election
    // in between (a busy machine) commits an entry that persists the consistent index and
    // shortens the replay, so the round is repeated, a bounded number of times, until it does.
    for round in 0..4 {
        for prefix in ["b", "c"] {
            let prefix = format!("{prefix}{round}");
            let grant = [
                "role",
                "grant-permission",
                "app",
                "readwrite",
                &prefix,
                "--prefix=true",
            ];
            ok(c.etcdctl(2, &[&["--user", ROOT][..], &grant[..]].concat()));
        }
        wait_applied_equal(c);
        assert!(c.member(1).stop());
        c.member(1).start();
        c.wait_healthy();
        // Let every member apply everything committed so far before reading revisions.
        wait_applied_equal(c);
        let revisions: Vec<u64> = (0..3).map(|i| auth_revision(c, i)).collect();
        if revisions[1] > revisions[0] {
            return revisions;
        }
    }
    (0..3).map(|i| auth_revision(c, i)).collect()
}

/// Writes one key through each member as the app user; returns the keys.
fn write_through_each(c: &Cluster) -> Vec<String> {
    (0..3)
        .map(|i| {
            let key = format!("a/through-{}", c.members[i].name);
            // The client is told OK in every case: it is answered from the local apply.
            assert_eq!(
                ok(c.etcdctl(i, &["--user", "app:apppw", "put", &key, "v"])),
                "OK\n"
            );
            key
        })
        .collect()
}

fn wait_applied_equal(c: &Cluster) {
    assert!(wait_until(DEADLINE, || {
        let applied: BTreeSet<u64> = (0..3)
            .map(|i| c.members[i].metric("mend_applied_index").unwrap_or(0.0) as u64)
            .collect();
        applied.len() == 1
    }));
}

#[test]
fn fault_switch_reproduces_etcd_11651_end_to_end() {
    let mut c = Cluster::start(
        3,
        Options {
            fault_switch: true,
            ..Options::default()
        },
    );
    let revisions = play_seed(&mut c);
    let distinct: BTreeSet<u64> = revisions.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3,
        "three AuthRevisions expected: {revisions:?}"
    );
    let keys = write_through_each(&c);
    wait_applied_equal(&c);
    for (writer, key) in keys.iter().enumerate() {
        for reader in 0..3 {
            // A member applies an entry only if the proposer's AuthRevision is not older than
            // its own: writes through the highest are everywhere, through the lowest only there.
            let expected = revisions[writer] >= revisions[reader];
            assert_eq!(
                holds(&c, reader, key),
                expected,
                "{key} on {} (revisions {revisions:?})",
                c.members[reader].name
            );
        }
    }
    // Raft sees nothing wrong: same term, same index everywhere.
    let mut statuses = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            statuses = (0..3).map(|i| status_json(&c, i)).collect();
            let positions: BTreeSet<(u64, u64, u64)> = statuses
                .iter()
                .map(|s| {
                    let field = |f: &str| s[f].as_u64().unwrap_or(0);
                    (
                        field("raftTerm"),
                        field("raftIndex"),
                        field("raftAppliedIndex"),
                    )
                })
                .collect();
            positions.len() == 1
        }),
        "{statuses:?}"
    );
    // The members silently diverged: the rejection counters say why.
    let rejected: f64 = (0..3)
        .filter_map(|i| {
            c.members[i].metric("mend_apply_rejections_total{reason=\"auth_old_revision\"}")
        })
        .sum();
    assert!(
        rejected >= 1.0,
        "{}",
        c.members[0].http_get("/metrics").unwrap_or_default().1
    );
}

#[test]
fn with_the_fix_the_seed_script_leaves_all_members_equal() {
    let mut c = Cluster::start(3, Options::default());
    let revisions = play_seed(&mut c);
    let distinct: BTreeSet<u64> = revisions.iter().copied().collect();
    assert_eq!(distinct.len(), 1, "AuthRevisions must agree: {revisions:?}");
    let keys = write_through_each(&c);
    wait_applied_equal(&c);
    for key in &keys {
        for reader in 0..3 {
            assert!(
                holds(&c, reader, key),
                "{key} missing on {}",
                c.members[reader].name
            );
        }
    }
    let out = ok(cluster::etcdctl(
        &c.endpoints(),
        &["--user", ROOT, "endpoint", "hashkv"],
    ));
    let hashes: BTreeSet<&str> = out.lines().filter_map(|l| l.rsplit(", ").next()).collect();
    assert_eq!(hashes.len(), 1, "{out}");
    let counts: BTreeSet<u64> = (0..3)
        .map(|i| c.members[i].metric("mend_mvcc_keys").unwrap_or(-1.0) as u64)
        .collect();
    assert_eq!(counts.len(), 1);
}

#[test]
fn corruption_check_names_the_member_whose_writes_the_others_dropped() {
    let mut c = Cluster::start(
        3,
        Options {
            fault_switch: true,
            extra_args: vec!["--experimental-corrupt-check-time=500ms".into()],
            ..Options::default()
        },
    );
    let revisions = play_seed(&mut c);
    let lowest = (0..3).min_by_key(|i| revisions[*i]).unwrap_or_default();
    let highest = (0..3).max_by_key(|i| revisions[*i]).unwrap_or_default();
    assert_eq!(
        revisions
            .iter()
            .filter(|r| **r == revisions[lowest])
            .count(),
        1,
        "one member with the lowest AuthRevision expected: {revisions:?}"
    );
    // Only the lowest applies a write through itself; everyone applies one through the
    // highest. At the first revision the others reached, the lowest then holds another key.
    for i in [lowest, highest] {
        let key = format!("a/through-{}", c.members[i].name);
        ok(c.etcdctl(i, &["--user", "app:apppw", "put", &key, "v"]));
    }
    let id = status_json(&c, lowest)["header"]["member_id"]
        .as_u64()
        .expect("member_id");
    let mut alarms = String::new();
    assert!(
        wait_until(DEADLINE, || {
            alarms = ok(c.etcdctl(highest, &["--user", ROOT, "alarm", "list"]));
            !alarms.is_empty()
        }),
        "no alarm:\n{}",
        c.logs()
    );
    assert_eq!(
        alarms.trim_end(),
        format!("memberID:{id} alarm:CORRUPT"),
        "revisions {revisions:?}"
    );
}
