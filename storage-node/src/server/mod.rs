//! The etcd v3 gRPC API on the client port, and the member's HTTP endpoint.
//!
//! # Layout
//! - this file: [`Api`], shared by every service: the caller's identity from the `token`
//!   metadata, response headers, proposing through raft, request size limits.
//! - `kv`, `lease`, `watch`, `cluster`, `maintenance`, `auth`: one file per etcd service.
//! - `convert`: protobuf messages to and from the engine's values, in one place.
//! - `error`: engine and replication errors as etcd's gRPC codes and messages, in one table.
//! - `authority`: repairs the `:authority` etcd's Go client 3.4 sends (a whole URL), which
//!   Rust's HTTP/2 server would refuse.
//! - `client_port`: gRPC and HTTP/1.1 on one client port, told apart per connection.
//! - `http`: `/version`, `/metrics`, `/health`, `/readyz`, `/livez`.
//! - `gateway`: etcd's gRPC-gateway JSON API (`/v3/...`) on the same services.
//! - `metrics`: what `/metrics` shows (Mend's series and etcd's names), and the layer that
//!   counts the gRPC calls.
//! - `member`: starting and stopping a member.

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tonic::transport::server::Router;

use crate::api::{Request, RequestHeader, Response};
use crate::auth::AuthInfo;
use crate::cli::ServeArgs;
use crate::pb::etcdserverpb::{
    ResponseHeader, auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::raft::node::Node;

pub mod auth;
pub mod authority;
pub mod client_port;
pub mod cluster;
pub mod convert;
pub mod error;
pub mod gateway;
pub mod http;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod member;
pub mod metrics;
pub mod watch;

use error::ServerError;

/// The largest request header list the client port accepts (HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE
/// it advertises, and the limit of the `:authority` filter in front of it).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// gRPC framing and field overhead allowed on top of `--max-request-bytes` (etcd's figure).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// What every service shares: the node and the limits from the flags.
#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
    bcrypt_cost: u32,
    max_request_bytes: usize,
    max_txn_ops: usize,
    /// `--unsafe-test-fail-auth-status-if`, resolved.
    fail_auth_status_if: Option<std::path::PathBuf>,
    /// `--grpc-keepalive-interval`: how often an idle connection is pinged.
    keepalive_interval: std::time::Duration,
    /// `--grpc-keepalive-timeout`: how long a ping may go unanswered before the connection
    /// is closed.
    keepalive_timeout: std::time::Duration,
}

/// The token a request carries, in `token` metadata or, as etcd also reads it,
/// `authorization`.
fn token<T>(request: &tonic::Request<T>) -> Result<Option<String>, tonic::Status> {
    let metadata = request.metadata();
    let Some(token) = metadata
        .get("token")
        .or_else(|| metadata.get("authorization"))
    else {
        return Ok(None);
    };
    let token = token.to_str().map_err(|_| ServerError::InvalidAuthToken)?;
    Ok(Some(token.to_string()))
}

impl Api {
    /// The services' shared state for `node`, with the limits from the flags.
    pub fn new(node: Arc<Node>, args: &ServeArgs) -> Api {
        let api = Api {
            node,
            bcrypt_cost: args.bcrypt_cost,
            max_request_bytes: args.max_request_bytes,
            max_txn_ops: args.max_txn_ops,
            fail_auth_status_if: args
                .unsafe_test_fail_auth_status_if
                .as_ref()
                .map(|file| args.data_dir().join(file)),
            keepalive_interval: args.grpc_keepalive_interval,
            keepalive_timeout: args.grpc_keepalive_timeout,
        };
        if let Some(file) = &api.fail_auth_status_if {
            tracing::warn!(
                file = %file.display(),
                "TEST FAULT ARMED: unsafe-test-fail-auth-status-if - AuthStatus fails while the file exists"
            );
        }
        api
    }
}

/// The client port's gRPC router: the etcd services behind the layer that counts their calls.
pub type GrpcRouter = Router<tower_layer::Stack<metrics::GrpcLayer, tower_layer::Identity>>;

