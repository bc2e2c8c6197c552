//! [`Shard`]: the home and owner roles of one shard as a state machine.

use crate::jobs::*;
use crate::payload::Payload;
use crate::route::{home_shard, owner_shard, ShardId};
use crate::snowflake::Snowflake;
use crate::wheel::TimerWheel;
use shardchat_codec::{
    ClientFrame, ErrorCode, FrameError, MsgRecord, ReceiptKind, ServerFrame, SYNC_FRAME_MESSAGES_MAX, SYNC_LIMIT_DEFAULT,
};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The time, passed in with every event: wall clock for timestamps and ids, a monotonic clock for
/// timeouts (a wall clock step must not expire every connection at once).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub unix_ms: u64,
    pub mono_ms: u64,
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
}

impl ShardConfig {
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
        }
    }
}

/// What happens to a shard.
#[derive(Debug)]
pub enum Event {
    /// A connection of `user` now lives here (its home shard).
    Connected {
        conn: u64,
        user: String,
        device: String,
    },
    /// A decoded, validated frame from a connection; `binary` tells the encoding it came in.
    Frame {
        conn: u64,
        frame: ClientFrame,
    },
    /// Bytes arrived on a connection (any frame, WebSocket pings included): it is alive.
    Activity {
        conn: u64,
    },
    Disconnected {
        conn: u64,
    },
    /// Messages from another shard (or this one).
    Peer(PeerMsg),
    CommitDone(CommitOutcome),
    ReadDone {
        conn: u64,
        outcome: ReadOutcome,
    },
    /// The coarse timer: heartbeat timeouts.
    Tick,
}

/// What a shard asks the runtime to do.
#[derive(Debug)]
pub enum Action {
    /// Write a frame to a local connection.
    Send { conn: u64, payload: Payload },
    /// Close a local connection with a WebSocket close code and reason.
    Close { conn: u64, code: u16, reason: &'static str },
    /// Deliver to another shard (never this one: the shard handles its own messages inline).
    Peer { to: ShardId, msg: PeerMsg },
    /// Run a commit job (blocking) and feed back [`Event::CommitDone`]. At most one in flight.
    Commit(CommitJob),
    /// Run a read job (blocking) for `conn` and feed back [`Event::ReadDone`].
    Read { conn: u64, job: ReadJob },
}

/// Messages between shards: the only thing that crosses cores. Payloads are shared, not copied.
#[derive(Debug)]
pub enum PeerMsg {
    /// Home → owner: a message or a watermark to sequence.
    Op(Op),
    /// Owner → home: the answer to one connection's request (an ack or an error).
    Reply { conn: u64, payload: Payload },
    /// Owner → home: a frame for every connection of these users (that live on the target shard).
    /// `msg` names the conversation and seq when the frame is a message (for sync dedup);
    /// `except` skips the connection that sent it.
    Fanout { users: Vec<String>, payload: Payload, except: Option<ConnRef>, msg: Option<(String, u64)> },
}

struct Conn {
    user: String,
    #[allow(dead_code)]
    device: String,
    last_active_ms: u64,
    /// conv → the first seq delivered live on this connection: a sync replay stops below it.
    live_first: HashMap<String, u64>,
    /// Some exactly while a `sync` runs on this connection.
    sync: Option<SyncRun>,
}

struct SyncRun {
    /// Conversations still to send: (conv, after, last, messages left under the limit).
    todo: VecDeque<(String, u64, u64, u64)>,
    convs: BTreeMap<String, u64>,
    limit: u64,
}

pub struct Shard {
    cfg: ShardConfig,
    ids: Snowflake,
    // Home role.
    conns: HashMap<u64, Conn>,
    by_user: HashMap<String, Vec<u64>>,
    wheel: TimerWheel<u64>,
    // Owner role.
    convs: HashMap<String, ConvState>,
    pending: Vec<Op>,
    /// True exactly while a commit job is out; the next one waits (seq order across batches).
    committing: bool,
    actions: Vec<Action>,
    /// Messages this shard sent itself, handled before `handle` returns.
    local: VecDeque<PeerMsg>,
    now: Now,
}

impl Shard {
    pub fn new(cfg: ShardConfig, now: Now) -> Self {
        let wheel = TimerWheel::new(now.mono_ms, cfg.wheel_slot_ms, cfg.heartbeat_timeout_ms);
        Shard {
            ids: Snowflake::new(cfg.node, cfg.id),
            cfg,
            conns: HashMap::new(),
            by_user: HashMap::new(),
            wheel,
            convs: HashMap::new(),
            pending: Vec::new(),
            committing: false,
            actions: Vec::new(),
            local: VecDeque::new(),
            now,
        }
    }

