//! Work the shards hand to their blocking pools: a commit job (sequencing, dedup, watermarks,
//! one durable batch) and read jobs (sync plans and chunks, history pages). These are plain
//! functions over a [`MessageStore`]: the runtime runs them off the reactor, tests run them
//! inline.

use crate::route::ShardId;
use shardchat_codec::{
    direct_conv_id, direct_members, ErrorCode, FrameError, MsgKind, MsgRecord, ReceiptKind, Ref, Role, ServerFrame, GROUP_MEMBERS_MAX,
};
use shardchat_storage::{Membership, MessageStore, StoreError, WriteBatch};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Recent messages whose authors get coalesced group receipt counts.
pub const RECENT_MESSAGES_MAX: usize = 64;

/// A connection anywhere in the cluster: its node, its home shard there and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConnRef {
    pub node: crate::route::NodeId,
    pub shard: ShardId,
    pub conn: u64,
}

/// Where a `send` goes: a user (the direct conversation with them) or a conversation id.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MarkOp {
    pub reply_to: ConnRef,
    pub user: String,
    pub conv: String,
    pub kind: ReceiptKind,
    pub seq: u64,
}

/// A change to a group's membership.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum GroupChange {
    Create { name: String, members: Vec<String> },
    Add { users: Vec<String> },
    Remove { users: Vec<String> },
    Leave,
    Rename { name: String },
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GroupOp {
    pub reply_to: ConnRef,
    pub user: String,
    pub conv: String,
    pub change: GroupChange,
    pub r#ref: Option<Ref>,
    /// Id and time of the system message that records the change (assigned on acceptance).
    pub id: u64,
    pub ts: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Op {
    Send(SendOp),
    Mark(MarkOp),
    Group(GroupOp),
    /// A typing notice for a conversation whose state was not cached: checked and relayed by
    /// the job (never stored).
    Typing {
        reply_to: ConnRef,
        user: String,
        conv: String,
    },
    /// Who has a message delivered and read.
    ReceiptQuery {
        reply_to: ConnRef,
        user: String,
        conv: String,
        seq: u64,
        r#ref: Option<Ref>,
    },
    /// Persist a user's last-seen time (presence, written lazily). Never leaves its node.
    #[serde(skip)]
    LastSeen {
        user: String,
        ms: u64,
    },
    /// Withdraw an owed push: the recipient got the message live. Never leaves its node.
    #[serde(skip)]
    PushDelivered(shardchat_storage::PushEntry),
}

impl Op {
    /// The conversation whose state the op needs, if any.
    pub fn conv(&self) -> Option<&str> {
        match self {
            Op::Send(s) => Some(&s.conv),
            Op::Mark(m) => Some(&m.conv),
            Op::Group(g) => Some(&g.conv),
            Op::Typing { conv, .. } | Op::ReceiptQuery { conv, .. } => Some(conv),
            Op::LastSeen { .. } | Op::PushDelivered(_) => None,
        }
    }
}

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
    pub marks: HashMap<(String, ReceiptKind), u64>,
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
    fn has(&self, user: &str, kind: ReceiptKind, seq: u64) -> bool {
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

    fn push_recent(&mut self, seq: u64, from: &str) {
        if self.recent.len() == RECENT_MESSAGES_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, from.to_string()));
    }
}

#[derive(Debug)]
pub struct CommitJob {
    pub ops: Vec<Op>,
    /// Cached state of the conversations the ops touch; missing ones are loaded by the job.
    pub convs: HashMap<String, ConvState>,
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
    pub convs: HashMap<String, ConvState>,
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
        .filter(|m| m.kind != MsgKind::System)
        .map(|m| (m.seq, m.from))
        .collect();
    recent.make_contiguous().reverse();
    Ok(ConvState { last_seq, members, name, marks, recent })
}

