//! Quorum loss in `operator local`: two of three members lose their data for good; the operator
//! says so, naming the survivor, changes nothing until the annotation approves it, then
//! restarts the survivor as a one-member cluster with its data (storage-node's
//! `--force-new-cluster`) and brings the others back as new members, every key at its
//! revisions on every member.

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;
#[path = "common/local_operator.rs"]
mod local_operator;

use cluster::ok;
use crds::StorageClusterStatus;
use local_operator::{LocalOperator, settled};

fn kvs(op: &LocalOperator, endpoint: &str) -> Vec<serde_json::Value> {
    let root = op.root();
    let out = ok(op.etcdctl(
        endpoint,
        &[
            "--user",
            &root,
            "get",
            "--prefix",
            "",
            "--consistency=s",
            "-w",
            "json",
        ],
    ));
    let json: serde_json::Value = serde_json::from_str(&out).expect("get json");
    json["kvs"].as_array().cloned().unwrap_or_default()
}

fn available(
    s: &StorageClusterStatus,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == "Available")
}

#[test]
fn a_lost_majority_is_reported_then_recovered_from_the_survivor_on_approval() {
    let mut op = LocalOperator::start_with("Automatic", false);
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.auth_on()
    });
    let root = op.root();
    let endpoint = op.endpoints()[0].clone();
    for i in 0..30 {
        ok(op.etcdctl(
            &endpoint,
            &["--user", &root, "put", &format!("k{i:02}"), "v"],
        ));
    }
    ok(op.etcdctl(&endpoint, &["--user", &root, "put", "k00", "again"]));
    let node1 = op.endpoints()[0].clone();
    let wanted = op.wait_status("node1 to hold every write", |_| {
        kvs(&op, &node1).len() == 30
    });
    let before = kvs(&op, &node1);
    assert!(wanted.members.len() == 3);

    // node2 and node3 lose their data for good while the operator is down.
    assert!(op.interrupt(), "the operator stops its members cleanly");
    for name in ["node2", "node3"] {
        std::fs::remove_dir_all(op.dir().join(name)).expect("delete data");
    }
    op.spawn();
    // Reported as soon as node2 and node3 are found without data; node1 is named once it
    // answers.
    let lost = op.wait_status("the loss to be reported, naming node1", |s| {
        available(s).is_some_and(|c| c.reason == "QuorumLost" && c.message.contains("annotate"))
    });
    let message = available(&lost)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("node2, node3 lost their data")
            && message.contains("annotate mend.dev/recover-quorum=node1"),
        "{message}"
    );
    assert!(
        !op.dir().join("node2").exists() && !op.dir().join("node3").exists(),
        "nothing is rebuilt before the approval"
    );

    op.set_annotation("Automatic", "mend.dev/recover-quorum", "node1");
    let recovered = op.wait_status("three members again, agreeing", |s| {
        settled(s) && s.healing.as_ref().is_none_or(|h| h.step.is_none())
    });
    assert_eq!(recovered.members.len(), 3);
    for endpoint in op.endpoints() {
        assert_eq!(
            kvs(&op, &endpoint),
            before,
            "{endpoint}: every key at its revisions"
        );
    }
    ok(op.etcdctl(&op.endpoints()[2], &["--user", &root, "put", "after", "v"]));
    let log = op.plain_log();
    assert!(log.contains("QuorumRecovered"), "{log}");
}
