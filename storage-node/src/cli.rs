//! The node's command-line flags, in etcd's spelling, and what they mean for cluster
//! bootstrap: member IDs, the initial cluster, and the URLs to listen on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use thiserror::Error;

/// Flags of a serving member (etcd's names and defaults where etcd has the flag).
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Human-readable name of this member; must match its entry in --initial-cluster.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Directory for the member's data (default: <name>.mend).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,
    /// Client URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer (raft) traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,
    /// This member's peer URLs as advertised to the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration: name=peer-url pairs, comma-separated.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER",
        default_value = "default=http://localhost:2380"
    )]
    pub initial_cluster: String,
    /// `new` to bootstrap a cluster, `existing` to join one that already added this member.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", value_enum, default_value_t = ClusterState::New)]
    pub initial_cluster_state: ClusterState,
    /// Restart this member, which has data, as a one-member cluster keeping that data (etcd's
    /// flag): the way back when a majority of members is gone for good. Start it once with
    /// the flag, then without: each start with it drops every other member again.
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER")]
    pub force_new_cluster: bool,
    /// Token that makes member and cluster IDs unique to this cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// URLs serving /metrics, /health, /readyz and /livez over HTTP.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// bcrypt cost for hashing user passwords.
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// Lifetime of an unused simple auth token, in seconds.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// Auth token type: `simple`, or
    /// `jwt,pub-key=<pem>,priv-key=<pem>,sign-method=<RS256|ES256|HS256|...>[,ttl=5m]` (signed
    /// tokens any member verifies; without priv-key a member verifies but does not issue).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple", value_parser = parse_auth_token)]
    pub auth_token: AuthToken,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Most operations in one txn branch.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// How `--auto-compaction-retention` is read: `periodic` (a duration of history, a bare
    /// number meaning hours) or `revision` (a count of revisions) (etcd's flag and default).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// How much history automatic compaction keeps; 0 turns it off (etcd's flag and default).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Raise the NOSPACE alarm, and refuse writes that need space, once the backend file
    /// reaches this many bytes (0: the default, 2 GiB; negative: no quota).
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Election timeout in milliseconds.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Applied entries between snapshots (log entries before them are then purged).
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Before serving, compare this member's KV hash with its peers' at a common revision and
    /// refuse to start when this member is not in a strict majority of equal hashes (a member
    /// whose data existed before; a new member has nothing to compare).
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK")]
    pub experimental_initial_corrupt_check: bool,
    /// How often the leader compares the members' KV hashes at a common revision and raises a
    /// CORRUPT alarm naming the members outside the majority (a duration such as `30s`, `5m`;
    /// `0` turns the check off).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0s",
        value_parser = parse_duration
    )]
    pub experimental_corrupt_check_time: Duration,
    /// How often a watcher created with progress notifications hears the current revision
    /// while nothing changes for it (etcd's flag and default).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_duration
    )]
    pub experimental_watch_progress_notify_interval: Duration,
    /// The most watchers one Watch stream may hold (Mend's own limit; etcd has none).
    #[arg(long, env = "MEND_MAX_WATCHERS_PER_STREAM", default_value_t = 100_000)]
    pub max_watchers_per_stream: usize,
    /// How often the server pings a client connection to check it is alive (etcd's flag and
    /// default).
    #[arg(
        long,
        env = "ETCD_GRPC_KEEPALIVE_INTERVAL",
        default_value = "2h",
        value_parser = parse_duration
    )]
    pub grpc_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed (etcd's flag and
    /// default).
    #[arg(
        long,
        env = "ETCD_GRPC_KEEPALIVE_TIMEOUT",
        default_value = "20s",
        value_parser = parse_duration
    )]
    pub grpc_keepalive_timeout: Duration,
    /// The most connections one listener (client or peer URL) keeps open; beyond it new
    /// clients wait until one closes (Mend's own limit; etcd has none).
    #[arg(
        long,
        env = "MEND_MAX_CONNECTIONS_PER_LISTENER",
        default_value_t = 4096
    )]
    pub max_connections_per_listener: usize,
    /// `/readyz` fails until authentication is enabled (Mend's own flag): a Kubernetes Service
    /// then routes no client to a member before its operator turned auth on.
    #[arg(long, env = "MEND_READY_ONLY_WITH_AUTH")]
    pub ready_only_with_auth: bool,
    /// Client TLS: the certificate the client port serves (PEM).
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client TLS: the private key of --cert-file (PEM).
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The CA bundle client certificates must chain to (with --client-cert-auth).
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file on every client connection;
    /// with auth on, a request without a token acts as the certificate's Common Name.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH")]
    pub client_cert_auth: bool,
    /// Client TLS with a self-signed certificate made at first start (kept in
    /// <data-dir>/fixtures/client) when --cert-file and --key-file are not given.
    #[arg(long, env = "ETCD_AUTO_TLS")]
    pub auto_tls: bool,
    /// Peer TLS: the certificate the peer port serves and presents to peers (PEM; it needs
    /// both the server and client auth usages).
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS: the private key of --peer-cert-file (PEM).
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// The CA bundle peers' certificates must chain to.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require a certificate signed by --peer-trusted-ca-file on every peer connection.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH")]
    pub peer_client_cert_auth: bool,
    /// Peer TLS with a self-signed certificate made at first start (kept in
    /// <data-dir>/fixtures/peer); peers' certificates are then not verified.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS")]
    pub peer_auto_tls: bool,
    /// With --peer-client-cert-auth: the only Common Name a peer's certificate may carry.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// TLS 1.2 cipher suites both ports allow, by their Go names (comma-separated; default:
    /// rustls' AEAD suites with forward secrecy). TLS 1.3's suites are always allowed.
    #[arg(long, env = "ETCD_CIPHER_SUITES", value_delimiter = ',')]
    pub cipher_suites: Vec<String>,
    /// The lowest TLS version both ports accept: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,
    /// The highest TLS version both ports accept (empty: the highest there is).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,
    /// Log format.
    #[arg(long, env = "MEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// FAULT SWITCH, tests and demos only: reproduce etcd issue 11651 (auth changes commit
    /// without the consistent index, so a restart replays them and AuthRevisions drift).
    #[arg(long, env = "MEND_UNSAFE_REPRODUCE_ETCD_11651")]
    pub unsafe_reproduce_etcd_11651: bool,
    /// FAULT, tests only: while this file exists (a relative path is taken inside
    /// `--data-dir`), every AuthStatus call fails with Unavailable and the rest of the member
    /// serves, so tests can check that an operator keeps an AuthRevision it could not read
    /// unknown, never zero.
    #[arg(long, hide = true, value_name = "FILE")]
    pub unsafe_test_fail_auth_status_if: Option<std::path::PathBuf>,
    /// FAULT, tests only: while this file exists (a relative path is taken inside
    /// `--data-dir`), this member stores the value of every Put it applies with its bytes
    /// inverted, so its data, and its KV hash, differ from its peers' at the same revision
    /// (what a corruption check must find).
    #[arg(long, hide = true, value_name = "FILE")]
    pub unsafe_test_corrupt_puts_if: Option<std::path::PathBuf>,
}

