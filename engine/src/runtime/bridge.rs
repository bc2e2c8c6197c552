//! The bridge between the control plane (tokio: REST, later polling and push) and the shards.
//!
//! It is one more glommio executor, unpinned, joined to the shard mesh as peer `shards` (after
//! every shard). To the shards it looks like a home shard whose "connections" are REST requests:
//! it sends them ops with `reply_to = (bridge, request)`, and their answers come back as ordinary
//! `Reply`/`Deliver` messages. The control plane hands it requests through a crossbeam channel
//! and wakes it through a socket pair (a byte per wake-up, coalesced by a flag): no polling.

use super::driver::Wire;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use shardchat_codec::{MsgKind, ServerFrame};
use shardchat_shard::ops::{ConnRef, GroupChange, GroupOp, Op, SendOp, Target};
use shardchat_shard::snowflake::Snowflake;
use shardchat_shard::{home_shard, owner_shard, PeerMsg};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the control plane asks of the shards, on behalf of `user`.
pub enum BridgeOp {
    Send {
        conv: String,
        cmid: String,
        body: String,
        kind: MsgKind,
    },
    /// `conv` is None for a create (the bridge assigns the id).
    Group {
        conv: Option<String>,
        change: GroupChange,
    },
    ReceiptQuery {
        conv: String,
        seq: u64,
    },
    Presence {
        users: Vec<String>,
    },
    /// Start a long-poll session: connection `conn` (chosen by the control plane, at or above
    /// [`SESSION_CONN_BASE`]) of the user on their home shard; its frames go to `buf`.
    Attach {
        conn: u64,
        device: String,
        buf: Arc<SessionBuf>,
    },
    /// A client frame posted to session `conn`.
    PollFrame {
        conn: u64,
        frame: shardchat_codec::ClientFrame,
    },
    /// Session `conn` was polled.
    PollTouch {
        conn: u64,
    },
    /// End session `conn`.
    Detach {
        conn: u64,
    },
}

/// Session connection ids start here (the shard's id spaces are laid out beside
/// [`shardchat_shard::ops::REMOTE_CONN_BASE`]); request ids count up from 1 below them.
pub use shardchat_shard::ops::SESSION_CONN_BASE;
/// Events a long-poll session holds for its client; beyond it (or beyond its bytes bound) the
/// session ends (like a WebSocket slow consumer) and the client starts a new one and syncs.
pub const SESSION_EVENTS_MAX: usize = 10_000;

/// The events of one long-poll session, shared by the bridge (which appends) and the control
/// plane (which hands them to polls). Events are numbered from 1; a poll's cursor says up to which
/// number the client has them.
pub struct SessionBuf {
    state: std::sync::Mutex<SessionState>,
    pub notify: tokio::sync::Notify,
    /// Bytes of unconfirmed events (their JSON encoding) the session may hold: the WebSocket
    /// connection's outbound bound, so a poll session pins no more memory than a socket.
    bytes_max: usize,
}

#[derive(Default)]
struct SessionState {
    /// Number of the last event appended.
    last: u64,
    /// Each event with its number and its size in bytes (JSON).
    events: std::collections::VecDeque<(u64, ServerFrame, usize)>,
    /// Sum of the sizes in `events`.
    bytes: usize,
    /// Some once the session is over, with why.
    ended: Option<&'static str>,
}

impl SessionBuf {
    pub fn new(bytes_max: usize) -> SessionBuf {
        SessionBuf { state: Default::default(), notify: tokio::sync::Notify::new(), bytes_max }
    }

    /// Appends an event of `bytes` bytes (its JSON encoding, as the poll will send it).
    pub(crate) fn push(&self, frame: ServerFrame, bytes: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.ended.is_some() {
            return;
        }
        if st.events.len() >= SESSION_EVENTS_MAX || st.bytes + bytes > self.bytes_max {
            st.events.clear();
            st.bytes = 0;
            st.ended = Some("the session fell too far behind: start a new one and sync");
        } else {
            st.last += 1;
            st.bytes += bytes;
            let n = st.last;
            st.events.push_back((n, frame, bytes));
        }
        drop(st);
        self.notify.notify_waiters();
    }

