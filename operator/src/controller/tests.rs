//! Reconciles against a mocked API server: each scenario lists, in order, the requests the
//! controller must make, asserts their method, path, field manager and key body fields, and
//! answers them as the API server would. Every request is also checked against [`API_CALLS`].

use std::sync::atomic::Ordering;

use http::Method;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::fixtures::{ApiServerVerifier, cluster, lease_spec, mock_client, observation};
use super::lease::{LeaseLock, Timing};
use super::{API_CALLS, Context, reconcile, resources};
use crate::detector::Round;

mod backup;
mod maintenance;
mod resize;
mod rollout;
mod tls;

const NS: &str = "/api/v1/namespaces/default";
const STATUS: &str = "/apis/mend.dev/v1alpha1/namespaces/default/storageclusters/demo/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

/// The label-selected lists every valid reconcile starts with, in order.
const LISTS: [(&str, &str); 5] = [
    ("pods", "/api/v1/namespaces/default/pods"),
    (
        "persistentvolumeclaims",
        "/api/v1/namespaces/default/persistentvolumeclaims",
    ),
    ("services", "/api/v1/namespaces/default/services"),
    (
        "poddisruptionbudgets",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
    ),
    (
        "networkpolicies",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
    ),
];

/// The cluster's NetworkPolicy.
const NETWORK_POLICY: &str = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo";

/// What a first reconcile applied: the children by list they belong to, and the status.
#[derive(Clone, Debug, Default)]
struct Applied {
    secret: Value,
    children: Vec<(&'static str, Value)>,
    status: Value,
}

impl Applied {
    fn items(&self, list: &str) -> Vec<Value> {
        self.children
            .iter()
            .filter(|(l, _)| *l == list)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// What the mocked API server expects, in order.
enum Scenario {
    /// A new cluster: the root Secret is generated, every child is created, members do not
    /// answer yet, the status says so.
    Create,
    /// Children and status exactly as a first reconcile left them: reads only.
    Unchanged(Applied),
    /// Children exist and every member answers: auth is bootstrapped (an Event), and the status
    /// reports the members.
    MembersAnswer(Applied),
    /// Children exist, auth is on, members answer: only the status is written.
    StatusOnly(Applied),
    /// Children exist, members answer, the cluster's auth is not the operator's: a Warning
    /// Event, then the status.
    Untrusted(Applied),
    /// A spec the operator refuses (even replicas, a resize): a condition and a Warning Event
    /// with this reason, nothing else.
    Refused(&'static str),
    /// The root Secret the spec names does not exist: a condition and a Warning Event.
    MissingSecret,
}

impl ApiServerVerifier {
    fn run(mut self, scenario: Scenario) -> tokio::task::JoinHandle<(Applied, Self)> {
        tokio::spawn(async move {
            let applied = match scenario {
                Scenario::Create => self.create().await,
                Scenario::Unchanged(applied) => {
                    self.reads(&applied).await;
                    applied
                }
                Scenario::MembersAnswer(applied) => {
                    self.reads(&applied).await;
                    self.event("AuthEnabled", "Normal").await;
                    let status = self.status().await;
                    Applied { status, ..applied }
                }
                Scenario::StatusOnly(applied) => {
                    self.reads(&applied).await;
                    let status = self.status().await;
                    Applied { status, ..applied }
                }
                Scenario::Untrusted(applied) => {
                    self.reads(&applied).await;
                    let note = self.event("AuthUntrusted", "Warning").await;
                    assert!(note.contains("mallory"), "{note}");
                    let status = self.status().await;
                    Applied { status, ..applied }
                }
                Scenario::MissingSecret => {
                    self.expect(Method::GET, &format!("{NS}/secrets/mine"))
                        .await
                        .error(404, "NotFound");
                    let status = self.status().await;
                    self.event("RootSecretUnusable", "Warning").await;
                    Applied {
                        status,
                        ..Applied::default()
                    }
                }
                Scenario::Refused(reason) => {
                    let status = self.status().await;
                    self.event(reason, "Warning").await;
                    Applied {
                        status,
                        ..Applied::default()
                    }
                }
            };
            (applied, self)
        })
    }

    async fn create(&mut self) -> Applied {
        self.expect(Method::GET, &format!("{NS}/secrets/demo-root"))
            .await
            .error(404, "NotFound");
        let secret = self.created_secret().await;
        for (_, path) in LISTS {
            let list = self.expect(Method::GET, path).await;
            assert!(list.query.contains("labelSelector="), "{}", list.query);
            list.ok(&json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": [] }));
        }
        let children = self.children_created().await;
        let status = self.status().await;
        Applied {
            secret,
            children,
            status,
        }
    }

    /// A first reconcile's creation of every child, in order, after its lists: the
    /// NetworkPolicy, the Services, the PodDisruptionBudget, each member's claim and pod, and
    /// the Event telling it. Returns them by the list they belong to.
    async fn children_created(&mut self) -> Vec<(&'static str, Value)> {
        let mut children = vec![
            (
                "networkpolicies",
                self.apply(NETWORK_POLICY, "NetworkPolicy").await,
            ),
            (
                "services",
                self.apply(&format!("{NS}/services/demo-peer"), "Service")
                    .await,
            ),
            (
                "services",
                self.apply(&format!("{NS}/services/demo-client"), "Service")
                    .await,
            ),
            (
                "poddisruptionbudgets",
                self.apply(
                    "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
                    "PodDisruptionBudget",
                )
                .await,
            ),
        ];
        for member in ["demo-0", "demo-1", "demo-2"] {
            let pvc = self
                .apply(
                    &format!("{NS}/persistentvolumeclaims/data-{member}"),
                    "PersistentVolumeClaim",
                )
                .await;
            children.push(("persistentvolumeclaims", pvc));
            let pod = self.apply(&format!("{NS}/pods/{member}"), "Pod").await;
            children.push(("pods", pod));
        }
        self.event("MembersCreated", "Normal").await;
        children
    }

    /// The reads of a reconcile whose children exist as `applied` holds them.
    async fn reads(&mut self, applied: &Applied) {
        self.reads_with_pods(applied, applied.items("pods")).await;
    }

    /// [`ApiServerVerifier::reads`] with `pods` as the member pods.
    async fn reads_with_pods(&mut self, applied: &Applied, pods: Vec<Value>) {
        self.expect(Method::GET, &format!("{NS}/secrets/demo-root"))
            .await
            .ok(&applied.secret);
        self.lists(applied, pods).await;
    }

    /// The lists of a reconcile, with `pods` as the member pods and the rest as `applied`.
    async fn lists(&mut self, applied: &Applied, pods: Vec<Value>) {
        for (list, path) in LISTS {
            let items = if list == "pods" {
                pods.clone()
            } else {
                applied.items(list)
            };
            self.expect(Method::GET, path).await.ok(&json!({
                "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items,
            }));
        }
    }

    /// A forced server-side apply of a `kind` at `path`, labelled for the cluster and owned by
    /// it, unless it holds data (a volume claim, the root Secret), which nothing owns.
    async fn apply(&mut self, path: &str, kind: &str) -> Value {
        let seen = self.expect(Method::PATCH, path).await;
        assert!(seen.is_forced_apply(), "{path}: {}", seen.query);
        let body = seen.body.clone();
        assert_eq!(body["kind"], kind);
        let meta = &body["metadata"];
        if matches!(kind, "PersistentVolumeClaim" | "Secret") {
            assert!(meta["ownerReferences"].is_null(), "{path}: {meta}");
        } else {
            assert_eq!(
                meta["ownerReferences"],
                json!([{
                    "apiVersion": "mend.dev/v1alpha1", "kind": "StorageCluster", "name": "demo",
                    "uid": "uid-demo", "controller": true,
                }]),
                "{path}"
            );
        }
        assert_eq!(meta["labels"]["app.kubernetes.io/name"], "storage-node");
        assert_eq!(meta["labels"]["app.kubernetes.io/instance"], "demo");
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"],
            "mend-operator"
        );
        if kind != "Secret" {
            assert!(
                meta["annotations"]["mend.dev/applied-hash"].is_string(),
                "{path}"
            );
        }
        seen.echo();
        body
    }

    /// The generated root Secret, created (never applied: an existing one is not overwritten)
    /// by the operator, labelled for the cluster and owned by nothing.
    async fn created_secret(&mut self) -> Value {
        let seen = self.expect(Method::POST, &format!("{NS}/secrets")).await;
        assert!(
            seen.query.contains("fieldManager=mend-operator"),
            "{}",
            seen.query
        );
        let body = seen.body.clone();
        assert_eq!(body["kind"], "Secret");
        assert_eq!(body["metadata"]["name"], "demo-root");
        assert!(body["metadata"]["ownerReferences"].is_null(), "{body}");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/instance"],
            "demo"
        );
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "mend-operator"
        );
        assert!(body["data"]["username"].is_string() && body["data"]["password"].is_string());
        seen.respond(http::StatusCode::CREATED, &body);
        body
    }

    /// A new Event of `reason` and `type_` about the cluster; returns its note.
    async fn event(&mut self, reason: &str, type_: &str) -> String {
        let seen = self.expect(Method::POST, EVENTS).await;
        assert_eq!(seen.body["reason"], reason);
        assert_eq!(seen.body["type"], type_);
        assert_eq!(seen.body["regarding"]["name"], "demo");
        let note = seen.body["note"].as_str().unwrap_or_default().to_string();
        seen.echo();
        note
    }

    async fn status(&mut self) -> Value {
        let seen = self.expect(Method::PATCH, STATUS).await;
        assert!(seen.is_forced_apply(), "{}", seen.query);
        assert_eq!(seen.body["kind"], "StorageCluster");
        let status = seen.body["status"].clone();
        // The API server answers with the whole resource.
        let mut stored = serde_json::to_value(cluster("demo", 3)).expect("cluster json");
        stored["status"] = status.clone();
        seen.ok(&stored);
        status
    }
}

/// `reconcile` bounded in time: a request the scenario does not answer would block it forever.
async fn reconcile_in_time(
    cluster: crds::StorageCluster,
    ctx: &std::sync::Arc<Context>,
) -> super::Result<kube::runtime::controller::Action> {
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reconcile(cluster.into(), ctx.clone()),
    )
    .await
    .expect("the reconcile made no request the scenario does not expect")
}

/// Reconciles `cluster` once against the scenario `server` plays, which must have made every
/// request it expects and no other: returns what the scenario returned.
async fn reconciled<T>(
    cluster: crds::StorageCluster,
    ctx: std::sync::Arc<Context>,
    server: tokio::task::JoinHandle<(T, ApiServerVerifier)>,
) -> T {
    reconcile_in_time(cluster, &ctx).await.expect("reconcile");
    drop(ctx);
    let (seen, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    seen
}

fn condition<'v>(status: &'v Value, type_: &str) -> &'v Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// A first reconcile of a new 3-member cluster, returning what it applied.
async fn first_reconcile() -> Applied {
    let (ctx, verifier, _) = Context::test();
    let server = verifier.run(Scenario::Create);
    reconcile_in_time(cluster("demo", 3), &ctx)
        .await
        .expect("reconcile");
    drop(ctx);
    let (applied, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    applied
}

#[tokio::test]
async fn first_reconcile_creates_exactly_the_expected_children_the_workload_owned() {
    let applied = first_reconcile().await;

    let pods = applied.items("pods");
    let pod = &pods[0];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], crds::DEFAULT_IMAGE);
    assert_eq!(container["command"], json!(["storage-node"]));
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--initial-cluster-state=new"), "{args:?}");
    assert!(
        args.contains(&"--listen-peer-urls=http://0.0.0.0:2380"),
        "{args:?}"
    );
    assert!(
        args.contains(&"--listen-metrics-urls=http://0.0.0.0:2381"),
        "{args:?}"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/var/lib/mend");
    assert_eq!(pod["spec"]["subdomain"], "demo-peer");
    assert_eq!(
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "data-demo-0"
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["spec"]["automountServiceAccountToken"], false,
        "a member never calls the Kubernetes API: no token in its filesystem"
    );

    let pvc = &applied.items("persistentvolumeclaims")[0];
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    let services = applied.items("services");
    assert_eq!(services[0]["spec"]["clusterIP"], "None");
    assert_eq!(services[0]["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(services[1]["spec"]["ports"][0]["port"], 2379);
    let pdb = &applied.items("poddisruptionbudgets")[0];
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    let status = &applied.status;
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["phase"], "Bootstrapping");
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["readyReplicas"], 0);
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/instance=demo,app.kubernetes.io/name=storage-node"
    );
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(condition(status, "Available")["status"], "False");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
}

