//! The member's metrics that are fed where things happen (the raft log's fsyncs, the engine's
//! commits, peer round trips, gRPC calls), under etcd's names with etcd's bucket layouts and
//! label sets, so that etcd's dashboards and alerts read a Mend member unchanged; and the
//! process metrics Prometheus' Go client exports, read from `/proc`.
//!
//! Figures a member's status already holds (leader, indexes, sizes, AuthRevision) are not kept
//! here: `server::metrics` reads them when `/metrics` is scraped.
//!
//! Every instrument is a shared handle: the component that observes it keeps one, the registry
//! built for a scrape holds another.

use std::collections::HashMap;
use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The etcd API as `rpc.proto` declares it: the gRPC metrics' method table comes from the same
/// file the services are generated from, so it cannot fall behind them.
const RPC_PROTO: &str = include_str!("../proto/etcdserverpb/rpc.proto");

/// An empty histogram for `etcd_disk_wal_fsync_duration_seconds` or
/// `etcd_disk_backend_commit_duration_seconds`: etcd's buckets, 1 ms doubling to 8.192 s.
pub fn disk_durations() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// `etcd_network_peer_round_trip_time_seconds`: etcd's buckets, 0.1 ms doubling to 3.2768 s.
fn round_trip_times() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// `grpc_server_handling_seconds`: the Go gRPC middleware's (Prometheus' default) buckets.
fn handling_times() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The peer a round trip went to: etcd's label `To`, the member ID in hex.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Peer {
    to: String,
}

impl Peer {
    /// The label of member `id`, written as etcd writes member IDs (hex, no leading zeros).
    pub fn new(id: u64) -> Peer {
        Peer {
            to: format!("{id:x}"),
        }
    }
}

impl EncodeLabelSet for Peer {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [("To", self.to.as_str())].encode(encoder)
    }
}

/// Round trips to each peer.
pub type RoundTrips = Family<Peer, Histogram, fn() -> Histogram>;

/// An empty set of per-peer round-trip histograms.
pub fn round_trip_family() -> RoundTrips {
    Family::new_with_constructor(round_trip_times)
}

/// One gRPC method of the etcd API, as the Go gRPC middleware labels it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    /// The method's name (`Range`).
    pub grpc_method: &'static str,
    /// The service's full name (`etcdserverpb.KV`).
    pub grpc_service: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
}

/// A finished call: its method and its status code's name.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Handled {
    /// The status code's name as Go's gRPC prints it (`OK`, `OutOfRange`, ...).
    pub grpc_code: &'static str,
    /// The method's name.
    pub grpc_method: &'static str,
    /// The service's full name.
    pub grpc_service: &'static str,
    /// The kind of call.
    pub grpc_type: &'static str,
}

/// gRPC status codes by number, named as Go's `codes.Code.String()` names them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The name of gRPC status code `code` (a `grpc-status` value); `Unknown` for anything else,
/// as gRPC reads an unknown code.
pub fn code_name(code: &[u8]) -> &'static str {
    std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .and_then(|c| CODES.get(c))
        .unwrap_or(&"Unknown")
}

/// Every method `proto` declares, by its request path (`/etcdserverpb.KV/Range`).
fn methods(proto: &'static str) -> HashMap<String, Method> {
    let mut package = "";
    let mut service = "";
    let mut found = HashMap::new();
    for line in proto.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("package ") {
            package = name.trim_end_matches(';').trim();
        } else if let Some(rest) = line.strip_prefix("service ") {
            // One string per service, kept for the life of the process: the table is static
            // and its labels are `&'static str`, so recording a call allocates nothing.
            let name = rest.trim_end_matches('{').trim();
            service = Box::leak(format!("{package}.{name}").into_boxed_str());
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let Some((name, rest)) = rest.split_once('(') else {
                continue;
            };
            let Some((request, rest)) = rest.split_once(')') else {
                continue;
            };
            let Some((_, response)) = rest.split_once('(') else {
                continue;
            };
            let streams = |arg: &str| arg.trim_start().starts_with("stream ");
            let grpc_type = match (streams(request), streams(response)) {
                (false, false) => "unary",
                (true, false) => "client_stream",
                (false, true) => "server_stream",
                (true, true) => "bidi_stream",
            };
            let method = name.trim();
            found.insert(
                format!("/{service}/{method}"),
                Method {
                    grpc_method: method,
                    grpc_service: service,
                    grpc_type,
                },
            );
        }
    }
    found
}

