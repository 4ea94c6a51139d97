//! `operator local` as users run it: the binary supervising real storage-node processes, its
//! work directory (`status.json`, `root-credentials`, `backups/`, `heal.json`) and its signals.
//! The etcd 11651 trigger is played with the fault switch on through the real `etcdctl`; every
//! test ends by checking that every acknowledged write is readable from every member.

#[path = "../../storage-node/tests/cluster/mod.rs"]
mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::io::{Read, Write};

use cluster::{DEADLINE, etcdctl, free_port, ok, storage_node_bin, tail, wait_until};
use crds::{Phase, StorageClusterStatus};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The operator process and its work directory; the operator and every member it started are
/// killed when this is dropped (also when a test panics, and after a SIGKILL left them orphaned).
struct LocalOperator {
    child: Option<Child>,
    work: tempfile::TempDir,
    spec: PathBuf,
    node_args: Vec<String>,
    metrics_port: u16,
}

impl LocalOperator {
    /// Starts `operator local` on a 3-member spec with `healing_mode`, members with the fault
    /// switch on.
    fn start(healing_mode: &str) -> LocalOperator {
        let work = tempfile::tempdir().expect("workdir");
        let spec = work.path().join("cluster.yaml");
        std::fs::write(
            &spec,
            format!(
                "apiVersion: mend.dev/v1alpha1\nkind: StorageCluster\nmetadata:\n  name: seed\n\
                 spec:\n  replicas: 3\n  healing:\n    mode: {healing_mode}\n    \
                 probeIntervalSeconds: 2\n    consecutiveProbes: 3\n"
            ),
        )
        .expect("spec");
        let node_args = [
            "--unsafe-reproduce-etcd-11651",
            "--bcrypt-cost=4",
            "--heartbeat-interval=50",
            "--election-timeout=500",
        ]
        .map(String::from)
        .to_vec();
        let mut op = LocalOperator {
            child: None,
            work,
            spec,
            node_args,
            metrics_port: free_port(),
        };
        op.spawn();
        op
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("operator.log"))
            .expect("operator log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_operator"));
        cmd.arg("local")
            .arg(&self.spec)
            .arg("--workdir")
            .arg(self.dir())
            .arg("--storage-node")
            .arg(storage_node_bin())
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{}", self.metrics_port));
        for arg in &self.node_args {
            cmd.arg(format!("--node-arg={arg}"));
        }
        cmd.stdout(log.try_clone().expect("log")).stderr(log);
        self.child = Some(cmd.spawn().expect("spawn operator"));
    }

    /// The operator's output so far.
    fn full_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("operator.log")).unwrap_or_default()
    }

    /// The end of the operator's output (for failure messages), with the members' logs.
    fn log(&self) -> String {
        let mut out = tail(&self.full_log(), 80);
        for name in ["node1", "node2", "node3"] {
            let log =
                std::fs::read_to_string(self.dir().join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("heartbeat") && !l.contains("ReplicationCore"))
                .collect();
            out.push_str(&format!(
                "\n--- {name} ---\n{}",
                tail(&lines.join("\n"), 25)
            ));
        }
        out
    }

    fn status(&self) -> Option<StorageClusterStatus> {
        let bytes = std::fs::read(self.dir().join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until the status satisfies `condition`, and returns it.
    fn wait_status(
        &self,
        what: &str,
        mut condition: impl FnMut(&StorageClusterStatus) -> bool,
    ) -> StorageClusterStatus {
        let mut last = None;
        let held = wait_until(DEADLINE * 2, || {
            last = self.status();
            last.as_ref().is_some_and(&mut condition)
        });
        assert!(
            held,
            "waited for {what}; last status: {last:#?}\noperator log:\n{}",
            self.log()
        );
        last.unwrap_or_default()
    }

    /// Waits until the operator has written `status.json` `n` more times (probe rounds).
    fn wait_rewrites(&self, n: usize) {
        let modified = || {
            std::fs::metadata(self.dir().join("status.json"))
                .and_then(|m| m.modified())
                .ok()
        };
        let mut last = modified();
        let mut rewrites = 0;
        let done = wait_until(DEADLINE, || {
            let now = modified();
            if now != last {
                rewrites += 1;
                last = now;
            }
            rewrites >= n
        });
        assert!(done, "status.json not rewritten:\n{}", self.log());
    }

    /// The operator's `/metrics` page.
    fn metrics(&self) -> String {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics port");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    }

    /// `--user` for etcdctl, from the credentials the operator wrote.
    fn root(&self) -> String {
        std::fs::read_to_string(self.dir().join("root-credentials"))
            .expect("root-credentials")
            .trim()
            .to_string()
    }

    fn endpoints(&self) -> Vec<String> {
        self.status()
            .map(|s| s.members.into_iter().map(|m| m.endpoint).collect())
            .unwrap_or_default()
    }

    fn member_pid(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir().join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn backups(&self) -> usize {
        std::fs::read_dir(self.dir().join("backups"))
            .map(Iterator::count)
            .unwrap_or_default()
    }

    /// SIGKILL the operator (its members keep running, as after a crash).
    fn kill_operator(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGINT (Ctrl-C) and wait for the exit; returns whether it exited 0.
    fn interrupt(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
        let mut exit = None;
        let exited = wait_until(DEADLINE, || {
            exit = child.try_wait().ok().flatten();
            exit.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        exit.is_some_and(|s| s.success())
    }

    /// Whether process `pid` still runs one of this test's members.
    fn runs_member(&self, pid: i32) -> bool {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            String::from_utf8_lossy(&cmdline).contains(&*self.dir().to_string_lossy())
        })
    }
}

impl Drop for LocalOperator {
    fn drop(&mut self) {
        self.kill_operator();
        for name in ["node1", "node2", "node3"] {
            if let Some(pid) = self.member_pid(name)
                && self.runs_member(pid)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Every member answers, agrees (AuthRevision, HashKV) and the cluster is Available.
fn settled(s: &StorageClusterStatus) -> bool {
    s.members.len() == 3 && operator::supervisor::settled(s)
}

/// The seed's trigger through etcdctl: a role and a grant with auth on, node1 killed and
/// restarted by the operator before any write, then writes through every member. Returns
/// the acknowledged keys.
fn play_seed(op: &LocalOperator) -> Vec<String> {
    op.wait_status("the cluster to form with auth on", |s| {
        settled(s) && op.dir().join("root-credentials").exists()
    });
    let root = op.root();
    let endpoints = op.endpoints();
    // Auth is on: without credentials a write is refused.
    let refused = etcdctl(&endpoints[0], &["put", "anonymous", "x"]);
    assert!(!refused.status.success(), "auth is not on");
    let start = op.status().map(|s| max_applied(&s)).unwrap_or_default();
    ok(etcdctl(
        &endpoints[1],
        &["--user", &root, "role", "add", "app"],
    ));
    ok(etcdctl(
        &endpoints[1],
        &[
            "--user",
            &root,
            "role",
            "grant-permission",
            "app",
            "read",
            "x",
        ],
    ));
    // Two logins, the role and the grant: four entries. The grant must be on node1's disk
    // before the kill, as the seed needs (members sync applied entries within 100 ms), so the
    // status after the one that shows it applied everywhere is awaited too.
    let applied = |s: &StorageClusterStatus| {
        settled(s)
            && s.members.iter().all(|m| m.applied_index >= start + 4)
            && s.members
                .windows(2)
                .all(|w| w[0].applied_index == w[1].applied_index)
    };
    op.wait_status("every member to apply the grant", applied);
    op.wait_rewrites(1);
    let old_pid = op.member_pid("node1").expect("node1 pid");
    let _ = kill(Pid::from_raw(old_pid), Signal::SIGKILL);
    op.wait_status("the operator to restart the crashed node1", |s| {
        s.members.iter().all(|m| m.healthy) && op.member_pid("node1").is_some_and(|p| p != old_pid)
    });
    let mut acknowledged = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        for n in 0..5 {
            let key = format!("k{i}-{n}");
            ok(etcdctl(endpoint, &["--user", &root, "put", &key, "v"]));
            acknowledged.push(key);
        }
    }
    acknowledged
}

fn max_applied(s: &StorageClusterStatus) -> u64 {
    s.members
        .iter()
        .map(|m| m.applied_index)
        .max()
        .unwrap_or_default()
}

/// Every key in `acknowledged` reads back as `v` from every member's own copy.
fn assert_everywhere(op: &LocalOperator, acknowledged: &[String]) {
    let root = op.root();
    for endpoint in op.endpoints() {
        for key in acknowledged {
            let got = ok(etcdctl(
                &endpoint,
                &[
                    "--user",
                    &root,
                    "get",
                    "--consistency=s",
                    "--print-value-only",
                    key,
                ],
            ));
            assert_eq!(got, "v\n", "{key} missing on {endpoint}");
        }
    }
}

#[test]
fn local_operator_heals_the_seed_and_every_acknowledged_write_survives() {
    let mut op = LocalOperator::start("Automatic");
    let acknowledged = play_seed(&op);
    let healed = op.wait_status("the drift to be healed", |s| {
        s.healing.as_ref().is_some_and(|h| h.count >= 1) && settled(s)
    });
    assert_eq!(healed.phase, Phase::Available);
    assert!(
        healed
            .healing
            .as_ref()
            .and_then(|h| h.last_result.as_deref())
            .is_some_and(|r| r.starts_with("succeeded")),
        "{healed:#?}"
    );
    assert_eq!(op.backups(), 1, "node1's wiped data is kept as a backup");
    assert_everywhere(&op, &acknowledged);
    let metrics = op.metrics();
    for line in [
        "mend_heals_total{cluster=\"seed\",result=\"succeeded\"} 1",
        "mend_cluster_auth_revision_drift{cluster=\"seed\"} 0",
        "mend_cluster_members_ready{cluster=\"seed\"} 3",
        "mend_divergence_detection_seconds_count{cluster=\"seed\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
    assert!(!op.dir().join("heal.json").exists());

    // Ctrl-C stops the operator and its members cleanly.
    let pids: Vec<i32> = ["node1", "node2", "node3"]
        .iter()
        .filter_map(|n| op.member_pid(n))
        .collect();
    assert!(op.interrupt(), "operator did not exit 0:\n{}", op.log());
    assert!(
        pids.iter().all(|p| !op.runs_member(*p)),
        "members left running"
    );
}

#[test]
fn operator_killed_mid_heal_resumes_and_finishes_after_restart() {
    let mut op = LocalOperator::start("Automatic");
    let acknowledged = play_seed(&op);
    // Kill the operator as soon as the heal has taken its first step.
    let heal_file = op.dir().join("heal.json");
    let mid_heal = wait_until(DEADLINE, || {
        std::fs::read(&heal_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|p| p["next"].as_u64().is_some_and(|n| n >= 1))
    });
    assert!(mid_heal, "no heal started:\n{}", op.log());
    op.kill_operator();
    assert!(heal_file.exists(), "the heal finished before the kill");

    op.spawn();
    let healed = op.wait_status("the resumed heal to finish", |s| {
        s.healing.as_ref().is_some_and(|h| h.count >= 1) && settled(s)
    });
    assert!(!heal_file.exists());
    assert_eq!(op.backups(), 1, "a resumed heal backs up once");
    assert!(
        op.full_log()
            .contains("stopping a member an earlier operator left running")
    );
    assert_eq!(healed.auth_revision_drift, 0);
    assert_everywhere(&op, &acknowledged);
}

#[test]
fn heal_while_a_client_keeps_writing_loses_no_acknowledged_write() {
    let op = LocalOperator::start("Automatic");
    let mut acknowledged = play_seed(&op);
    let root = op.root();
    let endpoints = op.endpoints().join(",");
    let mut failed = 0;
    let mut n = 0;
    // Keep writing (retrying each write up to 5 times, through any member) until the heal is
    // over and the members agree again.
    while !op.status().is_some_and(|s| {
        s.healing
            .as_ref()
            .is_some_and(|h| h.count >= 1 && h.step.is_none())
            && settled(&s)
    }) {
        let key = format!("during-{n}");
        n += 1;
        let mut written = false;
        for _ in 0..5 {
            if etcdctl(&endpoints, &["--user", &root, "put", &key, "v"])
                .status
                .success()
            {
                written = true;
                break;
            }
            failed += 1;
        }
        if written {
            acknowledged.push(key);
        }
        assert!(n < 5000, "the heal never finished:\n{}", op.log());
    }
    eprintln!("writes during the heal: {n} attempted keys, {failed} failed attempts (retried)");
    op.wait_status("the members to agree after the writes", settled);
    assert_everywhere(&op, &acknowledged);
}

#[test]
fn observe_only_reports_the_plan_and_changes_nothing() {
    let op = LocalOperator::start("ObserveOnly");
    let _ = play_seed(&op);
    let observed = op.wait_status("the plan to be reported", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Diverged" && c.status == "True" && c.message.contains("the plan would be")
        })
    });
    assert_eq!(observed.phase, Phase::Diverged);
    assert_eq!(observed.auth_revision_drift, 1);
    // Several probes later, still nothing was done.
    op.wait_rewrites(3);
    let later = op.status().expect("status");
    assert_eq!(later.auth_revision_drift, 1);
    assert_eq!(later.healing.map(|h| h.count), Some(0));
    assert_eq!(op.backups(), 0);
}

#[test]
fn an_unreachable_source_holds_the_heal_back_with_a_reason_until_it_answers() {
    let op = LocalOperator::start("Automatic");
    let acknowledged = play_seed(&op);
    // node2 and node3 hold the lowest AuthRevision (the sources); freeze node2 so it neither
    // answers nor dies.
    let frozen = op.member_pid("node2").expect("node2 pid");
    kill(Pid::from_raw(frozen), Signal::SIGSTOP).expect("SIGSTOP");
    let waiting = op.wait_status("the reason not to heal", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Diverged" && c.status == "True" && c.message.contains("not healing: member")
        })
    });
    assert!(waiting.members.iter().any(|m| !m.healthy));
    assert_eq!(op.backups(), 0, "nothing is rebuilt while a member is out");
    kill(Pid::from_raw(frozen), Signal::SIGCONT).expect("SIGCONT");
    op.wait_status("the heal once every member answers", |s| {
        s.healing.as_ref().is_some_and(|h| h.count >= 1) && settled(s)
    });
    assert_everywhere(&op, &acknowledged);
}

/// Runs `operator local` on `spec` and returns its exit code and stderr.
fn run_local_on(spec: &str, workdir: &Path) -> (Option<i32>, String) {
    let path = workdir.with_extension("yaml");
    std::fs::write(&path, spec).expect("spec");
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .arg("local")
        .arg(&path)
        .arg("--workdir")
        .arg(workdir)
        .arg("--storage-node")
        .arg(storage_node_bin())
        .stdin(Stdio::null())
        .output()
        .expect("operator runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_spec_is_refused_with_what_to_fix_and_nothing_starts() {
    let work = tempfile::tempdir().expect("workdir");
    let header =
        "apiVersion: mend.dev/v1alpha1\nkind: StorageCluster\nmetadata:\n  name: bad\nspec:\n";
    let typo = work.path().join("typo");
    let (code, stderr) = run_local_on(&format!("{header}  replica: 3\n"), &typo);
    assert_eq!(code, Some(1));
    assert!(stderr.contains(".spec.replica"), "{stderr}");
    assert!(!typo.exists(), "nothing may be created");
    let even = work.path().join("even");
    let (code, stderr) = run_local_on(&format!("{header}  replicas: 2\n"), &even);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("replicas must be odd"), "{stderr}");
    assert!(!even.join("node1").exists(), "no member may be created");
}
