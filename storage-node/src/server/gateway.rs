//! etcd's gRPC-gateway: the v3 API as JSON over HTTP/1.1 at `/v3/...` on the client port, for
//! the clients that never speak gRPC (curl, Patroni, APISIX, python `etcd3gw`).
//!
//! Every route decodes its JSON body into the service's protobuf request, calls the very
//! service method the gRPC server calls, and writes the answer as etcd's gateway does: proto3
//! JSON with the proto's own field names, bytes in base64, 64-bit integers as strings, fields
//! at their default value left out, unknown fields ignored (the `serde` code pbjson generates
//! from the protos, see `build.rs`). An empty body is the empty request. The caller's token is
//! the `Authorization` header, forwarded as etcd's gateway does.
//!
//! A failed call answers `{"error","message","code"}` (the gRPC code as a number) with the HTTP
//! status grpc-gateway gives that code. The streaming routes answer one `{"result": …}` line
//! per message; a failure while streaming is one last `{"error": {…}}` line. On `watch` and
//! `lease/keepalive` the body may carry several requests, one JSON value after another; a
//! watch goes on after the last one, until the client hangs up, as etcd's does.

use std::convert::Infallible;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use futures_util::{Stream, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

use super::Api;
use super::error::ServerError;
use crate::pb::etcdserverpb::{
    auth_server::Auth, cluster_server::Cluster, kv_server::Kv, lease_server::Lease,
    maintenance_server::Maintenance,
};

/// How much larger than `--max-request-bytes` a JSON body may be: base64 makes bytes a third
/// longer, and field names and quoting add more. The request itself is then held to the limit
/// by the service, as a gRPC request is.
const JSON_EXPANSION: usize = 2;

/// A route calling the unary method `$service::$method` of [`Api`].
macro_rules! unary {
    ($service:ident :: $method:ident) => {
        cors(post(
            |State(api): State<Api>, headers: HeaderMap, body: Bytes| async move {
                unary(api, &headers, &body, |api, request| async move {
                    <Api as $service>::$method(&api, request).await
                })
                .await
            },
        ))
    };
}

/// The gateway's routes, sharing the gRPC services' state.
pub fn router(api: Api) -> Router {
    let body_limit = api.max_request_bytes * JSON_EXPANSION + super::GRPC_OVERHEAD_BYTES;
    Router::new()
        .route("/v3/kv/range", unary!(Kv::range))
        .route("/v3/kv/put", unary!(Kv::put))
        .route("/v3/kv/deleterange", unary!(Kv::delete_range))
        .route("/v3/kv/txn", unary!(Kv::txn))
        .route("/v3/kv/compaction", unary!(Kv::compact))
        .route("/v3/watch", cors(post(watch)))
        .route("/v3/lease/grant", unary!(Lease::lease_grant))
        .route("/v3/lease/revoke", unary!(Lease::lease_revoke))
        .route("/v3/kv/lease/revoke", unary!(Lease::lease_revoke))
        .route("/v3/lease/keepalive", cors(post(keep_alive)))
        .route("/v3/lease/timetolive", unary!(Lease::lease_time_to_live))
        .route("/v3/kv/lease/timetolive", unary!(Lease::lease_time_to_live))
        .route("/v3/lease/leases", unary!(Lease::lease_leases))
        .route("/v3/kv/lease/leases", unary!(Lease::lease_leases))
        .route("/v3/cluster/member/add", unary!(Cluster::member_add))
        .route("/v3/cluster/member/remove", unary!(Cluster::member_remove))
        .route("/v3/cluster/member/update", unary!(Cluster::member_update))
        .route("/v3/cluster/member/list", unary!(Cluster::member_list))
        .route(
            "/v3/cluster/member/promote",
            unary!(Cluster::member_promote),
        )
        .route("/v3/maintenance/alarm", unary!(Maintenance::alarm))
        .route("/v3/maintenance/status", unary!(Maintenance::status))
        .route(
            "/v3/maintenance/defragment",
            unary!(Maintenance::defragment),
        )
        .route("/v3/maintenance/hash", unary!(Maintenance::hash))
        .route("/v3/maintenance/snapshot", cors(post(snapshot)))
        .route(
            "/v3/maintenance/transfer-leadership",
            unary!(Maintenance::move_leader),
        )
        .route("/v3/maintenance/downgrade", unary!(Maintenance::downgrade))
        .route("/v3/auth/enable", unary!(Auth::auth_enable))
        .route("/v3/auth/disable", unary!(Auth::auth_disable))
        .route("/v3/auth/status", unary!(Auth::auth_status))
        .route("/v3/auth/authenticate", unary!(Auth::authenticate))
        .route("/v3/auth/user/add", unary!(Auth::user_add))
        .route("/v3/auth/user/get", unary!(Auth::user_get))
        .route("/v3/auth/user/list", unary!(Auth::user_list))
        .route("/v3/auth/user/delete", unary!(Auth::user_delete))
        .route("/v3/auth/user/changepw", unary!(Auth::user_change_password))
        .route("/v3/auth/user/grant", unary!(Auth::user_grant_role))
        .route("/v3/auth/user/revoke", unary!(Auth::user_revoke_role))
        .route("/v3/auth/role/add", unary!(Auth::role_add))
        .route("/v3/auth/role/get", unary!(Auth::role_get))
        .route("/v3/auth/role/list", unary!(Auth::role_list))
        .route("/v3/auth/role/delete", unary!(Auth::role_delete))
        .route("/v3/auth/role/grant", unary!(Auth::role_grant_permission))
        .route("/v3/auth/role/revoke", unary!(Auth::role_revoke_permission))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response(allow_any_origin))
        .with_state(api)
}

