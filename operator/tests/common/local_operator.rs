//! `operator local` as a child process for tests: its work directory, its status, its
//! signals, and every process it started killed when the test ends (also on panic, and after
//! a SIGKILL left its members orphaned). Shared by the operator's and e2e's tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crds::StorageClusterStatus;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cluster::{
    DEADLINE, etcdctl, free_port, ok, signal_and_wait, storage_node_bin, tail, wait_until,
};

/// The `operator` binary: cargo names it for the operator's own tests; others find it beside
/// the storage-node binary, where a workspace build puts both.
pub fn operator_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_operator") {
        Some(path) => PathBuf::from(path),
        None => storage_node_bin().with_file_name("operator"),
    }
}

/// The operator process and its work directory; the operator and every member it started are
/// killed when this is dropped (also when a test panics, and after a SIGKILL left them orphaned).
pub struct LocalOperator {
    child: Option<Child>,
    work: tempfile::TempDir,
    spec: PathBuf,
    node_args: Vec<String>,
    metrics_port: u16,
    engine: PathBuf,
    /// Extra `spec.healing` lines.
    healing: String,
    /// Whether the spec asks for TLS (`spec.tls: {}`).
    tls: bool,
    /// Extra lines under `spec` (after `healing`).
    extra_spec: String,
    /// `spec.replicas`.
    replicas: u32,
    /// `metadata.annotations` lines.
    annotations: String,
    /// Environment of the operator process.
    env: Vec<(String, String)>,
}

impl LocalOperator {
    /// Starts `operator local` on a 3-member spec with `healing_mode`, members with the fault
    /// switch on.
    pub fn start(healing_mode: &str) -> LocalOperator {
        LocalOperator::start_with(healing_mode, true)
    }

    /// Starts `operator local` on a 3-member spec with `healing_mode`, members with the fault
    /// switch on or off.
    pub fn start_with(healing_mode: &str, fault_switch: bool) -> LocalOperator {
        LocalOperator::start_args(healing_mode, fault_switch, &[])
    }

    /// As [`LocalOperator::start_with`], with `extra` flags for every member.
    pub fn start_args(healing_mode: &str, fault_switch: bool, extra: &[&str]) -> LocalOperator {
        LocalOperator::start_on(storage_node_bin(), healing_mode, fault_switch, extra)
    }

    /// As [`LocalOperator::start_with`], with `healing` (YAML lines under `spec.healing`)
    /// added to the spec.
    pub fn start_with_healing(
        healing_mode: &str,
        healing: &str,
        fault_switch: bool,
    ) -> LocalOperator {
        LocalOperator::start_full(
            storage_node_bin(),
            healing_mode,
            healing,
            fault_switch,
            &[],
            false,
        )
    }

    /// Starts `operator local` on a 3-member spec with `spec.tls` and `healing_mode`, members
    /// with the fault switch on or off.
    pub fn start_tls(healing_mode: &str, fault_switch: bool) -> LocalOperator {
        LocalOperator::start_full(
            storage_node_bin(),
            healing_mode,
            "",
            fault_switch,
            &[],
            true,
        )
    }

    /// `operator local` running `engine` (storage-node, or etcd itself) as its members.
    pub fn start_on(
        engine: PathBuf,
        healing_mode: &str,
        fault_switch: bool,
        extra: &[&str],
    ) -> LocalOperator {
        LocalOperator::start_full(engine, healing_mode, "", fault_switch, extra, false)
    }