/// The NetworkPolicy of `cluster`'s first reconcile, without its applied-hash annotation
/// (checked to be there).
async fn first_network_policy(cluster: crds::StorageCluster) -> Value {
    let (ctx, verifier, _) = Context::test();
    let server = verifier.run(Scenario::Create);
    reconcile_in_time(cluster, &ctx).await.expect("reconcile");
    drop(ctx);
    let (applied, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    let [mut policy]: [Value; 1] = applied
        .items("networkpolicies")
        .try_into()
        .expect("one NetworkPolicy");
    let annotations = policy["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations");
    let hash = annotations.remove("mend.dev/applied-hash").expect("hash");
    assert!(hash.as_str().is_some_and(|h| h.len() == 16), "{hash}");
    assert!(annotations.is_empty(), "{annotations:?}");
    policy["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("annotations");
    policy
}

/// The NetworkPolicy body the operator applies for `demo`, admitting `clients` to the client
/// port after the operator.
fn expected_network_policy(clients: &[Value]) -> Value {
    let members = json!({ "matchLabels": {
        "app.kubernetes.io/instance": "demo", "app.kubernetes.io/name": "storage-node",
    }});
    let operator = json!({
        "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "mend-system" } },
        "podSelector": { "matchLabels": { "app.kubernetes.io/name": "mend-operator" } },
    });
    let from: Vec<Value> = std::iter::once(operator)
        .chain(clients.iter().cloned())
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "demo",
            "namespace": "default",
            "labels": {
                "app.kubernetes.io/instance": "demo",
                "app.kubernetes.io/managed-by": "mend-operator",
                "app.kubernetes.io/name": "storage-node",
            },
            "ownerReferences": [{
                "apiVersion": "mend.dev/v1alpha1", "kind": "StorageCluster", "name": "demo",
                "uid": "uid-demo", "controller": true,
            }],
        },
        "spec": {
            "podSelector": members,
            "policyTypes": ["Ingress"],
            "ingress": [
                { "from": [{ "podSelector": members }],
                  "ports": [{ "port": 2380, "protocol": "TCP" }] },
                { "from": from, "ports": [{ "port": 2379, "protocol": "TCP" }] },
                { "ports": [{ "port": 2381, "protocol": "TCP" }] },
            ],
        },
    })
}

