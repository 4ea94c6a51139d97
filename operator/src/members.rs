//! The healing loop's view of a cluster's members over the etcd v3 API: probe rounds, the auth
//! bootstrap ([`crate::bootstrap`]) and membership changes. [`Members`] is the seam the loop
//! calls on both platforms; [`Grpc`] is the real one, and the controller's tests pass a fake so
//! the mocked API server sees only Kubernetes calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use storage_node::pb::etcdserverpb::{
    AuthenticateRequest, DefragmentRequest, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest, SnapshotRequest,
    auth_client::AuthClient, cluster_client::ClusterClient, maintenance_client::MaintenanceClient,
};
use tonic::transport::Channel;

use crate::bootstrap;
use crate::client::ClientCert;
use crate::detector::Round;
use crate::planner::Listed;
use crate::probe::{Prober, Scope, Target};

/// How the operator reaches a cluster's members: as the root user (`user`, `password`) when
/// auth is on, with its client certificate when they serve TLS.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Credentials {
    /// The root user's name and password.
    pub login: Option<(String, String)>,
    /// The client certificate.
    pub tls: Option<ClientCert>,
}

/// A call to a member that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{call} on {endpoint}: {message}")]
pub struct CallError {
    /// The call.
    pub call: &'static str,
    /// Where.
    pub endpoint: String,
    /// What the member answered, or why it did not.
    pub message: String,
}

/// Result of a membership call.
pub type CallResult<T> = Result<T, CallError>;

/// Probing, bootstrapping and changing a cluster's members.
pub trait Members: Send + Sync {
    /// One probe round of `targets` (in that order) for the cluster `key`, logging in with
    /// `credentials` when given.
    fn probe(
        &self,
        key: String,
        targets: Vec<Target>,
        credentials: Credentials,
        scope: Scope,
    ) -> BoxFuture<'static, Round>;

    /// Creates the root user `user` with `password`, grants it the root role and enables auth,
    /// unless auth is on already, through the first member that answers (over TLS with
    /// `tls`). `Ok(true)` when this call enabled it.
    fn bootstrap_auth(
        &self,
        endpoints: Vec<String>,
        user: String,
        password: String,
        tls: Option<ClientCert>,
    ) -> BoxFuture<'static, Result<bool, bootstrap::Error>>;

    /// The member list as `endpoint` has it, read linearizably.
    fn member_list(
        &self,
        endpoint: String,
        credentials: Credentials,
    ) -> BoxFuture<'static, CallResult<Vec<Listed>>>;

    /// Removes member `id` through `endpoint`.
    fn member_remove(
        &self,
        endpoint: String,
        credentials: Credentials,
        id: u64,
    ) -> BoxFuture<'static, CallResult<()>>;

    /// Adds a learner reached at `peer_url` through `endpoint`; returns its new ID.
    fn member_add_learner(
        &self,
        endpoint: String,
        credentials: Credentials,
        peer_url: String,
    ) -> BoxFuture<'static, CallResult<u64>>;

    /// Promotes learner `id` through `endpoint`.
    fn member_promote(
        &self,
        endpoint: String,
        credentials: Credentials,
        id: u64,
    ) -> BoxFuture<'static, CallResult<()>>;

    /// Asks the leader at `endpoint` to hand leadership to `to`.
    fn move_leader(
        &self,
        endpoint: String,
        credentials: Credentials,
        to: u64,
    ) -> BoxFuture<'static, CallResult<()>>;

    /// Defragments the backend of the member at `endpoint` (etcdctl's `defrag`), waiting up
    /// to [`DEFRAGMENT_TIMEOUT`] for it: a large backend takes a while to rewrite.
    fn defragment(
        &self,
        endpoint: String,
        credentials: Credentials,
    ) -> BoxFuture<'static, CallResult<()>>;

    /// Streams a snapshot of the member at `endpoint` (etcdctl's `snapshot save`) into the
    /// new file `to`, waiting up to [`SNAPSHOT_TIMEOUT`]; returns its size and SHA-256. The
    /// file is not checked: [`crate::backup`] does that before it stores it.
    fn snapshot(
        &self,
        endpoint: String,
        credentials: Credentials,
        to: std::path::PathBuf,
    ) -> BoxFuture<'static, CallResult<Saved>>;
}

/// A snapshot written to a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
}

/// How long streaming a member's snapshot may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a member's defragmentation may take before the call gives up (the member goes
/// on; the pass tries it again).
pub const DEFRAGMENT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The real members, over gRPC, every call bounded by `timeout`.
pub struct Grpc {
    timeout: Duration,
    /// One prober per cluster, kept across rounds: it keeps its login tokens, and a login is a
    /// raft write the members being compared should not have to apply every round.
    probers: Mutex<HashMap<String, Arc<Prober>>>,
    /// Login tokens of membership calls, by endpoint and user.
    tokens: Arc<Mutex<HashMap<(String, String), String>>>,
    /// Credentials the auth bootstrap proved (logged in with), by the cluster's endpoints: not
    /// proven again while they stay the same.
    proven: Arc<Mutex<std::collections::HashSet<ProvenLogin>>>,
}

