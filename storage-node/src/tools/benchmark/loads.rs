//! The loads: each runs against any etcd v3 endpoints (Mend or etcd) from concurrent clients
//! over shared gRPC connections and returns the latencies it measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use super::{Error, Report};
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::etcdserverpb::watch_client::WatchClient;
use crate::pb::etcdserverpb::{
    AuthenticateRequest, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, auth_client::AuthClient, request_op,
    watch_request,
};

/// How long one request may take before the run fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One gRPC connection and the token its requests carry when auth is on.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) channel: Channel,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Conn {
    /// `request` with this connection's token.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }
}

/// Opens `count` connections spread round-robin over `endpoints` (over TLS with `tls` for
/// `https://` ones), each authenticated as `user` ("name:password") when given.
pub(super) async fn connect(
    endpoints: &[String],
    count: usize,
    user: Option<&str>,
    tls: Option<&crate::tls::ClientTls>,
) -> Result<Vec<Conn>, Error> {
    if endpoints.is_empty() {
        return Err(Error::Usage("no endpoints".into()));
    }
    let mut channels = Vec::new();
    for i in 0..count.max(1) {
        let url = &endpoints[i % endpoints.len()];
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::Endpoint(url.clone(), e.to_string()))?
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true);
        let channel = crate::tls::connect_channel(url, endpoint, tls, REQUEST_TIMEOUT)
            .await
            .map_err(|e| Error::Endpoint(url.clone(), e))?;
        channels.push(channel);
    }
    // One token per endpoint, taken on that endpoint: a member knows a token once it has
    // applied the Authenticate that made it, which the others may not have yet.
    let mut tokens = std::collections::HashMap::new();
    let mut conns = Vec::new();
    for (i, channel) in channels.into_iter().enumerate() {
        let url = &endpoints[i % endpoints.len()];
        let token = match (user, tokens.get(url)) {
            (None, _) => None,
            (Some(_), Some(token)) => Some(MetadataValue::clone(token)),
            (Some(user), None) => {
                let token = authenticate(&channel, user).await?;
                tokens.insert(url.clone(), token.clone());
                Some(token)
            }
        };
        conns.push(Conn { channel, token });
    }
    Ok(conns)
}

/// A token for `user` ("name:password").
async fn authenticate(
    channel: &Channel,
    user: &str,
) -> Result<MetadataValue<tonic::metadata::Ascii>, Error> {
    let (name, password) = user
        .split_once(':')
        .ok_or_else(|| Error::Usage("--user takes NAME:PASSWORD".into()))?;
    let resp = AuthClient::new(channel.clone())
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await?
        .into_inner();
    resp.token
        .parse()
        .map_err(|_| Error::Task("the server sent an unusable token".into()))
}

/// Keys as etcd's benchmark makes them: `key_size` bytes (at least 8), the number `n` of a
/// key space of `space` keys, sequential or pseudo-random.
#[derive(Clone, Copy, Debug)]
pub(super) struct Keys {
    pub(super) size: usize,
    pub(super) space: u64,
    pub(super) sequential: bool,
}

impl Keys {
    fn key(&self, n: u64) -> Vec<u8> {
        let space = self.space.max(1);
        let k = if self.sequential {
            n % space
        } else {
            // splitmix64: spread the keys without a random-number dependency.
            let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % space
        };
        let mut key = format!("{k:0>width$}", width = self.size.max(8)).into_bytes();
        key.truncate(self.size.max(8));
        key
    }
}

/// Runs `total` operations from `clients` clients over `conns`; `op(conn, n)` issues the
/// operation numbered `n` and returns once it is answered.
async fn closed_loop<F, Fut>(
    conns: &[Conn],
    clients: usize,
    total: usize,
    op: F,
) -> Result<Report, Error>
where
    F: Fn(Conn, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    let op = Arc::new(op);
    let clients = clients.max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let conn = conns[c % conns.len()].clone();
        let share = total / clients + usize::from(c < total % clients);
        let op = op.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for i in 0..share {
                let n = (i * clients + c) as u64;
                let t = Instant::now();
                op(conn.clone(), n).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.map_err(|e| Error::Task(e.to_string()))??);
    }
    Ok(Report::new(clients, latencies, started.elapsed()))
}

/// Puts of `value_size`-byte values.
pub(super) async fn put(
    conns: &[Conn],
    clients: usize,
    total: usize,
    keys: Keys,
    value_size: usize,
) -> Result<Report, Error> {
    let value = vec![b'v'; value_size];
    closed_loop(conns, clients, total, move |conn, n| {
        let request = conn.request(PutRequest {
            key: keys.key(n),
            value: value.clone(),
            ..PutRequest::default()
        });
        async move {
            KvClient::new(conn.channel).put(request).await?;
            Ok(())
        }
    })
    .await
}

/// Txns of `ops` puts each, on distinct keys.
pub(super) async fn txn_put(
    conns: &[Conn],
    clients: usize,
    total: usize,
    keys: Keys,
    value_size: usize,
    ops: usize,
) -> Result<Report, Error> {
    let value = vec![b'v'; value_size];
    let ops = ops.max(1) as u64;
    closed_loop(conns, clients, total, move |conn, n| {
        let success = (0..ops)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: keys.key(n * ops + i),
                    value: value.clone(),
                    ..PutRequest::default()
                })),
            })
            .collect();
        let request = conn.request(TxnRequest {
            success,
            ..TxnRequest::default()
        });
        async move {
            KvClient::new(conn.channel).txn(request).await?;
            Ok(())
        }
    })
    .await
}

