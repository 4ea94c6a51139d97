//! The member's `/metrics`: Mend's own `mend_*` series beside etcd's names (`etcd_server_*`,
//! `etcd_mvcc_*`, `etcd_disk_*`, `etcd_network_*`, `etcd_debugging_*`, `grpc_server_*`,
//! `process_*`), in Prometheus' text format as etcd serves it, through `prometheus-client`;
//! and the tower layer that counts and times the calls of the client port's gRPC services.
//!
//! Figures the member's status holds (leader, indexes, sizes, AuthRevision, counters) are read
//! when `/metrics` is scraped, by [`Member`]; the instruments fed as things happen come from
//! [`crate::metrics`].
//!
//! The gRPC metrics follow the Go gRPC middleware etcd uses: `grpc_server_started_total` when a
//! call arrives, `grpc_server_handled_total` and `grpc_server_handling_seconds` when its status
//! is known: from the `grpc-status` header of a trailers-only answer (how errors of unary calls
//! are sent), otherwise from the trailers that end the response, which for a stream (Watch,
//! LeaseKeepAlive, Snapshot) is when the stream ends. A call whose answer the client abandons
//! before its status counts as `Canceled`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::metrics::{Grpc, Method};
use crate::raft::node::{Node, RaftStatus};

/// The `Content-Type` of `/metrics`: Prometheus' text format 0.0.4, which etcd serves.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every series of `node`, in Prometheus' text format. Reads the store (and may wait for an
/// apply in progress): call it off the async threads.
pub fn render(node: &Node) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Member::read(node)));
    node.instruments().register(&mut registry);
    registry.register_collector(Box::new(crate::metrics::Process));
    let mut out = String::new();
    // Writing into a String cannot fail; a collector's error would leave the text cut short,
    // and none of ours returns one.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// What one scrape reads from the member's status.
#[derive(Debug)]
struct Member {
    id: u64,
    status: crate::Status,
    raft: RaftStatus,
    db_size_in_use: Option<u64>,
    leader_changes: u64,
    proposals_committed_here: u64,
    proposals_failed: u64,
    proposals_pending: u64,
}

impl Member {
    fn read(node: &Node) -> Member {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = node.counters();
        Member {
            id: node.id,
            status: node.store.status(),
            raft: node.raft_status(),
            db_size_in_use: node.store.db_size_in_use().ok(),
            leader_changes: counters.leader_changes.load(Relaxed),
            proposals_committed_here: counters.proposals_committed.load(Relaxed),
            proposals_failed: counters.proposals_failed.load(Relaxed),
            proposals_pending: counters.proposals_pending.load(Relaxed),
        }
    }
}

/// Writes one gauge, or one counter (whose name gets `_total` from the encoder), without
/// labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(metric),
        _ => ConstGauge::new(value).encode(metric),
    }
}

impl Collector for Member {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let (status, raft) = (&self.status, &self.raft);
        let e = &mut encoder;

        // Mend's own series: names, types and meaning are relied on by alerts, the operator
        // and tests; keep them.
        for (name, help, kind, value) in [
            (
                "mend_auth_revision",
                "AuthRevision of this member's auth store.",
                Gauge,
                status.auth_revision,
            ),
            (
                "mend_consistent_index",
                "Index of the last entry whose effects are persisted.",
                Gauge,
                status.consistent_index.index,
            ),
            (
                "mend_applied_index",
                "Index of the last applied entry.",
                Gauge,
                raft.applied_index,
            ),
            ("mend_raft_term", "Current raft term.", Gauge, raft.term),
            (
                "mend_raft_index",
                "Index of the last entry in this member's raft log.",
                Gauge,
                raft.last_log_index,
            ),
            (
                "mend_raft_snapshot_index",
                "Last log index covered by this member's latest snapshot (built or installed).",
                Gauge,
                raft.snapshot_index,
            ),
            (
                "mend_mvcc_revision",
                "Current revision of the key-value store.",
                Gauge,
                status.revision.max(0) as u64,
            ),
            (
                "mend_mvcc_keys",
                "Live keys in the key-value store.",
                Gauge,
                status.key_count,
            ),
            (
                "mend_db_size_bytes",
                "Size of the engine's database file.",
                Gauge,
                status.db_size,
            ),
            (
                "mend_is_leader",
                "1 when this member is the raft leader.",
                Gauge,
                u64::from(raft.is_leader),
            ),
            (
                "mend_has_leader",
                "1 when this member knows a leader.",
                Gauge,
                u64::from(raft.leader != 0),
            ),
            (
                "mend_leader_changes_seen",
                "Leader changes this member has seen since it started.",
                Counter,
                self.leader_changes,
            ),
            (
                "mend_proposals_committed",
                "Proposals from this member's clients that were applied here.",
                Counter,
                self.proposals_committed_here,
            ),
            (
                "mend_proposals_failed",
                "Proposals from this member's clients that failed or timed out.",
                Counter,
                self.proposals_failed,
            ),
            (
                "mend_unsafe_reproduce_etcd_11651",
                "1 when the fault switch reproducing etcd issue 11651 is on.",
                Gauge,
                u64::from(status.unsafe_reproduce_etcd_11651),
            ),
        ] {
            single(e, name, help, kind, value)?;
        }
        let mut rejections = e.encode_descriptor(
            "mend_apply_rejections",
            "Entries applied as refusals, by reason.",
            None,
            Counter,
        )?;
        for (reason, count) in &status.rejections {
            ConstCounter::new(*count).encode(rejections.encode_family(&[("reason", *reason)])?)?;
        }

