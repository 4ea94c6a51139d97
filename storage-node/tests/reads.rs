//! Reads served from a member's state, as etcd serves them: ranges and txns that write
//! nothing reach no raft log; linearizable ones wait for a read point the leader confirmed
//! with a quorum, serializable ones need nothing but the member. Side by side with etcd 3.4.

mod cluster;

use cluster::{Cluster, DEADLINE, Etcd, HttpResponse, Options, etcdctl, etcdctl_with_input};
use cluster::{fails, ok, wait_until};

fn txn(endpoint: &str, user: Option<&str>, script: &str) -> std::process::Output {
    let mut args = vec![];
    if let Some(user) = user {
        args.extend(["--user", user]);
    }
    args.push("txn");
    etcdctl_with_input(endpoint, &args, Some(script.as_bytes()))
}

/// Every member's raft index once they all report the same one.
fn settled_raft_index(endpoints: &[String]) -> u64 {
    let mut index = None;
    let settled = wait_until(DEADLINE, || {
        let indexes: Vec<Option<u64>> = endpoints
            .iter()
            .map(|e| {
                let out = etcdctl(e, &["endpoint", "status", "-w", "json"]);
                let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                json[0]["Status"]["raftIndex"].as_u64()
            })
            .collect();
        index = indexes[0];
        index.is_some() && indexes.iter().all(|i| *i == index)
    });
    assert!(settled, "members' raft indexes did not settle");
    index.unwrap_or_default()
}

/// Writes through the first member, then runs read-only txns through every member: each sees
/// the acknowledged write, and no member's raft log grows. A txn that writes does grow it.
fn read_only_txns_reach_no_log(endpoints: &[String]) {
    assert_eq!(ok(etcdctl(&endpoints[0], &["put", "k", "v1"])), "OK\n");
    let before = settled_raft_index(endpoints);
    for (i, endpoint) in endpoints.iter().enumerate() {
        assert_eq!(
            ok(txn(
                endpoint,
                None,
                "value(\"k\") = \"v1\"\n\nget k\n\nget nope\n\n"
            )),
            "SUCCESS\n\nk\nv1\n",
            "member {i}"
        );
        assert_eq!(
            ok(txn(
                endpoint,
                None,
                "version(\"k\") > \"5\"\n\nget k\n\nget k --prefix --keys-only\n\n"
            )),
            "FAILURE\n\nk\n\n",
            "member {i}"
        );
    }
    assert_eq!(
        settled_raft_index(endpoints),
        before,
        "read-only txns were logged"
    );
    // Each write is acknowledged through one member and at once visible through the others.
    for (i, endpoint) in endpoints.iter().enumerate() {
        let value = format!("w{i}");
        let next = &endpoints[(i + 1) % endpoints.len()];
        assert_eq!(
            ok(txn(endpoint, None, &format!("\nput k {value}\n\n\n"))),
            "SUCCESS\n\nOK\n"
        );
        assert_eq!(
            ok(txn(
                next,
                None,
                &format!("value(\"k\") = \"{value}\"\n\nget k\n\n\n")
            )),
            format!("SUCCESS\n\nk\n{value}\n")
        );
    }
    assert!(settled_raft_index(endpoints) >= before + endpoints.len() as u64);
}

#[test]
fn read_only_txns_see_every_acknowledged_write_and_reach_no_raft_log_as_in_etcd() {
    let etcd = Etcd::start(3, &[]);
    read_only_txns_reach_no_log(&etcd.endpoints);
    let c = Cluster::start(3, Options::default());
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    read_only_txns_reach_no_log(&endpoints);
}

/// Turns auth on with a user who may read only keys under `a`; returns its `--user`.
fn reader_of_a(endpoint: &str) -> &'static str {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "--prefix=true",
            "read",
            "a",
        ],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "reader"],
        &["auth", "enable"],
    ] {
        ok(etcdctl(endpoint, args));
    }
    "alice:alicepw"
}

/// What a user who may read only `a...` gets from read-only txns, in etcd's words.
fn permitted_reads(endpoint: &str) -> Vec<String> {
    ok(etcdctl(
        endpoint,
        &["--user", "root:rootpw", "put", "a1", "x"],
    ));
    ok(etcdctl(
        endpoint,
        &["--user", "root:rootpw", "put", "b1", "y"],
    ));
    let alice = Some("alice:alicepw");
    let scripts = [
        "value(\"a1\") = \"x\"\n\nget a1\n\n\n",
        // A compare on a key the user may not read refuses the txn, whichever branch runs.
        "value(\"b1\") = \"y\"\n\nget a1\n\n\n",
        "\nget a1\n\nget b1\n\n\n",
        "\nget a --prefix\n\n\n",
    ];
    scripts
        .iter()
        .map(|script| {
            let out = txn(endpoint, alice, script);
            if out.status.success() {
                String::from_utf8_lossy(&out.stdout).into_owned()
            } else {
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                err.lines()
                    .find_map(|l| l.split_once("Error: ").map(|(_, e)| e.to_string()))
                    .unwrap_or(err)
            }
        })
        .collect()
}

#[test]
fn read_only_txns_are_checked_against_the_callers_permissions_as_in_etcd() {
    let etcd = Etcd::start(1, &[]);
    assert_eq!(reader_of_a(&etcd.endpoints[0]), "alice:alicepw");
    let expected = permitted_reads(&etcd.endpoints[0]);
    assert_eq!(expected[0], "SUCCESS\n\na1\nx\n");
    assert!(expected[1].contains("permission denied"), "{expected:?}");
    let c = Cluster::start(3, Options::default());
    reader_of_a(&c.members[0].endpoint());
    // Served by a follower as well as by the leader.
    let follower = (0..3).find(|i| *i != c.wait_leader()).expect("a follower");
    assert_eq!(permitted_reads(&c.members[follower].endpoint()), expected);
}

/// A member without a quorum cannot confirm a read point: it refuses linearizable read-only
/// txns, and still serves txns of serializable ranges.
#[test]
fn a_member_cut_off_from_its_quorum_serves_only_serializable_txns() {
    let mut c = Cluster::start(3, Options::default());
    ok(c.etcdctl(0, &["put", "k", "v"]));
    let leader = c.wait_leader();
    let survivor = (0..3).find(|i| *i != leader).expect("a follower");
    assert!(wait_until(DEADLINE, || ok(c.etcdctl(
        survivor,
        &["get", "--consistency=s", "k", "--print-value-only"]
    )) == "v\n"));
    for i in (0..3).filter(|i| *i != survivor) {
        c.member(i).kill();
    }
    let m = &c.members[survivor];
    // base64("k") = "aw==", base64("v") = "dg=="
    let body = |serializable: bool| {
        format!(
            r#"{{"success":[{{"request_range":{{"key":"aw==","serializable":{serializable}}}}}]}}"#
        )
    };
    let served =
        HttpResponse::post(m.client_port, "/v3/kv/txn", None, &body(true)).expect("an answer");
    assert_eq!(served.status, 200);
    let json: serde_json::Value = serde_json::from_str(&served.body()).expect("json");
    assert_eq!(json["succeeded"], true, "{json}");
    assert_eq!(
        json["responses"][0]["response_range"]["kvs"][0]["value"], "dg==",
        "{json}"
    );
    // etcd's words for a read point it cannot reach: no leader, or none confirmed in time.
    let err = fails(txn(&m.endpoint(), None, "\nget k\n\n\n"));
    assert!(
        err.contains("etcdserver: request timed out") || err.contains("etcdserver: no leader"),
        "{err}"
    );
}
