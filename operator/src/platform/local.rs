//! Members as local `storage-node` processes, each with its own data directory under a work
//! directory; wiped data is moved to `backups/` rather than deleted. Children are killed when
//! the platform is dropped.
//!
//! The work directory outlives the operator: `members.json` keeps each member's ports (its
//! data names its peer URL, so the ports must not change), and `<name>.pid` each process, so
//! an operator started again stops members a killed predecessor left running before it
//! starts them under its own supervision.
//!
//! With TLS (`spec.tls`), `pki/` holds the cluster's CA, each member's certificate (serving
//! both its ports, presented to its peers), the operator's client certificate and one for
//! users (`client.pem`, for etcdctl's `--cacert pki/ca.pem --cert pki/client.pem --key
//! pki/client-key.pem`). Keys are readable by their owner only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Error, Op, Platform, Result};

/// One member process and its addresses.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LocalMember {
    /// `--name`.
    pub name: String,
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    /// Peer port on 127.0.0.1.
    pub peer_port: u16,
    /// Metrics port on 127.0.0.1.
    pub metrics_port: u16,
    /// Whether its client and peer ports serve TLS (fixed when the work directory is made:
    /// its data names its peer URL).
    #[serde(default)]
    pub tls: bool,
    /// Revision of the template (binary and flags) it was last started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(skip)]
    child: Option<Child>,
}

impl LocalMember {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// Client URL.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// Peer URL.
    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }
}

/// The hosts local certificates name.
const LOCAL_HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// The certificate for users' clients (etcdctl), in `pki/`, named after its Common Name.
const USER_CERT: &str = crate::pki::CLIENT_CN;

/// Local processes under one work directory.
#[derive(Debug)]
pub struct LocalPlatform {
    binary: PathBuf,
    workdir: PathBuf,
    node_args: Vec<String>,
    /// Backups kept in `backups/` (the oldest beyond it are deleted).
    backup_retention: usize,
    /// The members, in creation order.
    pub members: Vec<LocalMember>,
}

/// A port that is free now and not in `taken`, below Linux's ephemeral range (32768–60999), so
/// no outgoing connection takes it between this check and the member binding it.
fn free_port(taken: &[u16]) -> Result<u16> {
    let mut seed = [0u8; 2];
    for _ in 0..1000 {
        // Randomness only spreads members and parallel runs apart; binding checks freedom.
        let _ = getrandom::fill(&mut seed);
        let port = 15_000 + u16::from_le_bytes(seed) % 17_000;
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Io(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port found between 15000 and 32000",
    )))
}

impl LocalPlatform {
    /// Plans `replicas` members named `node1`… under `workdir`; nothing starts yet.
    pub fn new(
        binary: PathBuf,
        workdir: &Path,
        replicas: usize,
        node_args: Vec<String>,
    ) -> Result<LocalPlatform> {
        std::fs::create_dir_all(workdir.join("backups")).map_err(Error::Io)?;
        let mut members = Vec::with_capacity(replicas);
        let mut taken = Vec::with_capacity(replicas * 3);
        for i in 1..=replicas {
            let mut port = || -> Result<u16> {
                let port = free_port(&taken)?;
                taken.push(port);
                Ok(port)
            };
            members.push(LocalMember {
                name: format!("node{i}"),
                client_port: port()?,
                peer_port: port()?,
                metrics_port: port()?,
                tls: false,
                template: None,
                child: None,
            });
        }
        Ok(LocalPlatform {
            binary,
            workdir: workdir.to_path_buf(),
            node_args,
            backup_retention: usize::MAX,
            members,
        })
    }