#[tokio::test]
async fn only_members_reach_the_peer_port_and_only_the_operator_the_client_port_by_default() {
    let policy = first_network_policy(cluster("demo", 3)).await;
    assert_eq!(policy, expected_network_policy(&[]));
}

#[tokio::test]
async fn declared_clients_reach_the_client_port_beside_the_operator() {
    let clients = vec![
        json!({
            "namespaceSelector": { "matchLabels": { "team": "a" } },
            "podSelector": { "matchLabels": { "app": "api" } },
        }),
        json!({ "ipBlock": { "cidr": "10.0.0.0/16" } }),
    ];
    let mut declared = cluster("demo", 3);
    declared.spec.network.clients =
        serde_json::from_value(Value::from(clients.clone())).expect("peers");
    let policy = first_network_policy(declared).await;
    assert_eq!(policy, expected_network_policy(&clients));
}

/// A client declared later changes the NetworkPolicy only: it is applied again, nothing else.
#[tokio::test]
async fn a_client_declared_later_reapplies_the_network_policy_and_nothing_else() {
    let applied = first_reconcile().await;
    let mut changed = cluster("demo", 3);
    changed.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));
    changed.spec.network.clients =
        serde_json::from_value(json!([{ "podSelector": { "matchLabels": { "app": "api" } } }]))
            .expect("peers");
    let (ctx, mut verifier, _) = Context::test();
    let server = tokio::spawn(async move {
        verifier.reads(&applied).await;
        let policy = verifier.apply(NETWORK_POLICY, "NetworkPolicy").await;
        (policy, verifier)
    });
    reconcile_in_time(changed, &ctx).await.expect("reconcile");
    drop(ctx);
    let (policy, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert_eq!(
        policy["spec"]["ingress"][1]["from"][1],
        json!({ "podSelector": { "matchLabels": { "app": "api" } } })
    );
}

/// "No-op" here means: fed back exactly the children and status the first reconcile applied, a
/// second reconcile makes only the reads it needs to know that (the Secret, five label-selected
/// lists) and no write at all: no create, no apply, no status patch, no Event.
#[tokio::test]
async fn a_second_reconcile_with_nothing_changed_makes_no_write() {
    let applied = first_reconcile().await;
    let mut again = cluster("demo", 3);
    again.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));

    let (ctx, verifier, _) = Context::test();
    let server = verifier.run(Scenario::Unchanged(applied));
    reconcile_in_time(again, &ctx).await.expect("reconcile");
    drop(ctx);
    let (_, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
}

#[tokio::test]
async fn members_answering_get_auth_bootstrapped_once_and_reported_in_status() {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 3);
    running.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));

    let (ctx, verifier, members) = Context::test();
    *members.round.lock().expect("round") = Round {
        members: vec![
            observation(0x11, true, 2),
            observation(0x22, false, 2),
            observation(0x33, false, 2),
        ],
    };
    let server = verifier.run(Scenario::MembersAnswer(applied));
    reconcile_in_time(running, &ctx).await.expect("reconcile");
    drop(ctx);
    let (applied, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert_eq!(members.bootstraps.load(Ordering::SeqCst), 1);

    let status = &applied.status;
    assert_eq!(status["phase"], "Available");
    assert_eq!(status["leader"], "demo-0");
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(status["authRevisionDrift"], 0);
    assert_eq!(status["members"][1]["name"], "demo-1");
    assert_eq!(status["members"][1]["memberId"], "22");
    assert_eq!(status["members"][1]["role"], "Follower");
    assert_eq!(
        status["members"][1]["endpoint"],
        "http://demo-1.demo-peer.default.svc:2379"
    );
    assert_eq!(condition(status, "Available")["status"], "True");
    assert_eq!(condition(status, "Progressing")["status"], "False");
    assert_eq!(condition(status, "Diverged")["status"], "False");
}

#[tokio::test]
async fn auth_that_is_not_the_operators_is_a_warning_and_a_condition_and_no_heal() {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 3);
    running.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));

    let (ctx, verifier, members) = Context::test();
    *members.untrusted.lock().expect("untrusted") =
        Some("users the operator did not create exist before auth is on: [\"mallory\"]".into());
    *members.round.lock().expect("round") = Round {
        members: vec![
            observation(0x11, true, 2),
            observation(0x22, false, 2),
            observation(0x33, false, 2),
        ],
    };
    let server = verifier.run(Scenario::Untrusted(applied));
    reconcile_in_time(running, &ctx).await.expect("reconcile");
    drop(ctx);
    let (applied, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert_eq!(
        members.bootstraps.load(Ordering::SeqCst),
        0,
        "auth was turned on"
    );
    let untrusted = condition(&applied.status, "AuthUntrusted");
    assert_eq!(untrusted["status"], "True");
    assert!(
        untrusted["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not healing"),
        "{untrusted}"
    );
    assert!(
        members.calls.lock().expect("calls").is_empty(),
        "a membership call was made"
    );
}

/// An Event reports work; a refused one (RBAC, an overloaded API server) must not undo it.
#[tokio::test]
async fn a_refused_event_is_counted_and_the_reconcile_goes_on() {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 3);
    running.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));
    let (ctx, mut verifier, members) = Context::test();
    *members.round.lock().expect("round") = Round {
        members: vec![
            observation(0x11, true, 2),
            observation(0x22, false, 2),
            observation(0x33, false, 2),
        ],
    };
    let server = tokio::spawn(async move {
        verifier.reads(&applied).await;
        verifier
            .expect(Method::POST, EVENTS)
            .await
            .error(403, "Forbidden");
        let status = verifier.status().await;
        (status, verifier)
    });
    reconcile_in_time(running, &ctx)
        .await
        .expect("the reconcile does not fail for an Event");
    let metrics = ctx.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l == "mend_operator_event_failures_total{reason=\"AuthEnabled\"} 1"),
        "{metrics}"
    );
    drop(ctx);
    let (status, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert_eq!(members.bootstraps.load(Ordering::SeqCst), 1);
    assert_eq!(status["phase"], "Available");
}

