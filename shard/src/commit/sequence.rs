//! The owner's decisions over one batch of ops, as a pure function: the conversations' state in
//! memory and what [`prefetch`](super::prefetch) read in, the write batch and each op's outcome
//! out. No store, no clock: the simulator and the fuzzer run it as the engine does.
//!
//! Invariants it keeps, asserted on the batch it returns: per conversation, the seqs it assigns
//! are dense and follow the conversation's last seq; a (conversation, sender, cmid) is stored at
//! most once (a retry inside the batch or of a stored message gets the first record back).

use super::group::group_change;
use super::revise::{self, Revised};
use super::{Convs, OpOutcome};
use crate::conv::{check_member, typing_members, ConvState};
use crate::ops::{ConnRef, Op, Target};
use shardchat_codec::{direct_members, ErrorCode, FrameError, MsgRecord, ReceiptKind, Ref, Role, ServerFrame};
use shardchat_storage::{Joined, LastSeen, Membership, PushEntry, Watermark, WriteBatch};
use std::collections::HashMap;

const PREFETCHED: &str = "prefetch loads every conversation the ops name";

/// What the store held that the decisions need (see [`prefetch`](super::prefetch)).
#[derive(Debug, Default)]
pub struct Loaded {
    /// (conversation, sender, cmid) → the message stored under it.
    pub cmids: HashMap<(String, String, String), MsgRecord>,
    /// (conversation, seq) → who sent that message.
    pub authors: HashMap<(String, u64), String>,
    /// (conversation, seq) → the stored record of a message an event names, and of the edits
    /// of a message a delete names.
    pub targets: HashMap<(String, u64), MsgRecord>,
}

/// What one batch of ops decided: what to write, and what each op gets once it is durable.
#[derive(Debug)]
pub struct Sequenced {
    pub batch: WriteBatch,
    pub outcomes: Vec<OpOutcome>,
}

fn reject(reply_to: ConnRef, code: ErrorCode, msg: &str, cmid: Option<&str>) -> OpOutcome {
    OpOutcome::Rejected { reply_to, err: FrameError::new(code, msg).with_cmid(cmid.map(str::to_string)) }
}

