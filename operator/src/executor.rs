//! Runs a recovery plan step by step against a real cluster: leadership moves and membership
//! changes through the etcd API, data moves through the [`Platform`]. Every wait has a
//! deadline; a step that fails stops the heal and says which step and why.
//!
//! A member gets a new ID when it is added back, so the executor keeps the member names the
//! platform knows and maps IDs to them as they change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use storage_node::pb::etcdserverpb::{
    AuthenticateRequest, Member as EtcdMember, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest, StatusRequest, StatusResponse,
    auth_client::AuthClient, cluster_client::ClusterClient, maintenance_client::MaintenanceClient,
};
use tonic::transport::Channel;

use crate::client;
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

/// An API error of `call` on `endpoint`.
fn api(call: &'static str, endpoint: &str, status: &tonic::Status) -> Error {
    Error::Api {
        call,
        endpoint: endpoint.to_string(),
        status: status.message().to_string(),
    }
}

/// Result of executor operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a heal stands: the plan, the next step to run, and the members' names and IDs as
/// re-adding changes them. Saved after every step, so an operator that stops mid-heal
/// resumes where it was: every step checks whether it is already done before acting.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// The plan being run.
    pub plan: Plan,
    /// Index in the plan of the step to run next (the step running, while one runs).
    pub next: usize,
    /// Current member ID → member name.
    pub names: BTreeMap<u64, String>,
    /// Members re-added during this heal: ID in the plan → new ID.
    pub renamed: BTreeMap<u64, u64>,
}

impl Progress {
    /// A heal of `plan` that has not started, for the members `names` (ID → name).
    pub fn new(plan: Plan, names: BTreeMap<u64, String>) -> Progress {
        Progress {
            plan,
            next: 0,
            names,
            renamed: BTreeMap::new(),
        }
    }

    /// Whether every step has run.
    pub fn done(&self) -> bool {
        self.next >= self.plan.steps.len()
    }

