//! Member-to-member traffic on the peer port: openraft's RPCs, the requests a follower sends
//! its leader (forwarded writes, read points, membership lookups), and the KV hashes the
//! corruption checks compare.
//!
//! Every message travels as postcard bytes inside the `mendpeer.Peer` gRPC service; a reply is
//! a postcard `Result<T, String>`, so a remote refusal arrives as text and a transport failure
//! as a gRPC status. Every call has a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::{SnapshotData, TypeConfig, Vote};
use crate::entry::Member;
use crate::pb::mendpeer::Blob;
use crate::pb::mendpeer::peer_client::PeerClient;

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest peer message: snapshots travel whole, so this bounds the data a member can hold.
pub const MAX_PEER_MESSAGE: usize = 1 << 30;

/// The peer RPCs.
#[derive(Clone, Copy, Debug)]
pub enum Rpc {
    /// openraft AppendEntries.
    AppendEntries,
    /// openraft Vote.
    Vote,
    /// openraft Pre-Vote.
    PreVote,
    /// A whole snapshot.
    InstallSnapshot,
    /// Leadership handed over.
    TransferLeader,
    /// A forwarded write.
    Propose,
    /// A linearizable read point.
    ReadIndex,
    /// A lease renewal or query on the leader.
    Lease,
    /// The cluster's membership.
    Membership,
    /// A KV hash or position, for the corruption checks.
    HashKv,
}

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer URL is not usable.
    #[error("bad peer URL {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The peer could not be reached or the transport failed.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The peer did not answer in time.
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
    /// The peer answered with a refusal.
    #[error("{0}")]
    Remote(String),
    /// A message could not be encoded.
    #[error("peer message encoding: {0}")]
    Codec(#[from] postcard::Error),
    /// A reply could not be decoded.
    #[error("peer message decoding: {0}")]
    Decode(#[from] DecodeError),
}

/// Why a peer message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not an encoding of the message.
    #[error(transparent)]
    Postcard(postcard::Error),
    /// The message nests values deeper than [`MAX_NESTING`].
    #[error("values nested more than {MAX_NESTING} levels deep")]
    TooDeep,
}

/// The most levels a decoded peer message may nest (see [`super::nesting`]): far more than
/// any member sends (an AppendEntries carrying the deepest txn a client can send, 50 nested
/// txns, nests about 160), far fewer than would overflow the stack decoding it.
pub const MAX_NESTING: usize = 256;

/// Encodes a value for the wire.
pub fn encode<T: Serialize>(value: &T) -> Result<Blob, postcard::Error> {
    Ok(Blob {
        data: postcard::to_stdvec(value)?,
    })
}

/// Decodes a value from the wire, refusing one nested more than [`MAX_NESTING`] levels deep.
pub fn decode<T: DeserializeOwned>(blob: &Blob) -> Result<T, DecodeError> {
    let mut deserializer = postcard::Deserializer::from_bytes(&blob.data);
    super::nesting::deserialize(&mut deserializer, MAX_NESTING).map_err(|e| match e {
        super::nesting::Refused::TooDeep => DecodeError::TooDeep,
        super::nesting::Refused::Invalid(e) => DecodeError::Postcard(e),
    })
}

/// Lazily connected gRPC channels to peers, shared by every client of this member.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Peer TLS, for `https://` peer URLs.
    tls: Option<crate::tls::PortTls>,
    /// Round trips of raft's RPCs, by target (etcd's `etcd_network_peer_round_trip_time_seconds`).
    round_trips: crate::metrics::RoundTrips,
}

impl Default for Peers {
    fn default() -> Peers {
        Peers {
            channels: Arc::default(),
            tls: None,
            round_trips: crate::metrics::round_trip_family(),
        }
    }
}

impl Peers {
    /// Peers reached with `tls` for `https://` URLs.
    pub fn with_tls(tls: Option<crate::tls::PortTls>) -> Peers {
        Peers {
            tls,
            ..Peers::default()
        }
    }

    /// The round-trip times of raft's messages to each peer (a handle on the histograms the
    /// network records into).
    pub fn round_trip_times(&self) -> crate::metrics::RoundTrips {
        self.round_trips.clone()
    }

