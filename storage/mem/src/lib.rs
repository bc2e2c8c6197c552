//! The store in memory: the [`MessageStore`] contract over ordered maps, with faults that a test
//! or the simulator switches on and off.
//!
//! What it is for: the simulator and the state-machine fuzzer run every shard decision against
//! it, thousands of inputs a second, with no disk and no temporary directory; the tests that need
//! a failing disk use its [`Faults`] instead of hand-writing a wrapper. It passes the same
//! [`conformance`](shardchat_storage::conformance) suite as the embedded and ScyllaDB backends,
//! and its maps are ordered exactly as their keys are (conversation then seq, user names as
//! bytes), so every scan answers in the same order as theirs.
//!
//! What it deliberately is not: durable. A "crash" in the simulator is [`MemStore::clone_state`]
//! taken at the point the journal would have reached, handed to a fresh engine.

use shardchat_codec::{MsgRecord, ReceiptKind, Role};
use shardchat_storage::{Joined, LastSeen, Left, Membership, MessageStore, Named, PushEntry, StoreError, Watermark, WriteBatch};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Faults to inject. Each is read at the start of a call; tests flip them between calls.
#[derive(Default, Debug)]
pub struct Faults {
    /// Commits fail with [`StoreError::Io`] and change nothing (the disk is gone).
    pub commits_down: AtomicBool,
    /// Reads fail with [`StoreError::Io`].
    pub reads_down: AtomicBool,
    /// This many of the next commits fail with [`StoreError::Fatal`] (a failed fsync), each after
    /// it was applied: the journal holds it and a restart would replay it, but its writer hears
    /// an error. The ambiguous outcome every caller must survive (dedup on retry).
    pub fatal_after_apply: AtomicU64,
    /// This many of the next writes (commits, clearing the index queue) fail with
    /// [`StoreError::Io`] before changing anything.
    pub fail_next_commits: AtomicU64,
    /// Reads wait while this is set (a store that stops answering), then go on.
    pub reads_held: AtomicBool,
}

