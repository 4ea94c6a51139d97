//! A cluster of real `storage-node` processes on loopback for integration tests: free ports,
//! temporary data directories, `etcdctl` against any member, and every child killed when the
//! cluster is dropped (also when a test panics).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Options for starting members.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Turn the etcd 11651 fault switch on.
    pub fault_switch: bool,
    /// `--snapshot-count`, when set.
    pub snapshot_count: Option<u64>,
    /// `--quota-backend-bytes`, when set.
    pub quota_backend_bytes: Option<i64>,
    /// More flags, given to every member as they are.
    pub extra_args: Vec<String>,
    /// Client URLs are `https://` (the TLS flags go in `extra_args`).
    pub https_clients: bool,
    /// Peer URLs are `https://`.
    pub https_peers: bool,
}

fn scheme(https: bool) -> &'static str {
    if https { "https" } else { "http" }
}

/// One member process and its addresses.
pub struct Member {
    /// `--name`.
    pub name: String,
    /// Client port.
    pub client_port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// Metrics port.
    pub metrics_port: u16,
    /// Data directory.
    pub dir: PathBuf,
    child: Option<Child>,
    initial_cluster: String,
    state: &'static str,
    options: Options,
}

/// The `storage-node` binary: cargo names it for this package's tests and benches; other
/// packages' tests (the operator's) find it beside their own test binary's directory, where a
/// workspace build puts it.
pub fn storage_node_bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_storage-node") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("storage-node");
    assert!(
        bin.exists(),
        "{} not built: run the workspace's tests (cargo nextest run --workspace)",
        bin.display()
    );
    bin
}

/// A port that is free now, chosen below Linux's ephemeral range (32768–60999): a port the
/// OS hands out for port 0 can be taken by any outgoing connection's source port before the
/// member binds it, which the many client and peer connections of these tests make likely.
/// A port is handed out at most once per test process, so one cluster never gets the same port
/// twice; another process may still take it before the member binds (see [`Cluster::start`]).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let mut seed = [0u8; 2];
    loop {
        // Randomness only spreads parallel tests apart; freedom is checked by binding.
        let _ = getrandom::fill(&mut seed);
        // Each test process draws from its own 1000-port band (by process ID), so tests running
        // in parallel rarely pick a port another is about to bind.
        let band = (std::process::id() % 17) as u16;
        let port = 15_000 + band * 1000 + u16::from_le_bytes(seed) % 1000;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
}

/// Sends `signal` to `child` and waits for it to exit: whether it exited with success. A child
/// still running at the deadline is killed (and that is not a success).
pub fn signal_and_wait(mut child: Child, signal: nix::sys::signal::Signal) -> bool {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
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

/// Waits until `condition` holds or the deadline passes; returns whether it held.
pub fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        // Polling interval, not synchronisation: the condition is re-checked until the deadline.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Member {
    fn new(name: &str, root: &std::path::Path, options: &Options) -> Member {
        Member {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            dir: root.join(name),
            child: None,
            initial_cluster: String::new(),
            state: "new",
            options: options.clone(),
        }
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = scheme(self.options.https_clients);
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL.
    pub fn peer_url(&self) -> String {
        let scheme = scheme(self.options.https_peers);
        format!("{scheme}://127.0.0.1:{}", self.peer_port)
    }

    /// More flags for the next starts of this member alone (beside the cluster's own).
    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.options.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// `--initial-cluster-state` for the next start (`new` or `existing`).
    pub fn set_state(&mut self, state: &'static str) {
        self.state = state;
    }

    /// Starts the process (with the flags it was configured with).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut cmd = Command::new(storage_node_bin());
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", self.metrics_port))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(self.state)
            .arg("--bcrypt-cost")
            .arg("4")
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500");
        if self.options.fault_switch {
            cmd.arg("--unsafe-reproduce-etcd-11651");
        }
        if let Some(count) = self.options.snapshot_count {
            cmd.arg("--snapshot-count").arg(count.to_string());
        }
        if let Some(bytes) = self.options.quota_backend_bytes {
            cmd.arg(format!("--quota-backend-bytes={bytes}"));
        }
        cmd.args(&self.options.extra_args);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .expect("member log file");
        cmd.stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("spawn storage-node"));
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit; returns whether the exit status was success.
    pub fn stop(&mut self) -> bool {
        match self.child.take() {
            Some(child) => signal_and_wait(child, nix::sys::signal::Signal::SIGTERM),
            None => true,
        }
    }

    /// The process ID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// GET `path` on the metrics port: status code and body.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path)
    }

    /// GET `path` over HTTP/1.1 on the client port: status code and body.
    pub fn client_http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.client_port, path)
    }

    /// One metric's value from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Whether the member has a leader and serves reads (`/health`, whatever the alarms).
    pub fn healthy(&self) -> bool {
        matches!(
            self.http_get("/health?exclude=NOSPACE&exclude=CORRUPT"),
            Some((200, _))
        )
    }

    /// The member's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