/// Decides `ops` in order over `convs` (each conversation an op names must be in it) and
/// `loaded`. `push`: every stored message owes each other member a push notification.
pub fn sequence(ops: &[Op], convs: &mut Convs, loaded: &Loaded, push: bool) -> Sequenced {
    // Each conversation's last seq before the batch, for the density check at the end.
    let last_before: Vec<(&str, u64)> = ops.iter().filter_map(Op::conv).map(|c| (c, convs[c].last_seq)).collect();
    let mut batch = WriteBatch::default();
    let mut outcomes = Vec::with_capacity(ops.len());
    // (conv, from, cmid) → index in batch.messages, for retries inside one batch.
    let mut in_batch: HashMap<(&str, &str, &str), usize> = HashMap::new();
    // (conv, user, kind) → index in batch.watermarks: one write per key per batch.
    let mut marks_in_batch: HashMap<(String, String, ReceiptKind), usize> = HashMap::new();
    // Stored messages events changed: written back as `batch.updates` at the end.
    let mut revised: HashMap<(String, u64), MsgRecord> = HashMap::new();
    for op in ops {
        match op {
            Op::Send(s) => {
                let st = convs.get_mut(&s.conv).expect(PREFETCHED);
                if st.members.is_empty() {
                    // A direct conversation is created by its first message; groups by group_create.
                    let pair = match &s.target {
                        Target::To(u) => Some((s.user.clone(), u.clone())),
                        Target::Conv(c) => match direct_members(c) {
                            Some((a, b)) if a == s.user || b == s.user => Some((a.to_string(), b.to_string())),
                            _ => None,
                        },
                    };
                    let Some((a, b)) = pair else {
                        outcomes.push(reject(s.reply_to, ErrorCode::NotFound, "no such conversation", Some(&s.cmid)));
                        continue;
                    };
                    if s.target_seq.or(s.reply_seq).is_some() {
                        // An event or a reply cannot be a conversation's first message.
                        outcomes.push(reject(s.reply_to, ErrorCode::NotFound, "no such message", Some(&s.cmid)));
                        continue;
                    }
                    let mut users = vec![a, b];
                    users.dedup();
                    for u in users {
                        let m = Membership { user: u, role: Role::Member, joined: 0 };
                        batch.members.push(Joined { conv: s.conv.clone(), member: m.clone() });
                        st.members.push(m);
                    }
                } else {
                    let to_ok = match &s.target {
                        Target::To(u) => st.is_member(u),
                        Target::Conv(_) => true,
                    };
                    if !st.is_member(&s.user) || !to_ok {
                        outcomes.push(reject(s.reply_to, ErrorCode::Forbidden, "not a member of this conversation", Some(&s.cmid)));
                        continue;
                    }
                }
                let key = (s.conv.as_str(), s.user.as_str(), s.cmid.as_str());
                let members = st.member_names();
                if let Some(&i) = in_batch.get(&key) {
                    let record = batch.messages[i].clone();
                    outcomes.push(OpOutcome::Stored { reply_to: s.reply_to, record, members, fresh: false });
                    continue;
                }
                if let Some(record) = loaded.cmids.get(&(s.conv.clone(), s.user.clone(), s.cmid.clone())) {
                    outcomes.push(OpOutcome::Stored { reply_to: s.reply_to, record: record.clone(), members, fresh: false });
                    continue;
                }
                if s.target_seq.or(s.reply_seq).is_some_and(|t| t > st.last_seq) {
                    outcomes.push(reject(s.reply_to, ErrorCode::NotFound, "no such message", Some(&s.cmid)));
                    continue;
                }
                if let (true, Some(t)) = (s.kind.is_event(), s.target_seq) {
                    let admin = st.members.iter().any(|m| m.user == s.user && m.role == Role::Admin);
                    let Some(mut target) = current(&batch, &revised, loaded, &s.conv, t) else {
                        outcomes.push(reject(s.reply_to, ErrorCode::NotFound, "no such message", Some(&s.cmid)));
                        continue;
                    };
                    match revise::apply(&mut target, s.kind, &s.user, admin, &s.body, st.last_seq + 1, s.ts) {
                        Err(err) => {
                            outcomes.push(OpOutcome::Rejected { reply_to: s.reply_to, err: err.with_cmid(Some(s.cmid.clone())) });
                            continue;
                        }
                        Ok(Revised::Target) => put(&mut batch, &mut revised, target),
                        Ok(Revised::Deleted { edits }) => {
                            put(&mut batch, &mut revised, target);
                            for e in edits {
                                let mut edit =
                                    current(&batch, &revised, loaded, &s.conv, e).expect("prefetch loads a deleted message's edits");
                                revise::erase(&mut edit);
                                put(&mut batch, &mut revised, edit);
                            }
                        }
                    }
                }
                st.last_seq += 1;
                if s.kind.is_content() {
                    st.push_recent(st.last_seq, &s.user);
                }
                let record = MsgRecord {
                    conv: s.conv.clone(),
                    id: s.id,
                    seq: st.last_seq,
                    from: s.user.clone(),
                    cmid: s.cmid.clone(),
                    body: revise::stored_body(s.kind, &s.body),
                    kind: s.kind,
                    ts: s.ts,
                    target: s.target_seq,
                    reply_to: s.reply_seq,
                    media: s.media.clone(),
                    ..Default::default()
                };
                in_batch.insert(key, batch.messages.len());
                // Events are not news: no push for an edit, a delete or a reaction.
                if push && record.kind.is_content() {
                    for to in members.iter().filter(|m| **m != record.from) {
                        batch.push.push(push_entry(to, &record));
                    }
                }
                batch.messages.push(record.clone());
                outcomes.push(OpOutcome::Stored { reply_to: s.reply_to, record, members, fresh: true });
            }
            Op::Mark(m) => {
                let st = convs.get_mut(&m.conv).expect(PREFETCHED);
                if let Err(e) = check_member(st, &m.user) {
                    outcomes.push(OpOutcome::Rejected { reply_to: m.reply_to, err: e });
                    continue;
                }
                if m.seq > st.last_seq {
                    outcomes.push(reject(m.reply_to, ErrorCode::BadRequest, "seq is beyond the conversation's last message", None));
                    continue;
                }
                let current = st.mark(&m.user, m.kind);
                let changed = m.seq > current;
                if changed {
                    st.marks.insert((m.user.clone(), m.kind), m.seq);
                    let row = Watermark { conv: m.conv.clone(), user: m.user.clone(), kind: m.kind, seq: m.seq };
                    let key = (m.conv.clone(), m.user.clone(), m.kind);
                    match marks_in_batch.get(&key) {
                        Some(&i) => batch.watermarks[i] = row,
                        None => {
                            marks_in_batch.insert(key, batch.watermarks.len());
                            batch.watermarks.push(row);
                        }
                    }
                }
                let members = st.member_names();
                outcomes.push(OpOutcome::Marked { conv: m.conv.clone(), user: m.user.clone(), kind: m.kind, seq: m.seq, members, changed });
            }
            Op::Group(g) => {
                let st = convs.get_mut(&g.conv).expect(PREFETCHED);
                match group_change(st, g, &mut batch) {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(err) => outcomes.push(OpOutcome::Rejected { reply_to: g.reply_to, err: err.with_ref(g.r#ref.clone()) }),
                }
            }
            Op::Typing { reply_to, user, conv } => {
                let st = convs.get_mut(conv).expect(PREFETCHED);
                match typing_members(st, conv, user) {
                    Ok(members) => outcomes.push(OpOutcome::Typed { conv: conv.clone(), user: user.clone(), members }),
                    Err(err) => outcomes.push(OpOutcome::Rejected { reply_to: *reply_to, err }),
                }
            }
            Op::ReceiptQuery { reply_to, user, conv, seq, r#ref } => {
                let st = convs.get_mut(conv).expect(PREFETCHED);
                let answer = receipt_detail(loaded, st, user, conv, *seq, r#ref.clone());
                outcomes.push(match answer {
                    Ok(frame) => OpOutcome::Answer { reply_to: *reply_to, frame },
                    Err(err) => OpOutcome::Rejected { reply_to: *reply_to, err: err.with_ref(r#ref.clone()) },
                });
            }
            Op::LastSeen { user, ms } => batch.last_seen.push(LastSeen { user: user.clone(), unix_ms: *ms }),
            Op::PushDelivered(e) => batch.push_done.push(e.clone()),
        }
    }
    assert_dense(&batch.messages, &last_before, convs);
    batch.updates = revised.into_values().collect();
    // Ordered, like everything a shard emits: replays of a seed write the same batch.
    batch.updates.sort_by(|a, b| (&a.conv, a.seq).cmp(&(&b.conv, b.seq)));
    Sequenced { batch, outcomes }
}

/// The current record of message `seq` of `conv`: as sequenced earlier in this batch, as changed
/// earlier in it, or as stored.
fn current(batch: &WriteBatch, revised: &HashMap<(String, u64), MsgRecord>, loaded: &Loaded, conv: &str, seq: u64) -> Option<MsgRecord> {
    if let Some(m) = batch.messages.iter().rev().find(|m| m.seq == seq && m.conv == conv) {
        return Some(m.clone());
    }
    let key = (conv.to_string(), seq);
    revised.get(&key).or_else(|| loaded.targets.get(&key)).cloned()
}

/// Writes a changed record back where [`current`] found it.
fn put(batch: &mut WriteBatch, revised: &mut HashMap<(String, u64), MsgRecord>, record: MsgRecord) {
    match batch.messages.iter_mut().rev().find(|m| m.seq == record.seq && m.conv == record.conv) {
        Some(m) => *m = record,
        None => {
            revised.insert((record.conv.clone(), record.seq), record);
        }
    }
}

/// Per conversation, the batch's messages carry the seqs after the last one stored, densely and
/// in order, and the conversation's state ends at the last of them.
fn assert_dense(messages: &[MsgRecord], last_before: &[(&str, u64)], convs: &Convs) {
    let mut next: HashMap<&str, u64> = last_before.iter().map(|&(c, s)| (c, s + 1)).collect();
    for m in messages {
        let n = next.get_mut(m.conv.as_str()).expect("a message only for a conversation an op names");
        assert_eq!(m.seq, *n, "seqs of {} must be dense: {} follows {}", m.conv, m.seq, *n - 1);
        *n += 1;
    }
    for (c, n) in next {
        assert_eq!(convs[c].last_seq, n - 1, "the cached last seq of {c} is the last one in the batch");
    }
}

/// The outbox entry owing `user` a push for `m`.
pub fn push_entry(user: &str, m: &MsgRecord) -> PushEntry {
    PushEntry { user: user.to_string(), conv: m.conv.clone(), from: m.from.clone(), id: m.id, ts: m.ts }
}

fn receipt_detail(
    loaded: &Loaded,
    st: &ConvState,
    user: &str,
    conv: &str,
    seq: u64,
    r#ref: Option<Ref>,
) -> Result<ServerFrame, FrameError> {
    check_member(st, user)?;
    if seq > st.last_seq {
        // A well-formed question about a message that does not exist (yet).
        return Err(FrameError::new(ErrorCode::NotFound, "no such message: seq is beyond the conversation's last message"));
    }
    let from = match loaded.authors.get(&(conv.to_string(), seq)) {
        Some(f) => f.clone(),
        // Sequenced in this job (or never stored: a system message's seq before its batch).
        None => st.recent.iter().find(|(s, _)| *s == seq).map(|(_, f)| f.clone()).unwrap_or_default(),
    };
    let others: Vec<&Membership> = st.members.iter().filter(|m| m.user != from).collect();
    let who = |k| others.iter().filter(|m| st.has(&m.user, k, seq)).map(|m| m.user.clone()).collect::<Vec<_>>();
    Ok(ServerFrame::ReceiptDetail {
        conv: conv.to_string(),
        seq,
        of: others.len() as u32,
        delivered: who(ReceiptKind::Delivered),
        read: who(ReceiptKind::Read),
        r#ref,
    })
}
