//! [`Shard`]: the home and owner roles of one shard as a state machine.
//!
//! - `home.rs`: a user's connections, their requests, delivery to them, sync streaming,
//!   heartbeats, typing rate limits.
//! - `owner.rs`: a conversation's ordering: ops, commit jobs, fan-out, group receipt counts.
//! - `presence.rs`: a user's presence and who subscribed to it.

mod home;
pub mod owner;
mod presence;

use crate::commit::{CommitJob, CommitOutcome, OpOutcome};
use crate::conv::ConvState;
use crate::ops::*;
use crate::payload::{Class, Payload};
pub use crate::peer::PeerMsg;
use crate::read::{ReadJob, ReadOutcome};
use crate::route::{NodeId, ShardId};
use crate::snowflake::Snowflake;
use crate::wheel::TimerWheel;
use shardchat_codec::{FrameError, ServerFrame};
use std::collections::{BTreeSet, HashMap, VecDeque};
use thin_vec::ThinVec;

/// The time, passed in with every event: wall clock for timestamps and ids, a monotonic clock for
/// timeouts (a wall clock step must not expire every connection at once).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub unix_ms: u64,
    /// The monotonic clock in µs: commit pacing is finer than a millisecond.
    pub mono_us: u64,
}

impl Now {
    /// The monotonic clock in ms, what timeouts and coalescing count in.
    pub fn mono_ms(&self) -> u64 {
        self.mono_us / 1000
    }
}

#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub id: ShardId,
    pub shards: usize,
    pub node: usize,
    /// A connection silent for longer than this is closed.
    pub heartbeat_timeout_ms: u64,
    /// Resolution of the heartbeat wheel.
    pub wheel_slot_ms: u64,
    /// Ops waiting for the next commit on this owner shard; beyond it sends get `unavailable`.
    pub owner_pending_ops_max: usize,
    /// Conversations whose state the owner caches; beyond it the cache is trimmed.
    pub conv_cache_max: usize,
    /// Conversations per connection for which the first live seq is remembered (sync dedup).
    pub live_first_convs_max: usize,
    /// Budget of one `sync` or `history` frame, in bytes: well under the outbound queue bound,
    /// so answering a read never overflows a connection that keeps up.
    pub read_frame_bytes_max: usize,
    /// Presence subscriptions one connection may hold.
    pub presence_subs_per_conn_max: usize,
    /// A user's presence changes are published at most once per this interval (coalesced).
    pub presence_coalesce_ms: u64,
    /// One `typing` per user per conversation per this interval is relayed; the rest dropped.
    pub typing_interval_ms: u64,
    /// Group receipt counts for a conversation are sent at most once per this interval.
    pub receipts_coalesce_ms: u64,
    /// Whether messages for users with no connection go to the push outbox.
    pub push_enabled: bool,
    /// Commit pacing: the least time between the starts of two commit jobs of this shard, in
    /// µs (0: none). Ops that come sooner after the last start wait for the rest in the shard
    /// and go out together in the next job; ops that come later wait nothing. The engine paces
    /// here only when it runs one shard (`Config::shard`).
    pub commit_interval_us: u64,
    /// Per connection: `send`s and group changes (each a durable write).
    pub send_rate: crate::rate::Rate,
    /// Per connection: `history` reads (each a store read).
    pub history_rate: crate::rate::Rate,
    /// Per connection: `presence_sub` and `presence_unsub` frames (each a message to the
    /// targets' home shards, and in a cluster a Redis write).
    pub presence_rate: crate::rate::Rate,
    /// Per user, over all of their connections on this node: `send`s and group changes.
    pub user_send_rate: crate::rate::Rate,
    /// Per user, over all of their connections on this node: `history` reads.
    pub user_history_rate: crate::rate::Rate,
    /// Per user, over all of their connections on this node: presence subscription changes.
    pub user_presence_rate: crate::rate::Rate,
    /// Whether this node is one of several: users arriving and leaving are reported
    /// ([`Action::Directory`]) for the cluster directory.
    pub cluster: bool,
}

