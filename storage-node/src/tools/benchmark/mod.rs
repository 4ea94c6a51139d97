//! `storage-node benchmark`: load against any etcd v3 endpoints, in the spirit of etcd's
//! `tools/benchmark` (same load names and flags where they exist), and a `--compare-etcd`
//! mode that starts a 3-member etcd 3.4 cluster and a 3-member Mend cluster itself, runs the
//! same load on each in turn, round after round, and prints both with their ratio and every
//! member's resident memory.

mod loads;
mod local;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::pb::etcdserverpb::auth_client::AuthClient;
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, PutRequest,
};
use loads::{Conn, Keys, WatchLoad};
use local::{Kind, LocalCluster};

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
    /// An endpoint cannot be reached.
    #[error("endpoint {0}: {1}")]
    Endpoint(String, String),
    /// A request failed.
    #[error("request failed: {}: {}", .0.code(), .0.message())]
    Request(#[from] tonic::Status),
    /// A client task failed.
    #[error("{0}")]
    Task(String),
    /// A local cluster did not start.
    #[error("starting a local cluster: {0}")]
    Start(String),
    /// Interrupted (Ctrl-C): local clusters were stopped.
    #[error("interrupted")]
    Interrupted,
}

/// What one load run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Concurrent clients (for watch latency: watchers).
    pub clients: usize,
    /// Operations answered (for watch latency: events received).
    pub ops: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 90th percentile latency.
    pub p90: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

impl Report {
    fn new(clients: usize, mut latencies: Vec<Duration>, elapsed: Duration) -> Report {
        latencies.sort();
        let pick = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Report {
            clients,
            ops: latencies.len(),
            elapsed,
            p50: pick(0.5),
            p90: pick(0.9),
            p99: pick(0.99),
        }
    }

    /// Operations answered per second.
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{:>4} clients {:>7} ops in {:>6.2} s = {:>8.0} ops/s, p50 {:>7.2} ms, p90 {:>7.2} ms, \
             p99 {:>7.2} ms",
            self.clients,
            self.ops,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99)
        )
    }
}

/// `storage-node benchmark`.
#[derive(Args, Debug, Clone)]
pub struct BenchmarkArgs {
    /// Endpoints to load (ignored with --compare-etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// gRPC connections, spread round-robin over the endpoints.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent clients, spread over the connections; each waits for its answer before
    /// sending again.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Requests per run.
    #[arg(long, default_value_t = 10_000)]
    pub total: usize,
    /// Authenticate as NAME:PASSWORD. With --compare-etcd the user is created (with the root
    /// role) and auth turned on in both clusters first.
    #[arg(long)]
    pub user: Option<String>,
    /// Start a 3-member etcd cluster and a 3-member Mend cluster on loopback and run the load
    /// on each in turn, --rounds times, printing both and Mend's ratio to etcd.
    #[arg(long)]
    pub compare_etcd: bool,
    /// The etcd 3.4 binary --compare-etcd starts.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// The storage-node binary --compare-etcd starts (default: this one).
    #[arg(long)]
    pub mend_bin: Option<PathBuf>,
    /// Rounds of --compare-etcd; the order alternates each round.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// With --compare-etcd: both clusters serve clients and peers over TLS with client
    /// certificates required (a CA and certificates made for the run).
    #[arg(long)]
    pub tls: bool,
    /// The CA bundle `https://` endpoints' certificates chain to (etcdctl's flag).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// The client certificate presented to `https://` endpoints.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The load.
    #[command(subcommand)]
    pub load: Load,
}

/// Key shape of put loads (etcd benchmark's flags).
#[derive(Args, Debug, Clone, Copy)]
pub struct KeyArgs {
    /// Key size in bytes (at least 8).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Write keys in order rather than spread over the key space.
    #[arg(long)]
    pub sequential_keys: bool,
}

impl KeyArgs {
    fn keys(&self) -> Keys {
        Keys {
            size: self.key_size,
            space: self.key_space_size,
            sequential: self.sequential_keys,
        }
    }
}

