//! Probing members over the etcd v3 API: one [`Round`] is a Status, AuthStatus and key count
//! of every member, then a HashKV of each at one common revision, so hashes compare like with
//! like. An unreachable member is an observation too (`reachable: false`), never an error.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use storage_node::pb::etcdserverpb::{
    AuthStatusRequest, AuthenticateRequest, HashKvRequest, RangeRequest, StatusRequest,
    auth_client::AuthClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use tonic::transport::{Channel, Endpoint};

use crate::detector::{Observation, Round};

/// How much a probe round asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Status only: who answers, who leads, indexes (healing `Disabled`: nothing is compared).
    Health,
    /// Status, AuthStatus, key count and HashKV: what divergence detection needs.
    Full,
}

impl Scope {
    /// What healing in `mode` needs probed: `Disabled` compares nothing.
    pub fn for_mode(mode: crds::HealingMode) -> Scope {
        match mode {
            crds::HealingMode::Disabled => Scope::Health,
            crds::HealingMode::Automatic | crds::HealingMode::ObserveOnly => Scope::Full,
        }
    }
}

/// How to reach the members.
#[derive(Debug, Default)]
pub struct Prober {
    /// Client URLs, one per member.
    pub endpoints: Vec<String>,
    /// `user:password` for clusters with auth on (the root user).
    pub credentials: Option<(String, String)>,
    /// Bound on every call.
    pub timeout: Duration,
    /// Tokens by endpoint, kept across rounds: a login is a raft write, and probing must not
    /// keep the members it compares busy applying.
    tokens: Mutex<HashMap<String, String>>,
}

/// What one member said before hashing.
struct Partial {
    observation: Observation,
    channel: Option<(Channel, Option<String>)>,
}

impl Prober {
    /// A prober for `endpoints`, logging in with `credentials` when given.
    pub fn new(
        endpoints: Vec<String>,
        credentials: Option<(String, String)>,
        timeout: Duration,
    ) -> Prober {
        Prober {
            endpoints,
            credentials,
            timeout,
            tokens: Mutex::default(),
        }
    }

    fn cached_token(&self, endpoint: &str) -> Option<String> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
            .cloned()
    }

    fn remember_token(&self, endpoint: &str, token: Option<String>) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match token {
            Some(token) => tokens.insert(endpoint.to_string(), token),
            None => tokens.remove(endpoint),
        };
    }

    /// Probes every member once, fully.
    pub async fn round(&self) -> Round {
        self.round_of(Scope::Full).await
    }

    /// Probes every member once, as far as `scope` says.
    pub async fn round_of(&self, scope: Scope) -> Round {
        // All members at once: the closer in time their answers, the likelier they report the
        // same applied index while clients keep writing, which is when they can be compared.
        let partials: Vec<Partial> = futures_util::future::join_all(
            self.endpoints
                .iter()
                .map(|endpoint| self.first_pass(endpoint, scope)),
        )
        .await;
        if scope == Scope::Health {
            return Round {
                members: partials.into_iter().map(|p| p.observation).collect(),
            };
        }
        // Hash everyone at the lowest revision anyone reports: every member has it (or has
        // compacted it, which the hash call then reports).
        let common = partials
            .iter()
            .filter(|p| p.observation.reachable)
            .map(|p| p.observation.revision)
            .min();
        let mut members = Vec::with_capacity(partials.len());
        for mut partial in partials {
            if let (Some(revision), Some((channel, token))) = (common, &partial.channel) {
                let mut client = MaintenanceClient::new(channel.clone());
                let request = self.request(HashKvRequest { revision }, token.as_deref());
                if let Ok(Ok(reply)) =
                    tokio::time::timeout(self.timeout, client.hash_kv(request)).await
                {
                    let reply = reply.into_inner();
                    partial.observation.hash = Some((reply.hash, reply.hash_revision));
                }
            }
            members.push(partial.observation);
        }
        Round { members }
    }

    fn request<T>(&self, message: T, token: Option<&str>) -> tonic::Request<T> {
        let mut request = crate::client::request(message, token);
        request.set_timeout(self.timeout);
        request
    }

    /// Status, AuthStatus and the key count of one member.
    async fn first_pass(&self, endpoint: &str, scope: Scope) -> Partial {
        let unreachable = Partial {
            observation: Observation::unreachable(),
            channel: None,
        };
        let url = endpoint;
        let Ok(endpoint) = Endpoint::from_shared(endpoint.to_string()) else {
            return unreachable;
        };
        let Ok(Ok(channel)) = tokio::time::timeout(
            self.timeout,
            endpoint.connect_timeout(self.timeout).connect(),
        )
        .await
        else {
            return unreachable;
        };
        let token = match (&self.credentials, self.cached_token(url)) {
            (_, Some(token)) => Some(token),
            (Some((name, password)), None) => {
                let mut auth = AuthClient::new(channel.clone());
                let login = AuthenticateRequest {
                    name: name.clone(),
                    password: password.clone(),
                };
                match tokio::time::timeout(
                    self.timeout,
                    auth.authenticate(self.request(login, None)),
                )
                .await
                {
                    Ok(Ok(reply)) => Some(reply.into_inner().token),
                    // Auth may be off: probe without a token.
                    _ => None,
                }
            }
            (None, None) => None,
        };
        self.remember_token(url, token.clone());
        let mut maintenance = MaintenanceClient::new(channel.clone());
        let status = match tokio::time::timeout(
            self.timeout,
            maintenance.status(self.request(StatusRequest {}, token.as_deref())),
        )
        .await
        {
            Ok(Ok(reply)) => reply.into_inner(),
            _ => return unreachable,
        };
        let header = status.header.unwrap_or_default();
        let health = Observation {
            member: header.member_id,
            reachable: true,
            is_leader: status.leader != 0 && status.leader == header.member_id,
            is_learner: status.is_learner,
            db_size: status.db_size,
            raft_term: status.raft_term,
            raft_index: status.raft_index,
            applied_index: status.raft_applied_index,
            revision: header.revision,
            ..Observation::unreachable()
        };
        if scope == Scope::Health {
            return Partial {
                observation: health,
                channel: None,
            };
        }
        let mut auth = AuthClient::new(channel.clone());
        let auth_revision = match tokio::time::timeout(
            self.timeout,
            auth.auth_status(self.request(AuthStatusRequest {}, token.as_deref())),
        )
        .await
        {
            Ok(Ok(reply)) => reply.into_inner().auth_revision,
            _ => 0,
        };
        let mut kv = KvClient::new(channel.clone());
        let everything = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            serializable: true,
            ..RangeRequest::default()
        };
        let key_count = match tokio::time::timeout(
            self.timeout,
            kv.range(self.request(everything, token.as_deref())),
        )
        .await
        {
            Ok(Ok(reply)) => reply.into_inner().count.max(0) as u64,
            Ok(Err(status)) => {
                // An expired or unknown token: log in again next round.
                if status.code() == tonic::Code::Unauthenticated {
                    self.remember_token(url, None);
                }
                0
            }
            Err(_) => 0,
        };
        Partial {
            observation: Observation {
                auth_revision,
                key_count,
                ..health
            },
            channel: Some((channel, token)),
        }
    }
}