fn load<'a>(store: &dyn MessageStore, convs: &'a mut HashMap<String, ConvState>, conv: &str) -> Result<&'a mut ConvState, StoreError> {
    if !convs.contains_key(conv) {
        let st = load_conv(store, conv)?;
        convs.insert(conv.to_string(), st);
    }
    Ok(convs.get_mut(conv).expect("just inserted"))
}

fn reject(reply_to: ConnRef, code: ErrorCode, msg: &str, cmid: Option<&str>) -> OpOutcome {
    OpOutcome::Rejected { reply_to, err: FrameError::new(code, msg).with_cmid(cmid.map(str::to_string)) }
}

/// Sequences and stores one batch of ops, in order. Returns after the batch is durable.
pub fn run_commit(store: &dyn MessageStore, job: CommitJob) -> CommitOutcome {
    let CommitJob { ops, mut convs, fence, push } = job;
    let mut guard = Fence { of: fence, read_at: None };
    match commit_inner(store, &ops, &mut convs, &mut guard, push) {
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
            let mut unfenced = Fence { of: None, read_at: None };
            match commit_inner(store, &local, &mut HashMap::new(), &mut unfenced, false) {
                Ok(Some(more)) => outcomes.extend(more),
                Ok(None) => unreachable!("no fence to check"),
                Err(e) => tracing::error!(error = %e, "commit of a fenced node's own writes failed"),
            }
            CommitOutcome { outcomes, fenced: true, fatal: None, convs: HashMap::new() }
        }
        Err(e) => failed(e, &ops),
    }
}

/// A commit job's check of its node's fence (cluster mode): read before the first store read,
/// and again right before the write when the first read is older than `FENCE_FRESH_MS`.
struct Fence {
    of: Option<(crate::route::NodeId, u64)>,
    read_at: Option<std::time::Instant>,
}

impl Fence {
    /// Whether this node may go on sequencing (false: it is fenced).
    fn check(&mut self, store: &dyn MessageStore) -> Result<bool, StoreError> {
        let Some((node, incarnation)) = self.of else { return Ok(true) };
        if self.read_at.is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(FENCE_FRESH_MS)) {
            return Ok(true);
        }
        self.read_at = Some(std::time::Instant::now());
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
    CommitOutcome { outcomes, fenced: false, fatal, convs: HashMap::new() }
}