/// Ranges over `[key, range_end)`, linearizable or serializable.
pub(super) async fn range(
    conns: &[Conn],
    clients: usize,
    total: usize,
    key: Vec<u8>,
    range_end: Vec<u8>,
    serializable: bool,
) -> Result<Report, Error> {
    closed_loop(conns, clients, total, move |conn, _| {
        let request = conn.request(RangeRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            serializable,
            ..RangeRequest::default()
        });
        async move {
            KvClient::new(conn.channel).range(request).await?;
            Ok(())
        }
    })
    .await
}

/// Keep-alives of one lease per client, each answered before the next is sent.
pub(super) async fn lease_keepalive(
    conns: &[Conn],
    clients: usize,
    total: usize,
) -> Result<Report, Error> {
    let clients = clients.max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let conn = conns[c % conns.len()].clone();
        let share = total / clients + usize::from(c < total % clients);
        tasks.spawn(async move {
            let mut lease = LeaseClient::new(conn.channel.clone());
            let id = lease
                .lease_grant(conn.request(LeaseGrantRequest { ttl: 60, id: 0 }))
                .await?
                .into_inner()
                .id;
            let (tx, mut rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1);
            let outgoing = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            let mut latencies = Vec::with_capacity(share);
            if share == 0 {
                return Ok(latencies);
            }
            // The first request goes out with the call: a server may hold its response
            // headers back until it has something to answer (etcd does).
            let mut sent = Instant::now();
            let send = |tx: &tokio::sync::mpsc::Sender<_>| {
                tx.try_send(LeaseKeepAliveRequest { id })
                    .map_err(|_| Error::Task("keep-alive stream closed".into()))
            };
            send(&tx)?;
            let mut answers = lease
                .lease_keep_alive(conn.request(outgoing))
                .await?
                .into_inner();
            for n in 0..share {
                match answers.message().await? {
                    Some(answer) if answer.ttl > 0 => latencies.push(sent.elapsed()),
                    _ => return Err(Error::Task(format!("lease {id} expired"))),
                }
                if n + 1 < share {
                    sent = Instant::now();
                    send(&tx)?;
                }
            }
            Ok::<_, Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.map_err(|e| Error::Task(e.to_string()))??);
    }
    Ok(Report::new(clients, latencies, started.elapsed()))
}

/// What a watch-latency run asks for.
#[derive(Clone, Copy, Debug)]
pub(super) struct WatchLoad {
    /// Watch streams, spread over the connections.
    pub(super) streams: usize,
    /// Watchers on each stream, all on the one key the puts write.
    pub(super) watchers_per_stream: usize,
    /// Puts to make.
    pub(super) puts: usize,
    /// Puts per second.
    pub(super) put_rate: u64,
    /// Size of the values put.
    pub(super) value_size: usize,
}

/// Latency from a put being sent to each watcher receiving its event: every watcher watches
/// the key the puts write; each put carries its send time in its value.
pub(super) async fn watch_latency(conns: &[Conn], load: WatchLoad) -> Result<Report, Error> {
    let key = b"watch-latency".to_vec();
    let epoch = Instant::now();
    let watchers = load.watchers_per_stream.max(1);
    let mut streams = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(load.streams.max(1));
    for s in 0..load.streams.max(1) {
        let conn = conns[s % conns.len()].clone();
        let key = key.clone();
        let ready = ready_tx.clone();
        streams.spawn(async move {
            let creates = (0..watchers).map(move |_| WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: key.clone(),
                        ..WatchCreateRequest::default()
                    },
                )),
            });
            // The stream stays open: the creates, then nothing more until the run ends.
            let outgoing = futures_util::stream::iter(creates)
                .chain(futures_util::stream::pending::<WatchRequest>());
            let mut answers = WatchClient::new(conn.channel.clone())
                .watch(conn.request(outgoing))
                .await?
                .into_inner();
            let mut created = 0;
            let mut latencies = Vec::with_capacity(watchers * load.puts);
            while latencies.len() < watchers * load.puts {
                let Some(answer) = answers.message().await? else {
                    return Err(Error::Task("watch stream ended".into()));
                };
                if answer.created {
                    created += 1;
                    if created == watchers {
                        let _ = ready.send(()).await;
                    }
                }
                let now = epoch.elapsed();
                for event in answer.events {
                    let sent = event
                        .kv
                        .as_ref()
                        .and_then(|kv| kv.value.get(..8))
                        .and_then(|b| b.try_into().ok())
                        .map(|b| Duration::from_nanos(u64::from_le_bytes(b)))
                        .ok_or_else(|| Error::Task("an event without a send time".into()))?;
                    latencies.push(now.saturating_sub(sent));
                }
            }
            Ok::<_, Error>(latencies)
        });
    }
    drop(ready_tx);
    for _ in 0..load.streams.max(1) {
        if ready_rx.recv().await.is_none() {
            // A stream failed before its watchers were created: its error is below.
            break;
        }
    }
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(load.streams * watchers * load.puts);
    let mut kv = KvClient::new(conns[0].channel.clone());
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / load.put_rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..load.puts {
        // A stream that ended early failed: stop with its error.
        if let Some(early) = streams.try_join_next() {
            latencies.extend(early.map_err(|e| Error::Task(e.to_string()))??);
        }
        tick.tick().await;
        let sent = epoch.elapsed().as_nanos() as u64;
        let mut value = sent.to_le_bytes().to_vec();
        value.resize(load.value_size.max(8), b'v');
        kv.put(conns[0].request(PutRequest {
            key: key.clone(),
            value,
            ..PutRequest::default()
        }))
        .await?;
    }
    while let Some(joined) = streams.join_next().await {
        latencies.extend(joined.map_err(|e| Error::Task(e.to_string()))??);
    }
    Ok(Report::new(
        load.streams * watchers,
        latencies,
        started.elapsed(),
    ))
}
