//! The `storage-node` command as a user runs it.

use std::process::Command;

fn storage_node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_storage-node"))
}

#[test]
fn demo_shows_the_fix_holding_and_the_fault_reproducing_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let out = storage_node()
        .args(["demo", "--bcrypt-cost", "4", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("with the fix (default)") && stdout.contains("=> members agree"),
        "{stdout}"
    );
    assert!(
        stdout.contains("write through node3: acknowledged, visible on node3\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("members DIVERGED: AuthRevision drift 2, 2 acknowledged write(s) missing"),
        "{stdout}"
    );
}

#[test]
fn dump_db_prints_a_stopped_members_meta_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let demo = storage_node()
        .args(["demo", "--bcrypt-cost", "4", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(demo.status.success());
    let out = storage_node()
        .arg("dump-db")
        .arg(dir.path().join("faulty/node1"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // node1 restarted after both grants and replayed them: two above its peers' shared start.
    assert!(stdout.contains("auth:              enabled"), "{stdout}");
    assert!(stdout.contains("AuthRevision:      8"), "{stdout}");
    assert!(stdout.contains("root roles=[root]"), "{stdout}");
    assert!(
        stdout.contains("app readwrite [/app/, /app0) readwrite [/jobs/, /jobs0)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("keys:              1"),
        "only the write through node1 reached it: {stdout}"
    );
}

#[test]
fn dump_db_on_a_directory_without_a_member_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = storage_node()
        .arg("dump-db")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no member database here"), "{stderr}");
    assert!(
        !dir.path().join("member.redb").exists(),
        "a failed dump creates nothing"
    );
}
