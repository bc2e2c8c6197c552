//! Group fan-out of one message to 500 members: the home shards' share of a delivery.
//!
//! `fanout500/encode_once`: what shardchat does. The frame is encoded once into a `Payload` and
//! each of the 500 recipients' outbound queues gets a reference-counted view of the same bytes.
//! `fanout500/encode_each`: the naive way, one JSON encoding per recipient. The target is for
//! encode_once to stay in the low microseconds (a few ns a recipient), so a 500-member group
//! costs about what a handful of direct messages do.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shardchat_codec::ServerFrame;
use shardchat_shard::Payload;
use std::collections::VecDeque;

const MEMBERS: usize = 500;

fn msg() -> ServerFrame {
    shardchat_benches::msg_frame("g:0123456789abcdef")
}

fn fanout(c: &mut Criterion) {
    let mut queues: Vec<VecDeque<Bytes>> = (0..MEMBERS).map(|_| VecDeque::with_capacity(4)).collect();
    let mut g = c.benchmark_group("fanout500");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("encode_once", |b| {
        b.iter(|| {
            let p = Payload::new(msg());
            for q in &mut queues {
                q.push_back(p.text());
            }
            for q in &mut queues {
                black_box(q.pop_front());
            }
        })
    });
    g.bench_function("encode_each", |b| {
        b.iter(|| {
            let f = msg();
            for q in &mut queues {
                q.push_back(Bytes::from(serde_json::to_vec(&f).unwrap()));
            }
            for q in &mut queues {
                black_box(q.pop_front());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
