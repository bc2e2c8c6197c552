//! A conversation owner's commit job, run in its blocking pool: every decision the owner makes
//! about a batch of ops (seq and id order, cmid dedup, membership, direct conversations created
//! by their first message, group rules, watermarks) and the one durable write that records them.
//!
//! It runs in three steps, so that the decisions are a pure function the simulator and the
//! fuzzer drive without a disk:
//! 1. **prefetch** (I/O): [`prefetch`] loads what the store holds that the decisions need: the
//!    state of conversations not cached, the stored messages the job's cmids name, the authors of
//!    queried messages no longer in memory; and the node's fence (cluster mode).
//! 2. **sequence** (pure, [`sequence::sequence`]): the ops in order over the in-memory state,
//!    producing the write batch and each op's outcome.
//! 3. **write** (I/O): the fence read again if the first read is older than [`FENCE_FRESH_MS`]
//!    by the clock passed in, then one [`MessageStore::commit`], which returns once durable.

pub mod group;
pub mod revise;
pub mod sequence;

use crate::conv::{load_conv, ConvState};
use crate::ops::{ConnRef, Op};
use sequence::{sequence, Loaded, Sequenced};
use shardchat_codec::{ErrorCode, FrameError, MsgRecord, ReceiptKind, Ref, ServerFrame};
use shardchat_storage::{Membership, MessageStore, StoreError};
use std::collections::BTreeMap;

/// The conversations a commit job works on, ordered: a job, like everything a shard emits,
/// must look the same on every replay of a seed.
pub type Convs = BTreeMap<String, ConvState>;

#[derive(Debug)]
pub struct CommitJob {
    pub ops: Vec<Op>,
    /// Cached state of the conversations the ops touch; missing ones are loaded by the job.
    pub convs: Convs,
    /// Cluster mode: (this node, its incarnation). The job reads the node's fence first and
    /// sequences nothing if the others have taken this incarnation for dead.
    pub fence: Option<(crate::route::NodeId, u64)>,
    /// Push notifications are on (one node): every stored message owes each recipient a push,
    /// written in the message's own batch; home shards withdraw it for recipients who got the
    /// message live ([`Op::PushDelivered`]). A crash between the ack and the home shard's
    /// decision so repeats a notification at worst, never loses one.
    pub push: bool,
}

/// Longest time between reading the fence and writing the batch it allowed; past it the fence
/// is read again. Well under `HANDOVER_MS`, the wait between a fence being written and the new
/// owner sequencing, so a write the fence allowed lands before the new owner's first.
pub const FENCE_FRESH_MS: u64 = 1_000;

#[derive(Debug)]
pub enum OpOutcome {
    /// A message is durable: `fresh` unless it was a retried `cmid` (then only the ack is owed).
    Stored {
        reply_to: ConnRef,
        record: MsgRecord,
        members: Vec<String>,
        fresh: bool,
    },
    /// A watermark moved forward (or not: `changed` false means nothing to forward).
    Marked {
        conv: String,
        user: String,
        kind: ReceiptKind,
        seq: u64,
        members: Vec<String>,
        changed: bool,
    },
    /// A group changed (or was only read, when `system` is None): the `group` frame goes to the
    /// members and answers the requester; the system message goes to the members and to
    /// `notify` (users removed by this change, who may read up to it).
    Grouped {
        reply_to: ConnRef,
        r#ref: Option<Ref>,
        conv: String,
        name: String,
        members: Vec<Membership>,
        notify: Vec<String>,
        system: Option<MsgRecord>,
    },
    /// A typing notice checked against membership: relay to the other members.
    Typed {
        conv: String,
        user: String,
        members: Vec<String>,
    },
    /// A frame for one connection (answers that need no fan-out).
    Answer {
        reply_to: ConnRef,
        frame: ServerFrame,
    },
    Rejected {
        reply_to: ConnRef,
        err: FrameError,
    },
}

#[derive(Debug)]
pub struct CommitOutcome {
    pub outcomes: Vec<OpOutcome>,
    /// The store failed for good (a write or fsync error it will not retry): the process must
    /// exit and recover from the journal on restart. Everything in the job was refused.
    pub fatal: Option<String>,
    /// Cluster mode: the node's incarnation was fenced; nothing of a conversation was written.
    pub fenced: bool,
    /// The conversations' state after the job, to cache again; empty after a storage failure
    /// (the shard then reloads from the store).
    pub convs: Convs,
}

/// Sequences and stores one batch of ops, in order. Returns after the batch is durable.
/// `mono_ms` reads a monotonic clock in milliseconds: how old the fence read is.
pub fn run_commit(store: &dyn MessageStore, job: CommitJob, mono_ms: &dyn Fn() -> u64) -> CommitOutcome {
    let CommitJob { ops, mut convs, fence, push } = job;
    let mut guard = Fence { of: fence, read_at_ms: None };
    match commit_inner(store, &ops, &mut convs, &mut guard, push, mono_ms) {
        Ok(Some(outcomes)) => CommitOutcome { outcomes, fenced: false, fatal: None, convs },
        Ok(None) => {
            // Another node sequences these conversations now. What has no conversation (last
            // seen, the push outbox) is this node's own and still written.
            let why = FrameError::new(ErrorCode::Unavailable, "this node is rejoining the cluster; retry shortly");
            let mut outcomes: Vec<OpOutcome> = ops
                .iter()
                .filter(|op| op.conv().is_some())
                .filter_map(|op| op.refusal(why.clone()))
                .map(|(reply_to, frame)| OpOutcome::Answer { reply_to, frame })
                .collect();
            let local: Vec<Op> = ops.into_iter().filter(|op| op.conv().is_none()).collect();
            let mut unfenced = Fence { of: None, read_at_ms: None };
            match commit_inner(store, &local, &mut Convs::new(), &mut unfenced, false, mono_ms) {
                Ok(Some(more)) => outcomes.extend(more),
                Ok(None) => unreachable!("no fence to check"),
                Err(e) => tracing::error!(error = %e, "commit of a fenced node's own writes failed"),
            }
            CommitOutcome { outcomes, fenced: true, fatal: None, convs: Convs::new() }
        }
        Err(e) => failed(e, &ops),
    }
}

