//! TLS on the client and peer ports with etcd's flags, checked with `etcdctl --cacert/--cert/
//! --key` side by side with etcd 3.4: who gets in, who does not, the certificate's Common Name
//! as the user, self-signed certificates, and forwarded proposals only from members.

mod cluster;

use std::path::{Path, PathBuf};
use std::process::Output;

use cluster::{Cluster, DEADLINE, Etcd, Options, etcdctl, wait_until};
use rustls::pki_types::pem::PemObject;

/// A test CA and the certificates it issues, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and key on disk.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
}

impl Issued {
    /// etcdctl's flags presenting this certificate.
    fn flags(&self) -> Vec<String> {
        vec![
            format!("--cert={}", self.cert.display()),
            format!("--key={}", self.key.display()),
        ]
    }
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write CA");
        Pki {
            dir,
            ca: rcgen::Issuer::new(params, key),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `cn` naming `sans`, usable to serve and as a client (as etcd's
    /// member certificates are).
    fn issue(&self, file: &str, cn: &str, sans: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let issued = Issued {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}-key.pem")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The flags of members that speak TLS on both ports and demand certificates on both.
fn member_tls_flags(pki: &Pki, member: &Issued) -> Vec<String> {
    let ca = path(&pki.ca_file());
    let (cert, key) = (path(&member.cert), path(&member.key));
    [
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--trusted-ca-file",
        &ca,
        "--client-cert-auth",
        "--peer-cert-file",
        &cert,
        "--peer-key-file",
        &key,
        "--peer-trusted-ca-file",
        &ca,
        "--peer-client-cert-auth",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn tls_options(pki: &Pki, member: &Issued) -> Options {
    Options {
        extra_args: member_tls_flags(pki, member),
        https_clients: true,
        https_peers: true,
        ..Options::default()
    }
}

/// etcdctl against `endpoint`, trusting `ca`, with `extra` flags (a certificate, a user).
fn ctl(endpoint: &str, ca: &Path, extra: &[String], args: &[&str]) -> Output {
    let mut all: Vec<String> = vec![format!("--cacert={}", ca.display())];
    all.extend(extra.iter().cloned());
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    etcdctl(endpoint, &all)
}

/// What a user sees of a command: its output, or the error it ends with.
fn seen(output: Output) -> String {
    if output.status.success() {
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| l.starts_with("Error:"));
        format!("failed: {}", last.unwrap_or("(no error line)"))
    }
}

/// Who gets through to a cluster whose client port demands certificates: etcdctl with a
/// certificate from the cluster's CA writes through one member and reads through another;
/// without one, with one from another CA, or in plain text, nothing is read.
fn only_certified_clients_get_in(endpoints: &[String], pki: &Pki, other: &Pki) {
    let ca = pki.ca_file();
    let client = pki.issue("client", "client", &[]);
    let stranger = other.issue("stranger", "client", &[]);
    let put = ctl(&endpoints[0], &ca, &client.flags(), &["put", "k", "v"]);
    assert_eq!(seen(put), "OK");
    let last = endpoints.last().expect("an endpoint");
    let got = ctl(
        last,
        &ca,
        &client.flags(),
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(seen(got), "v", "replicated over peer TLS");
    let refused = |output: Output, who: &str| {
        assert!(!output.status.success(), "{who} got in: {}", seen(output));
    };
    let timeout = "--command-timeout=3s".to_string();
    refused(
        ctl(last, &ca, std::slice::from_ref(&timeout), &["get", "k"]),
        "a client without a certificate",
    );
    let mut with_stranger = stranger.flags();
    with_stranger.push(timeout.clone());
    refused(
        ctl(last, &ca, &with_stranger, &["get", "k"]),
        "a client whose certificate another CA issued",
    );
    let plain = last.replacen("https://", "http://", 1);
    refused(
        etcdctl(&plain, &[&timeout, "get", "k"]),
        "a plain-text client",
    );
}

#[test]
fn tls_members_serve_certified_clients_only_as_etcd_does() {
    let pki = Pki::new("cluster-ca");
    let other = Pki::new("other-ca");
    let member = pki.issue("member", "member", &["127.0.0.1", "localhost"]);
    let options = tls_options(&pki, &member);

    let etcd = Etcd::start_with(3, &options.extra_args, &options);
    only_certified_clients_get_in(&etcd.endpoints, &pki, &other);
    drop(etcd);

    let mend = Cluster::start(3, options);
    let endpoints: Vec<String> = mend.members.iter().map(|m| m.endpoint()).collect();
    only_certified_clients_get_in(&endpoints, &pki, &other);

    // The benchmark tool loads TLS endpoints with etcdctl's certificate flags.
    let client = pki.issue("bench", "bench", &[]);
    let benchmark = |tls: bool| {
        let mut cmd = std::process::Command::new(cluster::storage_node_bin());
        cmd.args([
            "benchmark",
            "--endpoints",
            &endpoints.join(","),
            "--total",
            "20",
        ]);
        if tls {
            cmd.arg("--cacert").arg(pki.ca_file());
            cmd.arg("--cert")
                .arg(&client.cert)
                .arg("--key")
                .arg(&client.key);
        }
        cmd.arg("put").output().expect("run the benchmark")
    };
    let loaded = benchmark(true);
    let stdout = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success() && stdout.contains("20 ops"),
        "{stdout}"
    );
    let refused = benchmark(false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("needs --cacert"),
        "{stderr}"
    );
}

/// With auth on, a request without a token acts as its certificate's Common Name: denied
/// until the user's role may read, then allowed to read and still not to write; a token
/// still wins over the certificate.
fn common_name_scenario(endpoint: &str, pki: &Pki) -> Vec<String> {
    let ca = pki.ca_file();
    let root = pki.issue("root", "root", &[]).flags();
    let alice = pki.issue("alice", "alice", &[]).flags();
    let run = |who: &[String], args: &[&str]| seen(ctl(endpoint, &ca, who, args));
    let mut seen = Vec::new();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:alicepw"],
        &["put", "a", "1"],
        &["auth", "enable"],
    ] {
        seen.push(run(&root, args));
    }
    seen.push(run(&alice, &["get", "a"]));
    for args in [
        &["role", "add", "reader"][..],
        &["role", "grant-permission", "reader", "read", "a"],
        &["user", "grant-role", "alice", "reader"],
    ] {
        seen.push(run(&root, args));
    }
    seen.push(run(&alice, &["get", "a"]));
    seen.push(run(&alice, &["put", "a", "2"]));
    // alice's certificate with root's password: the token (root) decides.
    let mut alice_as_root = alice.clone();
    alice_as_root.push("--user=root:rootpw".to_string());
    seen.push(run(&alice_as_root, &["put", "a", "3"]));
    seen.push(run(&root, &["get", "a", "--print-value-only"]));
    seen
}

#[test]
fn the_certificate_common_name_is_the_user_as_in_etcd() {
    let pki = Pki::new("cluster-ca");
    let member = pki.issue("member", "member", &["127.0.0.1", "localhost"]);
    let options = tls_options(&pki, &member);

    let etcd = Etcd::start_with(1, &options.extra_args, &options);
    let expected = common_name_scenario(&etcd.endpoints[0], &pki);
    drop(etcd);
    assert!(
        expected[5].contains("permission denied") && expected[12] == "3",
        "etcd's own story: {expected:#?}"
    );

    let pki = Pki::new("cluster-ca");
    let member = pki.issue("member", "member", &["127.0.0.1", "localhost"]);
    let mend = Cluster::start(1, tls_options(&pki, &member));
    let got = common_name_scenario(&mend.members[0].endpoint(), &pki);
    assert_eq!(got, expected);
}

#[test]
fn auto_tls_serves_a_self_signed_certificate_kept_across_restarts() {
    let options = Options {
        extra_args: vec!["--auto-tls".into(), "--peer-auto-tls".into()],
        https_clients: true,
        https_peers: true,
        ..Options::default()
    };
    let mut mend = Cluster::start(1, options);
    let endpoint = mend.members[0].endpoint();
    let insecure = |args: &[&str]| {
        let mut all = vec!["--insecure-skip-tls-verify", "--insecure-transport=false"];
        all.extend(args);
        seen(etcdctl(&endpoint, &all))
    };
    assert_eq!(insecure(&["put", "k", "v"]), "OK");
    let verified = etcdctl(&endpoint, &["--command-timeout=3s", "get", "k"]);
    assert!(
        !verified.status.success(),
        "a self-signed certificate passed verification against the system's CAs"
    );

    let fixtures = mend.members[0].dir.join("fixtures");
    let cert = std::fs::read(fixtures.join("client/cert.pem")).expect("client certificate");
    for key in ["client/key.pem", "peer/key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(fixtures.join(key))
            .expect(key)
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600, "{key} is private");
    }
    assert!(mend.member(0).stop(), "clean stop");
    mend.member(0).start();
    mend.wait_healthy();
    assert_eq!(insecure(&["get", "k", "--print-value-only"]), "v");
    let again = std::fs::read(fixtures.join("client/cert.pem")).expect("client certificate");
    assert_eq!(again, cert, "the certificate is kept, not made anew");
}

/// A forwarded write from `tls` (a peer client presenting its certificate) for key `key`.
async fn forward_put(
    peer_url: &str,
    tls: storage_node::tls::PortTls,
    key: &str,
) -> Result<storage_node::raft::node::ForwardReply, storage_node::raft::network::PeerError> {
    use storage_node::api::{Command, PutRequest, Request, RequestHeader};
    let peers = storage_node::raft::network::Peers::with_tls(Some(tls));
    let proposal = storage_node::raft::node::Proposal::Command(Command {
        header: RequestHeader {
            id: 1 << 60,
            username: "root".into(),
            auth_revision: 0,
        },
        request: Request::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"forged".to_vec(),
            ..PutRequest::default()
        }),
    });
    peers
        .call(
            peer_url,
            storage_node::raft::network::Rpc::Propose,
            &proposal,
            std::time::Duration::from_secs(10),
        )
        .await
}

fn peer_client(pki: &Pki, issued: &Issued) -> storage_node::tls::PortTls {
    let flags = storage_node::tls::PortFlags {
        cert_file: Some(issued.cert.clone()),
        key_file: Some(issued.key.clone()),
        trusted_ca_file: Some(pki.ca_file()),
        client_cert_auth: true,
        ..Default::default()
    };
    let policy = storage_node::tls::Policy::default();
    storage_node::tls::peer_port(&flags, &policy, Path::new("/nonexistent"), &[])
        .expect("peer TLS")
        .expect("configured")
}

/// Connects to `url` over TLS trusting `ca` but presenting no certificate, sends HTTP/2's
/// preface and a SETTINGS frame, and returns how many bytes came back before the connection
/// failed or closed.
async fn speak_without_a_certificate(url: &str, ca: &Path) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("CA");
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("PEM")).expect("CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let address = url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return 0; // refused within the handshake
    };
    let hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    if tls.write_all(hello).await.is_err() {
        return 0;
    }
    let mut received = 0;
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(DEADLINE, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    });
    read.await
        .expect("the peer port neither answered nor closed");
    received
}