/// Read consistency of ranges.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable: a read point confirmed by a quorum.
    L,
    /// Serializable: the member's own state.
    S,
}

/// A load.
#[derive(Subcommand, Debug, Clone)]
pub enum Load {
    /// Puts.
    Put(KeyArgs),
    /// Txns of --txn-ops puts each.
    TxnPut {
        /// Key shape.
        #[command(flatten)]
        keys: KeyArgs,
        /// Puts in each txn.
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Ranges over KEY (or [KEY, END)).
    Range {
        /// The key.
        key: String,
        /// The range end, for more than one key.
        end: Option<String>,
        /// Linearizable (l) or serializable (s).
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Keep-alives: each client grants a lease, then renews it --total/--clients times.
    LeaseKeepalive,
    /// Latency from a put to the event reaching each watcher.
    WatchLatency {
        /// Watch streams.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Watchers on each stream.
        #[arg(long, default_value_t = 10)]
        watchers_per_stream: usize,
        /// Puts.
        #[arg(long, default_value_t = 1000)]
        put_total: usize,
        /// Puts per second.
        #[arg(long, default_value_t = 100)]
        put_rate: u64,
        /// Value size in bytes (at least 8: the send time).
        #[arg(long, default_value_t = 8)]
        val_size: usize,
    },
    /// With --compare-etcd: the loads of README's table (sequential and 64-client puts,
    /// 64-client txn-puts, linearizable and serializable ranges, watch latency with 1000
    /// watchers, lease keep-alives). --total sets the operations of each.
    Suite,
}

/// One named load of a suite, with its clients and connections.
struct Step {
    name: String,
    clients: usize,
    conns: usize,
    total: usize,
    load: Load,
}

impl BenchmarkArgs {
    /// The loads to run: the one asked for, or the suite's.
    fn steps(&self) -> Vec<Step> {
        let step = |name: &str, clients, conns, total, load| Step {
            name: name.into(),
            clients,
            conns,
            total,
            load,
        };
        let keys = KeyArgs {
            key_size: 8,
            val_size: 256,
            key_space_size: 100_000,
            sequential_keys: false,
        };
        match &self.load {
            Load::Suite => vec![
                step("put, 1 client", 1, 1, self.total / 8, Load::Put(keys)),
                step("put, 64 clients", 64, 8, self.total, Load::Put(keys)),
                step(
                    "txn-put, 64 clients",
                    64,
                    8,
                    self.total,
                    Load::TxnPut { keys, txn_ops: 1 },
                ),
                step(
                    "range linearizable, 64 clients",
                    64,
                    8,
                    self.total,
                    Load::Range {
                        key: "00000001".into(),
                        end: None,
                        consistency: Consistency::L,
                    },
                ),
                step(
                    "range serializable, 64 clients",
                    64,
                    8,
                    self.total,
                    Load::Range {
                        key: "00000001".into(),
                        end: None,
                        consistency: Consistency::S,
                    },
                ),
                step(
                    "watch latency, 1000 watchers",
                    1000,
                    8,
                    self.total / 20,
                    Load::WatchLatency {
                        streams: 100,
                        watchers_per_stream: 10,
                        put_total: (self.total / 20).max(1),
                        put_rate: 100,
                        val_size: 256,
                    },
                ),
                step(
                    "lease keep-alive, 64 clients",
                    64,
                    8,
                    self.total,
                    Load::LeaseKeepalive,
                ),
            ],
            load => vec![step(
                load_name(load),
                self.clients,
                self.conns,
                self.total,
                load.clone(),
            )],
        }
    }
}

fn load_name(load: &Load) -> &'static str {
    match load {
        Load::Put(_) => "put",
        Load::TxnPut { .. } => "txn-put",
        Load::Range { .. } => "range",
        Load::LeaseKeepalive => "lease-keepalive",
        Load::WatchLatency { .. } => "watch-latency",
        Load::Suite => "suite",
    }
}

/// Runs one step against `endpoints` (over TLS with `tls` for `https://` ones).
async fn run_step(
    endpoints: &[String],
    user: Option<&str>,
    tls: Option<&crate::tls::ClientTls>,
    step: &Step,
) -> Result<Report, Error> {
    let conns: Vec<Conn> = loads::connect(endpoints, step.conns, user, tls).await?;
    match &step.load {
        Load::Put(k) => loads::put(&conns, step.clients, step.total, k.keys(), k.val_size).await,
        Load::TxnPut { keys, txn_ops } => {
            loads::txn_put(
                &conns,
                step.clients,
                step.total,
                keys.keys(),
                keys.val_size,
                *txn_ops,
            )
            .await
        }
        Load::Range {
            key,
            end,
            consistency,
        } => {
            loads::range(
                &conns,
                step.clients,
                step.total,
                key.clone().into_bytes(),
                end.clone().unwrap_or_default().into_bytes(),
                *consistency == Consistency::S,
            )
            .await
        }
        Load::LeaseKeepalive => loads::lease_keepalive(&conns, step.clients, step.total).await,
        Load::WatchLatency {
            streams,
            watchers_per_stream,
            put_total,
            put_rate,
            val_size,
        } => {
            loads::watch_latency(
                &conns,
                WatchLoad {
                    streams: *streams,
                    watchers_per_stream: *watchers_per_stream,
                    puts: *put_total,
                    put_rate: *put_rate,
                    value_size: *val_size,
                },
            )
            .await
        }
        Load::Suite => Err(Error::Usage("a suite is not one load".into())),
    }
}

impl BenchmarkArgs {
    /// The client TLS `--cacert`, `--cert` and `--key` describe; `None` without them.
    fn client_tls(&self) -> Result<Option<crate::tls::ClientTls>, Error> {
        match (&self.cacert, &self.cert, &self.key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => local::client_tls(ca, cert, key).map(Some),
            _ => Err(Error::Usage(
                "--cacert, --cert and --key go together".into(),
            )),
        }
    }
}

/// Runs the benchmark the arguments describe, printing as it goes; stops any local cluster
/// on Ctrl-C.
pub async fn run(args: BenchmarkArgs) -> Result<(), Error> {
    tokio::select! {
        result = run_uninterrupted(args) => result,
        _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
    }
}

async fn run_uninterrupted(args: BenchmarkArgs) -> Result<(), Error> {
    if !args.compare_etcd {
        if matches!(args.load, Load::Suite) {
            return Err(Error::Usage("suite runs only with --compare-etcd".into()));
        }
        let tls = args.client_tls()?;
        for step in args.steps() {
            let report =
                run_step(&args.endpoints, args.user.as_deref(), tls.as_ref(), &step).await?;
            println!("{}: {report}", step.name);
        }
        return Ok(());
    }
    let mend_bin = match &args.mend_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(|e| Error::Start(e.to_string()))?,
    };
    let etcd = LocalCluster::start(Kind::Etcd, &args.etcd_bin, args.tls).await?;
    let mend = LocalCluster::start(Kind::Mend, &mend_bin, args.tls).await?;
    println!(
        "etcd: {} ({}), mend: {} ({})",
        etcd.endpoints.join(","),
        etcd.dir().display(),
        mend.endpoints.join(","),
        mend.dir().display()
    );
    for cluster in [&etcd, &mend] {
        prepare(cluster, args.user.as_deref()).await?;
    }
    let steps = args.steps();
    let mut table = Vec::new();
    for step in &steps {
        let mut results: Vec<(Report, Report)> = Vec::new();
        for round in 1..=args.rounds.max(1) {
            // Alternate who goes first: a warm cache or a busy neighbour favours neither.
            let order = if round % 2 == 1 {
                [&etcd, &mend]
            } else {
                [&mend, &etcd]
            };
            let mut etcd_report = None;
            let mut mend_report = None;
            for cluster in order {
                let report = run_step(
                    &cluster.endpoints,
                    args.user.as_deref(),
                    cluster.tls.as_ref(),
                    step,
                )
                .await?;
                println!(
                    "{} round {round} {}: {report}",
                    step.name,
                    cluster.kind.name()
                );
                match cluster.kind {
                    Kind::Etcd => etcd_report = Some(report),
                    Kind::Mend => mend_report = Some(report),
                }
            }
            if let (Some(e), Some(m)) = (etcd_report, mend_report) {
                println!(
                    "{} round {round} mend/etcd: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
                    step.name,
                    m.throughput() / e.throughput(),
                    ratio(m.p50, e.p50),
                    ratio(m.p99, e.p99)
                );
                results.push((e, m));
            }
        }
        table.push((step.name.clone(), results));
    }
    println!();
    print_table(&table);
    println!();
    for cluster in [&etcd, &mend] {
        let rss = cluster
            .resident_memory()
            .iter()
            .map(|r| {
                r.map_or("unknown".into(), |b| {
                    format!("{:.0} MiB", b as f64 / 1048576.0)
                })
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "resident memory after the loads, {}: {rss}",
            cluster.kind.name()
        );
    }
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// A Markdown table: per load, each system's throughput and p50/p99 over the rounds
/// (min–max), and Mend's ratios.
fn print_table(table: &[(String, Vec<(Report, Report)>)]) {
    let span = |values: Vec<f64>, digits: usize| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if (hi - lo).abs() < f64::EPSILON {
            format!("{lo:.digits$}")
        } else {
            format!("{lo:.digits$}–{hi:.digits$}")
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| load | etcd ops/s | Mend ops/s | ratio | etcd p50 ms | Mend p50 ms | ratio | etcd p99 ms | Mend p99 ms | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, results) in table {
        let of = |f: &dyn Fn(&(Report, Report)) -> f64, digits| {
            span(results.iter().map(f).collect(), digits)
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            of(&|(e, _)| e.throughput(), 0),
            of(&|(_, m)| m.throughput(), 0),
            of(&|(e, m)| m.throughput() / e.throughput(), 2),
            of(&|(e, _)| ms(e.p50), 2),
            of(&|(_, m)| ms(m.p50), 2),
            of(&|(e, m)| ratio(m.p50, e.p50), 2),
            of(&|(e, _)| ms(e.p99), 2),
            of(&|(_, m)| ms(m.p99), 2),
            of(&|(e, m)| ratio(m.p99, e.p99), 2),
        );
    }
}

/// Readies a fresh local cluster: the key ranges read, and with a user, auth turned on with
/// that user holding the root role.
async fn prepare(cluster: &LocalCluster, user: Option<&str>) -> Result<(), Error> {
    let conn = loads::connect(&cluster.endpoints, 1, None, cluster.tls.as_ref()).await?;
    let channel = conn[0].channel.clone();
    KvClient::new(channel.clone())
        .put(PutRequest {
            key: b"00000001".to_vec(),
            value: vec![b'v'; 256],
            ..PutRequest::default()
        })
        .await?;
    let Some(user) = user else {
        return Ok(());
    };
    let (name, password) = user
        .split_once(':')
        .ok_or_else(|| Error::Usage("--user takes NAME:PASSWORD".into()))?;
    let mut auth = AuthClient::new(channel);
    // As `etcdctl auth enable` needs: a root role held by a root user.
    auth.role_add(AuthRoleAddRequest {
        name: "root".into(),
    })
    .await?;
    let users = if name == "root" {
        vec!["root"]
    } else {
        vec!["root", name]
    };
    for user in users {
        auth.user_add(AuthUserAddRequest {
            name: user.into(),
            password: password.into(),
            ..AuthUserAddRequest::default()
        })
        .await?;
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: "root".into(),
        })
        .await?;
    }
    auth.auth_enable(AuthEnableRequest {}).await?;
    Ok(())
}

/// Puts from `clients` concurrent clients over one connection per endpoint, `value_size`-byte
/// values on distinct keys: the load the cluster benchmarks share.
pub async fn put_load(
    endpoints: &[String],
    clients: usize,
    total: usize,
    value_size: usize,
) -> Result<Report, Error> {
    let conns = loads::connect(endpoints, endpoints.len(), None, None).await?;
    let keys = Keys {
        size: 16,
        space: u64::MAX,
        sequential: true,
    };
    loads::put(&conns, clients, total, keys, value_size).await
}