/// Decodes the body, calls the method as the gRPC server would, encodes its answer.
async fn unary<Req, Resp, F, Fut>(api: Api, headers: &HeaderMap, body: &[u8], call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Api, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let request = match decode(body).and_then(|message| grpc_request(headers, message)) {
        Ok(request) => request,
        Err(status) => return error_reply(&status),
    };
    match call(api, request).await {
        Ok(response) => match serde_json::to_vec(response.get_ref()) {
            Ok(body) => json_response(StatusCode::OK, Body::from(body)),
            Err(e) => error_reply(&Status::internal(e.to_string())),
        },
        Err(status) => error_reply(&status),
    }
}

/// `/v3/watch`: the requests in the body, the responses as they come.
async fn watch(State(api): State<Api>, headers: HeaderMap, body: Body) -> Response {
    let limit = api.max_request_bytes * JSON_EXPANSION;
    let (caller, requests) = match bidi_requests(&headers, body, limit).await {
        Ok(request) => request,
        Err(status) => return error_reply(&status),
    };
    let token = match super::token(&caller) {
        Ok(token) => token,
        Err(status) => return stream_error_reply(&status),
    };
    if let Err(status) = api.identity(token.as_deref()) {
        return stream_error_reply(&status);
    }
    stream_reply(api.watch_requests(token, false, requests))
}

/// `/v3/lease/keepalive`: one renewal per request in the body, answered in order.
async fn keep_alive(State(api): State<Api>, headers: HeaderMap, body: Body) -> Response {
    let limit = api.max_request_bytes * JSON_EXPANSION;
    match bidi_requests(&headers, body, limit).await {
        Ok((_, requests)) => stream_reply(api.keep_alives(requests)),
        Err(status) => error_reply(&status),
    }
}

/// `/v3/maintenance/snapshot`: the snapshot's chunks, base64 in `blob`.
async fn snapshot(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match decode(&body).and_then(|message| grpc_request(&headers, message)) {
        Ok(request) => request,
        Err(status) => return error_reply(&status),
    };
    match Maintenance::snapshot(&api, request).await {
        Ok(chunks) => stream_reply(chunks.into_inner()),
        Err(status) => stream_error_reply(&status),
    }
}

