//! Durable state of shardchat: messages keyed by (conversation, seq), the cmid dedup index,
//! membership, each user's conversation list and receipt watermarks.
//!
//! [`MessageStore`] is the contract every backend keeps; [`FjallStore`] is the embedded default.
//! Calls block on disk: the shards never call them on their reactor threads but from their
//! blocking pools (see `engine/src/runtime`). [`MessageStore::commit`] returns only once the
//! batch is durable, and concurrent commits share fsyncs (group commit, see [`group`]).

mod fjall_store;
pub mod group;
mod keys;

pub use fjall_store::{FjallStore, StoreConfig};
pub use shardchat_codec::{MsgRecord, ReceiptKind, Role};

/// Why the store could not do what was asked. Every variant maps to the contract's
/// `unavailable`: the client retries later; nothing acknowledged is affected.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// One group-commit batch: everything in it becomes durable atomically.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// New messages; each also enters the dedup index under (conv, from, cmid).
    pub messages: Vec<MsgRecord>,
    /// Memberships to record: (conv, user, role). Also adds conv to the user's list.
    pub members: Vec<(String, String, Role)>,
    /// Watermarks to record: (conv, user, kind, seq). The caller keeps them monotonic.
    pub watermarks: Vec<(String, String, ReceiptKind, u64)>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.members.is_empty() && self.watermarks.is_empty()
    }
}

/// The storage contract. All methods may block on disk.
pub trait MessageStore: Send + Sync + 'static {
    /// Applies `batch` atomically; returns once it is durable (fsync), never before.
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError>;
    /// The highest seq stored in `conv` (0 when it has no messages).
    fn last_seq(&self, conv: &str) -> Result<u64, StoreError>;
    /// The message `from` sent to `conv` with client message id `cmid`, if stored.
    fn find_cmid(&self, conv: &str, from: &str, cmid: &str) -> Result<Option<MsgRecord>, StoreError>;
    /// Up to `limit` messages of `conv` with seq > `after`, oldest first.
    fn messages_after(&self, conv: &str, after: u64, limit: usize) -> Result<Vec<MsgRecord>, StoreError>;
    /// Up to `limit` messages of `conv` with seq < `before` (all when `None`), newest first.
    fn messages_before(&self, conv: &str, before: Option<u64>, limit: usize) -> Result<Vec<MsgRecord>, StoreError>;
    /// Members of `conv` with their roles; empty when it does not exist.
    fn members(&self, conv: &str) -> Result<Vec<(String, Role)>, StoreError>;
    /// Conversations `user` belongs to.
    fn user_convs(&self, user: &str) -> Result<Vec<String>, StoreError>;
    /// The stored watermark of `user` in `conv` (0 when none).
    fn watermark(&self, conv: &str, user: &str, kind: ReceiptKind) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests;
