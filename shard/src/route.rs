//! Which shard owns what: a user's connections live on its home shard, a conversation is
//! sequenced by its owner shard. Both come from a stable hash of an id modulo the shard count,
//! the same in every process and across restarts (FNV-1a, not the std hasher, whose keys are
//! random).

use shardchat_codec::direct_members;

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
    (mix(stable_hash(user)) % shards as u64) as ShardId
}

/// The shard that sequences, persists and fans out `conv`.
///
/// A group's is the hash of its id. A direct conversation's is the home shard of one of its two
/// members (which one, the conversation's hash decides, so owners spread as homes do): that
/// member's sends are sequenced where they arrive and acked there, and the other's messages are
/// delivered there, so a one-on-one message crosses shards 0.75 times on average with two
/// shards instead of 1.5 (about half as often with any number), each crossing a wake-up of
/// another core.
pub fn owner_shard(conv: &str, shards: usize) -> ShardId {
    debug_assert!(shards > 0);
    let h = mix(stable_hash(conv));
    match direct_members(conv) {
        Some((a, b)) => home_shard(if h & 1 == 0 { a } else { b }, shards),
        None => (h % shards as u64) as ShardId,
    }
}

/// A node of a cluster (`--node-id`); 0 when the engine runs alone.
pub type NodeId = u16;

/// The node whose owner shard sequences `conv`: rendezvous (highest random weight) hashing over
/// the live nodes, so when a node comes or goes only the conversations it owned, or now owns,
/// move (about 1/n of them), and every node that sees the same live set picks the same owner.
pub fn owner_node(conv: &str, live: &[NodeId]) -> Option<NodeId> {
    let h = stable_hash(conv);
    live.iter().copied().max_by_key(|&n| (mix(h ^ u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15)), n))
}

/// splitmix64's finalizer. FNV-1a alone mixes its low bits poorly: multiplying by an odd prime
/// keeps the lowest bit, so FNV's parity is the parity of the ids' odd bytes, and `d:s7:r7`,
/// `d:s8:r8`, … (each digit twice) all had one parity, one owner shard of two.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_conversations_and_moves_only_a_departed_nodes_share() {
        let convs: Vec<String> = (0..6000).map(|i| format!("g:{i}")).collect();
        let three = [0, 1, 2];
        let mut counts = [0usize; 3];
        for c in &convs {
            counts[owner_node(c, &three).unwrap() as usize] += 1;
        }
        assert!(counts.iter().all(|&n| n > 1700), "{counts:?}");
        // Node 1 leaves: exactly its conversations move, spread over the others.
        let mut moved = 0;
        for c in &convs {
            let before = owner_node(c, &three).unwrap();
            let after = owner_node(c, &[0, 2]).unwrap();
            if before != 1 {
                assert_eq!(before, after, "{c} moved though its owner stayed");
            } else {
                moved += 1;
            }
        }
        assert_eq!(moved, counts[1]);
        // Order of the live list does not matter; no live node, no owner.
        assert!(convs.iter().all(|c| owner_node(c, &[2, 0, 1]) == owner_node(c, &three)));
        assert_eq!(owner_node("g:1", &[]), None);
    }

    #[test]
    fn placement_is_stable_and_spread() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[home_shard(&format!("user{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        // Ids that differ only in digits repeated twice (FNV alone gave all of them one parity,
        // so one shard of two).
        let mut counts = [0usize; 2];
        for i in 0..2000 {
            counts[owner_shard(&format!("d:s{i}:r{i}"), 2)] += 1;
            counts[home_shard(&format!("u{i}u{i}"), 2)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 1800), "{counts:?}");
    }

    /// A direct conversation is owned on a member's home shard, each member's in about half of
    /// them, so owners spread over the shards as users do.
    #[test]
    fn a_direct_conversation_is_owned_on_a_members_home_shard() {
        let shards = 4;
        let (mut apart, mut first, mut counts) = (0, 0, [0usize; 4]);
        for i in 0..4000 {
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            let conv = shardchat_codec::direct_conv_id(&a, &b);
            let owner = owner_shard(&conv, shards);
            let (ha, hb) = (home_shard(&a, shards), home_shard(&b, shards));
            assert!(owner == ha || owner == hb, "{conv} owned on neither member's home");
            if ha != hb {
                apart += 1;
                first += usize::from(owner == ha);
            }
            counts[owner] += 1;
        }
        assert!(first * 10 > apart * 4 && first * 10 < apart * 6, "a's home owned {first} of {apart}");
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        // Groups are placed by their id's hash, as before.
        for g in (0..200).map(|i| format!("g:{i}")) {
            assert_eq!(owner_shard(&g, shards), (mix(stable_hash(&g)) % 4) as usize, "{g} moved");
        }
    }
}
