//! Probing members over the etcd v3 API: one [`Round`] is a Status (with the active alarms it
//! lists), AuthStatus and key count of every member, then a HashKV and a key count of each at
//! one common revision, so hashes compare like with like. An unreachable member is an observation too (`reachable: false`),
//! never an error, and a call that fails leaves its value unknown ([`Fact::Unknown`], with the
//! call and the reason), never zero.
//!
//! etcd 3.4 has no AuthStatus RPC; its AuthRevision is read from the member's
//! `etcd_debugging_auth_revision` gauge (etcd ≥ 3.4.8) on its metrics endpoint. Where neither
//! exists the AuthRevision is [`Fact::NotOffered`] and members are compared on their data alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::BodyExt;
use storage_node::pb::etcdserverpb::{
    AuthStatusRequest, AuthenticateRequest, HashKvRequest, RangeRequest, StatusRequest,
    auth_client::AuthClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use tonic::transport::Channel;

use crate::detector::{Alarm, AlarmKind, Fact, Hash, Observation, Round};
use crate::members::Credentials;

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

/// One member to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its name where it lives (pod or process).
    pub name: String,
    /// Client URL.
    pub endpoint: String,
    /// Base URL of its metrics endpoint (`/metrics` is appended), when it has one.
    pub metrics: Option<String>,
}

/// How to reach the members.
#[derive(Debug, Default)]
pub struct Prober {
    /// The members, in the order rounds report them.
    pub targets: Vec<Target>,
    /// The root login for clusters with auth on, the client certificate for TLS ones.
    pub credentials: Credentials,
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

/// Why a call did not give an answer, for [`Fact::Unknown`].
fn failed(call: &str, outcome: Result<tonic::Status, tokio::time::error::Elapsed>) -> String {
    match outcome {
        Ok(status) => format!("{call}: {}", status.message()),
        Err(_) => format!("{call}: deadline exceeded"),
    }
}

impl Prober {
    /// A prober for `targets`, logging in with `credentials` when given.
    pub fn new(targets: Vec<Target>, credentials: Credentials, timeout: Duration) -> Prober {
        Prober {
            targets,
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
            self.targets
                .iter()
                .map(|target| self.first_pass(target, scope)),
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
        let hashes = partials
            .into_iter()
            .zip(&self.targets)
            .map(|(partial, target)| async move {
                let Partial {
                    mut observation,
                    channel,
                } = partial;
                if let (Some(revision), Some((channel, token))) = (common, channel) {
                    observation.hash = self
                        .hash_at(&target.endpoint, channel, token.as_deref(), revision)
                        .await;
                }
                observation
            });
        let members = futures_util::future::join_all(hashes).await;
        Round { members }
    }

    fn request<T>(&self, message: T, token: Option<&str>) -> tonic::Request<T> {
        let mut request = crate::client::request(message, token);
        request.set_timeout(self.timeout);
        request
    }

    /// HashKV and the key count at `revision`.
    async fn hash_at(
        &self,
        endpoint: &str,
        channel: Channel,
        token: Option<&str>,
        revision: i64,
    ) -> Fact<Hash> {
        let mut maintenance = MaintenanceClient::new(channel.clone());
        let request = self.request(HashKvRequest { revision }, token);
        let hashed = match tokio::time::timeout(self.timeout, maintenance.hash_kv(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Fact::Unknown(failed("HashKV", Ok(status))),
            Err(elapsed) => return Fact::Unknown(failed("HashKV", Err(elapsed))),
        };
        // etcd 3.4 answers without `hash_revision`: the hash is then at the revision asked for.
        let at = if hashed.hash_revision > 0 {
            hashed.hash_revision
        } else {
            revision
        };
        let keys = match self.count(endpoint, channel, token, at).await {
            Fact::Known(keys) => keys,
            Fact::NotOffered => return Fact::NotOffered,
            Fact::Unknown(why) => return Fact::Unknown(why),
        };
        Fact::Known(Hash {
            hash: hashed.hash,
            revision: at,
            keys,
        })
    }

    /// Live keys at `revision` (0: now), served by the member itself.
    async fn count(
        &self,
        endpoint: &str,
        channel: Channel,
        token: Option<&str>,
        revision: i64,
    ) -> Fact<u64> {
        let mut kv = KvClient::new(channel);
        let everything = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            serializable: true,
            revision,
            ..RangeRequest::default()
        };
        match tokio::time::timeout(self.timeout, kv.range(self.request(everything, token))).await {
            Ok(Ok(reply)) => match u64::try_from(reply.into_inner().count) {
                Ok(count) => Fact::Known(count),
                Err(_) => Fact::Unknown("Range: negative count".to_string()),
            },
            Ok(Err(status)) => {
                // An expired, unknown or outdated token: log in again next round.
                if crate::client::needs_new_token(&status) {
                    self.remember_token(endpoint, None);
                }
                Fact::Unknown(failed("Range", Ok(status)))
            }
            Err(elapsed) => Fact::Unknown(failed("Range", Err(elapsed))),
        }
    }

    /// The AuthRevision: AuthStatus, or the metrics gauge where the member has no AuthStatus.
    async fn auth_revision(
        &self,
        channel: Channel,
        token: Option<&str>,
        target: &Target,
    ) -> Fact<u64> {
        let mut auth = AuthClient::new(channel);
        let request = self.request(AuthStatusRequest {}, token);
        match tokio::time::timeout(self.timeout, auth.auth_status(request)).await {
            Ok(Ok(reply)) => Fact::Known(reply.into_inner().auth_revision),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                match &target.metrics {
                    Some(base) => self.auth_revision_gauge(base).await,
                    None => Fact::NotOffered,
                }
            }
            Ok(Err(status)) => Fact::Unknown(failed("AuthStatus", Ok(status))),
            Err(elapsed) => Fact::Unknown(failed("AuthStatus", Err(elapsed))),
        }
    }

