//! Three-member clusters on loopback for `--compare-etcd`: etcd 3.4 and Mend, started with
//! the same heartbeat and election settings in a temporary directory, stopped (every process
//! killed and reaped) when dropped.

use crate::tls::ClientTls;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Error;
use crate::pb::etcdserverpb::StatusRequest;
use crate::pb::etcdserverpb::maintenance_client::MaintenanceClient;

/// How long a cluster may take to elect a leader.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Which server a cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Etcd,
    Mend,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Mend => "mend",
        }
    }
}

/// A running cluster.
pub(super) struct LocalCluster {
    pub(super) kind: Kind,
    pub(super) endpoints: Vec<String>,
    /// How clients reach it when it serves TLS.
    pub(super) tls: Option<ClientTls>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

/// A client's TLS: trusting `ca`, presenting `cert` with `key`.
pub(super) fn client_tls(ca: &Path, cert: &Path, key: &Path) -> Result<ClientTls, Error> {
    ClientTls::from_files(ca, cert, key).map_err(|e| Error::Usage(e.to_string()))
}

/// A CA and one certificate (for 127.0.0.1, serving and client use) in `dir`: `ca.pem`,
/// `cert.pem`, `key.pem`. Members and the benchmark's clients all use it.
fn make_certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), Error> {
    let failed = |e: rcgen::Error| Error::Start(format!("certificates: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "benchmark CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "root");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).map_err(failed)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| Error::Start(format!("{}: {e}", path.display())))
    };
    write(&paths.0, &ca_cert.pem())?;
    write(&paths.1, &cert.pem())?;
    write(&paths.2, &key.serialize_pem())?;
    Ok(paths)
}

/// A port the OS just handed out on loopback (free when this returns).
fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| Error::Start(e.to_string()))?;
    Ok(listener
        .local_addr()
        .map_err(|e| Error::Start(e.to_string()))?
        .port())
}

impl LocalCluster {
    /// Starts three members of `kind` from `binary` and waits until every member names the
    /// same leader.
    pub(super) async fn start(kind: Kind, binary: &Path, tls: bool) -> Result<LocalCluster, Error> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("mend-benchmark-{}-", kind.name()))
            .tempdir()
            .map_err(|e| Error::Start(e.to_string()))?;
        let certificates = if tls {
            Some(make_certificates(dir.path())?)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push((free_port()?, free_port()?));
        }
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}={scheme}://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let client_tls = match &certificates {
            Some((ca, cert, key)) => Some(client_tls(ca, cert, key)?),
            None => None,
        };
        let mut cluster = LocalCluster {
            kind,
            endpoints: Vec::new(),
            tls: client_tls,
            children: Vec::new(),
            dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("{scheme}://127.0.0.1:{peer}");
            let log = std::fs::File::create(cluster.dir.path().join(format!("m{i}.log")))
                .map_err(|e| Error::Start(e.to_string()))?;
            let mut cmd = Command::new(binary);
            cmd.args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(cluster.dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .stdout(Stdio::null())
                .stderr(log);
            if let Some((ca, cert, key)) = &certificates {
                for (flag, file) in [
                    ("--cert-file", cert),
                    ("--key-file", key),
                    ("--trusted-ca-file", ca),
                    ("--peer-cert-file", cert),
                    ("--peer-key-file", key),
                    ("--peer-trusted-ca-file", ca),
                ] {
                    cmd.arg(flag).arg(file);
                }
                cmd.args(["--client-cert-auth", "--peer-client-cert-auth"]);
            }
            if kind == Kind::Mend {
                // Its metrics port would default to a fixed one; give it a free one.
                let metrics = format!("http://127.0.0.1:{}", free_port()?);
                cmd.args(["--listen-metrics-urls", &metrics]);
            }
            let child = cmd
                .spawn()
                .map_err(|e| Error::Start(format!("{} {}: {e}", kind.name(), binary.display())))?;
            cluster.children.push(child);
            cluster.endpoints.push(client_url);
        }
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    async fn wait_for_leader(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let mut leaders = Vec::new();
            for url in &self.endpoints {
                leaders.push(leader_of(url, self.tls.as_ref()).await);
            }
            if leaders[0].is_some_and(|l| l != 0) && leaders.iter().all(|l| *l == leaders[0]) {
                return Ok(());
            }
            for child in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Start(format!(
                        "a {} member exited ({status}); logs in {}",
                        self.kind.name(),
                        self.dir.path().display()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Start(format!(
                    "the {} cluster elected no leader in {START_DEADLINE:?}",
                    self.kind.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each member's resident memory in bytes (Linux), `None` where it cannot be read.
    pub(super) fn resident_memory(&self) -> Vec<Option<u64>> {
        self.children
            .iter()
            .map(|c| {
                let status = std::fs::read_to_string(format!("/proc/{}/status", c.id())).ok()?;
                let kib: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(kib * 1024)
            })
            .collect()
    }

    /// Where the members' data and logs are.
    pub(super) fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// The leader member `url` names, `None` if it does not answer.
async fn leader_of(url: &str, tls: Option<&ClientTls>) -> Option<u64> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let channel = crate::tls::connect_channel(url, endpoint, tls, Duration::from_secs(1))
        .await
        .ok()?;
    let status = MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .ok()?;
    Some(status.into_inner().leader)
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
