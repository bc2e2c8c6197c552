//! What a conversation's owner shard keeps of it in memory ([`ConvState`]), how it is loaded
//! from the store the first time, and the membership checks every op makes against it.

use shardchat_codec::{direct_members, ErrorCode, FrameError, ReceiptKind};
use shardchat_storage::{Membership, MessageStore, StoreError};
use std::collections::{BTreeMap, VecDeque};

/// Recent messages whose authors get coalesced group receipt counts.
pub const RECENT_MESSAGES_MAX: usize = 64;

/// What the owner shard caches of a conversation it sequences. The commit job owns it while the
/// job runs (the shard moves it in and gets it back), so only one thread ever touches it.
#[derive(Clone, Debug, Default)]
pub struct ConvState {
    pub last_seq: u64,
    /// Current members. Empty exactly when the conversation does not exist (or all left).
    pub members: Vec<Membership>,
    /// The group's name; empty for direct conversations.
    pub name: String,
    /// Every stored watermark: (user, kind) → seq.
    pub marks: BTreeMap<(String, ReceiptKind), u64>,
    /// Of the last [`RECENT_MESSAGES_MAX`] messages, those users sent (not system messages):
    /// (seq, from), oldest first. Their authors get receipt counts.
    pub recent: VecDeque<(u64, String)>,
}

impl ConvState {
    pub fn is_group(conv: &str) -> bool {
        conv.starts_with("g:")
    }

    pub fn is_member(&self, user: &str) -> bool {
        self.members.iter().any(|m| m.user == user)
    }

    pub fn member_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.user.clone()).collect()
    }

    pub fn mark(&self, user: &str, kind: ReceiptKind) -> u64 {
        self.marks.get(&(user.to_string(), kind)).copied().unwrap_or(0)
    }

    /// Whether `user` has message `seq` delivered (a read implies delivered) or read.
    pub(crate) fn has(&self, user: &str, kind: ReceiptKind, seq: u64) -> bool {
        match kind {
            ReceiptKind::Read => self.mark(user, ReceiptKind::Read) >= seq,
            ReceiptKind::Delivered => self.mark(user, ReceiptKind::Delivered).max(self.mark(user, ReceiptKind::Read)) >= seq,
        }
    }

    /// Delivered and read counts of message `seq` by `from`, among the other current members.
    pub fn counts(&self, seq: u64, from: &str) -> (u32, u32, u32) {
        let others = self.members.iter().filter(|m| m.user != from);
        let (mut of, mut d, mut r) = (0, 0, 0);
        for m in others {
            of += 1;
            d += u32::from(self.has(&m.user, ReceiptKind::Delivered, seq));
            r += u32::from(self.has(&m.user, ReceiptKind::Read, seq));
        }
        (of, d, r)
    }

    pub(crate) fn push_recent(&mut self, seq: u64, from: &str) {
        if self.recent.len() == RECENT_MESSAGES_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, from.to_string()));
    }
}

/// Loads what the owner keeps of `conv` from the store (once; then it is cached).
pub fn load_conv(store: &dyn MessageStore, conv: &str) -> Result<ConvState, StoreError> {
    let last_seq = store.last_seq(conv)?;
    let members = store.members(conv)?;
    let name = if ConvState::is_group(conv) { store.conv_name(conv)?.unwrap_or_default() } else { String::new() };
    let marks = store.watermarks(conv)?.into_iter().map(|(u, k, s)| ((u, k), s)).collect();
    let mut recent: VecDeque<(u64, String)> = store
        .messages_before(conv, None, RECENT_MESSAGES_MAX)?
        .into_iter()
        .filter(|m| m.kind.is_content())
        .map(|m| (m.seq, m.from))
        .collect();
    recent.make_contiguous().reverse();
    Ok(ConvState { last_seq, members, name, marks, recent })
}

/// Membership check for requests about an existing conversation.
pub fn check_member(st: &ConvState, user: &str) -> Result<(), FrameError> {
    if st.members.is_empty() {
        Err(FrameError::new(ErrorCode::NotFound, "no such conversation"))
    } else if !st.is_member(user) {
        Err(FrameError::new(ErrorCode::Forbidden, "not a member of this conversation"))
    } else {
        Ok(())
    }
}

/// Who hears `user` typing in `conv`. Someone composing the first message of a direct
/// conversation is heard too: it is not stored yet, but its id names both members.
pub fn typing_members(st: &ConvState, conv: &str, user: &str) -> Result<Vec<String>, FrameError> {
    if st.members.is_empty() {
        if let Some((a, b)) = direct_members(conv).filter(|(a, b)| *a == user || *b == user) {
            return Ok(vec![a.to_string(), b.to_string()]);
        }
    }
    check_member(st, user).map(|()| st.member_names())
}