    /// The platform recorded in `workdir` by an earlier run (whatever `replicas` says: the
    /// healing loop resizes the cluster), or a new one of `replicas` members recorded there;
    /// members an earlier, killed operator left running are stopped.
    pub fn open(
        binary: PathBuf,
        workdir: &Path,
        replicas: usize,
        node_args: Vec<String>,
    ) -> Result<LocalPlatform> {
        let record = workdir.join(MEMBERS_FILE);
        let platform = match std::fs::read(&record) {
            Ok(bytes) => {
                let members: Vec<LocalMember> = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", record.display()),
                    ))
                })?;
                if members.len() != replicas {
                    tracing::info!(
                        members = members.len(),
                        replicas,
                        "the work directory's members differ from spec.replicas: the cluster \
                         is resized one member at a time"
                    );
                }
                std::fs::create_dir_all(workdir.join("backups")).map_err(Error::Io)?;
                LocalPlatform {
                    binary,
                    workdir: workdir.to_path_buf(),
                    node_args,
                    backup_retention: usize::MAX,
                    members,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let platform = LocalPlatform::new(binary, workdir, replicas, node_args)?;
                write_json(&record, &platform.members)?;
                platform
            }
            Err(e) => return Err(Error::Io(e)),
        };
        for member in &platform.members {
            platform.stop_orphan(&member.name);
        }
        Ok(platform)
    }

    /// Stops the process a pid file names if it still runs `name`'s member (a killed
    /// operator's child); anything else with that pid is left alone.
    fn stop_orphan(&self, name: &str) {
        let pid_file = self.workdir.join(format!("{name}.pid"));
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return;
        };
        let data_dir = self.data_dir(name);
        let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == data_dir.as_os_str().as_encoded_bytes())
        });
        if !ours {
            return;
        }
        tracing::warn!(
            member = name,
            pid,
            "stopping a member an earlier operator left running"
        );
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while nix::sys::signal::kill(pid, None).is_ok()
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        {
            if Instant::now() >= deadline {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                break;
            }
            // Polling another process's exit: it is not our child, so there is no wait.
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(pid_file);
    }

    /// Whether member `name`'s process runs; a process that exited is reaped and logged.
    pub fn is_running(&mut self, name: &str) -> bool {
        let Ok(member) = self.member_mut(name) else {
            return false;
        };
        let Some(child) = &mut member.child else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::warn!(member = name, %status, "member exited");
                member.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// Whether member `name` has data that names it (it ran before): storage-node's
    /// `member.json`, or etcd's write-ahead log when the members are etcd.
    pub fn has_data(&self, name: &str) -> bool {
        let dir = self.data_dir(name);
        dir.join("member.json").exists() || dir.join("member").join("wal").is_dir()
    }

    /// How the prober reaches member `name`.
    pub fn target(&self, name: &str) -> Result<crate::probe::Target> {
        let member = self.member(name)?;
        Ok(crate::probe::Target {
            name: member.name.clone(),
            endpoint: member.endpoint(),
            metrics: Some(format!("http://127.0.0.1:{}", member.metrics_port)),
        })
    }

    /// Keeps at most `n` backups (the one just made always), deleting the oldest after each new
    /// one (all are kept by default).
    pub fn set_backup_retention(&mut self, n: usize) {
        self.backup_retention = n;
    }

    /// Member `name`'s log file.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.workdir.join(format!("{name}.log"))
    }

    /// Stops every member cleanly.
    pub fn stop_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        for name in names {
            self.stop_member(&name)?;
        }
        Ok(())
    }

    /// Stops member `name`: SIGTERM, then SIGKILL if it has not exited within 30 s.
    pub fn stop_member(&mut self, name: &str) -> Result<()> {
        let member = self.member_mut(name)?;
        let Some(mut child) = member.child.take() else {
            return Ok(());
        };
        let _ = std::fs::remove_file(self.workdir.join(format!("{name}.pid")));
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    // Polling a child's exit: there is no portable blocking wait with a timeout.
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(());
                }
            }
        }
    }

    /// Moves member `name`'s data directory into `backups/` (keeping the newest
    /// `backup_retention`); returns the backup's path.
    pub fn move_data_aside(&mut self, name: &str) -> Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        // Zero-padded, so names sort by time as the pruning needs.
        let backup_name = format!("{stamp:016}-{name}");
        let backups = self.workdir.join("backups");
        storage_node::tools::backup::move_aside(
            &self.data_dir(name),
            &backups,
            &backup_name,
            self.backup_retention,
        )
        .map(|moved| moved.unwrap_or_else(|| backups.join(&backup_name)))
        .map_err(|e| Error::Io(std::io::Error::other(e)))
    }

    fn member(&self, name: &str) -> Result<&LocalMember> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::UnknownMember(name.to_string()))
    }

    fn member_mut(&mut self, name: &str) -> Result<&mut LocalMember> {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::UnknownMember(name.to_string()))
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.workdir.join(name)
    }

    /// `--initial-cluster` for every member.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The flags member `name` starts with beside its addresses and data directory: what the
    /// operator and the spec ask of every member, and its TLS flags (the files they name are
    /// not looked at: see [`LocalPlatform::tls_args`]).
    fn template_args(&self, name: &str) -> Result<Vec<String>> {
        let mut args = self.node_args.clone();
        if self.member(name)?.tls {
            let files = self.certificate_files(name);
            let path = |p: &Path| p.display().to_string();
            args.extend(crate::pki::member_flags(
                &path(&files.cert),
                &path(&files.key),
                &path(&files.ca),
            ));
        }
        Ok(args)
    }

    /// Where the certificate `file` in `pki/` and its key are, and the CA's.
    fn certificate_files(&self, file: &str) -> crate::pki::Issued {
        let dir = self.pki_dir();
        crate::pki::Issued {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}-key.pem")),
            ca: dir.join("ca.pem"),
        }
    }

    /// The revision of the template member `name` would start with now (its binary and
    /// [`LocalPlatform::template_args`]; not `--initial-cluster`, which changes with the
    /// membership and only matters to an empty data directory).
    pub fn desired_template(&self, name: &str) -> Result<String> {
        let args = self.template_args(name)?;
        let binary = self.binary.display().to_string();
        Ok(crate::rollout::revision(
            std::iter::once(binary.as_str()).chain(args.iter().map(String::as_str)),
        ))
    }

    /// Members running (or last started on) another template than they would start with now,
    /// in member order: a rolling update restarts them one at a time.
    pub fn outdated(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.template.as_deref() != self.desired_template(&m.name).ok().as_deref())
            .map(|m| m.name.clone())
            .collect()
    }

    /// Replaces the flags every member starts with (a changed spec): members pick them up
    /// when a rolling update restarts them.
    pub fn set_node_args(&mut self, node_args: Vec<String>) {
        self.node_args = node_args;
    }

    /// Restarts member `name`, which has data, on the current template (a rolling update).
    pub fn restart_on_template(&mut self, name: &str) -> Result<()> {
        if !self.has_data(name) {
            return Err(Error::Io(std::io::Error::other(format!(
                "{name} has no data: a restart would found a new cluster"
            ))));
        }
        self.stop_member(name)?;
        self.spawn(name, "new")
    }

    fn spawn(&mut self, name: &str, state: &str) -> Result<()> {
        self.spawn_with(name, state, &[])
    }

    /// Starts member `name`, which has data, once with `--force-new-cluster`: it forms a
    /// cluster of its own with its data (the flag is not part of its template: a later start
    /// is without it).
    pub fn start_forced(&mut self, name: &str) -> Result<()> {
        if !self.has_data(name) {
            return Err(Error::Io(std::io::Error::other(format!(
                "{name} has no data to form a cluster with"
            ))));
        }
        self.spawn_with(name, "new", &["--force-new-cluster"])
    }

    fn spawn_with(&mut self, name: &str, state: &str, once: &[&str]) -> Result<()> {
        let initial_cluster = self.initial_cluster();
        let dir = self.data_dir(name);
        let binary = self.binary.clone();
        let log_path = self.workdir.join(format!("{name}.log"));
        if self.member(name)?.child.is_some() {
            return Ok(());
        }
        if self.member(name)?.tls {
            // Issued first when missing or due: the flags name its files.
            self.tls_args(name)?;
        }
        let node_args = self.template_args(name)?;
        let template = self.desired_template(name)?;
        let member = self.member_mut(name)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::Io)?;
        let mut cmd = Command::new(binary);
        cmd.args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen-client-urls", &member.endpoint()])
            .args(["--advertise-client-urls", &member.endpoint()])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", member.metrics_port),
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(&node_args)
            .args(once)
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().map_err(Error::Io)?;
        let pid = child.id();
        member.child = Some(child);
        let recorded = member.template.replace(template.clone()) == Some(template);
        write_atomically(
            &self.workdir.join(format!("{name}.pid")),
            pid.to_string().as_bytes(),
        )?;
        if recorded {
            return Ok(());
        }
        write_json(&self.workdir.join(MEMBERS_FILE), &self.members)
    }

    fn pki_dir(&self) -> PathBuf {
        self.workdir.join("pki")
    }

    /// Whether the members serve TLS.
    pub fn tls(&self) -> bool {
        self.members.iter().any(|m| m.tls)
    }

    /// Makes the members serve TLS (`on`) or not. Only a work directory where no member has
    /// data yet can change: a member's data names its `http://` or `https://` peer URL.
    pub fn use_tls(&mut self, on: bool) -> Result<()> {
        if self.members.iter().all(|m| m.tls == on) {
            return Ok(());
        }
        if let Some(member) = self.members.iter().find(|m| self.has_data(&m.name)) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} was made {} TLS (member {} has data) but the spec asks for it {}: \
                     use a new work directory",
                    self.workdir.display(),
                    if on { "without" } else { "with" },
                    member.name,
                    if on { "on" } else { "off" },
                ),
            )));
        }
        for member in &mut self.members {
            member.tls = on;
        }
        write_json(&self.workdir.join(MEMBERS_FILE), &self.members)
    }

    fn ca(&self) -> Result<crate::pki::Ca> {
        crate::pki::Ca::load_or_create(&self.pki_dir(), "mend-local").map_err(pki_error)
    }

    /// The certificate `file` in `pki/` for `common_name`, issued again when it is missing or
    /// due for renewal (`hosts` are the local ones); whether it was issued now.
    fn certificate(&self, file: &str, common_name: &str) -> Result<(crate::pki::Issued, bool)> {
        let dir = self.pki_dir();
        let existing = self.certificate_files(file);
        let current = std::fs::read_to_string(&existing.cert).ok();
        let due = current
            .is_none_or(|pem| crate::pki::needs_renewal(&pem, time::OffsetDateTime::now_utc()));
        if !due && existing.key.exists() && existing.ca.exists() {
            return Ok((existing, false));
        }
        let hosts = LOCAL_HOSTS.map(String::from);
        let issued = self
            .ca()?
            .issue(&dir, file, common_name, &hosts)
            .map_err(pki_error)?;
        Ok((issued, true))
    }

    /// The TLS flags of member `name`, its certificate issued first when missing or due.
    fn tls_args(&self, name: &str) -> Result<Vec<String>> {
        let (issued, _) = self.certificate(name, name)?;
        let path = |p: &Path| p.display().to_string();
        Ok(crate::pki::member_flags(
            &path(&issued.cert),
            &path(&issued.key),
            &path(&issued.ca),
        ))
    }

    /// The operator's client certificate (and the users' one beside it), issued when missing
    /// or due; `None` without TLS.
    pub fn client_cert(&self) -> Result<Option<crate::client::ClientCert>> {
        if !self.tls() {
            return Ok(None);
        }
        self.certificate(USER_CERT, USER_CERT)?;
        let (issued, _) = self.certificate("operator", crate::pki::OPERATOR_CN)?;
        crate::client::ClientCert::from_issued(&issued)
            .map(Some)
            .map_err(|e| Error::Io(std::io::Error::other(e)))
    }

    /// Members whose certificate is due for renewal (or missing), in member order.
    pub fn certificates_due(&self) -> Vec<String> {
        let now = time::OffsetDateTime::now_utc();
        self.members
            .iter()
            .filter(|m| m.tls)
            .filter(|m| {
                let cert = self.pki_dir().join(format!("{}.pem", m.name));
                std::fs::read_to_string(cert).is_ok_and(|pem| crate::pki::needs_renewal(&pem, now))
            })
            .map(|m| m.name.clone())
            .collect()
    }

    /// Issues member `name` a new certificate and restarts it on it (a member reads its
    /// certificate at start).
    pub fn renew_certificate(&mut self, name: &str) -> Result<()> {
        let issued = self
            .ca()?
            .issue(&self.pki_dir(), name, name, &LOCAL_HOSTS.map(String::from));
        issued.map_err(pki_error)?;
        self.stop_member(name)?;
        self.spawn(name, "new")
    }

    /// Starts member `name` again; `state` is `new` or `existing` (it only matters when its
    /// data directory is empty).
    pub fn start(&mut self, name: &str, state: &str) -> Result<()> {
        self.spawn(name, state)
    }

    /// Builds member `name`'s data directory from the snapshot `file` as one member of a new
    /// cluster of every member (`storage-node snapshot restore`); it must have no data.
    pub fn restore(&mut self, name: &str, file: &Path) -> Result<()> {
        let member = self.member(name)?;
        let output = Command::new(&self.binary)
            .args(["snapshot", "restore"])
            .arg(file)
            .args(["--name", name])
            .arg("--data-dir")
            .arg(self.data_dir(name))
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .stdin(Stdio::null())
            .output()
            .map_err(Error::Io)?;
        if output.status.success() {
            return Ok(());
        }
        Err(Error::Io(std::io::Error::other(format!(
            "restoring {name} from {}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))))
    }

    /// Starts every member as a new cluster.
    pub fn start_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        for name in names {
            self.spawn(&name, "new")?;
        }
        Ok(())
    }

    /// Starts a stopped member again with its data.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        self.spawn(name, "new")
    }

    /// The members' names, in creation order.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// The client URL of `name`.
    pub fn endpoint(&self, name: &str) -> Result<String> {
        Ok(self.member(name)?.endpoint())
    }
}

fn pki_error(e: crate::pki::Error) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

/// Where the members and their ports are recorded in the work directory.
const MEMBERS_FILE: &str = "members.json";

/// Whether `workdir` records members already (an earlier run made them).
pub fn recorded(workdir: &Path) -> bool {
    workdir.join(MEMBERS_FILE).exists()
}

/// Writes `value` as pretty JSON to `path`, atomically (see [`write_atomically`]).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| Error::Io(e.into()))?;
    write_atomically(path, &json)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes).map_err(Error::Io)?;
    std::fs::rename(&tmp, path).map_err(Error::Io)
}