#[tokio::test]
async fn auth_revision_drift_between_members_is_reported_as_diverged() {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 3);
    // One round of evidence is enough here; the detector's persistence rule has its own tests.
    running.spec.healing.consecutive_probes = 1;
    // Report only: running the heal is the resumed-heal test's subject.
    running.spec.healing.mode = crds::HealingMode::ObserveOnly;
    running.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));

    let (ctx, verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    *members.round.lock().expect("round") = Round {
        members: vec![
            observation(0x11, true, 9),
            observation(0x22, false, 8),
            observation(0x33, false, 7),
        ],
    };
    let server = verifier.run(Scenario::StatusOnly(applied));
    reconcile_in_time(running, &ctx).await.expect("reconcile");
    drop(ctx);
    let (applied, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert_eq!(
        members.bootstraps.load(Ordering::SeqCst),
        0,
        "auth was on already"
    );

    let status = &applied.status;
    assert_eq!(status["phase"], "Diverged");
    assert_eq!(status["authRevisionDrift"], 2);
    let diverged = condition(status, "Diverged");
    assert_eq!(diverged["status"], "True");
    assert_eq!(diverged["reason"], "AuthRevisionDrift");
}

#[tokio::test]
async fn an_invalid_spec_sets_a_condition_and_a_warning_and_creates_nothing() {
    let (ctx, verifier, _) = Context::test();
    let server = verifier.run(Scenario::Refused("InvalidSpec"));
    let mut even = cluster("demo", 4);
    even.metadata.generation = Some(2);
    reconcile_in_time(even, &ctx)
        .await
        .expect("an invalid spec is reported, not retried");
    drop(ctx);
    let (applied, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    let progressing = condition(&applied.status, "Progressing");
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "InvalidSpec");
    let message = progressing["message"].as_str().expect("message");
    assert!(message.contains("set it to 3 or 5"), "{message}");
    assert_eq!(applied.status["observedGeneration"], 2);
}

/// The CRD refuses such a name; a CRD installed without its rules (or an older one) lets it
/// through, and the operator then says what to do instead of creating invalid children.
#[tokio::test]
async fn an_invalid_name_sets_a_condition_and_a_warning_and_creates_nothing() {
    let (ctx, mut verifier, _) = Context::test();
    let server = tokio::spawn(async move {
        let seen = verifier
            .expect(
                Method::PATCH,
                "/apis/mend.dev/v1alpha1/namespaces/default/storageclusters/demo.prod/status",
            )
            .await;
        let status = seen.body["status"].clone();
        let mut stored = serde_json::to_value(cluster("demo.prod", 3)).expect("cluster json");
        stored["status"] = status.clone();
        seen.ok(&stored);
        let event = verifier.expect(Method::POST, EVENTS).await;
        assert_eq!(event.body["type"], "Warning");
        assert_eq!(event.body["reason"], "InvalidSpec");
        assert_eq!(event.body["regarding"]["name"], "demo.prod");
        event.echo();
        (status, verifier)
    });
    let action = reconcile_in_time(cluster("demo.prod", 3), &ctx)
        .await
        .expect("reported, not retried");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    drop(ctx);
    let (status, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    let progressing = condition(&status, "Progressing");
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "InvalidSpec");
    let message = progressing["message"].as_str().expect("message");
    assert!(
        message.contains("\"demo.prod\" cannot be used") && message.contains("DNS-1035"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_root_secret_is_reported_and_looked_up_again_later() {
    let (ctx, verifier, _) = Context::test();
    let server = verifier.run(Scenario::MissingSecret);
    let mut named = cluster("demo", 3);
    named.spec.auth.root_secret_ref = Some("mine".to_string());
    let action = reconcile_in_time(named, &ctx)
        .await
        .expect("a missing Secret is reported, not an error");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(30))
    );
    drop(ctx);
    let (applied, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    let progressing = condition(&applied.status, "Progressing");
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "RootSecretUnusable");
    let message = progressing["message"].as_str().expect("message");
    assert!(
        message.contains("Secret mine") && message.contains("username and password"),
        "{message}"
    );
}

fn lease(holder: &str, renewed: Timestamp) -> Value {
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("mend-operator".to_string()),
            namespace: Some("mend-system".to_string()),
            resource_version: Some("7".to_string()),
            ..Default::default()
        },
        spec: Some(lease_spec(Some(holder), renewed, 15)),
    };
    serde_json::to_value(lease).expect("lease json")
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/mend-system/leases/mend-operator";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/mend-system/leases";

fn lock() -> (LeaseLock, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    let api = Api::namespaced(client, "mend-system");
    let lock = LeaseLock::new(api, "mend-operator", "replica-a", Timing::default());
    (lock, verifier)
}

#[tokio::test]
async fn a_free_lease_is_acquired_by_creating_it() {
    let (lock, mut verifier) = lock();
    let server = tokio::spawn(async move {
        verifier
            .expect(Method::GET, LEASE)
            .await
            .error(404, "NotFound");
        let create = verifier.expect(Method::POST, LEASES).await;
        assert_eq!(create.body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(create.body["spec"]["leaseDurationSeconds"], 15);
        create.echo();
    });
    assert!(
        lock.try_acquire_or_renew(Timestamp::now(), Instant::now())
            .await
            .expect("election")
    );
    server.await.expect("scenario");
}

#[tokio::test]
async fn a_fresh_lease_held_by_another_replica_is_left_alone() {
    let (lock, mut verifier) = lock();
    let now = Timestamp::now();
    let server = tokio::spawn(async move {
        verifier
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease("replica-b", now));
        verifier
    });
    assert!(
        !lock
            .try_acquire_or_renew(now, Instant::now())
            .await
            .expect("election")
    );
    drop(lock);
    server.await.expect("scenario").no_more_requests().await;
}

/// However old its renew time by this replica's clock, a Lease held by another is taken over
/// only once this replica has seen it unchanged for the lease duration, by its own clock.
#[tokio::test]
async fn a_lease_seen_unchanged_for_its_duration_is_taken_over_with_its_resource_version() {
    let (lock, mut verifier) = lock();
    let now = Timestamp::now();
    let stale = now - k8s_openapi::jiff::SignedDuration::from_secs(60);
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            verifier
                .expect(Method::GET, LEASE)
                .await
                .ok(&lease("replica-b", stale));
        }
        let update = verifier.expect(Method::PUT, LEASE).await;
        assert_eq!(update.body["metadata"]["resourceVersion"], "7");
        assert_eq!(update.body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(update.body["spec"]["leaseTransitions"], 1);
        update.echo();
    });
    let first_seen = Instant::now();
    assert!(
        !lock
            .try_acquire_or_renew(now, first_seen)
            .await
            .expect("election"),
        "first seen: followed, whatever its renew time says"
    );
    let later = first_seen + std::time::Duration::from_secs(15);
    assert!(
        lock.try_acquire_or_renew(now, later)
            .await
            .expect("election")
    );
    server.await.expect("scenario");
}

#[tokio::test]
async fn the_holder_renews_its_lease_without_counting_a_transition() {
    let (lock, mut verifier) = lock();
    let now = Timestamp::now();
    let earlier = now - k8s_openapi::jiff::SignedDuration::from_secs(5);
    let server = tokio::spawn(async move {
        verifier
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease("replica-a", earlier));
        let update = verifier.expect(Method::PUT, LEASE).await;
        assert_eq!(update.body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(update.body["spec"]["leaseTransitions"], 0);
        assert_ne!(
            update.body["spec"]["renewTime"],
            update.body["spec"]["acquireTime"]
        );
        update.echo();
    });
    assert!(
        lock.try_acquire_or_renew(now, Instant::now())
            .await
            .expect("election")
    );
    server.await.expect("scenario");
}

#[tokio::test]
async fn losing_the_race_for_an_expired_lease_is_not_an_error() {
    let (lock, mut verifier) = lock();
    let now = Timestamp::now();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            verifier
                .expect(Method::GET, LEASE)
                .await
                .ok(&lease("replica-b", now));
        }
        verifier
            .expect(Method::PUT, LEASE)
            .await
            .error(409, "Conflict");
    });
    let first_seen = Instant::now();
    assert!(
        !lock
            .try_acquire_or_renew(now, first_seen)
            .await
            .expect("election")
    );
    let later = first_seen + std::time::Duration::from_secs(15);
    assert!(
        !lock
            .try_acquire_or_renew(now, later)
            .await
            .expect("election")
    );
    server.await.expect("scenario");
}

