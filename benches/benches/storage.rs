//! Storage append throughput with group commit.
//!
//! `append/writers=N`: N threads (N shards' commit jobs) each commit one-message batches to one
//! `FjallStore`, every commit durable (fsync) before it returns. Group commit lets concurrent
//! writers share an fsync, so messages/s should grow with N while one writer is bound by the
//! disk's fsync latency: the target is several times the single-writer rate at 8 writers.
//! (Measured on the 2-core dev VM: 8.8K msg/s with 1 writer, 18K with 8. Before the leader
//! waited for writers queued behind fjall's journal lock, 8 writers got 7K: no sharing at all.)
//! `append/batch=64`: one writer, 64 messages a batch (what a busy shard's commit job writes).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardchat_codec::{MsgKind, MsgRecord};
use shardchat_storage::{MessageStore, WriteBatch};
use shardchat_storage_fjall::{FjallStore, StoreConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static NEXT: AtomicU64 = AtomicU64::new(1);

fn batch(conv: &str, n: usize) -> WriteBatch {
    let messages = (0..n)
        .map(|_| {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            MsgRecord {
                conv: conv.into(),
                id: i,
                seq: i,
                from: "alice".into(),
                cmid: format!("c{i}"),
                body: "x".repeat(64),
                kind: MsgKind::Text,
                ts: 1_800_000_000_000,
                ..Default::default()
            }
        })
        .collect();
    WriteBatch { messages, ..Default::default() }
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FjallStore::open(&StoreConfig::new(dir.path())).unwrap());
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for writers in [1usize, 2, 8] {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("writers", writers), &writers, |b, &writers| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(writers as u64);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for w in 0..writers {
                        let store = store.clone();
                        s.spawn(move || {
                            let conv = format!("d:w{w}:x");
                            for _ in 0..per {
                                store.commit(&batch(&conv, 1)).unwrap();
                            }
                        });
                    }
                });
                // Time per message over all writers: criterion's throughput is then messages/s.
                start.elapsed().div_f64((per * writers as u64) as f64 / iters as f64)
            })
        });
    }
    g.throughput(Throughput::Elements(64));
    g.bench_function("batch=64", |b| b.iter(|| store.commit(&batch("d:b:x", 64)).unwrap()));
    g.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
