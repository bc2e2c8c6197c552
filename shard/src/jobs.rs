//! Work the shards hand to their blocking pools: a commit job (sequencing, dedup, watermarks,
//! one durable batch) and read jobs (sync plans and chunks, history pages). These are plain
//! functions over a [`MessageStore`]: the runtime runs them off the reactor, tests run them
//! inline.

use crate::route::ShardId;
use shardchat_codec::{direct_conv_id, direct_members, ErrorCode, FrameError, MsgKind, MsgRecord, ReceiptKind, Ref, Role, ServerFrame};
use shardchat_storage::{MessageStore, StoreError, WriteBatch};
use std::collections::{BTreeMap, HashMap};

/// A connection anywhere in the process: its home shard and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: ShardId,
    pub conn: u64,
}

/// Where a `send` goes: a user (the direct conversation with them) or a conversation id.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    To(String),
    Conv(String),
}

impl Target {
    /// The conversation this send is for.
    pub fn conv(&self, sender: &str) -> String {
        match self {
            Target::To(u) => direct_conv_id(sender, u),
            Target::Conv(c) => c.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SendOp {
    pub reply_to: ConnRef,
    pub user: String,
    pub cmid: String,
    pub conv: String,
    pub target: Target,
    pub body: String,
    pub kind: MsgKind,
    /// Assigned when the owner accepted the op, so ids follow acceptance order.
    pub id: u64,
    pub ts: u64,
}

#[derive(Clone, Debug)]
pub struct MarkOp {
    pub reply_to: ConnRef,
    pub user: String,
    pub conv: String,
    pub kind: ReceiptKind,
    pub seq: u64,
}

#[derive(Clone, Debug)]
pub enum Op {
    Send(SendOp),
    Mark(MarkOp),
}

impl Op {
    pub fn conv(&self) -> &str {
        match self {
            Op::Send(s) => &s.conv,
            Op::Mark(m) => &m.conv,
        }
    }
}

/// What the owner shard caches of a conversation it sequences. The commit job owns it while the
/// job runs (the shard moves it in and gets it back), so only one thread ever touches it.
#[derive(Clone, Debug, Default)]
pub struct ConvState {
    pub last_seq: u64,
    /// Empty exactly when the conversation does not exist yet.
    pub members: Vec<String>,
    /// Watermarks read or written so far: (user, kind) → seq.
    pub marks: HashMap<(String, ReceiptKind), u64>,
}

#[derive(Debug)]
pub struct CommitJob {
    pub ops: Vec<Op>,
    /// Cached state of the conversations the ops touch; missing ones are loaded by the job.
    pub convs: HashMap<String, ConvState>,
}

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
    Rejected {
        reply_to: ConnRef,
        err: FrameError,
    },
}

#[derive(Debug)]
pub struct CommitOutcome {
    pub outcomes: Vec<OpOutcome>,
    /// The conversations' state after the job, to cache again; empty after a storage failure
    /// (the shard then reloads from the store).
    pub convs: HashMap<String, ConvState>,
}

fn load<'a>(store: &dyn MessageStore, convs: &'a mut HashMap<String, ConvState>, conv: &str) -> Result<&'a mut ConvState, StoreError> {
    if !convs.contains_key(conv) {
        let last_seq = store.last_seq(conv)?;
        let members = store.members(conv)?.into_iter().map(|(u, _)| u).collect();
        convs.insert(conv.to_string(), ConvState { last_seq, members, marks: HashMap::new() });
    }
    Ok(convs.get_mut(conv).expect("just inserted"))
}

fn reject(reply_to: ConnRef, code: ErrorCode, msg: &str, cmid: Option<&str>) -> OpOutcome {
    OpOutcome::Rejected { reply_to, err: FrameError::new(code, msg).with_cmid(cmid.map(str::to_string)) }
}

/// Sequences and stores one batch of ops, in order. Returns after the batch is durable.
pub fn run_commit(store: &dyn MessageStore, job: CommitJob) -> CommitOutcome {
    let CommitJob { ops, mut convs } = job;
    match commit_inner(store, &ops, &mut convs) {
        Ok(outcomes) => CommitOutcome { outcomes, convs },
        Err(e) => {
            tracing::error!(error = %e, ops = ops.len(), "commit failed; answering unavailable");
            let outcomes = ops
                .iter()
                .filter_map(|op| match op {
                    Op::Send(s) => Some(reject(s.reply_to, ErrorCode::Unavailable, "storage unavailable, retry later", Some(&s.cmid))),
                    Op::Mark(_) => None,
                })
                .collect();
            CommitOutcome { outcomes, convs: HashMap::new() }
        }
    }
}