#[test]
fn api_calls_name_each_call_once() {
    let mut calls = API_CALLS.to_vec();
    calls.sort_unstable();
    calls.dedup();
    assert_eq!(calls.len(), API_CALLS.len());
}

/// A bound volume claim `name` of `capacity`.
fn bound_claim(name: &str, capacity: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": name, "namespace": "default" },
        "status": { "phase": "Bound", "capacity": { "storage": capacity } },
    })
}

/// A cluster as a first reconcile left it, with a heal of demo-1 (0x22) from demo-2 (0x33)
/// recorded at step `next` of Remove, Backup, AddLearner; members and the member list as they
/// would be with demo-1 removed (`removed`) or not.
async fn recorded_heal(
    next: usize,
    removed: bool,
) -> (
    Applied,
    crds::StorageCluster,
    std::sync::Arc<Context>,
    ApiServerVerifier,
    std::sync::Arc<super::fixtures::FakeMembers>,
) {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 3);
    let mut status: crds::StorageClusterStatus =
        serde_json::from_value(applied.status.clone()).expect("status");
    let plan = crate::planner::Plan {
        source: 0x33,
        steps: vec![
            crate::planner::Step::Remove { member: 0x22 },
            crate::planner::Step::Backup { member: 0x22 },
            crate::planner::Step::AddLearner { member: 0x22 },
        ],
    };
    let names = [(0x11, "demo-0"), (0x22, "demo-1"), (0x33, "demo-2")]
        .map(|(id, n)| (id, n.to_string()))
        .into();
    let progress = crate::executor::Progress {
        next,
        ..crate::executor::Progress::new(plan, names, Timestamp::now().as_second())
    };
    status.healing = Some(crds::HealingStatus {
        count: 4,
        progress: Some(progress.to_status()),
        ..crds::HealingStatus::default()
    });
    running.status = Some(status);
    let (ctx, verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    let demo1 = if removed {
        crate::detector::Observation::unreachable("demo-1", "connect: refused")
    } else {
        observation(0x22, false, 8)
    };
    *members.round.lock().expect("round") = Round {
        members: vec![
            observation(0x11, false, 7),
            demo1,
            observation(0x33, true, 7),
        ],
    };
    let peer = |n: &str| format!("http://{n}.demo-peer.default.svc:2380");
    *members.listed.lock().expect("listed") =
        [(0x11, "demo-0"), (0x22, "demo-1"), (0x33, "demo-2")]
            .into_iter()
            .filter(|(id, _)| !(removed && *id == 0x22))
            .map(|(id, n)| crate::planner::Listed {
                id,
                peer_urls: vec![peer(n)],
                is_learner: false,
            })
            .collect();
    (applied, running, ctx, verifier, members)
}

#[tokio::test]
async fn a_recorded_heal_runs_one_step_per_reconcile_and_requeues_soon() {
    let (applied, mut running, ctx, mut verifier, members) = recorded_heal(1, true).await;
    // The removed member's pod is gone; the others are there.
    let mut live = applied.clone();
    live.children
        .retain(|(list, o)| !(*list == "pods" && o["metadata"]["name"] == "demo-1"));
    let reads = live.clone();
    let server = tokio::spawn(async move {
        verifier.reads(&reads).await;
        // No pod for demo-1 (the heal owns it): the backup is checked to be safe, then its
        // one-off pod is created on demo-1's volume; this reconcile ends there.
        verifier
            .expect(Method::GET, &format!("{NS}/pods/demo-1"))
            .await
            .error(404, "NotFound");
        verifier
            .expect(
                Method::GET,
                &format!("{NS}/persistentvolumeclaims/data-demo-1"),
            )
            .await
            .ok(&bound_claim("data-demo-1", "1Gi"));
        verifier
            .expect(Method::GET, &format!("{NS}/pods/demo-1-backup"))
            .await
            .error(404, "NotFound");
        let created = verifier.expect(Method::POST, &format!("{NS}/pods")).await;
        assert_eq!(
            created.body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "data-demo-1"
        );
        let pod = created.body.clone();
        created.ok(&pod);
        let recorded = verifier.status().await;
        (recorded, pod, verifier)
    });
    let action = reconcile_in_time(running.clone(), &ctx)
        .await
        .expect("reconcile");
    let (recorded, pod, mut verifier) = server.await.expect("scenario");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(2))
    );
    assert_eq!(recorded["phase"], "Healing");
    assert_eq!(recorded["healing"]["step"], 1, "still the backup");
    assert_eq!(recorded["healing"]["count"], 4);
    assert_eq!(
        recorded["healing"]["progress"]["steps"][1]["action"],
        "Backup"
    );

    // The next reconcile, a heal pass later, finds the backup pod finished: the step is
    // done, told, recorded.
    running.status = Some(serde_json::from_value(recorded).expect("status"));
    for cluster in ctx.healers.lock().expect("healers").values_mut() {
        cluster.last_pass = None;
    }
    let server = tokio::spawn(async move {
        verifier.reads(&live).await;
        verifier
            .expect(Method::GET, &format!("{NS}/pods/demo-1"))
            .await
            .error(404, "NotFound");
        verifier
            .expect(
                Method::GET,
                &format!("{NS}/persistentvolumeclaims/data-demo-1"),
            )
            .await
            .ok(&bound_claim("data-demo-1", "1Gi"));
        let mut done = pod.clone();
        done["status"] = json!({ "phase": "Succeeded" });
        verifier
            .expect(Method::GET, &format!("{NS}/pods/demo-1-backup"))
            .await
            .ok(&done);
        verifier
            .expect(Method::DELETE, &format!("{NS}/pods/demo-1-backup"))
            .await
            .ok(&done);
        let recorded = verifier.status().await;
        let note = verifier.event("HealStep", "Normal").await;
        (recorded, note, verifier)
    });
    reconcile_in_time(running, &ctx).await.expect("reconcile");
    drop(ctx);
    let (recorded, note, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert_eq!(recorded["healing"]["step"], 2, "the backup is done");
    assert!(
        note.starts_with("step 2 of 3 done: back up and wipe 22"),
        "{note}"
    );
    assert!(
        members.calls.lock().expect("calls").is_empty(),
        "no membership change"
    );
}

