//! etcd's Lease service: LeaseGrant, LeaseRevoke and LeaseLeases go through the engine.
//! Expiry is not driven yet, so LeaseKeepAlive and LeaseTimeToLive answer `Unimplemented`
//! rather than report a remaining TTL that nothing enforces.

use tonic::{Request, Response, Status, Streaming};

use super::{Api, error};
use crate::api;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};

#[tonic::async_trait]
impl Lease for Api {
    type LeaseKeepAliveStream =
        tonic::codegen::tokio_stream::Empty<Result<LeaseKeepAliveResponse, Status>>;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let grant = api::LeaseGrantRequest {
            ttl: req.ttl,
            id: req.id,
        };
        match self
            .propose(caller, api::Request::LeaseGrant(grant))
            .await?
        {
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

    async fn lease_keep_alive(
        &self,
        _: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        Err(Status::unimplemented(
            "lease keep-alive is not supported by Mend yet",
        ))
    }

    async fn lease_time_to_live(
        &self,
        _: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Err(Status::unimplemented(
            "lease time-to-live is not supported by Mend yet",
        ))
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
