//! Replication with real processes: elections, writes through every member, leader loss,
//! restarts, learners, removal, snapshot catch-up, clean shutdown.

mod cluster;

use cluster::{Cluster, DEADLINE, Options, ok, wait_until};

/// The value of `key` as member `i` serves it without a quorum read.
fn local_get(c: &Cluster, i: usize, key: &str) -> Option<String> {
    let out = c.etcdctl(i, &["get", "--consistency=s", key]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().nth(1).map(str::to_string)
}

/// Number of keys member `i` holds, served locally.
fn local_count(c: &Cluster, i: usize) -> Option<i64> {
    // etcdctl 3.4 has no --count-only; the JSON count is the range's size whatever the limit.
    let out = c.etcdctl(
        i,
        &[
            "get",
            "--consistency=s",
            "",
            "--prefix",
            "--limit=1",
            "-w",
            "json",
        ],
    );
    if !out.status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(json["count"].as_i64().unwrap_or(0))
}

/// Adds a learner with etcdctl (through member 0) and starts it: its index and peer URL.
fn add_learner(c: &mut Cluster, name: &str) -> (usize, String) {
    let j = c.prepare_joiner(name);
    let peer = c.members[j].peer_url();
    let url = format!("--peer-urls={peer}");
    ok(c.etcdctl(0, &["member", "add", name, &url, "--learner"]));
    c.member(j).start();
    (j, peer)
}

#[test]
fn writes_through_every_member_are_visible_on_all() {
    let c = Cluster::start(3, Options::default());
    for i in 0..3 {
        assert_eq!(
            ok(c.etcdctl(i, &["put", &format!("k{i}"), &format!("v{i}")])),
            "OK\n"
        );
    }
    for reader in 0..3 {
        for i in 0..3 {
            // Linearizable reads see every acknowledged write, whichever member serves them.
            assert_eq!(
                ok(c.etcdctl(reader, &["get", &format!("k{i}")])),
                format!("k{i}\nv{i}\n")
            );
        }
    }
}

#[test]
fn leader_sigkill_elects_a_new_leader_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, Options::default());
    let leader = c.wait_leader();
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let key = format!("key{n:02}");
        ok(c.etcdctl((leader + 1 + n) % 3, &["put", &key, "x"]));
        acknowledged.push(key);
    }
    c.member(leader).kill();
    let new_leader = c.wait_leader();
    assert_ne!(new_leader, leader);
    let survivor = (leader + 1) % 3;
    ok(c.etcdctl(survivor, &["put", "after", "kill"]));
    for key in &acknowledged {
        assert_eq!(
            ok(c.etcdctl(survivor, &["get", key])),
            format!("{key}\nx\n")
        );
    }
    // The killed member comes back with everything it had applied (its engine replays what
    // the kill cut off from its own log) and catches up with what it missed.
    c.member(leader).start();
    assert!(
        wait_until(DEADLINE, || local_get(&c, leader, "after").as_deref()
            == Some("kill")),
        "{}",
        c.logs()
    );
    assert_eq!(local_count(&c, leader), Some(acknowledged.len() as i64 + 1));
}

#[test]
fn sigkill_of_every_member_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, Options::default());
    for n in 0..30 {
        ok(c.etcdctl(n % 3, &["put", &format!("k{n:02}"), "v"]));
    }
    // No clean shutdown anywhere: whatever each engine had not yet fsync'd is replayed from
    // the raft log at start.
    for i in 0..3 {
        c.member(i).kill();
    }
    for i in 0..3 {
        c.member(i).start();
    }
    c.wait_healthy();
    for i in 0..3 {
        assert!(
            wait_until(DEADLINE, || local_count(&c, i) == Some(30)),
            "member {i} lost writes:\n{}",
            c.logs()
        );
    }
}

#[test]
fn restarting_every_member_in_turn_keeps_all_data() {
    let mut c = Cluster::start(3, Options::default());
    for round in 0..3 {
        ok(c.etcdctl((round + 1) % 3, &["put", &format!("r{round}"), "v"]));
        assert!(
            c.member(round).stop(),
            "member did not shut down cleanly on SIGTERM"
        );
        ok(c.etcdctl(
            (round + 2) % 3,
            &["put", &format!("while-down{round}"), "v"],
        ));
        c.member(round).start();
        c.wait_healthy();
    }
    assert!(wait_until(DEADLINE, || (0..3).all(|i| local_count(&c, i) == Some(6))));
}

