//! etcd's maintenance surface through the real client: the backend quota and its NOSPACE alarm
//! (`alarm list`, `alarm disarm`, `defrag`), the root role on maintenance with auth on, lease
//! key names only for those who may read them, Status and Downgrade as etcd 3.5 answers them.

mod cluster;

use std::collections::BTreeSet;

use cluster::{Cluster, DEADLINE, Options, etcdctl_with_input, fails, ok, wait_until};
use storage_node::pb::etcdserverpb::{
    AlarmRequest, AlarmType, AuthenticateRequest, DowngradeRequest, HashKvRequest, HashRequest,
    alarm_request::AlarmAction, auth_client::AuthClient, downgrade_request::DowngradeAction,
    maintenance_client::MaintenanceClient,
};

const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

/// Every member's status as `endpoint status -w json` prints it.
fn status_json(c: &Cluster, i: usize) -> serde_json::Value {
    let out = ok(c.etcdctl(i, &["endpoint", "status", "-w", "json"]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("status json");
    json[0]["Status"].clone()
}

/// `alarm list` through member `i`, one line per alarm, sorted.
fn alarm_list(c: &Cluster, i: usize, user: &[&str]) -> BTreeSet<String> {
    let args: Vec<&str> = user.iter().copied().chain(["alarm", "list"]).collect();
    ok(c.etcdctl(i, &args))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Member IDs in decimal, as alarms name them.
fn member_ids(c: &Cluster) -> BTreeSet<u64> {
    (0..c.members.len())
        .map(|i| {
            status_json(c, i)["header"]["member_id"]
                .as_u64()
                .expect("member_id")
        })
        .collect()
}

/// A client for member `i`'s Maintenance service (and the runtime to drive it).
fn maintenance(
    c: &Cluster,
    i: usize,
) -> (
    tokio::runtime::Runtime,
    MaintenanceClient<tonic::transport::Channel>,
) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let endpoint = c.members[i].endpoint();
    let channel = runtime.block_on(async {
        tonic::transport::Endpoint::from_shared(endpoint)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    });
    (runtime, MaintenanceClient::new(channel))
}

#[test]
fn quota_exhaustion_raises_nospace_on_every_member_and_compact_defrag_disarm_recover() {
    let mut c = Cluster::start(
        3,
        Options {
            quota_backend_bytes: Some(4_000_000),
            ..Options::default()
        },
    );
    let endpoint = c.members[0].endpoint();
    // Five keys rewritten with 75 kB values: the history fills the quota, and compacting it
    // frees nearly everything.
    let value = vec![b'v'; 75_000];
    let mut refused = None;
    for i in 0..200 {
        let out = etcdctl_with_input(&endpoint, &["put", &format!("k{}", i % 5)], Some(&value));
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refused = refused.expect("the quota was never reached");
    assert!(refused.contains(NOSPACE), "{refused}");
    assert!(
        refused.contains("code = ResourceExhausted"),
        "etcd's gRPC code: {refused}"
    );

    // The alarm applied on every member: each lists the same alarms, naming cluster members.
    let ids = member_ids(&c);
    let mut listed = BTreeSet::new();
    assert!(wait_until(DEADLINE, || {
        let lists: Vec<BTreeSet<String>> = (0..3).map(|i| alarm_list(&c, i, &[])).collect();
        listed = lists[0].clone();
        !listed.is_empty() && lists.iter().all(|l| *l == listed)
    }));
    for line in &listed {
        let id: u64 = line
            .strip_prefix("memberID:")
            .and_then(|l| l.strip_suffix(" alarm:NOSPACE "))
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("not etcd's alarm text: {line:?}"));
        assert!(ids.contains(&id), "{line} names no member of {ids:?}");
    }
    for i in 0..3 {
        let errors = status_json(&c, i)["errors"].clone();
        for line in &listed {
            assert!(
                errors
                    .as_array()
                    .is_some_and(|e| e.iter().any(|v| v == line.as_str())),
                "member {i}'s status errors lack {line:?}: {errors}"
            );
        }
    }

    // Writes that need space are refused through every member; the rest is served.
    for i in 0..3 {
        let err = fails(c.etcdctl(i, &["put", "small", "1"]));
        assert!(err.contains(NOSPACE), "{err}");
    }
    let err = fails(c.etcdctl(1, &["lease", "grant", "60"]));
    assert!(err.contains(NOSPACE), "{err}");
    let err = fails(etcdctl_with_input(
        &c.members[2].endpoint(),
        &["txn"],
        Some(b"\nput small 1\n\n\n"),
    ));
    assert!(err.contains(NOSPACE), "{err}");
    assert_eq!(ok(c.etcdctl(1, &["get", "k1", "--keys-only"])), "k1\n\n");
    assert_eq!(ok(c.etcdctl(2, &["del", "k4"])), "1\n");

    // A restarted member keeps the alarm: its own status lists it as soon as it answers.
    c.member(1).stop();
    c.member(1).start();
    c.wait_healthy();
    let errors = status_json(&c, 1)["errors"].clone();
    for line in &listed {
        assert!(
            errors
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == line.as_str())),
            "the restarted member's status lacks {line:?}: {errors}"
        );
    }
    // Members past the quota may have raised their own alarms meanwhile.
    let now_listed = alarm_list(&c, 1, &[]);
    assert!(now_listed.is_superset(&listed), "{now_listed:?} {listed:?}");
    let listed = now_listed;
    let err = fails(c.etcdctl(1, &["put", "small", "1"]));
    assert!(err.contains(NOSPACE), "{err}");

    // etcd 3.5's /health: an active alarm makes every member unhealthy, unless excluded.
    for m in &c.members {
        assert_eq!(
            m.http_get("/health"),
            Some((
                503,
                r#"{"health":"false","reason":"ALARM NOSPACE"}"#.to_string()
            ))
        );
        // Healthy once it reaches a read point, which a loaded machine can delay past the
        // probe's bound.
        assert!(wait_until(DEADLINE, || m
            .http_get("/health?exclude=NOSPACE")
            .is_some_and(|r| r.0 == 200)));
    }

    // Recovery as etcd documents it: compact, defragment every member, disarm.
    let revision = status_json(&c, 0)["header"]["revision"]
        .as_i64()
        .expect("revision");
    assert_eq!(
        ok(c.etcdctl(0, &["compaction", &revision.to_string()])),
        format!("compacted revision {revision}\n")
    );
    let defrag = ok(cluster::etcdctl(&c.endpoints(), &["defrag"]));
    assert_eq!(
        defrag.matches("Finished defragmenting etcd member").count(),
        3,
        "{defrag}"
    );
    for i in 0..3 {
        let db_size = status_json(&c, i)["dbSize"].as_i64().expect("dbSize");
        assert!(
            db_size < 4_000_000,
            "member {i} still holds {db_size} bytes"
        );
    }
    let disarmed: BTreeSet<String> = ok(c.etcdctl(0, &["alarm", "disarm"]))
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(disarmed, listed, "disarm prints what it cleared");
    for i in 0..3 {
        assert!(alarm_list(&c, i, &[]).is_empty());
        assert_eq!(c.members[i].http_get("/health").map(|r| r.0), Some(200));
        assert_eq!(
            ok(c.etcdctl(i, &["put", &format!("after{i}"), "1"])),
            "OK\n"
        );
    }
    assert_eq!(ok(c.etcdctl(2, &["get", "after0"])), "after0\n1\n");
}

