//! One running member: the raft instance, the engine, and what the etcd API needs from
//! replication: proposals answered from the local apply, linearizable read points, membership
//! changes and leader transfer.
//!
//! As in etcd, a write sent to a follower is forwarded to the leader, and the client is answered
//! from the result of applying the entry on *this* member: the waiter for the request ID is
//! registered before proposing, and the state machine completes it when the entry applies here.
//! That is what lets members with different AuthRevisions give different answers under the
//! fault switch, exactly as etcd before PR 11652 did.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::metrics::RaftMetrics;
use openraft::type_config::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};

use super::lessor::{LeaseAnswer, LeaseQuery, Lessor};
use super::network::{PeerError, Peers, Rpc};
use super::state_machine::Listeners;
use super::{Raft, TypeConfig};
use crate::api::{
    AlarmAction, AlarmMember, AlarmRequest, AlarmType, Command, Request, RequestHeader, Response,
};
use crate::apply::ApplyError;
use crate::entry::Member;
use crate::store::{Outcome, Store};

/// What can go wrong serving a request through replication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The request was applied and refused by the engine on this member.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// No leader is known (election in progress, or no quorum).
    #[error("no leader")]
    NoLeader,
    /// The operation must run on the leader, and this member is not it.
    #[error("not leader")]
    NotLeader,
    /// The operation did not finish in time; it may still take effect.
    #[error("request timed out")]
    Timeout,
    /// The member named in a membership request is not in the cluster.
    #[error("member not found")]
    MemberNotFound,
    /// A member with these peer URLs is already in the cluster.
    #[error("peer URLs already exist")]
    PeerUrlExists,
    /// Promote was asked for a member that is not a learner.
    #[error("can only promote a learner member")]
    NotLearner,
    /// Promote was asked for a learner that has not caught up.
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// The request would leave the cluster without a voter.
    #[error("cannot remove the last voting member")]
    LastVoter,
    /// MoveLeader named a member that cannot lead (a learner).
    #[error("bad leader transferee")]
    BadTransferee,
    /// Another membership change is still being committed.
    #[error("a membership change is in progress")]
    Busy,
    /// Leadership did not move in time.
    #[error("leadership transfer timed out")]
    TransferTimeout,
    /// A peer call failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// Raft stopped or failed.
    #[error("raft: {0}")]
    Raft(String),
}

/// A change that only the leader can make; followers forward it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Proposal {
    /// A client request for the log.
    Command(Command),
    /// Add a learner (the first step of etcd's MemberAdd).
    AddLearner {
        /// New member's ID.
        id: u64,
        /// Its addresses.
        member: Member,
    },
    /// A membership change.
    Change(ChangeMembers<u64, Member>),
    /// Promote a learner, if the leader finds it caught up (etcd's MemberPromote).
    Promote {
        /// The learner's ID.
        id: u64,
    },
}

/// One member as MemberList shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Member ID.
    pub id: u64,
    /// Name, peer and client URLs.
    pub member: Member,
    /// Whether it is a learner (not voting).
    pub is_learner: bool,
}

/// The replication figures of etcd's Status RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    /// The leader's ID, 0 when none is known.
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Index of the last entry in this member's log.
    pub last_log_index: u64,
    /// Index of the last entry this member knows to be committed.
    pub committed_index: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Last index covered by the latest snapshot, 0 without one.
    pub snapshot_index: u64,
    /// Whether this member is a learner.
    pub is_learner: bool,
    /// Whether this member is the leader.
    pub is_leader: bool,
}

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Leader changes seen since start.
    pub leader_changes: AtomicU64,
    /// Proposals of this member's clients applied here.
    pub proposals_committed: AtomicU64,
    /// Proposals of this member's clients that failed or timed out.
    pub proposals_failed: AtomicU64,
    /// Proposals of this member's clients in flight: proposed and not yet answered.
    pub proposals_pending: AtomicU64,
}

