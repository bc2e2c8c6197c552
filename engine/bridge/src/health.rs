//! Whether this process's shards are serving: each shard beats once a tick from its own loop,
//! after its listener accepts. `/readyz` answers 200 and the cluster link announces (and keeps
//! announcing) this node only while every shard beats, so a node whose shards never started, or
//! stopped running, is not ready and is taken for dead by the other nodes. Runtime-agnostic:
//! atomics only, shared by the runtime, the control plane and the cluster link.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A shard whose last beat is older than this is stalled: not ready, and not announced. Shards
/// beat every tick (250 ms); this is eight of them, so a burst that delays a few ticks does not
/// count, while a stall is seen well inside a cluster node's liveness TTL (3,000 ms).
pub const SHARD_STALL_MS: u64 = 2_000;

pub struct Health {
    started: Instant,
    /// Per shard: ms since `started` of its last beat, plus one (0: it never beat).
    beats: Vec<AtomicU64>,
}

impl Health {
    pub fn new(shards: usize) -> Health {
        Health { started: Instant::now(), beats: (0..shards).map(|_| AtomicU64::new(0)).collect() }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// From shard `shard`'s own loop: it accepts connections and its tasks run.
    pub fn beat(&self, shard: usize) {
        self.beats[shard].store(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// Shards that never beat, or not within [`SHARD_STALL_MS`].
    pub fn stalled(&self) -> Vec<usize> {
        let now = self.now_ms();
        self.beats
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                let b = b.load(Ordering::Relaxed);
                b == 0 || now.saturating_sub(b - 1) > SHARD_STALL_MS
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Every shard accepts and runs.
    pub fn serving(&self) -> bool {
        self.stalled().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_only_while_every_shard_beats() {
        let h = Health::new(2);
        assert!(!h.serving(), "no shard has started");
        h.beat(0);
        assert_eq!(h.stalled(), vec![1], "one shard never started: not serving");
        h.beat(1);
        assert!(h.serving());
        // A shard that stops beating is stalled once SHARD_STALL_MS has passed.
        h.beats[1].store(1, Ordering::Relaxed);
        let h = Health { started: Instant::now() - std::time::Duration::from_millis(SHARD_STALL_MS + 500), beats: h.beats };
        h.beat(0);
        assert_eq!(h.stalled(), vec![1]);
    }
}