/// A cluster's endpoints, the user and the password a bootstrap logged in with.
type ProvenLogin = (Vec<String>, String, String);

impl Grpc {
    /// Members reached with calls bounded by `timeout`.
    pub fn new(timeout: Duration) -> Grpc {
        Grpc {
            timeout,
            probers: Mutex::default(),
            tokens: Arc::default(),
            proven: Arc::default(),
        }
    }

    fn prober(&self, key: String, targets: Vec<Target>, credentials: Credentials) -> Arc<Prober> {
        let mut probers = self.probers.lock().unwrap_or_else(|p| p.into_inner());
        match probers.get(&key) {
            Some(p) if p.targets == targets && p.credentials == credentials => p.clone(),
            _ => {
                let prober = Arc::new(Prober::new(targets, credentials, self.timeout));
                probers.insert(key, prober.clone());
                prober
            }
        }
    }

    /// Runs `call` on a channel to `endpoint` with a login token (when `credentials` are set),
    /// every request bounded by `timeout`, logging in again once when the member no longer
    /// knows the token.
    fn call<T, F, Fut>(
        &self,
        timeout: Duration,
        name: &'static str,
        endpoint: String,
        credentials: Credentials,
        call: F,
    ) -> BoxFuture<'static, CallResult<T>>
    where
        T: Send + 'static,
        F: Fn(Channel, Option<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tonic::Status>> + Send,
    {
        let tokens = self.tokens.clone();
        Box::pin(async move {
            let error = |message: String| CallError {
                call: name,
                endpoint: endpoint.clone(),
                message,
            };
            let channel = crate::client::connect(&endpoint, credentials.tls.as_ref(), timeout)
                .await
                .map_err(|e| error(format!("connect: {e}")))?;
            for attempt in 0..2 {
                let token = match &credentials.login {
                    None => None,
                    Some((user, password)) => {
                        let key = (endpoint.clone(), user.clone());
                        let cached = tokens
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&key)
                            .cloned();
                        match cached {
                            Some(token) => Some(token),
                            None => {
                                let login = AuthenticateRequest {
                                    name: user.clone(),
                                    password: password.clone(),
                                };
                                let token = AuthClient::new(channel.clone())
                                    .authenticate(login)
                                    .await
                                    .map_err(|s| error(format!("login: {}", s.message())))?
                                    .into_inner()
                                    .token;
                                tokens
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(key, token.clone());
                                Some(token)
                            }
                        }
                    }
                };
                match call(channel.clone(), token).await {
                    Ok(value) => return Ok(value),
                    Err(status)
                        if attempt == 0
                            && crate::client::needs_new_token(&status)
                            && credentials.login.is_some() =>
                    {
                        // The token expired, the member restarted, or (JWT) auth changed
                        // since the login: log in again.
                        let mut tokens = tokens.lock().unwrap_or_else(|p| p.into_inner());
                        tokens.retain(|(e, _), _| *e != endpoint);
                    }
                    Err(status) => return Err(error(status.message().to_string())),
                }
            }
            Err(error("login refused twice".to_string()))
        })
    }
}