impl ShardConfig {
    /// A limit's rate per connection and per user, and what it counts (for the error).
    pub(crate) fn rates(&self, l: Limit) -> (crate::rate::Rate, crate::rate::Rate, &'static str) {
        match l {
            Limit::Sends => (self.send_rate, self.user_send_rate, "sends"),
            Limit::Histories => (self.history_rate, self.user_history_rate, "history reads"),
            Limit::PresenceChanges => (self.presence_rate, self.user_presence_rate, "presence subscription changes"),
        }
    }

    pub fn new(id: ShardId, shards: usize) -> Self {
        ShardConfig {
            id,
            shards,
            node: 0,
            heartbeat_timeout_ms: 60_000,
            wheel_slot_ms: 1_000,
            owner_pending_ops_max: 100_000,
            conv_cache_max: 1_000_000,
            live_first_convs_max: 64,
            read_frame_bytes_max: 1024 * 1024,
            presence_subs_per_conn_max: 1024,
            presence_coalesce_ms: 1_000,
            typing_interval_ms: 2_000,
            receipts_coalesce_ms: 500,
            push_enabled: false,
            commit_interval_us: 0,
            send_rate: crate::rate::Rate::UNLIMITED,
            history_rate: crate::rate::Rate::UNLIMITED,
            presence_rate: crate::rate::Rate::UNLIMITED,
            user_send_rate: crate::rate::Rate::UNLIMITED,
            user_history_rate: crate::rate::Rate::UNLIMITED,
            user_presence_rate: crate::rate::Rate::UNLIMITED,
            cluster: false,
        }
    }
}

/// What happens to a shard.
#[derive(Debug)]
pub enum Event {
    /// A connection of `user` now lives here (its home shard).
    Connected {
        conn: ConnId,
        user: String,
        device: String,
        /// When its credentials expire (Unix ms): the connection is closed (1008) then.
        expires_unix_ms: Option<u64>,
    },
    /// A decoded, validated frame from a connection.
    Frame {
        conn: ConnId,
        frame: shardchat_codec::ClientFrame,
    },
    /// Bytes arrived on a connection (any frame, WebSocket pings included): it is alive.
    Activity {
        conn: ConnId,
    },
    Disconnected {
        conn: ConnId,
    },
    /// Ephemeral frames (presence) were dropped for this connection while it was behind and it
    /// has caught up: send it the current presence of everyone it watches.
    Resubscribe {
        conn: ConnId,
    },
    /// Messages from another shard (or this one).
    Peer(PeerMsg),
    CommitDone(CommitOutcome),
    ReadDone {
        conn: ConnId,
        outcome: ReadOutcome,
    },
    /// A shard-level read ([`Action::Lookup`]) finished.
    LookupDone(ReadOutcome),
    /// The coarse timer: heartbeat timeouts, presence and receipt coalescing, lazy writes.
    Tick,
    /// The time an [`Action::WakeAt`] asked for has come (or passed).
    Wake,
    /// The engine is stopping: what commit pacing holds goes out now, and nothing is held
    /// again.
    Drain,
}

/// Actions (entries, not bytes) whose buffer [`Shard::recycle_actions`] keeps for the next event:
/// at most [`ACTION_BYTES_MAX`] bytes each, so at most 128 KiB a shard.
pub const ACTIONS_KEPT_MAX: usize = 4096;

/// The size of an [`Action`], in bytes. Every action is moved into the shard's buffer and out
/// again, and the frequent ones (`Send`: a connection and a shared payload) are small; the rare
/// big ones are boxed so that they do not make every `Send` their size (336 bytes before, with a
/// `PeerMsg` or `RemoteMsg` inline).
pub const ACTION_BYTES_MAX: usize = 32;
const _: () = assert!(std::mem::size_of::<Action>() <= ACTION_BYTES_MAX);

