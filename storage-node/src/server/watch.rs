//! etcd's Watch service: a bidirectional stream on which a client creates and cancels
//! watchers and asks for progress. The watchers themselves live in the member's watchable
//! store ([`crate::watchers`]), which sends their events; this file turns requests into
//! watchers and everything the stream is sent into `WatchResponse`s.
//!
//! As in etcd: permissions are checked per watcher with the caller's identity at that moment
//! (its token, re-read, so an auth change on another stream does not fail later watchers with
//! an old AuthRevision); a stream whose client asked for a leader (`hasleader` metadata) ends
//! with "no leader" once this member has had none for a few election timeouts; a large
//! response is split in fragments for clients that accept them; and a stream whose client has
//! sent its last request goes on until the client stops listening.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt as _;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, convert};
use crate::api::PermissionType;
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_server::Watch,
};
use crate::watchers::{Delivery, Spec, WatchStream};

/// Messages queued per stream; a client slower than this moves its watchers behind (they
/// then catch up from history) instead of holding up applies.
const STREAM_BUFFER: usize = 128;

/// Election timeouts without a leader after which a `hasleader` stream ends (etcd's count).
const LEADERLESS_TIMEOUTS: u32 = 3;

type Responses = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for Api {
    type WatchStream = Responses;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let token = super::token(&request)?;
        // Refuse a token that is bad now, as etcd's interceptor does, before any watcher.
        self.identity(token.as_deref())?;
        let require_leader = request
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v == "true");
        let election_timeout =
            Duration::from_millis(self.node.raft.config().election_timeout_min.max(10));
        if require_leader
            && !self
                .node
                .has_live_leader(election_timeout * LEADERLESS_TIMEOUTS)
        {
            return Err(super::error::ServerError::NoLeader.into());
        }
        Ok(Response::new(self.watch_requests(
            token,
            require_leader,
            request.into_inner(),
        )))
    }
}

impl Api {
    /// Serves one watch stream: `incoming` carries the client's requests (from gRPC or the
    /// JSON gateway), the returned stream its responses.
    pub(super) fn watch_requests(
        &self,
        token: Option<String>,
        require_leader: bool,
        mut incoming: impl Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    ) -> Responses {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (abort_tx, abort_rx) = oneshot::channel();
        let stream = self.node.listeners().watchers.open(tx.clone());
        let api = self.clone();
        tokio::spawn(async move {
            let election_timeout =
                Duration::from_millis(api.node.raft.config().election_timeout_min.max(10));
            let mut leader_check = tokio::time::interval(election_timeout);
            let mut leaderless = 0;
            let mut next_id = 0i64;
            let mut reading = true;
            loop {
                tokio::select! {
                    message = incoming.next(), if reading => match message {
                        Some(Ok(request)) => {
                            let handled = api
                                .handle_watch_request(&stream, &tx, token.as_deref(), &mut next_id, request)
                                .await;
                            if handled.is_err() {
                                break;
                            }
                        }
                        // The client sent its last request: its watchers go on.
                        None => reading = false,
                        // The stream broke.
                        Some(Err(_)) => break,
                    },
                    () = tx.closed() => break,
                    _ = leader_check.tick(), if require_leader => {
                        leaderless = match api.node.has_live_leader(election_timeout) {
                            false => leaderless + 1,
                            true => 0,
                        };
                        if leaderless > LEADERLESS_TIMEOUTS {
                            let _ = abort_tx.send(super::error::ServerError::NoLeader.into());
                            break;
                        }
                    }
                }
            }
            // Dropping the stream removes its watchers.
            drop(stream);
        });
        let api = self.clone();
        // Responses in the order they were queued; the stream ends after an abort.
        let responses = futures_util::stream::unfold(
            (rx, Some(abort_rx), VecDeque::new(), false),
            move |(mut rx, mut abort, mut ready, ended)| {
                let api = api.clone();
                async move {
                    loop {
                        if let Some(response) = ready.pop_front() {
                            return Some((Ok(response), (rx, abort, ready, ended)));
                        }
                        if ended {
                            return None;
                        }
                        let delivery = match abort.as_mut() {
                            Some(aborted) => tokio::select! {
                                biased;
                                status = aborted => match status {
                                    Ok(status) => return Some((Err(status), (rx, None, ready, true))),
                                    // The request loop ended without aborting: drain the queue.
                                    Err(_) => {
                                        abort = None;
                                        continue;
                                    }
                                },
                                delivery = rx.recv() => delivery?,
                            },
                            None => rx.recv().await?,
                        };
                        ready.extend(api.watch_responses(delivery));
                    }
                }
            },
        );
        Box::pin(responses)
    }