    /// Whether the session is over (its next poll answers 410 with why).
    pub fn is_ended(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).ended.is_some()
    }

    /// Bytes of the events held (tests, and the bound's check).
    pub fn held_bytes(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// Ends the session (the first reason given stays) and frees its events.
    pub fn end(&self, why: &'static str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ended.get_or_insert(why);
        st.events.clear();
        st.bytes = 0;
        drop(st);
        self.notify.notify_waiters();
    }

    /// Forgets the events the client has (numbers up to `upto`) and returns the cursor after
    /// the ones returned and up to `max` of the rest.
    pub fn take_after(&self, upto: u64, max: usize) -> Result<(u64, Vec<ServerFrame>), &'static str> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = st.ended {
            return Err(why);
        }
        while st.events.front().is_some_and(|(n, _, _)| *n <= upto) {
            let (_, _, bytes) = st.events.pop_front().expect("checked");
            st.bytes -= bytes;
        }
        let batch: Vec<&(u64, ServerFrame, usize)> = st.events.iter().take(max).collect();
        let cursor = batch.last().map(|(n, _, _)| *n).unwrap_or(upto);
        Ok((cursor, batch.into_iter().map(|(_, f, _)| f.clone()).collect()))
    }
}

pub struct BridgeRequest {
    pub user: String,
    pub op: BridgeOp,
    /// Gets every frame the shards answered with (one per user for presence, else one).
    pub reply: tokio::sync::oneshot::Sender<Vec<ServerFrame>>,
}

/// What reaches the bridge from other threads.
enum Input {
    /// From the control plane.
    Request(BridgeRequest),
    /// From the cluster link: messages other nodes sent here (or the link's own word, such as
    /// the live nodes), each with the local peer it is for.
    Peers(Vec<(usize, PeerMsg)>),
}

/// The control plane's handle: submit requests from any thread. When the last clone is dropped
/// the socket closes and the bridge stops.
#[derive(Clone)]
pub struct Bridge {
    tx: crossbeam_channel::Sender<Input>,
    /// Set while a wake-up byte is unread: later submits need not write another.
    rung: Arc<AtomicBool>,
    sock: Arc<std::os::unix::net::UnixStream>,
    ready: Arc<AtomicBool>,
}

/// Requests waiting in the bridge's channel beyond which `submit` refuses (the control plane
/// answers 503): bounded like every other queue.
const BRIDGE_QUEUE_REQUESTS_MAX: usize = 65_536;

impl Bridge {
    /// Hands `req` to the bridge; `Err` gives it back when the bridge is gone or full.
    pub fn submit(&self, req: BridgeRequest) -> Result<(), Box<BridgeRequest>> {
        self.tx.try_send(Input::Request(req)).map_err(|e| match e.into_inner() {
            Input::Request(r) => Box::new(r),
            Input::Peers(_) => unreachable!("sent a request"),
        })?;
        self.ring();
        Ok(())
    }

    /// From the cluster link: hands the bridge messages for local peers (shards, or the bridge
    /// itself for answers to REST requests). Waits while the bridge's queue is full rather than
    /// drop a message another node sent; false once the bridge has stopped.
    pub fn inject(&self, msgs: Vec<(usize, PeerMsg)>) -> bool {
        if msgs.is_empty() {
            return true;
        }
        let ok = self.tx.send(Input::Peers(msgs)).is_ok();
        self.ring();
        ok
    }

    fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            // Non-blocking: a full socket buffer means a wake-up is already pending.
            let _ = (&*self.sock).write(&[1]);
        }
    }

    /// Whether the bridge has joined the shard mesh (readiness).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The bridge's end, moved into its executor.
pub struct BridgeEnd {
    rx: crossbeam_channel::Receiver<Input>,
    rung: Arc<AtomicBool>,
    bell_fd: i32,
    ready: Arc<AtomicBool>,
}

pub fn pair() -> std::io::Result<(Bridge, BridgeEnd)> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = crossbeam_channel::bounded(BRIDGE_QUEUE_REQUESTS_MAX);
    let rung = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let bridge = Bridge { tx, rung: rung.clone(), sock: Arc::new(a), ready: ready.clone() };
    Ok((bridge, BridgeEnd { rx, rung, bell_fd: b.into_raw_fd(), ready }))
}

struct Waiting {
    remaining: usize,
    frames: Vec<ServerFrame>,
    reply: tokio::sync::oneshot::Sender<Vec<ServerFrame>>,
}

