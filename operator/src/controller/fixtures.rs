//! Test fixtures: resources, probe observations, fake members, and a mocked API server
//! (`ApiServerVerifier`) that answers the kube client's requests one by one, checks each against
//! [`API_CALLS`] and lets the test assert method, path, query and body.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crds::{StorageCluster, StorageClusterSpec};
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use super::metrics::Metrics;
use super::{API_CALLS, Context};
use crate::bootstrap;
use crate::detector::{Fact, Hash, Observation, Round};
use crate::members::{CallResult, Credentials, Members};
use crate::planner::Listed;
use crate::probe::Target;

/// A stored `StorageCluster` named `name` in `default`, generation 1, carrying the operator's
/// finalizer (as every cluster does after its first reconcile).
pub fn cluster(name: &str, replicas: i32) -> StorageCluster {
    let spec: StorageClusterSpec =
        serde_json::from_value(json!({ "replicas": replicas })).expect("spec with defaults");
    let mut sc = StorageCluster::new(name, spec);
    sc.metadata.namespace = Some("default".to_string());
    sc.metadata.uid = Some(format!("uid-{name}"));
    sc.metadata.generation = Some(1);
    sc.metadata.resource_version = Some("1".to_string());
    sc.metadata.finalizers = Some(vec![super::FINALIZER.to_string()]);
    sc
}

/// A reachable member `id` at AuthRevision `auth_revision`, leading or not, agreeing on data.
pub fn observation(id: u64, leader: bool, auth_revision: u64) -> Observation {
    Observation {
        name: String::new(),
        member: id,
        reachable: true,
        is_leader: leader,
        is_learner: false,
        raft_term: 2,
        raft_index: 10,
        applied_index: 10,
        revision: 4,
        db_size: 20480,
        auth_revision: Fact::Known(auth_revision),
        key_count: Fact::Known(3),
        hash: Fact::Known(Hash {
            hash: 0xabcd,
            revision: 4,
            keys: 3,
        }),
        alarms: Fact::Known(Vec::new()),
    }
}

/// A Lease held by `holder`, renewed at `renewed`, for `duration` seconds.
pub fn lease_spec(holder: Option<&str>, renewed: Timestamp, duration: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: holder.map(str::to_string),
        lease_duration_seconds: Some(duration),
        acquire_time: Some(MicroTime(renewed)),
        renew_time: Some(MicroTime(renewed)),
        lease_transitions: Some(0),
        ..LeaseSpec::default()
    }
}

/// An API server holding one Lease in memory and answering what the election calls as the
/// real one does: get, create (a second one is a 409), and replace at the `resourceVersion`
/// read (a stale one is a 409 Conflict).
#[derive(Default)]
pub struct LeaseStore {
    lease: Mutex<Option<Lease>>,
    version: AtomicUsize,
}

impl LeaseStore {
    /// A client of this store whose requests take `latency` each way. While `cut` is set the
    /// client's requests are lost: they never get an answer, as when that replica is cut off
    /// from the API server.
    pub fn client(self: &Arc<Self>, cut: Arc<AtomicBool>, latency: Duration) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let store = self.clone();
        tokio::spawn(async move {
            let mut lost = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                if cut.load(Ordering::SeqCst) {
                    lost.push(send);
                    continue;
                }
                let store = store.clone();
                tokio::spawn(async move {
                    let method = request.method().clone();
                    let bytes = request
                        .into_body()
                        .collect_bytes()
                        .await
                        .expect("request body");
                    tokio::time::sleep(latency).await;
                    let (status, body) = store.answer(&method, &bytes);
                    tokio::time::sleep(latency).await;
                    let response = Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&body).expect("json")))
                        .expect("response");
                    send.send_response(response);
                });
            }
        });
        Client::new(service, "mend-system")
    }

    fn answer(&self, method: &Method, body: &[u8]) -> (StatusCode, Value) {
        let mut lease = self.lease.lock().expect("lease");
        let failure = |code: StatusCode, reason: &str| {
            let status = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": reason, "code": code.as_u16(),
                "message": format!("{reason} (simulated)") });
            (code, status)
        };
        let stored = |lease: &mut Option<Lease>, mut new: Lease| {
            let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
            new.metadata.resource_version = Some(version.to_string());
            *lease = Some(new.clone());
            serde_json::to_value(new).expect("lease json")
        };
        match *method {
            Method::GET => match lease.clone() {
                Some(l) => (StatusCode::OK, serde_json::to_value(l).expect("json")),
                None => failure(StatusCode::NOT_FOUND, "NotFound"),
            },
            Method::POST if lease.is_some() => failure(StatusCode::CONFLICT, "AlreadyExists"),
            Method::POST => {
                let new: Lease = serde_json::from_slice(body).expect("lease");
                (StatusCode::CREATED, stored(&mut lease, new))
            }
            Method::PUT => {
                let new: Lease = serde_json::from_slice(body).expect("lease");
                let current = lease
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone());
                if current.is_none() || current != new.metadata.resource_version {
                    return failure(StatusCode::CONFLICT, "Conflict");
                }
                (StatusCode::OK, stored(&mut lease, new))
            }
            _ => failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