#[test]
fn defrag_gives_back_what_compaction_freed_and_status_shows_it() {
    let c = Cluster::start(3, Options::default());
    let endpoint = c.members[0].endpoint();
    let value = vec![b'v'; 75_000];
    for i in 0..60 {
        ok(etcdctl_with_input(
            &endpoint,
            &["put", &format!("k{}", i % 5)],
            Some(&value),
        ));
    }
    let sizes = |i: usize| {
        let s = status_json(&c, i);
        (
            s["dbSize"].as_i64().expect("dbSize"),
            s["dbSizeInUse"].as_i64().expect("dbSizeInUse"),
        )
    };
    let revision = status_json(&c, 0)["header"]["revision"]
        .as_i64()
        .expect("revision");
    ok(c.etcdctl(0, &["compaction", &revision.to_string()]));
    // redb frees a compaction's pages at the next commit.
    ok(c.etcdctl(0, &["put", "after", "1"]));
    let mut before = Vec::new();
    assert!(
        wait_until(DEADLINE, || {
            before = (0..3).map(sizes).collect();
            before.iter().all(|(size, in_use)| in_use * 2 < *size)
        }),
        "compaction frees pages on every member: {before:?}"
    );
    let out = ok(cluster::etcdctl(&c.endpoints(), &["defrag"]));
    assert_eq!(
        out.matches("Finished defragmenting etcd member").count(),
        3,
        "{out}"
    );
    for (i, (size_before, _)) in before.iter().enumerate() {
        let (size, in_use) = sizes(i);
        assert!(
            size * 2 < *size_before,
            "member {i}: {size_before} -> {size}"
        );
        assert!(in_use <= size, "member {i}: {in_use} of {size} in use");
        assert_eq!(ok(c.etcdctl(i, &["get", "k4", "--keys-only"])), "k4\n\n");
    }
}