        // etcd's names, types and meaning (etcd's server, mvcc and auth metrics).
        for (name, help, kind, value) in [
            (
                "etcd_server_has_leader",
                "1 when this member knows a leader, 0 otherwise.",
                Gauge,
                u64::from(raft.leader != 0),
            ),
            (
                "etcd_server_is_leader",
                "1 when this member is the leader, 0 otherwise.",
                Gauge,
                u64::from(raft.is_leader),
            ),
            (
                "etcd_server_leader_changes_seen",
                "Leader changes this member has seen.",
                Counter,
                self.leader_changes,
            ),
            (
                "etcd_server_proposals_committed_total",
                "Index of the last raft entry this member knows to be committed.",
                Gauge,
                raft.committed_index,
            ),
            (
                "etcd_server_proposals_applied_total",
                "Index of the last raft entry this member applied.",
                Gauge,
                raft.applied_index,
            ),
            (
                "etcd_server_proposals_pending",
                "Proposals of this member's clients waiting to be committed and applied.",
                Gauge,
                self.proposals_pending,
            ),
            (
                "etcd_server_proposals_failed",
                "Proposals of this member's clients that failed or timed out.",
                Counter,
                self.proposals_failed,
            ),
            (
                "etcd_mvcc_db_total_size_in_bytes",
                "Size of the backend's database file in bytes.",
                Gauge,
                status.db_size,
            ),
            (
                "etcd_debugging_auth_revision",
                "AuthRevision of this member's auth store.",
                Gauge,
                status.auth_revision,
            ),
            (
                "etcd_debugging_mvcc_keys_total",
                "Live keys in the key-value store.",
                Gauge,
                status.key_count,
            ),
        ] {
            single(e, name, help, kind, value)?;
        }
        if let Some(in_use) = self.db_size_in_use {
            single(
                e,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Bytes of the backend's database file in pages that hold data.",
                Gauge,
                in_use,
            )?;
        }
        // The quota in bytes, negative when there is none (etcd's meaning).
        let quota = status.quota_bytes.map_or(-1, |b| b as i64);
        ConstGauge::new(quota).encode(e.encode_descriptor(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            None,
            Gauge,
        )?)?;
        let id = format!("{:x}", self.id);
        ConstGauge::new(1).encode(
            e.encode_descriptor(
                "etcd_server_id",
                "This member's ID (hex) in its server_id label; the value is always 1.",
                None,
                Gauge,
            )?
            .encode_family(&[("server_id", id.as_str())])?,
        )?;
        ConstGauge::new(1).encode(
            e.encode_descriptor(
                "etcd_server_version",
                "The etcd API version this member serves, in its server_version label.",
                None,
                Gauge,
            )?
            .encode_family(&[("server_version", super::maintenance::VERSION)])?,
        )?;
        Ok(())
    }
}

/// Counts and times the calls of the etcd services it wraps (a layer on the client port's
/// gRPC router); requests for anything but an etcd API method pass through uncounted.
#[derive(Clone, Debug)]
pub struct GrpcLayer {
    grpc: Grpc,
}

impl GrpcLayer {
    /// A layer recording into `grpc`.
    pub fn new(grpc: Grpc) -> GrpcLayer {
        GrpcLayer { grpc }
    }
}

impl<S> tower_layer::Layer<S> for GrpcLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            grpc: self.grpc.clone(),
        }
    }
}

/// A gRPC service whose etcd API calls are counted and timed.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    grpc: Grpc,
}

/// One call being measured, until its status is known. Dropped before that, it counts as
/// `Canceled`: the client went away (or reset its stream) before the answer ended.
struct Call {
    grpc: Grpc,
    method: Method,
    started: Instant,
    done: bool,
}

impl Call {
    fn start(grpc: Grpc, method: Method) -> Call {
        grpc.started(method);
        Call {
            grpc,
            method,
            started: Instant::now(),
            done: false,
        }
    }

