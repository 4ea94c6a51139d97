//! Backups and restores in `operator local`: a cluster backed up to a real S3-compatible server
//! (moto's, from PyPI) on request and on its schedule, the store pruned to the retention, a new
//! cluster restored from the newest backup with every key at its revision, and the failures:
//! a store that is down, a backup damaged in the store.

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;
#[path = "common/local_operator.rs"]
mod local_operator;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;

use cluster::{DEADLINE, ok, wait_until};
use crds::StorageClusterStatus;
use local_operator::{LocalOperator, assert_everywhere, settled};
use s3::S3;

/// What moto takes as credentials (it checks none).
const AWS_ENV: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
];

/// `spec.backup` taking backups only when asked (the schedule's next time is a year away at
/// most, never during a test) into `store`.
fn backup_on_request(store: &str, count: u32) -> String {
    format!(
        "  backup:\n    schedule: \"0 0 1 1 *\"\n    retention:\n      count: {count}\n    \
         store:\n{store}"
    )
}

/// Every key with its revisions and value, as `etcdctl get --prefix "" -w json` has them.
fn keys_with_revisions(op: &LocalOperator, endpoint: &str) -> Vec<serde_json::Value> {
    let root = op.root();
    let out = ok(op.etcdctl(
        endpoint,
        &["--user", &root, "get", "--prefix", "", "-w", "json"],
    ));
    let json: serde_json::Value = serde_json::from_str(&out).expect("get json");
    json["kvs"].as_array().cloned().unwrap_or_default()
}

/// Writes `n` keys, overwrites every third and deletes every fifth, so keys carry different
/// create and mod revisions and versions.
fn write_history(op: &LocalOperator, n: usize) -> Vec<String> {
    let root = op.root();
    let endpoint = op.endpoints()[0].clone();
    let mut kept = Vec::new();
    for i in 0..n {
        ok(op.etcdctl(
            &endpoint,
            &["--user", &root, "put", &format!("k{i:03}"), "v"],
        ));
    }
    for i in (0..n).step_by(3) {
        ok(op.etcdctl(
            &endpoint,
            &["--user", &root, "put", &format!("k{i:03}"), "v"],
        ));
    }
    for i in 0..n {
        let key = format!("k{i:03}");
        if i % 5 == 0 {
            ok(op.etcdctl(&endpoint, &["--user", &root, "del", &key]));
        } else {
            kept.push(key);
        }
    }
    kept
}

fn last_backup_for(request: &str) -> impl FnMut(&StorageClusterStatus) -> bool {
    move |s| {
        s.backup.as_ref().is_some_and(|b| {
            b.last_request.as_deref() == Some(request) && !b.active && b.last_backup.is_some()
        })
    }
}

#[test]
fn backups_go_to_s3_on_request_are_pruned_and_restore_a_new_cluster_key_for_key() {
    let s3 = S3::start();
    let mut op = LocalOperator::start_prepared(
        "Automatic",
        &backup_on_request(&s3.store_yaml("clusters/seed", 6), 2),
        &AWS_ENV,
        |_| {},
    );
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.auth_on()
    });
    let kept = write_history(&op, 60);

    let mut taken = Vec::new();
    for request in ["1", "2", "3"] {
        op.set_annotation("Automatic", "mend.dev/backup", request);
        let status = op.wait_status(
            "the requested backup to be stored",
            last_backup_for(request),
        );
        let backup = status.backup.expect("backup status");
        let record = backup.last_backup.clone().expect("last backup");
        assert!(
            backup.failures == 0 && backup.last_failure.is_none(),
            "{backup:?}"
        );
        assert!(record.key.starts_with("clusters/seed/"), "{record:?}");
        assert!(record.size > 0 && record.sha256.len() == 64, "{record:?}");
        assert_ne!(
            status.leader.as_deref(),
            Some(record.member.as_str()),
            "taken from a follower"
        );
        taken.push(record);
    }
    let last = taken.last().expect("a backup").clone();
    let source = keys_with_revisions(&op, &op.endpoints()[0]);
    assert_eq!(source.len(), kept.len());

    // Retention 2: the first backup is gone, snapshot and record.
    let stored = op.status().and_then(|s| s.backup).and_then(|b| b.stored);
    assert_eq!(stored, Some(2));
    let objects = s3.keys("clusters/seed/");
    let expected: Vec<String> = taken[1..]
        .iter()
        .flat_map(|r| [r.key.replace(".snapshot", ".json"), r.key.clone()])
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(
        objects, expected,
        "the newest two backups, each a snapshot and its record"
    );

    // A new cluster from the newest backup, with the source's root password (a restore keeps
    // the users and their passwords).
    let credentials = std::fs::read(op.dir().join("root-credentials")).expect("credentials");
    let from = format!(
        "  bootstrap:\n    fromBackup:\n      store:\n{}",
        s3.store_yaml("clusters/seed", 8)
    );
    let restored = LocalOperator::start_prepared("Automatic", &from, &AWS_ENV, |dir: &Path| {
        std::fs::write(dir.join("root-credentials"), &credentials).expect("credentials");
    });
    let status = restored.wait_status("the restored cluster to form", |s| {
        settled(s) && restored.auth_on()
    });
    let from = status.restored_from.expect("restored_from");
    assert_eq!(from.key, last.key);
    assert_eq!(from.revision, last.revision);
    for endpoint in restored.endpoints() {
        assert_eq!(
            keys_with_revisions(&restored, &endpoint),
            source,
            "{endpoint}: every key at its create and mod revision and version"
        );
    }
    assert_everywhere(&restored, &kept);
    // The restored cluster goes on from the backup's revision, and is not the source.
    let root = restored.root();
    let endpoint = restored.endpoints()[0].clone();
    ok(restored.etcdctl(&endpoint, &["--user", &root, "put", "after-restore", "v"]));
    let after = keys_with_revisions(&restored, &endpoint);
    let written = after
        .iter()
        .find(|kv| kv["key"] == "YWZ0ZXItcmVzdG9yZQ==")
        .expect("after-restore");
    assert_eq!(written["mod_revision"].as_i64(), Some(last.revision + 1));
    let source_endpoint = op.endpoints()[0].clone();
    let source_root = op.root();
    let absent = ok(op.etcdctl(
        &source_endpoint,
        &["--user", &source_root, "get", "after-restore"],
    ));
    assert_eq!(absent, "", "the clusters are separate");
}