#[tokio::test]
async fn a_heal_whose_mode_turned_disabled_does_nothing_more_and_says_so() {
    let (applied, mut running, ctx, mut verifier, members) = recorded_heal(0, false).await;
    running.spec.healing.mode = crds::HealingMode::Disabled;
    let server = tokio::spawn(async move {
        verifier.reads(&applied).await;
        let recorded = verifier.status().await;
        verifier.event("HealPaused", "Warning").await;
        (recorded, verifier)
    });
    reconcile_in_time(running, &ctx).await.expect("reconcile");
    drop(ctx);
    let (recorded, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert!(
        members.calls.lock().expect("calls").is_empty(),
        "demo-1 was not removed"
    );
    let healing = condition(&recorded, "Healing");
    assert!(
        healing["message"]
            .as_str()
            .is_some_and(|m| m.contains("paused: healing mode is Disabled")),
        "{healing}"
    );
    assert_eq!(recorded["healing"]["progress"]["next"], 0);
}

#[tokio::test]
async fn a_remove_that_would_cost_quorum_is_not_made() {
    let (applied, running, ctx, mut verifier, members) = recorded_heal(0, false).await;
    // demo-0 stops answering: removing demo-1 would leave one of two voters.
    members.round.lock().expect("round").members[0] =
        crate::detector::Observation::unreachable("demo-0", "Status: deadline exceeded");
    let server = tokio::spawn(async move {
        verifier.reads(&applied).await;
        let recorded = verifier.status().await;
        verifier.event("HealPaused", "Warning").await;
        (recorded, verifier)
    });
    reconcile_in_time(running, &ctx).await.expect("reconcile");
    drop(ctx);
    let (recorded, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert!(
        members.calls.lock().expect("calls").is_empty(),
        "demo-1 was not removed"
    );
    let why = recorded["healing"]["progress"]["pausedBecause"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("not a quorum"), "{recorded}");
}

#[tokio::test]
async fn a_member_whose_volume_was_deleted_gets_an_empty_marked_claim_and_a_rebuild() {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 3);
    let mut status: crds::StorageClusterStatus =
        serde_json::from_value(applied.status.clone()).expect("status");
    for (m, id) in status.members.iter_mut().zip(["11", "22", "33"]) {
        m.member_id = id.to_string();
    }
    running.status = Some(status);
    let (ctx, mut verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    *members.round.lock().expect("round") = Round {
        members: vec![
            observation(0x11, false, 7),
            crate::detector::Observation::unreachable("demo-1", "connect: refused"),
            observation(0x33, true, 7),
        ],
    };
    *members.listed.lock().expect("listed") =
        [(0x11, "demo-0"), (0x22, "demo-1"), (0x33, "demo-2")]
            .map(|(id, n)| crate::planner::Listed {
                id,
                peer_urls: vec![format!("http://{n}.demo-peer.default.svc:2380")],
                is_learner: false,
            })
            .to_vec();
    // demo-1's pod and claim are gone (the volume was lost with its node).
    let mut live = applied.clone();
    live.children.retain(|(list, o)| {
        !(matches!(*list, "pods" | "persistentvolumeclaims")
            && (o["metadata"]["name"] == "demo-1" || o["metadata"]["name"] == "data-demo-1"))
    });
    let server = tokio::spawn(async move {
        verifier.reads(&live).await;
        let claim = verifier
            .expect(
                Method::PATCH,
                &format!("{NS}/persistentvolumeclaims/data-demo-1"),
            )
            .await;
        let body = claim.body.clone();
        claim.echo();
        // No pod for demo-1: it may only start when the rebuild adds it back.
        let recorded = verifier.status().await;
        verifier.event("HealStarted", "Warning").await;
        (body, recorded, verifier)
    });
    reconcile_in_time(running, &ctx).await.expect("reconcile");
    drop(ctx);
    let (claim, recorded, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert_eq!(claim["metadata"]["labels"]["mend.dev/rebuild"], "true");
    let steps: Vec<&str> = recorded["healing"]["progress"]["steps"]
        .as_array()
        .expect("a recorded plan")
        .iter()
        .filter_map(|s| s["action"].as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "Remove",
            "Backup",
            "AddLearner",
            "WaitCaughtUp",
            "Promote",
            "Verify"
        ]
    );
    assert_eq!(recorded["healing"]["progress"]["steps"][0]["member"], "22");
    assert_eq!(recorded["healing"]["progress"]["source"], "33");
    assert!(
        members.calls.lock().expect("calls").is_empty(),
        "recorded, not run yet"
    );
}

#[tokio::test]
async fn reconciles_woken_by_status_writes_or_children_probe_once_per_interval_and_write_nothing() {
    let applied = first_reconcile().await;
    let mut running = cluster("demo", 3);
    running.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));
    let (ctx, mut verifier, members) = Context::test();
    members.auth_enabled.store(true, Ordering::SeqCst);
    let round = |revision: i64| Round {
        members: [0x11, 0x22, 0x33]
            .map(|id| {
                let mut o = observation(id, id == 0x11, 7);
                o.revision = revision;
                o
            })
            .to_vec(),
    };
    *members.round.lock().expect("round") = round(4);
    let reads = applied.clone();
    let server = tokio::spawn(async move {
        verifier.reads(&reads).await;
        let written = verifier.status().await;
        (written, verifier)
    });
    reconcile_in_time(running.clone(), &ctx)
        .await
        .expect("reconcile");
    let (written, mut verifier) = server.await.expect("scenario");
    assert_eq!(written["phase"], "Available");
    // Clients keep writing: every member's revision moves. The status write above (and any
    // change of a child) wakes the controller again at once, twice.
    running.status = Some(serde_json::from_value(written).expect("status"));
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            verifier.reads(&applied).await;
        }
        verifier
    });
    for revision in [40, 400] {
        *members.round.lock().expect("round") = round(revision);
        reconcile_in_time(running.clone(), &ctx)
            .await
            .expect("reconcile");
    }
    drop(ctx);
    let verifier = server.await.expect("scenario");
    // Reads only: no status write, no Event.
    verifier.no_more_requests().await;
    assert_eq!(
        members.probes.load(Ordering::SeqCst),
        1,
        "one probe round per interval"
    );
}

const CLUSTER: &str = "/apis/mend.dev/v1alpha1/namespaces/default/storageclusters/demo";

/// The cluster being deleted: `kubectl delete` set its deletion timestamp, the finalizer holds
/// it.
fn deleted(policy: crds::RetentionPolicy) -> crds::StorageCluster {
    let mut sc = cluster("demo", 3);
    sc.spec.storage.retention_policy = policy;
    sc.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    sc
}

impl ApiServerVerifier {
    /// The cleanup's list of the cluster's volume claims, answered with `claims`.
    async fn claims(&mut self, claims: &[&str]) {
        let list = self
            .expect(Method::GET, &format!("{NS}/persistentvolumeclaims"))
            .await;
        assert!(
            list.query
                .contains("app.kubernetes.io%2Fmanaged-by%3Dmend-operator")
                && list.query.contains("app.kubernetes.io%2Finstance%3Ddemo"),
            "only the operator's claims of this cluster: {}",
            list.query
        );
        let items: Vec<Value> = claims
            .iter()
            .map(|name| {
                json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": { "name": name, "namespace": "default" } })
            })
            .collect();
        list.ok(&json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items }));
    }

    /// The finalizer's removal, the cleanup's last request.
    async fn finalizer_removed(&mut self) {
        let seen = self.expect(Method::PATCH, CLUSTER).await;
        assert_eq!(
            seen.body,
            json!([
                { "op": "test", "path": "/metadata/finalizers/0", "value": "mend.dev/cleanup" },
                { "op": "remove", "path": "/metadata/finalizers/0" },
            ])
        );
        let mut gone = serde_json::to_value(cluster("demo", 3)).expect("json");
        gone["metadata"]["finalizers"] = json!([]);
        seen.ok(&gone);
    }
}

