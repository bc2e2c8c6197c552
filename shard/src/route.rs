//! Which shard owns what: a user's connections live on its home shard, a conversation is
//! sequenced by its owner shard. Both are a stable hash of the id modulo the shard count, the same
//! in every process and across restarts (FNV-1a, not the std hasher, whose keys are random).

pub type ShardId = usize;

/// FNV-1a, 64 bits: stable, fast on short ids, and good enough spread for a modulo.
pub fn stable_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard holding `user`'s connections, presence and outbound queues.
pub fn home_shard(user: &str, shards: usize) -> ShardId {
    debug_assert!(shards > 0);
    (stable_hash(user) % shards as u64) as ShardId
}

/// The shard that sequences, persists and fans out `conv`.
pub fn owner_shard(conv: &str, shards: usize) -> ShardId {
    debug_assert!(shards > 0);
    (stable_hash(conv) % shards as u64) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spread() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[home_shard(&format!("user{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