/// None when the fence says another node sequences this node's conversations now.
fn commit_inner(
    store: &dyn MessageStore,
    ops: &[Op],
    convs: &mut HashMap<String, ConvState>,
    fence: &mut Fence,
    push: bool,
) -> Result<Option<Vec<OpOutcome>>, StoreError> {
    if !fence.check(store)? {
        return Ok(None);
    }
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
                    let mut users = vec![a, b];
                    users.dedup();
                    for u in users {
                        let m = Membership { user: u, role: Role::Member, joined: 0 };
                        batch.members.push((s.conv.clone(), m.clone()));
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
                if let Some(record) = store.find_cmid(&s.conv, &s.user, &s.cmid)? {
                    outcomes.push(OpOutcome::Stored { reply_to: s.reply_to, record, members, fresh: false });
                    continue;
                }
                st.last_seq += 1;
                st.push_recent(st.last_seq, &s.user);
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
                if push && record.kind != MsgKind::System {
                    for to in members.iter().filter(|m| **m != record.from) {
                        batch.push.push(push_entry(to, &record));
                    }
                }
                batch.messages.push(record.clone());
                outcomes.push(OpOutcome::Stored { reply_to: s.reply_to, record, members, fresh: true });
            }
            Op::Mark(m) => {
                let st = load(store, convs, &m.conv)?;
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
                    let row = (m.conv.clone(), m.user.clone(), m.kind, m.seq);
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
                let st = load(store, convs, &g.conv)?;
                match group_change(st, g, &mut batch) {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(err) => outcomes.push(OpOutcome::Rejected { reply_to: g.reply_to, err: err.with_ref(g.r#ref.clone()) }),
                }
            }
            Op::Typing { reply_to, user, conv } => {
                let st = load(store, convs, conv)?;
                match typing_members(st, conv, user) {
                    Ok(members) => outcomes.push(OpOutcome::Typed { conv: conv.clone(), user: user.clone(), members }),
                    Err(err) => outcomes.push(OpOutcome::Rejected { reply_to: *reply_to, err }),
                }
            }
            Op::ReceiptQuery { reply_to, user, conv, seq, r#ref } => {
                let st = load(store, convs, conv)?;
                let answer = receipt_detail(store, st, user, conv, *seq, r#ref.clone());
                outcomes.push(match answer {
                    Ok(frame) => OpOutcome::Answer { reply_to: *reply_to, frame },
                    Err(err) => OpOutcome::Rejected { reply_to: *reply_to, err: err.with_ref(r#ref.clone()) },
                });
            }
            Op::LastSeen { user, ms } => batch.last_seen.push((user.clone(), *ms)),
            Op::PushDelivered(e) => batch.push_done.push(e.clone()),
        }
    }
    if !fence.check(store)? {
        return Ok(None);
    }
    store.commit(&batch)?;
    Ok(Some(outcomes))
}

/// The outbox entry owing `user` a push for `m`.
pub fn push_entry(user: &str, m: &MsgRecord) -> shardchat_storage::PushEntry {
    shardchat_storage::PushEntry { user: user.to_string(), conv: m.conv.clone(), from: m.from.clone(), id: m.id, ts: m.ts }
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

fn receipt_detail(
    store: &dyn MessageStore,
    st: &ConvState,
    user: &str,
    conv: &str,
    seq: u64,
    r#ref: Option<Ref>,
) -> Result<ServerFrame, FrameError> {
    check_member(st, user)?;
    if seq > st.last_seq {
        return Err(FrameError::bad_request("seq is beyond the conversation's last message"));
    }
    let from = match st.recent.iter().find(|(s, _)| *s == seq) {
        Some((_, f)) => f.clone(),
        None => store.messages_after(conv, seq - 1, 1).map_err(unavailable)?.pop().map(|m| m.from).unwrap_or_default(),
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

/// Applies a group change to `st` and `batch`: checks roles and limits, records the system
/// message, hands admin over when the last admin goes.
fn group_change(st: &mut ConvState, g: &GroupOp, batch: &mut WriteBatch) -> Result<OpOutcome, FrameError> {
    let is_admin = |st: &ConvState, u: &str| st.members.iter().any(|m| m.user == u && m.role == Role::Admin);
    let mut removed: Vec<String> = Vec::new();
    let (event, users): (&str, Vec<String>) = match &g.change {
        GroupChange::Create { name, members } => {
            if !st.members.is_empty() || st.last_seq > 0 {
                return Err(FrameError::bad_request("conversation exists"));
            }
            let mut users = vec![g.user.clone()];
            for u in members {
                if !users.contains(u) {
                    users.push(u.clone());
                }
            }
            if users.len() > GROUP_MEMBERS_MAX {
                return Err(FrameError::new(ErrorCode::GroupFull, format!("a group has at most {GROUP_MEMBERS_MAX} members")));
            }
            st.name = name.clone();
            batch.names.push((g.conv.clone(), name.clone()));
            ("create", users)
        }
        GroupChange::Add { users } => {
            check_group(st, &g.conv, &g.user)?;
            if !is_admin(st, &g.user) {
                return Err(FrameError::new(ErrorCode::Forbidden, "only admins add members"));
            }
            let mut new: Vec<String> = Vec::new();
            for u in users {
                if !st.is_member(u) && !new.contains(u) {
                    new.push(u.clone());
                }
            }
            if st.members.len() + new.len() > GROUP_MEMBERS_MAX {
                return Err(FrameError::new(ErrorCode::GroupFull, format!("a group has at most {GROUP_MEMBERS_MAX} members")));
            }
            ("add", new)
        }
        GroupChange::Remove { users } => {
            check_group(st, &g.conv, &g.user)?;
            if !is_admin(st, &g.user) {
                return Err(FrameError::new(ErrorCode::Forbidden, "only admins remove members"));
            }
            let gone: Vec<String> = users.iter().filter(|u| st.is_member(u)).cloned().collect();
            ("remove", gone)
        }
        GroupChange::Leave => {
            check_group(st, &g.conv, &g.user)?;
            ("leave", vec![g.user.clone()])
        }
        GroupChange::Rename { name } => {
            check_group(st, &g.conv, &g.user)?;
            if !is_admin(st, &g.user) {
                return Err(FrameError::new(ErrorCode::Forbidden, "only admins rename the group"));
            }
            if *name == st.name {
                ("rename", Vec::new())
            } else {
                st.name = name.clone();
                batch.names.push((g.conv.clone(), name.clone()));
                ("rename", vec![g.user.clone()])
            }
        }
    };
    if users.is_empty() {
        // Nothing changes (adding members who are in, removing who is not): answer with the state.
        return Ok(OpOutcome::Grouped {
            reply_to: g.reply_to,
            r#ref: g.r#ref.clone(),
            conv: g.conv.clone(),
            name: st.name.clone(),
            members: st.members.clone(),
            notify: Vec::new(),
            system: None,
        });
    }
    st.last_seq += 1;
    let seq = st.last_seq;
    match event {
        "rename" => {}
        "create" | "add" => {
            for (i, u) in users.iter().enumerate() {
                let role = if event == "create" && i == 0 { Role::Admin } else { Role::Member };
                let m = Membership { user: u.clone(), role, joined: seq };
                batch.members.push((g.conv.clone(), m.clone()));
                st.members.push(m);
            }
        }
        _ => {
            st.members.retain(|m| !users.contains(&m.user));
            for u in &users {
                batch.removed.push((g.conv.clone(), u.clone(), seq));
                st.marks.retain(|(mu, _), _| mu != u);
            }
            removed = users.clone();
        }
    }
    // The last admin gone: the oldest member (earliest join, then name) becomes admin.
    let mut handed_to = None;
    if !st.members.is_empty() && !st.members.iter().any(|m| m.role == Role::Admin) {
        let oldest = st.members.iter_mut().min_by(|a, b| (a.joined, &a.user).cmp(&(b.joined, &b.user))).expect("non-empty");
        oldest.role = Role::Admin;
        handed_to = Some(oldest.user.clone());
        batch.members.push((g.conv.clone(), oldest.clone()));
    }
    let body = serde_json_body(event, &g.user, &st.name, &users, handed_to.as_deref());
    let record = MsgRecord {
        conv: g.conv.clone(),
        id: g.id,
        seq,
        from: g.user.clone(),
        cmid: format!("system:{}", g.id),
        body,
        kind: MsgKind::System,
        ts: g.ts,
    };
    batch.messages.push(record.clone());
    Ok(OpOutcome::Grouped {
        reply_to: g.reply_to,
        r#ref: g.r#ref.clone(),
        conv: g.conv.clone(),
        name: st.name.clone(),
        members: st.members.clone(),
        notify: removed,
        system: Some(record),
    })
}

fn check_group(st: &ConvState, conv: &str, user: &str) -> Result<(), FrameError> {
    if !ConvState::is_group(conv) {
        return Err(FrameError::bad_request("not a group"));
    }
    check_member(st, user)
}

/// The body of a system message: a JSON object clients can render, e.g.
/// `{"event":"add","by":"alice","users":["bob"]}` (`admin` names who was handed admin).
fn serde_json_body(event: &str, by: &str, name: &str, users: &[String], admin: Option<&str>) -> String {
    let mut o = serde_json::json!({ "event": event, "by": by, "users": users });
    if event == "create" || event == "rename" {
        o["name"] = name.into();
    }
    if event == "rename" {
        o["users"] = serde_json::json!([]);
    }
    if let Some(a) = admin {
        o["admin"] = a.into();
    }
    o.to_string()
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
