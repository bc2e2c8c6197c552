//! Messages written but not yet durable, so that reads do not show them.
//!
//! fjall makes a batch visible when it enters the journal, before the group fsync that makes it
//! durable. A `history` page, a `sync` chunk, the search indexer or the push sender reading in
//! that window could hand out a message that a crash then takes back (its sender was never acked
//! and retries it, possibly under another seq). So a commit registers its messages before writing
//! them and withdraws them once the fsync covered them; reads stop short of what is registered.
//!
//! Per conversation there is at most one batch in flight (its owner shard runs one commit at a
//! time), so a conversation's first undurable seq is the one its batch registered (asserted in
//! [`Undurable::begin`]). A commit whose fsync failed leaves its messages registered: they stay
//! hidden until the process restarts, and the journal then replays them or not.

use shardchat_codec::MsgRecord;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct Undurable {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// conv → its first seq written but not yet durable.
    first_seq: HashMap<String, u64>,
    /// Ids of the messages written but not yet durable (push entries and the index queue are
    /// keyed by message id).
    ids: HashSet<u64>,
    /// A commit's fsync failed and its messages stay registered (see [`Undurable::keep_hidden`]).
    failed: bool,
}

impl Undurable {
    /// Before `messages` are written (new ones, and stored ones in a new state: an update hides
    /// its conversation from its seq on, the same way).
    pub fn begin<'a>(&self, messages: impl IntoIterator<Item = &'a MsgRecord>) {
        let messages: Vec<&MsgRecord> = messages.into_iter().collect();
        if messages.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("never poisoned: no panics while held");
        // One batch in flight per conversation: a conversation already registered means its
        // owner started a second commit before the first was durable, and this module's one
        // number per conversation would then be wrong. Only a failed fsync's leftovers may be
        // there (they stay hidden; the process is on its way to a restart).
        assert!(
            inner.failed || messages.iter().all(|m| !inner.first_seq.contains_key(&m.conv)),
            "a conversation has two batches in flight"
        );
        for m in messages {
            let first = inner.first_seq.entry(m.conv.clone()).or_insert(m.seq);
            *first = (*first).min(m.seq);
            inner.ids.insert(m.id);
        }
    }

    /// The fsync covering `begin`'s messages failed: they stay hidden until the restart, whose
    /// journal replay decides whether they exist.
    pub fn keep_hidden(&self) {
        self.inner.lock().expect("never poisoned: no panics while held").failed = true;
    }

    /// Once `messages` are durable (or were never written).
    pub fn end<'a>(&self, messages: impl IntoIterator<Item = &'a MsgRecord>) {
        let messages: Vec<&MsgRecord> = messages.into_iter().collect();
        if messages.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("never poisoned: no panics while held");
        for m in messages {
            inner.first_seq.remove(&m.conv);
            inner.ids.remove(&m.id);
        }
    }

    /// The first seq of `conv` that reads must not show (u64::MAX: none).
    pub fn first_seq(&self, conv: &str) -> u64 {
        let inner = self.inner.lock().expect("never poisoned: no panics while held");
        inner.first_seq.get(conv).copied().unwrap_or(u64::MAX)
    }

    /// The lowest id registered (None: none is).
    pub fn lowest_id(&self) -> Option<u64> {
        let inner = self.inner.lock().expect("never poisoned: no panics while held");
        inner.ids.iter().min().copied()
    }

    /// Whether the message with this id is written but not yet durable.
    pub fn hides(&self, id: u64) -> bool {
        let inner = self.inner.lock().expect("never poisoned: no panics while held");
        !inner.ids.is_empty() && inner.ids.contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardchat_codec::MsgKind;

    fn msg(conv: &str, seq: u64, id: u64) -> MsgRecord {
        MsgRecord {
            conv: conv.into(),
            id,
            seq,
            from: "a".into(),
            cmid: format!("c{id}"),
            body: String::new(),
            kind: MsgKind::Text,
            ts: 0,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_is_hidden_from_its_first_seq_until_it_ends() {
        let u = Undurable::default();
        let batch = [msg("d:a:b", 4, 40), msg("d:a:b", 5, 41), msg("g:1", 9, 42)];
        u.begin(&batch);
        assert_eq!((u.first_seq("d:a:b"), u.first_seq("g:1"), u.first_seq("g:2")), (4, 9, u64::MAX));
        assert!(u.hides(41) && !u.hides(39));
        u.end(&batch);
        assert_eq!(u.first_seq("d:a:b"), u64::MAX);
        assert!(!u.hides(41));
    }
}