/// Members on loopback.
pub struct Cluster {
    /// The members, in start order.
    pub members: Vec<Member>,
    root: tempfile::TempDir,
    options: Options,
}

impl Cluster {
    /// Starts `n` members as a new cluster and waits until all see a leader. A port checked
    /// free can still be taken by another process before the member binds it; the cluster is
    /// then started again on other ports (a few times at most).
    pub fn start(n: usize, options: Options) -> Cluster {
        let mut attempt = 1;
        loop {
            let mut cluster = Cluster::spawn(n, options.clone());
            match cluster.wait_healthy_or_port_taken() {
                Ok(()) => return cluster,
                Err(log) if attempt < 3 => {
                    eprintln!("a port was taken before a member bound it, starting again:\n{log}");
                    attempt += 1;
                }
                Err(log) => panic!("ports kept being taken:\n{log}"),
            }
        }
    }

    fn spawn(n: usize, options: Options) -> Cluster {
        let mut cluster = Cluster::prepare(n, options);
        for m in &mut cluster.members {
            m.start();
        }
        cluster
    }

    /// `n` members of a new cluster, configured but none started: a test starts the ones it
    /// wants (fewer than a majority never elect a leader).
    pub fn prepare(n: usize, options: Options) -> Cluster {
        let root = tempfile::tempdir().expect("temporary directory");
        let mut members: Vec<Member> = (1..=n)
            .map(|i| Member::new(&format!("node{i}"), root.path(), &options))
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial.clone();
        }
        Cluster {
            members,
            root,
            options,
        }
    }

    /// Like [`Cluster::wait_healthy`], but a member that exited because its port was taken is
    /// reported (with the logs) instead of failing the test.
    fn wait_healthy_or_port_taken(&mut self) -> Result<(), String> {
        wait_until(DEADLINE, || {
            self.members.iter_mut().any(|m| !m.is_running())
                || self.members.iter().all(Member::healthy)
        });
        let port_taken = self
            .members
            .iter_mut()
            .any(|m| !m.is_running() && m.log().contains("Address already in use"));
        if port_taken {
            return Err(self.logs());
        }
        self.wait_healthy();
        Ok(())
    }

    /// Waits until every running member reports a leader.
    pub fn wait_healthy(&mut self) {
        let ok = wait_until(DEADLINE, || {
            let exited = self
                .members
                .iter_mut()
                .any(|m| m.child.is_some() && !m.is_running());
            exited
                || self
                    .members
                    .iter()
                    .filter(|m| m.child.is_some())
                    .all(Member::healthy)
        });
        let exited: Vec<String> = self
            .members
            .iter_mut()
            .filter_map(|m| (m.child.is_some() && !m.is_running()).then(|| m.name.clone()))
            .collect();
        assert!(
            ok && exited.is_empty(),
            "cluster not healthy in time (exited: {exited:?}):\n{}",
            self.logs()
        );
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let lines: Vec<String> = m
                    .log()
                    .lines()
                    .filter(|l| !l.contains("heartbeat") && !l.contains("ReplicationCore"))
                    .map(str::to_string)
                    .collect();
                format!("--- {} ---\n{}", m.name, tail(&lines.join("\n"), 40))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Member `i` (0-based).
    pub fn member(&mut self, i: usize) -> &mut Member {
        &mut self.members[i]
    }

    /// All client endpoints, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `etcdctl` (API v3) against member `i`.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        etcdctl(&self.members[i].endpoint(), args)
    }

    /// Index of the member that currently leads, as `/metrics` says.
    pub fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.child.is_some() && m.metric("mend_is_leader") == Some(1.0))
    }

    /// Waits for a leader and returns its index.
    pub fn wait_leader(&self) -> usize {
        let mut found = None;
        let ok = wait_until(DEADLINE, || {
            found = self.leader();
            found.is_some()
        });
        assert!(ok, "no leader in time:\n{}", self.logs());
        found.unwrap_or_default()
    }

    /// `--initial-cluster` of the members as prepared.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A new member prepared to join (not started, not added): returns its index.
    pub fn prepare_joiner(&mut self, name: &str) -> usize {
        let mut member = Member::new(name, self.root.path(), &self.options);
        let mut initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        initial.push(format!("{}={}", member.name, member.peer_url()));
        member.initial_cluster = initial.join(",");
        member.state = "existing";
        self.members.push(member);
        self.members.len() - 1
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

/// An etcd 3.4 cluster (`/usr/bin/etcd`, Debian's) on loopback, the oracle for side-by-side
/// tests and benchmarks; every member killed on drop.
pub struct Etcd {
    children: Vec<Child>,
    /// Each member's client URL.
    pub endpoints: Vec<String>,
    /// Each member's client port.
    pub client_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `n` members with `extra_args` each and waits until the cluster is healthy.
    pub fn start(n: usize, extra_args: &[String]) -> Etcd {
        Etcd::start_with(n, extra_args, &Options::default())
    }

    /// Starts `n` members with `extra_args` each, their URLs `https://` as `options` say, and
    /// waits until every member's `/health` (on a plain metrics URL) is true.
    pub fn start_with(n: usize, extra_args: &[String], options: &Options) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let (client_scheme, peer_scheme) =
            (scheme(options.https_clients), scheme(options.https_peers));
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, _))| format!("e{i}={peer_scheme}://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (client, peer, metrics)) in ports.iter().enumerate() {
            let url = format!("{client_scheme}://127.0.0.1:{client}");
            let peer_url = format!("{peer_scheme}://127.0.0.1:{peer}");
            let metrics_url = format!("http://127.0.0.1:{metrics}");
            let log = std::fs::File::create(dir.path().join(format!("e{i}.log"))).expect("log");
            let child = Command::new("/usr/bin/etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--listen-metrics-urls", &metrics_url])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(extra_args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd 3.4 at /usr/bin/etcd (apt-get install etcd-server)");
            children.push(child);
            endpoints.push(url);
        }
        let etcd = Etcd {
            children,
            endpoints,
            client_ports: ports.iter().map(|(client, _, _)| *client).collect(),
            _dir: dir,
        };
        let healthy = wait_until(DEADLINE, || {
            ports.iter().all(|(_, _, metrics)| {
                http_get(*metrics, "/health").is_some_and(|(_, body)| body.contains("true"))
            })
        });
        assert!(healthy, "etcd did not become healthy");
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET `path` on a loopback port over HTTP/1.1: status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// An HTTP/1.1 POST on a loopback port and its response, read as it arrives: the status, then
/// the body whole or line by line (a chunked body is decoded).
pub struct HttpResponse {
    stream: TcpStream,
    /// The status code.
    pub status: u16,
    chunked: bool,
    raw: Vec<u8>,
    body: Vec<u8>,
    ended: bool,
}