impl Faults {
    fn take(counter: &AtomicU64) -> bool {
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    /// (conv, seq) → message.
    messages: BTreeMap<(String, u64), MsgRecord>,
    /// (conv, from, cmid) → seq.
    dedup: BTreeMap<(String, String, String), u64>,
    /// conv → user → (role, joined).
    members: BTreeMap<String, BTreeMap<String, (Role, u64)>>,
    /// user → conversations.
    user_convs: BTreeMap<String, BTreeSet<String>>,
    /// (conv, user) → the seq up to which the former member may read.
    former: BTreeMap<(String, String), u64>,
    names: BTreeMap<String, String>,
    /// (conv, user, kind) → seq. `ReceiptKind` orders Delivered before Read, as the embedded
    /// store's kind bytes do.
    watermarks: BTreeMap<(String, String, u8), u64>,
    last_seen: BTreeMap<String, u64>,
    /// (id, user) → entry: oldest message first.
    push: BTreeMap<(u64, String), PushEntry>,
    /// id → message not yet indexed.
    index_queue: BTreeMap<u64, MsgRecord>,
    /// node → the highest fenced incarnation.
    fences: BTreeMap<u16, u64>,
}

/// The in-memory store. Cheap to make: one per fuzz input.
#[derive(Default)]
pub struct MemStore {
    state: Mutex<State>,
    pub faults: Faults,
    /// Commits applied (including those that then reported a fatal error).
    pub commits: AtomicU64,
}

fn kind_byte(k: ReceiptKind) -> u8 {
    match k {
        ReceiptKind::Delivered => 1,
        ReceiptKind::Read => 2,
    }
}

fn kind_of(b: u8) -> ReceiptKind {
    if b == 1 {
        ReceiptKind::Delivered
    } else {
        ReceiptKind::Read
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// A store holding what this one holds now (no faults): what a restart would find.
    pub fn clone_state(&self) -> MemStore {
        MemStore { state: Mutex::new(self.lock().clone()), ..Default::default() }
    }

    /// Whether two stores hold the same data (a replay of one seed must end equal).
    pub fn same_as(&self, other: &MemStore) -> bool {
        *self.lock() == *other.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while held is a test failure already; the data is still consistent (every
        // write below is applied under one lock, in full).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        while self.faults.reads_held.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if self.faults.reads_down.load(Ordering::Acquire) {
            return Err(StoreError::Io("injected: reads fail".into()));
        }
        Ok(self.lock())
    }

    fn write(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        if self.faults.commits_down.load(Ordering::Acquire) || Faults::take(&self.faults.fail_next_commits) {
            return Err(StoreError::Io("injected: the disk is gone".into()));
        }
        Ok(self.lock())
    }
}

impl State {
    /// The embedded store's order: every write of a batch in the order of its fields, a later
    /// write to the same row winning.
    fn apply(&mut self, batch: &WriteBatch) {
        for m in &batch.messages {
            self.index_queue.insert(m.id, m.clone());
            self.messages.insert((m.conv.clone(), m.seq), m.clone());
            self.dedup.insert((m.conv.clone(), m.from.clone(), m.cmid.clone()), m.seq);
        }
        for m in &batch.updates {
            debug_assert!(self.messages.contains_key(&(m.conv.clone(), m.seq)), "an update replaces a stored message");
            if shardchat_storage::reindexed(m) {
                self.index_queue.insert(m.id, m.clone());
            }
            self.messages.insert((m.conv.clone(), m.seq), m.clone());
        }
        for Joined { conv, member: m } in &batch.members {
            self.members.entry(conv.clone()).or_default().insert(m.user.clone(), (m.role, m.joined));
            self.user_convs.entry(m.user.clone()).or_default().insert(conv.clone());
            self.former.remove(&(conv.clone(), m.user.clone()));
        }
        for Left { conv, user, seq: left } in &batch.removed {
            if let Some(ms) = self.members.get_mut(conv) {
                ms.remove(user);
            }
            self.former.insert((conv.clone(), user.clone()), *left);
        }
        for Named { conv, name } in &batch.names {
            self.names.insert(conv.clone(), name.clone());
        }
        for LastSeen { user, unix_ms: ms } in &batch.last_seen {
            self.last_seen.insert(user.clone(), *ms);
        }
        for e in &batch.push {
            self.push.insert((e.id, e.user.clone()), e.clone());
        }
        for e in &batch.push_done {
            self.push.remove(&(e.id, e.user.clone()));
        }
        for Watermark { conv, user, kind, seq } in &batch.watermarks {
            self.watermarks.insert((conv.clone(), user.clone(), kind_byte(*kind)), *seq);
        }
    }

    fn conv_messages<'a>(&'a self, conv: &str, lo: u64, hi: u64) -> impl DoubleEndedIterator<Item = &'a MsgRecord> + 'a {
        self.messages.range((conv.to_string(), lo)..=(conv.to_string(), hi)).map(|(_, m)| m)
    }
}

impl MessageStore for MemStore {
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut st = self.write()?;
        st.apply(batch);
        self.commits.fetch_add(1, Ordering::Relaxed);
        if Faults::take(&self.faults.fatal_after_apply) {
            return Err(StoreError::Fatal("injected: the fsync after this batch failed".into()));
        }
        Ok(())
    }

    fn last_seq(&self, conv: &str) -> Result<u64, StoreError> {
        Ok(self.read()?.conv_messages(conv, 0, u64::MAX).next_back().map_or(0, |m| m.seq))
    }

