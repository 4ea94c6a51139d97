//! `operator run`: the controller in a process. It serves `/metrics`, `/healthz` and `/readyz`,
//! waits to win the leader Lease, then runs the kube-runtime Controller while renewing it, and
//! stops cleanly on SIGTERM or Ctrl-C (in-flight reconciles finish, the Lease is released so
//! the other replica takes over at once). When a renewal has not succeeded within the renew
//! deadline ([`super::lease`]) the Controller is dropped at once (in-flight reconciles are
//! cancelled) and the process exits with an error, for Kubernetes to restart it as a standby.
//!
//! The Controller watches every namespace, or only the one `--watch-namespace` names (the
//! namespace-scoped install of `manifests/namespaced/`, whose Role grants nothing elsewhere).
//!
//! `/healthz` answers 200 while the process runs. `/readyz` answers 200 once the replica has
//! reached the API server and taken part in the election (leader or standby): a standby is
//! ready to take over, which is what its readiness means.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use crds::StorageCluster;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tracing::{info, warn};

use super::lease::{LeaseLock, Timing};
use super::metrics::Metrics;
use super::{Context, Error, FIELD_MANAGER, Result, error_policy, reconcile};
use crate::members::Grpc;

/// Flags of `operator run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "MEND_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// The operator's own namespace: where its leader-election Lease lives, and where the
    /// members' NetworkPolicies expect the operator's pods (the only ones they admit to the
    /// client port, with the clients a cluster declares).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mend-system")]
    pub lease_namespace: String,
    /// Reconcile only the StorageClusters of this namespace (and watch their children there
    /// only), as a namespace-scoped install whose RBAC is a Role in it; every namespace when
    /// absent.
    #[arg(long, env = "MEND_WATCH_NAMESPACE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub watch_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "MEND_LEASE_NAME", default_value = "mend-operator")]
    pub lease_name: String,
    /// This replica's identity in the election; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a standby replica waits, having seen the Lease unchanged (by its own clock),
    /// before taking it over.
    #[arg(long, env = "MEND_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration_seconds: u64,
    /// Seconds the leader keeps leading without a successful renewal; shorter than the lease
    /// duration, so it has stopped before a standby may take over.
    #[arg(long, env = "MEND_LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=299))]
    pub lease_renew_deadline_seconds: u64,
    /// Seconds between tries for the Lease and between renewals; shorter than the renew
    /// deadline.
    #[arg(long, env = "MEND_LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=298))]
    pub lease_retry_period_seconds: u64,
    /// Seconds any call to a member (probe, auth bootstrap) may take.
    #[arg(long, env = "MEND_MEMBER_TIMEOUT_SECONDS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub member_timeout_seconds: u64,
}

impl RunArgs {
    /// Where the Controller watches, as `--watch-namespace` says.
    pub fn scope(&self) -> Scope {
        match &self.watch_namespace {
            Some(namespace) => Scope::Namespace(namespace.clone()),
            None => Scope::All,
        }
    }
}

/// Where the Controller watches `StorageCluster`s and their children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (the cluster-wide install, a ClusterRole).
    All,
    /// One namespace (the namespace-scoped install, a Role there).
    Namespace(String),
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(namespace) => Api::namespaced(client.clone(), namespace),
        }
    }
}

/// The Controller over the `StorageCluster`s in `scope` and the children they own there (the
/// ones labelled as the operator's).
fn controller(client: &Client, scope: &Scope) -> Controller<StorageCluster> {
    let children = watcher::Config::default().labels("app.kubernetes.io/managed-by=mend-operator");
    Controller::new(
        scope.api::<StorageCluster>(client),
        watcher::Config::default(),
    )
    .owns(scope.api::<Pod>(client), children.clone())
    .owns(scope.api::<PersistentVolumeClaim>(client), children.clone())
    .owns(scope.api::<Service>(client), children.clone())
    .owns(scope.api::<PodDisruptionBudget>(client), children.clone())
    .owns(scope.api::<NetworkPolicy>(client), children)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Resolves once `shutdown` turns true.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens at exit: stop too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What the health endpoints read.
struct Health {
    metrics: Arc<Metrics>,
    ready: AtomicBool,
}

fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move {
                (
                    [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    h.metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Arc<Health>>| async move {
                if h.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state(health)
}

/// Runs `operator run` until SIGTERM or Ctrl-C; an error (API server unreachable at start,
/// leadership lost) ends the process so Kubernetes restarts it.
pub async fn run(args: RunArgs) -> Result<()> {
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        termination().await;
        info!("shutting down");
        let _ = stop.send(true);
    });

    let timing = Timing {
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        renew_deadline: Duration::from_secs(args.lease_renew_deadline_seconds),
        retry_period: Duration::from_secs(args.lease_retry_period_seconds),
    };
    if let Some(problem) = timing.problem() {
        return Err(Error::Config(format!("leader election: {problem}")));
    }
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| Error::Config(format!("binding {}: {e}", args.metrics_addr)))?;
    let server = axum::serve(listener, router(health.clone()))
        .with_graceful_shutdown(stopped(shutdown.clone()));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            warn!(error = %e, "metrics server stopped");
        }
    });

    let scope = args.scope();
    let client = Client::try_default()
        .await
        .map_err(|e| Error::Config(format!("no Kubernetes client configuration: {e}")))?;
    let identity = match args.identity {
        Some(identity) => identity,
        // A pod's host name is its name; outside a pod, any distinct name will do.
        None => std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| FIELD_MANAGER.to_string()),
    };
    let lock = LeaseLock::new(
        Api::namespaced(client.clone(), &args.lease_namespace),
        &args.lease_name,
        &identity,
        timing,
    );
    info!(%identity, lease = %args.lease_name, namespace = %args.lease_namespace, "waiting for the leader lease");
    let answered = || health.ready.store(true, Ordering::Relaxed);
    let Some(acquired) = lock.acquire(answered, stopped(shutdown.clone())).await else {
        return Ok(());
    };
    metrics.set_leader(true);
    info!(%identity, "leading");

    let ctx = Arc::new(Context::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: Some(identity.clone()),
        },
        metrics.clone(),
        Arc::new(Grpc::new(Duration::from_secs(args.member_timeout_seconds))),
        args.lease_namespace.clone(),
    ));
    info!(?scope, "watching StorageClusters");
    let controller = controller(&client, &scope)
        .graceful_shutdown_on(stopped(shutdown.clone()))
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "controller");
            }
        });

    let outcome = tokio::select! {
        () = controller => Ok(()),
        lost = lock.keep(acquired) => lost,
    };
    metrics.set_leader(false);
    if outcome.is_ok() {
        match tokio::time::timeout(timing.renew_deadline, lock.release()).await {
            Ok(Ok(())) => info!("released the leader lease"),
            Ok(Err(e)) => warn!(error = %e, "releasing the leader lease"),
            Err(_) => warn!("releasing the leader lease timed out"),
        }
    }
    outcome
}