    pub fn id(&self) -> ShardId {
        self.cfg.id
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Handles one event; the actions it causes are collected by [`Shard::take_actions`].
    pub fn handle(&mut self, now: Now, ev: Event) {
        self.now = now;
        match ev {
            Event::Connected { conn, user, device } => self.connected(conn, user, device),
            Event::Frame { conn, frame } => {
                self.touch(conn);
                self.frame(conn, frame);
            }
            Event::Activity { conn } => self.touch(conn),
            Event::Disconnected { conn } => self.disconnected(conn),
            Event::Peer(msg) => self.peer(msg),
            Event::CommitDone(out) => self.commit_done(out),
            Event::ReadDone { conn, outcome } => self.read_done(conn, outcome),
            Event::Tick => self.tick(),
        }
        while let Some(msg) = self.local.pop_front() {
            self.peer(msg);
        }
        self.maybe_commit();
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    fn send_to(&mut self, to: ShardId, msg: PeerMsg) {
        if to == self.cfg.id {
            self.local.push_back(msg);
        } else {
            self.actions.push(Action::Peer { to, msg });
        }
    }

    fn reply(&mut self, to: ConnRef, payload: Payload) {
        self.send_to(to.shard, PeerMsg::Reply { conn: to.conn, payload });
    }

    fn error(&mut self, conn: u64, err: FrameError) {
        self.actions.push(Action::Send { conn, payload: ServerFrame::from(err).into() });
    }

    // ---- home role ----

    fn connected(&mut self, conn: u64, user: String, device: String) {
        self.by_user.entry(user.clone()).or_default().push(conn);
        self.conns.insert(conn, Conn { user, device, last_active_ms: self.now.mono_ms, live_first: HashMap::new(), sync: None });
        self.wheel.insert(conn, self.now.mono_ms + self.cfg.heartbeat_timeout_ms);
    }

    fn disconnected(&mut self, conn: u64) {
        if let Some(c) = self.conns.remove(&conn) {
            if let Some(list) = self.by_user.get_mut(&c.user) {
                list.retain(|&x| x != conn);
                if list.is_empty() {
                    self.by_user.remove(&c.user);
                }
            }
        }
    }

    fn touch(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_active_ms = self.now.mono_ms;
        }
    }

    fn tick(&mut self) {
        for conn in self.wheel.advance(self.now.mono_ms) {
            let Some(c) = self.conns.get(&conn) else { continue };
            let deadline = c.last_active_ms + self.cfg.heartbeat_timeout_ms;
            if deadline <= self.now.mono_ms {
                self.actions.push(Action::Close { conn, code: 1000, reason: "heartbeat timeout" });
                // The runtime reports Disconnected once the socket is gone; until then it is
                // closing and gets nothing more.
                self.disconnected(conn);
            } else {
                self.wheel.insert(conn, deadline);
            }
        }
    }

    fn frame(&mut self, conn: u64, frame: ClientFrame) {
        let Some(c) = self.conns.get(&conn) else { return };
        let user = c.user.clone();
        let me = ConnRef { shard: self.cfg.id, conn };
        match frame {
            ClientFrame::Send { cmid, to, conv, body, kind } => {
                let target = match (to, conv) {
                    (Some(to), _) => Target::To(to),
                    (None, Some(conv)) => Target::Conv(conv),
                    (None, None) => unreachable!("validated by the codec"),
                };
                let conv = target.conv(&user);
                let owner = owner_shard(&conv, self.cfg.shards);
                // id and ts are assigned by the owner when it accepts the op.
                let op = SendOp { reply_to: me, user, cmid, conv, target, body, kind, id: 0, ts: 0 };
                self.send_to(owner, PeerMsg::Op(Op::Send(op)));
            }
            ClientFrame::Delivered { conv, seq } => self.mark(me, user, conv, ReceiptKind::Delivered, seq),
            ClientFrame::Read { conv, seq } => self.mark(me, user, conv, ReceiptKind::Read, seq),
            ClientFrame::Sync { cursors, limit } => {
                let c = self.conns.get_mut(&conn).expect("checked above");
                if c.sync.is_some() {
                    self.error(conn, FrameError::new(ErrorCode::RateLimited, "a sync is already running on this connection"));
                    return;
                }
                let limit = u64::from(limit.unwrap_or(SYNC_LIMIT_DEFAULT));
                c.sync = Some(SyncRun { todo: VecDeque::new(), convs: BTreeMap::new(), limit });
                self.actions.push(Action::Read { conn, job: ReadJob::SyncPlan { user, cursors } });
            }
            ClientFrame::History { conv, before, limit, r#ref } => {
                let limit = limit.unwrap_or(shardchat_codec::HISTORY_LIMIT_DEFAULT) as usize;
                let bytes_max = self.cfg.read_frame_bytes_max;
                self.actions.push(Action::Read { conn, job: ReadJob::History { user, conv, before, limit, bytes_max, r#ref } });
            }
            ClientFrame::Ping { r#ref } => {
                self.actions.push(Action::Send { conn, payload: ServerFrame::Pong { r#ref }.into() });
            }
            other @ (ClientFrame::GroupCreate { .. }
            | ClientFrame::GroupAdd { .. }
            | ClientFrame::GroupRemove { .. }
            | ClientFrame::GroupLeave { .. }
            | ClientFrame::PresenceSub { .. }
            | ClientFrame::PresenceUnsub { .. }
            | ClientFrame::Typing { .. }) => {
                let (cmid, r#ref) = other.correlation();
                let err = FrameError::bad_request("groups, presence and typing are not served by this version yet")
                    .with_cmid(cmid)
                    .with_ref(r#ref);
                self.error(conn, err);
            }
        }
    }

    fn mark(&mut self, me: ConnRef, user: String, conv: String, kind: ReceiptKind, seq: u64) {
        let owner = owner_shard(&conv, self.cfg.shards);
        self.send_to(owner, PeerMsg::Op(Op::Mark(MarkOp { reply_to: me, user, conv, kind, seq })));
    }

    fn peer(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::Op(op) => self.accept_op(op),
            PeerMsg::Reply { conn, payload } => {
                if self.conns.contains_key(&conn) {
                    self.actions.push(Action::Send { conn, payload });
                }
            }
            PeerMsg::Fanout { users, payload, except, msg } => {
                for user in &users {
                    let Some(list) = self.by_user.get(user) else { continue };
                    for &conn in list {
                        if except == Some(ConnRef { shard: self.cfg.id, conn }) {
                            continue;
                        }
                        if let (Some((conv, seq)), Some(c)) = (&msg, self.conns.get_mut(&conn)) {
                            if !c.live_first.contains_key(conv) && c.live_first.len() < self.cfg.live_first_convs_max {
                                c.live_first.insert(conv.clone(), *seq);
                            }
                        }
                        self.actions.push(Action::Send { conn, payload: payload.clone() });
                    }
                }
            }
        }
    }

    fn read_done(&mut self, conn: u64, outcome: ReadOutcome) {
        match outcome {
            ReadOutcome::History(Ok(frame)) => self.actions.push(Action::Send { conn, payload: frame.into() }),
            ReadOutcome::History(Err(e)) => self.error(conn, e),
            ReadOutcome::SyncPlan(plan) => {
                let Some(run) = self.conns.get_mut(&conn).and_then(|c| c.sync.as_mut()) else { return };
                match plan {
                    Ok(plan) => {
                        for sc in plan {
                            run.convs.insert(sc.conv.clone(), sc.last);
                            if sc.cursor < sc.last {
                                run.todo.push_back((sc.conv, sc.cursor, sc.last, run.limit));
                            }
                        }
                        self.next_sync_chunk(conn);
                    }
                    Err(e) => {
                        self.conns.get_mut(&conn).expect("checked").sync = None;
                        self.error(conn, e);
                    }
                }
            }
            ReadOutcome::SyncChunk { conv, messages } => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                let live_first = c.live_first.get(&conv).copied().unwrap_or(u64::MAX);
                let Some(run) = c.sync.as_mut() else { return };
                let messages = match messages {
                    Ok(m) => m,
                    Err(e) => {
                        c.sync = None;
                        self.error(conn, e);
                        return;
                    }
                };
                let (_, _, last, left) = run.todo.pop_front().expect("a chunk answers the head of the plan");
                let fetched = messages.len() as u64;
                let frame_last = messages.last().map(|m| m.seq);
                // Messages from the first live one on were delivered live: do not send them twice.
                let replay: Vec<MsgRecord> = messages.into_iter().filter(|m| m.seq < live_first).collect();
                let reached_live = frame_last.is_some_and(|s| s + 1 >= live_first) || replay.len() as u64 != fetched;
                let left = left - fetched.min(left);
                let more = match frame_last {
                    Some(s) => s < last && !reached_live,
                    None => false,
                };
                if let (Some(s), true, true) = (frame_last, more, left > 0) {
                    run.todo.push_front((conv.clone(), s, last, left));
                }
                if !replay.is_empty() {
                    self.actions.push(Action::Send { conn, payload: ServerFrame::Sync { conv, messages: replay, more }.into() });
                }
                self.next_sync_chunk(conn);
            }
        }
    }

    /// Asks for the next chunk of the running sync, or ends it with `synced`.
    fn next_sync_chunk(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let Some(run) = c.sync.as_mut() else { return };
        match run.todo.front() {
            Some((conv, after, _, left)) => {
                let limit = (*left as usize).min(SYNC_FRAME_MESSAGES_MAX);
                let job = ReadJob::SyncChunk { conv: conv.clone(), after: *after, limit, bytes_max: self.cfg.read_frame_bytes_max };
                self.actions.push(Action::Read { conn, job });
            }
            None => {
                let run = c.sync.take().expect("checked");
                self.actions.push(Action::Send { conn, payload: ServerFrame::Synced { convs: run.convs }.into() });
            }
        }
    }

    // ---- owner role ----

    fn accept_op(&mut self, mut op: Op) {
        if self.pending.len() >= self.cfg.owner_pending_ops_max {
            if let Op::Send(s) = &op {
                let err = FrameError::new(ErrorCode::Unavailable, "server overloaded, retry later").with_cmid(Some(s.cmid.clone()));
                self.reply(s.reply_to, ServerFrame::from(err).into());
            }
            return;
        }
        if let Op::Send(s) = &mut op {
            s.id = self.ids.next(self.now.unix_ms);
            s.ts = self.now.unix_ms;
        }
        self.pending.push(op);
    }

    fn maybe_commit(&mut self) {
        if self.committing || self.pending.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.pending);
        let mut convs = HashMap::new();
        for op in &ops {
            if let Some(st) = self.convs.remove(op.conv()) {
                convs.insert(op.conv().to_string(), st);
            }
        }
        self.committing = true;
        self.actions.push(Action::Commit(CommitJob { ops, convs }));
    }

    fn commit_done(&mut self, out: CommitOutcome) {
        self.committing = false;
        if self.convs.len() + out.convs.len() > self.cfg.conv_cache_max {
            // Trimming is cheap and rare; evicted conversations reload from the store.
            self.convs.clear();
        }
        self.convs.extend(out.convs);
        for outcome in out.outcomes {
            match outcome {
                OpOutcome::Rejected { reply_to, err } => self.reply(reply_to, ServerFrame::from(err).into()),
                OpOutcome::Stored { reply_to, record, members, fresh } => {
                    let ack = ServerFrame::Ack {
                        cmid: record.cmid.clone(),
                        conv: record.conv.clone(),
                        id: record.id,
                        seq: record.seq,
                        ts: record.ts,
                    };
                    self.reply(reply_to, ack.into());
                    if fresh {
                        let msg = Some((record.conv.clone(), record.seq));
                        self.fanout(&members, ServerFrame::Msg(record).into(), Some(reply_to), msg);
                    }
                }
                OpOutcome::Marked { conv, user, kind, seq, members, changed } => {
                    if changed {
                        let others: Vec<String> = members.into_iter().filter(|m| *m != user).collect();
                        let frame = ServerFrame::Receipt { conv, user, kind, seq };
                        self.fanout(&others, frame.into(), None, None);
                    }
                }
            }
        }
    }

    /// One message per destination home shard, carrying the users that live there and the
    /// payload encoded once.
    fn fanout(&mut self, users: &[String], payload: Payload, except: Option<ConnRef>, msg: Option<(String, u64)>) {
        let mut by_shard: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
        for u in users {
            by_shard.entry(home_shard(u, self.cfg.shards)).or_default().push(u.clone());
        }
        for (shard, users) in by_shard {
            let m = PeerMsg::Fanout { users, payload: payload.clone(), except, msg: msg.clone() };
            self.send_to(shard, m);
        }
    }
}
