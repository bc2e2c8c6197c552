//! Durable state of shardchat: messages keyed by (conversation, seq), the cmid dedup index,
//! membership (current and former), group names, each user's conversation list, receipt
//! watermarks and last-seen times.
//!
//! This crate is the contract alone: [`MessageStore`] and the types it speaks, depending on the
//! codec and nothing that does I/O, so the shard logic that is written against it cannot reach
//! a disk, a socket or a runtime. The backends are crates of their own beside it:
//! `storage/fjall` (the embedded default), `storage/scylla` (the one several nodes share),
//! `storage/mem` (in memory, with fault injection: the simulator's and the tests'), and
//! [`conformance`] is the suite each of them passes.
//!
//! Calls may block on disk: the shards never call them on their reactor threads but from their
//! blocking pools (see `engine/src/runtime`). [`MessageStore::commit`] returns only once the
//! batch is durable.

pub mod conformance;

pub use shardchat_codec::{MsgRecord, ReceiptKind, Role};

/// Why the store could not do what was asked. Every variant maps to the contract's
/// `unavailable`: the client retries later; nothing acknowledged is affected.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write or fsync failed and the store refuses further writes (what was written before
    /// it is safe in the journal). Retrying cannot help: after a failed fsync the kernel may have
    /// dropped the pages. The process should exit and recover from the journal on restart.
    #[error("storage failed and accepts no more writes until a restart: {0}")]
    Fatal(String),
}

/// A current member of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub user: String,
    pub role: Role,
    /// The seq of the message that recorded the join (the group's creation or the add); 0 for
    /// direct conversations. "Oldest member" means smallest `joined`.
    pub joined: u64,
}

/// One group-commit batch: everything in it becomes durable atomically.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// New messages; each also enters the dedup index under (conv, from, cmid).
    pub messages: Vec<MsgRecord>,
    /// Stored messages in a new state (edited, deleted, reacted to), each replacing the record
    /// at its (conv, seq). One whose text changed (`edited_at` or `deleted` set) enters the
    /// search index queue again, so the index follows.
    pub updates: Vec<MsgRecord>,
    /// Memberships to record (or update).
    pub members: Vec<Joined>,
    /// Members who left or were removed.
    pub removed: Vec<Left>,
    /// Group names.
    pub names: Vec<Named>,
    /// Watermarks to record. The caller keeps them monotonic.
    pub watermarks: Vec<Watermark>,
    /// Last-seen times.
    pub last_seen: Vec<LastSeen>,
    /// Push notifications owed (the push outbox). The owner writes one for every recipient of a
    /// message in the batch that stores it, so a crash can never lose one.
    pub push: Vec<PushEntry>,
    /// Outbox entries no longer owed: the recipient got the message live. Removing an entry
    /// that is not there is a no-op.
    pub push_done: Vec<PushEntry>,
}

/// A membership recorded (or updated): adds `conv` to the user's list and clears any former
/// membership of theirs in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    pub conv: String,
    pub member: Membership,
}

/// A member who left or was removed. They keep read access up to `seq`, the message that
/// recorded it; the conversation stays in their list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Left {
    pub conv: String,
    pub user: String,
    pub seq: u64,
}

/// A group's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub conv: String,
    pub name: String,
}

/// How far `user` has `conv` delivered or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watermark {
    pub conv: String,
    pub user: String,
    pub kind: ReceiptKind,
    pub seq: u64,
}

/// When `user` was last seen online (unix ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastSeen {
    pub user: String,
    pub unix_ms: u64,
}

/// One message an offline user should hear about. The push sender folds a user's entries into
/// one notification per burst and removes exactly the entries it delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushEntry {
    pub user: String,
    pub conv: String,
    pub from: String,
    /// The message id (Snowflake: also orders the outbox).
    pub id: u64,
    pub ts: u64,
}

/// Whether an updated record's text changed, so that the search index must follow it.
pub fn reindexed(m: &MsgRecord) -> bool {
    m.edited_at.is_some() || m.deleted
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.updates.is_empty()
            && self.members.is_empty()
            && self.removed.is_empty()
            && self.names.is_empty()
            && self.watermarks.is_empty()
            && self.last_seen.is_empty()
            && self.push.is_empty()
            && self.push_done.is_empty()
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
    /// Current members of `conv`; empty when it does not exist (or everyone left).
    fn members(&self, conv: &str) -> Result<Vec<Membership>, StoreError>;
    /// When `user` left `conv`: the seq up to which a former member may still read.
    fn left_at(&self, conv: &str, user: &str) -> Result<Option<u64>, StoreError>;
    /// The name of group `conv`.
    fn conv_name(&self, conv: &str) -> Result<Option<String>, StoreError>;
    /// Every watermark stored for `conv`: (user, kind, seq).
    fn watermarks(&self, conv: &str) -> Result<Vec<(String, ReceiptKind, u64)>, StoreError>;
    /// The last time `user` was seen online, if ever.
    fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError>;
    /// Up to `limit` entries of the push outbox, oldest first.
    fn push_pending(&self, limit: usize) -> Result<Vec<PushEntry>, StoreError>;
    /// Removes delivered outbox entries (durably).
    fn push_done(&self, entries: &[PushEntry]) -> Result<(), StoreError>;
    /// Up to `limit` stored messages not yet in the search index, oldest first. Every committed
    /// message enters this queue in its own batch, so the index catches up after any crash.
    fn index_pending(&self, limit: usize) -> Result<Vec<MsgRecord>, StoreError>;
    /// Removes indexed messages (by id) from the queue.
    fn index_done(&self, ids: &[u64]) -> Result<(), StoreError>;
    /// Conversations `user` belongs to.
    fn user_convs(&self, user: &str) -> Result<Vec<String>, StoreError>;
    /// The stored watermark of `user` in `conv` (0 when none).
    fn watermark(&self, conv: &str, user: &str, kind: ReceiptKind) -> Result<u64, StoreError>;
    /// Cluster mode: records (durably) that incarnation `incarnation` of node `node`, and every
    /// earlier one, is taken for dead: its conversations are being sequenced elsewhere.
    fn fence_node(&self, node: u16, incarnation: u64) -> Result<(), StoreError>;
    /// The highest incarnation of `node` fenced so far (0 when none). A node whose incarnation
    /// is at or below it must not sequence anything.
    fn node_fence(&self, node: u16) -> Result<u64, StoreError>;
    /// Makes everything written so far durable before shutdown. Every commit is already durable
    /// when it returns; this covers the bookkeeping writes (outbox and index queue removals)
    /// that a backend may leave buffered.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