/// A single member with auth on: `root` (root role) and `alice` (readwrite on `app/`).
fn auth_cluster() -> Cluster {
    let c = Cluster::start(1, Options::default());
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "grant-role", "root", "root"],
        vec!["user", "add", "alice:alicepw"],
        vec!["role", "add", "app"],
        vec![
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix=true",
        ],
        vec!["user", "grant-role", "alice", "app"],
        vec!["auth", "enable"],
    ] {
        ok(c.etcdctl(0, &args));
    }
    c
}

/// A token for `name` from member 0.
fn login(c: &Cluster, name: &str, password: &str) -> String {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let endpoint = c.members[0].endpoint();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        AuthClient::new(channel)
            .authenticate(AuthenticateRequest {
                name: name.into(),
                password: password.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .token
    })
}

const ROOT: [&str; 2] = ["--user", "root:rootpw"];
const ALICE: [&str; 2] = ["--user", "alice:alicepw"];

fn with<'a>(user: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    user.iter().chain(args).copied().collect()
}

#[test]
fn with_auth_on_maintenance_needs_root_as_in_etcd() {
    let c = auth_cluster();
    // etcd answers these with the auth store's own error (gRPC code Unknown).
    let err = fails(c.etcdctl(0, &["endpoint", "hashkv"]));
    assert!(
        err.contains("code = Unknown desc = auth: user name is empty"),
        "{err}"
    );
    let err = fails(c.etcdctl(0, &with(&ALICE, &["endpoint", "hashkv"])));
    assert!(
        err.contains("code = Unknown desc = auth: permission denied"),
        "{err}"
    );
    let out = ok(c.etcdctl(0, &with(&ROOT, &["endpoint", "hashkv"])));
    assert!(out.starts_with(&c.members[0].endpoint()), "{out}");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("s.db");
    let file = file.to_str().expect("path");
    let err = fails(c.etcdctl(0, &with(&ALICE, &["snapshot", "save", file])));
    assert!(err.contains("auth: permission denied"), "{err}");
    let out = ok(c.etcdctl(0, &with(&ROOT, &["snapshot", "save", file])));
    assert!(out.contains("Snapshot saved at"), "{out}");
    let err = fails(c.etcdctl(0, &with(&ALICE, &["defrag"])));
    assert!(err.contains("auth: permission denied"), "{err}");
    let out = ok(c.etcdctl(0, &with(&ROOT, &["defrag"])));
    assert!(out.contains("Finished defragmenting etcd member"), "{out}");

    // Health reads a key: without a user that fails, a permission denied counts as healthy
    // (etcdctl 3.4 prints health on stderr, as it does against etcd 3.4).
    let out = c.etcdctl(0, &["endpoint", "health"]);
    let err = fails(out);
    assert!(
        err.contains("is unhealthy: failed to commit proposal: etcdserver: user name is empty"),
        "{err}"
    );
    let out = c.etcdctl(0, &with(&ALICE, &["endpoint", "health"]));
    assert!(out.status.success());
    let health = String::from_utf8_lossy(&out.stderr);
    assert!(health.contains("is healthy"), "{health}");

    // Status is open; listing alarms needs a user, clearing them root.
    ok(c.etcdctl(0, &["endpoint", "status"]));
    let err = fails(c.etcdctl(0, &["alarm", "list"]));
    assert!(err.contains("etcdserver: user name is empty"), "{err}");
    assert!(alarm_list(&c, 0, &ALICE).is_empty());
    let (runtime, mut client) = maintenance(&c, 0);
    // A member's: an alarm for an ID that is no member is not raised (Mend differs from etcd).
    let member = *member_ids(&c).first().expect("a member");
    let activate = |token: &str| {
        let mut request = tonic::Request::new(AlarmRequest {
            action: AlarmAction::Activate.into(),
            member_id: member,
            alarm: AlarmType::Nospace.into(),
        });
        request
            .metadata_mut()
            .insert("token", token.parse().expect("token"));
        request
    };
    let (alice, root) = (login(&c, "alice", "alicepw"), login(&c, "root", "rootpw"));
    runtime.block_on(async {
        let status = client
            .alarm(activate(&alice))
            .await
            .expect_err("raising needs root");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "etcdserver: permission denied");
        client.alarm(activate(&root)).await.expect("root raises");
    });
    let raised = BTreeSet::from([format!("memberID:{member} alarm:NOSPACE ")]);
    assert_eq!(alarm_list(&c, 0, &ALICE), raised);
    let err = fails(c.etcdctl(0, &with(&ALICE, &["alarm", "disarm"])));
    assert!(err.contains("etcdserver: permission denied"), "{err}");
    let disarmed = ok(c.etcdctl(0, &with(&ROOT, &["alarm", "disarm"])));
    assert_eq!(disarmed, format!("memberID:{member} alarm:NOSPACE \n"));
    let err = fails(c.etcdctl(0, &with(&ALICE, &["move-leader", "1"])));
    assert!(err.contains("etcdserver: permission denied"), "{err}");

    // Hash and Downgrade too.
    runtime.block_on(async {
        let status = client
            .hash(HashRequest {})
            .await
            .expect_err("hash needs root");
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert_eq!(status.message(), "auth: user name is empty");
        let status = client
            .downgrade(DowngradeRequest {
                action: DowngradeAction::Validate.into(),
                version: "3.4".into(),
            })
            .await
            .expect_err("downgrade needs root");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "etcdserver: user name is empty");
    });
}

