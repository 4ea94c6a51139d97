//! Watch semantics on etcd's model, through the gRPC API, checked against etcd 3.4 where it
//! shares the behaviour: a synced watcher survives a compaction past its start; progress
//! notifications arrive at the configured interval; a progress request is never answered
//! ahead of the events; a `hasleader` stream ends when its member loses the leader; events
//! stay complete and in order under writes through every member; a client that does not
//! read holds up no write.

mod cluster;

use std::time::Duration;

use cluster::{Cluster, DEADLINE, Etcd, Options};
use storage_node::pb::etcdserverpb::kv_client::KvClient;
use storage_node::pb::etcdserverpb::watch_client::WatchClient;
use storage_node::pb::etcdserverpb::watch_request::RequestUnion;
use storage_node::pb::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use storage_node::pb::mvccpb::Event;
use tokio::sync::mpsc;
use tonic::transport::Channel;

async fn channel(endpoint: &str) -> Channel {
    // Every call bounded (for a stream, until its response headers): no test waits forever.
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(DEADLINE)
        .timeout(DEADLINE)
        .connect()
        .await
        .expect("connect")
}

/// One watch stream.
struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl Stream {
    /// Opens a stream whose first request creates a watcher; returns the watcher's ID too.
    /// (etcd sends the response headers with the first response, so the call would not return
    /// before a request was sent.)
    async fn open(
        channel: Channel,
        require_leader: bool,
        first: WatchCreateRequest,
    ) -> (Stream, i64) {
        let (requests, rx) = mpsc::channel(16);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(first)),
        };
        requests
            .send(create)
            .await
            .expect("queue the first request");
        let mut request = tonic::Request::new(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        );
        if require_leader {
            request
                .metadata_mut()
                .insert("hasleader", "true".parse().expect("metadata"));
        }
        let responses = WatchClient::new(channel)
            .watch(request)
            .await
            .expect("watch")
            .into_inner();
        let mut stream = Stream {
            requests,
            responses,
        };
        let created = stream.next().await.expect("created");
        assert!(created.created && !created.canceled, "{created:?}");
        (stream, created.watch_id)
    }

    async fn send(&self, request: RequestUnion) {
        let request = WatchRequest {
            request_union: Some(request),
        };
        self.requests.send(request).await.expect("send");
    }

    /// The next response; `Err` when the stream ended with an error.
    async fn next(&mut self) -> Result<WatchResponse, tonic::Status> {
        match tokio::time::timeout(DEADLINE, self.responses.message()).await {
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => panic!("the watch stream ended"),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no watch response within {DEADLINE:?}"),
        }
    }

    /// Events until `count` have arrived.
    async fn events(&mut self, count: usize) -> Vec<Event> {
        let mut events = Vec::new();
        while events.len() < count {
            let response = self.next().await.expect("response");
            assert!(!response.canceled, "canceled: {response:?}");
            events.extend(response.events);
        }
        events
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    let header = kv
        .put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })
        .await
        .expect("put")
        .into_inner()
        .header;
    header.expect("header").revision
}

/// Each event's revision, in order.
fn mod_revisions(events: &[Event]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
        .collect()
}

fn key_only(key: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        ..WatchCreateRequest::default()
    }
}