/// The etcd API's methods, by request path.
static METHODS: LazyLock<HashMap<String, Method>> = LazyLock::new(|| methods(RPC_PROTO));

/// The etcd API method a request path names, `None` for any other path.
pub fn method(path: &str) -> Option<Method> {
    METHODS.get(path).copied()
}

/// The gRPC server metrics of the Go gRPC middleware etcd uses.
#[derive(Clone, Debug)]
pub struct Grpc {
    started: Family<Method, Counter>,
    handled: Family<Handled, Counter>,
    handling: Family<Method, Histogram, fn() -> Histogram>,
}

impl Default for Grpc {
    /// Every method's series from the start, at zero, as etcd's middleware initialises them:
    /// a rate over a call that has not happened yet is 0, not empty.
    fn default() -> Grpc {
        let grpc = Grpc {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(handling_times),
        };
        // Creating a series hands out a read guard on the family: let it go at once.
        for method in METHODS.values() {
            drop(grpc.started.get_or_create(method));
            drop(grpc.handling.get_or_create(method));
            for code in CODES {
                drop(grpc.handled.get_or_create(&handled(*method, code)));
            }
        }
        grpc
    }
}

fn handled(method: Method, grpc_code: &'static str) -> Handled {
    Handled {
        grpc_code,
        grpc_method: method.grpc_method,
        grpc_service: method.grpc_service,
        grpc_type: method.grpc_type,
    }
}

impl Grpc {
    /// A call of `method` began.
    pub fn started(&self, method: Method) {
        self.started.get_or_create(&method).inc();
    }

    /// A call of `method` ended with the code named `code` after `seconds`.
    pub fn handled(&self, method: Method, code: &'static str, seconds: f64) {
        self.handled.get_or_create(&handled(method, code)).inc();
        self.handling.get_or_create(&method).observe(seconds);
    }
}

/// The instruments of one member that are fed as things happen.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Durations of the raft log's fsyncs (every durable log write).
    pub wal_fsync: Histogram,
    /// Durations of the engine's commits of applied entries.
    pub backend_commit: Histogram,
    /// Round trips of raft's RPCs to each peer.
    pub peer_round_trip: RoundTrips,
    /// Calls on the client port's gRPC services.
    pub grpc: Grpc,
}

impl Metrics {
    /// Adds every instrument to `registry` under etcd's name.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "etcd_disk_wal_fsync_duration",
            "Durations of the fsyncs of this member's raft log",
            Unit::Seconds,
            self.wal_fsync.clone(),
        );
        registry.register_with_unit(
            "etcd_disk_backend_commit_duration",
            "Durations of the backend's commits of applied entries",
            Unit::Seconds,
            self.backend_commit.clone(),
        );
        registry.register_with_unit(
            "etcd_network_peer_round_trip_time",
            "Round-trip times of raft messages to each peer",
            Unit::Seconds,
            self.peer_round_trip.clone(),
        );
        registry.register(
            "grpc_server_started",
            "RPCs started on the client port",
            self.grpc.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the client port, by status code",
            self.grpc.handled.clone(),
        );
        registry.register_with_unit(
            "grpc_server_handling",
            "Time from an RPC's start to its status (a stream's whole life)",
            Unit::Seconds,
            self.grpc.handling.clone(),
        );
    }
}

/// The process metrics Prometheus' Go client exports (`process_*`), read from `/proc/self` at
/// every scrape. A figure that cannot be read is left out, never shown as 0.
#[derive(Debug, Default)]
pub struct Process;

