//! `operator run` as a process, without a Kubernetes cluster: it refuses to start without a
//! client configuration, and with an API server that does not answer it stays up, healthy but
//! not ready, and stops cleanly on SIGTERM.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

/// The operator process, killed if the test ends before it exits.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `operator run` with `kubeconfig` and a home without `.kube/`, serving on `addr`.
fn operator_run(kubeconfig: &std::path::Path, home: &std::path::Path, addr: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(["run", "--metrics-addr", &addr.to_string()])
        .args(["--lease-duration-seconds", "3", "--identity", "test"])
        .args(["--lease-renew-deadline-seconds", "2"])
        .args(["--lease-retry-period-seconds", "1"])
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("operator starts")
}

/// A loopback address nothing listens on now.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("address")
}

/// The status line of `GET path`, if the server answers.
fn status_line(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.lines().next().map(str::to_string)
}

/// Waits until `check` holds or the deadline passes.
fn wait_until(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn operator_run_without_a_kubernetes_configuration_exits_1_and_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let child = operator_run(&dir.path().join("absent"), dir.path(), free_addr());
    let output = child.wait_with_output().expect("operator exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no Kubernetes client configuration"),
        "{stderr}"
    );
}

/// A renew deadline not shorter than the lease duration could let the leader lead on while a
/// standby takes over: refused at start.
#[test]
fn operator_run_refuses_election_timings_that_could_give_two_leaders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(["run", "--metrics-addr", &free_addr().to_string()])
        .args(["--lease-duration-seconds", "10"])
        .args(["--lease-renew-deadline-seconds", "10"])
        .env("KUBECONFIG", dir.path().join("absent"))
        .env("HOME", dir.path())
        .output()
        .expect("operator runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("renew deadline (10s) must be shorter than the lease duration"),
        "{stderr}"
    );
}

#[test]
fn operator_run_is_healthy_not_ready_without_an_api_server_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    // An API server address where nothing listens.
    let kubeconfig = dir.path().join("kubeconfig");
    let server = free_addr();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: c, cluster: {{server: 'https://{server}', insecure-skip-tls-verify: true}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n"
        ),
    )
    .expect("kubeconfig");
    let addr = free_addr();
    let mut op = Operator(operator_run(&kubeconfig, dir.path(), addr));

    assert!(
        wait_until(|| status_line(addr, "/healthz").is_some_and(|s| s.contains(" 200 "))),
        "/healthz never answered 200"
    );
    // No API server: the replica never took part in an election, so it is not ready.
    assert!(status_line(addr, "/readyz").is_some_and(|s| s.contains(" 503 ")));

    let pid = nix::unistd::Pid::from_raw(op.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut exited = None;
    assert!(
        wait_until(|| {
            exited = op.0.try_wait().ok().flatten();
            exited.is_some()
        }),
        "the operator did not stop on SIGTERM"
    );
    assert_eq!(exited.and_then(|s| s.code()), Some(0));
}
