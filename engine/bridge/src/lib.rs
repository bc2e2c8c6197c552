//! What the planes beside the shards share to reach them: the bridge's handle and its request
//! types (the control plane submits REST and long-poll requests; the cluster link hands over
//! what other nodes sent), and the shards' health beats. Runtime-agnostic (a crossbeam channel,
//! a socket pair to wake the bridge, atomics), so the control plane (tokio), the cluster link
//! (tokio, Redis) and the runtime (glommio) all depend on this crate and none on another:
//! the crate graph has no cycle between them.
//!
//! The bridge itself, one more glommio executor joined to the shard mesh as peer `shards`, is
//! `engine/src/runtime/bridge.rs`: it takes what arrives here to the shards and their answers
//! back.

pub mod clock;
pub mod health;
pub mod metrics;

use shardchat_codec::{MsgKind, ServerFrame};
use shardchat_shard::ops::GroupChange;
use shardchat_shard::PeerMsg;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the control plane asks of the shards, on behalf of `user`.
pub enum BridgeOp {
    Send {
        conv: String,
        cmid: String,
        body: String,
        kind: MsgKind,
        /// An event's target seq; a reply's message seq.
        target: Option<u64>,
        reply_to: Option<u64>,
        /// An `image` or `file` message's upload.
        media: Option<Box<shardchat_codec::Media>>,
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
    pub fn push(&self, frame: ServerFrame, bytes: usize) {
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
pub enum Input {
    /// From the control plane (boxed: a request is far larger than the cluster link's batch).
    Request(Box<BridgeRequest>),
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
        self.tx.try_send(Input::Request(Box::new(req))).map_err(|e| match e.into_inner() {
            Input::Request(r) => r,
            Input::Peers(_) => unreachable!("sent a request"),
        })?;
        self.ring();
        Ok(())
    }

    /// From the cluster link: hands the bridge messages for local peers (shards, or the bridge
    /// itself for answers to REST requests). Never waits: when the bridge's queue is full, or
    /// the bridge has stopped, the messages come back (the link retries for a bounded time on
    /// its own clock, then drops them; see `engine/cluster`).
    pub fn try_inject(&self, msgs: Vec<(usize, PeerMsg)>) -> Result<(), Injected> {
        if msgs.is_empty() {
            return Ok(());
        }
        match self.tx.try_send(Input::Peers(msgs)) {
            Ok(()) => {
                self.ring();
                Ok(())
            }
            Err(crossbeam_channel::TrySendError::Full(Input::Peers(m))) => {
                // A full queue has a wake-up pending already; ring anyway in case it was read.
                self.ring();
                Err(Injected::Full(m))
            }
            Err(_) => Err(Injected::Stopped),
        }
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

/// Why [`Bridge::try_inject`] did not take its messages.
pub enum Injected {
    /// The bridge's queue is full: the messages, to try again.
    Full(Vec<(usize, PeerMsg)>),
    /// The bridge has stopped (the node is shutting down).
    Stopped,
}

/// The bridge's end, moved into its executor.
pub struct BridgeEnd {
    pub rx: crossbeam_channel::Receiver<Input>,
    /// Set while a wake-up byte is unread.
    pub rung: Arc<AtomicBool>,
    /// The executor's end of the socket pair: a byte arrives per wake-up.
    pub bell_fd: i32,
    /// Set by the executor once it has joined the shard mesh.
    pub ready: Arc<AtomicBool>,
}

pub fn pair() -> std::io::Result<(Bridge, BridgeEnd)> {
    pair_holding(BRIDGE_QUEUE_REQUESTS_MAX)
}

/// A bridge whose queue holds `inputs_max` requests and batches (tests fill a small one).
pub fn pair_holding(inputs_max: usize) -> std::io::Result<(Bridge, BridgeEnd)> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = crossbeam_channel::bounded(inputs_max);
    let rung = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let bridge = Bridge { tx, rung: rung.clone(), sock: Arc::new(a), ready: ready.clone() };
    Ok((bridge, BridgeEnd { rx, rung, bell_fd: b.into_raw_fd(), ready }))
}
