//! The member's HTTP endpoint, on `--listen-metrics-urls` and on the client port for HTTP/1.1
//! clients: `/version` and `/health` in etcd's JSON shapes, `/metrics` in Prometheus' text
//! format, `/readyz` and `/livez`.
//!
//! `/health` answers as etcd 3.5's: unhealthy on an active alarm (unless named in
//! `?exclude=NOSPACE`, repeatable), on no leader (unless `?serializable=true`), and on a failed
//! read (linearizable, or local with `serializable`), with the reason in its JSON.
//!
//! As in etcd 3.5, `/livez` says only that the process is alive (it answers and its store
//! can be read), while `/health` and `/readyz` also need a linearizable read to succeed. Kubernetes restarts a
//! member whose liveness fails, and restarting a member that lost its leader (a quorum loss,
//! peers still starting) brings no leader back and makes the quorum loss worse, so liveness
//! must not depend on the cluster.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::raft::node::Node;

/// What the endpoint's handlers share.
#[derive(Clone)]
struct Endpoint {
    node: Arc<Node>,
    /// `--ready-only-with-auth`: `/readyz` fails until authentication is on.
    ready_only_with_auth: bool,
}

/// The endpoint's routes, served on `--listen-metrics-urls` and to HTTP/1.1 clients of the
/// client port. With `ready_only_with_auth`, `/readyz` also waits for authentication to be on,
/// so a Kubernetes Service routes no client to a member its operator has not secured yet.
pub fn router(node: Arc<Node>, ready_only_with_auth: bool) -> Router {
    let endpoint = Endpoint {
        node: node.clone(),
        ready_only_with_auth,
    };
    Router::new()
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/livez", get(livez))
        .with_state(node)
        .merge(
            Router::new()
                .route("/readyz", get(readyz))
                .with_state(endpoint),
        )
}

/// Serves the endpoint on `listener` (the metrics URLs), with at most `max_connections` open
/// and the client port's HTTP/1.1 idle limit, until the futures `stopped` makes resolve.
pub async fn serve<F>(
    listener: TcpListener,
    node: Arc<Node>,
    ready_only_with_auth: bool,
    max_connections: usize,
    stopped: impl Fn() -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let connections = crate::tls::incoming(listener, None, max_connections);
    super::client_port::serve_http1(connections, router(node, ready_only_with_auth), stopped).await
}

/// etcd's `/version`: the server's version and the cluster's (major.minor.0).
async fn version() -> impl IntoResponse {
    let server = super::maintenance::VERSION;
    let cluster = server
        .rsplit_once('.')
        .map_or(server.to_string(), |(minor, _)| format!("{minor}.0"));
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"etcdserver": server, "etcdcluster": cluster}).to_string(),
    )
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // Reading the store's figures can wait for an apply in progress: off the async threads.
    match tokio::task::spawn_blocking(move || render(&node)).await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

/// The Prometheus exposition of this member's figures (see [`super::metrics`]).
pub fn render(node: &Node) -> String {
    super::metrics::render(node)
}

/// How long `/health` and `/readyz` wait for a linearizable read point: probes time out in
/// seconds, and a member cut off from its leader must say so before the prober gives up.
const PROBE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reaches a linearizable read point within [`PROBE_READ_TIMEOUT`].
async fn bounded_read(node: &Node) -> Result<(), String> {
    match tokio::time::timeout(PROBE_READ_TIMEOUT, node.read_index()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("etcdserver: request timed out".to_string()),
    }
}

/// What `/health` checks, from its query (`exclude=NOSPACE&exclude=CORRUPT&serializable=true`).
#[derive(Debug, Default, PartialEq, Eq)]
struct HealthQuery {
    exclude: Vec<String>,
    serializable: bool,
}

impl HealthQuery {
    fn parse(query: Option<&str>) -> HealthQuery {
        let mut q = HealthQuery::default();
        for pair in query.unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("exclude", alarm)) => q.exclude.push(alarm.to_string()),
                Some(("serializable", v)) => q.serializable = v == "true",
                _ => {}
            }
        }
        q
    }
}

/// Why the member is unhealthy, in etcd's words; `None` when it is healthy.
async fn unhealthy(node: &Node, query: &HealthQuery) -> Option<String> {
    let alarms = node.store.alarms(crate::api::AlarmType::None);
    if let Some(a) = alarms
        .iter()
        .find(|a| !query.exclude.iter().any(|e| e == a.alarm.name()))
    {
        return Some(format!("ALARM {}", a.alarm.name()));
    }
    if !query.serializable && node.raft_status().leader == 0 {
        return Some("RAFT NO LEADER".into());
    }
    // As etcd: a read must succeed; with `serializable` the member's own state answers it,
    // otherwise the member must reach a linearizable read point.
    if !query.serializable
        && let Err(e) = bounded_read(node).await
    {
        return Some(format!("RANGE ERROR:{e}"));
    }
    None
}

async fn health(State(node): State<Arc<Node>>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let query = HealthQuery::parse(query.as_deref());
    let (code, body) = match unhealthy(&node, &query).await {
        None => (
            StatusCode::OK,
            r#"{"health":"true","reason":""}"#.to_string(),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": reason}).to_string(),
        ),
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

/// Ready, as etcd 3.5's `/readyz`: no CORRUPT alarm, and a linearizable read point reached
/// (a member that only believes in a leader, cut off from a quorum, is not ready). Failures are
/// listed as etcd lists its checks.
async fn readyz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let node = &endpoint.node;
    let corrupt = !node.store.alarms(crate::api::AlarmType::Corrupt).is_empty();
    let auth_off = endpoint.ready_only_with_auth && !node.store.auth_status().0;
    let checks = [
        (
            "data_corruption",
            corrupt.then(|| "alarm activated: CORRUPT".to_string()),
        ),
        (
            "auth_enabled",
            auth_off.then(|| "authentication is not enabled yet".to_string()),
        ),
        (
            "linearizable_read",
            match node.raft_status().leader {
                0 => Some("etcdserver: no leader".to_string()),
                _ => bounded_read(node).await.err(),
            },
        ),
    ];
    if checks.iter().all(|(_, failed)| failed.is_none()) {
        return (StatusCode::OK, "ok\n".to_string());
    }
    let mut body = String::new();
    for (name, failed) in &checks {
        match failed {
            None => {
                let _ = writeln!(body, "[+]{name} ok");
            }
            Some(why) => {
                let _ = writeln!(body, "[-]{name} failed: {why}");
            }
        }
    }
    body.push_str("readyz check failed\n");
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// 200 while the process answers and its store can be read, whatever the cluster's state.
async fn livez(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // The read takes the store's lock: a wedged apply holding it makes this hang, and the
    // probe's timeout then reports the process as not alive. Off the async threads, so a wait
    // on that lock never blocks the runtime.
    match tokio::task::spawn_blocking(move || node.store.applied()).await {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unreadable\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::HealthQuery;

    #[test]
    fn health_queries_parse_as_etcd_reads_them() {
        assert_eq!(HealthQuery::parse(None), HealthQuery::default());
        assert_eq!(
            HealthQuery::parse(Some("exclude=NOSPACE&exclude=CORRUPT&serializable=true")),
            HealthQuery {
                exclude: vec!["NOSPACE".into(), "CORRUPT".into()],
                serializable: true,
            }
        );
        assert!(!HealthQuery::parse(Some("serializable=false")).serializable);
    }
}
