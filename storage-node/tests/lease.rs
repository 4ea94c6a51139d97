//! Leases through the real `etcdctl`: grant, attach, time-to-live, keep-alive through a
//! follower (forwarded to the leader, which alone tracks expiry), and expiry deleting the
//! attached keys on every member.

mod cluster;

use std::process::{Command, Stdio};

use cluster::{Cluster, DEADLINE, Options, ok, wait_until};

fn grant(c: &Cluster, i: usize, ttl: &str) -> String {
    let out = ok(c.etcdctl(i, &["lease", "grant", ttl]));
    // "lease 694d77aa9e38260f granted with TTL(2s)"
    out.split_whitespace().nth(1).expect("lease ID").to_string()
}

#[test]
fn kept_alive_leases_live_and_expired_ones_take_their_keys_everywhere() {
    let c = Cluster::start(3, Options::default());
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let id = grant(&c, follower, "2");
    ok(c.etcdctl(follower, &["put", "--lease", &id, "session", "alive"]));
    let ttl = ok(c.etcdctl(follower, &["lease", "timetolive", &id, "--keys"]));
    assert!(
        ttl.contains(&format!("lease {id} granted with TTL(2s)")) && ttl.contains("[session]"),
        "{ttl}"
    );

    // Keep it alive through a follower for longer than its TTL.
    let mut keeper = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &c.members[follower].endpoint()])
        .args(["lease", "keep-alive", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl lease keep-alive");
    let mut stdout = keeper.stdout.take().expect("stdout");
    let renewals = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = String::new();
        let mut buf = [0u8; 1024];
        // etcdctl renews every TTL/3: six renewals span twice the TTL.
        while seen.matches("keepalived with TTL(2)").count() < 6 {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    let seen = renewals.join().expect("reader");
    assert!(
        seen.matches("keepalived with TTL(2)").count() >= 6,
        "{seen}"
    );
    assert_eq!(
        ok(c.etcdctl(leader, &["get", "session"])),
        "session\nalive\n"
    );
    let _ = keeper.kill();
    let _ = keeper.wait();

    // Without renewals the leader revokes it; every member loses the key.
    for i in 0..3 {
        assert!(
            wait_until(DEADLINE, || ok(
                c.etcdctl(i, &["get", "--consistency=s", "session"])
            )
            .is_empty()),
            "member {i} still has the key"
        );
    }
    let ttl = ok(c.etcdctl(leader, &["lease", "timetolive", &id]));
    assert!(ttl.contains("already expired"), "{ttl}");
}

#[test]
fn revoking_a_lease_deletes_its_keys_at_once() {
    let c = Cluster::start(1, Options::default());
    let id = grant(&c, 0, "60");
    ok(c.etcdctl(0, &["put", "--lease", &id, "a", "1"]));
    ok(c.etcdctl(0, &["put", "--lease", &id, "b", "2"]));
    assert_eq!(
        ok(c.etcdctl(0, &["lease", "revoke", &id])),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(c.etcdctl(0, &["get", "a", "--prefix"])), "");
    assert_eq!(ok(c.etcdctl(0, &["lease", "list"])), "found 0 leases\n");
}
