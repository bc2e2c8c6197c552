//! The simulator's speed: the committed `shard_machine` corpus (fuzz/corpus/shard_machine), each
//! input a run of one to three shards, six devices and up to a few hundred client steps through
//! `shard::sim` on the in-memory store, every invariant checked at the end (what the fuzzer and
//! the corpus test do per input).
//!
//! `sim/corpus`: one pass over the corpus; throughput in inputs. Before the store was in memory
//! each input opened a fjall database in a temporary directory, and the fuzzer ran about 90
//! inputs a second; the target is thousands a second on one core. The shard actions one pass
//! takes are printed once, to read the figure as steps per second too.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardchat_shard::fuzzing::run;

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shard_machine");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    inputs.sort();
    inputs
}

fn sim(c: &mut Criterion) {
    let inputs = corpus();
    let actions: usize = inputs.iter().map(|d| run(d, true).1.map_or(0, |t| t.len())).sum();
    println!("sim/corpus: {} inputs, {actions} shard actions a pass", inputs.len());
    let mut g = c.benchmark_group("sim");
    g.throughput(Throughput::Elements(inputs.len() as u64));
    g.bench_function("corpus", |b| {
        b.iter(|| {
            for d in &inputs {
                run(d, false);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, sim);
criterion_main!(benches);