#[derive(Default)]
struct State {
    next_conn: u64,
    /// conn id → request id
    conns: HashMap<u64, u64>,
    requests: HashMap<u64, Waiting>,
    /// Long-poll sessions: conn id → (home shard, events).
    sessions: HashMap<u64, (usize, Arc<SessionBuf>)>,
    /// The size of `requests` at which the next sweep for abandoned ones runs.
    reclaim_at: usize,
}

/// Requests waiting for their answers that the table holds before it first sweeps out those
/// whose caller stopped waiting (see [`State::reclaim`]).
const REQUESTS_SWEEP_MIN: usize = 64;

impl State {
    /// A message from a shard (or, through the cluster link, from another node) for the bridge.
    fn incoming(&mut self, m: PeerMsg) {
        match m {
            PeerMsg::Reply { conn, payload } => self.complete(conn, &payload),
            PeerMsg::Deliver { conns, payload, .. } => {
                for c in conns {
                    self.complete(c, &payload);
                }
            }
            PeerMsg::Detach { remote } => {
                if let Some((_, buf)) = self.sessions.remove(&remote.conn) {
                    buf.end("session expired: it was not polled within the heartbeat timeout");
                }
            }
            _ => {}
        }
    }

    /// Drops the requests whose caller stopped waiting (the control plane gives up after
    /// `SHARD_ANSWER_TIMEOUT`, dropping its receiver), with their connection ids. An answer can
    /// be lost (a shard refusing an op it cannot place, a peer node gone), and without this its
    /// entries would stay for good. Runs each time the table doubles past its last size, so its
    /// cost is constant per request and the table holds at most twice what is really waited for.
    fn reclaim(&mut self) {
        if self.requests.len() < self.reclaim_at.max(REQUESTS_SWEEP_MIN) {
            return;
        }
        self.requests.retain(|_, w| !w.reply.is_closed());
        let requests = &self.requests;
        self.conns.retain(|_, req| requests.contains_key(req));
        self.reclaim_at = self.requests.len() * 2;
    }

    fn complete(&mut self, conn: u64, payload: &shardchat_shard::Payload) {
        let frame = payload.frame().clone();
        if let Some((_, buf)) = self.sessions.get(&conn) {
            // Sized by its JSON encoding, made once per payload whatever the recipients.
            buf.push(frame, payload.text().len());
            return;
        }
        let Some(req) = self.conns.remove(&conn) else { return };
        let Some(w) = self.requests.get_mut(&req) else { return };
        w.frames.push(frame);
        w.remaining -= 1;
        if w.remaining == 0 {
            let w = self.requests.remove(&req).expect("present");
            let _ = w.reply.send(w.frames);
        }
    }
}