/// A JSON body as a request message; an empty body is the empty request.
fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// `message` as the gRPC server receives it: with the caller's token, from `Authorization`.
fn grpc_request<T>(headers: &HeaderMap, message: T) -> Result<tonic::Request<T>, Status> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = headers.get(header::AUTHORIZATION) {
        let token = token
            .to_str()
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(ServerError::InvalidAuthToken)?;
        request.metadata_mut().insert("authorization", token);
    }
    Ok(request)
}

/// The requests of a bidirectional stream, read from the body as the client sends them, and
/// a request carrying the caller's token. The first request must decode (etcd answers a
/// malformed one with `Unknown`); after it, a malformed one ends the requests, as in etcd's
/// gateway, and what was started goes on.
async fn bidi_requests<T>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<
    (
        tonic::Request<()>,
        impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    ),
    Status,
>
where
    T: DeserializeOwned + Send + 'static,
{
    let caller = grpc_request(headers, ())?;
    let mut messages = JsonMessages {
        body: body.into_data_stream(),
        buf: Vec::new(),
        ended: false,
        limit,
    };
    let first = match messages.next::<T>().await {
        Some(Ok(first)) => Some(first),
        Some(Err(e)) => return Err(Status::unknown(e)),
        None => None,
    };
    let rest = futures_util::stream::unfold(messages, |mut messages| async move {
        match messages.next::<T>().await? {
            Ok(message) => Some((Ok(message), messages)),
            Err(e) => {
                tracing::debug!(error = %e, "gateway stream: malformed request; no more requests read");
                None
            }
        }
    });
    Ok((
        caller,
        Box::pin(futures_util::stream::iter(first.map(Ok)).chain(rest)),
    ))
}

/// JSON values read one after another from a request body as its bytes arrive.
struct JsonMessages {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    ended: bool,
    /// The most one value may take.
    limit: usize,
}

impl JsonMessages {
    /// The next value; `None` when the body ended with nothing more than whitespace.
    async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, String>> {
        loop {
            match self.buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(start) => {
                    let mut values =
                        serde_json::Deserializer::from_slice(&self.buf[start..]).into_iter::<T>();
                    match values.next() {
                        Some(Ok(value)) => {
                            let used = start + values.byte_offset();
                            self.buf.drain(..used);
                            return Some(Ok(value));
                        }
                        // Incomplete: wait for more of the body.
                        Some(Err(e)) if e.is_eof() && !self.ended => {}
                        Some(Err(e)) => return Some(Err(e.to_string())),
                        None => {}
                    }
                }
                None if self.ended => return None,
                None => self.buf.clear(),
            }
            if self.buf.len() > self.limit {
                return Some(Err(ServerError::RequestTooLarge.to_string()));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(e.to_string())),
                None => self.ended = true,
            }
        }
    }
}

/// A streaming answer: a `{"result": …}` line per message, and a failure as a last
/// `{"error": {…}}` line.
fn stream_reply<T, S>(messages: S) -> Response
where
    T: Serialize,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    #[derive(Serialize)]
    struct Line<'a, T> {
        result: &'a T,
    }
    let lines = futures_util::stream::unfold(
        (Box::pin(messages), false),
        |(mut messages, failed)| async move {
            if failed {
                return None;
            }
            let line = match messages.next().await? {
                Ok(message) => serde_json::to_vec(&Line { result: &message })
                    .map_err(|e| Status::internal(e.to_string())),
                Err(status) => Err(status),
            };
            let (mut line, failed) = match line {
                Ok(line) => (line, false),
                Err(status) => (stream_error(&status), true),
            };
            line.push(b'\n');
            Some((Ok::<_, Infallible>(Bytes::from(line)), (messages, failed)))
        },
    );
    json_response(StatusCode::OK, Body::from_stream(lines))
}

/// A streaming call that failed before its first message: the error line alone, with the
/// HTTP status of its code.
fn stream_error_reply(status: &Status) -> Response {
    let mut line = stream_error(status);
    line.push(b'\n');
    json_response(http_status(status.code()), Body::from(line))
}

