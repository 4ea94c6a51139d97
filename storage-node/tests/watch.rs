//! Watch through the real `etcdctl watch`: history replay from a revision, live events written
//! through another member, prefix watches, delete events with previous values, and the
//! cancellation etcdctl reports for a compacted start revision.

mod cluster;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use cluster::{Cluster, DEADLINE, Options, ok, wait_until};

/// A running `etcdctl watch`, killed when dropped; its output is collected as it arrives.
struct Watching {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Watching {
    fn start(endpoint: &str, args: &[&str]) -> Watching {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "watch"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl watch");
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = output.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut out) = sink.lock() {
                        out.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        Watching { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits until the output contains `expected`; panics with the output otherwise.
    fn expect(&self, expected: &str) {
        assert!(
            wait_until(DEADLINE, || self.output().contains(expected)),
            "expected {expected:?} in watch output:\n{}",
            self.output()
        );
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_replays_history_then_follows_writes_through_other_members() {
    let c = Cluster::start(3, Options::default());
    ok(c.etcdctl(0, &["put", "k", "v1"])); // revision 2
    ok(c.etcdctl(1, &["put", "k", "v2"])); // revision 3
    let w = Watching::start(&c.members[2].endpoint(), &["k", "--rev=2", "--prev-kv"]);
    w.expect("PUT\nk\nv1\nPUT\nk\nv1\nk\nv2\n");
    ok(c.etcdctl(0, &["del", "k"]));
    w.expect("DELETE\nk\nv2\nk\n");
    ok(c.etcdctl(1, &["put", "k", "v3"]));
    w.expect("DELETE\nk\nv2\nk\n\nPUT\nk\nv3\n");
}

#[test]
fn prefix_watch_sees_only_its_keys() {
    let c = Cluster::start(1, Options::default());
    let w = Watching::start(&c.members[0].endpoint(), &["--prefix", "app/"]);
    // The watch is created before the writes once etcdctl's stream is up; write until seen.
    assert!(wait_until(DEADLINE, || {
        ok(c.etcdctl(0, &["put", "other", "x"]));
        ok(c.etcdctl(0, &["put", "app/a", "1"]));
        w.output().contains("PUT\napp/a\n1\n")
    }));
    assert!(!w.output().contains("other"), "{}", w.output());
}

#[test]
fn watch_from_a_compacted_revision_is_canceled_with_etcds_reason() {
    let c = Cluster::start(1, Options::default());
    for v in ["1", "2", "3"] {
        ok(c.etcdctl(0, &["put", "k", v]));
    }
    ok(c.etcdctl(0, &["compaction", "3"]));
    let out = c.etcdctl(0, &["watch", "k", "--rev=2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("required revision has been compacted"),
        "{stderr}"
    );
}