/// Why a duration flag does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is not a duration such as 30s, 5m, 1h30m or 500ms")]
pub struct BadDuration(String);

/// Parses a duration as Go's `time.ParseDuration` does for etcd's flags: a sequence of decimal
/// numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`); a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let bad = || BadDuration(text.to_string());
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    /// Bootstrap a new cluster from --initial-cluster.
    New,
    /// Join a cluster that already lists this member (added with MemberAdd).
    Existing,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sends `tracing` output to stderr as `format` says, filtered by `RUST_LOG` or else by
/// `default_filter`.
pub fn init_logging(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Flags that contradict each other or cannot be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A malformed --initial-cluster entry.
    #[error("--initial-cluster: {0:?} is not name=url")]
    ClusterEntry(String),
    /// This member is not in --initial-cluster.
    #[error("--initial-cluster has no member named {0:?} (set --name or fix --initial-cluster)")]
    NotInCluster(String),
    /// --initial-advertise-peer-urls disagree with --initial-cluster.
    #[error(
        "--initial-advertise-peer-urls {advertised:?} do not match --initial-cluster's {listed:?} for {name:?}"
    )]
    PeerUrlMismatch {
        /// Member name.
        name: String,
        /// URLs given by --initial-advertise-peer-urls.
        advertised: Vec<String>,
        /// URLs --initial-cluster lists for the member.
        listed: Vec<String>,
    },
    /// A URL that is not `http(s)://host:port`.
    #[error("{flag}: {url:?} is not http(s)://host:port")]
    Url {
        /// The flag.
        flag: &'static str,
        /// The value.
        url: String,
    },
    /// Two members would get one ID.
    #[error("--initial-cluster lists the peer URLs {0:?} twice")]
    DuplicatePeer(Vec<String>),
}

