//! One client port, both protocols, as etcd serves them: every accepted connection is told
//! apart by its first bytes. HTTP/2's connection preface (`PRI * HTTP/2.0`) goes to the gRPC
//! services, through the `:authority` repair; anything else is HTTP/1.1 and is served by the
//! member's HTTP endpoint (`/version`, `/health`, `/readyz`, `/livez`, `/metrics`) and etcd's
//! JSON gateway (`/v3/...`).
//!
//! Telling a plain connection apart waits for its first two bytes, in a task of its own: a
//! client that connects and sends nothing holds up no other connection, and is dropped after
//! [`FIRST_BYTES_TIMEOUT`]. Over TLS (`https://` client URLs), ALPN says it: `h2` is gRPC,
//! anything else HTTP/1.1 (so over TLS the HTTP endpoints answer HTTP/1.1 clients, such as
//! `curl --http1.1` and Kubernetes' probes).

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::authority::RepairAuthority;
use crate::tls::{Conn, PortTls};

/// How long a new connection may take to send its first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an HTTP/1.1 connection may take to send a request's headers, which is also how
/// long it may stay idle between requests (keep-alive). Not while a response streams (a
/// gateway watch may be quiet for hours): the clock runs only while a request head is
/// awaited. etcd's Go server has no such limit by default; 30 s is hyper's default.
pub const HTTP1_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections waiting to be taken by a server (gRPC or HTTP/1.1).
const QUEUED: usize = 128;

/// What a connection speaks.
#[derive(Debug, PartialEq, Eq)]
enum Protocol {
    /// HTTP/2 with prior knowledge: gRPC.
    Grpc,
    /// Anything else: HTTP/1.1.
    Http1,
}

/// The protocol of a connection whose first bytes are `first` (at least two of them). Only
/// HTTP/2's preface starts with `PR`: no HTTP/1.1 method does.
fn protocol(first: &[u8]) -> Protocol {
    if first.starts_with(b"PR") {
        Protocol::Grpc
    } else {
        Protocol::Http1
    }
}

