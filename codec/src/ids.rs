//! Identifiers of the contract: users, devices, conversations, client message ids.

/// User and device ids: 1 to 64 characters of `[A-Za-z0-9_.:@-]`.
pub const USER_ID_BYTES_MAX: usize = 64;
/// Client message ids: 1 to 64 characters (any; at most 256 bytes).
pub const CMID_CHARS_MAX: usize = 64;
/// Conversation ids: a direct id is `d:` and two user ids; group ids are shorter.
pub const CONV_ID_BYTES_MAX: usize = 2 + USER_ID_BYTES_MAX + 1 + USER_ID_BYTES_MAX;

/// Message ids are Snowflakes: 41 bits of milliseconds since [`ID_EPOCH_MS`], 10 bits of worker
/// (the node, then [`ID_SHARD_BITS`] of shard), 12 bits of sequence. `shard::snowflake` makes
/// them; the layout is here because the store reads the node back ([`id_node`]).
/// 2024-01-01T00:00:00Z: 41 bits of milliseconds from here last until 2093.
pub const ID_EPOCH_MS: u64 = 1_704_067_200_000;
pub const ID_WORKER_BITS: u32 = 10;
pub const ID_SEQUENCE_BITS: u32 = 12;
/// Shards per node the worker id can tell apart; the rest of the worker bits name the node.
pub const ID_SHARD_BITS: u32 = 6;
/// Bits of milliseconds: what is left of 63 (ids stay positive as signed 64-bit integers, which
/// the ScyllaDB backend stores them as).
pub const ID_TIME_BITS: u32 = 63 - ID_WORKER_BITS - ID_SEQUENCE_BITS;
const _: () = assert!(ID_TIME_BITS == 41 && ID_SHARD_BITS < ID_WORKER_BITS);

/// The node that made message id `id` (the one that sequenced the message).
pub fn id_node(id: u64) -> u16 {
    ((id >> (ID_SEQUENCE_BITS + ID_SHARD_BITS)) & ((1 << (ID_WORKER_BITS - ID_SHARD_BITS)) - 1)) as u16
}

fn id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'@' | b'-')
}

/// Whether `s` is a valid user or device id.
pub fn valid_user_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= USER_ID_BYTES_MAX && s.bytes().all(id_char)
}

/// Whether `s` is a well-formed conversation id (it may still not exist): `g:` and a message id
/// (the decimal u64 the server made the group with), or `d:` and two user ids in byte-wise order.
/// Anything else is `bad_request`, never `not_found`.
pub fn valid_conv_id(s: &str) -> bool {
    if s.len() > CONV_ID_BYTES_MAX {
        return false;
    }
    if let Some(id) = s.strip_prefix("g:") {
        return !id.is_empty() && id.bytes().all(|c| c.is_ascii_digit()) && id.parse::<u64>().is_ok();
    }
    direct_members(s).is_some()
}

/// The id of the direct conversation between `a` and `b`: `d:<min>:<max>`, byte-wise order.
pub fn direct_conv_id(a: &str, b: &str) -> String {
    let (lo, hi) = if a.as_bytes() <= b.as_bytes() { (a, b) } else { (b, a) };
    format!("d:{lo}:{hi}")
}

/// The two members of a direct conversation id, when it is one.
///
/// User ids may themselves contain `:`, so `d:a:x:a:y` is the id of both (`a:x`, `a:y`) and
/// (`a`, `x:a:y`): the contract's scheme is ambiguous there. This returns the leftmost split that
/// gives two valid ids in byte-wise order. It is a hint for creating a conversation, never an
/// authorization: membership is what the store recorded when the conversation was created.
///
/// No id is built to compare: a split of `d:<rest>` at one of its `:` gives back `conv` when
/// joined, so byte order is the only thing left to check. (Every op's owner shard is found
/// through this, so it allocates nothing.)
pub fn direct_members(conv: &str) -> Option<(&str, &str)> {
    let found = direct_splits(conv).find(|&(a, b)| a.as_bytes() <= b.as_bytes());
    debug_assert!(found.is_none_or(|(a, b)| direct_conv_id(a, b) == conv), "a split of {conv} does not join back");
    found
}

/// Every way to read `d:<a>:<b>` as two valid user ids, leftmost first, in either order: what a
/// direct id is shaped like, before [`direct_members`] asks for the byte-wise order.
pub fn direct_splits(conv: &str) -> impl Iterator<Item = (&str, &str)> {
    let rest = conv.strip_prefix("d:").unwrap_or("");
    rest.char_indices()
        .filter(|&(_, c)| c == ':')
        .map(move |(i, _)| (&rest[..i], &rest[i + 1..]))
        .filter(|&(a, b)| valid_user_id(a) && valid_user_id(b))
}
