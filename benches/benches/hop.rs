//! Cross-shard hop: the round-trip time of one message between two pinned shards over the
//! glommio channel mesh the engine uses, with and without `spin_before_park`.
//!
//! A message from a client to a conversation owned by another shard crosses at least one hop
//! each way, so this bounds the engine's added latency from below. Target: a few microseconds
//! with spinning; tens of microseconds when the receiving executor has parked (the wake-up
//! goes through an eventfd and the scheduler).
//!
//! Run: `cargo bench -p shardchat-benches --bench hop [-- --json FILE]`. Prints a table.
//! Each round trip is measured after a pause (20 µs: a busy shard; 500 µs: a shard that has
//! had time to park), since parking is what spinning avoids.

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

const ROUND_TRIPS: usize = 20_000;

fn run(spin: Duration, pause: Duration) -> Histogram<u64> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mesh = MeshBuilder::<u64, _>::full(2, 64);
    let mut handles = Vec::new();
    for id in 0..2usize {
        let mesh = mesh.clone();
        let h = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
            .spin_before_park(spin)
            .spawn(move || async move {
                let (tx, mut rx) = mesh.join().await.unwrap();
                let peer = 1 - tx.peer_id();
                let (_, inbox) = rx.streams().pop().unwrap();
                let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
                if tx.peer_id() == 0 {
                    for i in 0..ROUND_TRIPS as u64 {
                        glommio::timer::sleep(pause).await;
                        let t = Instant::now();
                        tx.send_to(peer, i).await.unwrap();
                        let back = inbox.recv().await.unwrap();
                        assert_eq!(back, i);
                        hist.record(t.elapsed().as_nanos().max(1) as u64).unwrap();
                    }
                } else {
                    for _ in 0..ROUND_TRIPS {
                        let v = inbox.recv().await.unwrap();
                        tx.send_to(peer, v).await.unwrap();
                    }
                }
                hist
            })
            .unwrap();
        handles.push(h);
    }
    let mut out = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    for h in handles {
        out.add(h.join().unwrap()).unwrap();
    }
    out
}

fn main() {
    let json = std::env::args().skip_while(|a| a != "--json").nth(1);
    let mut rows = Vec::new();
    println!("| spin_before_park | pause between round trips | round trips | p50 µs | p90 µs | p99 µs | max µs |");
    println!("|---|---|---|---|---|---|---|");
    for (spin_us, pause_us) in [(0u64, 20u64), (50, 20), (0, 500), (50, 500), (1000, 500)] {
        let h = run(Duration::from_micros(spin_us), Duration::from_micros(pause_us));
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {spin_us} µs | {pause_us} µs | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            h.len(),
            us(0.5),
            us(0.9),
            us(0.99),
            h.max() as f64 / 1000.0
        );
        rows.push(serde_json::json!({
            "spin_before_park_us": spin_us, "pause_us": pause_us, "round_trips": h.len(),
            "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "max_us": h.max() as f64 / 1000.0,
        }));
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
        println!("written to {path}");
    }
}
