//! `--force-new-cluster`, etcd's way back from the loss of a majority: a member restarted with
//! it forms a cluster of one with all its data (keys at their revisions, its member ID kept),
//! serves writes, stays so when started again without the flag, and takes new members that
//! catch up from it (as learners, then promoted: what the operator's rebuild does).

mod cluster;

use cluster::{Cluster, DEADLINE, Options, ok, wait_until};

fn kvs(cluster: &Cluster, i: usize) -> Vec<serde_json::Value> {
    let out = ok(cluster.etcdctl(i, &["get", "--prefix", "", "--consistency=s", "-w", "json"]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("get json");
    json["kvs"].as_array().cloned().unwrap_or_default()
}

fn member_list(cluster: &Cluster, i: usize) -> Vec<serde_json::Value> {
    let out = ok(cluster.etcdctl(i, &["member", "list", "-w", "json"]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("member list json");
    json["members"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_survivor_forced_into_a_new_cluster_keeps_its_data_and_takes_new_members() {
    let mut cluster = Cluster::start(3, Options::default());
    let leader = cluster.wait_leader();
    for i in 0..40 {
        ok(cluster.etcdctl(leader, &["put", &format!("k{i:02}"), &format!("v{i}")]));
    }
    ok(cluster.etcdctl(leader, &["put", "k00", "again"]));
    ok(cluster.etcdctl(leader, &["del", "k01"]));
    // node1 has everything once it serves the last write locally.
    assert!(wait_until(DEADLINE, || kvs(&cluster, 0).len() == 39));
    let before = kvs(&cluster, 0);
    let id = member_list(&cluster, 0)
        .into_iter()
        .find(|m| m["name"] == "node1")
        .and_then(|m| m["ID"].as_u64())
        .expect("node1's ID");

    // The majority is gone for good: processes killed, data deleted.
    for i in 0..3 {
        cluster.member(i).kill();
    }
    for i in 1..3 {
        std::fs::remove_dir_all(&cluster.member(i).dir).expect("delete data");
    }
    cluster.member(0).set_extra_args(&["--force-new-cluster"]);
    cluster.member(0).start();
    cluster.wait_healthy();
    let members = member_list(&cluster, 0);
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["ID"].as_u64(), Some(id), "its member ID is kept");
    assert_eq!(kvs(&cluster, 0), before, "every key at its revisions");
    ok(cluster.etcdctl(0, &["put", "after", "v"]));

    // Started again without the flag: still a cluster of one, with the new write.
    assert!(cluster.member(0).stop());
    cluster.member(0).set_extra_args(&[]);
    cluster.member(0).start();
    cluster.wait_healthy();
    assert_eq!(member_list(&cluster, 0).len(), 1);
    assert_eq!(kvs(&cluster, 0).len(), 40);

    // A new member joins it and catches up.
    let joiner = cluster.prepare_joiner("node4");
    let peer = cluster.member(joiner).peer_url();
    let added = ok(cluster.etcdctl(
        0,
        &[
            "member",
            "add",
            "node4",
            "--learner",
            &format!("--peer-urls={peer}"),
            "-w",
            "json",
        ],
    ));
    let added: serde_json::Value = serde_json::from_str(&added).expect("member add json");
    let new_id = format!(
        "{:x}",
        added["member"]["ID"].as_u64().expect("new member ID")
    );
    cluster.member(joiner).start();
    let caught_up = wait_until(DEADLINE, || {
        cluster
            .etcdctl(
                joiner,
                &["get", "--prefix", "", "--consistency=s", "-w", "json"],
            )
            .status
            .success()
            && kvs(&cluster, joiner) == kvs(&cluster, 0)
    });
    assert!(caught_up, "node4 did not catch up:\n{}", cluster.logs());
    // Asked again until the list shows it a voter (an attempt that timed out on a busy machine
    // may have gone through).
    let promoted = wait_until(DEADLINE, || {
        let voter = |m: &serde_json::Value| m["name"] == "node4" && m["isLearner"] != true;
        member_list(&cluster, 0).iter().any(voter)
            || cluster
                .etcdctl(0, &["member", "promote", &new_id])
                .status
                .success()
    });
    assert!(promoted, "node4 was not promoted:\n{}", cluster.logs());
    assert_eq!(member_list(&cluster, joiner).len(), 2);
    ok(cluster.etcdctl(joiner, &["put", "through-node4", "v"]));
}

#[test]
fn force_new_cluster_on_a_member_without_data_is_refused() {
    let mut cluster = Cluster::prepare(1, Options::default());
    cluster.member(0).set_extra_args(&["--force-new-cluster"]);
    cluster.member(0).start();
    let exited = wait_until(DEADLINE, || !cluster.member(0).is_running());
    assert!(
        exited,
        "a new member must not start with --force-new-cluster"
    );
    let log = cluster.member(0).log();
    assert!(
        log.contains("--force-new-cluster needs a member that has data"),
        "{log}"
    );
}
