//! etcd's Watch service: a bidirectional stream on which a client creates and cancels
//! watchers; each watcher replays the history from its start revision, then follows new
//! changes as this member applies them.
//!
//! A watcher reads its events from the engine's history (the same records ranges read), so it
//! can never miss or reorder one: it remembers the next revision it owes the client, and after
//! each apply notification asks the engine for everything from there on.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, convert};
use crate::api::{Event, EventKind, PermissionType};
use crate::auth::AuthInfo;
use crate::mvcc;
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_server::Watch,
};

/// Responses queued per stream before a slow client holds its watchers back.
const STREAM_BUFFER: usize = 128;

type Responses = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// One watcher's definition.
struct Watcher {
    id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        match event.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        }
    }
}

#[tonic::async_trait]
impl Watch for Api {
    type WatchStream = Responses;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.caller(&request)?;
        Ok(Response::new(
            self.watch_requests(caller, request.into_inner()),
        ))
    }
}

impl Api {
    /// Serves one watch stream: `incoming` carries the client's requests (from gRPC or the
    /// JSON gateway), the returned stream its responses.
    ///
    /// As etcd's, a stream whose client has sent its last request (half-closed) goes on
    /// delivering events until the client stops listening; a broken request stream ends it.
    pub(super) fn watch_requests(
        &self,
        caller: Option<AuthInfo>,
        mut incoming: impl Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    ) -> Responses {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let api = self.clone();
        tokio::spawn(async move {
            let mut watchers: HashMap<i64, JoinHandle<()>> = HashMap::new();
            let mut next_id = 0i64;
            let mut reading = true;
            loop {
                let message = tokio::select! {
                    m = incoming.next(), if reading => m,
                    () = tx.closed() => break,
                };
                let request = match message {
                    Some(Ok(request)) => request,
                    // The client sent its last request: its watchers go on.
                    None => {
                        reading = false;
                        continue;
                    }
                    // The stream broke: stop every watcher.
                    Some(Err(_)) => break,
                };
                match request.request_union {
                    Some(RequestUnion::CreateRequest(create)) => {
                        let id = if create.watch_id > 0 {
                            create.watch_id
                        } else {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        if watchers.contains_key(&id) {
                            let refused = api.watch_response(id, |r| {
                                r.created = true;
                                r.canceled = true;
                                r.cancel_reason = "etcdserver: duplicate watch ID".into();
                            });
                            let _ = tx.send(Ok(refused)).await;
                            continue;
                        }
                        match api
                            .start_watcher(caller.clone(), id, create, tx.clone())
                            .await
                        {
                            Ok(handle) => {
                                watchers.insert(id, handle);
                            }
                            Err(refusal) => {
                                let _ = tx.send(Ok(refusal)).await;
                            }
                        }
                    }
                    Some(RequestUnion::CancelRequest(cancel)) => {
                        if let Some(handle) = watchers.remove(&cancel.watch_id) {
                            handle.abort();
                            let canceled =
                                api.watch_response(cancel.watch_id, |r| r.canceled = true);
                            let _ = tx.send(Ok(canceled)).await;
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        // etcd answers a progress request with the header alone, watch ID -1.
                        let _ = tx.send(Ok(api.watch_response(-1, |_| {}))).await;
                    }
                    None => {}
                }
            }
            for handle in watchers.into_values() {
                handle.abort();
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Box::pin(stream)
    }

    fn watch_response(&self, id: i64, fill: impl FnOnce(&mut WatchResponse)) -> WatchResponse {
        let mut response = WatchResponse {
            header: self.current_header(),
            watch_id: id,
            ..WatchResponse::default()
        };
        fill(&mut response);
        response
    }

    /// Checks the caller may read the range, confirms the watcher, and starts its task;
    /// a refusal comes back as the response to send instead.
    async fn start_watcher(
        &self,
        caller: Option<AuthInfo>,
        id: i64,
        create: WatchCreateRequest,
        tx: mpsc::Sender<Result<WatchResponse, Status>>,
    ) -> Result<JoinHandle<()>, WatchResponse> {
        let info = Self::local_identity(caller);
        if let Err(e) = self.node.store.check_permission(
            &info,
            &create.key,
            &create.range_end,
            PermissionType::Read,
        ) {
            return Err(self.watch_response(id, |r| {
                r.created = true;
                r.canceled = true;
                r.cancel_reason = Status::from(e).message().to_string();
            }));
        }
        let filters: Vec<Option<FilterType>> = create
            .filters
            .iter()
            .map(|f| FilterType::try_from(*f).ok())
            .collect();
        let watcher = Arc::new(Watcher {
            id,
            key: create.key,
            range_end: create.range_end,
            prev_kv: create.prev_kv,
            no_put: filters.contains(&Some(FilterType::Noput)),
            no_delete: filters.contains(&Some(FilterType::Nodelete)),
        });
        let current = self.node.store.status().revision;
        let start = if create.start_revision > 0 {
            create.start_revision
        } else {
            current + 1
        };
        if tx
            .send(Ok(self.watch_response(id, |r| r.created = true)))
            .await
            .is_err()
        {
            return Err(self.watch_response(id, |r| r.canceled = true));
        }
        let api = self.clone();
        Ok(tokio::spawn(
            async move { api.follow(watcher, start, tx).await },
        ))
    }

    /// Sends `watcher`'s events from revision `next` on, for as long as the client listens.
    async fn follow(
        &self,
        watcher: Arc<Watcher>,
        mut next: i64,
        tx: mpsc::Sender<Result<WatchResponse, Status>>,
    ) {
        let mut applied = self.node.applied_changes();
        loop {
            let store = self.node.store.clone();
            let (key, end) = (watcher.key.clone(), watcher.range_end.clone());
            let found =
                tokio::task::spawn_blocking(move || store.events_since(next, &key, &end)).await;
            let events = match found {
                Ok(Ok(events)) => events,
                Ok(Err(mvcc::Error::Compacted)) => {
                    let compacted = self.node.store.status().compact_revision;
                    let response = self.watch_response(watcher.id, |r| {
                        r.canceled = true;
                        r.compact_revision = compacted;
                        r.cancel_reason =
                            "etcdserver: mvcc: required revision has been compacted".into();
                    });
                    let _ = tx.send(Ok(response)).await;
                    return;
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            if let Some(last) = events.last() {
                next = last.kv.mod_revision + 1;
                let revision = last.kv.mod_revision;
                let events: Vec<_> = events
                    .into_iter()
                    .filter(|e| watcher.wants(e))
                    .map(|mut e| {
                        if !watcher.prev_kv {
                            e.prev_kv = None;
                        }
                        convert::event(e)
                    })
                    .collect();
                if !events.is_empty() {
                    let mut response = self.watch_response(watcher.id, |r| r.events = events);
                    if let Some(header) = response.header.as_mut() {
                        header.revision = revision;
                    }
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
            if applied.changed().await.is_err() {
                return;
            }
        }
    }
}