    /// A client for the peer at `url` (connects on first use, reconnects after failures).
    pub fn client(&self, url: &str) -> Result<PeerClient<Channel>, PeerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let endpoint =
                    Endpoint::from_shared(url.to_string()).map_err(|e| PeerError::BadUrl {
                        url: url.to_string(),
                        reason: e.to_string(),
                    })?;
                let endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true);
                let channel = if crate::tls::is_https(url) {
                    let tls = self.tls.clone().ok_or_else(|| PeerError::BadUrl {
                        url: url.to_string(),
                        reason: "an https peer URL, but this member has no peer TLS \
                                 (--peer-cert-file, --peer-key-file or --peer-auto-tls)"
                            .to_string(),
                    })?;
                    endpoint.connect_with_connector_lazy(crate::tls::Dialer::new(
                        tls.client().clone(),
                        CONNECT_TIMEOUT,
                    ))
                } else {
                    endpoint.connect_lazy()
                };
                channels.insert(url.to_string(), channel.clone());
                channel
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE))
    }

    /// Calls `rpc` on the peer at `url` with `req`, waiting at most `timeout`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        url: &str,
        rpc: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let mut client = self.client(url)?;
        let mut request = tonic::Request::new(encode(req)?);
        request.set_timeout(timeout);
        let call = async move {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::PreVote => client.pre_vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
                Rpc::TransferLeader => client.transfer_leader(request).await,
                Rpc::Propose => client.propose(request).await,
                Rpc::ReadIndex => client.read_index(request).await,
                Rpc::Lease => client.lease(request).await,
                Rpc::Membership => client.membership(request).await,
                Rpc::HashKv => client.hash_kv(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(PeerError::Timeout(timeout)),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(PeerError::Timeout(timeout));
            }
            Ok(Err(status)) => return Err(PeerError::Unreachable(status.message().to_string())),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        decode::<Result<Resp, String>>(&reply)?.map_err(PeerError::Remote)
    }
}

/// Picks the URL a member is reached on.
fn peer_url(node: &Member) -> Option<&str> {
    node.peer_urls.first().map(String::as_str)
}

/// Builds openraft's per-target network clients.
#[derive(Clone)]
pub struct NetworkFactory {
    /// Shared channels.
    pub peers: Peers,
    /// The least time an AppendEntries is given (the election timeout): see
    /// [`Network::append_entries`](RaftNetworkV2::append_entries).
    pub append_floor: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: u64, node: &Member) -> Network {
        Network {
            target,
            url: peer_url(node).map(str::to_string),
            peers: self.peers.clone(),
            append_floor: self.append_floor,
        }
    }
}

/// openraft's client for one target member.
pub struct Network {
    target: u64,
    url: Option<String>,
    peers: Peers,
    append_floor: Duration,
}

impl Network {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let url = self.url.as_deref().ok_or_else(|| {
            PeerError::Unreachable(format!("member {:x} has no peer URL", self.target))
        })?;
        let started = std::time::Instant::now();
        let reply = self.peers.call(url, rpc, req, timeout).await;
        // As etcd's prober, only messages the peer answered count (a refusal is an answer); a
        // snapshot's transfer time would be no round trip.
        let answered = matches!(reply, Ok(_) | Err(PeerError::Remote(_)));
        if answered && !matches!(rpc, Rpc::InstallSnapshot) {
            self.peers
                .round_trips
                .get_or_create(&crate::metrics::Peer::new(self.target))
                .observe(started.elapsed().as_secs_f64());
        }
        reply
    }
}

