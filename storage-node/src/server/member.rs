//! Starting and stopping a member: identity, engine, the initial corruption check, raft, the
//! peer and client gRPC servers, the metrics endpoint, the periodic corruption check, and
//! bootstrap (`new` clusters initialise raft, members joining an `existing` cluster learn
//! their ID from the peers).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{self, ClusterState, ServeArgs};
use crate::entry::Member;
use crate::quota::{self, Quota};
use crate::raft::log_store::LogStore;
use crate::raft::network::{NetworkFactory, PeerService, Peers, Rpc};
use crate::raft::node::{MemberInfo, Node};
use crate::raft::state_machine::{Listeners, StateMachine};
use crate::store::{Store, StoreConfig};
use crate::tls::PortTls;

/// Why a member could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag is wrong.
    #[error(transparent)]
    Flags(#[from] cli::Error),
    /// The data directory could not be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The engine could not open.
    #[error("engine: {0}")]
    Store(#[from] crate::backend::Error),
    /// The raft log could not open.
    #[error("raft log: {0}")]
    Log(String),
    /// Raft failed to start or initialise.
    #[error("raft: {0}")]
    Raft(String),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A member joining an existing cluster could not find itself in the peers' membership.
    #[error("joining an existing cluster: {0}")]
    Join(String),
    /// A server stopped with an error.
    #[error("server: {0}")]
    Serve(String),
    /// The initial corruption check found this member's data differing from its peers'.
    #[error("initial corruption check: {0}")]
    Corrupt(#[from] crate::raft::corrupt::Error),
    /// The TLS flags or files are not usable.
    #[error("{0}")]
    Tls(#[from] crate::tls::Error),
    /// `--auth-token` is not usable.
    #[error("{0}")]
    AuthToken(#[from] crate::auth::jwt::OptionsError),
    /// `--auto-compaction-mode` or `--auto-compaction-retention` is not usable.
    #[error("{0}")]
    AutoCompaction(String),
}

/// The client port's and the peer port's TLS from the flags, checked against the URLs: an
/// `https://` URL needs its port's certificate (etcd's message), and so does
/// `--client-cert-auth` (etcd would serve plain text and ignore it).
fn tls_from_flags(
    args: &ServeArgs,
    dir: &std::path::Path,
) -> Result<(Option<PortTls>, Option<PortTls>), Error> {
    let policy = crate::tls::Policy::new(
        &args.tls_min_version,
        &args.tls_max_version,
        &args.cipher_suites,
    )?;
    let fixtures = dir.join("fixtures");
    let client_urls = [
        args.listen_client_urls.clone(),
        args.advertise_client_urls.clone(),
    ]
    .concat();
    let peer_urls = [
        args.listen_peer_urls.clone(),
        args.initial_advertise_peer_urls.clone(),
    ]
    .concat();
    let client = crate::tls::client_port(
        &args.client_tls(),
        &policy,
        &fixtures.join("client"),
        &cli::url_hosts(&client_urls),
    )?;
    let peer = crate::tls::peer_port(
        &args.peer_tls(),
        &policy,
        &fixtures.join("peer"),
        &cli::url_hosts(&peer_urls),
    )?;
    let missing = |kind: &str, flags: &str, url: &str| {
        Error::Tls(crate::tls::Error::Flags(format!(
            "TLS key/cert ({flags}) must be provided for {kind} url {url} with HTTPS scheme"
        )))
    };
    if client.is_none()
        && let Some(url) = client_urls.iter().find(|u| crate::tls::is_https(u))
    {
        return Err(missing("client", "--cert-file, --key-file", url));
    }
    if peer.is_none()
        && let Some(url) = peer_urls.iter().find(|u| crate::tls::is_https(u))
    {
        return Err(missing("peer", "--peer-cert-file, --peer-key-file", url));
    }
    if client.is_some()
        && !args
            .listen_client_urls
            .iter()
            .any(|u| crate::tls::is_https(u))
    {
        tracing::warn!("client TLS is configured but no --listen-client-urls is https://");
    }
    if peer.is_none() {
        tracing::warn!(
            "the peer port is plain text without authentication: anyone who reaches it can act \
             as a member (use --peer-cert-file, --peer-key-file, --peer-trusted-ca-file and \
             --peer-client-cert-auth, or a NetworkPolicy)"
        );
    }
    Ok((client, peer))
}

/// What a member remembers about itself across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) member_id: u64,
    pub(crate) cluster_id: u64,
}

/// The members of a new cluster by ID, as `--initial-cluster` and the token name them; no
/// member has published client URLs yet.
pub(crate) fn new_cluster(
    members: &BTreeMap<String, Vec<String>>,
    token: &str,
) -> BTreeMap<u64, Member> {
    members
        .iter()
        .map(|(name, urls)| {
            let member = Member {
                name: name.clone(),
                peer_urls: urls.clone(),
                client_urls: Vec::new(),
            };
            (cli::member_id(urls, token), member)
        })
        .collect()
}

const IDENTITY_FILE: &str = "member.json";

/// Longest time applied entries stay without an fsync (etcd's backend batch interval).
const APPLY_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// How long open connections may take to finish after SIGTERM before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn read_identity(dir: &Path) -> Result<Option<Identity>, Error> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::DataDir {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::DataDir { path, source }),
    }
}

pub(crate) fn write_identity(dir: &Path, identity: Identity) -> Result<(), Error> {
    let path = dir.join(IDENTITY_FILE);
    let io = |source| Error::DataDir {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(&identity)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    // Write then rename, and sync, so a crash never leaves a half-written identity.
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
}

/// Asks the peers in `--initial-cluster` for the membership and finds this member by its
/// advertised peer URLs (etcd's "get cluster from remote peers").
async fn discover(args: &ServeArgs, peers: &Peers) -> Result<Identity, Error> {
    let members = args.initial_members()?;
    let mut advertised = args.initial_advertise_peer_urls.clone();
    advertised.sort();
    let urls: Vec<String> = members
        .iter()
        .filter(|(name, _)| **name != args.name)
        .flat_map(|(_, urls)| urls.clone())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last_error = String::from("no peers listed in --initial-cluster");
    loop {
        for url in &urls {
            match peers
                .call::<_, (u64, Vec<MemberInfo>)>(
                    url,
                    Rpc::Membership,
                    &(),
                    Duration::from_secs(2),
                )
                .await
            {
                Ok((cluster_id, list)) => {
                    let found = list.iter().find(|m| {
                        let mut urls = m.member.peer_urls.clone();
                        urls.sort();
                        urls == advertised
                    });
                    return match found {
                        // It published client URLs, so it ran before: with its data gone it
                        // also lost its raft vote, and rejoining under the same ID could let it
                        // vote twice in a term. A member rebuilt from nothing joins as a new one.
                        Some(m) if !m.member.client_urls.is_empty() => Err(Error::Join(format!(
                            "member {:x} with peer URLs {advertised:?} has run before (it \
                             advertised {:?}) and its data directory is empty, so it lost its \
                             raft state; remove it (etcdctl member remove {:x}) and add it \
                             again (etcdctl member add) before starting it",
                            m.id, m.member.client_urls, m.id
                        ))),
                        Some(m) => Ok(Identity {
                            member_id: m.id,
                            cluster_id,
                        }),
                        None => Err(Error::Join(format!(
                            "no member with peer URLs {advertised:?} in the cluster at {url}; \
                             add it first (etcdctl member add)"
                        ))),
                    };
                }
                Err(e) => last_error = format!("{url}: {e}"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Join(format!("no peer answered: {last_error}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The member's servers after start: the addresses they listen on, and the node.
pub struct Running {
    /// The node.
    pub node: Arc<Node>,
    /// Where clients connect.
    pub client_addrs: Vec<SocketAddr>,
    /// Where peers connect.
    pub peer_addrs: Vec<SocketAddr>,
}

async fn bind_all(flag: &'static str, urls: &[String]) -> Result<Vec<TcpListener>, Error> {
    let mut listeners = Vec::new();
    for url in urls {
        let addr = cli::socket_addr(flag, url)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Runs a member until `shutdown` resolves, then stops it cleanly.
pub async fn run(args: ServeArgs, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let dir = args.data_dir();
    std::fs::create_dir_all(&dir).map_err(|source| Error::DataDir {
        path: dir.clone(),
        source,
    })?;
    let (client_tls, peer_tls) = tls_from_flags(&args, &dir)?;
    let auto_compaction =
        crate::compactor::from_flags(&args.auto_compaction_mode, &args.auto_compaction_retention)
            .map_err(Error::AutoCompaction)?;
    let jwt = match &args.auth_token {
        cli::AuthToken::Simple => None,
        cli::AuthToken::Jwt(options) => Some(Arc::new(crate::auth::jwt::Jwt::new(options)?)),
    };
    let peers = Peers::with_tls(peer_tls.clone());

    // Bind first: a port in use is the commonest start failure and must be reported before
    // anything is written to the data directory.
    let peer_listeners = bind_all("--listen-peer-urls", &args.listen_peer_urls).await?;
    let client_listeners = bind_all("--listen-client-urls", &args.listen_client_urls).await?;
    let metrics_listeners = bind_all("--listen-metrics-urls", &args.listen_metrics_urls).await?;

    let existed = read_identity(&dir)?;
    // etcd checks only a member that ran before: a new one has no data to compare.
    let had_data = existed.is_some();
    let (identity, bootstrap) = match existed {
        Some(identity) => (identity, None),
        None => match args.initial_cluster_state {
            ClusterState::New => {
                let members = args.initial_members()?;
                let token = &args.initial_cluster_token;
                let mut ids = new_cluster(&members, token);
                let member_id = cli::member_id(&members[&args.name], token);
                if let Some(me) = ids.get_mut(&member_id) {
                    me.client_urls = args.advertise_client_urls.clone();
                }
                let identity = Identity {
                    member_id,
                    cluster_id: cli::cluster_id(ids.keys().copied()),
                };
                (identity, Some(ids))
            }
            ClusterState::Existing => (discover(&args, &peers).await?, None),
        },
    };
    write_identity(&dir, identity)?;
    let span = tracing::info_span!("member", member_id = %format_args!("{:x}", identity.member_id));
    let _entered = span.enter();

    let corrupt_puts_if = args
        .unsafe_test_corrupt_puts_if
        .as_ref()
        .map(|file| dir.join(file));
    if let Some(file) = &corrupt_puts_if {
        tracing::warn!(
            file = %file.display(),
            "TEST FAULT ARMED: unsafe-test-corrupt-puts-if - applied Puts store inverted values while the file exists"
        );
    }
    let quota = Quota::from_flag(args.quota_backend_bytes);
    match quota.bytes() {
        None => tracing::info!("backend quota disabled"),
        Some(bytes) if bytes > quota::MAX_QUOTA_BYTES => tracing::warn!(
            quota_bytes = bytes,
            max_quota_bytes = quota::MAX_QUOTA_BYTES,
            "the backend quota exceeds the recommended maximum"
        ),
        Some(bytes) => tracing::info!(quota_bytes = bytes, "backend quota enabled"),
    }
    let store = Arc::new(Store::open(
        &dir,
        StoreConfig {
            quota,
            token_ttl: Duration::from_secs(args.auth_token_ttl),
            jwt,
            max_txn_ops: args.max_txn_ops,
            unsafe_reproduce_etcd_11651: args.unsafe_reproduce_etcd_11651,
            // As etcd's backend: the raft log is the durable record, the engine catches up on
            // it after a crash, so applies need not each wait for an fsync.
            apply_sync_interval: Some(APPLY_SYNC_INTERVAL),
            unsafe_test_corrupt_puts_if: corrupt_puts_if.clone(),
            ..StoreConfig::default()
        },
    )?);
    let request_timeout = Duration::from_secs(5) + 2 * args.election();
    if args.experimental_initial_corrupt_check && had_data {
        // Before raft runs and before the peer and client ports serve, as etcd does: a member
        // whose data differs must not take part at all.
        initial_corrupt_check(&store, &peers, identity, request_timeout).await?;
    }
    let mut log_store = LogStore::open(&dir).map_err(|e| Error::Log(e.to_string()))?;
    if args.force_new_cluster {
        if !had_data {
            return Err(Error::Log(
                "--force-new-cluster needs a member that has data: this data directory is new"
                    .to_string(),
            ));
        }
        let me = crate::entry::Member {
            name: args.name.clone(),
            peer_urls: args.initial_advertise_peer_urls.clone(),
            client_urls: args.advertise_client_urls.clone(),
        };
        let forced = log_store
            .force_new_cluster(identity.member_id, me)
            .await
            .map_err(|e| Error::Log(e.to_string()))?;
        tracing::warn!(
            log_id = %forced,
            "--force-new-cluster: this member now forms a cluster of its own with its data; \
             every other member was dropped (start it without the flag from now on)"
        );
    }
    let instruments = crate::metrics::Metrics {
        wal_fsync: log_store.fsync_durations(),
        backend_commit: store.commit_durations(),
        peer_round_trip: peers.round_trip_times(),
        grpc: crate::metrics::Grpc::default(),
    };
    let listeners = Listeners::with_watchers(
        &store,
        args.experimental_watch_progress_notify_interval,
        args.max_watchers_per_stream,
    );
    tokio::spawn(crate::watchers::Watchers::run(Arc::downgrade(
        &listeners.watchers,
    )));
    let state_machine = StateMachine::new(store.clone(), listeners.clone());
    let config = openraft::Config {
        cluster_name: format!("{:x}", identity.cluster_id),
        heartbeat_interval: args.heartbeat_interval,
        election_timeout_min: args.election_timeout,
        election_timeout_max: args.election_timeout * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(args.snapshot_count),
        // etcd keeps 5000 entries after a snapshot so slow followers catch up from the log.
        max_in_snapshot_log_to_keep: args.snapshot_count.min(5000),
        // A member that restarts or is cut off must not depose a healthy leader by bumping the
        // term (etcd 3.5 turns pre-vote on by default for the same reason).
        enable_pre_vote: Some(true),
        // Entries go to the followers as soon as the log store has them, while this member's
        // own fsync of them is still under way (see `raft::log_store`).
        broadcast_submitted_on_append: Some(true),
        ..openraft::Config::default()
    };
    let config = Arc::new(config.validate().map_err(|e| Error::Raft(e.to_string()))?);
    let raft = openraft::Raft::new(
        identity.member_id,
        config,
        NetworkFactory {
            peers: peers.clone(),
            append_floor: std::time::Duration::from_millis(args.election_timeout),
        },
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| Error::Raft(e.to_string()))?;

    // A malformed --initial-cluster was refused above where it matters (a new member); a
    // restarted member's may be stale and names no one then.
    let initial_cluster = cli::parse_initial_cluster(&args.initial_cluster).unwrap_or_default();
    let node = Arc::new(
        Node::new(
            identity.member_id,
            identity.cluster_id,
            raft.clone(),
            store,
            listeners,
            peers,
            request_timeout,
            instruments,
        )
        .with_initial_peers(initial_cluster.values().flatten()),
    );

    if let Some(members) = bootstrap {
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        if !initialized {
            // Every member of a new cluster initialises with the same configuration; openraft
            // treats identical initial memberships as one. Peers are not served yet, so no
            // vote can arrive first; if one did (a restart after a partial bootstrap), the
            // cluster already exists and joining it is what initialising would have done.
            tracing::info!(members = members.len(), "bootstrapping a new cluster");
            match raft.initialize(members).await {
                Ok(()) => {}
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(e),
                )) => tracing::info!(reason = %e, "cluster already bootstrapped"),
                Err(e) => return Err(Error::Raft(e.to_string())),
            }
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut servers = tokio::task::JoinSet::new();
    let max_connections = args.max_connections_per_listener;
    for (listener, url) in peer_listeners.into_iter().zip(&args.listen_peer_urls) {
        let service = PeerService::new(node.clone()).into_server();
        let signal = stopped();
        let tls = peer_tls.clone().filter(|_| crate::tls::is_https(url));
        servers.spawn(async move {
            let incoming = crate::tls::incoming(listener, tls, max_connections);
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(incoming)
                        .map(Ok::<_, std::io::Error>),
                    signal,
                )
                .await
                .map_err(|e| Error::Serve(format!("peer: {e}")))
        });
    }

    for (listener, url) in client_listeners.into_iter().zip(&args.listen_client_urls) {
        let tls = client_tls.clone().filter(|_| crate::tls::is_https(url));
        let api = super::Api::new(node.clone(), &args);
        let http = super::http::router(node.clone(), args.ready_only_with_auth)
            .merge(super::gateway::router(api.clone()));
        let grpc = super::services(api, http.clone());
        let stopped = stopped.clone();
        servers.spawn(async move {
            super::client_port::serve(listener, tls, max_connections, grpc, http, stopped)
                .await
                .map_err(|e| Error::Serve(format!("client: {e}")))
        });
    }
    if let Some(retention) = auto_compaction {
        let (node, stop) = (node.clone(), stopped());
        servers.spawn(async move {
            crate::compactor::run(retention, node, stop).await;
            Ok(())
        });
    }
    let ready_only_with_auth = args.ready_only_with_auth;
    for listener in metrics_listeners {
        let node = node.clone();
        let stopped = stopped.clone();
        servers.spawn(async move {
            super::http::serve(
                listener,
                node,
                ready_only_with_auth,
                max_connections,
                stopped,
            )
            .await;
            Ok(())
        });
    }

    let me = Member {
        name: args.name.clone(),
        peer_urls: args.initial_advertise_peer_urls.clone(),
        client_urls: args.advertise_client_urls.clone(),
    };
    let publisher = tokio::spawn(publish(node.clone(), me));
    tokio::spawn(node.count_leader_changes());
    let lessor = tokio::spawn(crate::raft::lessor::run(node.clone()));
    let alarms = tokio::spawn(crate::raft::alarm::run(node.clone()));
    let syncer = tokio::spawn(sync_applied(node.store.clone()));
    let corrupt_check = (!args.experimental_corrupt_check_time.is_zero()).then(|| {
        tokio::spawn(crate::raft::corrupt::run_periodic(
            node.clone(),
            args.experimental_corrupt_check_time,
        ))
    });
    tracing::info!(
        name = %args.name,
        cluster = %format_args!("{:x}", identity.cluster_id),
        fault_switch = args.unsafe_reproduce_etcd_11651,
        "member serving"
    );

    let failure = tokio::select! {
        () = shutdown => None,
        Some(result) = servers.join_next() => Some(match result {
            Ok(Ok(())) => Error::Serve("a server stopped unexpectedly".into()),
            Ok(Err(e)) => e,
            Err(e) => Error::Serve(e.to_string()),
        }),
    };
    tracing::info!("shutting down");
    publisher.abort();
    lessor.abort();
    alarms.abort();
    syncer.abort();
    if let Some(task) = corrupt_check {
        task.abort();
    }
    // Stop accepting work, then stop raft: requests still in flight (a forwarded write waiting
    // for its commit, say) then end with an error instead of holding the servers open.
    let _ = stop_tx.send(true);
    let stopped_raft = raft.shutdown().await;
    let drain = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open; closing them");
        servers.shutdown().await;
    }
    stopped_raft.map_err(|e| Error::Raft(e.to_string()))?;
    // A clean stop leaves nothing to replay.
    node.store.sync()?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The initial corruption check against the membership this member last applied.
async fn initial_corrupt_check(
    store: &Arc<Store>,
    peers: &Peers,
    identity: Identity,
    timeout: Duration,
) -> Result<(), Error> {
    let Some(membership) = store.membership() else {
        tracing::info!("initial corruption check skipped: no membership applied yet");
        return Ok(());
    };
    let checker = crate::raft::corrupt::Checker {
        me: identity.member_id,
        cluster_id: identity.cluster_id,
        store: store.clone(),
        peers: peers.clone(),
        timeout,
    };
    crate::raft::corrupt::initial_check(&checker, &membership.membership.members).await?;
    Ok(())
}

/// Makes applied batches durable every [`APPLY_SYNC_INTERVAL`] while any are not.
async fn sync_applied(store: Arc<Store>) {
    let mut tick = tokio::time::interval(APPLY_SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.sync_if_due()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "syncing applied entries failed"),
            Err(e) => tracing::error!(error = %e, "sync task failed"),
        }
    }
}

/// Client connections, each behind the `:authority` repair etcd's Go client 3.4 needs.
/// Records this member's name and client URLs in the membership once a leader can take it,
/// retrying until it succeeds (the task is cancelled at shutdown).
async fn publish(node: Arc<Node>, me: Member) {
    let mut wait = Duration::from_millis(100);
    loop {
        match node.publish(me.clone()).await {
            Ok(()) => {
                tracing::info!(name = %me.name, "published member attributes");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
