//! Snowflake message ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of worker (node and
//! shard), 12 bits of sequence within the millisecond. Ids from one worker strictly increase even
//! when the wall clock steps back: the generator never goes below the last millisecond it used,
//! and borrows the next millisecond when 4096 ids were taken in one.

pub use shardchat_codec::{
    ID_EPOCH_MS as EPOCH_MS, ID_SEQUENCE_BITS as SEQUENCE_BITS, ID_SHARD_BITS as SHARD_BITS, ID_WORKER_BITS as WORKER_BITS,
};
pub const SHARDS_PER_NODE_MAX: usize = 1 << SHARD_BITS;
pub const NODES_MAX: usize = 1 << (WORKER_BITS - SHARD_BITS);
const SEQUENCE_MAX: u64 = (1 << SEQUENCE_BITS) - 1;

#[derive(Debug)]
pub struct Snowflake {
    worker: u64,
    last_ms: u64,
    sequence: u64,
}

impl Snowflake {
    pub fn new(node: usize, shard: usize) -> Self {
        assert!(node < NODES_MAX, "node id {node} must be below {NODES_MAX}");
        assert!(shard < SHARDS_PER_NODE_MAX, "shard {shard} must be below {SHARDS_PER_NODE_MAX}");
        Snowflake { worker: ((node << SHARD_BITS) | shard) as u64, last_ms: 0, sequence: 0 }
    }

    /// The next id, given the wall clock in ms since the Unix epoch.
    pub fn next(&mut self, now_unix_ms: u64) -> u64 {
        let now = now_unix_ms.saturating_sub(EPOCH_MS);
        if now > self.last_ms {
            self.last_ms = now;
            self.sequence = 0;
        } else if self.sequence == SEQUENCE_MAX {
            // 4096 ids in this millisecond (or the clock went back): borrow the next one.
            self.last_ms += 1;
            self.sequence = 0;
        } else {
            self.sequence += 1;
        }
        (self.last_ms << (WORKER_BITS + SEQUENCE_BITS)) | (self.worker << SEQUENCE_BITS) | self.sequence
    }

    /// The Unix ms encoded in an id.
    pub fn unix_ms(id: u64) -> u64 {
        (id >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_carry_time_and_worker() {
        let mut s = Snowflake::new(3, 5);
        let id = s.next(EPOCH_MS + 1234);
        assert_eq!(Snowflake::unix_ms(id), EPOCH_MS + 1234);
        assert_eq!((id >> SEQUENCE_BITS) & ((1 << WORKER_BITS) - 1), (3 << SHARD_BITS) | 5);
        assert_eq!(shardchat_codec::id_node(id), 3, "the store reads the node back");
        assert_eq!(
            shardchat_codec::id_node(Snowflake::new(NODES_MAX - 1, SHARDS_PER_NODE_MAX - 1).next(EPOCH_MS + 9)),
            NODES_MAX as u16 - 1
        );
    }

    #[test]
    fn more_than_4096_in_one_ms_borrow_the_next() {
        let mut s = Snowflake::new(0, 0);
        let ids: Vec<u64> = (0..10_000).map(|_| s.next(EPOCH_MS + 50)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    proptest! {
        #[test]
        fn strictly_increasing_whatever_the_clock_does(steps in proptest::collection::vec(-5000i64..5000, 1..500)) {
            let mut s = Snowflake::new(1, 1);
            let mut clock = (EPOCH_MS + 1_000_000) as i64;
            let mut last = 0;
            for step in steps {
                clock += step;
                let id = s.next(clock as u64);
                prop_assert!(id > last);
                last = id;
            }
        }
    }
}
