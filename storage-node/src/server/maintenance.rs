//! etcd's Maintenance service: Status (with etcd 3.5's fields), HashKV, Hash, MoveLeader.
//! Alarm, Defragment, Snapshot and Downgrade answer `Unimplemented`.

use tonic::{Request, Response, Status};

use super::{Api, error};
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    maintenance_server::Maintenance,
};

/// The etcd API version this server speaks, as Status reports it.
pub const VERSION: &str = "3.5.0";

#[tonic::async_trait]
impl Maintenance for Api {
    type SnapshotStream = tonic::codegen::tokio_stream::Empty<Result<SnapshotResponse, Status>>;

    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Err(Status::unimplemented("alarms are not supported by Mend"))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let status = self.node.store.status();
        let raft = self.node.raft_status();
        let db_size_in_use = self.node.store.db_size_in_use().unwrap_or(status.db_size);
        let mut errors = Vec::new();
        if raft.leader == 0 {
            errors.push("etcdserver: no leader".to_string());
        }
        if status.unsafe_reproduce_etcd_11651 {
            errors.push("FAULT SWITCH ON: unsafe-reproduce-etcd-11651".to_string());
        }
        if self.auth_status_fails() {
            errors.push("TEST FAULT ON: unsafe-test-fail-auth-status-if".to_string());
        }
        Ok(Response::new(StatusResponse {
            header: self.header(status.revision),
            version: VERSION.to_string(),
            db_size: status.db_size as i64,
            leader: raft.leader,
            raft_index: raft.last_log_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors,
            db_size_in_use: db_size_in_use as i64,
            is_learner: raft.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(Status::unimplemented("defragment is not supported by Mend"))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        // etcd hashes the whole backend; Mend's closest equivalent is the hash of every
        // revision it keeps.
        let hash = self.node.store.hash_kv(0).map_err(Status::from)?;
        Ok(Response::new(HashResponse {
            header: self.current_header(),
            hash: hash.hash,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let hash = self.node.store.hash_kv(revision).map_err(Status::from)?;
        Ok(Response::new(HashKvResponse {
            header: self.current_header(),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.hash_revision,
        }))
    }

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented(
            "snapshot download is not supported by Mend yet",
        ))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.check_cluster_admin(&request)?;
        let target = request.into_inner().target_id;
        self.node
            .move_leader(target)
            .await
            .map_err(error::node_status)?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.current_header(),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented("downgrade is not supported by Mend"))
    }
}