    /// Names of members this heal has removed and not yet started again: nobody but the
    /// executor may start them (their data is being moved, or they must join as new members).
    pub fn held_out(&self) -> Vec<String> {
        let index = |wanted: &Step| self.plan.steps.iter().position(|s| s == wanted);
        self.plan
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::Remove { member } => Some(*member),
                _ => None,
            })
            .filter(|member| {
                let removed =
                    index(&Step::Remove { member: *member }).is_some_and(|i| i < self.next);
                let started =
                    index(&Step::AddLearner { member: *member }).is_some_and(|i| i < self.next);
                removed && !started
            })
            .filter_map(|member| self.names.get(&member).cloned())
            .collect()
    }

    /// The form the resource's status records it in (IDs in hex, as etcdctl prints them).
    pub fn to_status(&self) -> crds::HealProgress {
        let hex = |id: &u64| format!("{id:x}");
        crds::HealProgress {
            source: hex(&self.plan.source),
            steps: self
                .plan
                .steps
                .iter()
                .map(|step| {
                    let (action, member) = match step {
                        Step::MoveLeader { to } => ("MoveLeader", to),
                        Step::Remove { member } => ("Remove", member),
                        Step::Backup { member } => ("Backup", member),
                        Step::Wipe { member } => ("Wipe", member),
                        Step::AddLearner { member } => ("AddLearner", member),
                        Step::WaitCaughtUp { member } => ("WaitCaughtUp", member),
                        Step::Promote { member } => ("Promote", member),
                        Step::Verify { member } => ("Verify", member),
                    };
                    crds::HealStep {
                        action: action.to_string(),
                        member: hex(member),
                    }
                })
                .collect(),
            next: self.next as u32,
            names: self
                .names
                .iter()
                .map(|(id, n)| (hex(id), n.clone()))
                .collect(),
            renamed: self.renamed.iter().map(|(a, b)| (hex(a), hex(b))).collect(),
        }
    }

    /// Reads back what [`Progress::to_status`] recorded; `None` when it is not a valid record.
    pub fn from_status(status: &crds::HealProgress) -> Option<Progress> {
        let id = |hex: &str| u64::from_str_radix(hex, 16).ok();
        let steps = status
            .steps
            .iter()
            .map(|s| {
                let member = id(&s.member)?;
                Some(match s.action.as_str() {
                    "MoveLeader" => Step::MoveLeader { to: member },
                    "Remove" => Step::Remove { member },
                    "Backup" => Step::Backup { member },
                    "Wipe" => Step::Wipe { member },
                    "AddLearner" => Step::AddLearner { member },
                    "WaitCaughtUp" => Step::WaitCaughtUp { member },
                    "Promote" => Step::Promote { member },
                    "Verify" => Step::Verify { member },
                    _ => return None,
                })
            })
            .collect::<Option<Vec<Step>>>()?;
        Some(Progress {
            plan: Plan {
                source: id(&status.source)?,
                steps,
            },
            next: status.next as usize,
            names: status
                .names
                .iter()
                .map(|(k, v)| Some((id(k)?, v.clone())))
                .collect::<Option<_>>()?,
            renamed: status
                .renamed
                .iter()
                .map(|(k, v)| Some((id(k)?, id(v)?)))
                .collect::<Option<_>>()?,
        })
    }

    /// The member's ID now (re-added members have a new one).
    fn current(&self, member: u64) -> u64 {
        self.renamed.get(&member).copied().unwrap_or(member)
    }

    fn name(&self, id: u64) -> Result<String> {
        self.names.get(&id).cloned().ok_or(Error::UnknownMember(id))
    }
}

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
        client::connect(endpoint, self.timeout)
            .await
            .map_err(|status| Error::Api {
                call: "connect",
                endpoint: endpoint.to_string(),
                status,
            })
    }

    fn request<T>(message: T, token: &Option<String>) -> tonic::Request<T> {
        client::request(message, token.as_deref())
    }

    async fn status(&self, endpoint: &str) -> Result<StatusResponse> {
        let channel = self.channel(endpoint).await?;
        MaintenanceClient::new(channel)
            .status(Self::request(StatusRequest {}, &None))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| api("Status", endpoint, &s))
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
        let mut progress = Progress::new(plan.clone(), self.names.clone());
        self.resume(&mut progress, |_| {}).await
    }

    /// Runs the steps of `progress` from `progress.next` on, calling `saved` before each step
    /// and once at the end, so the caller can record where the heal stands.
    pub async fn resume(
        &mut self,
        progress: &mut Progress,
        mut saved: impl FnMut(&Progress),
    ) -> Result<()> {
        while !progress.done() {
            saved(progress);
            self.run_next(progress).await?;
        }
        saved(progress);
        Ok(())
    }

    /// Runs the step at `progress.next` and advances past it. The caller records `progress`
    /// before (so a restart repeats this step) and after.
    pub async fn run_next(&mut self, progress: &mut Progress) -> Result<()> {
        let Some(step) = progress.plan.steps.get(progress.next).cloned() else {
            return Ok(());
        };
        self.names = progress.names.clone();
        let source = progress.name(progress.current(progress.plan.source))?;
        let source_endpoint = self.platform.endpoint(&source)?;
        tracing::info!(?step, index = progress.next, "heal step");
        self.step(&step, progress, &source_endpoint).await?;
        progress.names = self.names.clone();
        progress.next += 1;
        Ok(())
    }

    /// One step; each checks first whether it is already done (a resumed heal re-runs the
    /// step it was in).
    async fn step(&mut self, step: &Step, progress: &mut Progress, source: &str) -> Result<()> {
        match *step {
            Step::MoveLeader { to } => self.move_leader(progress.current(to)).await,
            Step::Remove { member } => {
                let name = self.name(member)?;
                let (channel, token) = self.connect(source).await?;
                let listed = self.member_list(&channel, &token, source).await?;
                if listed.iter().any(|m| m.id == member) {
                    ClusterClient::new(channel)
                        .member_remove(Self::request(MemberRemoveRequest { id: member }, &token))
                        .await
                        .map_err(|s| api("MemberRemove", source, &s))?;
                }
                self.platform.stop(&name).await?;
                Ok(())
            }
            Step::Backup { member } => {
                let name = self.name(member)?;
                let backup = self.platform.backup_and_wipe(&name).await?;
                tracing::info!(member = %name, %backup, "data backed up");
                Ok(())
            }
            // The backup moved the data away: the member's directory is already empty.
            Step::Wipe { .. } => Ok(()),
            Step::AddLearner { member } => {
                let name = self.name(progress.current(member))?;
                let peer = self.platform.peer_url(&name)?;
                let (channel, token) = self.connect(source).await?;
                let existing = self
                    .member_list(&channel, &token, source)
                    .await?
                    .into_iter()
                    .find(|m| m.peer_ur_ls.contains(&peer));
                let new_id = match existing {
                    Some(added) => added.id,
                    None => ClusterClient::new(channel)
                        .member_add(Self::request(
                            MemberAddRequest {
                                peer_ur_ls: vec![peer],
                                is_learner: true,
                            },
                            &token,
                        ))
                        .await
                        .map_err(|s| api("MemberAdd", source, &s))?
                        .into_inner()
                        .member
                        .map(|m| m.id)
                        .unwrap_or_default(),
                };
                self.names.retain(|_, n| *n != name);
                self.names.insert(new_id, name.clone());
                progress.renamed.insert(member, new_id);
                self.platform.start_joining(&name).await?;
                Ok(())
            }
            Step::WaitCaughtUp { member } => {
                let name = self.name(progress.current(member))?;
                let endpoint = self.platform.endpoint(&name)?;
                let target = self.status(source).await?.raft_applied_index;
                self.wait_for(
                    &format!("{name} to catch up"),
                    self.timeout * 12,
                    || async {
                        self.status(&endpoint)
                            .await
                            .is_ok_and(|s| s.raft_applied_index >= target)
                    },
                )
                .await
            }
            Step::Promote { member } => {
                let id = progress.current(member);
                // One login for the whole wait: a login is a raft write and a bcrypt check.
                let (channel, token) = self.connect(source).await?;
                self.wait_for("the learner's promotion", self.timeout * 6, || async {
                    let Ok(members) = self.member_list(&channel, &token, source).await else {
                        return false;
                    };
                    match members.iter().find(|m| m.id == id) {
                        Some(m) if !m.is_learner => return true,
                        Some(_) => {}
                        None => return false,
                    }
                    ClusterClient::new(channel.clone())
                        .member_promote(Self::request(MemberPromoteRequest { id }, &token))
                        .await
                        .is_ok()
                })
                .await
            }
            Step::Verify { member } => {
                let name = self.name(progress.current(member))?;
                let endpoint = self.platform.endpoint(&name)?;
                self.wait_for(
                    &format!("{name} to agree with the source"),
                    self.timeout * 6,
                    || async {
                        match (self.status(source).await, self.status(&endpoint).await) {
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
                .await
            }
        }
    }

    /// The ID the cluster knows member `name` by (matched by its peer URL), asking `endpoint`.
    pub async fn member_id(&self, endpoint: &str, name: &str) -> Result<Option<u64>> {
        let peer = self.platform.peer_url(name)?;
        let (channel, token) = self.connect(endpoint).await?;
        Ok(self
            .member_list(&channel, &token, endpoint)
            .await?
            .into_iter()
            .find(|m| m.peer_ur_ls.contains(&peer))
            .map(|m| m.id))
    }

    /// The cluster's members as `endpoint` (reached through `channel`, logged in with
    /// `token`) lists them.
    async fn member_list(
        &self,
        channel: &Channel,
        token: &Option<String>,
        endpoint: &str,
    ) -> Result<Vec<EtcdMember>> {
        Ok(ClusterClient::new(channel.clone())
            .member_list(Self::request(
                MemberListRequest { linearizable: true },
                token,
            ))
            .await
            .map_err(|s| api("MemberList", endpoint, &s))?
            .into_inner()
            .members)
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
            .map_err(|s| api("MoveLeader", &endpoint, &s))?;
        self.wait_for("the new leader", self.timeout * 2, || async {
            self.leader().await.is_ok_and(|l| l == to)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(next: usize) -> Progress {
        let plan = Plan {
            source: 1,
            steps: vec![
                Step::MoveLeader { to: 1 },
                Step::Remove { member: 2 },
                Step::Backup { member: 2 },
                Step::Wipe { member: 2 },
                Step::AddLearner { member: 2 },
                Step::WaitCaughtUp { member: 2 },
            ],
        };
        let names = BTreeMap::from([(1, "node1".to_string()), (2, "node2".to_string())]);
        Progress {
            next,
            ..Progress::new(plan, names)
        }
    }

    #[test]
    fn a_member_is_held_out_from_its_removal_until_it_is_added_back() {
        assert!(progress(0).held_out().is_empty());
        assert!(progress(1).held_out().is_empty(), "removal not done yet");
        assert_eq!(progress(2).held_out(), ["node2"]);
        assert_eq!(
            progress(4).held_out(),
            ["node2"],
            "adding back not done yet"
        );
        assert!(progress(5).held_out().is_empty());
        assert!(!progress(5).done());
        assert!(progress(6).done());
    }

    #[test]
    fn progress_survives_a_round_trip_through_its_file_format() {
        let mut p = progress(3);
        p.renamed.insert(2, 9);
        let json = serde_json::to_string(&p).expect("serialize");
        let back: Progress = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, p);
        assert_eq!(back.current(2), 9);
        let recorded = p.to_status();
        assert_eq!(recorded.steps[1].action, "Remove");
        assert_eq!(Progress::from_status(&recorded), Some(p));
        let mut bad = recorded;
        bad.steps[0].action = "Explode".into();
        assert_eq!(Progress::from_status(&bad), None);
    }
}
