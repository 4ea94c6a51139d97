//! TLS on the client and peer ports, configured with etcd's flags: the certificate and key a
//! port serves (`--cert-file`/`--key-file`, `--peer-cert-file`/`--peer-key-file`), the CA its
//! clients' certificates must chain to (`--trusted-ca-file`, with `--client-cert-auth`), a
//! self-signed certificate made at start (`--auto-tls`), the allowed TLS versions and TLS 1.2
//! cipher suites. rustls with the ring provider does the work.
//!
//! A connection accepted on either port is a [`Conn`]: plain TCP or TLS, with what the server
//! needs to know of its client in [`ConnInfo`] (the verified certificate's Common Name, which
//! becomes the user under `--client-cert-auth` as in etcd).
//!
//! Differences from etcd: rustls speaks TLS 1.2 and 1.3 only, and only AEAD cipher suites with
//! forward secrecy, so `--tls-min-version TLS1.0`/`TLS1.1` and CBC, RC4 or static-RSA suites
//! are refused at start with a message that says so.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a certificate made by `--auto-tls` is valid (etcd's figure: one year).
const SELF_SIGNED_DAYS: i64 = 365;

/// Whether a URL asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// The host of an `http(s)://host:port` URL (an IPv6 literal without its brackets).
pub fn url_host(url: &str) -> Option<&str> {
    url_host_port(url).map(|(host, _)| host)
}

/// Whether the certificate name `name` (a subject alternative name) covers `host`, as a TLS
/// client checks a server's: IP addresses compared as addresses (`fd00:0::1` is `fd00::1`),
/// DNS names without regard to case, a `*.` wildcard standing for exactly the first label.
pub fn name_matches(name: &str, host: &str) -> bool {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return name.parse::<std::net::IpAddr>() == Ok(ip);
    }
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(parent), Some((first, rest))) => {
            !first.is_empty() && !parent.is_empty() && parent.eq_ignore_ascii_case(rest)
        }
        _ => false,
    }
}

/// The host (an IPv6 literal without its brackets) and the port text of an
/// `http(s)://host:port` URL.
pub fn url_host_port(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    Some((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// What can go wrong setting TLS up; each says which flag or file is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate, key or CA file could not be read.
    #[error("{flag} {}: {source}", path.display())]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file held no usable PEM block of the kind the flag needs.
    #[error("{flag} {}: {what}", path.display())]
    Pem {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What was missing or wrong.
        what: String,
    },
    /// A `--cipher-suites` entry is not a cipher suite name.
    #[error("unexpected TLS cipher suite {0:?}")]
    UnknownCipherSuite(String),
    /// A `--cipher-suites` entry rustls does not offer.
    #[error(
        "TLS cipher suite {0:?} is not supported by Mend: it offers only AEAD suites with \
         forward secrecy (ECDHE with AES-GCM or ChaCha20-Poly1305)"
    )]
    UnsupportedCipherSuite(String),
    /// A `--tls-min-version`/`--tls-max-version` value that is not a TLS version.
    #[error("unexpected TLS version {0:?} (use TLS1.2 or TLS1.3)")]
    UnknownVersion(String),
    /// A TLS version rustls does not speak.
    #[error("{0} is not supported by Mend: it speaks TLS1.2 and TLS1.3")]
    UnsupportedVersion(String),
    /// The flags contradict each other.
    #[error("{0}")]
    Flags(String),
    /// rustls refused the configuration (a key that does not match its certificate, say).
    #[error("{port} TLS: {source}")]
    Rustls {
        /// `client` or `peer`.
        port: &'static str,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// `--auto-tls` could not make or save its certificate.
    #[error("self-signed certificate in {}: {reason}", dir.display())]
    SelfSigned {
        /// Where it goes.
        dir: PathBuf,
        /// Why it failed.
        reason: String,
    },
}

/// This module's result.
pub type Result<T> = std::result::Result<T, Error>;

/// The flags of one port (the client port's, or the peer port's with their `peer-` names).
#[derive(Clone, Debug, Default)]
pub struct PortFlags {
    /// The certificate served (PEM, leaf first).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The CA bundle clients' certificates must chain to (and, for the peer port, the CA
    /// peers' serving certificates must chain to).
    pub trusted_ca_file: Option<PathBuf>,
    /// Whether clients must present a certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// Make a self-signed certificate when no cert and key files are given.
    pub auto_tls: bool,
    /// With client certificate auth: the only Common Name a client certificate may carry.
    pub allowed_cn: Option<String>,
}

/// The TLS versions and TLS 1.2 cipher suites both ports allow.
#[derive(Clone, Debug)]
pub struct Policy {
    versions: Vec<&'static SupportedProtocolVersion>,
    /// Empty: rustls' defaults.
    tls12_suites: Vec<SupportedCipherSuite>,
}

/// Flag names, for messages: the client port's and the peer port's.
struct Names {
    port: &'static str,
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
    client_cert_auth: &'static str,
}

const CLIENT_NAMES: Names = Names {
    port: "client",
    cert: "--cert-file",
    key: "--key-file",
    ca: "--trusted-ca-file",
    client_cert_auth: "--client-cert-auth",
};

const PEER_NAMES: Names = Names {
    port: "peer",
    cert: "--peer-cert-file",
    key: "--peer-key-file",
    ca: "--peer-trusted-ca-file",
    client_cert_auth: "--peer-client-cert-auth",
};

fn version(name: &str) -> Result<&'static SupportedProtocolVersion> {
    match name {
        "TLS1.2" => Ok(&rustls::version::TLS12),
        "TLS1.3" => Ok(&rustls::version::TLS13),
        "TLS1.0" | "TLS1.1" => Err(Error::UnsupportedVersion(name.to_string())),
        _ => Err(Error::UnknownVersion(name.to_string())),
    }
}