/// What a shard asks the runtime to do.
#[derive(Debug)]
pub enum Action {
    /// Write a frame to a local connection. Ephemeral frames may be dropped when it is behind.
    Send { conn: ConnId, payload: Payload, class: Class },
    /// Close a local connection with a WebSocket close code and reason.
    Close { conn: ConnId, code: u16, reason: &'static str },
    /// Deliver to another shard (never this one: the shard handles its own messages inline).
    Peer { to: ShardId, msg: Box<PeerMsg> },
    /// Run a commit job (blocking) and feed back [`Event::CommitDone`]. At most one in flight.
    Commit(Box<CommitJob>),
    /// Feed back [`Event::Wake`] once the monotonic clock reaches `mono_us` (commit pacing). At
    /// most one outstanding.
    WakeAt { mono_us: u64 },
    /// Run a read job (blocking) for `conn` and feed back [`Event::ReadDone`].
    Read { conn: ConnId, job: Box<ReadJob> },
    /// Run a read job for the shard itself and feed back [`Event::LookupDone`].
    Lookup(Box<ReadJob>),
    /// Cluster mode only: `user`'s first connection on this node arrived (`here`), or its last
    /// one left. The home shard holds all of a user's connections on a node, so it knows.
    Directory { user: String, here: bool },
    /// Cluster mode only: someone here watches `user`'s presence (`watch`), or no longer does.
    /// The link tells the other nodes' changes of that user ([`PeerMsg::PresenceElsewhere`]).
    PresenceWatch { user: String, watch: bool },
    /// Cluster mode only: to another node (an op for the conversation's owner node, or the
    /// answer to a connection there).
    Remote { node: NodeId, msg: Box<crate::remote::RemoteMsg> },
    /// Cluster mode only: this frame for every connection of `users` on the other nodes. The
    /// cluster link looks up which nodes hold them and sends it once to each.
    RemoteFanout(Box<RemoteFanout>),
}

/// What [`Action::RemoteFanout`] carries.
#[derive(Debug)]
pub struct RemoteFanout {
    pub users: Vec<String>,
    pub payload: Payload,
    pub except: Option<ConnRef>,
    pub msg: Option<(String, u64)>,
    pub class: Class,
}

///
/// Every field here is paid by every connection, idle or not (a million of them on a big host):
/// what most connections never use is boxed or in an unallocated `Vec`, and the device name is
/// not kept (nothing routes by it).
struct Conn {
    user: String,
    last_active_ms: u64,
    /// (conv, the first seq delivered live on this connection): a sync replay stops below it.
    /// At most `live_first_convs_max` entries, so a scan is as cheap as a hash.
    live_first: ThinVec<(String, u64)>,
    /// Some exactly while a `sync` runs on this connection.
    sync: Option<Box<SyncRun>>,
    /// Users whose presence this connection subscribed to.
    presence_targets: ThinVec<String>,
    /// Some for a long-poll session: who holds it (frames go there, not to a socket here).
    remote: Option<ConnRef>,
    /// When its token expires, on the monotonic clock (u64::MAX: never).
    expires_mono_ms: u64,
    /// This connection's rate limits (8 bytes each).
    limits: Limits,
}

/// A user's connections on one shard: one, inline, for nearly every user.
type SmallConns = smallvec::SmallVec<[ConnId; 1]>;

/// A user's connections on this shard (their home), and the limit they share.
#[derive(Default)]
struct UserConns {
    /// Nearly always one: inline, no allocation of its own.
    conns: SmallConns,
    /// The limits all of the user's connections share: opening more connections does not
    /// multiply the rates.
    limits: Limits,
}

/// What a client's frames are limited by, per connection and again per user.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Limit {
    /// `send`s and group changes: each a durable write.
    Sends,
    /// `history` reads: each a store read.
    Histories,
    /// `presence_sub` and `presence_unsub`: each a message to the targets' home shards (and in
    /// a cluster a Redis write).
    PresenceChanges,
}

/// One GCRA state per [`Limit`].
#[derive(Default)]
struct Limits {
    sends: crate::rate::Gcra,
    histories: crate::rate::Gcra,
    presence_changes: crate::rate::Gcra,
}

impl Limits {
    fn get(&mut self, l: Limit) -> &mut crate::rate::Gcra {
        match l {
            Limit::Sends => &mut self.sends,
            Limit::Histories => &mut self.histories,
            Limit::PresenceChanges => &mut self.presence_changes,
        }
    }
}

