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
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::authority::RepairAuthority;
use crate::tls::{Conn, PortTls};

/// How long a new connection may take to send its first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

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

/// HTTP/1.1 connections, handed to axum's server as its listener.
struct Http1Connections {
    rx: mpsc::Receiver<Conn>,
    addr: SocketAddr,
}

impl axum::serve::Listener for Http1Connections {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => {
                let peer = conn.info().remote.unwrap_or(self.addr);
                (conn, peer)
            }
            // The accept loop ended (shutdown): nothing more comes; axum stops on its signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
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
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (grpc_tx, grpc_rx) = mpsc::channel::<io::Result<RepairAuthority<Conn>>>(QUEUED);
    let (http_tx, http_rx) = mpsc::channel(QUEUED);
    let grpc_server = grpc.serve_with_incoming_shutdown(
        tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(grpc_rx),
        stopped(),
    );
    let http_server = axum::serve(Http1Connections { rx: http_rx, addr }, http)
        .with_graceful_shutdown(stopped())
        .into_future();
    let stop = stopped();
    let mut connections = crate::tls::incoming(listener, tls, max_connections);
    let accept = tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            let conn = tokio::select! {
                () = &mut stop => return,
                conn = connections.recv() => match conn {
                    Some(conn) => conn,
                    None => return,
                },
            };
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
        async { http_server.await.map_err(|e| format!("HTTP: {e}")) },
    );
    accept.abort();
    served.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

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