/// Go's names of the TLS 1.2 suites rustls does not implement (etcd accepts them).
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The rustls suite Go calls `name` (Go also accepts the ChaCha20 names without `_SHA256`).
fn tls12_suite(name: &str) -> Result<SupportedCipherSuite> {
    let wanted = if name.ends_with("_CHACHA20_POLY1305") {
        format!("{name}_SHA256")
    } else {
        name.to_string()
    };
    let found = ring::ALL_CIPHER_SUITES
        .iter()
        .find(|s| s.version() == &rustls::version::TLS12 && format!("{:?}", s.suite()) == wanted);
    match found {
        Some(suite) => Ok(*suite),
        None if GO_ONLY_SUITES.contains(&name) => {
            Err(Error::UnsupportedCipherSuite(name.to_string()))
        }
        None => Err(Error::UnknownCipherSuite(name.to_string())),
    }
}

impl Policy {
    /// The policy `--tls-min-version`, `--tls-max-version` (empty: none) and `--cipher-suites`
    /// (Go's names; empty: rustls' defaults) describe, checked as etcd 3.5 checks them.
    pub fn new(min: &str, max: &str, cipher_suites: &[String]) -> Result<Policy> {
        let min_v = version(min)?;
        let max_v = if max.is_empty() {
            &rustls::version::TLS13
        } else {
            version(max)?
        };
        let rank = |v: &SupportedProtocolVersion| u8::from(v == &rustls::version::TLS13);
        if rank(min_v) > rank(max_v) {
            return Err(Error::Flags(format!(
                "--tls-min-version {min} is greater than --tls-max-version {max}"
            )));
        }
        let versions: Vec<_> = [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| rank(v) >= rank(min_v) && rank(v) <= rank(max_v))
            .collect();
        let names: Vec<&String> = cipher_suites.iter().filter(|s| !s.is_empty()).collect();
        if !names.is_empty() && rank(min_v) == 1 {
            return Err(Error::Flags(
                "cipher suites cannot be configured when only TLS1.3 or greater is supported"
                    .to_string(),
            ));
        }
        let tls12_suites = names
            .into_iter()
            .map(|n| tls12_suite(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(Policy {
            versions,
            tls12_suites,
        })
    }

    /// The ring provider restricted to this policy's suites (TLS 1.3's are always all on, as
    /// in Go).
    fn provider(&self) -> Arc<CryptoProvider> {
        let mut provider = ring::default_provider();
        if !self.tls12_suites.is_empty() {
            provider.cipher_suites.retain(|s| {
                s.version() == &rustls::version::TLS13
                    || self.tls12_suites.iter().any(|w| w.suite() == s.suite())
            });
        }
        Arc::new(provider)
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            versions: vec![&rustls::version::TLS12, &rustls::version::TLS13],
            tls12_suites: Vec::new(),
        }
    }
}

/// One port's TLS, ready: what its server accepts with, and (peer port) what its client
/// connects with.
#[derive(Clone)]
pub struct PortTls {
    acceptor: tokio_rustls::TlsAcceptor,
    client: ClientTls,
    allowed_cn: Option<String>,
    /// Whether clients are verified (their Common Name is then trustworthy).
    pub client_cert_auth: bool,
}

impl std::fmt::Debug for PortTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortTls")
            .field("client_cert_auth", &self.client_cert_auth)
            .field("allowed_cn", &self.allowed_cn)
            .finish_non_exhaustive()
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certificates(flag, path, &read(flag, path)?)
}