// Local process operations block for at most a member's clean stop; the supervisor runs one
// cluster, so they run inline rather than on a blocking pool.
impl Platform for LocalPlatform {
    async fn stop(&mut self, name: &str) -> Result<Op<()>> {
        self.stop_member(name).map(Op::Done)
    }

    async fn is_stopped(&mut self, name: &str) -> Result<bool> {
        self.member(name)?;
        Ok(!self.is_running(name))
    }

    /// Members' directories share the machine's disk with the work directory's backups, which
    /// the operator does not size: not checked locally.
    async fn has_room(
        &mut self,
        name: &str,
        _data_bytes: u64,
    ) -> Result<std::result::Result<(), String>> {
        self.member(name)?;
        Ok(Ok(()))
    }

    async fn backup_and_wipe(&mut self, name: &str) -> Result<Op<String>> {
        self.member(name)?;
        if !self.data_dir(name).exists() {
            return Ok(Op::Done(String::new()));
        }
        self.move_data_aside(name)
            .map(|backup| Op::Done(backup.display().to_string()))
    }

    async fn start_joining(&mut self, name: &str) -> Result<()> {
        self.spawn(name, "existing")
    }

    fn next_member(&self) -> String {
        (1..)
            .map(|i| format!("node{i}"))
            .find(|name| self.member(name).is_err())
            .unwrap_or_default()
    }