/// The members named by --initial-cluster: name → peer URLs.
pub fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| Error::ClusterEntry(part.to_string()))?;
        if name.is_empty() || url.is_empty() {
            return Err(Error::ClusterEntry(part.to_string()));
        }
        members
            .entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    for urls in members.values_mut() {
        urls.sort();
    }
    Ok(members)
}

/// A member's ID: a hash of its sorted peer URLs and the cluster token, as etcd derives it, so
/// every member computes the same IDs from the same flags. Never 0.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    fnv1a(urls.concat().as_bytes(), token.as_bytes()).max(1)
}

/// The cluster's ID from its initial member IDs.
pub fn cluster_id(member_ids: impl IntoIterator<Item = u64>) -> u64 {
    let mut ids: Vec<u64> = member_ids.into_iter().collect();
    ids.sort();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a(&bytes, b"").max(1)
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    a.iter().chain(b).fold(0xcbf2_9ce4_8422_2325u64, |h, byte| {
        (h ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Checks that an advertised URL is `http(s)://host:port`, where the host may be a DNS name
/// (peers and clients resolve it; only listen URLs must be IP addresses, as in etcd).
pub fn check_url(flag: &'static str, url: &str) -> Result<(), Error> {
    let (host, _) = host_port(flag, url)?;
    let hostname_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
    if hostname_ok {
        Ok(())
    } else {
        Err(Error::Url {
            flag,
            url: url.to_string(),
        })
    }
}

/// The host (brackets of an IPv6 literal removed) and port of an `http(s)://host:port` URL.
fn host_port<'a>(flag: &'static str, url: &'a str) -> Result<(&'a str, u16), Error> {
    let bad = || Error::Url {
        flag,
        url: url.to_string(),
    };
    let (host, port) = crate::tls::url_host_port(url).ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok((host, port))
}

/// The socket address of an `http(s)://ip:port` URL to listen on (`localhost` is 127.0.0.1).
pub fn socket_addr(flag: &'static str, url: &str) -> Result<SocketAddr, Error> {
    let (host, port) = host_port(flag, url)?;
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let ip = host.parse().map_err(|_| Error::Url {
        flag,
        url: url.to_string(),
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// The members of `--initial-cluster` (name → sorted peer URLs), checked against the member's
/// own `--name` and `--initial-advertise-peer-urls`: it must be listed with exactly those URLs,
/// and no two members may share peer URLs.
pub fn initial_members(
    name: &str,
    initial_cluster: &str,
    advertise_peer_urls: &[String],
) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let members = parse_initial_cluster(initial_cluster)?;
    let listed = members
        .get(name)
        .ok_or_else(|| Error::NotInCluster(name.to_string()))?;
    let mut advertised = advertise_peer_urls.to_vec();
    advertised.sort();
    if &advertised != listed {
        return Err(Error::PeerUrlMismatch {
            name: name.to_string(),
            advertised,
            listed: listed.clone(),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for urls in members.values() {
        if !seen.insert(urls.clone()) {
            return Err(Error::DuplicatePeer(urls.clone()));
        }
        for url in urls {
            check_url("--initial-cluster", url)?;
        }
    }
    Ok(members)
}

/// A member's data directory when `--data-dir` is not given: `<name>.mend`.
pub fn default_data_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("{name}.mend"))
}

impl ServeArgs {
    /// The data directory (`--data-dir`, or [`default_data_dir`]).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir(&self.name))
    }

    /// The initial members (name → peer URLs), checked against this member's own flags.
    pub fn initial_members(&self) -> Result<BTreeMap<String, Vec<String>>, Error> {
        initial_members(
            &self.name,
            &self.initial_cluster,
            &self.initial_advertise_peer_urls,
        )
    }

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval)
    }

    /// Election timeout.
    pub fn election(&self) -> Duration {
        Duration::from_millis(self.election_timeout)
    }

    /// The client port's TLS flags.
    pub fn client_tls(&self) -> crate::tls::PortFlags {
        crate::tls::PortFlags {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            auto_tls: self.auto_tls,
            allowed_cn: None,
        }
    }

    /// The peer port's TLS flags.
    pub fn peer_tls(&self) -> crate::tls::PortFlags {
        crate::tls::PortFlags {
            cert_file: self.peer_cert_file.clone(),
            key_file: self.peer_key_file.clone(),
            trusted_ca_file: self.peer_trusted_ca_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
            auto_tls: self.peer_auto_tls,
            allowed_cn: self.peer_cert_allowed_cn.clone(),
        }
    }
}

/// What `--auth-token` selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthToken {
    /// etcd's simple tokens: random strings registered through the log.
    Simple,
    /// Signed JWT tokens.
    Jwt(crate::auth::jwt::JwtOptions),
}

/// Parses `--auth-token` as etcd does: `simple`, or `jwt` followed by `key=value` options.
pub fn parse_auth_token(spec: &str) -> Result<AuthToken, crate::auth::jwt::OptionsError> {
    use crate::auth::jwt::{JwtOptions, OptionsError};
    let mut parts = spec.split(',');
    match parts.next().unwrap_or_default() {
        "simple" => return Ok(AuthToken::Simple),
        "jwt" => {}
        other => return Err(OptionsError(format!("unknown token type: {other}"))),
    }
    let mut options = JwtOptions {
        ttl: crate::auth::jwt::DEFAULT_TTL,
        ..JwtOptions::default()
    };
    for option in parts {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| OptionsError(format!("{option:?} is not key=value")))?;
        match key {
            "pub-key" => options.public_key = Some(PathBuf::from(value)),
            "priv-key" => options.private_key = Some(PathBuf::from(value)),
            "sign-method" => options.sign_method = value.to_string(),
            "ttl" => {
                options.ttl =
                    parse_duration(value).map_err(|e| OptionsError(format!("ttl: {e}")))?;
            }
            other => return Err(OptionsError(format!("unknown option {other:?}"))),
        }
    }
    Ok(AuthToken::Jwt(options))
}

/// The hosts of `urls` (for the names a self-signed certificate carries).
pub fn url_hosts(urls: &[String]) -> Vec<String> {
    urls.iter()
        .filter_map(|u| crate::tls::url_host(u))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["storage-node"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().serve
    }

    #[test]
    fn defaults_match_etcd() {
        let a = args(&[]);
        assert_eq!(a.name, "default");
        assert_eq!(a.data_dir(), PathBuf::from("default.mend"));
        assert_eq!(a.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(a.max_request_bytes, 1_572_864);
        assert_eq!(a.quota_backend_bytes, 0);
        assert_eq!(a.initial_cluster_state, ClusterState::New);
        assert!(!a.unsafe_reproduce_etcd_11651);
        assert_eq!(a.initial_members().unwrap().len(), 1);
    }

    #[test]
    fn a_three_member_cluster_parses_and_ids_are_stable_and_distinct() {
        let cluster = "n1=http://127.0.0.1:2380,n2=http://127.0.0.1:2381,n3=http://127.0.0.1:2382";
        let a = args(&[
            "--name",
            "n2",
            "--initial-cluster",
            cluster,
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2381",
        ]);
        let members = a.initial_members().unwrap();
        let ids: Vec<u64> = members
            .values()
            .map(|urls| member_id(urls, "tok"))
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
        assert_eq!(member_id(&["http://127.0.0.1:2381".into()], "tok"), ids[1]);
        assert_ne!(
            member_id(&["http://127.0.0.1:2381".into()], "other"),
            ids[1],
            "the token makes IDs cluster-specific"
        );
        assert_eq!(cluster_id(ids.clone()), cluster_id(ids.into_iter().rev()));
    }

    #[test]
    fn inconsistent_bootstrap_flags_are_refused_with_a_clear_message() {
        let a = args(&[
            "--name",
            "n9",
            "--initial-cluster",
            "n1=http://127.0.0.1:2380",
        ]);
        assert_eq!(
            a.initial_members().unwrap_err().to_string(),
            "--initial-cluster has no member named \"n9\" (set --name or fix --initial-cluster)"
        );
        let a = args(&[
            "--name",
            "n1",
            "--initial-cluster",
            "n1=http://127.0.0.1:2390",
        ]);
        assert!(matches!(
            a.initial_members(),
            Err(Error::PeerUrlMismatch { .. })
        ));
        assert!(matches!(
            parse_initial_cluster("n1"),
            Err(Error::ClusterEntry(_))
        ));
        let a = args(&[
            "--name",
            "a",
            "--initial-cluster",
            "a=http://localhost:2380,b=http://localhost:2380",
        ]);
        assert!(matches!(a.initial_members(), Err(Error::DuplicatePeer(_))));
    }

    #[test]
    fn auth_token_options_parse_as_etcd_writes_them() {
        assert_eq!(parse_auth_token("simple").unwrap(), AuthToken::Simple);
        let jwt = parse_auth_token("jwt,pub-key=a.pub,priv-key=a,sign-method=RS512,ttl=10m");
        assert_eq!(
            jwt.unwrap(),
            AuthToken::Jwt(crate::auth::jwt::JwtOptions {
                public_key: Some("a.pub".into()),
                private_key: Some("a".into()),
                sign_method: "RS512".into(),
                ttl: Duration::from_secs(600),
            })
        );
        for (bad, says) in [
            ("bogus", "unknown token type: bogus"),
            ("jwt,foo=bar", "unknown option"),
            ("jwt,pub-key", "is not key=value"),
            ("jwt,ttl=soon", "ttl"),
        ] {
            let e = parse_auth_token(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("auth: invalid auth options") && e.contains(says),
                "{e}"
            );
        }
    }

    #[test]
    fn urls_resolve_to_socket_addresses() {
        assert_eq!(
            socket_addr("f", "http://localhost:2379").unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        assert_eq!(
            socket_addr("f", "http://[::1]:80/").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            socket_addr("f", "https://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        assert!(socket_addr("f", "http://localhost").is_err());
        assert!(socket_addr("f", "http://example.com:1").is_err());
        // Advertised URLs may name hosts (Kubernetes members are reached by DNS names).
        assert!(check_url("f", "http://node-0.mend.default.svc:2380").is_ok());
        assert!(check_url("f", "http://10.0.0.1:2380").is_ok());
        assert!(check_url("f", "http://node 0:2380").is_err());
        assert!(check_url("f", "ftp://node:2380").is_err());
        assert!(check_url("f", "http://node").is_err());
    }

    #[test]
    fn durations_parse_as_go_parses_etcd_flags() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5", "s", "5x", "1..5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let a = args(&["--experimental-corrupt-check-time", "2m"]);
        assert_eq!(a.experimental_corrupt_check_time, Duration::from_secs(120));
        assert!(!a.experimental_initial_corrupt_check);
        assert_eq!(args(&[]).experimental_corrupt_check_time, Duration::ZERO);
    }

    #[test]
    fn unknown_cluster_state_is_refused() {
        assert!(Cli::try_parse_from(["storage-node", "--initial-cluster-state", "maybe"]).is_err());
    }
}