fn parse_certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            flag,
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            flag,
            path: path.to_path_buf(),
            what: "no PEM certificate in the file".to_string(),
        });
    }
    Ok(certs)
}

fn private_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    parse_private_key(flag, path, &read(flag, path)?)
}

fn parse_private_key(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::Pem {
        flag,
        path: path.to_path_buf(),
        what: format!("no usable private key: {e}"),
    })
}

fn roots(flag: &'static str, path: &Path) -> Result<RootCertStore> {
    parse_roots(flag, path, &read(flag, path)?)
}

fn parse_roots(flag: &'static str, path: &Path, pem: &[u8]) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in parse_certificates(flag, path, pem)? {
        store.add(cert).map_err(|e| Error::Pem {
            flag,
            path: path.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

/// A client's TLS (tools and the operator dialing members, members dialing peers): the CA the
/// server's certificate must chain to, and the certificate the client presents.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// From PEM: trusting the CA certificates in `ca`, presenting `cert` (leaf first) with
    /// `key`. `name` says where the PEM came from in errors (a Secret, say).
    pub fn from_pem(name: &str, ca: &[u8], cert: &[u8], key: &[u8]) -> Result<ClientTls> {
        let from = Path::new(name);
        ClientTls::build(
            ("CA", from, ca),
            ("certificate", from, cert),
            ("key", from, key),
        )
    }

    /// From files: `ca`, `cert` and `key` (etcdctl's `--cacert`, `--cert`, `--key`).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<ClientTls> {
        ClientTls::build(
            ("--cacert", ca, &read("--cacert", ca)?),
            ("--cert", cert, &read("--cert", cert)?),
            ("--key", key, &read("--key", key)?),
        )
    }

    /// Each part as (what names it in errors, where it came from, its PEM).
    fn build(
        ca: (&'static str, &Path, &[u8]),
        cert: (&'static str, &Path, &[u8]),
        key: (&'static str, &Path, &[u8]),
    ) -> Result<ClientTls> {
        let roots = parse_roots(ca.0, ca.1, ca.2)?;
        let certs = parse_certificates(cert.0, cert.1, cert.2)?;
        let key = parse_private_key(key.0, key.1, key.2)?;
        let policy = Policy::default();
        let config = ClientConfig::builder_with_provider(policy.provider())
            .with_protocol_versions(&policy.versions)
            .and_then(|c| {
                c.with_root_certificates(Arc::new(roots))
                    .with_client_auth_cert(certs, key)
            })
            .map_err(|source| Error::Rustls {
                port: "client",
                source,
            })?;
        Ok(ClientTls::new(config))
    }

    fn new(mut config: ClientConfig) -> ClientTls {
        config.alpn_protocols = vec![b"h2".to_vec()];
        ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// Opens a TLS connection to `host` over `tcp`, presenting the client certificate.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

impl PortFlags {
    /// Whether any of this port's TLS flags is set.
    pub fn any(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some() || self.auto_tls
    }
}

/// The client port's TLS from its flags; `None` when no certificate is configured.
/// `auto_dir` is where `--auto-tls` keeps its certificate, for `hosts`.
pub fn client_port(
    flags: &PortFlags,
    policy: &Policy,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<Option<PortTls>> {
    port(
        flags,
        policy,
        auto_dir,
        hosts,
        &CLIENT_NAMES,
        &[b"h2", b"http/1.1"],
    )
}

/// The peer port's TLS (server and client side) from its flags; `None` when no certificate is
/// configured.
pub fn peer_port(
    flags: &PortFlags,
    policy: &Policy,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<Option<PortTls>> {
    port(flags, policy, auto_dir, hosts, &PEER_NAMES, &[b"h2"])
}

fn port(
    flags: &PortFlags,
    policy: &Policy,
    auto_dir: &Path,
    hosts: &[String],
    names: &Names,
    alpn: &[&[u8]],
) -> Result<Option<PortTls>> {
    let (cert_file, key_file) = match (&flags.cert_file, &flags.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) if flags.auto_tls => self_signed(auto_dir, hosts)?,
        (None, None) => {
            if flags.client_cert_auth {
                return Err(Error::Flags(format!(
                    "{} needs {} and {} (or auto TLS)",
                    names.client_cert_auth, names.cert, names.key
                )));
            }
            return Ok(None);
        }
        _ => {
            return Err(Error::Flags(format!(
                "{} and {} go together",
                names.cert, names.key
            )));
        }
    };
    if flags.allowed_cn.as_deref().is_some_and(|cn| !cn.is_empty()) && !flags.client_cert_auth {
        return Err(Error::Flags(format!(
            "an allowed Common Name needs {}: without it no certificate is asked for",
            names.client_cert_auth
        )));
    }
    let rustls_error = |source| Error::Rustls {
        port: names.port,
        source,
    };
    let certs = certificates(names.cert, &cert_file)?;
    let key = private_key(names.key, &key_file)?;
    let provider = policy.provider();
    let ca = match &flags.trusted_ca_file {
        Some(path) => Some(Arc::new(roots(names.ca, path)?)),
        None => None,
    };

    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&policy.versions)
        .map_err(rustls_error)?;
    let server = match (&ca, flags.client_cert_auth) {
        (Some(ca), true) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(ca.clone(), provider.clone())
                    .build()
                    .map_err(|e| Error::Flags(format!("{}: {e}", names.ca)))?;
            server.with_client_cert_verifier(verifier)
        }
        (None, true) => {
            return Err(Error::Flags(format!(
                "{} needs {}: the CA client certificates must chain to",
                names.client_cert_auth, names.ca
            )));
        }
        (_, false) => server.with_no_client_auth(),
    };
    let mut server = server
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(rustls_error)?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();

    let client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&policy.versions)
        .map_err(rustls_error)?;
    let client = match ca {
        Some(ca) => client.with_root_certificates(ca),
        None => {
            // Self-signed peers (auto TLS without a CA): the link is encrypted, but who is at
            // the other end is not checked, as in etcd.
            if names.port == "peer" {
                tracing::warn!(
                    "peer TLS without --peer-trusted-ca-file: peers' certificates are not verified"
                );
            }
            client
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        }
    };
    let client = client
        .with_client_auth_cert(certs, key)
        .map_err(rustls_error)?;

    Ok(Some(PortTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        client: ClientTls::new(client),
        allowed_cn: flags.allowed_cn.clone().filter(|cn| !cn.is_empty()),
        client_cert_auth: flags.client_cert_auth,
    }))
}

/// The `cert.pem` and `key.pem` `--auto-tls` serves: made for `hosts` the first time, kept in
/// `dir` and reused afterwards.
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf)> {
    let failed = |reason: String| Error::SelfSigned {
        dir: dir.to_path_buf(),
        reason,
    };
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let mut names: Vec<String> = hosts.to_vec();
    names.sort();
    names.dedup();
    let key = rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| failed(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    params.not_before = time::OffsetDateTime::now_utc();
    params.not_after = params.not_before + time::Duration::days(SELF_SIGNED_DAYS);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(|e| failed(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|e| failed(e.to_string()))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| failed(e.to_string()))?;
    tracing::info!(dir = %dir.display(), "made a self-signed certificate (auto TLS)");
    Ok((cert_path, key_path))
}

/// Writes a secret readable by its owner only: the file is created with mode 0600, so the
/// secret is never readable by others, not even for a moment.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A server certificate verifier that accepts any certificate: peers with self-signed
/// certificates and no CA to check them against.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The subject Common Name of a DER certificate, and the DNS names and IP addresses its
/// subject alternative names list.
pub fn subject(cert: &CertificateDer<'_>) -> (Option<String>, Vec<String>) {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return (None, Vec::new());
    };
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    (cn, names)
}

impl PortTls {
    /// Completes the server side of a handshake on `tcp`, within [`HANDSHAKE_TIMEOUT`]. With an
    /// allowed CN, a client certificate with another Common Name is refused.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Conn> {
        let remote = tcp.peer_addr().ok();
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (_, session) = stream.get_ref();
        let (common_name, names) = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(subject)
            .unwrap_or_default();
        let h2 = session.alpn_protocol() == Some(b"h2");
        if let Some(allowed) = &self.allowed_cn
            && common_name.as_deref() != Some(allowed.as_str())
        {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "client certificate Common Name {common_name:?} is not the allowed {allowed:?}"
                ),
            ));
        }
        Ok(Conn {
            io: Io::Tls(Box::new(stream)),
            info: ConnInfo {
                remote,
                verified: self.client_cert_auth,
                common_name: common_name.filter(|_| self.client_cert_auth),
                names: if self.client_cert_auth {
                    names
                } else {
                    Vec::new()
                },
                tls: true,
                h2,
            },
            _slot: None,
        })
    }

    /// How this port dials others (peers dialing peers), presenting its certificate.
    pub fn client(&self) -> &ClientTls {
        &self.client
    }
}

