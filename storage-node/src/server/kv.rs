//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes go through raft. Ranges and txns that write nothing are served from this member's
//! state after a local permission check, as etcd does: linearizable ones once the member has
//! applied up to a read point the leader confirmed with a quorum (ReadIndex).

use tonic::{Request, Response, Status};

use super::{Api, convert, error};
use crate::api::{self, PermissionType};
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};

impl Api {
    /// Serves a range from this member's state: linearizable ranges wait for a read point.
    pub(super) async fn local_range(
        &self,
        caller: Option<crate::auth::AuthInfo>,
        req: api::RangeRequest,
    ) -> Result<api::RangeResponse, Status> {
        req.validate().map_err(Status::from)?;
        if !req.serializable {
            self.read_index().await?;
        }
        let info = Self::local_identity(caller);
        self.node
            .store
            .check_permission(&info, &req.key, &req.range_end, PermissionType::Read)
            .map_err(Status::from)?;
        self.node.store.range(&req).map_err(Status::from)
    }

    /// Serves a txn that writes nothing as etcd does, like a range: after a read point unless
    /// every operation is a serializable range, then from this member's state.
    async fn local_txn(
        &self,
        caller: Option<crate::auth::AuthInfo>,
        req: api::TxnRequest,
    ) -> Result<api::TxnResponse, Status> {
        if !req.is_serializable() {
            self.read_index().await?;
        }
        let info = Self::local_identity(caller);
        self.node
            .store
            .check_txn_permission(&info, &req)
            .map_err(Status::from)?;
        self.node.store.read_only_txn(&req).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Kv for Api {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = convert::range_request(request.into_inner())?;
        let resp = self.local_range(caller, req).await?;
        let header = self.header(resp.revision);
        Ok(Response::new(convert::range_response(resp, header)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.caller(&request)?;
        self.check_size(request.get_ref())?;
        let req = convert::put_request(request.into_inner());
        req.validate().map_err(Status::from)?;
        let req = api::Request::Put(req);
        self.check_quota(&req).await?;
        match self.propose(caller, req).await? {
            api::Response::Put(resp) => {
                let header = self.header(resp.revision);
                Ok(Response::new(convert::put_response(resp, header)))
            }
            other => Err(error::unexpected(other)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.caller(&request)?;
        self.check_size(request.get_ref())?;
        let req = convert::delete_range_request(request.into_inner());
        req.validate().map_err(Status::from)?;
        match self.propose(caller, api::Request::DeleteRange(req)).await? {
            api::Response::DeleteRange(resp) => {
                let header = self.header(resp.revision);
                Ok(Response::new(convert::delete_range_response(resp, header)))
            }
            other => Err(error::unexpected(other)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.caller(&request)?;
        self.check_size(request.get_ref())?;
        let req = convert::txn_request(request.into_inner())?;
        req.validate(self.max_txn_ops).map_err(Status::from)?;
        let req = api::Request::Txn(req);
        // etcd's quota interceptor runs before it tells reads from writes.
        self.check_quota(&req).await?;
        let resp = match req {
            api::Request::Txn(t) if t.is_read_only() => self.local_txn(caller, t).await?,
            req => match self.propose(caller, req).await? {
                api::Response::Txn(resp) => resp,
                other => return Err(error::unexpected(other)),
            },
        };
        let header = self.header(resp.revision);
        Ok(Response::new(convert::txn_response(resp, header)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = convert::compaction_request(request.into_inner());
        match self.propose(caller, api::Request::Compaction(req)).await? {
            api::Response::Compaction(resp) => {
                let header = self.header(resp.revision);
                Ok(Response::new(convert::compaction_response(resp, header)))
            }
            other => Err(error::unexpected(other)),
        }
    }
}