    async fn create(&mut self, name: &str) -> Result<Op<()>> {
        if self.member(name).is_ok() {
            return Ok(Op::Done(()));
        }
        let mut taken: Vec<u16> = self
            .members
            .iter()
            .flat_map(|m| [m.client_port, m.peer_port, m.metrics_port])
            .collect();
        let mut port = || -> Result<u16> {
            let port = free_port(&taken)?;
            taken.push(port);
            Ok(port)
        };
        let member = LocalMember {
            name: name.to_string(),
            client_port: port()?,
            peer_port: port()?,
            metrics_port: port()?,
            tls: self.tls(),
            template: None,
            child: None,
        };
        self.members.push(member);
        write_json(&self.workdir.join(MEMBERS_FILE), &self.members)?;
        Ok(Op::Done(()))
    }

    /// Stops the member, moves what data it has into `backups/` and drops it from
    /// `members.json`.
    async fn retire(&mut self, name: &str) -> Result<Op<String>> {
        self.member(name)?;
        self.stop_member(name)?;
        let kept = if self.has_data(name) || self.data_dir(name).exists() {
            let backup = self.move_data_aside(name)?;
            format!("its data was moved to {}", backup.display())
        } else {
            "it had no data".to_string()
        };
        self.members.retain(|m| m.name != name);
        write_json(&self.workdir.join(MEMBERS_FILE), &self.members)?;
        Ok(Op::Done(kept))
    }

