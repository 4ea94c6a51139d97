//! etcd's Lease service. Grant and revoke go through raft; KeepAlive and TimeToLive ask the
//! leader, which alone tracks expiry (see [`crate::raft::lessor`]); expired leases are revoked
//! by the leader through raft.

use futures_util::StreamExt as _;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::error::ServerError;
use super::{Api, error};
use crate::api::{self, PermissionType};
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use crate::raft::lessor::LeaseQuery;

/// Keep-alive responses, in the order of their requests.
pub(super) type KeepAlives =
    std::pin::Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for Api {
    type LeaseKeepAliveStream = KeepAlives;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        // As etcd: ID 0 asks the server to choose one (positive, never 0).
        let id = if req.id == 0 {
            random_lease_id()
        } else {
            req.id
        };
        let grant = api::Request::LeaseGrant(api::LeaseGrantRequest { ttl: req.ttl, id });
        self.check_quota(&grant).await?;
        match self.propose(caller, grant).await? {
            api::Response::LeaseGrant(resp) => Ok(Response::new(LeaseGrantResponse {
                header: self.header(resp.revision),
                id: resp.id,
                ttl: resp.ttl,
                error: String::new(),
            })),
            other => Err(error::unexpected(other)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = self.caller(&request)?;
        let revoke = api::LeaseRevokeRequest {
            id: request.into_inner().id,
        };
        match self
            .propose(caller, api::Request::LeaseRevoke(revoke))
            .await?
        {
            api::Response::LeaseRevoke(resp) => Ok(Response::new(LeaseRevokeResponse {
                header: self.header(resp.revision),
            })),
            other => Err(error::unexpected(other)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        Ok(Response::new(self.keep_alives(request.into_inner())))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        if req.keys {
            self.check_lease_keys_readable(caller, req.id)?;
        }
        let answer = self
            .node
            .lease(LeaseQuery::TimeToLive(req.id))
            .await
            .map_err(error::node_status)?;
        // etcd answers an unknown lease with TTL -1 rather than an error.
        let (granted_ttl, ttl) = answer.unwrap_or((0, -1));
        let keys = match (req.keys, self.node.store.lease(req.id)) {
            (true, Some(lease)) => lease.keys.into_iter().collect(),
            _ => Vec::new(),
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.current_header(),
            id: req.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(LeaseLeasesResponse {
            header: self.current_header(),
            leases: self
                .node
                .store
                .leases()
                .into_iter()
                .map(|l| LeaseStatus { id: l.id })
                .collect(),
        }))
    }
}

impl Api {
    /// With auth on, only a caller who may read every key attached to lease `id` sees their
    /// names (etcd's fix for CVE-2023-32082): root, or read permission on each key.
    fn check_lease_keys_readable(
        &self,
        caller: Option<crate::auth::AuthInfo>,
        id: i64,
    ) -> Result<(), Status> {
        let store = &self.node.store;
        let (enabled, _) = store.auth_status();
        if !enabled {
            return Ok(());
        }
        let info = caller.ok_or(ServerError::UserEmpty)?;
        if store.check_admin(&info).is_ok() {
            return Ok(());
        }
        if let Some(lease) = store.lease(id) {
            for key in &lease.keys {
                store.check_permission(&info, key, &[], PermissionType::Read)?;
            }
        }
        Ok(())
    }
}

/// A fresh lease ID: positive, never 0 (etcd's "no lease").
fn random_lease_id() -> i64 {
    loop {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            // Without OS randomness the clock still gives distinct IDs in practice.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            bytes = nanos.to_le_bytes();
        }
        let id = (u64::from_le_bytes(bytes) >> 1) as i64;
        if id != 0 {
            return id;
        }
    }
}

impl Api {
    /// Answers a keep-alive stream: one renewal per request, in order (from gRPC or the JSON
    /// gateway); a lease the leader does not know is answered with TTL 0, which clients read
    /// as expired. The stream ends when the client has sent its last request.
    pub(super) fn keep_alives(
        &self,
        incoming: impl Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    ) -> KeepAlives {
        let api = self.clone();
        let stream =
            futures_util::stream::unfold((api, incoming), |(api, mut incoming)| async move {
                let request = match incoming.next().await {
                    Some(Ok(request)) => request,
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), (api, incoming))),
                };
                let answer = api
                    .node
                    .lease(LeaseQuery::Renew(request.id))
                    .await
                    .map_err(error::node_status)
                    .map(|answer| LeaseKeepAliveResponse {
                        header: api.current_header(),
                        id: request.id,
                        ttl: answer.map(|(ttl, _)| ttl).unwrap_or(0),
                    });
                Some((answer, (api, incoming)))
            });
        Box::pin(stream)
    }
}