/// A commit job's check of its node's fence (cluster mode): read before the first store read,
/// and again right before the write when the first read is older than `FENCE_FRESH_MS`.
struct Fence {
    of: Option<(crate::route::NodeId, u64)>,
    /// When the fence was last read (monotonic ms).
    read_at_ms: Option<u64>,
}

impl Fence {
    /// Whether this node may go on sequencing (false: it is fenced), at `now_ms`.
    fn check(&mut self, store: &dyn MessageStore, now_ms: u64) -> Result<bool, StoreError> {
        let Some((node, incarnation)) = self.of else { return Ok(true) };
        if self.read_at_ms.is_some_and(|t| now_ms.saturating_sub(t) < FENCE_FRESH_MS) {
            return Ok(true);
        }
        self.read_at_ms = Some(now_ms);
        Ok(store.node_fence(node)? < incarnation)
    }
}

/// A commit the store refused: sends and requests are answered `unavailable`, and the shard
/// reloads what it cached from the store.
fn failed(e: StoreError, ops: &[Op]) -> CommitOutcome {
    tracing::error!(error = %e, ops = ops.len(), "commit failed; answering unavailable");
    let fatal = matches!(e, StoreError::Fatal(_)).then(|| e.to_string());
    let unavailable = FrameError::new(ErrorCode::Unavailable, "storage unavailable, retry later");
    // Sends, group changes and receipt queries are answered, with their cmid or ref; marks and
    // typing get no answer here.
    let outcomes = ops
        .iter()
        .filter(|op| !matches!(op, Op::Mark(_) | Op::Typing { .. }))
        .filter_map(|op| op.refusal(unavailable.clone()))
        .map(|(reply_to, frame)| OpOutcome::Answer { reply_to, frame })
        .collect();
    CommitOutcome { outcomes, fenced: false, fatal, convs: Convs::new() }
}

/// None when the fence says another node sequences this node's conversations now.
fn commit_inner(
    store: &dyn MessageStore,
    ops: &[Op],
    convs: &mut Convs,
    fence: &mut Fence,
    push: bool,
    mono_ms: &dyn Fn() -> u64,
) -> Result<Option<Vec<OpOutcome>>, StoreError> {
    if !fence.check(store, mono_ms())? {
        return Ok(None);
    }
    let loaded = prefetch(store, ops, convs)?;
    let Sequenced { batch, outcomes } = sequence(ops, convs, &loaded, push);
    if !fence.check(store, mono_ms())? {
        return Ok(None);
    }
    store.commit(&batch)?;
    Ok(Some(outcomes))
}

/// Message `seq` of `conv` into `loaded.targets` (read once per job), and a copy of it.
fn read_one(store: &dyn MessageStore, conv: &str, seq: u64, loaded: &mut Loaded) -> Result<Option<MsgRecord>, StoreError> {
    let key = (conv.to_string(), seq);
    if let Some(m) = loaded.targets.get(&key) {
        return Ok(Some(m.clone()));
    }
    let found = store.messages_after(conv, seq - 1, 1)?.pop().filter(|m| m.seq == seq);
    if let Some(m) = &found {
        loaded.targets.insert(key, m.clone());
    }
    Ok(found)
}

/// Reads what [`sequence`] will need and `convs` lacks: every conversation the ops name (into
/// `convs`), the stored message of each send's (conversation, sender, cmid), and the author of
/// each queried message. Reads only: the decisions come after, from memory.
pub fn prefetch(store: &dyn MessageStore, ops: &[Op], convs: &mut Convs) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    for op in ops {
        let Some(conv) = op.conv() else { continue };
        if !convs.contains_key(conv) {
            convs.insert(conv.to_string(), load_conv(store, conv)?);
        }
        let st = &convs[conv];
        match op {
            // A conversation with nothing stored holds no cmid: the common first message of a
            // direct conversation costs no lookup.
            Op::Send(s) if st.last_seq > 0 => {
                let key = (s.conv.clone(), s.user.clone(), s.cmid.clone());
                if let std::collections::hash_map::Entry::Vacant(e) = loaded.cmids.entry(key) {
                    if let Some(record) = store.find_cmid(&s.conv, &s.user, &s.cmid)? {
                        e.insert(record);
                    }
                }
                // An event's target, and for a delete the edits whose bodies go with it. A
                // target sequenced in this job is not stored yet: the batch has it.
                let Some(t) = s.target_seq.filter(|t| s.kind.is_event() && (1..=st.last_seq).contains(t)) else { continue };
                let Some(target) = read_one(store, conv, t, &mut loaded)? else { continue };
                if s.kind == shardchat_codec::MsgKind::Delete {
                    for e in target.edits {
                        read_one(store, conv, e, &mut loaded)?;
                    }
                }
            }
            // Read even when the message is among the recent ones now: sends earlier in the job
            // may push it out before the query is answered. Queries are rare; a point read.
            Op::ReceiptQuery { seq, .. } if (1..=st.last_seq).contains(seq) => {
                if let Some(m) = store.messages_after(conv, seq - 1, 1)?.pop().filter(|m| m.seq == *seq) {
                    loaded.authors.insert((conv.to_string(), *seq), m.from);
                }
            }
            _ => {}
        }
    }
    Ok(loaded)
}