/// The line grpc-gateway writes for a stream's error.
fn stream_error(status: &Status) -> Vec<u8> {
    let http = http_status(status.code());
    #[derive(Serialize)]
    struct Line<'a> {
        error: Failure<'a>,
    }
    #[derive(Serialize)]
    struct Failure<'a> {
        grpc_code: i32,
        http_code: u16,
        message: &'a str,
        http_status: &'a str,
    }
    let line = Line {
        error: Failure {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or_default(),
        },
    };
    serde_json::to_vec(&line).unwrap_or_default()
}

/// A failed unary call, as grpc-gateway writes it.
fn error_reply(status: &Status) -> Response {
    #[derive(Serialize)]
    struct Failure<'a> {
        error: &'a str,
        message: &'a str,
        code: i32,
    }
    let failure = Failure {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    let body = serde_json::to_vec(&failure).unwrap_or_default();
    json_response(http_status(status.code()), Body::from(body))
}

fn json_response(status: StatusCode, body: Body) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The HTTP status grpc-gateway (v1, which etcd 3.4 and 3.5 use) answers a gRPC code with.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A route that also answers CORS preflight requests.
fn cors(route: MethodRouter<Api>) -> MethodRouter<Api> {
    route.options(|| async { StatusCode::OK })
}

/// etcd's default `--cors '*'`: any origin may call the gateway from a browser.
async fn allow_any_origin(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "POST, GET, OPTIONS, PUT, DELETE",
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "accept, content-type, authorization",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_grpc_gateway_statuses() {
        assert_eq!(http_status(Code::OutOfRange), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    async fn values(chunks: &[&str]) -> Vec<Result<serde_json::Value, String>> {
        let chunks: Vec<Result<Bytes, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c.as_bytes())))
            .collect();
        let mut messages = JsonMessages {
            body: Body::from_stream(futures_util::stream::iter(chunks)).into_data_stream(),
            buf: Vec::new(),
            ended: false,
            limit: 1024,
        };
        let mut out = Vec::new();
        while let Some(value) = messages.next::<serde_json::Value>().await {
            let failed = value.is_err();
            out.push(value);
            if failed {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn body_values_are_read_across_chunks_and_whitespace() {
        let read = values(&["{\"a\":", "1}\n  {\"b\"", ":2}", "\n", "  "]).await;
        assert_eq!(
            read,
            vec![
                Ok(serde_json::json!({"a": 1})),
                Ok(serde_json::json!({"b": 2}))
            ]
        );
        assert!(values(&[]).await.is_empty());
    }

    #[tokio::test]
    async fn a_truncated_or_malformed_value_is_an_error() {
        let read = values(&["{\"a\":1}", "{\"b\":"]).await;
        assert_eq!(read.len(), 2);
        assert!(
            read[1].as_ref().is_err_and(|e| e.contains("EOF")),
            "{read:?}"
        );
        let read = values(&["{bad"]).await;
        assert!(read[0].is_err(), "{read:?}");
    }

    #[tokio::test]
    async fn a_value_larger_than_the_limit_is_refused() {
        let big = format!("{{\"a\":\"{}", "x".repeat(2000));
        let read = values(&[&big, "\"}"]).await;
        assert!(
            read[0].as_ref().is_err_and(|e| e.contains("too large")),
            "{read:?}"
        );
    }

    /// Hostile JSON bodies decoded as the gateway's requests.
    mod fuzz {
        use super::*;
        use crate::fuzzing::{self, check_txn, config};
        use crate::pb::etcdserverpb as pb;
        use proptest::prelude::*;

        /// Decodes `body` as a `T`: a message or an InvalidArgument status, nothing else.
        fn decodes_or_is_refused<T: DeserializeOwned + Default>(
            body: &[u8],
        ) -> Result<Option<T>, TestCaseError> {
            match decode::<T>(body) {
                Ok(message) => Ok(Some(message)),
                Err(status) => {
                    prop_assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
                    Ok(None)
                }
            }
        }

        /// Decodes `body` as each request of the unary routes; a txn that decodes is also
        /// converted and validated.
        fn take_as_every_request(body: &[u8]) -> Result<(), TestCaseError> {
            macro_rules! decode_only {
                ($($request:ty),* $(,)?) => {
                    $( decodes_or_is_refused::<$request>(body)?; )*
                };
            }
            decode_only!(
                pb::RangeRequest,
                pb::PutRequest,
                pb::DeleteRangeRequest,
                pb::CompactionRequest,
                pb::WatchRequest,
                pb::LeaseGrantRequest,
                pb::LeaseKeepAliveRequest,
                pb::LeaseTimeToLiveRequest,
                pb::MemberAddRequest,
                pb::MemberUpdateRequest,
                pb::AlarmRequest,
                pb::MoveLeaderRequest,
                pb::AuthenticateRequest,
                pb::AuthUserAddRequest,
                pb::AuthRoleGrantPermissionRequest,
            );
            if let Some(txn) = decodes_or_is_refused::<pb::TxnRequest>(body)? {
                check_txn(txn)?;
            }
            Ok(())
        }

        /// Text made of JSON's punctuation, digits, field names and base64, which parses
        /// further than arbitrary bytes do.
        fn json_like() -> impl Strategy<Value = Vec<u8>> {
            let token = prop_oneof![
                Just("{"),
                Just("}"),
                Just("["),
                Just("]"),
                Just(":"),
                Just(","),
                Just("\""),
                Just("\"key\""),
                Just("\"range_end\""),
                Just("\"success\""),
                Just("\"request_txn\""),
                Just("\"request_put\""),
                Just("\"sort_order\""),
                Just("\"DESCEND\""),
                Just("\"YQ==\""),
                Just("\"-9223372036854775809\""),
                Just("1e999"),
                Just("null"),
                Just("-0"),
                Just("\"\\ud800\""),
            ];
            proptest::collection::vec(token, 0..48).prop_map(|tokens| tokens.concat().into_bytes())
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn arbitrary_bodies_decode_or_are_refused(
                body in prop_oneof![fuzzing::bytes(256), json_like()],
            ) {
                take_as_every_request(&body)?;
            }

            #[test]
            fn hostile_txns_as_json_decode_to_themselves_and_damaged_ones_are_refused(
                txn in fuzzing::wire_txn(),
                edits in fuzzing::edits(),
            ) {
                // pbjson writes no unknown enum number (etcd's gateway writes none either).
                let Ok(json) = serde_json::to_vec(&txn) else {
                    return Ok(());
                };
                let decoded = decodes_or_is_refused::<pb::TxnRequest>(&json)?;
                prop_assert_eq!(decoded.as_ref(), Some(&txn));
                take_as_every_request(&fuzzing::mutate(json, &edits))?;
            }
        }

        /// A txn as JSON, nesting `depth` txns.
        fn nested(depth: usize) -> String {
            let open = r#"{"success":[{"request_txn":"#.repeat(depth);
            format!(
                r#"{open}{{"success":[{{"request_put":{{"key":"YQ=="}}}}]}}{}"#,
                "}]}".repeat(depth)
            )
        }

        #[test]
        fn json_nested_past_the_parsers_limit_is_refused() {
            // serde_json stops at 128 levels: three per txn (txn, branch, operation), four for
            // the innermost with its put.
            for depth in [0, 1, 41] {
                let txn = decode::<pb::TxnRequest>(nested(depth).as_bytes()).expect("decodes");
                check_txn(txn).expect("accepted");
            }
            for depth in [42, 1000, 100_000] {
                let refused = decode::<pb::TxnRequest>(nested(depth).as_bytes());
                assert_eq!(refused.expect_err("refused").code(), Code::InvalidArgument);
            }
            let brackets = "[".repeat(100_000);
            assert!(decode::<pb::TxnRequest>(brackets.as_bytes()).is_err());
        }
    }
}