    /// Acts on one request of a stream; an error means the client is gone.
    async fn handle_watch_request(
        &self,
        stream: &WatchStream,
        tx: &mpsc::Sender<Delivery>,
        token: Option<&str>,
        next_id: &mut i64,
        request: WatchRequest,
    ) -> Result<(), ClientGone> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let watch_id = if create.watch_id > 0 {
                    create.watch_id
                } else {
                    // etcd's automatic IDs: the next one no watcher on the stream has.
                    while stream.contains(*next_id) {
                        *next_id += 1;
                    }
                    *next_id += 1;
                    *next_id - 1
                };
                let refused = match self.check_watch_permitted(token, &create) {
                    Err(reason) => Some(reason),
                    Ok(()) => {
                        let permit = tx.reserve().await.map_err(|_| ClientGone)?;
                        let created = stream.watch(spec(watch_id, create), permit);
                        created.err().map(|refusal| refusal.to_string())
                    }
                };
                if let Some(reason) = refused {
                    // As etcd: a refused create names no watcher (ID -1).
                    let refusal = Delivery::Refused {
                        watch_id: -1,
                        reason,
                    };
                    return send(tx, refusal).await;
                }
            }
            Some(RequestUnion::CancelRequest(cancel)) if stream.cancel(cancel.watch_id) => {
                let watch_id = cancel.watch_id;
                return send(tx, Delivery::Canceled { watch_id }).await;
            }
            Some(RequestUnion::ProgressRequest(_)) => stream.request_progress(),
            // Canceling a watcher the stream does not have: nothing to say, as in etcd.
            Some(RequestUnion::CancelRequest(_)) | None => {}
        }
        Ok(())
    }

    /// Whether the caller (its token as it stands now) may read the watched range; the
    /// refusal's words otherwise.
    fn check_watch_permitted(
        &self,
        token: Option<&str>,
        create: &WatchCreateRequest,
    ) -> Result<(), String> {
        let info = self
            .identity(token)
            .map(Self::local_identity)
            .map_err(|s| s.message().to_string())?;
        self.node
            .store
            .check_permission(&info, &create.key, &create.range_end, PermissionType::Read)
            .map_err(|e| Status::from(e).message().to_string())
    }

    /// The responses a delivery makes: one, or its fragments.
    fn watch_responses(&self, delivery: Delivery) -> Vec<WatchResponse> {
        let response = |watch_id, revision, fill: &dyn Fn(&mut WatchResponse)| {
            let mut r = WatchResponse {
                header: self.header(revision),
                watch_id,
                ..WatchResponse::default()
            };
            fill(&mut r);
            r
        };
        // Only a refusal or a cancel is answered at the current revision.
        let current = || self.node.store.revisions().0;
        match delivery {
            Delivery::Created { watch_id, revision } => {
                vec![response(watch_id, revision, &|r| r.created = true)]
            }
            Delivery::Refused { watch_id, reason } => vec![response(watch_id, current(), &|r| {
                r.created = true;
                r.canceled = true;
                r.cancel_reason = reason.clone();
            })],
            Delivery::Canceled { watch_id } => {
                vec![response(watch_id, current(), &|r| r.canceled = true)]
            }
            Delivery::Compacted {
                watch_id,
                compact_revision,
            } => vec![response(watch_id, 0, &|r| {
                r.canceled = true;
                r.compact_revision = compact_revision;
            })],
            Delivery::Progress { watch_id, revision } => {
                vec![response(watch_id, revision, &|_| {})]
            }
            Delivery::Events {
                watch_id,
                revision,
                events,
                fragment,
            } => {
                let whole = WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    events: events.into_iter().map(convert::event).collect(),
                    ..WatchResponse::default()
                };
                if fragment {
                    fragments(whole, self.max_request_bytes)
                } else {
                    vec![whole]
                }
            }
        }
    }
}

/// The stream's client stopped listening.
struct ClientGone;

async fn send(tx: &mpsc::Sender<Delivery>, delivery: Delivery) -> Result<(), ClientGone> {
    tx.send(delivery).await.map_err(|_| ClientGone)
}

/// A watcher's definition from its create request.
fn spec(watch_id: i64, create: WatchCreateRequest) -> Spec {
    let filters: Vec<Option<FilterType>> = create
        .filters
        .iter()
        .map(|f| FilterType::try_from(*f).ok())
        .collect();
    Spec {
        watch_id,
        key: create.key,
        range_end: create.range_end,
        start_revision: create.start_revision.max(0),
        prev_kv: create.prev_kv,
        no_put: filters.contains(&Some(FilterType::Noput)),
        no_delete: filters.contains(&Some(FilterType::Nodelete)),
        progress_notify: create.progress_notify,
        fragment: create.fragment,
    }
}

/// `whole` split as etcd splits it: while it is larger than `limit` and has more than one
/// event, events go into responses of about `limit` bytes, each but the last marked
/// `fragment`.
fn fragments(whole: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if whole.encoded_len() < limit || whole.events.len() < 2 {
        return vec![whole];
    }
    let mut out = Vec::new();
    let mut current = WatchResponse {
        events: Vec::new(),
        ..whole.clone()
    };
    let mut size = current.encoded_len();
    for event in whole.events {
        let event_size = event.encoded_len() + 8;
        if !current.events.is_empty() && size + event_size > limit {
            let next = WatchResponse {
                events: Vec::new(),
                ..current.clone()
            };
            current.fragment = true;
            out.push(std::mem::replace(&mut current, next));
            size = current.encoded_len();
        }
        size += event_size;
        current.events.push(event);
    }
    out.push(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::{Event, KeyValue};

    #[test]
    fn a_large_response_is_split_in_fragments_all_but_the_last_marked() {
        let event = |i: u8| Event {
            kv: Some(KeyValue {
                key: vec![i],
                value: vec![0; 100],
                ..KeyValue::default()
            }),
            ..Event::default()
        };
        let whole = WatchResponse {
            watch_id: 3,
            events: (0..10).map(event).collect(),
            ..WatchResponse::default()
        };
        let parts = fragments(whole.clone(), 350);
        assert!(parts.len() > 1, "{}", parts.len());
        assert!(
            parts
                .iter()
                .all(|p| p.watch_id == 3 && !p.events.is_empty())
        );
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts[parts.len() - 1].fragment);
        let events: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(events, whole.events);
        assert_eq!(fragments(whole.clone(), 1 << 20), vec![whole]);
    }
}