/// Counts one proposal as pending for as long as it lives (also when its caller gives up and
/// drops the proposal's future).
struct Pending<'c>(&'c AtomicU64);

impl<'c> Pending<'c> {
    fn new(counter: &'c AtomicU64) -> Pending<'c> {
        counter.fetch_add(1, Ordering::Relaxed);
        Pending(counter)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running member.
pub struct Node {
    /// This member's ID.
    pub id: u64,
    /// The cluster's ID.
    pub cluster_id: u64,
    /// The raft instance.
    pub raft: Raft,
    /// The engine.
    pub store: Arc<Store>,
    listeners: Listeners,
    peers: Peers,
    next_request: AtomicU64,
    timeout: Duration,
    counters: Arc<Counters>,
    /// When this member last heard from a leader it accepted (replication or a heartbeat).
    leader_contact: std::sync::Mutex<Option<Instant>>,
    instruments: crate::metrics::Metrics,
    /// The hosts of `--initial-cluster`'s peer URLs: members before this one has a
    /// membership of its own (a new cluster's first entries, a joining member's first
    /// replication).
    initial_peer_hosts: Vec<String>,
}

impl Node {
    /// Wraps a started raft instance.
    // One caller (`server::member`), which builds every part first; a struct of parts would
    // only repeat these names.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        cluster_id: u64,
        raft: Raft,
        store: Arc<Store>,
        listeners: Listeners,
        peers: Peers,
        timeout: Duration,
        instruments: crate::metrics::Metrics,
    ) -> Node {
        // etcd's request IDs: the member's low 16 bits, then a millisecond timestamp and a
        // counter, so IDs stay unique across members and restarts.
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let first = ((id & 0xffff) << 48) | ((millis & 0xff_ffff_ffff) << 8);
        Node {
            id,
            cluster_id,
            raft,
            store,
            listeners,
            peers,
            next_request: AtomicU64::new(first),
            timeout,
            counters: Arc::new(Counters::default()),
            leader_contact: std::sync::Mutex::new(None),
            instruments,
            initial_peer_hosts: Vec::new(),
        }
    }

    /// The same, knowing the peer URLs `--initial-cluster` names (see
    /// [`Node::certifies_a_member`]).
    pub fn with_initial_peers<'u>(mut self, urls: impl IntoIterator<Item = &'u String>) -> Node {
        self.initial_peer_hosts = urls
            .into_iter()
            .filter_map(|url| crate::tls::url_host(url))
            .map(str::to_string)
            .collect();
        self
    }

    /// Records that a leader's replication (or heartbeat) was accepted just now.
    pub fn heard_from_leader(&self) {
        *self
            .leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether this member has a leader it can vouch for: as leader, a quorum acknowledged it
    /// within `within`; as follower, the leader was heard from within `within`. A member cut
    /// off from its quorum may still name the old leader (pre-vote keeps it), so naming one is
    /// not enough.
    pub fn has_live_leader(&self, within: Duration) -> bool {
        let m = self.metrics();
        if m.current_leader.is_none() {
            return false;
        }
        if m.state == ServerState::Leader {
            let alone = m.membership_config.membership().voter_ids().count() == 1;
            return alone
                || m.last_quorum_acked
                    .is_some_and(|at| openraft::Instant::elapsed(&*at) <= within);
        }
        self.leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() <= within)
    }

    /// Lease deadlines (meaningful while this member leads).
    pub fn lessor(&self) -> &Lessor {
        &self.listeners.lessor
    }

    /// What the state machine tells the rest of the member.
    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// Answers a lease renewal or query if this member leads; `None` otherwise.
    pub fn lease_on_leader(&self, query: LeaseQuery) -> Option<LeaseAnswer> {
        let status = self.raft_status();
        if !status.is_leader {
            return None;
        }
        Some(self.lessor().answer(query, status.term, Instant::now()))
    }

    /// Renews or queries a lease on the leader, forwarding when this member follows.
    pub async fn lease(&self, query: LeaseQuery) -> Result<LeaseAnswer, NodeError> {
        let deadline = Instant::now() + self.timeout;
        self.on_leader(deadline, Rpc::Lease, &query, || async move {
            Ok(self.lease_on_leader(query))
        })
        .await
    }

    /// Gets an answer from the leader: `local` when this member leads, otherwise `rpc` to the
    /// leader; retried while leadership is unknown or moving, until `deadline`. `None` from
    /// either means "not the leader (any more)".
    async fn on_leader<Req, Resp, F>(
        &self,
        deadline: Instant,
        rpc: Rpc,
        req: &Req,
        local: impl Fn() -> F,
    ) -> Result<Resp, NodeError>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
        F: std::future::Future<Output = Result<Option<Resp>, NodeError>>,
    {
        loop {
            if self.is_leader() {
                if let Some(answer) = local().await? {
                    return Ok(answer);
                }
            } else if let Some((leader, member)) = self.leader()
                && leader != self.id
            {
                let url = member.peer_urls.first().cloned().unwrap_or_default();
                let remaining = deadline.saturating_duration_since(Instant::now());
                match self
                    .peers
                    .call::<_, Option<Resp>>(&url, rpc, req, remaining)
                    .await
                {
                    Ok(Some(answer)) => return Ok(answer),
                    Ok(None) => {}
                    Err(PeerError::Timeout(_)) => return Err(NodeError::Timeout),
                    Err(_) => {}
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(NodeError::NoLeader);
            }
            self.wait_for_leader_change(remaining).await;
        }
    }

    /// Waits until the known leader changes, at most `limit` and never more than 50 ms: a
    /// retry then sees the new leader, or tries again after a short pause.
    async fn wait_for_leader_change(&self, limit: Duration) {
        let leader = self.raft.metrics().borrow_watched().current_leader;
        let _ = self
            .raft
            .wait(Some(limit.min(Duration::from_millis(50))))
            .metrics(|m| m.current_leader != leader, "leader change")
            .await;
    }

    /// The member's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The member's instruments fed as things happen (fsyncs, commits, round trips, calls).
    pub fn instruments(&self) -> &crate::metrics::Metrics {
        &self.instruments
    }

    /// Counts leader changes until raft stops (run as a task for the member's lifetime).
    pub fn count_leader_changes(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut metrics = self.raft.metrics();
        let counters = self.counters.clone();
        async move {
            let mut leader = metrics.borrow_watched().current_leader;
            while metrics.changed().await.is_ok() {
                let now = metrics.borrow_watched().current_leader;
                if now != leader && now.is_some() {
                    counters.leader_changes.fetch_add(1, Ordering::Relaxed);
                }
                leader = now;
            }
        }
    }

    /// How long a request may take.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Peer channels, shared with raft's network.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The leader and its addresses, when one is known.
    pub fn leader(&self) -> Option<(u64, Member)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let member = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, member))
    }

    /// Whether this member leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Term, indexes, leader and role, for Status. Indexes are the engine's (openraft's plus
    /// one, see [`super::log_id_to_engine`]), so they match the consistent index and dump-db.
    pub fn raft_status(&self) -> RaftStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let engine = |id: Option<&super::LogId>| id.map(|l| super::log_id_to_engine(l).index);
        RaftStatus {
            leader: m.current_leader.unwrap_or_default(),
            term: m.current_term,
            last_log_index: m.last_log_index.map(|i| i + 1).unwrap_or_default(),
            committed_index: engine(m.local_committed.as_ref()).unwrap_or_default(),
            applied_index: engine(m.last_applied.as_ref()).unwrap_or_default(),
            snapshot_index: engine(m.snapshot.as_ref()).unwrap_or_default(),
            is_learner: membership.learner_ids().any(|id| id == self.id),
            is_leader: m.state == ServerState::Leader,
        }
    }

    /// Whether a certificate with these subject alternative `names` was issued to a member:
    /// one of them is the host of a member's peer URL, in the membership or in
    /// `--initial-cluster` (before the membership reached this member).
    pub fn certifies_a_member(&self, names: &[String]) -> bool {
        let named = |host: &str| names.iter().any(|n| crate::tls::name_matches(n, host));
        if self.initial_peer_hosts.iter().any(|h| named(h)) {
            return true;
        }
        // Every peer RPC asks: read the membership in place, without copying metrics.
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let mut hosts = membership
            .nodes()
            .flat_map(|(_, member)| member.peer_urls.iter())
            .filter_map(|url| crate::tls::url_host(url));
        hosts.any(named)
    }

    /// Every member, voters first by ID, then learners.
    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, member)| MemberInfo {
                id: *id,
                member: member.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Member `id` as MemberList shows it.
    fn member(&self, id: u64) -> Result<MemberInfo, NodeError> {
        self.members()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(NodeError::MemberNotFound)
    }

    /// Replaces member `id`'s name and addresses in the membership.
    async fn set_member(&self, id: u64, member: Member) -> Result<(), NodeError> {
        self.change_membership(Proposal::Change(ChangeMembers::SetNodes(BTreeMap::from([
            (id, member),
        ]))))
        .await
    }

    /// Proposes `request` on behalf of the caller described by `header` (user and
    /// AuthRevision; the ID is assigned here) and returns the result of applying it on this
    /// member.
    #[tracing::instrument(level = "debug", skip_all, fields(member_id = %format_args!("{:x}", self.id), kind = request.kind()))]
    pub async fn propose(
        &self,
        header: RequestHeader,
        request: Request,
    ) -> Result<Response, NodeError> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let command = Command {
            header: RequestHeader { id, ..header },
            request,
        };
        let deadline = Instant::now() + self.timeout;
        let _pending = Pending::new(&self.counters.proposals_pending);
        let applied = self.listeners.waiters.register(id);
        let result = async {
            self.submit(Proposal::Command(command), deadline).await?;
            match tokio::time::timeout_at(deadline.into(), applied).await {
                Ok(Ok(Outcome::Command { response, .. })) => Ok(response?),
                Ok(Ok(_)) | Ok(Err(_)) => Err(NodeError::Raft(
                    "the entry was applied without a command result".into(),
                )),
                Err(_) => Err(NodeError::Timeout),
            }
        }
        .await;
        match &result {
            // A refusal at apply still committed the entry.
            Ok(_) | Err(NodeError::Apply(_)) => {
                self.counters
                    .proposals_committed
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters
                    .proposals_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.listeners.waiters.cancel(id);
            }
        }
        result
    }

    /// Hands a membership change to the leader and waits until this member applied it, so
    /// the answer (which lists the members) shows the change, as etcd's does.
    async fn change_membership(&self, proposal: Proposal) -> Result<(), NodeError> {
        self.submit(proposal, Instant::now() + self.timeout).await?;
        self.read_index().await
    }

    /// Hands a proposal to the leader (this member or a peer), retrying while leadership is
    /// unknown or moving, until `deadline`.
    async fn submit(&self, proposal: Proposal, deadline: Instant) -> Result<(), NodeError> {
        loop {
            let refusal = match self.execute_local(&proposal).await {
                Ok(()) => return Ok(()),
                Err(Refusal::Failed(e)) => return Err(e),
                Err(Refusal::Busy) => NodeError::Busy,
                Err(Refusal::NotLeader) => match self.leader() {
                    Some((leader, member)) if leader != self.id => {
                        let url = member.peer_urls.first().cloned().unwrap_or_default();
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        match self
                            .peers
                            .call::<_, ForwardReply>(&url, Rpc::Propose, &proposal, remaining)
                            .await
                        {
                            Ok(ForwardReply::Done) => return Ok(()),
                            Ok(ForwardReply::NotLeader) => NodeError::NotLeader,
                            Ok(ForwardReply::Busy) => NodeError::Busy,
                            Ok(ForwardReply::Failed(rejection)) => return Err(rejection.into()),
                            Err(PeerError::Timeout(_)) => return Err(NodeError::Timeout),
                            Err(e) => NodeError::Peer(e),
                        }
                    }
                    _ => NodeError::NoLeader,
                },
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(match refusal {
                    NodeError::NoLeader | NodeError::NotLeader => NodeError::NoLeader,
                    other => other,
                });
            }
            // Wait for the leadership or membership view to change (or a short while, if it
            // does not) before trying again: the refusal means no entry was appended, so
            // retrying is safe.
            let (leader, membership) = {
                let m = self.raft.metrics();
                let m = m.borrow_watched();
                (m.current_leader, m.membership_config.clone())
            };
            let _ = self
                .raft
                .wait(Some(remaining.min(Duration::from_millis(50))))
                .metrics(
                    |m| m.current_leader != leader || m.membership_config != membership,
                    "leader or membership change",
                )
                .await;
        }
    }

    /// Runs a proposal here if this member leads.
    async fn execute_local(&self, proposal: &Proposal) -> Result<(), Refusal> {
        // Asking openraft on a follower would work too, but it logs every refusal as an error.
        if !self.is_leader() {
            return Err(Refusal::NotLeader);
        }
        let result = match proposal.clone() {
            Proposal::Command(command) => self.raft.client_write(command).await.map(|_| ()),
            Proposal::AddLearner { id, member } => {
                self.raft.add_learner(id, member, false).await.map(|_| ())
            }
            Proposal::Change(change) => {
                self.raft.change_membership(change, false).await.map(|_| ())
            }
            Proposal::Promote { id } => {
                self.check_learner_ready(id).map_err(Refusal::Failed)?;
                let voters = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                self.raft.change_membership(voters, false).await.map(|_| ())
            }
        };
        result.map_err(|e| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Refusal::NotLeader,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )) => Refusal::Busy,
            // Another membership change got in between (members publish theirs at start):
            // nothing was appended, so this one is retried on the new membership.
            RaftError::APIError(ClientWriteError::PreconditionFailed(
                openraft::error::PreconditionFailed::LastMembershipLogIdMismatch { .. },
            )) => Refusal::Busy,
            RaftError::APIError(other) => Refusal::Failed(NodeError::Raft(other.to_string())),
            RaftError::Fatal(fatal) => Refusal::Failed(NodeError::Raft(fatal.to_string())),
        })
    }

    /// Serves a forwarded proposal (the peer side of [`Rpc::Propose`]).
    pub async fn serve_forwarded(&self, proposal: Proposal) -> ForwardReply {
        match self.execute_local(&proposal).await {
            Ok(()) => {
                // The follower answers its client from its own apply, which waits until it
                // learns the new commit index; a heartbeat now tells it at once instead of
                // with the next scheduled one.
                let _ = self.raft.trigger().heartbeat().await;
                ForwardReply::Done
            }
            Err(Refusal::NotLeader) => ForwardReply::NotLeader,
            Err(Refusal::Busy) => ForwardReply::Busy,
            Err(Refusal::Failed(e)) => ForwardReply::Failed(Rejection::from(e)),
        }
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by the leader (etcd's ReadIndex): after it, a local read is linearizable.
    pub async fn read_index(&self) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.timeout;
        let index = self
            .on_leader(deadline, Rpc::ReadIndex, &(), || async move {
                match self.leader_read_index().await {
                    Ok(index) => Ok(Some(index)),
                    Err(NodeError::NotLeader) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| NodeError::Timeout)
    }

    /// On the leader: confirms leadership with a quorum and returns the index a linearizable
    /// read must wait for.
    pub async fn leader_read_index(&self) -> Result<u64, NodeError> {
        match self
            .raft
            .get_read_log_id(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok((read, _)) => Ok(read.log_id().index),
            Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(
                _,
            ))) => Err(NodeError::NotLeader),
            Err(RaftError::APIError(e)) => Err(NodeError::Raft(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(NodeError::Raft(e.to_string())),
        }
    }

    /// etcd's MemberAdd: a new member with a fresh ID, as a learner or a voter.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberInfo, NodeError> {
        let members = self.members();
        if members
            .iter()
            .any(|m| m.member.peer_urls.iter().any(|u| peer_urls.contains(u)))
        {
            return Err(NodeError::PeerUrlExists);
        }
        let id = new_member_id(&peer_urls, members.iter().map(|m| m.id));
        let member = Member {
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
        };
        let deadline = Instant::now() + self.timeout;
        self.submit(
            Proposal::AddLearner {
                id,
                member: member.clone(),
            },
            deadline,
        )
        .await?;
        if !is_learner {
            self.submit(
                Proposal::Change(ChangeMembers::AddVoterIds(BTreeSet::from([id]))),
                deadline,
            )
            .await?;
        }
        self.read_index().await?;
        Ok(MemberInfo {
            id,
            member,
            is_learner,
        })
    }

    /// etcd's MemberRemove.
    pub async fn member_remove(&self, id: u64) -> Result<(), NodeError> {
        let members = self.members();
        let target = members
            .iter()
            .find(|m| m.id == id)
            .ok_or(NodeError::MemberNotFound)?;
        let change = if target.is_learner {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            if members.iter().filter(|m| !m.is_learner).count() == 1 {
                return Err(NodeError::LastVoter);
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        };
        if id == self.id {
            // A member that removed itself will not hear of later commits to wait for.
            return self
                .submit(Proposal::Change(change), Instant::now() + self.timeout)
                .await;
        }
        self.change_membership(Proposal::Change(change)).await
    }

    /// etcd's MemberUpdate: new peer URLs for a member.
    pub async fn member_update(&self, id: u64, peer_urls: Vec<String>) -> Result<(), NodeError> {
        let members = self.members();
        let target = members
            .iter()
            .find(|m| m.id == id)
            .ok_or(NodeError::MemberNotFound)?;
        if members
            .iter()
            .any(|m| m.id != id && m.member.peer_urls.iter().any(|u| peer_urls.contains(u)))
        {
            return Err(NodeError::PeerUrlExists);
        }
        let member = Member {
            peer_urls,
            ..target.member.clone()
        };
        self.set_member(id, member).await
    }

    /// Records this member's name and client URLs in the membership (etcd publishes them
    /// through raft when a member starts). Proposed every start: the membership a founder sees
    /// before it hears from the leader is the one it bootstrapped with, where it alone had its
    /// client URLs, so comparing with it could skip a publish the cluster never saw.
    pub async fn publish(&self, me: Member) -> Result<(), NodeError> {
        self.member(self.id)?;
        self.set_member(self.id, me).await
    }

    /// etcd's MemberPromote: a caught-up learner becomes a voter. The leader, which alone
    /// knows how far the learner got, decides; followers forward the request.
    pub async fn member_promote(&self, id: u64) -> Result<(), NodeError> {
        if !self.member(id)?.is_learner {
            return Err(NodeError::NotLearner);
        }
        self.change_membership(Proposal::Promote { id }).await
    }

    /// On the leader: whether learner `id` has caught up enough to vote.
    fn check_learner_ready(&self, id: u64) -> Result<(), NodeError> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(NodeError::MemberNotFound);
        }
        if membership.voter_ids().any(|v| v == id) {
            return Err(NodeError::NotLearner);
        }
        let last = m.last_log_index.unwrap_or_default();
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index)
            .unwrap_or_default();
        // etcd's rule: a learner is ready when its match index reaches 90% of the leader's.
        if (matched as f64) < 0.9 * (last as f64) {
            return Err(NodeError::LearnerNotReady);
        }
        Ok(())
    }

    /// Raises `alarm` for this member through raft (what etcd does when a request does not fit
    /// the quota); returns once it applied here.
    pub async fn raise_alarm(&self, alarm: AlarmType) -> Result<(), NodeError> {
        self.raise_alarm_for(self.id, alarm).await
    }

    /// Raises `alarm` for member `member_id` through raft (the leader's corruption check names
    /// the members whose data differs); returns once it applied here.
    pub async fn raise_alarm_for(&self, member_id: u64, alarm: AlarmType) -> Result<(), NodeError> {
        let request = Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate,
            member_id,
            alarm,
        });
        self.propose(RequestHeader::default(), request).await?;
        Ok(())
    }

    /// Whether this member's `alarm` is active (as applied here).
    pub fn has_alarm(&self, alarm: AlarmType) -> bool {
        self.store.alarms(alarm).contains(&AlarmMember {
            member_id: self.id,
            alarm,
        })
    }

    /// etcd's MoveLeader: on the leader, hand leadership to `target` and wait until it leads.
    pub async fn move_leader(&self, target: u64) -> Result<(), NodeError> {
        if self.member(target)?.is_learner {
            return Err(NodeError::BadTransferee);
        }
        if !self.is_leader() {
            return Err(NodeError::NotLeader);
        }
        if target == self.id {
            return Ok(());
        }
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        self.raft
            .wait(Some(self.timeout))
            .current_leader(target, "move leader")
            .await
            .map(|_| ())
            .map_err(|_| NodeError::TransferTimeout)
    }
}