/// What the server knows of a connection's client.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// Whether the client presented a certificate that was verified (client certificate
    /// auth); only then are `common_name` and `names` filled.
    pub verified: bool,
    /// The Common Name of the client's verified certificate.
    pub common_name: Option<String>,
    /// The DNS names and IP addresses of the verified certificate's subject alternative names.
    pub names: Vec<String>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Whether TLS negotiated HTTP/2 (ALPN `h2`).
    pub h2: bool,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection, plain or TLS.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// Its place among the listener's open connections, given back when it closes.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Accepts connections on `listener` and hands them over, TLS handshakes done (each in a task
/// of its own, so a slow client holds up nobody). At most `max_connections` are open at once:
/// beyond that, new clients wait in the listen backlog until one closes, as behind Go's
/// `LimitListener`. Accepting stops when the receiver is dropped.
pub fn incoming(
    listener: tokio::net::TcpListener,
    tls: Option<PortTls>,
    max_connections: usize,
) -> tokio::sync::mpsc::Receiver<Conn> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = async {
                    let slot = slots.clone().acquire_owned().await;
                    (slot, listener.accept().await)
                } => accepted,
            };
            let (slot, (tcp, peer)) = match accepted {
                (Ok(slot), Ok(connection)) => (slot, connection),
                (Err(_), _) => return,
                (_, Err(e)) => {
                    // Out of file descriptors and the like: the listener itself is fine.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Messages here are small and latency-bound: no Nagle delay.
            let _ = tcp.set_nodelay(true);
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let conn = match tls {
                    None => Conn::plain(tcp),
                    Some(tls) => match tls.accept(tcp).await {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                };
                let _ = tx
                    .send(Conn {
                        _slot: Some(slot),
                        ..conn
                    })
                    .await;
            });
        }
    });
    rx
}