    /// `etcd_debugging_auth_revision` from the metrics at `base`.
    async fn auth_revision_gauge(&self, base: &str) -> Fact<u64> {
        let url = format!("{}/metrics", base.trim_end_matches('/'));
        match tokio::time::timeout(self.timeout, fetch(&url)).await {
            Ok(Ok(text)) => match gauge(&text, "etcd_debugging_auth_revision") {
                Some(value) => Fact::Known(value),
                None => Fact::NotOffered,
            },
            Ok(Err(why)) => Fact::Unknown(format!("GET {url}: {why}")),
            Err(_) => Fact::Unknown(format!("GET {url}: deadline exceeded")),
        }
    }

    /// Status (with the alarms), AuthStatus and the key count of one member.
    async fn first_pass(&self, target: &Target, scope: Scope) -> Partial {
        let unreachable = |why: String| Partial {
            observation: Observation::unreachable(&target.name, &why),
            channel: None,
        };
        let url = target.endpoint.as_str();
        let tls = self.credentials.tls.as_ref();
        let channel = match crate::client::connect(url, tls, self.timeout).await {
            Ok(channel) => channel,
            Err(why) => return unreachable(format!("connect: {why}")),
        };
        let token = match (&self.credentials.login, self.cached_token(url)) {
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
            Ok(Err(status)) => return unreachable(failed("Status", Ok(status))),
            Err(elapsed) => return unreachable(failed("Status", Err(elapsed))),
        };
        let header = status.header.unwrap_or_default();
        // Status lists the alarms in `errors`, etcd 3.4 on: AlarmList would be a raft write on
        // every member each round (etcd and Mend list alarms through raft), and a probe must
        // not write: it would persist the consistent index the members it compares replay.
        let alarms = alarms_in(&status.errors);
        let why = "not probed (healing is Disabled)";
        let health = Observation {
            name: target.name.clone(),
            member: header.member_id,
            reachable: true,
            is_leader: status.leader != 0 && status.leader == header.member_id,
            is_learner: status.is_learner,
            db_size: status.db_size,
            raft_term: status.raft_term,
            raft_index: status.raft_index,
            applied_index: status.raft_applied_index,
            revision: header.revision,
            auth_revision: Fact::Unknown(why.to_string()),
            key_count: Fact::Unknown(why.to_string()),
            hash: Fact::Unknown(why.to_string()),
            alarms,
        };
        if scope == Scope::Health {
            return Partial {
                observation: health,
                channel: None,
            };
        }
        let (auth_revision, key_count) = futures_util::future::join(
            self.auth_revision(channel.clone(), token.as_deref(), target),
            self.count(url, channel.clone(), token.as_deref(), 0),
        )
        .await;
        Partial {
            observation: Observation {
                auth_revision,
                key_count,
                hash: Fact::Unknown("HashKV: no common revision".to_string()),
                ..health
            },
            channel: Some((channel, token)),
        }
    }
}

/// The body of a plain HTTP GET of `url`.
async fn fetch(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
}

/// The alarms among Status's `errors`, which etcd prints in protobuf's text format
/// (`memberID:<id> alarm:<NAME> `, the member left out when it is 0); the other errors ("no
/// leader") are not alarms. An alarm of a kind not known here leaves the list unknown.
fn alarms_in(errors: &[String]) -> Fact<Vec<Alarm>> {
    let mut alarms = Vec::new();
    for error in errors {
        let mut member = Some(0);
        let mut kind = None;
        for field in error.split_whitespace() {
            if let Some(id) = field.strip_prefix("memberID:") {
                member = id.parse().ok();
            } else if let Some(name) = field.strip_prefix("alarm:") {
                kind = Some(name);
            }
        }
        let Some(name) = kind else { continue };
        let kind = match name {
            "NOSPACE" => AlarmKind::NoSpace,
            "CORRUPT" => AlarmKind::Corrupt,
            _ => return Fact::Unknown(format!("Status: unknown alarm {error:?}")),
        };
        let Some(member) = member else {
            return Fact::Unknown(format!("Status: alarm of no member ID {error:?}"));
        };
        alarms.push(Alarm { member, kind });
    }
    Fact::Known(alarms)
}

/// The value of the unlabelled gauge `name` in Prometheus text exposition `text`.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        let value: f64 = value.split_whitespace().next()?.parse().ok()?;
        (value >= 0.0 && value.fract() == 0.0).then_some(value as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_revision_gauge_is_read_from_etcds_exposition() {
        let text = "# HELP etcd_debugging_auth_revision The current revision of auth store.\n\
                    # TYPE etcd_debugging_auth_revision gauge\n\
                    etcd_debugging_auth_revision 7\n\
                    etcd_debugging_auth_revision_other 9\n";
        assert_eq!(gauge(text, "etcd_debugging_auth_revision"), Some(7));
        assert_eq!(
            gauge("etcd_server_has_leader 1\n", "etcd_debugging_auth_revision"),
            None
        );
        assert_eq!(
            gauge(
                "etcd_debugging_auth_revision 1.5\n",
                "etcd_debugging_auth_revision"
            ),
            None
        );
    }

    #[test]
    fn the_auth_revision_gauge_is_read_from_prometheus_clients_expositions() {
        // Mend's members (prometheus-client's Prometheus text format), then the same gauge in
        // OpenMetrics, as a float, with the `# EOF` line that ends that format.
        let text = "# HELP etcd_debugging_auth_revision AuthRevision of this member's auth store.\n\
                    # TYPE etcd_debugging_auth_revision gauge\n\
                    etcd_debugging_auth_revision 3\n\
                    # HELP etcd_debugging_mvcc_keys_total Live keys in the key-value store.\n\
                    # TYPE etcd_debugging_mvcc_keys_total gauge\n\
                    etcd_debugging_mvcc_keys_total 5\n";
        assert_eq!(gauge(text, "etcd_debugging_auth_revision"), Some(3));
        let openmetrics = "# HELP etcd_debugging_auth_revision AuthRevision.\n\
                           # TYPE etcd_debugging_auth_revision gauge\n\
                           etcd_debugging_auth_revision 4.0\n\
                           # EOF\n";
        assert_eq!(gauge(openmetrics, "etcd_debugging_auth_revision"), Some(4));
    }

    #[test]
    fn alarms_are_read_from_status_errors_as_etcd_prints_them() {
        let errors = [
            "etcdserver: no leader".to_string(),
            "memberID:10276657743932975437 alarm:NOSPACE ".to_string(),
            "alarm:CORRUPT ".to_string(),
        ];
        assert_eq!(
            alarms_in(&errors),
            Fact::Known(vec![
                Alarm {
                    member: 10276657743932975437,
                    kind: AlarmKind::NoSpace
                },
                Alarm {
                    member: 0,
                    kind: AlarmKind::Corrupt
                },
            ])
        );
        assert_eq!(alarms_in(&[]), Fact::Known(Vec::new()));
        assert!(
            alarms_in(&["memberID:1 alarm:LATER ".to_string()])
                .unknown()
                .is_some()
        );
        assert!(
            alarms_in(&["memberID:x alarm:CORRUPT ".to_string()])
                .unknown()
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_member_that_does_not_answer_is_unreachable_with_every_fact_unknown() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let prober = Prober::new(
            vec![Target {
                name: "node1".into(),
                endpoint: format!("http://127.0.0.1:{port}"),
                metrics: None,
            }],
            Credentials::default(),
            Duration::from_millis(500),
        );
        let round = prober.round().await;
        let o = &round.members[0];
        assert!(!o.reachable);
        assert_eq!(o.name, "node1");
        assert!(
            o.auth_revision
                .unknown()
                .is_some_and(|w| w.starts_with("connect"))
        );
        assert!(o.incomplete().is_some_and(|w| w == "node1 did not answer"));
    }
}