    /// `operator local` on a 3-member spec with `healing_mode` and `extra_spec` (YAML lines
    /// under `spec`), members with the fault switch off, the operator with `env` added to its
    /// environment, after `prepare` ran on the work directory (before anything else is in it).
    pub fn start_prepared(
        healing_mode: &str,
        extra_spec: &str,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> LocalOperator {
        let mut op = LocalOperator::new(storage_node_bin(), "", false, &[], false);
        op.extra_spec = extra_spec.to_string();
        op.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        prepare(op.dir());
        op.rewrite_spec(healing_mode);
        op.spawn();
        op
    }

    fn start_full(
        engine: PathBuf,
        healing_mode: &str,
        healing: &str,
        fault_switch: bool,
        extra: &[&str],
        tls: bool,
    ) -> LocalOperator {
        let mut op = LocalOperator::new(engine, healing, fault_switch, extra, tls);
        op.rewrite_spec(healing_mode);
        op.spawn();
        op
    }

    fn new(
        engine: PathBuf,
        healing: &str,
        fault_switch: bool,
        extra: &[&str],
        tls: bool,
    ) -> LocalOperator {
        let work = tempfile::tempdir().expect("workdir");
        let spec = work.path().join("cluster.yaml");
        let mut node_args = [
            "--bcrypt-cost=4",
            "--heartbeat-interval=50",
            "--election-timeout=500",
        ]
        .map(String::from)
        .to_vec();
        if fault_switch {
            node_args.push("--unsafe-reproduce-etcd-11651".to_string());
        }
        node_args.extend(extra.iter().map(|a| a.to_string()));
        LocalOperator {
            child: None,
            work,
            spec,
            node_args,
            metrics_port: free_port(),
            engine,
            healing: healing.to_string(),
            tls,
            extra_spec: String::new(),
            replicas: 3,
            annotations: String::new(),
            env: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    /// Whether auth is on: a member refuses to list users to a client without credentials
    /// (`root-credentials` exists before the operator has turned auth on).
    pub fn auth_on(&self) -> bool {
        self.endpoints()
            .first()
            .is_some_and(|e| !self.etcdctl(e, &["user", "list"]).status.success())
    }

    /// `etcdctl` against `endpoint`, with the users' client certificate from `pki/` when the
    /// cluster serves TLS.
    pub fn etcdctl(&self, endpoint: &str, args: &[&str]) -> std::process::Output {
        if !self.tls {
            return etcdctl(endpoint, args);
        }
        let pki = self.dir().join("pki");
        let flag = |name: &str, file: &str| format!("--{name}={}", pki.join(file).display());
        let tls = [
            flag("cacert", "ca.pem"),
            flag("cert", "client.pem"),
            flag("key", "client-key.pem"),
        ];
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl(endpoint, &all)
    }

    /// Changes `spec.healing.mode` in the spec file, as a user would; the operator reads it
    /// again.
    pub fn set_healing_mode(&self, mode: &str) {
        self.rewrite_spec(mode);
    }

    fn rewrite_spec(&self, mode: &str) {
        write_spec(
            &self.spec,
            self.replicas,
            mode,
            &self.healing,
            self.tls,
            &self.extra_spec,
            &self.annotations,
        );
    }

    /// Sets the annotation `key` to `value` in the spec file, as `kubectl annotate` would;
    /// the operator reads it again. The healing mode written is `mode`.
    pub fn set_annotation(&mut self, mode: &str, key: &str, value: &str) {
        self.annotations = format!("    {key}: {value:?}\n");
        self.rewrite_spec(mode);
    }

    /// Sets `spec.replicas` in the spec file, as a user would; the operator reads it again and
    /// resizes the cluster. The healing mode written is `mode`.
    pub fn set_replicas(&mut self, mode: &str, replicas: u32) {
        self.replicas = replicas;
        self.rewrite_spec(mode);
    }

    /// Sets `spec.defragmentation.schedule` in the spec file, as a user would; the operator
    /// reads it again. The healing mode written is `mode`.
    pub fn set_defragmentation(&mut self, mode: &str, schedule: &str) {
        self.set_extra_spec(
            mode,
            &format!("  defragmentation:\n    schedule: {schedule:?}\n"),
        );
    }

    /// Sets `lines` (YAML under `spec`, after `healing`) in the spec file, as a user would;
    /// the operator reads it again. The healing mode written is `mode`.
    pub fn set_extra_spec(&mut self, mode: &str, lines: &str) {
        self.extra_spec = lines.to_string();
        self.rewrite_spec(mode);
    }

    /// The operator's output so far without terminal colours.
    pub fn plain_log(&self) -> String {
        let log = self.full_log();
        let mut plain = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // An SGR sequence: ESC [ ... m.
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// The heal in progress as `heal.json` records it.
    pub fn heal_record(&self) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.dir().join("heal.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The name of the member with ID `id` (hex), as the status has it.
    pub fn name_of(&self, id: u64) -> Option<String> {
        let hex = format!("{id:x}");
        self.status()?
            .members
            .into_iter()
            .find(|m| m.member_id == hex)
            .map(|m| m.name)
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("operator.log"))
            .expect("operator log");
        let mut cmd = Command::new(operator_bin());
        cmd.arg("local")
            .arg(&self.spec)
            .arg("--workdir")
            .arg(self.dir())
            .arg("--storage-node")
            .arg(&self.engine)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{}", self.metrics_port));
        for arg in &self.node_args {
            cmd.arg(format!("--node-arg={arg}"));
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdout(log.try_clone().expect("log")).stderr(log);
        self.child = Some(cmd.spawn().expect("spawn operator"));
    }

    /// The operator's output so far.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("operator.log")).unwrap_or_default()
    }

    /// The end of the operator's output (for failure messages), with the members' logs.
    pub fn log(&self) -> String {
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

    pub fn status(&self) -> Option<StorageClusterStatus> {
        let bytes = std::fs::read(self.dir().join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until the status satisfies `condition`, and returns it.
    pub fn wait_status(
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
    pub fn wait_rewrites(&self, n: usize) {
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
    pub fn metrics(&self) -> String {
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
    pub fn root(&self) -> String {
        std::fs::read_to_string(self.dir().join("root-credentials"))
            .expect("root-credentials")
            .trim()
            .to_string()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.status()
            .map(|s| s.members.into_iter().map(|m| m.endpoint).collect())
            .unwrap_or_default()
    }

    pub fn member_pid(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir().join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn backups(&self) -> usize {
        std::fs::read_dir(self.dir().join("backups"))
            .map(Iterator::count)
            .unwrap_or_default()
    }

    /// The operator's process ID, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL the operator (its members keep running, as after a crash).
    pub fn kill_operator(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGINT (Ctrl-C) and wait for the exit; returns whether it exited 0.
    pub fn interrupt(&mut self) -> bool {
        self.child
            .take()
            .is_some_and(|child| signal_and_wait(child, Signal::SIGINT))
    }

    /// The operator's exit code once it has exited by itself (`None` while it runs).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|status| status.code())
    }

    /// Whether process `pid` still runs one of this test's members.
    pub fn runs_member(&self, pid: i32) -> bool {
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

/// The 3-member spec the tests run, with `healing_mode`, 2 s probes and `healing` (more YAML
/// lines under `spec.healing`), written atomically (the operator may be reading it).
fn write_spec(
    path: &Path,
    replicas: u32,
    healing_mode: &str,
    healing: &str,
    tls: bool,
    extra: &str,
    annotations: &str,
) {
    let tls = if tls { "  tls: {}\n" } else { "" };
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n{annotations}")
    };
    let spec = format!(
        "apiVersion: mend.dev/v1alpha1\nkind: StorageCluster\nmetadata:\n  name: seed\n\
         {annotations}spec:\n  replicas: {replicas}\n{tls}  healing:\n    mode: {healing_mode}\n    \
         probeIntervalSeconds: 2\n    consecutiveProbes: 3\n{healing}{extra}"
    );
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, spec).expect("spec");
    std::fs::rename(&tmp, path).expect("spec");
}

/// Every member answers, agrees (AuthRevision, HashKV) and the cluster is Available.
pub fn settled(s: &StorageClusterStatus) -> bool {
    s.members.len() == 3 && operator::supervisor::settled(s)
}

/// The highest applied index any member reports.
pub fn max_applied(s: &StorageClusterStatus) -> u64 {
    s.members
        .iter()
        .map(|m| m.applied_index)
        .max()
        .unwrap_or_default()
}

/// Every key in `acknowledged` reads back as `v` from every member's own copy (one read of
/// every key per member).
pub fn assert_everywhere(op: &LocalOperator, acknowledged: &[String]) {
    let root = op.root();
    for endpoint in op.endpoints() {
        let all = ok(op.etcdctl(
            &endpoint,
            &["--user", &root, "get", "--consistency=s", "--prefix", ""],
        ));
        let lines: Vec<&str> = all.lines().collect();
        let held: std::collections::BTreeMap<&str, &str> = lines
            .chunks(2)
            .filter_map(|kv| Some((kv[0], *kv.get(1)?)))
            .collect();
        for key in acknowledged {
            assert_eq!(
                held.get(key.as_str()),
                Some(&"v"),
                "{key} missing on {endpoint}"
            );
        }
    }
}