/// A one-member Mend cluster and a one-member etcd, both started with `args`.
fn both(args: &[&str]) -> (Cluster, Etcd) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut mend = Cluster::start(
        1,
        Options {
            extra_args: args.clone(),
            ..Options::default()
        },
    );
    mend.wait_healthy();
    (mend, Etcd::start(1, &args))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_synced_watcher_survives_a_compaction_past_its_start() {
    let (mut mend, etcd) = both(&[]);
    for endpoint in [mend.member(0).endpoint(), etcd.endpoints[0].clone()] {
        let channel = channel(&endpoint).await;
        let mut kv = KvClient::new(channel.clone());
        let (mut stream, _) = Stream::open(channel, false, key_only("k")).await;
        let mut last = 0;
        for v in ["1", "2", "3"] {
            last = put(&mut kv, "k", v).await;
        }
        assert_eq!(stream.events(3).await.len(), 3, "{endpoint}");
        kv.compact(CompactionRequest {
            revision: last,
            physical: true,
        })
        .await
        .expect("compact");
        let after = put(&mut kv, "k", "4").await;
        let events = stream.events(1).await;
        let kv = events[0].kv.as_ref().expect("kv");
        assert_eq!(
            (kv.mod_revision, &kv.value[..]),
            (after, &b"4"[..]),
            "{endpoint}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_from_a_compacted_revision_is_canceled_with_the_compaction_revision() {
    let (mut mend, etcd) = both(&[]);
    let mut answers = Vec::new();
    for endpoint in [mend.member(0).endpoint(), etcd.endpoints[0].clone()] {
        let channel = channel(&endpoint).await;
        let mut kv = KvClient::new(channel.clone());
        for v in ["1", "2", "3"] {
            put(&mut kv, "k", v).await;
        }
        kv.compact(CompactionRequest {
            revision: 3,
            physical: true,
        })
        .await
        .expect("compact");
        let first = WatchCreateRequest {
            start_revision: 2,
            ..key_only("k")
        };
        let (mut stream, id) = Stream::open(channel, false, first).await;
        let canceled = stream.next().await.expect("response");
        answers.push((
            canceled.watch_id == id,
            canceled.canceled,
            canceled.compact_revision,
            canceled.events.len(),
        ));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], (true, true, 3, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_notifications_arrive_at_the_configured_interval() {
    let (mut mend, etcd) = both(&["--experimental-watch-progress-notify-interval=200ms"]);
    for endpoint in [mend.member(0).endpoint(), etcd.endpoints[0].clone()] {
        let channel = channel(&endpoint).await;
        let mut kv = KvClient::new(channel.clone());
        let revision = put(&mut kv, "other", "x").await;
        let first = WatchCreateRequest {
            progress_notify: true,
            ..key_only("k")
        };
        let (mut stream, id) = Stream::open(channel, false, first).await;
        let notification = stream.next().await.expect("response");
        assert_eq!(notification.watch_id, id, "{endpoint}");
        assert!(notification.events.is_empty(), "{endpoint}");
        assert_eq!(
            notification.header.expect("header").revision,
            revision,
            "{endpoint}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_progress_request_is_never_answered_ahead_of_the_events() {
    let mut mend = Cluster::start(1, Options::default());
    mend.wait_healthy();
    let channel = channel(&mend.member(0).endpoint()).await;
    let mut kv = KvClient::new(channel.clone());
    let mut last = 0;
    for i in 0..200 {
        last = put(&mut kv, &format!("p/{}", i % 7), &i.to_string()).await;
    }
    // A watcher from the start of history, behind until it has caught up; progress at once.
    let first = WatchCreateRequest {
        key: "p/".into(),
        range_end: "p0".into(),
        start_revision: 2,
        ..WatchCreateRequest::default()
    };
    let (mut stream, _) = Stream::open(channel, false, first).await;
    stream
        .send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let mut seen = 0;
    loop {
        let response = stream.next().await.expect("response");
        if response.watch_id == -1 {
            assert_eq!(seen, 200, "progress came before every event");
            assert!(response.header.expect("header").revision >= last);
            break;
        }
        seen += response.events.len();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_require_leader_stream_ends_when_its_member_loses_the_leader() {
    let mut mend = Cluster::start(3, Options::default());
    mend.wait_healthy();
    let channel = channel(&mend.member(0).endpoint()).await;
    let (mut stream, _) = Stream::open(channel.clone(), true, key_only("k")).await;
    // A stream without the requirement stays.
    let (mut lenient, _) = Stream::open(channel, false, key_only("k")).await;
    mend.member(1).kill();
    mend.member(2).kill();
    let ended = stream.next().await.expect_err("the stream ends");
    assert_eq!(ended.code(), tonic::Code::Unavailable);
    assert_eq!(ended.message(), "etcdserver: no leader");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), lenient.responses.message())
            .await
            .is_err(),
        "the stream without hasleader is still open and quiet"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_stay_complete_and_in_order_under_writes_through_every_member() {
    let mut mend = Cluster::start(3, Options::default());
    mend.wait_healthy();
    let endpoints: Vec<String> = (0..3).map(|i| mend.member(i).endpoint()).collect();
    let watched = channel(&endpoints[2]).await;
    let start = KvClient::new(watched.clone())
        .range(RangeRequest {
            key: "m/".into(),
            ..RangeRequest::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision;
    let first = WatchCreateRequest {
        key: "m/".into(),
        range_end: "m0".into(),
        prev_kv: true,
        ..WatchCreateRequest::default()
    };
    let (mut live, _) = Stream::open(watched.clone(), false, first).await;
    // Three writers, one per member: puts and deletes over ten keys, from a fixed seed.
    let writers: Vec<_> = endpoints
        .iter()
        .enumerate()
        .map(|(w, endpoint)| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut kv = KvClient::new(channel(&endpoint).await);
                let mut seed = 0x9e37_79b9_u64 ^ w as u64;
                let mut changes = 0;
                for i in 0..150 {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = format!("m/{}", (seed >> 33) % 10);
                    if (seed >> 40).is_multiple_of(4) {
                        let deleted = kv
                            .delete_range(DeleteRangeRequest {
                                key: key.into(),
                                ..DeleteRangeRequest::default()
                            })
                            .await
                            .expect("delete")
                            .into_inner()
                            .deleted;
                        changes += deleted as usize;
                    } else {
                        put(&mut kv, &key, &format!("{w}.{i}")).await;
                        changes += 1;
                    }
                }
                changes
            })
        })
        .collect();
    let mut changes = 0;
    for writer in writers {
        changes += writer.await.expect("writer");
    }
    let seen = live.events(changes).await;
    // The same changes, read afresh from history by a new watcher.
    let first = WatchCreateRequest {
        key: "m/".into(),
        range_end: "m0".into(),
        prev_kv: true,
        start_revision: start + 1,
        ..WatchCreateRequest::default()
    };
    let (mut replay, _) = Stream::open(watched, false, first).await;
    let history = replay.events(changes).await;
    assert_eq!(seen.len(), changes);
    assert_eq!(seen, history, "live events differ from history");
    let revisions = mod_revisions(&seen);
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    // The model: each event's previous value is what the one before it on that key left.
    let mut model: std::collections::HashMap<Vec<u8>, Vec<u8>> = Default::default();
    for event in &seen {
        let kv = event.kv.as_ref().expect("kv");
        let before = event.prev_kv.as_ref().map(|p| p.value.clone());
        assert_eq!(before, model.get(&kv.key).cloned(), "{event:?}");
        if event.r#type == 1 {
            model.remove(&kv.key);
        } else {
            model.insert(kv.key.clone(), kv.value.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_holds_up_no_write() {
    let mut mend = Cluster::start(1, Options::default());
    mend.wait_healthy();
    let channel = channel(&mend.member(0).endpoint()).await;
    let first = WatchCreateRequest {
        key: "s/".into(),
        range_end: "s0".into(),
        ..WatchCreateRequest::default()
    };
    let (mut stalled, _) = Stream::open(channel.clone(), false, first).await;
    // Far more than the stream's buffer and HTTP/2's window hold, while nobody reads.
    let mut kv = KvClient::new(channel);
    let value = "v".repeat(1024);
    for i in 0..2000 {
        put(&mut kv, &format!("s/{}", i % 50), &value).await;
    }
    // Reading now, the stalled client gets every change, in order.
    let events = stalled.events(2000).await;
    let revisions = mod_revisions(&events);
    assert_eq!(revisions.len(), 2000);
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "{revisions:?}"
    );
}