    /// Records the call's status (a `grpc-status` value) once.
    fn finish(&mut self, code: &'static str) {
        if !self.done {
            self.done = true;
            self.grpc
                .handled(self.method, code, self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

/// The status a `grpc-status` header or trailer carries.
fn status(headers: &http::HeaderMap) -> Option<&'static str> {
    headers
        .get("grpc-status")
        .map(|code| crate::metrics::code_name(code.as_bytes()))
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Metered<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<MeteredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = crate::metrics::method(request.uri().path())
            .map(|method| Call::start(self.grpc.clone(), method));
        // The clone that was polled ready serves this request; the fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut call = call;
            let response = inner.call(request).await?;
            let (parts, body) = response.into_parts();
            if let (Some(call), Some(code)) = (call.as_mut(), status(&parts.headers)) {
                // A trailers-only answer: the status is in the headers, nothing follows.
                call.finish(code);
            }
            Ok(http::Response::from_parts(
                parts,
                MeteredBody { inner: body, call },
            ))
        })
    }
}

/// A response body that records its call's status from the trailers that end it.
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(call) = this.call.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame.trailers_ref().and_then(status) {
                        call.finish(code);
                    }
                }
                // A body that fails or ends without a status: gRPC reads either as Unknown.
                Poll::Ready(Some(Err(_)) | None) => call.finish("Unknown"),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower_layer::Layer;
    use tower_service::Service;

    /// Answers as tonic does: errors trailers-only, successes with a body and trailers.
    #[derive(Clone)]
    struct Answer(Option<u8>);

    impl Service<http::Request<()>> for Answer {
        type Response = http::Response<Trailered>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut response = http::Response::new(Trailered {
                data: true,
                trailers: true,
            });
            if let Some(code) = self.0 {
                response
                    .headers_mut()
                    .insert("grpc-status", code.to_string().parse().expect("header"));
                response.body_mut().data = false;
                response.body_mut().trailers = false;
            }
            std::future::ready(Ok(response))
        }
    }

    /// A body of one data frame (if any) then `grpc-status: 0` trailers (if asked).
    struct Trailered {
        data: bool,
        trailers: bool,
    }

    impl Body for Trailered {
        type Data = tonic::codegen::Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<tonic::codegen::Bytes>, Infallible>>> {
            if std::mem::take(&mut self.data) {
                return Poll::Ready(Some(Ok(Frame::data(tonic::codegen::Bytes::from_static(
                    b"x",
                )))));
            }
            if std::mem::take(&mut self.trailers) {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            Poll::Ready(None)
        }
    }

    fn rendered(grpc: &Grpc) -> String {
        let mut registry = Registry::default();
        crate::metrics::Metrics {
            wal_fsync: crate::metrics::disk_durations(),
            backend_commit: crate::metrics::disk_durations(),
            peer_round_trip: crate::metrics::round_trip_family(),
            grpc: grpc.clone(),
        }
        .register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("encode");
        out
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .body(())
            .expect("request")
    }

    async fn drain(mut body: MeteredBody<Trailered>) {
        while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .is_some()
        {}
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_code_at_their_status() {
        let grpc = Grpc::default();
        let layer = GrpcLayer::new(grpc.clone());
        let put = r#"{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
        let started = format!("grpc_server_started_total{put}");
        let handled_ok = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
        assert_eq!(value(&rendered(&grpc), &started).as_deref(), Some("0"));

        let response = layer
            .layer(Answer(None))
            .call(request("/etcdserverpb.KV/Put"))
            .await
            .expect("answer");
        let text = rendered(&grpc);
        assert_eq!(value(&text, &started).as_deref(), Some("1"));
        assert_eq!(
            value(&text, handled_ok).as_deref(),
            Some("0"),
            "no status before the trailers"
        );
        drain(response.into_body()).await;
        let text = rendered(&grpc);
        assert_eq!(value(&text, handled_ok).as_deref(), Some("1"));
        assert_eq!(
            value(&text, &format!("grpc_server_handling_seconds_count{put}")).as_deref(),
            Some("1")
        );

        // A trailers-only error is counted at once, under its code's Go name.
        let range_out_of_range = r#"grpc_server_handled_total{grpc_code="OutOfRange",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
        let response = layer
            .layer(Answer(Some(11)))
            .call(request("/etcdserverpb.KV/Range"))
            .await
            .expect("answer");
        assert_eq!(
            value(&rendered(&grpc), range_out_of_range).as_deref(),
            Some("1")
        );
        drain(response.into_body()).await;
        assert_eq!(
            value(&rendered(&grpc), range_out_of_range).as_deref(),
            Some("1"),
            "counted once"
        );

        // A stream the client abandons before its end counts as Canceled.
        let watch_canceled = r#"grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}"#;
        drop(
            layer
                .layer(Answer(None))
                .call(request("/etcdserverpb.Watch/Watch"))
                .await
                .expect("answer"),
        );
        assert_eq!(
            value(&rendered(&grpc), watch_canceled).as_deref(),
            Some("1")
        );

        // Anything but an etcd method passes through uncounted.
        let before = rendered(&grpc);
        drain(
            layer
                .layer(Answer(None))
                .call(request("/grpc.health.v1.Health/Check"))
                .await
                .expect("answer")
                .into_body(),
        )
        .await;
        assert_eq!(rendered(&grpc), before);
    }
}