#[test]
fn the_peer_port_takes_forwarded_proposals_and_every_other_request_only_from_members() {
    let pki = Pki::new("cluster-ca");
    let member = pki.issue("member", "member", &["127.0.0.1", "localhost"]);
    let mend = Cluster::start(1, tls_options(&pki, &member));
    let peer_url = mend.members[0].peer_url();
    let endpoint = mend.members[0].endpoint();
    let client = pki.issue("client", "client", &[]);
    let read = |key: &str| {
        seen(ctl(
            &endpoint,
            &pki.ca_file(),
            &client.flags(),
            &["get", key, "--print-value-only"],
        ))
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    // Signed by the cluster's CA, but naming no member's peer host.
    let intruder = pki.issue("intruder", "member", &["intruder.example"]);
    let forged = runtime.block_on(forward_put(
        &peer_url,
        peer_client(&pki, &intruder),
        "forged",
    ));
    match forged {
        Err(e) => assert!(e.to_string().contains("only from members"), "{e}"),
        Ok(reply) => panic!("a forged proposal was taken: {reply:?}"),
    }
    assert_eq!(read("forged"), "", "nothing was written");
    // Nor any other peer request: it cannot read the membership (or vote, or replicate).
    let membership = |issued: &Issued| {
        runtime.block_on(
            storage_node::raft::network::Peers::with_tls(Some(peer_client(&pki, issued)))
                .call::<(), (u64, Vec<storage_node::raft::node::MemberInfo>)>(
                    &peer_url,
                    storage_node::raft::network::Rpc::Membership,
                    &(),
                    DEADLINE,
                ),
        )
    };
    match membership(&intruder) {
        Err(e) => assert!(e.to_string().contains("only from members"), "{e}"),
        Ok(members) => panic!("a non-member read the membership: {members:?}"),
    }
    let (_, members) = membership(&member).expect("a member reads the membership");
    assert_eq!(members.len(), 1);

    // A peer whose certificate another CA issued gets no answer at all.
    let other = Pki::new("other-ca");
    let stranger = other.issue("stranger", "member", &["127.0.0.1"]);
    let unknown = runtime.block_on(forward_put(&peer_url, peer_client(&pki, &stranger), "x"));
    assert!(
        unknown.is_err(),
        "a certificate of another CA got an answer"
    );

    // A peer presenting no certificate at all reads nothing from the port.
    let answered = runtime.block_on(speak_without_a_certificate(&peer_url, &pki.ca_file()));
    assert_eq!(answered, 0, "a peer without a certificate was answered");

    // The control: a certificate naming the member's peer host is taken.
    let taken = runtime.block_on(forward_put(&peer_url, peer_client(&pki, &member), "named"));
    assert!(taken.is_ok(), "{taken:?}");
    assert!(wait_until(DEADLINE, || read("named") == "forged"));
}

#[test]
fn tls_flag_mistakes_are_refused_with_etcds_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = |port: u16, scheme: &str| format!("{scheme}://127.0.0.1:{port}");
    let (client, peer) = (cluster::free_port(), cluster::free_port());
    let base = |binary: &str, scheme: &str, extra: &[&str]| {
        let data = dir
            .path()
            .join(format!("{binary}-{scheme}-{}", extra.len()));
        let output = std::process::Command::new(binary)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen-client-urls", &url(client, scheme)])
            .args(["--advertise-client-urls", &url(client, scheme)])
            .args(["--listen-peer-urls", &url(peer, "http")])
            .args(["--initial-advertise-peer-urls", &url(peer, "http")])
            .args([
                "--initial-cluster",
                &format!("default={}", url(peer, "http")),
            ])
            .args(extra)
            .output()
            .expect("run");
        assert!(!output.status.success(), "{binary} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let mend = cluster::storage_node_bin();
    let mend = mend.to_str().expect("path");
    let https_without_cert = format!(
        "TLS key/cert (--cert-file, --key-file) must be provided for client url {} with HTTPS scheme",
        url(client, "https")
    );
    assert!(base("/usr/bin/etcd", "https", &[]).contains(&https_without_cert));
    assert!(base(mend, "https", &[]).contains(&https_without_cert));
    let bad_suite = r#"unexpected TLS cipher suite "TLS_NOPE""#;
    assert!(base("/usr/bin/etcd", "http", &["--cipher-suites", "TLS_NOPE"]).contains(bad_suite));
    assert!(base(mend, "http", &["--cipher-suites", "TLS_NOPE"]).contains(bad_suite));
}