/// Runs the bridge until the control plane drops its handle.
pub async fn run(me: usize, shards: usize, node: usize, mesh: MeshBuilder<Wire, Full>, end: BridgeEnd) -> Result<(), String> {
    use futures::AsyncReadExt;
    let (senders, mut receivers) = mesh.join().await.map_err(|_| "bridge: joining the shard mesh".to_string())?;
    if senders.peer_id() != me {
        return Err(format!("bridge joined the mesh as peer {} instead of {me}", senders.peer_id()));
    }
    let state = Rc::new(RefCell::new(State::default()));
    for (_, rx) in receivers.streams() {
        let state = state.clone();
        glommio::spawn_local(async move {
            while let Some(wire) = rx.recv().await {
                let Wire::Batch(msgs) = wire else { continue };
                let mut st = state.borrow_mut();
                for m in msgs {
                    st.incoming(m);
                }
            }
        })
        .detach();
    }
    end.ready.store(true, Ordering::Release);
    let node = node as shardchat_shard::NodeId;
    // SAFETY: `bell_fd` is our end of the socket pair, owned by nobody else.
    let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(end.bell_fd) };
    let mut ids = Snowflake::new(usize::from(node), me);
    let mut buf = [0u8; 64];
    loop {
        match bell.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        // Reset before draining: a request pushed after this point rings again.
        end.rung.store(false, Ordering::Release);
        let mut out: Vec<(usize, PeerMsg)> = Vec::new();
        loop {
            let req = match end.rx.try_recv() {
                Ok(Input::Request(r)) => r,
                Ok(Input::Peers(msgs)) => {
                    for (to, m) in msgs {
                        if to == me {
                            state.borrow_mut().incoming(m);
                        } else {
                            out.push((to, m));
                        }
                    }
                    continue;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return Ok(()),
            };
            let mut st = state.borrow_mut();
            let req_id = st.next_conn;
            let mut conn = || {
                st.next_conn += 1;
                let c = st.next_conn;
                st.conns.insert(c, req_id);
                ConnRef { node, shard: me, conn: c }
            };
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            let user = req.user;
            let msgs: Vec<(usize, PeerMsg)> = match req.op {
                BridgeOp::Send { conv, cmid, body, kind } => {
                    let reply_to = conn();
                    let op =
                        SendOp { reply_to, user, cmid, target: Target::Conv(conv.clone()), conv: conv.clone(), body, kind, id: 0, ts: 0 };
                    vec![(owner_shard(&conv, shards), PeerMsg::Op(Op::Send(op)))]
                }
                BridgeOp::Group { conv, change } => {
                    let conv = conv.unwrap_or_else(|| format!("g:{}", ids.next(now)));
                    let reply_to = conn();
                    let op = GroupOp { reply_to, user, conv: conv.clone(), change, r#ref: None, id: 0, ts: 0 };
                    vec![(owner_shard(&conv, shards), PeerMsg::Op(Op::Group(op)))]
                }
                BridgeOp::ReceiptQuery { conv, seq } => {
                    let reply_to = conn();
                    vec![(owner_shard(&conv, shards), PeerMsg::Op(Op::ReceiptQuery { reply_to, user, conv, seq, r#ref: None }))]
                }
                BridgeOp::Presence { users } => users
                    .into_iter()
                    .map(|target| {
                        let reply_to = conn();
                        (home_shard(&target, shards), PeerMsg::PresenceQuery { target, reply_to })
                    })
                    .collect(),
                BridgeOp::Attach { conn, device, buf } => {
                    let home = home_shard(&user, shards);
                    st.sessions.insert(conn, (home, buf));
                    out.push((home, PeerMsg::Attach { user, device, remote: ConnRef { node, shard: me, conn } }));
                    Vec::new()
                }
                BridgeOp::PollFrame { conn, frame } => {
                    if let Some((home, _)) = st.sessions.get(&conn) {
                        out.push((*home, PeerMsg::RemoteFrame { remote: ConnRef { node, shard: me, conn }, frame }));
                    }
                    Vec::new()
                }
                BridgeOp::PollTouch { conn } => {
                    if let Some((home, _)) = st.sessions.get(&conn) {
                        out.push((*home, PeerMsg::RemoteTouch { remote: ConnRef { node, shard: me, conn } }));
                    }
                    Vec::new()
                }
                BridgeOp::Detach { conn } => {
                    if let Some((home, buf)) = st.sessions.remove(&conn) {
                        buf.end("session closed");
                        out.push((home, PeerMsg::Detach { remote: ConnRef { node, shard: me, conn } }));
                    }
                    Vec::new()
                }
            };
            if msgs.is_empty() {
                let _ = req.reply.send(Vec::new());
                continue;
            }
            st.next_conn += 1;
            st.requests.insert(req_id, Waiting { remaining: msgs.len(), frames: Vec::new(), reply: req.reply });
            st.reclaim();
            out.extend(msgs);
        }
        let mut by_shard: HashMap<usize, Vec<PeerMsg>> = HashMap::new();
        for (to, m) in out {
            by_shard.entry(to).or_default().push(m);
        }
        for (to, batch) in by_shard {
            if senders.send_to(to, Wire::Batch(batch)).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests whose answers never come and whose callers gave up do not stay in the table.
    #[test]
    fn abandoned_requests_are_reclaimed_and_waited_ones_kept() {
        let mut st = State::default();
        let mut kept = Vec::new();
        for i in 0..1_000u64 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            st.next_conn += 1;
            st.conns.insert(st.next_conn, i);
            st.requests.insert(i, Waiting { remaining: 1, frames: Vec::new(), reply: tx });
            // One caller in ten is still waiting; the others timed out.
            if i % 10 == 0 {
                kept.push(rx);
            }
            st.reclaim();
        }
        assert!(st.requests.len() <= 2 * kept.len() + REQUESTS_SWEEP_MIN, "{} requests held for {} waiting", st.requests.len(), kept.len());
        assert!(st.conns.len() <= st.requests.len() + REQUESTS_SWEEP_MIN);
        assert!((0..1_000).step_by(10).all(|i| st.requests.contains_key(&i)), "every request still waited for is kept");
    }
}
