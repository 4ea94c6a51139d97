//! Compatibility with the real client: Debian's `etcdctl` 3.4 against Mend clusters, each
//! check asserted on what etcdctl prints.

mod cluster;

use cluster::{Cluster, Options, fails, ok};

#[test]
fn single_member_serves_put_get_delete_through_etcdctl() {
    let c = Cluster::start(1, Options::default());
    assert_eq!(ok(c.etcdctl(0, &["put", "foo", "bar"])), "OK\n");
    assert_eq!(ok(c.etcdctl(0, &["put", "foo2", "baz"])), "OK\n");
    assert_eq!(ok(c.etcdctl(0, &["get", "foo"])), "foo\nbar\n");
    assert_eq!(
        ok(c.etcdctl(0, &["get", "foo", "--prefix"])),
        "foo\nbar\nfoo2\nbaz\n"
    );
    assert_eq!(
        ok(c.etcdctl(0, &["get", "foo", "--prefix", "--keys-only"])),
        "foo\n\nfoo2\n\n"
    );
    assert_eq!(
        ok(c.etcdctl(0, &["get", "foo", "--prefix", "--limit=1"])),
        "foo\nbar\n"
    );
    // Revision 2 is the first put: foo2 did not exist yet.
    assert_eq!(
        ok(c.etcdctl(0, &["get", "foo", "--prefix", "--rev=2"])),
        "foo\nbar\n"
    );
    assert_eq!(ok(c.etcdctl(0, &["del", "foo"])), "1\n");
    assert_eq!(ok(c.etcdctl(0, &["get", "foo"])), "");
    assert_eq!(
        ok(c.etcdctl(0, &["get", "--consistency=s", "foo2"])),
        "foo2\nbaz\n"
    );
}

#[test]
fn get_with_json_output_carries_etcd_header_and_base64_pairs() {
    let c = Cluster::start(1, Options::default());
    ok(c.etcdctl(0, &["put", "k", "v"]));
    let json: serde_json::Value =
        serde_json::from_str(&ok(c.etcdctl(0, &["get", "k", "-w", "json"]))).expect("json");
    let header = &json["header"];
    assert!(header["cluster_id"].as_u64().unwrap_or(0) != 0, "{json}");
    assert!(header["member_id"].as_u64().unwrap_or(0) != 0, "{json}");
    assert_eq!(header["revision"].as_i64(), Some(2), "{json}");
    assert!(header["raft_term"].as_u64().unwrap_or(0) >= 1, "{json}");
    assert_eq!(json["count"].as_i64(), Some(1));
    // base64("k") = "aw==", base64("v") = "dg=="
    assert_eq!(json["kvs"][0]["key"], "aw==");
    assert_eq!(json["kvs"][0]["value"], "dg==");
    assert_eq!(json["kvs"][0]["version"].as_i64(), Some(1));
}

#[test]
fn txn_and_compaction_behave_as_in_etcd() {
    let c = Cluster::start(1, Options::default());
    ok(c.etcdctl(0, &["put", "k", "1"]));
    let txn = |script: &str| {
        ok(cluster::etcdctl_with_input(
            &c.members[0].endpoint(),
            &["txn"],
            Some(script.as_bytes()),
        ))
    };
    assert_eq!(
        txn("value(\"k\") = \"1\"\n\nput k 2\n\nput k 3\n\n"),
        "SUCCESS\n\nOK\n"
    );
    assert_eq!(
        txn("value(\"k\") = \"1\"\n\nput k 4\n\nget k\n\n"),
        "FAILURE\n\nk\n2\n"
    );
    assert_eq!(ok(c.etcdctl(0, &["get", "k"])), "k\n2\n");
    assert_eq!(
        ok(c.etcdctl(0, &["compaction", "3"])),
        "compacted revision 3\n"
    );
    let err = fails(c.etcdctl(0, &["get", "k", "--rev=2"]));
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
}