struct SyncRun {
    /// Conversations still to send, the next one first.
    todo: VecDeque<SyncTodo>,
    convs: std::collections::BTreeMap<String, u64>,
    limit: u64,
}

/// One conversation a running sync still has to send.
struct SyncTodo {
    conv: String,
    /// The seq the device has: the next chunk starts after it.
    after: u64,
    /// The last seq to send (where the conversation stood when the plan was made, or where a
    /// former member left).
    last: u64,
    /// Messages the sync may still send of it (the request's limit).
    left: u64,
}

/// Presence of one user homed here, kept while someone subscribes to it.
#[derive(Default)]
struct Presence {
    subs: Vec<ConnRef>,
    /// Last seen (unix ms), once known: from the store or from a disconnect here.
    last_seen: Option<u64>,
    /// Whether `last_seen` was read from the store (or is newer than it).
    loaded: bool,
    /// Some exactly while the store read of `last_seen` runs: who waits for the first answer.
    waiting: Option<Vec<ConnRef>>,
    /// Cluster mode: other nodes holding a connection of this user, as the link last said.
    elsewhere: Vec<NodeId>,
    /// Cluster mode: whether the link has answered for the other nodes yet (a first answer
    /// waits for it, so a user online elsewhere is never first reported offline).
    elsewhere_known: bool,
    /// The status every answered subscriber last heard (published, or told as a first
    /// answer); None before anyone is told, or when they heard different ones.
    published: Option<bool>,
    /// When a change was last published (monotonic ms); None before the first. A first answer
    /// is not a publication: the first change after it goes out at once, as it always did.
    last_publish_ms: Option<u64>,
}

/// Counts of what a shard refused or dropped, for metrics: the runtime copies them, it does not
/// read the frames it sends to count them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Ops refused with `unavailable` because the owner's commit queue was full.
    pub overloaded: u64,
    /// `typing` frames dropped: more than one per user and conversation per `typing_interval_ms`.
    pub typing_dropped: u64,
    /// Requests refused with `rate_limited` (a connection's or a user's rate, a second sync, the
    /// presence subscription bound).
    pub rate_limited: u64,
}

pub struct Shard {
    cfg: ShardConfig,
    ids: Snowflake,
    // Home role.
    conns: ConnMap<Conn>,
    by_user: HashMap<String, UserConns>,
    /// Remote sessions: holder's ref → connection id here.
    remote_conns: HashMap<ConnRef, ConnId>,
    next_remote: u64,
    wheel: TimerWheel<ConnId>,
    /// (user, conv) → when a typing notice was last relayed.
    typing_last: HashMap<(String, String), u64>,
    presence: HashMap<String, Presence>,
    /// Users whose presence changed since it was last published. Ordered (as every collection
    /// whose order reaches the actions is), so that a seed replays the same run.
    presence_dirty: BTreeSet<String>,
    /// Last-seen times not yet written (flushed with the next commit).
    last_seen_dirty: Vec<(String, u64)>,
    // Owner role.
    convs: HashMap<String, ConvState>,
    pending: Vec<Op>,
    /// True exactly while a commit job is out; the next one waits (seq order across batches).
    committing: bool,
    /// When the last commit job went out (monotonic µs), for pacing.
    last_commit_us: Option<u64>,
    /// True exactly while an [`Action::WakeAt`] is outstanding.
    wake_pending: bool,
    /// What was refused or dropped, for metrics.
    counters: Counters,
    /// Group conversations whose watermarks moved since their counts were last sent (ordered).
    receipts_dirty: BTreeSet<String>,
    /// conv → when its counts were last sent (coalescing).
    receipts_last_ms: HashMap<String, u64>,
    /// conv → seq → (delivered, read) last sent to the author.
    receipts_sent: HashMap<String, HashMap<u64, (u32, u32)>>,
    /// Cluster mode: the live nodes as last told by the cluster link (None until the first
    /// word: until then no node may assume it owns anything).
    view: Option<Vec<NodeId>>,
    /// Cluster mode: this node's incarnation, as the link last said; commit jobs check it
    /// against the store's fence.
    incarnation: u64,
    /// Cluster mode: the incarnation a commit job found fenced; views naming it are ignored.
    fenced: u64,
    /// The incarnation the running commit job checks.
    commit_incarnation: u64,
    /// Cluster mode: the view before the last change, and until when (monotonic ms)
    /// conversations that came here with the change are refused while their previous owner
    /// finishes what it had started (see `view_changed`).
    handover: Option<(Vec<NodeId>, u64)>,
    actions: Vec<Action>,
    /// Messages this shard sent itself, handled before `handle` returns.
    local: VecDeque<PeerMsg>,
    now: Now,
}