/// Waits for a plain connection's first two bytes without taking them; `None` if it closes
/// first.
async fn first_bytes(stream: &TcpStream) -> io::Result<Option<Protocol>> {
    let mut buf = [0u8; 2];
    loop {
        let n = stream.peek(&mut buf).await?;
        match n {
            0 => return Ok(None),
            2 => return Ok(Some(protocol(&buf))),
            // One byte so far: peek returns it again at once, so wait a moment for the next.
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// What `conn` speaks: over TLS, what ALPN agreed on (gRPC clients always offer `h2`); in
/// plain text, what its first bytes say. `None`: it closed or sent nothing in time.
async fn protocol_of(conn: &Conn) -> Option<Protocol> {
    if conn.info().tls {
        return Some(if conn.info().h2 {
            Protocol::Grpc
        } else {
            Protocol::Http1
        });
    }
    let peer = conn.info().remote;
    match tokio::time::timeout(FIRST_BYTES_TIMEOUT, first_bytes(conn.tcp())).await {
        Ok(Ok(protocol)) => protocol,
        Ok(Err(_)) => None,
        Err(_) => {
            tracing::debug!(?peer, "client sent nothing; closing");
            None
        }
    }
}

/// The next of `items`; `None` once `stop` resolved or the senders are gone.
async fn next_until<T>(
    items: &mut mpsc::Receiver<T>,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> Option<T> {
    tokio::select! {
        () = stop => None,
        item = items.recv() => item,
    }
}

/// Serves HTTP/1.1 on each connection `connections` hands over, with `http`, until `stop`
/// resolves; connections then finish the response under way and close, and this returns
/// once they have.
pub(super) async fn serve_http1<I, F>(
    mut connections: mpsc::Receiver<I>,
    http: axum::Router,
    stopped: impl Fn() -> F,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let stop = stopped();
    tokio::pin!(stop);
    let mut open = tokio::task::JoinSet::new();
    while let Some(conn) = next_until(&mut connections, &mut stop).await {
        open.spawn(serve_http1_connection(conn, http.clone(), stopped()));
        while open.try_join_next().is_some() {}
    }
    // Stopped: each connection finishes the response under way (the member bounds the wait),
    // so a client is not left without the answer to a write that was applied.
    while open.join_next().await.is_some() {}
}

/// Serves HTTP/1.1 on `io` with `http`, dropping the connection when a request's headers take
/// longer than [`HTTP1_IDLE_TIMEOUT`] to arrive (the first request's, or the next one's after
/// a response), until `stop` resolves: then the response under way is finished and the
/// connection closed.
async fn serve_http1_connection<I>(io: I, http: axum::Router, stop: impl Future<Output = ()>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HTTP1_IDLE_TIMEOUT);
    let service = hyper_util::service::TowerToHyperService::new(http);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection, stop);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = &mut stop => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP/1.1 connection ended");
    }
}

/// Serves gRPC and HTTP/1.1 on `listener`, over TLS when `tls` is given, with at most
/// `max_connections` open, until the futures `stopped` makes resolve; returns the first
/// server error.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Option<PortTls>,
    max_connections: usize,
    grpc: super::GrpcRouter,
    http: axum::Router,
    stopped: impl Fn() -> F,
) -> Result<(), String>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (grpc_tx, grpc_rx) = mpsc::channel::<io::Result<RepairAuthority<Conn>>>(QUEUED);
    let (http_tx, http_rx) = mpsc::channel(QUEUED);
    let grpc_server = grpc.serve_with_incoming_shutdown(
        tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(grpc_rx),
        stopped(),
    );
    let http_server = serve_http1(http_rx, http, &stopped);
    let stop = stopped();
    let mut connections = crate::tls::incoming(listener, tls, max_connections);
    let accept = tokio::spawn(async move {
        tokio::pin!(stop);
        while let Some(conn) = next_until(&mut connections, &mut stop).await {
            let (grpc_tx, http_tx) = (grpc_tx.clone(), http_tx.clone());
            // Telling the protocol apart may wait for the client: not in the accept loop.
            tokio::spawn(async move {
                match protocol_of(&conn).await {
                    Some(Protocol::Grpc) => {
                        let _ = grpc_tx.send(Ok(RepairAuthority::new(conn))).await;
                    }
                    Some(Protocol::Http1) => {
                        let _ = http_tx.send(conn).await;
                    }
                    None => {}
                }
            });
        }
    });
    let served = tokio::try_join!(
        async { grpc_server.await.map_err(|e| format!("gRPC: {e}")) },
        async {
            http_server.await;
            Ok(())
        },
    );
    accept.abort();
    served.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `client` reads until the server closes, or until `until` shows up.
    async fn read_until(client: &mut tokio::io::DuplexStream, until: Option<&str>) -> String {
        use tokio::io::AsyncReadExt;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = client.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if until.is_some_and(|u| text.contains(u)) {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    /// Sends `GET path` over `client`.
    async fn get(client: &mut tokio::io::DuplexStream, path: &str) {
        use tokio::io::AsyncWriteExt;
        let request = format!("GET {path} HTTP/1.1\r\nhost: m\r\n\r\n");
        client.write_all(request.as_bytes()).await.expect("write");
    }

    // Paused time: the runtime jumps the clock forward whenever every task waits.
    #[tokio::test(start_paused = true)]
    async fn an_idle_http1_connection_is_closed_but_a_quiet_response_stream_is_not() {
        let quiet = || async {
            let late = futures_util::stream::once(async {
                tokio::time::sleep(HTTP1_IDLE_TIMEOUT * 4).await;
                Ok::<_, std::io::Error>("late event")
            });
            axum::body::Body::from_stream(late)
        };
        let http = axum::Router::new()
            .route("/health", axum::routing::get(|| async { "healthy" }))
            .route("/quiet", axum::routing::get(quiet));

        let (mut client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_http1_connection(
            server,
            http.clone(),
            std::future::pending(),
        ));
        get(&mut client, "/health").await;
        let answer = read_until(&mut client, Some("healthy")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Kept alive, then idle: closed once the next request's headers are overdue.
        let idle = tokio::time::Instant::now();
        let closed = tokio::time::timeout(HTTP1_IDLE_TIMEOUT * 2, read_until(&mut client, None));
        assert_eq!(closed.await.expect("closed when idle"), "");
        assert!(idle.elapsed() >= HTTP1_IDLE_TIMEOUT, "{:?}", idle.elapsed());

        let (mut client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_http1_connection(server, http, std::future::pending()));
        get(&mut client, "/quiet").await;
        let answer = read_until(&mut client, Some("late event")).await;
        assert!(answer.contains("late event"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_lets_the_response_under_way_finish_before_the_server_returns() {
        // The response's body waits until the test releases it.
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let slow = {
            let release = release.clone();
            move || async move {
                let late = futures_util::stream::once(async move {
                    release.notified().await;
                    Ok::<_, std::io::Error>("the write was applied")
                });
                axum::body::Body::from_stream(late)
            }
        };
        let http = axum::Router::new().route("/slow", axum::routing::get(slow));
        let (connections, incoming) = mpsc::channel(1);
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut stopping = stopping.clone();
            async move {
                let _ = stopping.wait_for(|s| *s).await;
            }
        };
        let server = tokio::spawn(serve_http1(incoming, http, stopped));
        let (mut client, conn) = tokio::io::duplex(1 << 16);
        connections.send(conn).await.expect("handed over");
        get(&mut client, "/slow").await;
        // The response has begun (its head is out) when the member starts to stop.
        let head = read_until(&mut client, Some("HTTP/1.1 200")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        stop.send(true).expect("stop");
        let mut server = server;
        let early = tokio::time::timeout(Duration::from_secs(10), &mut server).await;
        assert!(early.is_err(), "returned with a response under way");
        release.notify_one();
        let answer = read_until(&mut client, Some("the write was applied")).await;
        assert!(answer.contains("the write was applied"), "{answer}");
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("the server returned once the connection was done")
            .expect("server task");
    }

    #[test]
    fn only_the_http2_preface_is_taken_for_grpc() {
        assert_eq!(protocol(b"PRI * HTTP/2.0"), Protocol::Grpc);
        for request in [
            "GET /health",
            "POST /v3/kv/range",
            "PUT /x",
            "PATCH /y",
            "HEAD /",
        ] {
            assert_eq!(protocol(request.as_bytes()), Protocol::Http1, "{request}");
        }
    }
}