impl HttpResponse {
    /// POSTs `body` to `path` with `Authorization: token` when given; `None` if the server
    /// does not answer with a status within [`DEADLINE`].
    pub fn post(port: u16, path: &str, token: Option<&str>, body: &str) -> Option<HttpResponse> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(DEADLINE)).ok()?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut response = HttpResponse {
            stream,
            status: 0,
            chunked: false,
            raw: Vec::new(),
            body: Vec::new(),
            ended: false,
        };
        let end = loop {
            if let Some(end) = response.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if !response.read_more() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&response.raw[..end]).to_lowercase();
        response.status = head.split_whitespace().nth(1)?.parse().ok()?;
        response.chunked = head.contains("transfer-encoding: chunked");
        response.raw.drain(..end + 4);
        Some(response)
    }

    /// Reads more of the connection into `raw`; false at its end (or after the deadline).
    fn read_more(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                self.ended = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    /// Moves what arrived of the body from `raw` into `body`, decoding whole chunks.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        while let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = String::from_utf8_lossy(&self.raw[..eol]);
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                return;
            };
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// The next line of the body (without its newline); `None` once the body has ended.
    pub fn next_line(&mut self) -> Option<String> {
        loop {
            self.decode();
            if let Some(pos) = self.body.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.body.drain(..=pos).collect();
                return Some(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            if self.ended || !self.read_more() {
                self.decode();
                if self.body.is_empty() {
                    return None;
                }
                let line = String::from_utf8_lossy(&self.body).into_owned();
                self.body.clear();
                return Some(line);
            }
        }
    }

    /// The whole body, once the server has closed the connection.
    pub fn body(mut self) -> String {
        while self.read_more() {}
        self.decode();
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `etcdctl` (API v3) against `endpoints`.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_with_input(endpoints, args, None)
}

/// Runs `etcdctl` (API v3) against `endpoints`, feeding `input` on stdin.
pub fn etcdctl_with_input(endpoints: &str, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=20s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl (apt-get install -y etcd-client)");
    if let Some(mut stdin) = child.stdin.take() {
        // A closed stdin is what etcdctl sees without input; a write error means it exited.
        let _ = stdin.write_all(input.unwrap_or_default());
    }
    child.wait_with_output().expect("etcdctl output")
}

/// stdout of a successful command; panics with stderr otherwise.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr of a failed command; panics if it succeeded.
pub fn fails(output: Output) -> String {
    assert!(
        !output.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}