/// The lease ID `lease grant` printed.
fn granted_id(out: &str) -> String {
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease ID in {out:?}"))
        .to_string()
}

#[test]
fn lease_keys_are_shown_and_revoked_only_with_permission_on_every_key() {
    let c = auth_cluster();
    let mixed = granted_id(&ok(c.etcdctl(0, &with(&ROOT, &["lease", "grant", "600"]))));
    ok(c.etcdctl(
        0,
        &with(&ROOT, &["put", "app/a", "1", &format!("--lease={mixed}")]),
    ));
    ok(c.etcdctl(
        0,
        &with(
            &ROOT,
            &["put", "secret/b", "2", &format!("--lease={mixed}")],
        ),
    ));
    let mine = granted_id(&ok(c.etcdctl(0, &with(&ALICE, &["lease", "grant", "600"]))));
    ok(c.etcdctl(
        0,
        &with(&ALICE, &["put", "app/c", "3", &format!("--lease={mine}")]),
    ));

    // Without key names anyone may ask; with them, read permission on every key is needed
    // (etcd's fix for CVE-2023-32082).
    let out = ok(c.etcdctl(0, &with(&ALICE, &["lease", "timetolive", &mixed])));
    assert!(out.contains("granted with TTL(600s)"), "{out}");
    let err = fails(c.etcdctl(0, &with(&ALICE, &["lease", "timetolive", &mixed, "--keys"])));
    assert!(err.contains("etcdserver: permission denied"), "{err}");
    let err = fails(c.etcdctl(0, &["lease", "timetolive", &mixed, "--keys"]));
    assert!(err.contains("etcdserver: user name is empty"), "{err}");
    let out = ok(c.etcdctl(0, &with(&ROOT, &["lease", "timetolive", &mixed, "--keys"])));
    assert!(out.contains("attached keys([app/a secret/b])"), "{out}");
    let out = ok(c.etcdctl(0, &with(&ALICE, &["lease", "timetolive", &mine, "--keys"])));
    assert!(out.contains("attached keys([app/c])"), "{out}");

    // Revoking deletes the keys: write permission on every one is needed.
    let err = fails(c.etcdctl(0, &with(&ALICE, &["lease", "revoke", &mixed])));
    assert!(err.contains("etcdserver: permission denied"), "{err}");
    assert_eq!(
        ok(c.etcdctl(0, &with(&ROOT, &["get", "secret/b"]))),
        "secret/b\n2\n"
    );
    let out = ok(c.etcdctl(0, &with(&ALICE, &["lease", "revoke", &mine])));
    assert!(out.contains("revoked"), "{out}");
    let out = ok(c.etcdctl(0, &with(&ROOT, &["lease", "revoke", &mixed])));
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(
        ok(c.etcdctl(0, &with(&ROOT, &["get", "app/", "--prefix"]))),
        ""
    );
}

