//! Snapshots through the real client: `etcdctl snapshot save` while clients write, then
//! `storage-node snapshot status` and `snapshot restore` into a new three-member cluster that
//! holds every key at its revision, the leases, users, roles and AuthRevision; damaged files
//! and existing data directories refused.

mod cluster;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cluster::{Cluster, DEADLINE, Options, fails, ok, storage_node_bin, wait_until};
use storage_node::pb::etcdserverpb::{
    HashRequest, PutRequest, kv_client::KvClient, maintenance_client::MaintenanceClient,
};

fn storage_node(args: &[&str]) -> Output {
    Command::new(storage_node_bin())
        .args(args)
        .output()
        .expect("run storage-node")
}

/// Puts `load/<n>` through `endpoint` until `stop`, returning how many were acknowledged.
fn write_load(endpoint: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let mut client = KvClient::connect(endpoint).await.expect("connect");
            let mut acked = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let put = PutRequest {
                    key: format!("load/{acked:06}").into_bytes(),
                    value: vec![b'x'; 512],
                    ..PutRequest::default()
                };
                if client.put(put).await.is_ok() {
                    acked += 1;
                }
            }
            acked
        })
    })
}

/// Every key with its value and revisions, as `get --prefix -w json` lists them.
fn kvs(json: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(json).expect("get json");
    v["kvs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut kv| {
            // The lease ID is compared separately (it is the same; JSON prints it the same).
            kv.as_object_mut().map(|o| o.remove("lease"));
            kv
        })
        .collect()
}

fn restore(file: &Path, c: &Cluster, i: usize) -> Output {
    let m = &c.members[i];
    storage_node(&[
        "snapshot",
        "restore",
        file.to_str().expect("path"),
        "--name",
        &m.name,
        "--data-dir",
        m.dir.to_str().expect("path"),
        "--initial-cluster",
        &c.initial_cluster(),
        "--initial-advertise-peer-urls",
        &m.peer_url(),
        "--initial-cluster-token",
        "restored",
    ])
}

#[test]
fn a_snapshot_saved_under_write_load_restores_into_a_new_cluster_with_every_key_at_its_revision() {
    let source = Cluster::start(3, Options::default());
    // Users, roles, a grant and a lease with a key: restored with the data, and the
    // AuthRevision they leave behind.
    ok(source.etcdctl(0, &["user", "add", "alice:secret"]));
    ok(source.etcdctl(0, &["role", "add", "reader"]));
    ok(source.etcdctl(
        0,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "app/",
            "--prefix=true",
        ],
    ));
    ok(source.etcdctl(0, &["user", "grant-role", "alice", "reader"]));
    let lease = ok(source.etcdctl(0, &["lease", "grant", "3600"]));
    let lease_id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease ID")
        .to_string();
    ok(source.etcdctl(0, &["put", "app/leased", "v", "--lease", &lease_id]));

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|i| write_load(source.members[i].endpoint(), stop.clone()))
        .collect();
    // Save while the writers are busy: wait until some writes went through first.
    assert!(wait_until(DEADLINE, || {
        !ok(source.etcdctl(0, &["get", "load/", "--prefix", "--keys-only"])).is_empty()
    }));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backup.db");
    let saved = ok(source.etcdctl(1, &["snapshot", "save", file.to_str().expect("path")]));
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    stop.store(true, Ordering::Relaxed);
    let acked: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    assert!(acked > 0, "the writers wrote nothing");

    let status: serde_json::Value = serde_json::from_str(&ok(storage_node(&[
        "snapshot",
        "status",
        file.to_str().expect("path"),
        "-w",
        "json",
    ])))
    .expect("status json");
    let revision = status["revision"].as_i64().expect("revision");
    assert!(status["totalKey"].as_u64().unwrap_or(0) > 5, "{status}");
    let expected = kvs(&ok(source.etcdctl(
        0,
        &[
            "get",
            "",
            "--prefix",
            "--rev",
            &revision.to_string(),
            "-w",
            "json",
        ],
    )));
    assert!(
        expected.len() > 1,
        "the snapshot holds the writes made before it"
    );

    let mut restored = Cluster::prepare(3, Options::default());
    for i in 0..3 {
        ok(restore(&file, &restored, i));
    }
    for m in &mut restored.members {
        m.start();
    }
    restored.wait_healthy();
    for i in 0..3 {
        let got = kvs(&ok(restored.etcdctl(
            i,
            &["get", "", "--prefix", "--consistency=s", "-w", "json"],
        )));
        assert_eq!(
            got, expected,
            "member {i} holds the source's keys at revision {revision}"
        );
    }
    assert_eq!(
        ok(restored.etcdctl(0, &["user", "get", "alice"])),
        ok(source.etcdctl(0, &["user", "get", "alice"]))
    );
    assert_eq!(
        ok(restored.etcdctl(0, &["role", "get", "reader"])),
        ok(source.etcdctl(0, &["role", "get", "reader"]))
    );
    let auth_revision = |c: &Cluster, i: usize| c.members[i].metric("mend_auth_revision");
    assert!(auth_revision(&source, 0).is_some());
    for i in 0..3 {
        assert_eq!(auth_revision(&restored, i), auth_revision(&source, 0));
    }
    let ttl = ok(restored.etcdctl(0, &["lease", "timetolive", &lease_id, "--keys"]));
    assert!(ttl.contains("app/leased"), "{ttl}");

    // The new cluster is a cluster: it takes writes, from the revision after the snapshot's,
    // and its members have the new IDs, not the source's.
    let put = ok(restored.etcdctl(0, &["put", "after", "restore", "-w", "json"]));
    let put: serde_json::Value = serde_json::from_str(&put).expect("put json");
    assert_eq!(put["header"]["revision"].as_i64(), Some(revision + 1));
    let members = |c: &Cluster| ok(c.etcdctl(0, &["member", "list", "-w", "json"]));
    let ids = |list: String| -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_str(&list).expect("member list json");
        let mut ids: Vec<u64> = v["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["ID"].as_u64())
            .collect();
        ids.sort();
        ids
    };
    let new_ids = ids(members(&restored));
    assert_eq!(new_ids.len(), 3);
    assert!(
        ids(members(&source)).iter().all(|id| !new_ids.contains(id)),
        "the restored cluster's members are new members"
    );
}