impl Members for Grpc {
    fn probe(
        &self,
        key: String,
        targets: Vec<Target>,
        credentials: Credentials,
        scope: Scope,
    ) -> BoxFuture<'static, Round> {
        let prober = self.prober(key, targets, credentials);
        Box::pin(async move { prober.round_of(scope).await })
    }

    fn bootstrap_auth(
        &self,
        endpoints: Vec<String>,
        user: String,
        password: String,
        tls: Option<ClientCert>,
    ) -> BoxFuture<'static, Result<bool, bootstrap::Error>> {
        let timeout = self.timeout;
        let proven = self.proven.clone();
        Box::pin(async move {
            let key = (endpoints.clone(), user.clone(), password.clone());
            let prove = !proven
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key);
            let mut last = None;
            for endpoint in &endpoints {
                let enabled = bootstrap::enable_auth(
                    endpoint,
                    &user,
                    &password,
                    prove,
                    tls.as_ref(),
                    timeout,
                );
                match enabled.await {
                    // Another member may answer.
                    Err(e @ bootstrap::Error::Connect { .. }) => last = Some(e),
                    done => {
                        if done.is_ok() {
                            proven.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
                        }
                        return done;
                    }
                }
            }
            Err(last.unwrap_or_else(|| bootstrap::Error::Connect {
                endpoint: String::new(),
                message: "no member to ask".to_string(),
            }))
        })
    }

    fn member_list(
        &self,
        endpoint: String,
        credentials: Credentials,
    ) -> BoxFuture<'static, CallResult<Vec<Listed>>> {
        self.call(
            self.timeout,
            "MemberList",
            endpoint,
            credentials,
            |channel, token| async move {
                let request = crate::client::request(
                    MemberListRequest { linearizable: true },
                    token.as_deref(),
                );
                let members = ClusterClient::new(channel)
                    .member_list(request)
                    .await?
                    .into_inner()
                    .members;
                Ok(members
                    .into_iter()
                    .map(|m| Listed {
                        id: m.id,
                        peer_urls: m.peer_ur_ls,
                        is_learner: m.is_learner,
                    })
                    .collect())
            },
        )
    }

    fn member_remove(
        &self,
        endpoint: String,
        credentials: Credentials,
        id: u64,
    ) -> BoxFuture<'static, CallResult<()>> {
        self.call(
            self.timeout,
            "MemberRemove",
            endpoint,
            credentials,
            move |channel, token| async move {
                let request = crate::client::request(MemberRemoveRequest { id }, token.as_deref());
                ClusterClient::new(channel).member_remove(request).await?;
                Ok(())
            },
        )
    }

    fn member_add_learner(
        &self,
        endpoint: String,
        credentials: Credentials,
        peer_url: String,
    ) -> BoxFuture<'static, CallResult<u64>> {
        self.call(
            self.timeout,
            "MemberAdd",
            endpoint,
            credentials,
            move |channel, token| {
                let peer_url = peer_url.clone();
                async move {
                    let add = MemberAddRequest {
                        peer_ur_ls: vec![peer_url],
                        is_learner: true,
                    };
                    let request = crate::client::request(add, token.as_deref());
                    let reply = ClusterClient::new(channel).member_add(request).await?;
                    reply.into_inner().member.map(|m| m.id).ok_or_else(|| {
                        tonic::Status::internal("MemberAdd answered without the member")
                    })
                }
            },
        )
    }

    fn member_promote(
        &self,
        endpoint: String,
        credentials: Credentials,
        id: u64,
    ) -> BoxFuture<'static, CallResult<()>> {
        self.call(
            self.timeout,
            "MemberPromote",
            endpoint,
            credentials,
            move |channel, token| async move {
                let request = crate::client::request(MemberPromoteRequest { id }, token.as_deref());
                ClusterClient::new(channel).member_promote(request).await?;
                Ok(())
            },
        )
    }

    fn move_leader(
        &self,
        endpoint: String,
        credentials: Credentials,
        to: u64,
    ) -> BoxFuture<'static, CallResult<()>> {
        self.call(
            self.timeout,
            "MoveLeader",
            endpoint,
            credentials,
            move |channel, token| async move {
                let request =
                    crate::client::request(MoveLeaderRequest { target_id: to }, token.as_deref());
                MaintenanceClient::new(channel).move_leader(request).await?;
                Ok(())
            },
        )
    }

    fn defragment(
        &self,
        endpoint: String,
        credentials: Credentials,
    ) -> BoxFuture<'static, CallResult<()>> {
        self.call(
            DEFRAGMENT_TIMEOUT,
            "Defragment",
            endpoint,
            credentials,
            |channel, token| async move {
                let request = crate::client::request(DefragmentRequest {}, token.as_deref());
                MaintenanceClient::new(channel).defragment(request).await?;
                Ok(())
            },
        )
    }

    fn snapshot(
        &self,
        endpoint: String,
        credentials: Credentials,
        to: std::path::PathBuf,
    ) -> BoxFuture<'static, CallResult<Saved>> {
        self.call(
            SNAPSHOT_TIMEOUT,
            "Snapshot",
            endpoint,
            credentials,
            move |channel, token| {
                let to = to.clone();
                async move {
                    use sha2::Digest;
                    use tokio::io::AsyncWriteExt;
                    let io = |e: std::io::Error| {
                        tonic::Status::internal(format!("{}: {e}", to.display()))
                    };
                    let request = crate::client::request(SnapshotRequest {}, token.as_deref());
                    let mut stream = MaintenanceClient::new(channel)
                        .snapshot(request)
                        .await?
                        .into_inner();
                    // Written afresh by each attempt (a second one follows a new login).
                    let file = tokio::fs::File::create(&to).await.map_err(io)?;
                    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
                    let mut hash = sha2::Sha256::new();
                    let mut size = 0u64;
                    while let Some(message) = stream.message().await? {
                        hash.update(&message.blob);
                        size += message.blob.len() as u64;
                        file.write_all(&message.blob).await.map_err(io)?;
                    }
                    file.flush().await.map_err(io)?;
                    file.into_inner().sync_all().await.map_err(io)?;
                    let sha256 = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
                    Ok(Saved { size, sha256 })
                }
            },
        )
    }
}
