//! Put throughput against a 3-member cluster of real `storage-node` processes on loopback,
//! with 1, 16 and 64 concurrent clients and 256-byte values.
//!
//! `cargo bench -p storage-node --bench cluster_put` starts its own cluster. To measure other
//! etcd v3 endpoints (an etcd cluster, say) with the same load, set
//! `MEND_BENCH_ENDPOINTS=http://127.0.0.1:2379,...`. `MEND_BENCH_PUTS` sets puts per run.

#[path = "../tests/cluster/mod.rs"]
mod cluster;

use storage_node::tools::benchmark as load;

fn main() {
    let puts: usize = std::env::var("MEND_BENCH_PUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let (endpoints, cluster) = match std::env::var("MEND_BENCH_ENDPOINTS") {
        Ok(list) => (
            list.split(',').map(str::to_string).collect::<Vec<_>>(),
            None,
        ),
        Err(_) => {
            let c = cluster::Cluster::start(3, cluster::Options::default());
            let endpoints = c.members.iter().map(|m| m.endpoint()).collect();
            (endpoints, Some(c))
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!(
        "put throughput, 256-byte values, endpoints {}",
        endpoints.join(",")
    );
    for clients in [1, 16, 64] {
        let total = if clients == 1 { puts / 4 } else { puts };
        match runtime.block_on(load::put_load(&endpoints, clients, total, 256)) {
            Ok(report) => println!("{report}"),
            Err(e) => {
                eprintln!("load failed: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Some(c) = &cluster {
        // Resident memory of each member after the load (Linux /proc), for the notes.
        for m in &c.members {
            let rss = m
                .pid()
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "VmRSS: unknown".into());
            println!(
                "{}: {}",
                m.name,
                rss.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
            );
        }
    }
}