#[test]
fn bad_input_gets_etcds_errors_and_changes_nothing() {
    let c = Cluster::start(1, Options::default());
    let err = fails(c.etcdctl(0, &["put", "", "v"]));
    assert!(err.contains("etcdserver: key is not provided"), "{err}");
    // Above the server's 1.5 MiB limit, below etcdctl's own 2 MiB send limit.
    let big = vec![b'x'; 1_700_000];
    let err = fails(cluster::etcdctl_with_input(
        &c.members[0].endpoint(),
        &["put", "big"],
        Some(&big),
    ));
    assert!(err.contains("request is too large"), "{err}");
    let err = fails(c.etcdctl(0, &["get", "k", "--rev=100"]));
    assert!(
        err.contains("etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );
    let err = fails(c.etcdctl(0, &["member", "remove", "1234"]));
    assert!(err.contains("etcdserver: member not found"), "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(c.etcdctl(0, &["get", "", "--prefix", "-w", "json"])))
            .expect("json");
    assert_eq!(json["header"]["revision"].as_i64(), Some(1), "{json}");
}

#[test]
fn endpoint_status_health_and_hashkv_report_every_member() {
    let c = Cluster::start(3, Options::default());
    ok(c.etcdctl(0, &["put", "a", "1"]));
    let endpoints = c.endpoints();
    let out = cluster::etcdctl(&endpoints, &["endpoint", "status"]);
    let status = ok(out.clone());
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{status} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.len(), 3, "{status}");
    let leaders = lines
        .iter()
        .filter(|l| l.contains(", true, false, "))
        .count();
    assert_eq!(leaders, 1, "exactly one leader, no learners:\n{status}");
    for line in &lines {
        assert!(line.contains("3.5.0"), "{line}");
    }
    // etcdctl 3.4 prints health reports on stderr.
    let out = cluster::etcdctl(&endpoints, &["endpoint", "health"]);
    assert!(out.status.success());
    let health = String::from_utf8_lossy(&out.stderr);
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    // Every member applied the put: equal hashes at the same revision.
    assert!(cluster::wait_until(cluster::DEADLINE, || {
        let out = ok(cluster::etcdctl(
            &endpoints,
            &["endpoint", "hashkv", "--rev=2"],
        ));
        let hashes: std::collections::BTreeSet<&str> =
            out.lines().filter_map(|l| l.rsplit(", ").next()).collect();
        hashes.len() == 1 && out.lines().count() == 3
    }));
}

#[test]
fn auth_users_roles_and_permissions_work_through_etcdctl() {
    let c = Cluster::start(3, Options::default());
    let ctl = |i: usize, args: &[&str]| c.etcdctl(i, args);
    assert_eq!(
        ok(ctl(0, &["user", "add", "root:rootpw"])),
        "User root created\n"
    );
    assert_eq!(
        ok(ctl(0, &["user", "add", "alice:alicepw"])),
        "User alice created\n"
    );
    assert_eq!(ok(ctl(0, &["role", "add", "app"])), "Role app created\n");
    assert_eq!(
        ok(ctl(
            0,
            &[
                "role",
                "grant-permission",
                "app",
                "readwrite",
                "app/",
                "--prefix=true"
            ]
        )),
        "Role app updated\n"
    );
    assert_eq!(
        ok(ctl(0, &["user", "grant-role", "alice", "app"])),
        "Role app is granted to user alice\n"
    );
    assert_eq!(
        ok(ctl(0, &["user", "grant-role", "root", "root"])),
        "Role root is granted to user root\n"
    );
    assert_eq!(ok(ctl(0, &["auth", "enable"])), "Authentication Enabled\n");

    // Tokens are registered through raft: a login on one member works on every member.
    assert_eq!(
        ok(ctl(1, &["--user", "alice:alicepw", "put", "app/x", "1"])),
        "OK\n"
    );
    assert_eq!(
        ok(ctl(2, &["--user", "alice:alicepw", "get", "app/x"])),
        "app/x\n1\n"
    );
    let err = fails(ctl(2, &["--user", "alice:alicepw", "put", "other", "1"]));
    assert!(err.contains("etcdserver: permission denied"), "{err}");
    let err = fails(ctl(0, &["get", "app/x"]));
    assert!(err.contains("etcdserver: user name is empty"), "{err}");
    let err = fails(ctl(0, &["--user", "alice:wrong", "get", "app/x"]));
    assert!(
        err.contains("etcdserver: authentication failed, invalid user ID or password"),
        "{err}"
    );
    assert_eq!(
        ok(ctl(0, &["--user", "root:rootpw", "role", "get", "app"])),
        "Role app\nKV Read:\n\t[app/, app0) (prefix app/)\nKV Write:\n\t[app/, app0) (prefix app/)\n"
    );
    let users = ok(ctl(1, &["--user", "root:rootpw", "user", "list"]));
    assert_eq!(users, "alice\nroot\n");
}

#[test]
fn member_list_add_and_remove_through_etcdctl() {
    let mut c = Cluster::start(3, Options::default());
    let list = ok(c.etcdctl(0, &["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    for name in ["node1", "node2", "node3"] {
        assert!(
            list.lines()
                .any(|l| l.contains(&format!(", started, {name}, ")) && l.ends_with(", false")),
            "{list}"
        );
    }
    let joiner = c.prepare_joiner("node4");
    let peer = c.members[joiner].peer_url();
    let added = ok(c.etcdctl(
        1,
        &[
            "member",
            "add",
            "node4",
            &format!("--peer-urls={peer}"),
            "--learner",
        ],
    ));
    assert!(
        added.contains("Member ") && added.contains(" added to cluster "),
        "{added}"
    );
    assert!(
        added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added}"
    );
    // The member that served MemberAdd answers after applying it; others may lag a moment.
    let list = ok(c.etcdctl(1, &["member", "list"]));
    let line = list
        .lines()
        .find(|l| l.contains(&peer))
        .unwrap_or_else(|| panic!("new member missing:\n{list}"));
    assert!(
        line.contains(", unstarted, ") && line.ends_with(", true"),
        "{line}"
    );
    let id = line.split(", ").next().expect("id").to_string();
    assert_eq!(
        ok(c.etcdctl(1, &["member", "remove", &id])),
        // etcdctl prints IDs with %16x.
        format!(
            "Member {id:>16} removed from cluster {:>16}\n",
            cluster_id(&c)
        )
    );
    let list = ok(c.etcdctl(1, &["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
}

#[test]
fn move_leader_hands_leadership_to_the_chosen_member() {
    let c = Cluster::start(3, Options::default());
    let leader = c.wait_leader();
    let target = (leader + 1) % 3;
    let target_id = member_id(&c, target);
    let out = ok(cluster::etcdctl(
        &c.endpoints(),
        &["move-leader", &target_id],
    ));
    assert!(out.contains("Leadership transferred from "), "{out}");
    assert!(out.contains(&format!(" to {target_id}")), "{out}");
    assert!(cluster::wait_until(cluster::DEADLINE, || c.leader() == Some(target)));
}

/// Member `i`'s ID in hex, as etcdctl prints it.
fn member_id(c: &Cluster, i: usize) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&ok(c.etcdctl(i, &["endpoint", "status", "-w", "json"])))
            .expect("json");
    format!(
        "{:x}",
        json[0]["Status"]["header"]["member_id"]
            .as_u64()
            .expect("member_id")
    )
}

/// The cluster ID in hex, as etcdctl prints it.
fn cluster_id(c: &Cluster) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&ok(c.etcdctl(0, &["endpoint", "status", "-w", "json"])))
            .expect("json");
    format!(
        "{:x}",
        json[0]["Status"]["header"]["cluster_id"]
            .as_u64()
            .expect("cluster_id")
    )
}

#[test]
fn member_update_changes_peer_urls_and_the_last_voter_cannot_be_removed() {
    let c = Cluster::start(1, Options::default());
    let id = member_id(&c, 0);
    let err = fails(c.etcdctl(0, &["member", "remove", &id]));
    assert!(
        err.contains("cannot remove the last voting member"),
        "{err}"
    );
    // Updating to the URL it already has changes nothing but must be accepted.
    let peer = c.members[0].peer_url();
    let out = ok(c.etcdctl(
        0,
        &["member", "update", &id, &format!("--peer-urls={peer}")],
    ));
    assert!(
        out.contains(&format!("Member {id:>16} updated in cluster")),
        "{out}"
    );
    let err = fails(c.etcdctl(
        0,
        &["member", "update", "1234", &format!("--peer-urls={peer}")],
    ));
    assert!(err.contains("etcdserver: member not found"), "{err}");
    assert_eq!(ok(c.etcdctl(0, &["put", "still", "serving"])), "OK\n");
}

#[test]
fn the_client_port_serves_http1_next_to_grpc_as_etcd_does() {
    let c = Cluster::start(1, Options::default());
    let m = &c.members[0];
    // A client that connects and sends nothing holds up nobody.
    let _idle = std::net::TcpStream::connect(("127.0.0.1", m.client_port)).expect("connect");
    assert_eq!(ok(c.etcdctl(0, &["put", "k", "v"])), "OK\n");
    let (code, version) = m.client_http_get("/version").expect("version");
    assert_eq!(code, 200);
    let version: serde_json::Value = serde_json::from_str(&version).expect("version json");
    assert_eq!(
        version,
        serde_json::json!({"etcdserver": "3.5.0", "etcdcluster": "3.5.0"})
    );
    assert_eq!(
        m.client_http_get("/health"),
        Some((200, r#"{"health":"true","reason":""}"#.to_string()))
    );
    assert_eq!(m.client_http_get("/livez").map(|r| r.0), Some(200));
    assert_eq!(m.client_http_get("/readyz").map(|r| r.0), Some(200));
    let (code, metrics) = m.client_http_get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("mend_is_leader 1"), "{metrics}");
    assert_eq!(m.client_http_get("/nope").map(|r| r.0), Some(404));
    assert_eq!(ok(c.etcdctl(0, &["get", "k", "--print-value-only"])), "v\n");
}

#[test]
fn metrics_health_and_readiness_endpoints_report_the_member() {
    let c = Cluster::start(1, Options::default());
    ok(c.etcdctl(0, &["put", "k", "v"]));
    let m = &c.members[0];
    let (code, metrics) = m.http_get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    for name in [
        "mend_auth_revision",
        "mend_consistent_index",
        "mend_applied_index",
        "mend_mvcc_revision",
        "mend_mvcc_keys",
        "mend_db_size_bytes",
        "mend_apply_rejections_total",
        "mend_is_leader",
        "mend_leader_changes_seen_total",
        "mend_proposals_committed_total",
        "mend_proposals_failed_total",
        "mend_unsafe_reproduce_etcd_11651",
        "etcd_server_quota_backend_bytes",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{metrics}"
        );
    }
    assert_eq!(m.metric("mend_is_leader"), Some(1.0));
    assert_eq!(m.metric("mend_mvcc_keys"), Some(1.0));
    assert_eq!(m.metric("mend_mvcc_revision"), Some(2.0));
    assert_eq!(m.metric("mend_unsafe_reproduce_etcd_11651"), Some(0.0));
    assert_eq!(
        m.metric("etcd_server_quota_backend_bytes"),
        Some(2.0 * 1024.0 * 1024.0 * 1024.0),
        "etcd's default quota"
    );
    assert!(m.metric("mend_proposals_committed_total").unwrap_or(0.0) >= 1.0);
    let (code, health) = m.http_get("/health").expect("health");
    assert_eq!(
        (code, health.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    assert_eq!(m.http_get("/readyz").map(|(code, _)| code), Some(200));
}

/// Every family's `# TYPE` in a Prometheus text exposition.
fn types(text: &str) -> std::collections::BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect()
}

/// The value of `series` (a name with its labels, as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// etcd's metrics a member must export, with etcd's types (names as etcd 3.4 exposes them).
const ETCD_METRICS: [(&str, &str); 22] = [
    ("etcd_server_has_leader", "gauge"),
    ("etcd_server_is_leader", "gauge"),
    ("etcd_server_leader_changes_seen_total", "counter"),
    ("etcd_server_proposals_committed_total", "gauge"),
    ("etcd_server_proposals_applied_total", "gauge"),
    ("etcd_server_proposals_pending", "gauge"),
    ("etcd_server_proposals_failed_total", "counter"),
    ("etcd_server_quota_backend_bytes", "gauge"),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge"),
    ("etcd_debugging_auth_revision", "gauge"),
    ("etcd_debugging_mvcc_keys_total", "gauge"),
    ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
    ("etcd_disk_backend_commit_duration_seconds", "histogram"),
    ("etcd_network_peer_round_trip_time_seconds", "histogram"),
    ("grpc_server_started_total", "counter"),
    ("grpc_server_handled_total", "counter"),
    ("grpc_server_handling_seconds", "histogram"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_start_time_seconds", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_cpu_seconds_total", "counter"),
];

#[test]
fn metrics_carry_etcds_names_types_and_labels_and_move_with_traffic() {
    let c = Cluster::start(3, Options::default());
    let leader = c.wait_leader();
    let m = &c.members[0];
    let scrape = |i: usize| c.members[i].http_get("/metrics").expect("metrics").1;
    let before = scrape(0);
    let committed = |text: &str| sample(text, "etcd_server_proposals_committed_total");
    let applied = |text: &str| sample(text, "etcd_server_proposals_applied_total");
    for i in 0..5 {
        assert_eq!(ok(c.etcdctl(0, &["put", &format!("k{i}"), "v"])), "OK\n");
    }
    ok(c.etcdctl(0, &["compaction", "4"]));
    let err = fails(c.etcdctl(0, &["get", "k0", "--rev=2"]));
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );

    // The leader has sent raft messages to both followers: every family has series there,
    // on the client port and on --listen-metrics-urls alike.
    let followers: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| member_id(&c, i))
        .collect();
    let rtt = |text: &str, to: &str| {
        sample(
            text,
            &format!("etcd_network_peer_round_trip_time_seconds_count{{To=\"{to}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(
        cluster::wait_until(cluster::DEADLINE, || {
            let text = scrape(leader);
            followers.iter().all(|to| rtt(&text, to) > 0.0)
        }),
        "no round trips to {followers:?}:\n{}",
        scrape(leader)
    );
    let l = &c.members[leader];
    for (port, text) in [
        (
            "client port",
            l.client_http_get("/metrics").expect("metrics").1,
        ),
        ("metrics URL", l.http_get("/metrics").expect("metrics").1),
    ] {
        let types = types(&text);
        for (name, kind) in ETCD_METRICS {
            assert_eq!(
                types.get(name),
                Some(&kind),
                "{name} on the {port}:\n{text}"
            );
        }
        // etcd's bucket layouts.
        for series in [
            r#"etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"}"#,
            r#"etcd_disk_wal_fsync_duration_seconds_bucket{le="8.192"}"#,
            r#"etcd_disk_backend_commit_duration_seconds_bucket{le="0.001"}"#,
            r#"etcd_disk_backend_commit_duration_seconds_bucket{le="+Inf"}"#,
            &format!(
                r#"etcd_network_peer_round_trip_time_seconds_bucket{{To="{}",le="0.0001"}}"#,
                followers[0]
            ),
            &format!(
                r#"etcd_network_peer_round_trip_time_seconds_bucket{{To="{}",le="3.2768"}}"#,
                followers[1]
            ),
            r#"grpc_server_handling_seconds_bucket{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary",le="0.005"}"#,
            r#"grpc_server_handling_seconds_bucket{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream",le="10"}"#,
        ] {
            assert!(sample(&text, series).is_some(), "{series} on the {port}");
        }
        assert_eq!(sample(&text, "etcd_server_is_leader"), Some(1.0), "{port}");
        assert!(sample(&text, "etcd_disk_wal_fsync_duration_seconds_count") > Some(0.0));
        assert!(sample(&text, "etcd_disk_backend_commit_duration_seconds_count") > Some(0.0));
    }

    // The member the client talked to: its figures moved with the traffic.
    let after = scrape(0);
    for text in [&before, &after] {
        assert_eq!(sample(text, "etcd_server_has_leader"), Some(1.0));
        assert_eq!(sample(text, "etcd_server_proposals_pending"), Some(0.0));
        assert_eq!(
            sample(text, "etcd_server_proposals_failed_total"),
            Some(0.0)
        );
    }
    let grew = |what: &str, of: &dyn Fn(&str) -> Option<f64>| {
        let (was, is) = (of(&before).expect(what), of(&after).expect(what));
        assert!(
            is >= was + 6.0,
            "{what}: {was} then {is} after 5 puts and a compaction"
        );
    };
    grew("committed", &committed);
    grew("applied", &applied);
    assert_eq!(
        sample(&after, "etcd_debugging_auth_revision"),
        sample(&after, "mend_auth_revision")
    );
    assert_eq!(sample(&after, "etcd_debugging_mvcc_keys_total"), Some(5.0));
    let size = sample(&after, "etcd_mvcc_db_total_size_in_bytes").unwrap_or(0.0);
    let in_use = sample(&after, "etcd_mvcc_db_total_size_in_use_in_bytes").unwrap_or(0.0);
    assert!(0.0 < in_use && in_use <= size, "in use {in_use} of {size}");
    let handled = |method: &str, code: &str| {
        sample(
            &after,
            &format!(
                r#"grpc_server_handled_total{{grpc_code="{code}",grpc_method="{method}",grpc_service="etcdserverpb.KV",grpc_type="unary"}}"#
            ),
        )
    };
    assert_eq!(handled("Put", "OK"), Some(5.0), "{after}");
    assert_eq!(
        handled("Put", "InvalidArgument"),
        Some(0.0),
        "every code from the start"
    );
    assert_eq!(handled("Compact", "OK"), Some(1.0));
    assert_eq!(
        handled("Range", "OutOfRange"),
        Some(1.0),
        "the compacted read"
    );
    assert_eq!(
        sample(
            &after,
            r#"grpc_server_started_total{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"grpc_server_handling_seconds_count{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#
        ),
        Some(5.0)
    );
    assert!(sample(&after, "process_resident_memory_bytes") > Some(0.0));
    assert!(sample(&after, "process_open_fds") > Some(0.0));
    assert!(sample(&after, "process_start_time_seconds") > Some(1.0e9));
    assert_eq!(
        m.http_get("/metrics").map(|(code, _)| code),
        Some(200),
        "still scrapes"
    );
}

#[test]
fn an_inverted_range_is_empty_and_changes_nothing() {
    let c = Cluster::start(1, Options::default());
    ok(c.etcdctl(0, &["put", "a", "1"]));
    ok(c.etcdctl(0, &["put", "c", "3"]));
    // [c, a) holds nothing, as in etcd.
    assert_eq!(ok(c.etcdctl(0, &["get", "c", "a"])), "");
    assert_eq!(ok(c.etcdctl(0, &["del", "c", "a"])), "0\n");
    assert_eq!(ok(c.etcdctl(0, &["get", "a", "d"])), "a\n1\nc\n3\n");
}

#[test]
fn a_malformed_header_block_ends_only_its_connection_without_a_panic() {
    use std::io::{ErrorKind, Read, Write};
    let c = Cluster::start(1, Options::default());
    let address = c.members[0].endpoint().replace("http://", "");
    let mut client = std::net::TcpStream::connect(&address).expect("connected");
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout set");
    let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame, then HEADERS (END_HEADERS | END_STREAM) on stream 1 whose block
    // is a dynamic table size update cut off after its first octet.
    stream.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    stream.extend_from_slice(&[0, 0, 1, 0x1, 0x5, 0, 0, 0, 1, 0x3f]);
    client.write_all(&stream).expect("sent");
    let mut sink = [0u8; 1024];
    loop {
        match client.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection was not ended: {e}"),
        }
    }
    assert_eq!(ok(c.etcdctl(0, &["put", "k", "v"])), "OK\n");
    let log = c.members[0].log();
    assert!(!log.contains("panicked"), "{log}");
}
