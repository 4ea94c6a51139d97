//! The controller's view of the members themselves, over the etcd v3 API: probe rounds and the
//! auth bootstrap ([`crate::bootstrap`]). [`Members`] is the seam the reconciler calls; [`Grpc`] is the real one, and
//! tests pass a fake so the mocked API server sees only Kubernetes calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::bootstrap;
use crate::detector::Round;
use crate::probe::{Prober, Scope};

/// Probing and bootstrapping a cluster's members.
pub trait Members: Send + Sync {
    /// One probe round of `endpoints` (in that order) for the cluster `key`, logging in with
    /// `credentials` when given.
    fn probe(
        &self,
        key: String,
        endpoints: Vec<String>,
        credentials: Option<(String, String)>,
        scope: Scope,
    ) -> BoxFuture<'static, Round>;

    /// Creates the root user `user` with `password`, grants it the root role and enables auth,
    /// unless auth is on already, through the first member that answers. `Ok(true)` when this
    /// call enabled it.
    fn bootstrap_auth(
        &self,
        endpoints: Vec<String>,
        user: String,
        password: String,
    ) -> BoxFuture<'static, Result<bool, bootstrap::Error>>;
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
        scope: Scope,
    ) -> BoxFuture<'static, Round> {
        let prober = self.prober(key, endpoints, credentials);
        Box::pin(async move { prober.round_of(scope).await })
    }

    fn bootstrap_auth(
        &self,
        endpoints: Vec<String>,
        user: String,
        password: String,
    ) -> BoxFuture<'static, Result<bool, bootstrap::Error>> {
        let timeout = self.timeout;
        Box::pin(async move {
            let mut last = None;
            for endpoint in &endpoints {
                match bootstrap::enable_auth(endpoint, &user, &password, timeout).await {
                    // Another member may answer.
                    Err(e @ bootstrap::Error::Connect { .. }) => last = Some(e),
                    done => return done,
                }
            }
            Err(last.unwrap_or_else(|| bootstrap::Error::Connect {
                endpoint: String::new(),
                message: "no member to ask".to_string(),
            }))
        })
    }
}