/// Members that answer with a set round and member list, remember the auth bootstrap, and
/// record every membership call.
#[derive(Default)]
pub struct FakeMembers {
    /// What every probe returns (named after the targets asked for).
    pub round: Mutex<Round>,
    /// What MemberList returns.
    pub listed: Mutex<Vec<Listed>>,
    /// Whether auth is on.
    pub auth_enabled: AtomicBool,
    /// Bootstraps that enabled auth.
    pub bootstraps: AtomicUsize,
    /// Membership calls, as `Call id`.
    pub calls: Mutex<Vec<String>>,
    /// Probe rounds asked for.
    pub probes: AtomicUsize,
    /// The credentials of each probe round.
    pub credentials: Mutex<Vec<Credentials>>,
    /// When set, the bootstrap finds the cluster's auth not the operator's, for this reason.
    pub untrusted: Mutex<Option<String>>,
}

impl FakeMembers {
    fn record<T: Send + 'static>(
        &self,
        call: String,
        value: T,
    ) -> BoxFuture<'static, CallResult<T>> {
        self.calls.lock().expect("calls").push(call);
        Box::pin(async move { Ok(value) })
    }
}

impl Members for FakeMembers {
    fn probe(
        &self,
        _key: String,
        targets: Vec<Target>,
        credentials: Credentials,
        _scope: crate::probe::Scope,
    ) -> BoxFuture<'static, Round> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        self.credentials
            .lock()
            .expect("credentials")
            .push(credentials);
        let mut round = self.round.lock().expect("round").clone();
        if round.members.is_empty() {
            round.members = targets
                .iter()
                .map(|t| Observation::unreachable(&t.name, "connect: refused"))
                .collect();
        }
        for (o, t) in round.members.iter_mut().zip(&targets) {
            o.name = t.name.clone();
        }
        Box::pin(async move { round })
    }

    fn bootstrap_auth(
        &self,
        _endpoints: Vec<String>,
        _user: String,
        _password: String,
        _tls: Option<crate::client::ClientCert>,
    ) -> BoxFuture<'static, Result<bool, bootstrap::Error>> {
        if let Some(why) = self.untrusted.lock().expect("untrusted").clone() {
            return Box::pin(async move {
                Err(bootstrap::Error::Untrusted {
                    endpoint: "fake".to_string(),
                    why,
                })
            });
        }
        let enabled_now = !self.auth_enabled.swap(true, Ordering::SeqCst);
        if enabled_now {
            self.bootstraps.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move { Ok(enabled_now) })
    }

    fn member_list(
        &self,
        _endpoint: String,
        _credentials: Credentials,
    ) -> BoxFuture<'static, CallResult<Vec<Listed>>> {
        let listed = self.listed.lock().expect("listed").clone();
        Box::pin(async move { Ok(listed) })
    }

    fn member_remove(
        &self,
        _endpoint: String,
        _credentials: Credentials,
        id: u64,
    ) -> BoxFuture<'static, CallResult<()>> {
        self.listed.lock().expect("listed").retain(|l| l.id != id);
        self.record(format!("MemberRemove {id:x}"), ())
    }

    fn member_add_learner(
        &self,
        _endpoint: String,
        _credentials: Credentials,
        peer_url: String,
    ) -> BoxFuture<'static, CallResult<u64>> {
        let id = 0x99;
        self.listed.lock().expect("listed").push(Listed {
            id,
            peer_urls: vec![peer_url.clone()],
            is_learner: true,
        });
        self.record(format!("MemberAdd {peer_url}"), id)
    }

    fn member_promote(
        &self,
        _endpoint: String,
        _credentials: Credentials,
        id: u64,
    ) -> BoxFuture<'static, CallResult<()>> {
        for l in self.listed.lock().expect("listed").iter_mut() {
            if l.id == id {
                l.is_learner = false;
            }
        }
        self.record(format!("MemberPromote {id:x}"), ())
    }

    fn move_leader(
        &self,
        _endpoint: String,
        _credentials: Credentials,
        to: u64,
    ) -> BoxFuture<'static, CallResult<()>> {
        self.record(format!("MoveLeader {to:x}"), ())
    }

    fn defragment(
        &self,
        endpoint: String,
        _credentials: Credentials,
    ) -> BoxFuture<'static, CallResult<()>> {
        self.record(format!("Defragment {endpoint}"), ())
    }

    fn snapshot(
        &self,
        endpoint: String,
        _credentials: Credentials,
        _to: std::path::PathBuf,
    ) -> BoxFuture<'static, CallResult<crate::members::Saved>> {
        self.calls
            .lock()
            .expect("calls")
            .push(format!("Snapshot {endpoint}"));
        Box::pin(async move {
            Err(crate::members::CallError {
                call: "Snapshot",
                endpoint,
                message: "the fake members take no snapshots".to_string(),
            })
        })
    }
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The mocked API server's side of the client.
pub struct ApiServerVerifier(Handle);

