//! Runs a recovery plan step by step against a real cluster: leadership moves and membership
//! changes through the etcd API, data moves through the [`Platform`]. Every wait has a
//! deadline; a step that fails stops the heal and says which step and why.
//!
//! A member gets a new ID when it is added back, so the executor keeps the member names the
//! platform knows and maps IDs to them as they change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use storage_node::pb::etcdserverpb::{
    AuthenticateRequest, MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest,
    MoveLeaderRequest, StatusRequest, StatusResponse, auth_client::AuthClient,
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::planner::{Plan, Step};
use crate::platform::{self, Platform};

/// Why a heal stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A member the plan names is unknown to the executor.
    #[error("member {0:x} is not known")]
    UnknownMember(u64),
    /// The platform failed.
    #[error(transparent)]
    Platform(#[from] platform::Error),
    /// An etcd API call failed.
    #[error("{call} on {endpoint}: {status}")]
    Api {
        /// The call.
        call: &'static str,
        /// Where.
        endpoint: String,
        /// What the member answered.
        status: String,
    },
    /// A condition did not hold in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// Result of executor operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs plans on one cluster.
pub struct Executor<'p, P: Platform> {
    platform: &'p mut P,
    credentials: Option<(String, String)>,
    timeout: Duration,
    /// Current member ID → member name.
    names: BTreeMap<u64, String>,
}

/// Pause between checks of a condition the cluster reaches on its own.
const POLL: Duration = Duration::from_millis(200);

impl<'p, P: Platform> Executor<'p, P> {
    /// An executor for the members `names` (ID → name) on `platform`.
    pub fn new(
        platform: &'p mut P,
        names: BTreeMap<u64, String>,
        credentials: Option<(String, String)>,
        timeout: Duration,
    ) -> Self {
        Executor {
            platform,
            credentials,
            timeout,
            names,
        }
    }

    /// Member IDs and names after the heal.
    pub fn names(&self) -> &BTreeMap<u64, String> {
        &self.names
    }

    fn name(&self, id: u64) -> Result<String> {
        self.names.get(&id).cloned().ok_or(Error::UnknownMember(id))
    }