/// `operator run` from `main` (which installed the log subscriber): a tokio runtime and
/// [`run`]; the exit code says how it ended.
pub fn run_cli(args: RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("operator run: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator run");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::controller::fixtures::mock_client;
    use clap::Parser;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The (verb, path) of the requests the Controller over `scope` starts with: one list of
    /// each watched kind, answered empty, then the watch that follows it.
    async fn first_requests(scope: Scope) -> BTreeSet<(String, String)> {
        let (client, mut server) = mock_client();
        let (ctx, _, _) = Context::test();
        let running = tokio::spawn(
            controller(&client, &scope)
                .run(reconcile, error_policy, ctx)
                .for_each(|_| async {}),
        );
        let kinds = 6;
        let mut seen = BTreeSet::new();
        for _ in 0..kinds {
            let list = server.next().await;
            assert!(!list.query.contains("watch=true"), "{}", list.query);
            seen.insert(("list".to_string(), list.path.clone()));
            list.ok(&json!({
                "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "1" },
                "items": [],
            }));
        }
        for _ in 0..kinds {
            let watch = server.next().await;
            assert!(watch.query.contains("watch=true"), "{}", watch.query);
            seen.insert(("watch".to_string(), watch.path.clone()));
        }
        running.abort();
        seen
    }

    /// Every (verb, path) the Controller lists and watches, with `scope` (`/namespaces/<ns>`,
    /// or nothing for every namespace) after each kind's API group and version.
    fn expected(scope: &str) -> BTreeSet<(String, String)> {
        let paths = [
            format!("/apis/mend.dev/v1alpha1{scope}/storageclusters"),
            format!("/api/v1{scope}/pods"),
            format!("/api/v1{scope}/persistentvolumeclaims"),
            format!("/api/v1{scope}/services"),
            format!("/apis/policy/v1{scope}/poddisruptionbudgets"),
            format!("/apis/networking.k8s.io/v1{scope}/networkpolicies"),
        ];
        ["list", "watch"]
            .into_iter()
            .flat_map(|verb| paths.iter().map(move |p| (verb.to_string(), p.clone())))
            .collect()
    }

    #[tokio::test]
    async fn a_namespaced_controller_lists_and_watches_only_in_its_namespace() {
        assert_eq!(
            first_requests(Scope::Namespace("tenant".to_string())).await,
            expected("/namespaces/tenant")
        );
    }

    #[tokio::test]
    async fn the_cluster_wide_controller_lists_and_watches_every_namespace() {
        assert_eq!(first_requests(Scope::All).await, expected(""));
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn watch_namespace_scopes_the_controller_to_one_namespace() {
        let scope = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
                .map(|cli| cli.run.scope())
        };
        assert_eq!(
            scope(&["--watch-namespace=tenant"]).expect("parses"),
            Scope::Namespace("tenant".to_string())
        );
        assert!(
            scope(&["--watch-namespace="]).is_err(),
            "an empty namespace"
        );
        if std::env::var_os("MEND_WATCH_NAMESPACE").is_none() {
            assert_eq!(scope(&[]).expect("parses"), Scope::All);
        }
    }

    /// The status line and body of `GET path` on `addr`.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .expect("answer in time")
            .expect("read");
        response
    }

    #[tokio::test]
    async fn readyz_is_503_until_the_election_ran_and_metrics_is_prometheus_text() {
        let health = Arc::new(Health {
            metrics: Arc::new(Metrics::default()),
            ready: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(
            axum::serve(listener, router(health.clone()))
                .with_graceful_shutdown(stopped(shutdown))
                .into_future(),
        );
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        assert!(
            metrics.contains("mend_operator_reconciles_total 0"),
            "{metrics}"
        );
        stop.send(true).expect("server listens");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("graceful shutdown in time")
            .expect("server task")
            .expect("server");
    }
}
