//! `dump-db` and `dump-log` on the data directory of a real member that served traffic and
//! was stopped.

mod cluster;

use std::process::Command;

use cluster::{Cluster, Options, ok};

#[test]
fn dump_db_and_dump_log_show_what_a_stopped_member_holds() {
    let mut c = Cluster::start(1, Options::default());
    for n in 0..5 {
        ok(c.etcdctl(0, &["put", &format!("k{n}"), "v"]));
    }
    ok(c.etcdctl(0, &["user", "add", "root:pw"]));
    ok(c.etcdctl(0, &["role", "add", "app"]));
    assert!(c.member(0).stop(), "SIGTERM must stop the member cleanly");
    let dir = c.members[0].dir.clone();

    let db = Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .arg("dump-db")
        .arg(&dir)
        .output()
        .expect("dump-db");
    let db_text = ok(db);
    assert!(db_text.contains("keys:              5"), "{db_text}");
    assert!(db_text.contains("root roles=[]"), "{db_text}");
    assert!(db_text.contains("AuthRevision:      3"), "{db_text}");
    assert!(db_text.contains("alarms:            none"), "{db_text}");
    assert!(
        db_text.contains("membership (applied at index"),
        "{db_text}"
    );

    let log = Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .arg("dump-log")
        .arg(&dir)
        .output()
        .expect("dump-log");
    let log_text = ok(log);
    assert_eq!(log_text.matches(" put ").count(), 5, "{log_text}");
    assert_eq!(log_text.matches(" auth ").count(), 2, "{log_text}");
    assert!(log_text.contains(" membership "), "{log_text}");
    assert!(log_text.contains(" blank "), "{log_text}");
    // The consistent index dump-db reports is the last entry dump-log lists.
    let last = log_text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .expect("an entry line")
        .to_string();
    assert!(
        db_text.contains(&format!("consistent index:  {last} ")),
        "{db_text}\n{log_text}"
    );
}

#[test]
fn dump_log_on_a_directory_without_a_log_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .arg("dump-log")
        .arg(dir.path())
        .output()
        .expect("dump-log");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no raft log here"), "{err}");
}

#[test]
fn backup_data_moves_a_stopped_members_data_aside_and_a_restart_on_it_keeps_the_keys() {
    let mut c = Cluster::start(1, Options::default());
    ok(c.etcdctl(0, &["put", "kept", "yes"]));
    assert!(c.member(0).stop(), "SIGTERM must stop the member cleanly");
    let dir = c.members[0].dir.clone();
    let backups = dir.with_extension("backups");
    let backup_data = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_storage-node"))
            .arg("backup-data")
            .arg("--data-dir")
            .arg(&dir)
            .arg("--backup-dir")
            .arg(&backups)
            .args(["--name", name, "--keep", "2"])
            .output()
            .expect("backup-data")
    };
    let moved = ok(backup_data("0001"));
    assert_eq!(moved.trim(), backups.join("0001").display().to_string());
    assert!(!dir.exists(), "the data directory is wiped");
    assert_eq!(ok(backup_data("0002")).trim(), "no data to back up");

    // The backup is a whole member: moved back, it serves its keys again.
    std::fs::rename(backups.join("0001"), &dir).expect("restore");
    c.member(0).start();
    c.wait_healthy();
    assert_eq!(
        ok(c.etcdctl(0, &["get", "kept", "--print-value-only"])),
        "yes\n"
    );
}