    /// A channel to `endpoint`, logged in when credentials are set (membership changes and
    /// leader moves need the root role).
    async fn connect(&self, endpoint: &str) -> Result<(Channel, Option<String>)> {
        let channel = self.channel(endpoint).await?;
        let token = match &self.credentials {
            Some((name, password)) => AuthClient::new(channel.clone())
                .authenticate(AuthenticateRequest {
                    name: name.clone(),
                    password: password.clone(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().token),
            None => None,
        };
        Ok((channel, token))
    }

    /// A channel to `endpoint` without logging in: a login is a raft write, and status checks
    /// compare applied indexes that writes would keep moving.
    async fn channel(&self, endpoint: &str) -> Result<Channel> {
        let api = |status: String| Error::Api {
            call: "connect",
            endpoint: endpoint.to_string(),
            status,
        };
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| api(e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| api(e.to_string()))?;
        Ok(channel)
    }

    fn request<T>(message: T, token: &Option<String>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = token
            .as_deref()
            .and_then(|t| MetadataValue::try_from(t).ok())
        {
            request.metadata_mut().insert("token", value);
        }
        request
    }

    async fn status(&self, endpoint: &str) -> Result<StatusResponse> {
        let channel = self.channel(endpoint).await?;
        MaintenanceClient::new(channel)
            .status(Self::request(StatusRequest {}, &None))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::Api {
                call: "Status",
                endpoint: endpoint.to_string(),
                status: s.message().to_string(),
            })
    }

    /// The leader's ID as any reachable member reports it.
    async fn leader(&self) -> Result<u64> {
        for name in self.names.values() {
            let endpoint = self.platform.endpoint(name)?;
            if let Ok(status) = self.status(&endpoint).await
                && status.leader != 0
            {
                return Ok(status.leader);
            }
        }
        Err(Error::Timeout("a leader".into()))
    }

    async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if check().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(what.to_string()));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs every step of `plan` in order.
    pub async fn run(&mut self, plan: &Plan) -> Result<()> {
        let source = self.name(plan.source)?;
        let source_endpoint = self.platform.endpoint(&source)?;
        // IDs of members re-added during this heal: plan ID → new ID.
        let mut renamed: BTreeMap<u64, u64> = BTreeMap::new();
        for step in &plan.steps {
            tracing::info!(?step, "heal step");
            match *step {
                Step::MoveLeader { to } => self.move_leader(to).await?,
                Step::Remove { member } => {
                    let name = self.name(member)?;
                    let (channel, token) = self.connect(&source_endpoint).await?;
                    ClusterClient::new(channel)
                        .member_remove(Self::request(MemberRemoveRequest { id: member }, &token))
                        .await
                        .map_err(|s| Error::Api {
                            call: "MemberRemove",
                            endpoint: source_endpoint.clone(),
                            status: s.message().to_string(),
                        })?;
                    self.platform.stop(&name)?;
                }
                Step::Backup { member } => {
                    let name = self.name(member)?;
                    let backup = self.platform.backup_and_wipe(&name)?;
                    tracing::info!(member = %name, backup = %backup.display(), "data backed up");
                }
                // The backup moved the data away: the member's directory is already empty.
                Step::Wipe { .. } => {}
                Step::AddLearner { member } => {
                    let name = self.name(member)?;
                    let peer = self.platform.peer_url(&name)?;
                    let (channel, token) = self.connect(&source_endpoint).await?;
                    let added = ClusterClient::new(channel)
                        .member_add(Self::request(
                            MemberAddRequest {
                                peer_ur_ls: vec![peer],
                                is_learner: true,
                            },
                            &token,
                        ))
                        .await
                        .map_err(|s| Error::Api {
                            call: "MemberAdd",
                            endpoint: source_endpoint.clone(),
                            status: s.message().to_string(),
                        })?
                        .into_inner();
                    let new_id = added.member.map(|m| m.id).unwrap_or_default();
                    self.names.remove(&member);
                    self.names.insert(new_id, name.clone());
                    renamed.insert(member, new_id);
                    self.platform.start_joining(&name)?;
                }
                Step::WaitCaughtUp { member } => {
                    let id = renamed.get(&member).copied().unwrap_or(member);
                    let name = self.name(id)?;
                    let endpoint = self.platform.endpoint(&name)?;
                    let target = self.status(&source_endpoint).await?.raft_applied_index;
                    self.wait_for(
                        &format!("{name} to catch up"),
                        self.timeout * 12,
                        || async {
                            self.status(&endpoint)
                                .await
                                .is_ok_and(|s| s.raft_applied_index >= target)
                        },
                    )
                    .await?;
                }
                Step::Promote { member } => {
                    let id = renamed.get(&member).copied().unwrap_or(member);
                    self.wait_for("the learner's promotion", self.timeout * 6, || async {
                        let Ok((channel, token)) = self.connect(&source_endpoint).await else {
                            return false;
                        };
                        ClusterClient::new(channel)
                            .member_promote(Self::request(MemberPromoteRequest { id }, &token))
                            .await
                            .is_ok()
                    })
                    .await?;
                }
                Step::Verify { member } => {
                    let id = renamed.get(&member).copied().unwrap_or(member);
                    let name = self.name(id)?;
                    let endpoint = self.platform.endpoint(&name)?;
                    self.wait_for(
                        &format!("{name} to agree with the source"),
                        self.timeout * 6,
                        || async {
                            match (
                                self.status(&source_endpoint).await,
                                self.status(&endpoint).await,
                            ) {
                                (Ok(a), Ok(b)) => {
                                    let revision = |s: &StatusResponse| {
                                        s.header.as_ref().map(|h| h.revision).unwrap_or_default()
                                    };
                                    a.raft_applied_index == b.raft_applied_index
                                        && revision(&a) == revision(&b)
                                }
                                _ => false,
                            }
                        },
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn move_leader(&self, to: u64) -> Result<()> {
        let leader = self.leader().await?;
        if leader == to {
            return Ok(());
        }
        let endpoint = self.platform.endpoint(&self.name(leader)?)?;
        let (channel, token) = self.connect(&endpoint).await?;
        MaintenanceClient::new(channel)
            .move_leader(Self::request(MoveLeaderRequest { target_id: to }, &token))
            .await
            .map_err(|s| Error::Api {
                call: "MoveLeader",
                endpoint: endpoint.clone(),
                status: s.message().to_string(),
            })?;
        self.wait_for("the new leader", self.timeout * 2, || async {
            self.leader().await.is_ok_and(|l| l == to)
        })
        .await
    }
}