    fn find_cmid(&self, conv: &str, from: &str, cmid: &str) -> Result<Option<MsgRecord>, StoreError> {
        let st = self.read()?;
        let Some(&seq) = st.dedup.get(&(conv.to_string(), from.to_string(), cmid.to_string())) else { return Ok(None) };
        st.messages
            .get(&(conv.to_string(), seq))
            .cloned()
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("a dedup entry names seq {seq}, which holds no message")))
    }

    fn messages_after(&self, conv: &str, after: u64, limit: usize) -> Result<Vec<MsgRecord>, StoreError> {
        let Some(lo) = after.checked_add(1) else { return Ok(Vec::new()) };
        Ok(self.read()?.conv_messages(conv, lo, u64::MAX).take(limit).cloned().collect())
    }

    fn messages_before(&self, conv: &str, before: Option<u64>, limit: usize) -> Result<Vec<MsgRecord>, StoreError> {
        let before = before.unwrap_or(u64::MAX);
        if before <= 1 {
            return Ok(Vec::new());
        }
        Ok(self.read()?.conv_messages(conv, 1, before - 1).rev().take(limit).cloned().collect())
    }

    fn members(&self, conv: &str) -> Result<Vec<Membership>, StoreError> {
        let st = self.read()?;
        let Some(ms) = st.members.get(conv) else { return Ok(Vec::new()) };
        Ok(ms.iter().map(|(user, &(role, joined))| Membership { user: user.clone(), role, joined }).collect())
    }

    fn left_at(&self, conv: &str, user: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.read()?.former.get(&(conv.to_string(), user.to_string())).copied())
    }

    fn conv_name(&self, conv: &str) -> Result<Option<String>, StoreError> {
        Ok(self.read()?.names.get(conv).cloned())
    }

    fn watermarks(&self, conv: &str) -> Result<Vec<(String, ReceiptKind, u64)>, StoreError> {
        let st = self.read()?;
        let lo = (conv.to_string(), String::new(), 0);
        Ok(st
            .watermarks
            .range(lo..)
            .take_while(|((c, _, _), _)| c == conv)
            .map(|((_, user, kind), &seq)| (user.clone(), kind_of(*kind), seq))
            .collect())
    }

    fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.read()?.last_seen.get(user).copied())
    }

    fn push_pending(&self, limit: usize) -> Result<Vec<PushEntry>, StoreError> {
        Ok(self.read()?.push.values().take(limit).cloned().collect())
    }

    fn push_done(&self, entries: &[PushEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut st = self.write()?;
        for e in entries {
            st.push.remove(&(e.id, e.user.clone()));
        }
        Ok(())
    }

    fn index_pending(&self, limit: usize) -> Result<Vec<MsgRecord>, StoreError> {
        Ok(self.read()?.index_queue.values().take(limit).cloned().collect())
    }

    fn index_done(&self, ids: &[u64]) -> Result<(), StoreError> {
        // A write like any other: the faults that fail commits fail it too.
        let mut st = self.write()?;
        for id in ids {
            st.index_queue.remove(id);
        }
        Ok(())
    }

    fn user_convs(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.read()?.user_convs.get(user).map(|s| s.iter().cloned().collect()).unwrap_or_default())
    }

    fn watermark(&self, conv: &str, user: &str, kind: ReceiptKind) -> Result<u64, StoreError> {
        Ok(self.read()?.watermarks.get(&(conv.to_string(), user.to_string(), kind_byte(kind))).copied().unwrap_or(0))
    }

    fn fence_node(&self, node: u16, incarnation: u64) -> Result<(), StoreError> {
        let mut st = self.write()?;
        let f = st.fences.entry(node).or_insert(0);
        *f = (*f).max(incarnation);
        Ok(())
    }

    fn node_fence(&self, node: u16) -> Result<u64, StoreError> {
        Ok(self.read()?.fences.get(&node).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardchat_storage::conformance::{conformance, rec};

    #[test]
    fn mem_store_passes_the_conformance_suite() {
        conformance(&MemStore::new());
    }

    #[test]
    fn injected_faults_fail_what_they_say_and_no_more() {
        let s = MemStore::new();
        let b = |seq| WriteBatch { messages: vec![rec("d:a:b", seq, "a", &format!("c{seq}"))], ..Default::default() };
        s.faults.fail_next_commits.store(1, Ordering::Relaxed);
        assert!(matches!(s.commit(&b(1)), Err(StoreError::Io(_))));
        assert_eq!(s.last_seq("d:a:b").unwrap(), 0, "a failed commit changes nothing");
        s.commit(&b(1)).unwrap();
        s.faults.fatal_after_apply.store(1, Ordering::Relaxed);
        assert!(matches!(s.commit(&b(2)), Err(StoreError::Fatal(_))));
        assert_eq!(s.last_seq("d:a:b").unwrap(), 2, "a fatal fsync error comes after the batch is in the journal");
        assert_eq!(s.find_cmid("d:a:b", "a", "c2").unwrap().map(|m| m.seq), Some(2));
        s.faults.reads_down.store(true, Ordering::Relaxed);
        assert!(s.last_seq("d:a:b").is_err());
        s.faults.reads_down.store(false, Ordering::Relaxed);
        s.faults.commits_down.store(true, Ordering::Relaxed);
        assert!(s.commit(&b(3)).is_err() && s.fence_node(1, 1).is_err());
        let restarted = s.clone_state();
        assert!(restarted.same_as(&s));
        restarted.commit(&b(3)).unwrap();
        assert!(!restarted.same_as(&s));
    }
}