#[test]
fn learner_catches_up_then_is_promoted() {
    let mut c = Cluster::start(3, Options::default());
    for n in 0..10 {
        ok(c.etcdctl(0, &["put", &format!("pre{n}"), "v"]));
    }
    let (j, peer) = add_learner(&mut c, "node4");
    assert!(
        wait_until(DEADLINE, || local_count(&c, j) == Some(10)),
        "learner did not catch up:\n{}",
        c.logs()
    );
    // Once running, the member publishes its name and client URLs through raft.
    let mut line = String::new();
    assert!(
        wait_until(DEADLINE, || {
            let list = ok(c.etcdctl(0, &["member", "list"]));
            line = list
                .lines()
                .find(|l| l.contains(&peer))
                .unwrap_or_default()
                .to_string();
            line.contains(", started, node4, ")
        }),
        "{line}"
    );
    assert!(line.ends_with(", true"), "still a learner: {line}");
    let id = line.split(", ").next().expect("id").to_string();
    let promoted = ok(cluster::etcdctl(
        &c.endpoints(),
        &["member", "promote", &id],
    ));
    assert!(
        promoted.contains(&format!("Member {id:>16} promoted in cluster")),
        "{promoted}"
    );
    let list = ok(c.etcdctl(j, &["member", "list"]));
    let line = list.lines().find(|l| l.contains(&peer)).expect("listed");
    assert!(line.ends_with(", false"), "{line}");
    // The promoted member serves writes like any voter.
    ok(c.etcdctl(j, &["put", "from-node4", "v"]));
    assert_eq!(ok(c.etcdctl(0, &["get", "from-node4"])), "from-node4\nv\n");
}

