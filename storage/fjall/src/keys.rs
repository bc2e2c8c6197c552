//! Key layouts. Ids never contain 0x00 (the contract's id alphabet), so it separates components
//! and a prefix scan over `conv 0x00` is exactly one conversation. Numbers are big-endian so
//! byte order is numeric order and a history page is one range scan.

pub const SEP: u8 = 0;

/// `messages`: conv 0x00 seq(u64 BE)
pub fn message(conv: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(conv);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first byte of an `index_queue` value that points at its message: [`INDEX_POINTER`], then
/// the message's `messages` key. Earlier releases stored a copy of the record there, whose first
/// byte is `record::RECORD_V2` (0xFF) or, in version 1, the first byte of an ASCII string; UTF-8
/// never holds 0xFE either, so the two never meet.
pub const INDEX_POINTER: u8 = 0xFE;

/// `index_queue`: id(u64 BE) → [`INDEX_POINTER`] then the message's key ([`message`]). A
/// pointer, not a second copy of the record: the copy doubled the bytes every message put
/// through the journal, the memtables and their flushes (a 54 MB `index_queue` table beside each
/// 50 MB `messages` one).
pub fn index_pointer(message_key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + message_key.len());
    v.push(INDEX_POINTER);
    v.extend_from_slice(message_key);
    v
}

/// The `messages` key an `index_queue` value points at; None for a stored copy of the record.
pub fn pointed_message(value: &[u8]) -> Option<&[u8]> {
    match value.split_first() {
        Some((&INDEX_POINTER, key)) => Some(key),
        _ => None,
    }
}

/// `conv 0x00`: the prefix of every key of one conversation (or one user) in a keyspace.
pub fn prefix(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 9);
    k.extend_from_slice(id.as_bytes());
    k.push(SEP);
    k
}

/// `dedup`: conv 0x00 from 0x00 cmid. The cmid comes last: it is the only component that may hold
/// any character, and nothing follows it.
pub fn dedup(conv: &str, from: &str, cmid: &str) -> Vec<u8> {
    let mut k = prefix(conv);
    k.extend_from_slice(from.as_bytes());
    k.push(SEP);
    k.extend_from_slice(cmid.as_bytes());
    k
}

/// `members`: conv 0x00 user; `user_convs`: user 0x00 conv.
pub fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut k = prefix(a);
    k.extend_from_slice(b.as_bytes());
    k
}

/// `watermarks`: conv 0x00 user 0x00 kind
pub fn watermark(conv: &str, user: &str, kind: u8) -> Vec<u8> {
    let mut k = pair(conv, user);
    k.push(SEP);
    k.push(kind);
    k
}

pub fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}