#[tokio::test]
async fn a_new_cluster_first_gets_the_finalizer_and_nothing_else() {
    let (ctx, mut verifier, _) = Context::test();
    let server = tokio::spawn(async move {
        let seen = verifier.expect(Method::PATCH, CLUSTER).await;
        assert_eq!(
            seen.body,
            json!([
                { "op": "test", "path": "/metadata/finalizers", "value": null },
                { "op": "add", "path": "/metadata/finalizers", "value": ["mend.dev/cleanup"] },
            ])
        );
        seen.ok(&serde_json::to_value(cluster("demo", 3)).expect("json"));
        verifier
    });
    let mut new = cluster("demo", 3);
    new.metadata.finalizers = None;
    let action = reconcile_in_time(new, &ctx).await.expect("reconcile");
    // The patch changes the resource, which brings the next reconcile.
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    drop(ctx);
    server.await.expect("scenario").no_more_requests().await;
}

#[tokio::test]
async fn deleting_a_cluster_keeps_its_data_by_default_and_says_how_to_delete_it() {
    let (ctx, mut verifier, _) = Context::test();
    let server = tokio::spawn(async move {
        verifier.claims(&["data-demo-0", "data-demo-1"]).await;
        // Nothing is deleted: an Event says what was kept, then the finalizer goes.
        let note = verifier.event("DataRetained", "Normal").await;
        verifier.finalizer_removed().await;
        (note, verifier)
    });
    reconcile_in_time(deleted(crds::RetentionPolicy::Retain), &ctx)
        .await
        .expect("cleanup");
    drop(ctx);
    let (note, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert!(
        note.contains(
            "kept volume claims data-demo-0, data-demo-1 and the generated root Secret demo-root"
        ) && note.contains("kubectl delete pvc,secret -n default -l"),
        "{note}"
    );
}

#[tokio::test]
async fn deleting_a_cluster_with_the_delete_policy_deletes_its_claims_and_generated_secret() {
    let (ctx, mut verifier, _) = Context::test();
    let server = tokio::spawn(async move {
        verifier.claims(&["data-demo-0", "data-demo-1"]).await;
        verifier
            .expect(
                Method::DELETE,
                &format!("{NS}/persistentvolumeclaims/data-demo-0"),
            )
            .await
            .ok(
                &json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "metadata": { "name": "data-demo-0" } }),
            );
        // Already gone (deleted by hand): not an error.
        verifier
            .expect(
                Method::DELETE,
                &format!("{NS}/persistentvolumeclaims/data-demo-1"),
            )
            .await
            .error(404, "NotFound");
        let mut secret =
            serde_json::to_value(resources::root_secret(&cluster("demo", 3), "pw")).expect("json");
        secret["metadata"]["uid"] = json!("uid-secret");
        verifier
            .expect(Method::GET, &format!("{NS}/secrets/demo-root"))
            .await
            .ok(&secret);
        let deleted = verifier
            .expect(Method::DELETE, &format!("{NS}/secrets/demo-root"))
            .await;
        assert_eq!(
            deleted.body["preconditions"],
            json!({ "uid": "uid-secret" }),
            "exactly the Secret looked at, not one made since under its name"
        );
        deleted.ok(&json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" }));
        let note = verifier.event("DataDeleted", "Normal").await;
        verifier.finalizer_removed().await;
        (note, verifier)
    });
    reconcile_in_time(deleted(crds::RetentionPolicy::Delete), &ctx)
        .await
        .expect("cleanup");
    drop(ctx);
    let (note, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert!(
        note.contains(
            "deleted volume claims data-demo-0, data-demo-1 and the generated root Secret demo-root"
        ),
        "{note}"
    );
}

#[tokio::test]
async fn a_secret_the_operator_did_not_generate_is_never_deleted() {
    let (ctx, mut verifier, _) = Context::test();
    let server = tokio::spawn(async move {
        verifier.claims(&[]).await;
        // Someone's own Secret happens to bear the generated name: not the operator's to delete.
        verifier
            .expect(Method::GET, &format!("{NS}/secrets/demo-root"))
            .await
            .ok(&json!({ "apiVersion": "v1", "kind": "Secret",
                         "metadata": { "name": "demo-root", "namespace": "default" } }));
        verifier.event("DataDeleted", "Normal").await;
        verifier.finalizer_removed().await;
        verifier
    });
    reconcile_in_time(deleted(crds::RetentionPolicy::Delete), &ctx)
        .await
        .expect("cleanup");
    drop(ctx);
    server.await.expect("scenario").no_more_requests().await;
}

/// A Secret the spec names is the user's, even under the generated name and labels.
#[tokio::test]
async fn the_secret_the_spec_names_is_never_deleted() {
    let (ctx, mut verifier, _) = Context::test();
    let server = tokio::spawn(async move {
        verifier.claims(&[]).await;
        // Not even read: the spec names it, so it is the user's.
        let note = verifier.event("DataDeleted", "Normal").await;
        verifier.finalizer_removed().await;
        (note, verifier)
    });
    let mut named = deleted(crds::RetentionPolicy::Delete);
    named.spec.auth.root_secret_ref = Some("demo-root".to_string());
    reconcile_in_time(named, &ctx).await.expect("cleanup");
    drop(ctx);
    let (note, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    assert!(!note.contains("Secret"), "{note}");
}

/// A first reconcile whose create of the generated root Secret the API server answers with
/// `code`/`reason`: the reconcile's error and the status it recorded.
async fn secret_create_refused(code: u16, reason: &str) -> (super::Error, Value) {
    let (ctx, mut verifier, _) = Context::test();
    let reason = reason.to_string();
    let server = tokio::spawn(async move {
        verifier
            .expect(Method::GET, &format!("{NS}/secrets/demo-root"))
            .await
            .error(404, "NotFound");
        verifier
            .expect(Method::POST, &format!("{NS}/secrets"))
            .await
            .error(code, &reason);
        let recorded = verifier.status().await;
        (recorded, verifier)
    });
    let error = reconcile_in_time(cluster("demo", 3), &ctx)
        .await
        .expect_err("the create was refused");
    drop(ctx);
    let (recorded, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    (error, recorded)
}

/// A Secret created under the generated name between the operator's read and its create is
/// not the operator's: the create is refused rather than overwriting it, and the reconcile
/// fails (to read it next time).
#[tokio::test]
async fn a_secret_made_meanwhile_under_the_generated_name_is_never_overwritten() {
    let (error, recorded) = secret_create_refused(409, "AlreadyExists").await;
    assert!(error.to_string().contains("AlreadyExists"), "{error}");
    assert_eq!(
        condition(&recorded, "Progressing")["reason"],
        "ReconcileFailed"
    );
}

/// Claims and Secrets an operator before the retention policy made were owned by the cluster,
/// so deleting it would still delete them: each reconcile removes that owner reference.
#[tokio::test]
async fn data_an_earlier_operator_made_owned_is_disowned() {
    let mut applied = first_reconcile().await;
    let owner = json!([{ "apiVersion": "mend.dev/v1alpha1", "kind": "StorageCluster",
                         "name": "demo", "uid": "uid-demo", "controller": true }]);
    applied.secret["metadata"]["ownerReferences"] = owner.clone();
    applied.secret["metadata"]["resourceVersion"] = json!("41");
    for (list, object) in &mut applied.children {
        if *list == "persistentvolumeclaims" && object["metadata"]["name"] == "data-demo-1" {
            object["metadata"]["ownerReferences"] = owner.clone();
            object["metadata"]["resourceVersion"] = json!("42");
        }
    }
    let mut again = cluster("demo", 3);
    again.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));
    let (ctx, mut verifier, _) = Context::test();
    let server = tokio::spawn(async move {
        let disowned = |seen: &super::fixtures::Seen, version: &str| {
            assert_eq!(seen.method, Method::PATCH);
            assert_eq!(
                seen.body,
                json!({ "metadata": { "resourceVersion": version, "ownerReferences": null } })
            );
        };
        verifier
            .expect(Method::GET, &format!("{NS}/secrets/demo-root"))
            .await
            .ok(&applied.secret);
        let seen = verifier
            .expect(Method::PATCH, &format!("{NS}/secrets/demo-root"))
            .await;
        disowned(&seen, "41");
        seen.ok(&applied.secret);
        for (list, path) in LISTS {
            verifier.expect(Method::GET, path).await.ok(&json!({
                "apiVersion": "v1", "kind": "List", "metadata": {}, "items": applied.items(list),
            }));
        }
        let seen = verifier
            .expect(
                Method::PATCH,
                &format!("{NS}/persistentvolumeclaims/data-demo-1"),
            )
            .await;
        disowned(&seen, "42");
        seen.echo();
        verifier
    });
    reconcile_in_time(again, &ctx).await.expect("reconcile");
    drop(ctx);
    server.await.expect("scenario").no_more_requests().await;
}

/// A namespace whose ResourceQuota refuses one member's pod: the others are created, the
/// refusal is a condition and a Warning Event saying what to change, and the reconcile
/// succeeds (the pod is tried again at the next one).
#[tokio::test]
async fn a_pod_refused_by_a_quota_is_reported_and_the_other_members_still_start() {
    let (ctx, mut verifier, _) = Context::test();
    let server = tokio::spawn(async move {
        verifier
            .expect(Method::GET, &format!("{NS}/secrets/demo-root"))
            .await
            .error(404, "NotFound");
        verifier.created_secret().await;
        for (_, path) in LISTS {
            verifier
                .expect(Method::GET, path)
                .await
                .ok(&json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": [] }));
        }
        verifier.apply(NETWORK_POLICY, "NetworkPolicy").await;
        verifier
            .apply(&format!("{NS}/services/demo-peer"), "Service")
            .await;
        verifier
            .apply(&format!("{NS}/services/demo-client"), "Service")
            .await;
        verifier
            .apply(
                "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
                "PodDisruptionBudget",
            )
            .await;
        for member in ["demo-0", "demo-1", "demo-2"] {
            verifier
                .apply(
                    &format!("{NS}/persistentvolumeclaims/data-{member}"),
                    "PersistentVolumeClaim",
                )
                .await;
            if member == "demo-1" {
                let refused = verifier
                    .expect(Method::PATCH, &format!("{NS}/pods/demo-1"))
                    .await;
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "reason": "Forbidden", "code": 403,
                    "message": "pods \"demo-1\" is forbidden: exceeded quota: compute, \
                                requested: requests.memory=256Mi, used: requests.memory=1792Mi, \
                                limited: requests.memory=2Gi",
                });
                refused.respond(http::StatusCode::FORBIDDEN, &status);
            } else {
                verifier.apply(&format!("{NS}/pods/{member}"), "Pod").await;
            }
        }
        let created = verifier.event("MembersCreated", "Normal").await;
        assert_eq!(created, "created member pods demo-0, demo-2");
        let warning = verifier.event("PodRejected", "Warning").await;
        let status = verifier.status().await;
        (warning, status, verifier)
    });
    reconcile_in_time(cluster("demo", 3), &ctx)
        .await
        .expect("a refusal is reported, not an error");
    drop(ctx);
    let (warning, status, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    let progressing = condition(&status, "Progressing");
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "PodRejected");
    assert_eq!(progressing["message"], warning.as_str());
    assert!(
        warning.contains("member pod demo-1 (403)")
            && warning.contains("exceeded quota")
            && warning.contains("set spec.resources"),
        "{warning}"
    );
    // The members that run are still reported.
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
}