/// The etcd services on one router, ready to serve on a listener, with `http` (the HTTP
/// endpoint and the JSON gateway) beside them: HTTP/2 clients that are not gRPC (`curl`
/// over TLS negotiates HTTP/2) reach the same handlers HTTP/1.1 clients do.
pub fn services(api: Api, http: axum::Router) -> GrpcRouter {
    let limit = api.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let calls = metrics::GrpcLayer::new(api.node.instruments().grpc.clone());
    let http = tonic::service::Routes::from(http.fallback(not_found));
    tonic::transport::Server::builder()
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(api.keepalive_interval))
        .http2_keepalive_timeout(Some(api.keepalive_timeout))
        .layer(calls)
        .add_routes(http)
        .add_service(KvServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(WatchServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(LeaseServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(ClusterServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(MaintenanceServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(AuthServer::new(api).max_decoding_message_size(limit))
}

/// An unknown path: gRPC's Unimplemented for gRPC calls, 404 for anything else.
async fn not_found(request: axum::extract::Request) -> axum::response::Response {
    let grpc = request
        .headers()
        .get(::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        tonic::Status::unimplemented("").into_http()
    } else {
        axum::response::IntoResponse::into_response(::http::StatusCode::NOT_FOUND)
    }
}

impl Api {
    /// Whether the test fault `--unsafe-test-fail-auth-status-if` is on now.
    fn auth_status_fails(&self) -> bool {
        self.fail_auth_status_if
            .as_ref()
            .is_some_and(|f| f.exists())
    }

    /// The caller's identity from the `token` metadata etcd clients send after Authenticate,
    /// or, as etcd also reads it, `authorization` (what its JSON gateway forwards). Without a
    /// token, under `--client-cert-auth`, the verified client certificate's Common Name at the
    /// current AuthRevision, as etcd's `AuthInfoFromTLS`; otherwise `None`.
    fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Option<AuthInfo>, tonic::Status> {
        if let Some(token) = token(request)? {
            return self.identity(Some(&token));
        }
        let certified = request
            .extensions()
            .get::<crate::tls::ConnInfo>()
            .and_then(|info| info.common_name.clone());
        Ok(certified.map(|username| AuthInfo {
            username,
            revision: self.node.store.auth_revision(),
        }))
    }

    /// The identity `token` stands for now; `None` without a token.
    fn identity(&self, token: Option<&str>) -> Result<Option<AuthInfo>, tonic::Status> {
        let Some(token) = token else {
            return Ok(None);
        };
        self.node
            .store
            .auth_info_from_token(token, Instant::now())
            .map(Some)
            .map_err(|_| ServerError::InvalidAuthToken.into())
    }

    /// The header a proposal carries for this caller (etcd fills user and AuthRevision only
    /// when the request has a token).
    fn proposal_header(caller: Option<AuthInfo>) -> RequestHeader {
        match caller {
            Some(info) => RequestHeader {
                id: 0,
                username: info.username,
                auth_revision: info.revision,
            },
            None => RequestHeader::default(),
        }
    }

    /// The identity local checks run as: the token's, or nobody.
    fn local_identity(caller: Option<AuthInfo>) -> AuthInfo {
        caller.unwrap_or_default()
    }

    /// Membership changes and leader moves need the root role when auth is on.
    fn check_cluster_admin<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let info = Self::local_identity(self.caller(request)?);
        self.node
            .store
            .check_admin(&info)
            .map_err(tonic::Status::from)
    }

    /// The response header: cluster, member, store revision and raft term.
    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.id,
            revision,
            raft_term: self.node.raft_status().term,
        })
    }

    /// The header with the store's current revision.
    fn current_header(&self) -> Option<ResponseHeader> {
        self.header(self.node.store.status().revision)
    }

    /// Refuses requests larger than `--max-request-bytes`, as etcd does before proposing.
    fn check_size(&self, message: &impl Message) -> Result<(), tonic::Status> {
        if message.encoded_len() > self.max_request_bytes {
            return Err(ServerError::RequestTooLarge.into());
        }
        Ok(())
    }

    /// Proposes `request` for `caller` and returns this member's apply result.
    async fn propose(
        &self,
        caller: Option<AuthInfo>,
        request: Request,
    ) -> Result<Response, tonic::Status> {
        self.node
            .propose(Self::proposal_header(caller), request)
            .await
            .map_err(error::node_status)
    }

    /// Refuses a request that needs more space than the quota leaves, raising this member's
    /// NOSPACE alarm first, as etcd's quota interceptor does before proposing.
    async fn check_quota(&self, request: &Request) -> Result<(), tonic::Status> {
        if self.node.store.quota_available(crate::quota::cost(request)) {
            return Ok(());
        }
        if !self.node.has_alarm(crate::api::AlarmType::NoSpace) {
            tracing::warn!(
                kind = request.kind(),
                "request does not fit the backend quota; raising the NOSPACE alarm"
            );
            if let Err(e) = self.node.raise_alarm(crate::api::AlarmType::NoSpace).await {
                tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
            }
        }
        Err(ServerError::NoSpace.into())
    }

    /// Waits for a linearizable read point.
    async fn read_index(&self) -> Result<(), tonic::Status> {
        self.node.read_index().await.map_err(error::node_status)
    }
}