/// Clock ticks per second in `/proc`'s times. It is 100 on every architecture Linux exports
/// USER_HZ for in practice; Prometheus' procfs library assumes the same.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` tells about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessFigures {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    resident_memory_bytes: Option<u64>,
    virtual_memory_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl ProcessFigures {
    /// Reads the figures from `/proc/self/stat` (with `/proc/stat`'s boot time),
    /// `/proc/self/status`, `/proc/self/fd` and `/proc/self/limits`.
    fn read() -> ProcessFigures {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let mut figures = ProcessFigures::default();
        if let Some(stat) = read("/proc/self/stat") {
            figures.read_stat(&stat, read("/proc/stat").as_deref());
        }
        figures.resident_memory_bytes = read("/proc/self/status").and_then(|s| resident(&s));
        figures.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|fds| fds.count() as u64);
        figures.max_fds = read("/proc/self/limits").and_then(|l| max_open_files(&l));
        figures
    }

    /// Figures from the text of `/proc/self/stat` (and `/proc/stat` for the boot time).
    fn read_stat(&mut self, stat: &str, system: Option<&str>) {
        // The command name (field 2) is in parentheses and may hold spaces: fields are counted
        // after its closing parenthesis, from field 3 (`state`) on.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            self.cpu_seconds = Some((utime + stime) as f64 / USER_HZ);
        }
        let boot = system.and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|b| b.trim().parse::<u64>().ok())
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            self.start_time_seconds = Some(boot as f64 + start as f64 / USER_HZ);
        }
        self.virtual_memory_bytes = field(23);
    }
}

/// The resident set size in the text of `/proc/self/status` (`VmRSS`, in kB: unlike `stat`'s
/// count of pages it needs no page size).
fn resident(status: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The soft limit of open files in the text of `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.strip_prefix("Max open files")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = ProcessFigures::read();
        if let Some(seconds) = figures.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                counter.metric_type(),
            )?)?;
        }
        if let Some(seconds) = figures.start_time_seconds {
            let gauge = ConstGauge::new(seconds);
            gauge.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                gauge.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                figures.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                figures.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                figures.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                figures.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_table_comes_from_rpc_proto_with_each_call_kind() {
        let range = method("/etcdserverpb.KV/Range").expect("KV.Range");
        assert_eq!(
            (range.grpc_service, range.grpc_method, range.grpc_type),
            ("etcdserverpb.KV", "Range", "unary")
        );
        let kind = |path: &str| method(path).map(|m| m.grpc_type);
        assert_eq!(kind("/etcdserverpb.Watch/Watch"), Some("bidi_stream"));
        assert_eq!(
            kind("/etcdserverpb.Lease/LeaseKeepAlive"),
            Some("bidi_stream")
        );
        assert_eq!(
            kind("/etcdserverpb.Maintenance/Snapshot"),
            Some("server_stream")
        );
        assert_eq!(
            kind("/etcdserverpb.Auth/RoleGrantPermission"),
            Some("unary")
        );
        assert_eq!(kind("/mendpeer.Peer/Vote"), None);
        assert_eq!(kind("/etcdserverpb.KV/Nope"), None);
        assert_eq!(METHODS.len(), 41, "every rpc line of rpc.proto");
    }

    #[test]
    fn status_codes_are_named_as_go_names_them() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"1"), "Canceled");
        assert_eq!(code_name(b"11"), "OutOfRange");
        assert_eq!(code_name(b"16"), "Unauthenticated");
        assert_eq!(code_name(b"17"), "Unknown");
        assert_eq!(code_name(b"x"), "Unknown");
    }

    #[test]
    fn process_figures_are_read_from_procs_stat_format() {
        // A command name with a space and a parenthesis, as /proc prints it.
        let stat = "4242 (storage (node) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 50 0 0 20 0 \
                    9 0 12345 104857600 2560 18446744073709551615";
        let mut figures = ProcessFigures::default();
        figures.read_stat(stat, Some("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"));
        assert_eq!(figures.cpu_seconds, Some(3.0));
        let start = figures.start_time_seconds.expect("start time");
        assert!((start - 1_700_000_123.45).abs() < 1e-3, "{start}");
        assert_eq!(figures.virtual_memory_bytes, Some(104_857_600));
        assert_eq!(
            resident("Name:\tstorage-node\nVmSize:\t  102400 kB\nVmRSS:\t    10240 kB\n"),
            Some(10 * 1024 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn this_process_reports_its_memory_fds_and_start() {
        let figures = ProcessFigures::read();
        assert!(
            figures.resident_memory_bytes.unwrap_or(0) > 0,
            "{figures:?}"
        );
        assert!(figures.open_fds.unwrap_or(0) > 0, "{figures:?}");
        assert!(
            figures.start_time_seconds.unwrap_or(0.0) > 1.0e9,
            "{figures:?}"
        );
    }
}
