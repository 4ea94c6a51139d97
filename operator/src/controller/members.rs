//! The controller's view of the members themselves, over the etcd v3 API: probe rounds and the
//! auth bootstrap. [`Members`] is the seam the reconciler calls; [`Grpc`] is the real one, and
//! tests pass a fake so the mocked API server sees only Kubernetes calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use storage_node::pb::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthStatusRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, auth_client::AuthClient,
};
use tonic::transport::{Channel, Endpoint};

use crate::detector::Round;
use crate::probe::Prober;

/// The root user and role etcd's auth needs before it can be enabled.
pub const ROOT: &str = "root";

/// Why the auth bootstrap did not finish (it is retried on the next reconcile).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// No member could be reached.
    #[error("no member reachable at {0:?}")]
    Unreachable(Vec<String>),
    /// A member refused a step.
    #[error("{step} on {endpoint}: {status}")]
    Refused {
        /// The step (`user add`, `role add`, `grant`, `auth enable`).
        step: &'static str,
        /// The member asked.
        endpoint: String,
        /// What it answered.
        status: String,
    },
}

/// Probing and bootstrapping a cluster's members.
pub trait Members: Send + Sync {
    /// One probe round of `endpoints` (in that order) for the cluster `key`, logging in with
    /// `credentials` when given.
    fn probe(
        &self,
        key: String,
        endpoints: Vec<String>,
        credentials: Option<(String, String)>,
    ) -> BoxFuture<'static, Round>;

    /// Creates the root user with `password`, the root role, grants it and enables auth, unless
    /// auth is on already. `Ok(true)` when this call enabled it.
    fn bootstrap_auth(
        &self,
        endpoints: Vec<String>,
        password: String,
    ) -> BoxFuture<'static, Result<bool, BootstrapError>>;
}

/// The real members, over gRPC, every call bounded by `timeout`.
pub struct Grpc {
    timeout: Duration,
    /// One prober per cluster, kept across reconciles: it keeps its login tokens, and a login
    /// is a raft write the members being compared should not have to apply every round.
    probers: Mutex<HashMap<String, Arc<Prober>>>,
}

impl Grpc {
    /// Members reached with calls bounded by `timeout`.
    pub fn new(timeout: Duration) -> Grpc {
        Grpc {
            timeout,
            probers: Mutex::default(),
        }
    }

    fn prober(
        &self,
        key: String,
        endpoints: Vec<String>,
        credentials: Option<(String, String)>,
    ) -> Arc<Prober> {
        let mut probers = self.probers.lock().unwrap_or_else(|p| p.into_inner());
        match probers.get(&key) {
            Some(p) if p.endpoints == endpoints && p.credentials == credentials => p.clone(),
            _ => {
                let prober = Arc::new(Prober::new(endpoints, credentials, self.timeout));
                probers.insert(key, prober.clone());
                prober
            }
        }
    }
}

impl Members for Grpc {
    fn probe(
        &self,
        key: String,
        endpoints: Vec<String>,
        credentials: Option<(String, String)>,
    ) -> BoxFuture<'static, Round> {
        let prober = self.prober(key, endpoints, credentials);
        Box::pin(async move { prober.round().await })
    }

    fn bootstrap_auth(
        &self,
        endpoints: Vec<String>,
        password: String,
    ) -> BoxFuture<'static, Result<bool, BootstrapError>> {
        let timeout = self.timeout;
        Box::pin(async move {
            for endpoint in &endpoints {
                if let Some(channel) = connect(endpoint, timeout).await {
                    return bootstrap(AuthClient::new(channel), endpoint, &password, timeout).await;
                }
            }
            Err(BootstrapError::Unreachable(endpoints))
        })
    }
}

async fn connect(endpoint: &str, timeout: Duration) -> Option<Channel> {
    let endpoint = Endpoint::from_shared(endpoint.to_string())
        .ok()?
        .connect_timeout(timeout)
        .timeout(timeout);
    tokio::time::timeout(timeout, endpoint.connect())
        .await
        .ok()?
        .ok()
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// `call` bounded by `timeout`, its reply unwrapped.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(reply) => reply.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("timed out")),
    }
}

/// The bootstrap against one member. Each auth change bumps the members' AuthRevision, so it
/// only runs while auth is off, and a step that finds its work done ("already exists") counts
/// as done: a bootstrap cut short by a crash resumes.
async fn bootstrap(
    mut auth: AuthClient<Channel>,
    endpoint: &str,
    password: &str,
    timeout: Duration,
) -> Result<bool, BootstrapError> {
    let refused = |step: &'static str, status: tonic::Status| BootstrapError::Refused {
        step,
        endpoint: endpoint.to_string(),
        status: status.message().to_string(),
    };
    let tolerate_existing = |step: &'static str, status: tonic::Status| {
        if status.message().contains("already exists") {
            Ok(())
        } else {
            Err(refused(step, status))
        }
    };
    // AuthStatus needs no token, so a failure here is the member's, not auth's.
    let status = bounded(
        timeout,
        auth.auth_status(request(AuthStatusRequest {}, timeout)),
    )
    .await
    .map_err(|s| refused("auth status", s))?;
    if status.enabled {
        return Ok(false);
    }
    let user = AuthUserAddRequest {
        name: ROOT.to_string(),
        password: password.to_string(),
        ..AuthUserAddRequest::default()
    };
    if let Err(s) = bounded(timeout, auth.user_add(request(user, timeout))).await {
        tolerate_existing("user add", s)?;
    }
    let role = AuthRoleAddRequest {
        name: ROOT.to_string(),
    };
    if let Err(s) = bounded(timeout, auth.role_add(request(role, timeout))).await {
        tolerate_existing("role add", s)?;
    }
    let grant = AuthUserGrantRoleRequest {
        user: ROOT.to_string(),
        role: ROOT.to_string(),
    };
    bounded(timeout, auth.user_grant_role(request(grant, timeout)))
        .await
        .map_err(|s| refused("grant", s))?;
    bounded(
        timeout,
        auth.auth_enable(request(AuthEnableRequest {}, timeout)),
    )
    .await
    .map_err(|s| refused("auth enable", s))?;
    Ok(true)
}
