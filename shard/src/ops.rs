//! The vocabulary of a shard's work: the ops a home shard hands to a conversation's owner (a
//! send, a receipt mark, a group change, a typing notice, a receipt query and two writes of the
//! node's own), who they answer ([`ConnRef`]), and [`RemoteOp`], the part of it that may cross
//! to another node: the type says what never leaves its node, rather than a serde error.

use crate::route::{NodeId, ShardId};
use shardchat_codec::{direct_conv_id, FrameError, MsgKind, ReceiptKind, Ref, ServerFrame};

/// A connection on one shard: its id there. Ids come in three spaces that never meet (sockets,
/// connections attached from other nodes, long-poll sessions: see [`REMOTE_CONN_BASE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

/// A map keyed by connection id. Ids are numbered by the engine, never chosen by a client, so
/// they need no flooding-resistant hash: foldhash (randomly seeded per map, so an order leaking
/// into what a shard does still shows in the simulator's replays) instead of SipHash, which a
/// delivery paid three times (the shard's two lookups and the runtime's), 3–4% of the engine's
/// CPU in 100-member group fan-out.
pub type ConnMap<V> = std::collections::HashMap<ConnId, V, foldhash::fast::RandomState>;

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection anywhere in the cluster: its node, its home shard there and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConnRef {
    pub node: NodeId,
    pub shard: ShardId,
    pub conn: ConnId,
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
    /// An event's target: the seq of the message an `edit`, `delete` or `reaction` is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_seq: Option<u64>,
    /// A reply's: the seq of the message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_seq: Option<u64>,
    /// An `image` or `file` message's upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Box<shardchat_codec::Media>>,
    /// Assigned when the owner accepted the op, so ids follow acceptance order.
    pub id: u64,
    pub ts: u64,
}

/// The id and time of an op no owner has accepted yet: the owner assigns both on acceptance,
/// so ids follow acceptance order.
pub const UNASSIGNED: u64 = 0;

impl SendOp {
    /// A send as a home shard (or the bridge) hands it to the owner: id and time unassigned.
    pub fn new(reply_to: ConnRef, user: String, cmid: String, target: Target, body: String, kind: MsgKind) -> SendOp {
        let conv = target.conv(&user);
        SendOp {
            reply_to,
            user,
            cmid,
            conv,
            target,
            body,
            kind,
            target_seq: None,
            reply_seq: None,
            media: None,
            id: UNASSIGNED,
            ts: UNASSIGNED,
        }
    }

    /// The same send with the seqs it refers to: an event's target, a reply's message.
    pub fn refers(self, target_seq: Option<u64>, reply_seq: Option<u64>) -> SendOp {
        SendOp { target_seq, reply_seq, ..self }
    }

    /// The same send sharing an upload.
    pub fn with_media(self, media: Option<Box<shardchat_codec::Media>>) -> SendOp {
        SendOp { media, ..self }
    }
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

impl GroupOp {
    /// A group change as a home shard (or the bridge) hands it to the owner: the id and time of
    /// the system message that will record it unassigned.
    pub fn new(reply_to: ConnRef, user: String, conv: String, change: GroupChange, r#ref: Option<Ref>) -> GroupOp {
        GroupOp { reply_to, user, conv, change, r#ref, id: UNASSIGNED, ts: UNASSIGNED }
    }
}

/// Everything an owner shard's commit job does: the five ops about a conversation (what a
/// [`RemoteOp`] carries) and two writes of this node's own, which never leave it.
#[derive(Clone, Debug)]
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
    LastSeen {
        user: String,
        ms: u64,
    },
    /// Withdraw an owed push: the recipient got the message live. Never leaves its node.
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

/// An op about a conversation on its way to the node that owns the conversation: exactly the
/// [`Op`]s that may cross nodes, so a node's own writes cannot be sent by mistake.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum RemoteOp {
    Send(SendOp),
    Mark(MarkOp),
    Group(GroupOp),
    Typing { reply_to: ConnRef, user: String, conv: String },
    ReceiptQuery { reply_to: ConnRef, user: String, conv: String, seq: u64, r#ref: Option<Ref> },
}

impl From<RemoteOp> for Op {
    fn from(op: RemoteOp) -> Op {
        match op {
            RemoteOp::Send(s) => Op::Send(s),
            RemoteOp::Mark(m) => Op::Mark(m),
            RemoteOp::Group(g) => Op::Group(g),
            RemoteOp::Typing { reply_to, user, conv } => Op::Typing { reply_to, user, conv },
            RemoteOp::ReceiptQuery { reply_to, user, conv, seq, r#ref } => Op::ReceiptQuery { reply_to, user, conv, seq, r#ref },
        }
    }
}

impl Op {
    /// The op as it may cross nodes; None for the node's own writes.
    pub fn into_remote(self) -> Option<RemoteOp> {
        Some(match self {
            Op::Send(s) => RemoteOp::Send(s),
            Op::Mark(m) => RemoteOp::Mark(m),
            Op::Group(g) => RemoteOp::Group(g),
            Op::Typing { reply_to, user, conv } => RemoteOp::Typing { reply_to, user, conv },
            Op::ReceiptQuery { reply_to, user, conv, seq, r#ref } => RemoteOp::ReceiptQuery { reply_to, user, conv, seq, r#ref },
            Op::LastSeen { .. } | Op::PushDelivered(_) => return None,
        })
    }
}

impl Op {
    /// Where and what to answer when this op is refused as a whole with `err` (its cmid or ref
    /// attached). Receipts and typing are answered too: a client that marked something read must
    /// learn the mark was not recorded.
    pub fn refusal(&self, err: FrameError) -> Option<(ConnRef, ServerFrame)> {
        let (to, err) = match self {
            Op::Send(s) => (s.reply_to, err.with_cmid(Some(s.cmid.clone()))),
            Op::Group(g) => (g.reply_to, err.with_ref(g.r#ref.clone())),
            Op::ReceiptQuery { reply_to, r#ref, .. } => (*reply_to, err.with_ref(r#ref.clone())),
            Op::Mark(m) => (m.reply_to, err),
            Op::Typing { reply_to, .. } => (*reply_to, err),
            Op::LastSeen { .. } | Op::PushDelivered(_) => return None,
        };
        Some((to, ServerFrame::from(err)))
    }
}

/// A shard's connection ids, in three spaces that must never meet (a reply addressed to one
/// kind must not reach another):
/// - sockets the runtime accepted: from 1, below [`REMOTE_CONN_BASE`];
/// - connections of users attached from another node (cluster mode): from
///   [`REMOTE_CONN_BASE`], below [`SESSION_CONN_BASE`];
/// - long-poll sessions of the REST API: from [`SESSION_CONN_BASE`].
///
/// 2^48 sockets per shard is far beyond any run (at 10^6 connections a second, 9 years).
pub const REMOTE_CONN_BASE: u64 = 1 << 48;
/// See [`REMOTE_CONN_BASE`].
pub const SESSION_CONN_BASE: u64 = 1 << 62;
const _: () = assert!(REMOTE_CONN_BASE < SESSION_CONN_BASE && SESSION_CONN_BASE < u64::MAX / 2);