impl Shard {
    pub fn new(cfg: ShardConfig, now: Now) -> Self {
        let wheel = TimerWheel::new(now.mono_ms(), cfg.wheel_slot_ms, cfg.heartbeat_timeout_ms);
        Shard {
            ids: Snowflake::new(cfg.node, cfg.id),
            cfg,
            conns: ConnMap::default(),
            by_user: HashMap::new(),
            remote_conns: HashMap::new(),
            next_remote: 0,
            wheel,
            typing_last: HashMap::new(),
            presence: HashMap::new(),
            presence_dirty: BTreeSet::new(),
            last_seen_dirty: Vec::new(),
            convs: HashMap::new(),
            pending: Vec::new(),
            committing: false,
            last_commit_us: None,
            wake_pending: false,
            counters: Counters::default(),
            receipts_dirty: BTreeSet::new(),
            receipts_last_ms: HashMap::new(),
            receipts_sent: HashMap::new(),
            view: None,
            incarnation: 0,
            fenced: 0,
            commit_incarnation: 0,
            handover: None,
            actions: Vec::new(),
            local: VecDeque::new(),
            now,
        }
    }

    pub fn id(&self) -> ShardId {
        self.cfg.id
    }

    /// Ops waiting for this shard's next commit (a queue depth for metrics).
    pub fn pending_ops(&self) -> usize {
        self.pending.len()
    }