#[test]
fn damaged_snapshots_and_existing_data_directories_are_refused_and_nothing_is_created() {
    let source = Cluster::start(1, Options::default());
    ok(source.etcdctl(0, &["put", "k", "v"]));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("good.db");
    ok(source.etcdctl(0, &["snapshot", "save", file.to_str().expect("path")]));
    let good = std::fs::read(&file).expect("snapshot");

    let target = Cluster::prepare(1, Options::default());
    for (name, bytes) in [
        ("truncated.db", good[..good.len() - 7].to_vec()),
        ("flipped.db", {
            let mut b = good.clone();
            let middle = b.len() / 2;
            b[middle] ^= 0x40;
            b
        }),
        ("empty.db", Vec::new()),
    ] {
        let bad = dir.path().join(name);
        std::fs::write(&bad, bytes).expect("write");
        let err = fails(storage_node(&[
            "snapshot",
            "status",
            bad.to_str().expect("path"),
        ]));
        assert!(err.contains("corrupt"), "{name}: {err}");
        let err = fails(restore(&bad, &target, 0));
        assert!(err.contains("corrupt"), "{name}: {err}");
        assert!(
            !target.members[0].dir.exists(),
            "{name}: a refused restore leaves no data directory"
        );
    }
    let err = fails(storage_node(&["snapshot", "status", "/nonexistent.db"]));
    assert!(err.contains("No such file"), "{err}");

    ok(restore(&file, &target, 0));
    let err = fails(restore(&file, &target, 0));
    assert!(
        err.contains(&format!("data-dir {:?} exists", target.members[0].dir)),
        "as etcdutl: {err}"
    );
}

#[test]
fn snapshot_status_prints_as_etcdctl_prints_a_snapshot() {
    let source = Cluster::start(1, Options::default());
    // The member publishes its attributes through raft after it starts; that write changes
    // the backend, so wait for it before comparing hashes.
    assert!(wait_until(DEADLINE, || source.members[0]
        .log()
        .contains("published member attributes")));
    ok(source.etcdctl(0, &["put", "k", "v"]));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("s.db");
    ok(source.etcdctl(0, &["snapshot", "save", file.to_str().expect("path")]));
    let path = file.to_str().expect("path");
    // The whole-backend Hash (etcdctl's `endpoint hash` is HashKV).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let hash = runtime.block_on(async {
        let mut client = MaintenanceClient::connect(source.members[0].endpoint())
            .await
            .expect("connect");
        client
            .hash(HashRequest::default())
            .await
            .expect("Hash")
            .into_inner()
            .hash
    });

    let simple = ok(storage_node(&["snapshot", "status", path]));
    let fields: Vec<&str> = simple.trim_end().split(", ").collect();
    assert_eq!(fields.len(), 4, "{simple}");
    assert_eq!(
        fields[0],
        format!("{hash:x}"),
        "the member's Hash, nothing written since"
    );
    assert_eq!(fields[1], "2", "{simple}");
    let table = ok(storage_node(&["snapshot", "status", path, "-w", "table"]));
    // The hash column is as wide as the hash (etcdctl prints it without leading zeros).
    assert!(
        table.contains("HASH ") && table.contains(" | REVISION | TOTAL KEYS | TOTAL SIZE |"),
        "{table}"
    );
    assert!(table.contains(&format!("| {hash:x} |")), "{table}");
    let json: serde_json::Value = serde_json::from_str(&ok(storage_node(&[
        "snapshot", "status", path, "-w", "json",
    ])))
    .expect("json");
    assert_eq!(json["hash"].as_u64(), Some(u64::from(hash)));
    assert_eq!(json["revision"].as_i64(), Some(2));
    assert_eq!(
        json["totalSize"].as_u64(),
        Some(std::fs::metadata(&file).expect("size").len())
    );
}