    fn peer_url(&self, name: &str) -> Result<String> {
        Ok(self.member(name)?.peer_url())
    }

    fn endpoint(&self, name: &str) -> Result<String> {
        LocalPlatform::endpoint(self, name)
    }
}

impl Drop for LocalPlatform {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(self.workdir.join(format!("{}.pid", m.name)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_beyond_the_retention_are_deleted_oldest_first() {
        let work = tempfile::tempdir().expect("workdir");
        let mut platform =
            LocalPlatform::new(PathBuf::from("storage-node"), work.path(), 3, Vec::new())
                .expect("platform");
        platform.set_backup_retention(2);
        for old in ["0000000000000100-node2", "0000000000000200-node3"] {
            std::fs::create_dir_all(work.path().join("backups").join(old)).expect("old backup");
        }
        std::fs::create_dir_all(work.path().join("node1")).expect("data");
        std::fs::write(work.path().join("node1").join("member.json"), "{}").expect("data");
        let backup = platform.move_data_aside("node1").expect("backup");
        assert!(
            backup.join("member.json").exists(),
            "the data moved into the backup"
        );
        assert!(
            !work.path().join("node1").exists(),
            "the member's directory is wiped"
        );
        let mut left: Vec<String> = std::fs::read_dir(work.path().join("backups"))
            .expect("backups")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        left.sort();
        assert_eq!(left.len(), 2);
        assert!(
            !left.contains(&"0000000000000100-node2".to_string()),
            "{left:?}"
        );
        assert!(
            left.contains(&"0000000000000200-node3".to_string()),
            "{left:?}"
        );
    }

    #[tokio::test]
    async fn members_made_and_retired_are_kept_in_the_work_directory_across_runs() {
        let work = tempfile::tempdir().expect("workdir");
        let open = |replicas| {
            LocalPlatform::open(
                PathBuf::from("storage-node"),
                work.path(),
                replicas,
                Vec::new(),
            )
            .expect("platform")
        };
        let mut first = open(3);
        let ports: Vec<u16> = first.members.iter().map(|m| m.client_port).collect();
        assert_eq!(first.next_member(), "node4");
        assert_eq!(first.create("node4").await.expect("made"), Op::Done(()));
        assert_eq!(first.create("node4").await.expect("again"), Op::Done(()));
        drop(first);
        let mut again = open(5);
        let names: Vec<&str> = again.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["node1", "node2", "node3", "node4"],
            "not what the spec asks"
        );
        let reopened: Vec<u16> = again
            .members
            .iter()
            .take(3)
            .map(|m| m.client_port)
            .collect();
        assert_eq!(ports, reopened, "ports are kept across runs");
        let mut all: Vec<u16> = again
            .members
            .iter()
            .flat_map(|m| [m.client_port, m.peer_port, m.metrics_port])
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 12, "every port distinct");

        std::fs::create_dir_all(work.path().join("node3")).expect("data");
        std::fs::write(work.path().join("node3").join("member.json"), "{}").expect("data");
        let Op::Done(kept) = again.retire("node3").await.expect("retired") else {
            panic!("retiring a stopped member is immediate");
        };
        assert!(kept.contains("backups"), "{kept}");
        assert!(
            !work.path().join("node3").exists(),
            "its directory is emptied"
        );
        assert!(matches!(
            again.retire("node3").await,
            Err(Error::UnknownMember(_))
        ));
        drop(again);
        let names: Vec<String> = open(3).members.iter().map(|m| m.name.clone()).collect();
        assert_eq!(names, ["node1", "node2", "node4"]);
    }

