//! Engine throughput on a real file: applying 256-byte puts one entry per transaction and 64
//! per transaction (each commit is durable: fsync), and serving ranges over 100k keys.
//!
//! Run: `cargo bench -p storage-node --bench engine`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use storage_node::api::{Command, PutRequest, RangeRequest, Request, RequestHeader};
use storage_node::entry::{Entry, EntryPayload, LogId};
use storage_node::{Store, StoreConfig};

const VALUE: [u8; 256] = [b'x'; 256];

fn put_entry(index: u64) -> Entry {
    let request = Request::Put(PutRequest {
        key: format!("key/{index:010}").into_bytes(),
        value: VALUE.to_vec(),
        ..Default::default()
    });
    Entry {
        log_id: LogId { term: 1, index },
        payload: EntryPayload::Normal(Command {
            header: RequestHeader::default(),
            request,
        }),
    }
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_put_256B");
    for batch in [1u64, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        let mut next = 1u64;
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    let entries: Vec<Entry> = (next..next + batch).map(put_entry).collect();
                    next += batch;
                    entries
                },
                |entries| black_box(store.apply_batch(&entries).expect("apply")),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn range(c: &mut Criterion) {
    const KEYS: u64 = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let entries: Vec<Entry> = (1..=KEYS).map(put_entry).collect();
    for chunk in entries.chunks(1000) {
        store.apply_batch(chunk).expect("load");
    }
    let mut group = c.benchmark_group("range_100k_keys");
    let mut i = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_key", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let req = RangeRequest {
                key: format!("key/{:010}", i + 1).into_bytes(),
                ..Default::default()
            };
            black_box(store.range(&req).expect("range"))
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("range_of_100", |b| {
        b.iter(|| {
            i = (i + 7919) % (KEYS - 100);
            let req = RangeRequest {
                key: format!("key/{:010}", i + 1).into_bytes(),
                range_end: format!("key/{:010}", i + 101).into_bytes(),
                ..Default::default()
            };
            black_box(store.range(&req).expect("range"))
        })
    });
    // Counting the whole open range dominates here, as in etcd, which also reports the total.
    group.bench_function("limit_100_of_open_range", |b| {
        b.iter(|| {
            i = (i + 7919) % (KEYS - 100);
            let req = RangeRequest {
                key: format!("key/{:010}", i + 1).into_bytes(),
                range_end: b"key0".to_vec(),
                limit: 100,
                ..Default::default()
            };
            black_box(store.range(&req).expect("range"))
        })
    });
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("count_all", |b| {
        b.iter(|| {
            let req = RangeRequest {
                key: b"\0".to_vec(),
                range_end: b"\0".to_vec(),
                count_only: true,
                ..Default::default()
            };
            black_box(store.range(&req).expect("range"))
        })
    });
    group.finish();
}

criterion_group!(benches, apply, range);
criterion_main!(benches);