/// A request the client made, and the way to answer it.
pub struct Seen {
    /// HTTP method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The JSON body (`Null` when empty).
    pub body: Value,
    send: tower_test::mock::SendResponse<Response<Body>>,
}

impl Seen {
    /// Answers `status` with `body`.
    pub fn respond(self, status: StatusCode, body: &Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        let response = Response::builder()
            .status(status)
            .body(Body::from(bytes))
            .expect("response");
        self.send.send_response(response);
    }

    /// Answers 200 with `body`.
    pub fn ok(self, body: &Value) {
        self.respond(StatusCode::OK, body);
    }

    /// Answers 200 with the request's own body, as the API server does for an apply.
    pub fn echo(self) {
        let body = self.body.clone();
        self.ok(&body);
    }

    /// Answers with an API error.
    pub fn error(self, code: u16, reason: &str) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{reason} (mocked)"), "reason": reason, "code": code,
        });
        self.respond(StatusCode::from_u16(code).expect("code"), &status);
    }

    /// Whether the query asks for a server-side apply by the operator, forced.
    pub fn is_forced_apply(&self) -> bool {
        self.method == Method::PATCH
            && self.query.contains("fieldManager=mend-operator")
            && self.query.contains("force=true")
    }
}

/// (verb, API group, resource) of a request to the API server.
pub fn api_call(method: &Method, path: &str, query: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => panic!("not an API path: {path}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected API path: {path}"),
    };
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        (other, _) => panic!("unexpected method {other}"),
    };
    (verb.to_string(), group, resource)
}

impl ApiServerVerifier {
    /// The next request, which must be one of [`API_CALLS`]; panics after a second without one.
    pub async fn next(&mut self) -> Seen {
        let (request, send) = tokio::time::timeout(Duration::from_secs(1), self.0.next_request())
            .await
            .expect("the controller made the expected request in time")
            .expect("the client is still there");
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        let (verb, group, resource) = api_call(&method, &path, &query);
        assert!(
            API_CALLS.contains(&(verb.as_str(), group.as_str(), resource.as_str())),
            "{method} {path} is ({verb}, {group:?}, {resource}), which API_CALLS (and so the \
             ClusterRole) does not grant"
        );
        Seen {
            method,
            path,
            query,
            body,
            send,
        }
    }

    /// The next request, asserting its method and path.
    pub async fn expect(&mut self, method: Method, path: &str) -> Seen {
        let seen = self.next().await;
        assert_eq!(
            (&seen.method, seen.path.as_str()),
            (&method, path),
            "query: {}",
            seen.query
        );
        seen
    }

    /// Asserts that the client, once dropped, made no further request.
    pub async fn no_more_requests(mut self) {
        let next = tokio::time::timeout(Duration::from_secs(1), self.0.next_request())
            .await
            .expect("the client was dropped");
        if let Some((request, _)) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// A client whose requests the returned verifier answers.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

impl Context {
    /// A context on a mocked API server and fake members.
    pub fn test() -> (Arc<Context>, ApiServerVerifier, Arc<FakeMembers>) {
        let (client, verifier) = mock_client();
        let members = Arc::new(FakeMembers::default());
        let ctx = Context::new(
            client,
            "mend-operator-test".into(),
            Arc::new(Metrics::default()),
            members.clone(),
            "mend-system".to_string(),
        );
        (Arc::new(ctx), verifier, members)
    }
}