    #[test]
    fn tls_is_fixed_once_a_member_has_data_and_switches_the_urls_to_https() {
        let work = tempfile::tempdir().expect("workdir");
        let mut platform =
            LocalPlatform::open(PathBuf::from("storage-node"), work.path(), 3, Vec::new())
                .expect("platform");
        platform.use_tls(true).expect("no data yet");
        assert!(
            platform
                .members
                .iter()
                .all(|m| m.endpoint().starts_with("https://"))
        );
        assert!(platform.initial_cluster().contains("=https://127.0.0.1:"));
        let cert = platform.client_cert().expect("issued").expect("TLS");
        drop(platform);
        let mut again =
            LocalPlatform::open(PathBuf::from("storage-node"), work.path(), 3, Vec::new())
                .expect("reopened");
        assert!(again.tls(), "recorded in members.json");
        assert_eq!(
            again.client_cert().expect("kept"),
            Some(cert),
            "not issued again"
        );
        std::fs::create_dir_all(work.path().join("node2")).expect("data");
        std::fs::write(work.path().join("node2").join("member.json"), "{}").expect("data");
        let error = again.use_tls(false).expect_err("node2 has data");
        assert!(
            error.to_string().contains("member node2 has data"),
            "{error}"
        );
        assert!(again.tls());
    }
}