/// No StorageClass: the claims stay Pending and the scheduler says the pods wait for them. Past
/// the grace this is a condition and a Warning Event, said once: the next reconcile, finding
/// it in the status, writes and tells nothing more.
#[tokio::test]
async fn a_volume_pending_for_want_of_a_storage_class_is_a_condition_and_a_warning_once() {
    let mut applied = first_reconcile().await;
    let long_ago =
        (Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(300)).to_string();
    for (list, object) in &mut applied.children {
        match *list {
            "pods" => {
                object["status"] = json!({ "phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "lastTransitionTime": long_ago,
                    "message": "0/1 nodes are available: pod has unbound immediate \
                                PersistentVolumeClaims. preemption: 0/1 nodes are available: \
                                1 Preemption is not helpful for scheduling.",
                }]});
            }
            "persistentvolumeclaims" => {
                object["metadata"]["creationTimestamp"] = json!(long_ago);
                object["status"] = json!({ "phase": "Pending" });
            }
            _ => {}
        }
    }
    let mut stuck = cluster("demo", 3);
    stuck.status = Some(serde_json::from_value(applied.status.clone()).expect("status"));
    let (ctx, mut verifier, _) = Context::test();
    let live = applied.clone();
    let server = tokio::spawn(async move {
        verifier.reads(&live).await;
        let warning = verifier.event("VolumePending", "Warning").await;
        let status = verifier.status().await;
        (warning, status, verifier)
    });
    reconcile_in_time(stuck, &ctx).await.expect("reconcile");
    drop(ctx);
    let (warning, status, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
    let progressing = condition(&status, "Progressing");
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "VolumePending");
    assert!(
        warning.contains("member pod demo-0")
            && warning.contains("data-demo-0")
            && warning.contains("StorageClass"),
        "{warning}"
    );

    let mut again = cluster("demo", 3);
    again.status = Some(serde_json::from_value(status).expect("status"));
    let (ctx, verifier, _) = Context::test();
    let server = verifier.run(Scenario::Unchanged(applied));
    reconcile_in_time(again, &ctx).await.expect("reconcile");
    drop(ctx);
    let (_, verifier) = server.await.expect("scenario");
    verifier.no_more_requests().await;
}

#[tokio::test]
async fn a_failed_reconcile_says_so_in_the_progressing_condition() {
    let (error, recorded) = secret_create_refused(500, "InternalError").await;
    let progressing = condition(&recorded, "Progressing");
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "ReconcileFailed");
    assert!(
        progressing["message"]
            .as_str()
            .is_some_and(|m| m.contains(&error.to_string())),
        "{progressing}"
    );
}

#[tokio::test]
async fn a_failed_reconcile_is_told_in_a_warning_event_and_retried_later() {
    let (ctx, mut verifier, _) = Context::test();
    let error = super::Error::Bootstrap(crate::bootstrap::Error::Call {
        call: "UserAdd",
        endpoint: "http://demo-0.demo-peer.default.svc:2379".to_string(),
        message: "deadline exceeded".to_string(),
    });
    let action = super::error_policy(std::sync::Arc::new(cluster("demo", 3)), &error, ctx.clone());
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(1))
    );
    let note = verifier.event("ReconcileFailed", "Warning").await;
    assert!(
        note.starts_with(&error.to_string()) && note.contains("retrying"),
        "{note}"
    );
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("mend_operator_reconcile_failures_total{error=\"bootstrap\"} 1"),
        "{metrics}"
    );
    drop(ctx);
    verifier.no_more_requests().await;
}