    /// What this shard refused or dropped so far (counters for metrics).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Handles one event; the actions it causes are collected by [`Shard::take_actions`].
    pub fn handle(&mut self, now: Now, ev: Event) {
        self.now = now;
        match ev {
            Event::Connected { conn, user, device: _, expires_unix_ms } => self.connected(conn, user, expires_unix_ms),
            Event::Frame { conn, frame } => {
                self.touch(conn);
                self.frame(conn, frame);
            }
            Event::Activity { conn } => self.touch(conn),
            Event::Disconnected { conn } => self.disconnected(conn),
            Event::Resubscribe { conn } => self.resubscribe(conn),
            Event::Peer(msg) => self.peer(msg),
            Event::CommitDone(out) => self.commit_done(out),
            Event::ReadDone { conn, outcome } => self.read_done(conn, outcome),
            Event::LookupDone(outcome) => self.lookup_done(outcome),
            Event::Wake => self.wake_pending = false,
            Event::Drain => self.cfg.commit_interval_us = 0,
            Event::Tick => {
                self.expire_connections();
                self.publish_presence();
                self.emit_receipt_counts();
                self.flush_last_seen();
                let horizon = self.now.mono_ms().saturating_sub(self.cfg.typing_interval_ms);
                self.typing_last.retain(|_, t| *t > horizon);
            }
        }
        while let Some(msg) = self.local.pop_front() {
            self.peer(msg);
        }
        self.maybe_commit();
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Gives back the buffer [`Shard::take_actions`] returned, emptied, so the next event's
    /// actions go into its allocation. Without it each event's actions started from an empty
    /// `Vec` and doubled their way up: a commit that answers a few hundred sends (an ack and a
    /// delivery each) reallocated and copied its actions eight times into fresh pages, 3% of the
    /// engine's CPU at 20,000 one-on-one msg/s (`grow_one`, page faults, `clear_page`). A buffer
    /// over [`ACTIONS_KEPT_MAX`] is dropped, so one burst does not hold its memory for good.
    pub fn recycle_actions(&mut self, mut spent: Vec<Action>) {
        debug_assert!(spent.is_empty(), "the runtime carried out every action it took");
        if self.actions.is_empty() && spent.capacity() > self.actions.capacity() && spent.capacity() <= ACTIONS_KEPT_MAX {
            spent.clear();
            self.actions = spent;
        }
    }

    fn send_to(&mut self, to: ShardId, msg: PeerMsg) {
        if to == self.cfg.id {
            self.local.push_back(msg);
        } else {
            self.actions.push(Action::Peer { to, msg: Box::new(msg) });
        }
    }

    fn node(&self) -> NodeId {
        self.cfg.node as NodeId
    }

    fn reply(&mut self, to: ConnRef, payload: Payload) {
        if to.node != self.node() {
            let msg = crate::remote::RemoteMsg::Reply { to, frame: payload.frame().clone() };
            self.actions.push(Action::Remote { node: to.node, msg: Box::new(msg) });
            return;
        }
        self.send_to(to.shard, PeerMsg::Reply { conn: to.conn, payload });
    }

    fn send(&mut self, conn: ConnId, payload: Payload) {
        self.push(conn, payload, Class::Durable);
    }

    /// Every frame for a connection goes through here: a socket of this shard gets it as an
    /// action; a remote connection (a long-poll session held by the bridge) gets it as a
    /// `Deliver` to its holder, in the same order.
    fn push(&mut self, conn: ConnId, payload: Payload, class: Class) {
        match self.conns.get(&conn).and_then(|c| c.remote) {
            Some(remote) => self.send_to(remote.shard, PeerMsg::Deliver { conns: vec![remote.conn], payload, class }),
            None => self.actions.push(Action::Send { conn, payload, class }),
        }
    }

    fn error(&mut self, conn: ConnId, err: FrameError) {
        if err.code == shardchat_codec::ErrorCode::RateLimited {
            self.counters.rate_limited += 1;
        }
        self.send(conn, ServerFrame::from(err).into());
    }

    fn me(&self, conn: ConnId) -> ConnRef {
        ConnRef { node: self.node(), shard: self.cfg.id, conn }
    }

    fn peer(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::Op(op) => self.route_op(op, false),
            PeerMsg::Forwarded(op) => self.route_op(op, true),
            PeerMsg::View { live, incarnation } => self.view_changed(live, incarnation),
            PeerMsg::PresenceNodes { user, nodes } => self.presence_nodes(user, nodes),
            PeerMsg::PresenceElsewhere { user, node, here, at_ms } => self.presence_elsewhere(user, node, here, at_ms),
            PeerMsg::Reply { conn, payload } => {
                if self.conns.contains_key(&conn) {
                    self.send(conn, payload);
                }
            }
            PeerMsg::Fanout { users, payload, except, msg, class } => self.deliver_to_users(&users, payload, except, msg, class),
            PeerMsg::Deliver { conns, payload, class } => {
                for conn in conns {
                    if self.conns.contains_key(&conn) {
                        self.push(conn, payload.clone(), class);
                    }
                }
            }
            PeerMsg::PresenceSub { target, sub } => self.presence_sub(target, sub),
            PeerMsg::PresenceUnsub { target, sub } => self.presence_unsub(&target, sub),
            PeerMsg::PresenceQuery { target, reply_to } => self.presence_query(target, reply_to),
            PeerMsg::Attach { user, device: _, remote } => {
                self.next_remote += 1;
                let conn = ConnId(REMOTE_CONN_BASE + self.next_remote);
                assert!(conn.0 < SESSION_CONN_BASE, "remote connection ids stay in their space");
                self.remote_conns.insert(remote, conn);
                // Each poll is authenticated on its own, so the session itself does not expire.
                self.connected(conn, user, None);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.remote = Some(remote);
                }
            }
            PeerMsg::RemoteFrame { remote, frame } => {
                if let Some(&conn) = self.remote_conns.get(&remote) {
                    self.touch(conn);
                    self.frame(conn, frame);
                }
            }
            PeerMsg::RemoteTouch { remote } => {
                if let Some(&conn) = self.remote_conns.get(&remote) {
                    self.touch(conn);
                }
            }
            PeerMsg::Detach { remote } => {
                if let Some(conn) = self.remote_conns.remove(&remote) {
                    self.disconnected(conn);
                }
            }
        }
    }
}