enum Refusal {
    NotLeader,
    /// Another membership change is not committed yet; nothing was appended.
    Busy,
    Failed(NodeError),
}

/// The leader's answer to a forwarded proposal.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    /// Committed and applied on the leader.
    Done,
    /// The receiver does not lead (any more); nothing was appended.
    NotLeader,
    /// Another membership change is in progress; nothing was appended.
    Busy,
    /// Refused for another reason.
    Failed(Rejection),
}

/// Why the leader refused a forwarded proposal, as it travels back to the follower.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rejection {
    /// The member is unknown.
    MemberNotFound,
    /// The member is not a learner.
    NotLearner,
    /// The learner has not caught up.
    LearnerNotReady,
    /// Anything else, as text.
    Other(String),
}

impl From<NodeError> for Rejection {
    fn from(e: NodeError) -> Rejection {
        match e {
            NodeError::MemberNotFound => Rejection::MemberNotFound,
            NodeError::NotLearner => Rejection::NotLearner,
            NodeError::LearnerNotReady => Rejection::LearnerNotReady,
            other => Rejection::Other(other.to_string()),
        }
    }
}

impl From<Rejection> for NodeError {
    fn from(r: Rejection) -> NodeError {
        match r {
            Rejection::MemberNotFound => NodeError::MemberNotFound,
            Rejection::NotLearner => NodeError::NotLearner,
            Rejection::LearnerNotReady => NodeError::LearnerNotReady,
            Rejection::Other(message) => NodeError::Raft(message),
        }
    }
}

/// A member ID for MemberAdd: derived from the peer URLs, the time and randomness, unique
/// among `taken` and never 0.
fn new_member_id(peer_urls: &[String], taken: impl Iterator<Item = u64>) -> u64 {
    let taken: BTreeSet<u64> = taken.collect();
    loop {
        let mut random = [0u8; 8];
        // Without OS randomness the time and URLs still make IDs distinct in practice.
        let _ = getrandom::fill(&mut random);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let id = crate::cli::member_id(peer_urls, &format!("{nanos}")) ^ u64::from_le_bytes(random);
        if id != 0 && !taken.contains(&id) {
            return id;
        }
    }
}