#[test]
fn removed_member_leaves_the_cluster_which_keeps_serving() {
    let mut c = Cluster::start(3, Options::default());
    let leader = c.wait_leader();
    let victim = (leader + 1) % 3;
    let list = ok(c.etcdctl(leader, &["member", "list"]));
    let name = c.members[victim].name.clone();
    let id = list
        .lines()
        .find(|l| l.contains(&format!(", {name}, ")))
        .and_then(|l| l.split(", ").next())
        .expect("victim listed")
        .to_string();
    ok(c.etcdctl(leader, &["member", "remove", &id]));
    c.member(victim).kill();
    let list = ok(c.etcdctl(leader, &["member", "list"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    let other = 3 - leader - victim;
    ok(c.etcdctl(other, &["put", "after-remove", "v"]));
    assert_eq!(
        ok(c.etcdctl(leader, &["get", "after-remove"])),
        "after-remove\nv\n"
    );
}

#[test]
fn member_added_after_compaction_catches_up_from_a_snapshot() {
    let mut c = Cluster::start(
        3,
        Options {
            snapshot_count: Some(20),
            ..Options::default()
        },
    );
    for n in 0..60 {
        ok(c.etcdctl(n % 3, &["put", &format!("k{n:02}"), &format!("v{n}")]));
    }
    ok(c.etcdctl(0, &["compaction", "30"]));
    // The leader has taken a snapshot and purged the log before it.
    assert!(
        wait_until(DEADLINE, || {
            let leader = c.leader().unwrap_or(0);
            c.members[leader]
                .metric("mend_raft_snapshot_index")
                .unwrap_or(0.0)
                > 0.0
        }),
        "{}",
        c.logs()
    );
    let (j, _) = add_learner(&mut c, "node4");
    assert!(
        wait_until(DEADLINE, || local_count(&c, j) == Some(60)),
        "joiner did not catch up:\n{}",
        c.logs()
    );
    // It got there by a snapshot: the log it would otherwise replay was purged.
    assert!(
        c.members[j]
            .metric("mend_raft_snapshot_index")
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(local_get(&c, j, "k59").as_deref(), Some("v59"));
    let err = cluster::fails(c.etcdctl(j, &["get", "--consistency=s", "k00", "--rev=10"]));
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
}

#[test]
fn a_member_that_lost_its_data_is_refused_until_removed_and_added_again() {
    let mut c = Cluster::start(3, Options::default());
    ok(c.etcdctl(0, &["put", "k", "v"]));
    // node3 has published its client URLs: the cluster knows it ran.
    let mut line = String::new();
    let published = wait_until(DEADLINE, || {
        let list = ok(c.etcdctl(0, &["member", "list"]));
        line = list
            .lines()
            .find(|l| l.contains(", node3, "))
            .unwrap_or_default()
            .to_string();
        line.contains(&c.members[2].endpoint())
    });
    assert!(published, "node3 never published its client URLs: {line}");
    let id = line.split(", ").next().expect("id").to_string();
    assert!(c.member(2).stop(), "SIGTERM must stop the member cleanly");
    std::fs::remove_dir_all(&c.members[2].dir).expect("wipe node3");
    // Started empty to join, it finds its old entry: it ran before, so it must not rejoin as it.
    c.member(2).set_state("existing");
    c.member(2).start();
    assert!(
        wait_until(DEADLINE, || !c.member(2).is_running()),
        "a member without its raft state rejoined:\n{}",
        c.logs()
    );
    let log = c.members[2].log();
    assert!(log.contains("has run before"), "{log}");
    assert!(
        log.contains(&format!("etcdctl member remove {id}")),
        "{log}"
    );

    // Removed and added again, it joins as a new member and catches up.
    c.member(2).kill();
    ok(cluster::etcdctl(&c.endpoints(), &["member", "remove", &id]));
    let url = format!("--peer-urls={}", c.members[2].peer_url());
    ok(c.etcdctl(0, &["member", "add", "node3", &url]));
    c.member(2).start();
    assert!(
        wait_until(DEADLINE, || local_count(&c, 2) == Some(1)),
        "the re-added member did not catch up:\n{}",
        c.logs()
    );
}

/// What Kubernetes' probes of a member read: a member whose peers are not there has no
/// leader, so it is neither healthy nor ready, but it is alive (restarting it would not bring a
/// leader).
#[test]
fn a_member_without_a_leader_is_alive_but_neither_healthy_nor_ready() {
    // One member of three started: it waits for its peers and elects no leader.
    let mut c = Cluster::prepare(3, Options::default());
    c.member(0).start();
    let m = &c.members[0];
    assert!(
        wait_until(DEADLINE, || m.http_get("/livez").is_some()),
        "{}",
        c.logs()
    );
    assert_eq!(m.http_get("/livez"), Some((200, "ok\n".to_string())));
    let (code, health) = m.http_get("/health").expect("health");
    assert_eq!(
        (code, health.as_str()),
        (503, r#"{"health":"false","reason":"RAFT NO LEADER"}"#)
    );
    // etcd 3.5's `serializable` health asks only the member's own state.
    assert_eq!(
        m.http_get("/health?serializable=true").map(|r| r.0),
        Some(200)
    );
    assert_eq!(m.http_get("/readyz").map(|r| r.0), Some(503));
    // Once a majority is up there is a leader, and all three answer.
    c.member(1).start();
    c.wait_healthy();
    assert_eq!(c.members[1].http_get("/livez").map(|r| r.0), Some(200));
    assert_eq!(c.members[1].http_get("/readyz").map(|r| r.0), Some(200));
}

/// A member left without a quorum may still name the old leader (pre-vote keeps it from
/// starting an election), but it cannot reach a read point: it is neither healthy nor ready,
/// and it stays alive.
#[test]
fn a_member_cut_off_from_its_quorum_is_alive_but_neither_healthy_nor_ready() {
    let mut c = Cluster::start(3, Options::default());
    let leader = c.wait_leader();
    let survivor = (0..3).find(|i| *i != leader).expect("a follower");
    let other = (0..3)
        .find(|i| *i != leader && *i != survivor)
        .expect("another follower");
    c.member(leader).kill();
    c.member(other).kill();
    let m = &c.members[survivor];
    let mut health = None;
    assert!(
        wait_until(DEADLINE, || {
            health = m.http_get("/health");
            health.as_ref().is_some_and(|(code, _)| *code == 503)
        }),
        "{health:?}"
    );
    assert!(wait_until(DEADLINE, || m.http_get("/readyz").is_some_and(
        |(code, body)| code == 503 && body.contains("[-]linearizable_read failed")
    )));
    assert_eq!(m.http_get("/livez"), Some((200, "ok\n".to_string())));
}
