//! etcd's Cluster service: MemberAdd (voter or learner), MemberRemove, MemberUpdate,
//! MemberList, MemberPromote, over raft membership changes. As etcd's, their headers carry no
//! store revision.

use tonic::{Request, Response, Status};

use super::{Api, error};
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_server::Cluster,
};
use crate::raft::node::MemberInfo;

fn member(info: MemberInfo) -> Member {
    Member {
        id: info.id,
        name: info.member.name,
        peer_ur_ls: info.member.peer_urls,
        client_ur_ls: info.member.client_urls,
        is_learner: info.is_learner,
    }
}

/// Peer URLs must be absolute http(s) URLs with a host and port, as etcd requires.
fn check_peer_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: peer URLs not provided",
        ));
    }
    for url in urls {
        crate::cli::check_url("peerURLs", url)
            .map_err(|e| Status::invalid_argument(format!("etcdserver: {e}")))?;
    }
    Ok(())
}

impl Api {
    fn member_list(&self) -> Vec<Member> {
        self.node.members().into_iter().map(member).collect()
    }
}

#[tonic::async_trait]
impl Cluster for Api {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.check_cluster_admin(&request)?;
        let req = request.into_inner();
        check_peer_urls(&req.peer_ur_ls)?;
        let added = self
            .node
            .member_add(req.peer_ur_ls, req.is_learner)
            .await
            .map_err(error::node_status)?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(0),
            member: Some(member(added)),
            members: self.member_list(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.check_cluster_admin(&request)?;
        let id = request.into_inner().id;
        self.node
            .member_remove(id)
            .await
            .map_err(error::node_status)?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(0),
            members: self.member_list(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.check_cluster_admin(&request)?;
        let req = request.into_inner();
        check_peer_urls(&req.peer_ur_ls)?;
        self.node
            .member_update(req.id, req.peer_ur_ls)
            .await
            .map_err(error::node_status)?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(0),
            members: self.member_list(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.read_index().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(0),
            members: self.member_list(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.check_cluster_admin(&request)?;
        let id = request.into_inner().id;
        self.node
            .member_promote(id)
            .await
            .map_err(error::node_status)?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(0),
            members: self.member_list(),
        }))
    }
}
