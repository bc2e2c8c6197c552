//! Codec micro-benchmarks.
//!
//! - `decode/json_send` and `decode/rkyv_send`: decoding and validating one client `send` frame
//!   from untrusted bytes; the target is well under 1 µs for a 64-byte body, so one core decodes
//!   over a million frames per second.
//! - `encode/json_msg` and `encode/rkyv_msg`: encoding one server `msg` frame, the work a fan-out
//!   pays once per message (not once per recipient).
//! - `snowflake/next`: one message id; the target is tens of nanoseconds.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shardchat_codec::*;
use shardchat_shard::snowflake::Snowflake;

fn send_frame() -> ClientFrame {
    ClientFrame::Send {
        cmid: "c-0001".into(),
        to: Some("bob".into()),
        conv: None,
        body: "x".repeat(64),
        kind: MsgKind::Text,
        target: None,
        reply_to: None,
        media: None,
    }
}

fn msg_frame() -> ServerFrame {
    shardchat_benches::msg_frame("d:alice:bob")
}

fn decode(c: &mut Criterion) {
    let limits = Limits::default();
    let json = encode_client_text(&send_frame());
    let bin = encode_client_binary(&send_frame());
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json_send", |b| b.iter(|| decode_text(black_box(&json), &limits).unwrap()));
    g.bench_function("rkyv_send", |b| b.iter(|| decode_binary(black_box(&bin), &limits).unwrap()));
    g.finish();
}

fn encode(c: &mut Criterion) {
    let f = msg_frame();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json_msg", |b| b.iter(|| encode_text(black_box(&f))));
    g.bench_function("rkyv_msg", |b| b.iter(|| encode_binary(black_box(&f))));
    g.finish();
}

fn snowflake(c: &mut Criterion) {
    let mut s = Snowflake::new(0, 1);
    let mut now = 1_800_000_000_000u64;
    c.bench_function("snowflake/next", |b| {
        b.iter(|| {
            now += 1;
            s.next(black_box(now))
        })
    });
}

criterion_group!(benches, decode, encode, snowflake);
criterion_main!(benches);