impl Conn {
    /// A plain TCP connection.
    pub fn plain(tcp: TcpStream) -> Conn {
        let remote = tcp.peer_addr().ok();
        Conn {
            io: Io::Plain(tcp),
            info: ConnInfo {
                remote,
                ..ConnInfo::default()
            },
            _slot: None,
        }
    }

    /// What is known of the client.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(tcp) => tcp,
            Io::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Dials an `https://` URL for a gRPC channel: TCP, then a TLS handshake presenting this
/// side's certificate and checking the server's against the CA (peers dialing peers, tools
/// dialing members).
#[derive(Clone)]
pub struct Dialer {
    tls: ClientTls,
    timeout: Duration,
}

impl Dialer {
    /// Dials with `tls`, connecting within `timeout`.
    pub fn new(tls: ClientTls, timeout: Duration) -> Dialer {
        Dialer { tls, timeout }
    }
}

/// A channel to `url` through `endpoint`'s settings: over TLS with `tls` for an `https://` URL
/// (an error without it), in plain text otherwise.
pub async fn connect_channel(
    url: &str,
    endpoint: tonic::transport::Endpoint,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> std::result::Result<tonic::transport::Channel, String> {
    if !is_https(url) {
        return endpoint.connect().await.map_err(|e| e.to_string());
    }
    let tls = tls.ok_or_else(|| format!("{url}: an https URL needs --cacert, --cert and --key"))?;
    endpoint
        .connect_with_connector(Dialer::new(tls.clone(), timeout))
        .await
        .map_err(|e| e.to_string())
}

impl tower_service::Service<http::Uri> for Dialer {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Self::Response, Self::Error>>
                + Send,
        >,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {what}"))
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?.to_string();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let connect = tokio::net::TcpStream::connect((
                host.trim_start_matches('[').trim_end_matches(']'),
                port,
            ));
            let tcp = tokio::time::timeout(dialer.timeout, connect)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
            tcp.set_nodelay(true)?;
            let tls = dialer.tls.connect(&host, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_cover_hosts_as_a_tls_client_checks_them() {
        assert!(name_matches("m1.peer.ns.svc", "M1.Peer.ns.svc"));
        assert!(name_matches("*.peer.ns.svc", "m1.peer.ns.svc"));
        assert!(
            !name_matches("*.peer.ns.svc", "a.m1.peer.ns.svc"),
            "one label only"
        );
        assert!(!name_matches("*.peer.ns.svc", "peer.ns.svc"));
        assert!(name_matches("fd00::1", "fd00:0::1"));
        assert!(!name_matches("fd00::1", "fd00::2"));
        assert!(
            !name_matches("*.0.0.1", "127.0.0.1"),
            "no wildcard over an address"
        );
        assert!(!name_matches("m2.peer.ns.svc", "m1.peer.ns.svc"));
    }

    #[test]
    fn versions_and_suites_are_checked_as_etcd_checks_them() {
        assert!(Policy::new("TLS1.2", "", &[]).is_ok());
        assert!(matches!(
            Policy::new("TLS1.1", "", &[]),
            Err(Error::UnsupportedVersion(_))
        ));
        assert!(matches!(
            Policy::new("TLS9", "", &[]),
            Err(Error::UnknownVersion(_))
        ));
        assert!(matches!(
            Policy::new("TLS1.3", "TLS1.2", &[]),
            Err(Error::Flags(_))
        ));
        let suite = |s: &str| vec![s.to_string()];
        assert!(matches!(
            Policy::new("TLS1.3", "", &suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")),
            Err(Error::Flags(m)) if m.contains("only TLS1.3")
        ));
        let policy = Policy::new(
            "TLS1.2",
            "",
            &suite("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"),
        )
        .expect("a Go name rustls has");
        assert_eq!(policy.tls12_suites.len(), 1);
        assert!(matches!(
            Policy::new("TLS1.2", "", &suite("TLS_RSA_WITH_AES_128_CBC_SHA")),
            Err(Error::UnsupportedCipherSuite(_))
        ));
        assert!(matches!(
            Policy::new("TLS1.2", "", &suite("TLS_NOPE")),
            Err(Error::UnknownCipherSuite(_))
        ));
    }

    #[test]
    fn an_auto_tls_certificate_is_made_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (cert, key) = self_signed(dir.path(), &hosts).expect("made");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = std::fs::read(&cert).expect("cert");
        self_signed(dir.path(), &hosts).expect("reused");
        assert_eq!(
            std::fs::read(&cert).expect("cert"),
            first,
            "kept, not remade"
        );
        let flags = PortFlags {
            auto_tls: true,
            ..PortFlags::default()
        };
        let tls = client_port(&flags, &Policy::default(), dir.path(), &hosts);
        assert!(tls.expect("configures").is_some());
        let cn_without_auth = PortFlags {
            auto_tls: true,
            allowed_cn: Some("m1".into()),
            ..PortFlags::default()
        };
        let refused = peer_port(&cn_without_auth, &Policy::default(), dir.path(), &hosts);
        assert!(matches!(refused, Err(Error::Flags(m)) if m.contains("--peer-client-cert-auth")));
    }
}
