//! The leader's lease bookkeeping with 10k and 100k granted leases: one expiry check when
//! nothing is due (what the leader does every 250 ms) and one renewal (every KeepAlive).
//!
//! Run: `cargo bench -p storage-node --bench lessor`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use storage_node::raft::lessor::{LeaseQuery, Lessor};

fn lessor(c: &mut Criterion) {
    let mut group = c.benchmark_group("lessor");
    for n in [10_000i64, 100_000] {
        let start = Instant::now();
        let lessor = Lessor::new((1..=n).map(|id| (id, 60)), start);
        let now = start + Duration::from_secs(1);
        group.bench_function(format!("expiry_check_{n}_leases"), |b| {
            b.iter(|| black_box(lessor.expired(1, now, 250)))
        });
        let mut id = 0;
        group.bench_function(format!("renew_among_{n}_leases"), |b| {
            b.iter(|| {
                id = id % n + 1;
                black_box(lessor.answer(LeaseQuery::Renew(id), 1, now))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lessor);
criterion_main!(benches);
