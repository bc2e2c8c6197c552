//! Reads a home shard hands to its blocking pool on behalf of one connection: sync plans and
//! chunks, history pages, last-seen times, each checked against what the store records of the
//! reader's membership. Plain functions over a [`MessageStore`]: the runtime runs them off the
//! reactor, the simulator inline.

use shardchat_codec::{ErrorCode, FrameError, MsgRecord, Ref, ServerFrame};
use shardchat_storage::{MessageStore, StoreError};
use std::collections::BTreeMap;

/// Reads a home shard asks for on behalf of one connection.
#[derive(Clone, Debug)]
pub enum ReadJob {
    /// Which conversations `user` has and where each stands.
    SyncPlan { user: String, cursors: BTreeMap<String, u64> },
    /// Up to `limit` messages of `conv` after `after`, and no more than `bytes_max` of them.
    SyncChunk { conv: String, after: u64, limit: usize, bytes_max: usize },
    /// A page of up to `limit` messages, and no more than `bytes_max` of them.
    History { user: String, conv: String, before: Option<u64>, limit: usize, bytes_max: usize, r#ref: Option<Ref> },
    /// When `user` was last seen (presence of an offline user).
    LastSeen { user: String },
}

/// Where one conversation stands for a syncing device.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncConv {
    pub conv: String,
    /// What the device has (its cursor, 0 without one).
    pub cursor: u64,
    /// The last seq stored.
    pub last: u64,
}

#[derive(Debug)]
pub enum ReadOutcome {
    SyncPlan(Result<Vec<SyncConv>, FrameError>),
    SyncChunk {
        conv: String,
        messages: Result<Vec<MsgRecord>, FrameError>,
    },
    /// A `history` frame or the error to answer with.
    History(Result<ServerFrame, FrameError>),
    LastSeen {
        user: String,
        ms: Result<Option<u64>, FrameError>,
    },
}

/// A store failure as the contract's answer (logged here, once).
pub fn unavailable(e: StoreError) -> FrameError {
    tracing::error!(error = %e, "storage failed; answering unavailable");
    FrameError::new(ErrorCode::Unavailable, "storage unavailable, retry later")
}

/// Up to which seq `user` may read `conv`: everything for members (`u64::MAX`), up to the
/// message that recorded their leaving for former members. The members the store recorded
/// decide, never the shape of the id.
pub fn readable_upto(store: &dyn MessageStore, conv: &str, user: &str) -> Result<u64, FrameError> {
    let members = store.members(conv).map_err(unavailable)?;
    if members.iter().any(|m| m.user == user) {
        return Ok(u64::MAX);
    }
    if let Some(left) = store.left_at(conv, user).map_err(unavailable)? {
        return Ok(left);
    }
    if members.is_empty() {
        Err(FrameError::new(ErrorCode::NotFound, "no such conversation"))
    } else {
        Err(FrameError::new(ErrorCode::Forbidden, "not a member of this conversation"))
    }
}

/// What one message adds to a frame besides its body, in bytes (ids, names, JSON punctuation):
/// a generous estimate, so a trimmed frame stays under its budget.
const MESSAGE_OVERHEAD_BYTES: usize = 512;

/// Keeps the longest prefix of `messages` that fits in `bytes_max` (JSON escaping can grow a body
/// up to six-fold, so bodies count six times), and always the first message: a frame must make
/// progress, and the outbound bound is validated to hold one message of the largest size.
fn trim_to_bytes(mut messages: Vec<MsgRecord>, bytes_max: usize) -> Vec<MsgRecord> {
    let mut total = 0;
    let keep = messages
        .iter()
        .take_while(|m| {
            total += m.body.len() * 6 + m.cmid.len() + MESSAGE_OVERHEAD_BYTES;
            total <= bytes_max
        })
        .count();
    messages.truncate(keep.max(1));
    messages
}

/// The last seq of `conv` that reads may show: [`MessageStore::last_seq`] counts a batch as soon
/// as it is written, reads only once it is durable (the embedded store hides a batch during its
/// fsync). A sync plan or a REST listing built on the first would name a seq its reads cannot
/// yet return, and a client that saved it as its cursor would skip that message.
pub fn readable_last_seq(store: &dyn MessageStore, conv: &str) -> Result<u64, StoreError> {
    Ok(store.messages_before(conv, None, 1)?.first().map_or(0, |m| m.seq))
}

pub fn run_read(store: &dyn MessageStore, job: ReadJob) -> ReadOutcome {
    match job {
        ReadJob::SyncPlan { user, cursors } => ReadOutcome::SyncPlan((|| {
            let convs = store.user_convs(&user).map_err(unavailable)?;
            convs
                .into_iter()
                .map(|conv| {
                    // A former member syncs up to where they left.
                    let upto = match readable_upto(store, &conv, &user) {
                        Ok(u) => u,
                        Err(e) if e.code == ErrorCode::Unavailable => return Err(e),
                        Err(_) => 0,
                    };
                    let last = readable_last_seq(store, &conv).map_err(unavailable)?.min(upto);
                    let cursor = cursors.get(&conv).copied().unwrap_or(0);
                    Ok(SyncConv { conv, cursor, last })
                })
                .collect()
        })()),
        ReadJob::SyncChunk { conv, after, limit, bytes_max } => {
            let messages = store.messages_after(&conv, after, limit).map(|m| trim_to_bytes(m, bytes_max)).map_err(unavailable);
            ReadOutcome::SyncChunk { conv, messages }
        }
        ReadJob::History { user, conv, before, limit, bytes_max, r#ref } => ReadOutcome::History((|| {
            let upto = readable_upto(store, &conv, &user).map_err(|e| e.with_ref(r#ref.clone()))?;
            let before = Some(before.unwrap_or(u64::MAX).min(upto.saturating_add(1)));
            let messages = store.messages_before(&conv, before, limit).map_err(|e| unavailable(e).with_ref(r#ref.clone()))?;
            let messages = trim_to_bytes(messages, bytes_max);
            Ok(ServerFrame::History { conv, messages, r#ref })
        })()),
        ReadJob::LastSeen { user } => {
            let ms = store.last_seen(&user).map_err(unavailable);
            ReadOutcome::LastSeen { user, ms }
        }
    }
}