fn commit_inner(store: &dyn MessageStore, ops: &[Op], convs: &mut HashMap<String, ConvState>) -> Result<Vec<OpOutcome>, StoreError> {
    let mut batch = WriteBatch::default();
    let mut outcomes = Vec::with_capacity(ops.len());
    // (conv, from, cmid) → index in batch.messages, for retries inside one batch.
    let mut in_batch: HashMap<(&str, &str, &str), usize> = HashMap::new();
    // (conv, user, kind) → index in batch.watermarks: one write per key per batch.
    let mut marks_in_batch: HashMap<(String, String, ReceiptKind), usize> = HashMap::new();
    for op in ops {
        match op {
            Op::Send(s) => {
                let st = load(store, convs, &s.conv)?;
                if st.members.is_empty() {
                    let members = match &s.target {
                        Target::To(u) => vec![s.user.clone(), u.clone()],
                        Target::Conv(c) => match direct_members(c) {
                            Some((a, b)) if a == s.user || b == s.user => vec![a.to_string(), b.to_string()],
                            _ => {
                                outcomes.push(reject(s.reply_to, ErrorCode::NotFound, "no such conversation", Some(&s.cmid)));
                                continue;
                            }
                        },
                    };
                    let mut members = members;
                    members.dedup();
                    for m in &members {
                        batch.members.push((s.conv.clone(), m.clone(), Role::Member));
                    }
                    st.members = members;
                } else {
                    let to_ok = match &s.target {
                        Target::To(u) => st.members.iter().any(|m| m == u),
                        Target::Conv(_) => true,
                    };
                    if !st.members.contains(&s.user) || !to_ok {
                        outcomes.push(reject(s.reply_to, ErrorCode::Forbidden, "not a member of this conversation", Some(&s.cmid)));
                        continue;
                    }
                }
                let key = (s.conv.as_str(), s.user.as_str(), s.cmid.as_str());
                let members = st.members.clone();
                if let Some(&i) = in_batch.get(&key) {
                    let record = batch.messages[i].clone();
                    outcomes.push(OpOutcome::Stored { reply_to: s.reply_to, record, members, fresh: false });
                    continue;
                }
                if let Some(record) = store.find_cmid(&s.conv, &s.user, &s.cmid)? {
                    outcomes.push(OpOutcome::Stored { reply_to: s.reply_to, record, members, fresh: false });
                    continue;
                }
                st.last_seq += 1;
                let record = MsgRecord {
                    conv: s.conv.clone(),
                    id: s.id,
                    seq: st.last_seq,
                    from: s.user.clone(),
                    cmid: s.cmid.clone(),
                    body: s.body.clone(),
                    kind: s.kind,
                    ts: s.ts,
                };
                in_batch.insert(key, batch.messages.len());
                batch.messages.push(record.clone());
                outcomes.push(OpOutcome::Stored { reply_to: s.reply_to, record, members, fresh: true });
            }
            Op::Mark(m) => {
                let st = load(store, convs, &m.conv)?;
                if st.members.is_empty() {
                    outcomes.push(reject(m.reply_to, ErrorCode::NotFound, "no such conversation", None));
                    continue;
                }
                if !st.members.contains(&m.user) {
                    outcomes.push(reject(m.reply_to, ErrorCode::Forbidden, "not a member of this conversation", None));
                    continue;
                }
                if m.seq > st.last_seq {
                    outcomes.push(reject(m.reply_to, ErrorCode::BadRequest, "seq is beyond the conversation's last message", None));
                    continue;
                }
                let mk = (m.user.clone(), m.kind);
                let current = match st.marks.get(&mk) {
                    Some(&v) => v,
                    None => store.watermark(&m.conv, &m.user, m.kind)?,
                };
                let changed = m.seq > current;
                st.marks.insert(mk, current.max(m.seq));
                if changed {
                    let row = (m.conv.clone(), m.user.clone(), m.kind, m.seq);
                    match marks_in_batch.get(&(m.conv.clone(), m.user.clone(), m.kind)) {
                        Some(&i) => batch.watermarks[i] = row,
                        None => {
                            marks_in_batch.insert((m.conv.clone(), m.user.clone(), m.kind), batch.watermarks.len());
                            batch.watermarks.push(row);
                        }
                    }
                }
                outcomes.push(OpOutcome::Marked {
                    conv: m.conv.clone(),
                    user: m.user.clone(),
                    kind: m.kind,
                    seq: m.seq,
                    members: st.members.clone(),
                    changed,
                });
            }
        }
    }
    store.commit(&batch)?;
    Ok(outcomes)
}

/// Reads a home shard asks for on behalf of one connection.
#[derive(Clone, Debug)]
pub enum ReadJob {
    /// Which conversations `user` has and where each stands.
    SyncPlan { user: String, cursors: BTreeMap<String, u64> },
    /// Up to `limit` messages of `conv` after `after`, and no more than `bytes_max` of them.
    SyncChunk { conv: String, after: u64, limit: usize, bytes_max: usize },
    /// A page of up to `limit` messages, and no more than `bytes_max` of them.
    History { user: String, conv: String, before: Option<u64>, limit: usize, bytes_max: usize, r#ref: Option<Ref> },
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
}

fn unavailable(e: StoreError) -> FrameError {
    tracing::error!(error = %e, "read failed; answering unavailable");
    FrameError::new(ErrorCode::Unavailable, "storage unavailable, retry later")
}

/// Whether `user` may read `conv`: the members the store recorded decide.
fn authorize(store: &dyn MessageStore, conv: &str, user: &str) -> Result<(), FrameError> {
    let members = store.members(conv).map_err(unavailable)?;
    if members.is_empty() {
        Err(FrameError::new(ErrorCode::NotFound, "no such conversation"))
    } else if members.iter().any(|(u, _)| u == user) {
        Ok(())
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

pub fn run_read(store: &dyn MessageStore, job: ReadJob) -> ReadOutcome {
    match job {
        ReadJob::SyncPlan { user, cursors } => ReadOutcome::SyncPlan((|| {
            let convs = store.user_convs(&user).map_err(unavailable)?;
            convs
                .into_iter()
                .map(|conv| {
                    let last = store.last_seq(&conv).map_err(unavailable)?;
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
            authorize(store, &conv, &user).map_err(|e| e.with_ref(r#ref.clone()))?;
            let messages = store.messages_before(&conv, before, limit).map_err(|e| unavailable(e).with_ref(r#ref.clone()))?;
            let messages = trim_to_bytes(messages, bytes_max);
            Ok(ServerFrame::History { conv, messages, r#ref })
        })()),
    }
}