fn rpc_error(e: PeerError) -> RPCError<TypeConfig> {
    match e {
        PeerError::Unreachable(_) | PeerError::BadUrl { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

fn streaming_error(e: PeerError) -> StreamingError<TypeConfig> {
    match e {
        PeerError::Unreachable(_) | PeerError::BadUrl { .. } => {
            StreamingError::Unreachable(Unreachable::new(&e))
        }
        _ => StreamingError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetworkV2<TypeConfig> for Network {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft bounds an append by the heartbeat interval, but a batch of large entries
        // (values near the request size limit) takes longer than that to send and make durable
        // on a busy follower: cut off every time, the follower would never catch up, and a
        // leader whose followers all trail would commit nothing. A follower that has not
        // answered within an election timeout has failed anyway.
        let timeout = option.hard_ttl().max(self.append_floor);
        self.call(Rpc::AppendEntries, &rpc, timeout)
            .await
            .map_err(rpc_error)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl())
            .await
            .map_err(rpc_error)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote, &rpc, option.hard_ttl())
            .await
            .map_err(rpc_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let message = (vote, snapshot.meta, snapshot.snapshot.into_inner());
        // A snapshot can take long to send and install; the per-RPC soft TTL is for small
        // messages, so give it a generous bound of its own.
        let timeout = option.hard_ttl().max(Duration::from_secs(60));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = self.call(Rpc::InstallSnapshot, &message, timeout) => reply.map_err(streaming_error),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::TransferLeader, &req, option.hard_ttl())
            .await
            .map_err(rpc_error)
    }
}

/// The receiving side of the peer protocol.
pub struct PeerService {
    node: Arc<super::node::Node>,
}

impl PeerService {
    /// Serves peer traffic for `node`.
    pub fn new(node: Arc<super::node::Node>) -> PeerService {
        PeerService { node }
    }

    /// The tonic service, with message limits large enough for whole snapshots.
    pub fn into_server(self) -> crate::pb::mendpeer::peer_server::PeerServer<PeerService> {
        crate::pb::mendpeer::peer_server::PeerServer::new(self)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE)
    }
}

type Reply = Result<tonic::Response<Blob>, tonic::Status>;

impl PeerService {
    /// Under peer client-certificate auth, every peer RPC is taken only from a certificate
    /// issued to a member: one whose names include the host of a member's peer URL. A
    /// certificate from the same CA issued to anyone else (a client, the operator) could
    /// otherwise append entries, vote, or forward a write naming root. etcd takes any
    /// certificate of the peer CA unless `--peer-cert-allowed-cn` says otherwise.
    fn only_members(&self, req: &tonic::Request<Blob>, what: &str) -> Result<(), tonic::Status> {
        let Some(info) = req.extensions().get::<crate::tls::ConnInfo>() else {
            return Ok(());
        };
        if !info.verified || self.node.certifies_a_member(&info.names) {
            return Ok(());
        }
        tracing::warn!(
            peer = ?info.remote,
            names = ?info.names,
            what,
            "refused a peer request: the peer's certificate names no member"
        );
        Err(tonic::Status::permission_denied(format!(
            "{what} are taken only from members: the certificate names none"
        )))
    }
}

fn reply<T: Serialize>(result: Result<T, String>) -> Reply {
    encode(&result)
        .map(tonic::Response::new)
        .map_err(|e| tonic::Status::internal(format!("encoding reply: {e}")))
}

fn request<T: DeserializeOwned>(req: tonic::Request<Blob>) -> Result<T, tonic::Status> {
    decode(req.get_ref())
        .map_err(|e| tonic::Status::invalid_argument(format!("bad peer message: {e}")))
}

#[tonic::async_trait]
impl crate::pb::mendpeer::peer_server::Peer for PeerService {
    async fn append_entries(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "replication requests")?;
        let rpc: AppendEntriesRequest<TypeConfig> = request(req)?;
        let response = self.node.raft.append_entries(rpc).await;
        if let Ok(r) = &response
            && !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_))
        {
            self.node.heard_from_leader();
        }
        reply(response.map_err(|e| e.to_string()))
    }

    async fn vote(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "votes")?;
        let rpc: VoteRequest<TypeConfig> = request(req)?;
        reply(self.node.raft.vote(rpc).await.map_err(|e| e.to_string()))
    }

    async fn pre_vote(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "votes")?;
        let rpc: VoteRequest<TypeConfig> = request(req)?;
        reply(
            self.node
                .raft
                .pre_vote(rpc)
                .await
                .map_err(|e| e.to_string()),
        )
    }

    async fn install_snapshot(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "snapshots")?;
        let (vote, meta, data): (
            Vote,
            openraft::type_config::alias::SnapshotMetaOf<TypeConfig>,
            Vec<u8>,
        ) = request(req)?;
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: std::io::Cursor::new(data),
        };
        reply(
            self.node
                .raft
                .install_full_snapshot(vote, snapshot)
                .await
                .map_err(|e| e.to_string()),
        )
    }

    async fn transfer_leader(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "leadership transfers")?;
        let rpc: TransferLeaderRequest<TypeConfig> = request(req)?;
        reply(
            self.node
                .raft
                .handle_transfer_leader(rpc)
                .await
                .map_err(|e| e.to_string()),
        )
    }

    async fn propose(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "forwarded proposals")?;
        let proposal: super::node::Proposal = request(req)?;
        reply::<super::node::ForwardReply>(Ok(self.node.serve_forwarded(proposal).await))
    }

    async fn read_index(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "read index requests")?;
        // `None` tells the follower to look for the leader again.
        reply::<Option<u64>>(match self.node.leader_read_index().await {
            Ok(index) => Ok(Some(index)),
            Err(super::node::NodeError::NotLeader) => Ok(None),
            Err(e) => Err(e.to_string()),
        })
    }

    async fn lease(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "lease requests")?;
        let query: super::lessor::LeaseQuery = request(req)?;
        // `None` outside: this member does not lead (any more).
        reply::<Option<super::lessor::LeaseAnswer>>(Ok(self.node.lease_on_leader(query)))
    }

    async fn hash_kv(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "hash requests")?;
        let query: super::corrupt::HashQuery = request(req)?;
        reply(super::corrupt::answer(&self.node, query).await)
    }

    async fn membership(&self, req: tonic::Request<Blob>) -> Reply {
        self.only_members(&req, "membership requests")?;
        reply::<(u64, Vec<super::node::MemberInfo>)>(Ok((
            self.node.cluster_id,
            self.node.members(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::ChangeMembers;

    use super::*;
    use crate::api::{Command, Request, RequestHeader, RequestOp, TxnRequest};
    use crate::raft::node::Proposal;

    fn blob(data: Vec<u8>) -> Blob {
        Blob { data }
    }

    /// A forwarded write of a txn nesting `depth` txns, each holding only the next.
    fn nested_txns(depth: usize) -> Proposal {
        let mut txn = TxnRequest::default();
        for _ in 0..depth {
            txn = TxnRequest {
                success: vec![RequestOp::Txn(txn)],
                ..TxnRequest::default()
            };
        }
        Proposal::Command(Command {
            header: RequestHeader::default(),
            request: Request::Txn(txn),
        })
    }

    /// [`nested_txns`] as postcard bytes, written out (building a value thousands deep to
    /// encode would itself recurse that deep): three bytes per level.
    fn nested_txns_bytes(depth: usize) -> Vec<u8> {
        // `Proposal::Command`, a header of zeros and an empty name, `Request::Txn`.
        let mut bytes = vec![0, 0, 0, 0, 3];
        // No compares, one success operation: a `RequestOp::Txn`.
        bytes.extend([0, 1, 3].repeat(depth));
        // The innermost txn is empty; on the way out, every failure branch is.
        bytes.extend([0, 0, 0]);
        bytes.extend(vec![0; depth]);
        bytes
    }

    /// A forwarded membership change of `depth` nested batches around an empty change.
    fn nested_batches(depth: usize) -> Proposal {
        let mut change = ChangeMembers::AddVoterIds(BTreeSet::new());
        for _ in 0..depth {
            change = ChangeMembers::Batch(vec![change]);
        }
        Proposal::Change(change)
    }

    /// [`nested_batches`] as postcard bytes, written out: two bytes per level.
    fn nested_batches_bytes(depth: usize) -> Vec<u8> {
        // `Proposal::Change`; per level `ChangeMembers::Batch` of one; an empty AddVoterIds.
        let mut bytes = vec![2];
        bytes.extend([8, 1].repeat(depth));
        bytes.extend([0, 0]);
        bytes
    }

    #[test]
    fn a_proposal_of_txns_nested_a_thousand_deep_is_refused_instead_of_overflowing_the_stack() {
        // Regression: 3 KB of Propose made the receiving member abort with a stack overflow.
        for depth in [0, 3, 80] {
            let bytes = nested_txns_bytes(depth);
            assert_eq!(bytes, encode(&nested_txns(depth)).expect("encodes").data);
            let decoded: Proposal = decode(&blob(bytes)).expect("decodes");
            assert!(
                matches!(decoded, Proposal::Command(c) if c == match nested_txns(depth) {
                    Proposal::Command(c) => c,
                    _ => unreachable!(),
                })
            );
        }
        for depth in [1000, 100_000] {
            let refused = decode::<Proposal>(&blob(nested_txns_bytes(depth)));
            assert!(matches!(refused, Err(DecodeError::TooDeep)), "{refused:?}");
        }
    }

    #[test]
    fn a_proposal_of_membership_batches_nested_deep_is_refused_instead_of_overflowing_the_stack() {
        // Regression: 20 KB of Propose (openraft's `ChangeMembers::Batch` nests itself) made
        // the receiving member abort with a stack overflow.
        for depth in [0, 3, 100] {
            let bytes = nested_batches_bytes(depth);
            assert_eq!(bytes, encode(&nested_batches(depth)).expect("encodes").data);
            let decoded: Proposal = decode(&blob(bytes)).expect("decodes");
            assert_eq!(
                encode(&decoded).expect("encodes").data,
                nested_batches_bytes(depth)
            );
        }
        for depth in [1000, 100_000] {
            let refused = decode::<Proposal>(&blob(nested_batches_bytes(depth)));
            assert!(matches!(refused, Err(DecodeError::TooDeep)), "{refused:?}");
            let err = refused.expect_err("refused").to_string();
            assert!(err.contains("nested more than 256 levels"), "{err}");
        }
    }

    /// Peer messages, both ways: arbitrary bytes and damaged encodings decoded as every
    /// message, and generated messages round-tripped. The message strategies are boxed: their
    /// value trees held inline overflow a test thread's stack in debug builds.
    mod fuzz {
        use std::collections::BTreeMap;

        use openraft::EntryPayload;
        use openraft::raft::TransferLeaderResponse;
        use proptest::collection::{btree_set, vec};
        use proptest::prelude::*;

        use super::*;
        use crate::fuzzing::{self, config, number, text};
        use crate::raft::corrupt::{HashAnswer, HashQuery, Position};
        use crate::raft::lessor::{LeaseAnswer, LeaseQuery};
        use crate::raft::node::{ForwardReply, MemberInfo, Rejection};
        use crate::raft::{Entry, LogId, Membership, SnapshotMeta, StoredMembership};

        /// Decodes `bytes` as a `T`: an error, or a value whose encoding decodes to a value
        /// with the same encoding.
        fn decodes_stably<T: Serialize + DeserializeOwned>(
            bytes: &[u8],
        ) -> Result<(), TestCaseError> {
            let Ok(value) = decode::<T>(&blob(bytes.to_vec())) else {
                return Ok(());
            };
            let once = encode(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again: T = decode(&once).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let twice = encode(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(once.data, twice.data);
            Ok(())
        }

        /// Decodes `bytes` as every message a member receives: each request of the peer
        /// service, and each reply.
        fn decode_as_every_message(bytes: &[u8]) -> Result<(), TestCaseError> {
            macro_rules! each {
                ($($message:ty),* $(,)?) => {
                    $( decodes_stably::<$message>(bytes)?; )*
                };
            }
            each!(
                AppendEntriesRequest<TypeConfig>,
                VoteRequest<TypeConfig>,
                (Vote, SnapshotMeta, Vec<u8>),
                TransferLeaderRequest<TypeConfig>,
                Proposal,
                LeaseQuery,
                HashQuery,
                Result<AppendEntriesResponse<TypeConfig>, String>,
                Result<VoteResponse<TypeConfig>, String>,
                Result<SnapshotResponse<TypeConfig>, String>,
                Result<TransferLeaderResponse<TypeConfig>, String>,
                Result<ForwardReply, String>,
                Result<Option<u64>, String>,
                Result<Option<LeaseAnswer>, String>,
                Result<HashAnswer, String>,
                Result<(u64, Vec<MemberInfo>), String>,
            );
            Ok(())
        }

        fn log_id() -> impl Strategy<Value = LogId> {
            (0..4u64, any::<u64>()).prop_map(|(term, index)| LogId::new_term_index(term, index))
        }

        fn vote() -> impl Strategy<Value = Vote> {
            (any::<u64>(), 0..8u64, any::<bool>()).prop_map(|(term, node, committed)| {
                if committed {
                    Vote::new_committed(term, node)
                } else {
                    Vote::new(term, node)
                }
            })
        }

        fn member() -> impl Strategy<Value = Member> {
            (text(), vec(text(), 0..3), vec(text(), 0..3)).prop_map(
                |(name, peer_urls, client_urls)| Member {
                    name,
                    peer_urls,
                    client_urls,
                },
            )
        }

        fn members() -> impl Strategy<Value = BTreeMap<u64, Member>> {
            proptest::collection::btree_map(0..8u64, member(), 0..4)
        }

        /// A membership: one or two voter sets, and learners.
        fn membership() -> BoxedStrategy<Membership> {
            (
                vec(btree_set(0..6u64, 1..4), 1..3),
                btree_set(0..8u64, 0..3),
                member(),
            )
                .prop_map(|(configs, learners, member)| {
                    let ids: BTreeSet<u64> =
                        configs.iter().flatten().chain(&learners).copied().collect();
                    let nodes: BTreeMap<u64, Member> =
                        ids.into_iter().map(|id| (id, member.clone())).collect();
                    Membership::new(configs, nodes).expect("every voter has a member")
                })
                .boxed()
        }

        fn entry() -> BoxedStrategy<Entry> {
            let payload = prop_oneof![
                Just(EntryPayload::Blank),
                fuzzing::command().prop_map(EntryPayload::Normal),
                membership().prop_map(EntryPayload::Membership),
            ];
            (log_id(), payload)
                .prop_map(|(log_id, payload)| Entry { log_id, payload })
                .boxed()
        }

        fn append_entries() -> BoxedStrategy<AppendEntriesRequest<TypeConfig>> {
            use proptest::option::of;
            (vote(), of(log_id()), vec(entry(), 0..4), of(log_id()))
                .prop_map(
                    |(vote, prev_log_id, entries, leader_commit)| AppendEntriesRequest {
                        vote,
                        prev_log_id,
                        entries,
                        leader_commit,
                    },
                )
                .boxed()
        }

        fn snapshot() -> BoxedStrategy<(Vote, SnapshotMeta, Vec<u8>)> {
            use proptest::option::of;
            (
                vote(),
                of(log_id()),
                of(log_id()),
                membership(),
                fuzzing::bytes(64),
            )
                .prop_map(|(vote, last_log_id, membership_log_id, membership, data)| {
                    let meta = SnapshotMeta {
                        last_log_id,
                        last_membership: StoredMembership::new(membership_log_id, membership),
                    };
                    (vote, meta, data)
                })
                .boxed()
        }

        /// A membership change, batches nested a few deep.
        fn change() -> BoxedStrategy<ChangeMembers<u64, Member>> {
            let ids = || btree_set(0..8u64, 0..4);
            let leaf = prop_oneof![
                ids().prop_map(ChangeMembers::AddVoterIds),
                members().prop_map(ChangeMembers::AddVoters),
                ids().prop_map(ChangeMembers::RemoveVoters),
                ids().prop_map(ChangeMembers::ReplaceAllVoters),
                members().prop_map(ChangeMembers::AddNodes),
                members().prop_map(ChangeMembers::SetNodes),
                ids().prop_map(ChangeMembers::RemoveNodes),
                members().prop_map(ChangeMembers::ReplaceAllNodes),
            ];
            leaf.prop_recursive(3, 12, 3, |inner| {
                vec(inner, 0..3).prop_map(ChangeMembers::Batch)
            })
            .boxed()
        }

        fn proposal() -> BoxedStrategy<Proposal> {
            prop_oneof![
                fuzzing::command().prop_map(Proposal::Command),
                (any::<u64>(), member())
                    .prop_map(|(id, member)| Proposal::AddLearner { id, member }),
                change().prop_map(Proposal::Change),
                any::<u64>().prop_map(|id| Proposal::Promote { id }),
            ]
            .boxed()
        }

        fn position() -> impl Strategy<Value = Position> {
            (number(), number()).prop_map(|(revision, compact_revision)| Position {
                revision,
                compact_revision,
            })
        }

        /// Every reply a member decodes, each as its encoding.
        fn reply_encoding() -> BoxedStrategy<Vec<u8>> {
            fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
                encode(value).expect("encodes").data
            }
            let error = || text().prop_map(Err::<(), String>);
            let forward = (0..7u8, text()).prop_map(|(kind, text)| match kind {
                0 => ForwardReply::Done,
                1 => ForwardReply::NotLeader,
                2 => ForwardReply::Busy,
                3 => ForwardReply::Failed(Rejection::MemberNotFound),
                4 => ForwardReply::Failed(Rejection::NotLearner),
                5 => ForwardReply::Failed(Rejection::LearnerNotReady),
                _ => ForwardReply::Failed(Rejection::Other(text)),
            });
            let hash = prop_oneof![
                position().prop_map(HashAnswer::Position),
                (any::<u32>(), number()).prop_map(|(hash, compact_revision)| HashAnswer::Hash {
                    hash,
                    compact_revision
                }),
                position().prop_map(HashAnswer::Compacted),
                position().prop_map(HashAnswer::Future),
            ];
            let member_info =
                (any::<u64>(), member(), any::<bool>()).prop_map(|(id, member, is_learner)| {
                    MemberInfo {
                        id,
                        member,
                        is_learner,
                    }
                });
            let append = prop_oneof![
                Just(AppendEntriesResponse::<TypeConfig>::Success),
                Just(AppendEntriesResponse::Conflict),
                proptest::option::of(log_id()).prop_map(AppendEntriesResponse::PartialSuccess),
                vote().prop_map(AppendEntriesResponse::HigherVote),
            ];
            prop_oneof![
                error().prop_map(|e| bytes(&e)),
                append.prop_map(|r| bytes(&Ok::<_, String>(r))),
                (vote(), proptest::option::of(log_id()), any::<bool>()).prop_map(|(v, l, g)| {
                    bytes(&Ok::<_, String>(VoteResponse::<TypeConfig>::new(v, l, g)))
                }),
                vote()
                    .prop_map(|v| bytes(&Ok::<_, String>(SnapshotResponse::<TypeConfig>::new(v)))),
                forward.prop_map(|r| bytes(&Ok::<_, String>(r))),
                proptest::option::of(any::<u64>()).prop_map(|r| bytes(&Ok::<_, String>(r))),
                proptest::option::of(proptest::option::of((number(), number())))
                    .prop_map(|r| bytes(&Ok::<_, String>(r))),
                hash.prop_map(|r| bytes(&Ok::<_, String>(r))),
                (any::<u64>(), vec(member_info, 0..4)).prop_map(|r| bytes(&Ok::<_, String>(r))),
            ]
            .boxed()
        }

        /// Every request a member decodes, each as its encoding.
        fn request_encoding() -> BoxedStrategy<Vec<u8>> {
            fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
                encode(value).expect("encodes").data
            }
            use proptest::option::of;
            prop_oneof![
                append_entries().prop_map(|m| bytes(&m)),
                (vote(), of(log_id()))
                    .prop_map(|(v, l)| bytes(&VoteRequest::<TypeConfig>::new(v, l))),
                snapshot().prop_map(|m| bytes(&m)),
                (vote(), 0..8u64, of(log_id())).prop_map(|(v, to, l)| {
                    bytes(&TransferLeaderRequest::<TypeConfig>::new(v, to, l))
                }),
                proposal().prop_map(|m| bytes(&m)),
                prop_oneof![
                    number().prop_map(LeaseQuery::Renew),
                    number().prop_map(LeaseQuery::TimeToLive),
                ]
                .prop_map(|m| bytes(&m)),
                (any::<u64>(), of(number())).prop_map(|(cluster_id, revision)| {
                    bytes(&HashQuery {
                        cluster_id,
                        revision,
                    })
                }),
            ]
            .boxed()
        }

        /// `value` decodes from its encoding to a value encoding the same.
        fn round_trips<T: Serialize + DeserializeOwned>(value: &T) -> Result<T, TestCaseError> {
            let bytes = encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let decoded: T = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = encode(&decoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(bytes.data, again.data);
            Ok(decoded)
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn arbitrary_bytes_as_any_message_decode_or_are_refused(
                bytes in fuzzing::bytes(256),
            ) {
                decode_as_every_message(&bytes)?;
            }

            #[test]
            fn damaged_messages_decode_or_are_refused(
                bytes in prop_oneof![request_encoding(), reply_encoding()],
                edits in fuzzing::edits(),
            ) {
                decode_as_every_message(&fuzzing::mutate(bytes, &edits))?;
            }

            #[test]
            fn damaged_messages_nested_about_the_limit_decode_or_are_refused(
                depth in 60..140usize,
                batches in any::<bool>(),
                edits in fuzzing::edits(),
            ) {
                // Near the limit is where a decoder's stack runs deepest.
                let bytes = if batches {
                    nested_batches_bytes(depth)
                } else {
                    nested_txns_bytes(depth)
                };
                decode_as_every_message(&fuzzing::mutate(bytes, &edits))?;
            }

            #[test]
            fn generated_messages_round_trip(
                append in append_entries(),
                snapshot in snapshot(),
                proposal in proposal(),
                command in fuzzing::command(),
            ) {
                round_trips(&append)?;
                round_trips(&snapshot)?;
                round_trips(&proposal)?;
                prop_assert_eq!(round_trips(&command)?, command);
            }
        }
    }
}