#[test]
fn hash_covers_the_backend_and_hashkv_reports_its_revisions_on_every_member() {
    let c = Cluster::start(3, Options::default());
    for i in 0..6 {
        ok(c.etcdctl(i % 3, &["put", &format!("k{}", i % 2), &i.to_string()]));
    }
    // Revisions 2..=7 hold the puts; compact below the last two.
    ok(c.etcdctl(0, &["compaction", "6"]));
    let mut answers = Vec::new();
    assert!(wait_until(DEADLINE, || {
        answers = (0..3)
            .map(|i| {
                let (runtime, mut client) = maintenance(&c, i);
                runtime.block_on(async {
                    // A member that has not applied revision 7 yet calls it a future one.
                    let kv = client.hash_kv(HashKvRequest { revision: 7 }).await.ok()?;
                    let kv = kv.into_inner();
                    let hash = client
                        .hash(HashRequest {})
                        .await
                        .expect("hash")
                        .into_inner();
                    Some((kv.hash, kv.compact_revision, kv.hash_revision, hash.hash))
                })
            })
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        !answers.is_empty() && answers.iter().all(|a| *a == answers[0])
    }));
    let (_, compact_revision, hash_revision, hash) = answers[0];
    assert_eq!((compact_revision, hash_revision), (6, 7));
    assert_ne!(hash, 0);
    let (runtime, mut client) = maintenance(&c, 0);
    let status = runtime
        .block_on(client.hash_kv(HashKvRequest { revision: 5 }))
        .expect_err("below the compaction");
    assert_eq!(
        status.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

#[test]
fn status_reports_the_commit_index_and_downgrade_answers_as_an_etcd_that_cannot() {
    let mut c = Cluster::start(3, Options::default());
    ok(c.etcdctl(0, &["put", "k", "v"]));
    let leader = c.wait_leader();
    let (runtime, mut client) = maintenance(&c, leader);
    runtime.block_on(async {
        let refused = |version: &str, action: DowngradeAction| DowngradeRequest {
            action: action.into(),
            version: version.into(),
        };
        for (request, code, message) in [
            (
                refused("3.4", DowngradeAction::Validate),
                tonic::Code::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
            (
                refused("3.4.0", DowngradeAction::Enable),
                tonic::Code::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
            (
                refused("three", DowngradeAction::Validate),
                tonic::Code::InvalidArgument,
                "etcdserver: wrong downgrade target version format",
            ),
            (
                refused("", DowngradeAction::Cancel),
                tonic::Code::FailedPrecondition,
                "etcdserver: no inflight downgrade job",
            ),
        ] {
            let status = client.downgrade(request).await.expect_err("refused");
            assert_eq!((status.code(), status.message()), (code, message));
        }
    });
    let version = status_json(&c, leader)["version"].clone();
    assert_eq!(version, "3.5.0");

    // With its followers stopped, the leader appends a write it cannot commit: raftIndex is
    // the commit index, not the last entry of the log.
    for i in (0..3).filter(|&i| i != leader) {
        c.member(i).stop();
    }
    fails(c.etcdctl(leader, &["--command-timeout=3s", "put", "uncommitted", "v"]));
    let status = status_json(&c, leader);
    let raft_index = status["raftIndex"].as_u64().expect("raftIndex");
    assert_eq!(
        Some(raft_index),
        status["raftAppliedIndex"].as_u64(),
        "{status}"
    );
    let last_log = c.members[leader]
        .metric("mend_raft_index")
        .expect("mend_raft_index");
    assert!(
        last_log > raft_index as f64,
        "the write is in the log ({last_log}) above the commit index ({raft_index})"
    );
}

/// Whether `get k --rev=1` through `endpoint` answers that revision 1 was compacted.
fn history_compacted(endpoint: &str, user: &[&str]) -> bool {
    let args: Vec<&str> = user
        .iter()
        .copied()
        .chain(["get", "k", "--rev=1"])
        .collect();
    let out = cluster::etcdctl(endpoint, &args);
    !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted")
}

#[test]
fn periodic_auto_compaction_drops_history_older_than_its_retention_as_etcd_does() {
    // Two seconds of history: sampled every 200 ms, compacted every 2 s.
    let flags = ["--auto-compaction-retention".to_string(), "2s".to_string()];
    let write = |endpoint: &str, user: &[&str]| {
        for i in 0..3 {
            let value = format!("v{i}");
            let args: Vec<&str> = user.iter().copied().chain(["put", "k", &value]).collect();
            ok(cluster::etcdctl(endpoint, &args));
        }
    };
    let etcd = cluster::Etcd::start(1, &flags);
    write(&etcd.endpoints[0], &[]);
    assert!(
        wait_until(DEADLINE, || history_compacted(&etcd.endpoints[0], &[])),
        "etcd compacts"
    );
    drop(etcd);

    // Mend, with auth on: the member compacts as itself, no user needed.
    let c = Cluster::start(
        3,
        Options {
            extra_args: flags.to_vec(),
            ..Options::default()
        },
    );
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        ok(c.etcdctl(0, args));
    }
    let endpoint = c.members[1].endpoint();
    write(&endpoint, &ROOT);
    assert!(
        wait_until(DEADLINE, || history_compacted(&endpoint, &ROOT)),
        "Mend compacts: {}",
        cluster::tail(&c.logs(), 20)
    );
    // The latest value stays.
    let value = ok(c.etcdctl(2, &with(&ROOT, &["get", "k", "--print-value-only"])));
    assert_eq!(value.trim(), "v2");
}

#[test]
fn auto_compaction_flags_are_refused_in_etcds_words() {
    let refusal = |binary: &str, args: &[&str]| {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = std::process::Command::new(binary)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{binary} {args:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let mend = cluster::storage_node_bin();
    let mend = mend.to_str().expect("path");
    for (args, words) in [
        (
            &[
                "--auto-compaction-mode",
                "bogus",
                "--auto-compaction-retention",
                "1",
            ][..],
            "unknown auto-compaction-mode \"bogus\"",
        ),
        (
            &["--auto-compaction-retention", "abc"],
            "error parsing CompactionRetention: time: invalid duration \"abc\"",
        ),
        (
            &["--auto-compaction-retention", "1.5"],
            "error parsing CompactionRetention: time: missing unit in duration \"1.5\"",
        ),
    ] {
        let etcd = refusal("etcd", args);
        assert!(etcd.contains(words), "etcd: {etcd}");
        let ours = refusal(mend, args);
        assert!(ours.contains(words), "mend: {ours}");
    }
}
