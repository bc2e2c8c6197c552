//! shardchat's benchmarks live in `benches/` (criterion): run `cargo bench -p shardchat-benches`.
//! Each states what it measures and the target; the load generator (`loadgen/`) measures the
//! whole engine.