#[test]
fn a_scheduled_backup_to_a_directory_is_taken_and_a_damaged_one_is_refused_at_restore() {
    let store = tempfile::tempdir().expect("store");
    let spec = format!(
        "  backup:\n    schedule: \"* * * * *\"\n    store:\n      directory: {}\n",
        store.path().display()
    );
    let op = LocalOperator::start_prepared("Automatic", &spec, &[], |_| {});
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.auth_on()
    });
    let status = op.wait_status("a scheduled backup", |s| {
        s.backup
            .as_ref()
            .is_some_and(|b| b.last_successful_time.is_some())
    });
    let backup = status.backup.expect("backup");
    let record = backup.last_backup.expect("record");
    assert!(backup.last_request.is_none(), "not asked for: scheduled");
    let snapshot = store.path().join(&record.key);
    assert!(snapshot.exists(), "{} is stored", snapshot.display());
    // The stored file is a snapshot storage-node itself accepts.
    let check = std::process::Command::new(cluster::storage_node_bin())
        .args(["snapshot", "status", "-w", "json"])
        .arg(&snapshot)
        .output()
        .expect("snapshot status");
    assert!(check.status.success(), "{check:?}");

    // One flipped byte in the stored snapshot: the restore refuses it and builds nothing.
    let mut bytes = std::fs::read(&snapshot).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&snapshot, &bytes).expect("damage");
    let from = format!(
        "  bootstrap:\n    fromBackup:\n      store:\n        directory: {}\n",
        store.path().display()
    );
    let restored = LocalOperator::start_prepared("Automatic", &from, &[], |_| {});
    // Refused on every pass (the store may be fixed meanwhile), saying why.
    let refused = wait_until(DEADLINE, || {
        restored.plain_log().matches("is damaged").count() >= 2
    });
    assert!(
        refused,
        "the damaged backup should be refused: {}",
        restored.log()
    );
    assert!(
        restored
            .status()
            .is_none_or(|s| s.members.iter().all(|m| !m.healthy))
    );
    for name in ["node1", "node2", "node3"] {
        assert!(
            !restored.dir().join(name).exists(),
            "{name} was built from a damaged backup"
        );
    }
}

#[test]
fn a_store_that_is_down_fails_the_backup_with_why_and_the_cluster_goes_on() {
    let s3 = S3::start();
    let spec = backup_on_request(&s3.store_yaml("seed", 6), 3);
    let mut op = LocalOperator::start_prepared("Automatic", &spec, &AWS_ENV, |_| {});
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.auth_on()
    });
    drop(s3);
    op.set_annotation("Automatic", "mend.dev/backup", "now");
    let status = op.wait_status("the backup to fail three times and be given up", |s| {
        s.backup.as_ref().is_some_and(|b| {
            b.last_request.as_deref() == Some("now") && !b.active && b.last_failure.is_some()
        })
    });
    let backup = status.backup.expect("backup");
    assert!(
        backup.last_backup.is_none(),
        "nothing was stored: {backup:?}"
    );
    let why = backup.last_failure.unwrap_or_default();
    assert!(why.contains("uploading"), "{why}");
    let root = op.root();
    let endpoint = op.endpoints()[0].clone();
    ok(op.etcdctl(&endpoint, &["--user", &root, "put", "still", "v"]));
    assert_everywhere(&op, &["still".to_string()]);
    let scratch: Vec<_> = std::fs::read_dir(op.dir())
        .expect("workdir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("mend-backup-"))
        .collect();
    assert!(scratch.is_empty(), "no snapshot left behind: {scratch:?}");
}
