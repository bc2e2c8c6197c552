//! One WebSocket connection on its home shard: a single task that writes the outbound queue in
//! batches and reads frames on readiness; once idle for `park_idle_ms`, no task at all (its
//! socket waits in the shard's lot, `lot.rs`) until it speaks or is spoken to.
//!
//! An idle connection owns no buffer: reads go into the shard's read buffer and are parsed there
//! by [`FrameReader`] (which allocates only for a frame split across reads), writes are encoded
//! into the shard's write buffer and only what the socket would not take is kept, in `unsent`.
//! See `ws.rs` for why tungstenite's `WebSocket` is not used past the handshake.

use super::driver::Driver;
use futures::io::{AsyncRead, AsyncWrite};
use futures::AsyncWriteExt;
use glommio::net::TcpStream;
use shardchat_auth::Identity;
use shardchat_bridge::metrics::ShardMetrics;
use shardchat_codec::{decode_binary, decode_text, ServerFrame};
use shardchat_shard::ops::ConnId;
use shardchat_shard::{Class, Event, Payload};
use shardchat_wire::ws::{self, Fed, FrameReader, Msg, WsError};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::{Message, Utf8Bytes};
/// Ephemeral frames (typing, presence) are dropped once a connection's queue holds more than
/// this fraction of its bound: they are the first to go when a client falls behind.
const EPHEMERAL_QUEUE_FRACTION: usize = 4;

/// How long a connection told to close may take to do so before its socket is shut down under
/// it (a client that stopped reading cannot take a close frame).
const CLOSE_GRACE_MS: u64 = 2_000;
/// The same for a slow consumer (1013): its backlog is dropped, so what holds its close frame
/// back is only what the sockets already carry, and a client that reads again within this long
/// learns why it was cut off (and that it must sync) instead of seeing a reset.
const SLOW_CONSUMER_CLOSE_GRACE_MS: u64 = 10_000;

/// How long a close with `code` may wait for the client to take its close frame.
fn close_grace(code: u16) -> Duration {
    Duration::from_millis(if code == 1013 { SLOW_CONSUMER_CLOSE_GRACE_MS } else { CLOSE_GRACE_MS })
}

/// What became of a frame handed to [`ConnHandle::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// An ephemeral frame dropped because the connection is behind.
    Dropped,
    /// The queue would overflow: the connection is being closed (1013).
    Overflowed,
    /// The connection is already closing.
    Closing,
}

/// The shard's side of a connection: the outbound queue and the close request.
pub struct ConnHandle {
    queue: RefCell<VecDeque<Message>>,
    /// Bytes of the frames in `queue`; bounded by `outbound_queue_bytes_max`.
    queued_bytes: Cell<usize>,
    /// The encoding the client last spoke: answers go out in it.
    binary: Cell<bool>,
    /// Some exactly once the connection has been told to close.
    closing: Cell<Option<(u16, &'static str)>>,
    /// The connection task, when it waits for outbound frames.
    waker: RefCell<Option<Waker>>,
    fd: RawFd,
    /// Set before the socket is closed: after that `fd` may name another socket.
    finished: Cell<bool>,
    /// Set when an ephemeral frame was dropped; once the queue drains the shard re-sends the
    /// current presence of everything this connection watches.
    dropped_ephemeral: Cell<bool>,
    /// The connection has no task: its socket is in the shard's lot, and a wake unparks it.
    parked: Cell<bool>,
    /// The driver found the connection idle: its task parks it if it still is.
    park_requested: Cell<bool>,
    /// When the task last ran (the driver's coarse clock, ms): what idleness is measured from.
    active_ms: Cell<u64>,
}

impl ConnHandle {
    fn new(fd: RawFd) -> Self {
        ConnHandle {
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            binary: Cell::new(false),
            closing: Cell::new(None),
            waker: RefCell::new(None),
            fd,
            finished: Cell::new(false),
            dropped_ephemeral: Cell::new(false),
            parked: Cell::new(false),
            park_requested: Cell::new(false),
            active_ms: Cell::new(0),
        }
    }

    /// When the connection's task last ran, or since when it is parked (ms, the driver's clock).
    pub fn active_ms(&self) -> u64 {
        self.active_ms.get()
    }

    pub fn is_parked(&self) -> bool {
        self.parked.get()
    }

    /// Asks the connection's task to park it if it is still idle when it next runs (now).
    pub fn request_park(&self) {
        self.park_requested.set(true);
        self.wake();
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    pub fn is_finished(&self) -> bool {
        self.finished.get()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get().is_some()
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        } else if self.parked.get() {
            super::lot::wake_parked(self.fd);
        }
    }

    /// Queues a frame in the connection's encoding. Ephemeral frames are dropped when the queue
    /// is a quarter full. Over the bound the connection is closed (1013): no durable frame is
    /// dropped silently, the client reconnects and resyncs from its cursors.
    pub fn push(self: &Rc<Self>, payload: &Payload, class: Class, bytes_max: usize) -> Pushed {
        if self.closing.get().is_some() {
            return Pushed::Closing;
        }
        if class == Class::Ephemeral && self.queued_bytes.get() > bytes_max / EPHEMERAL_QUEUE_FRACTION {
            self.dropped_ephemeral.set(true);
            return Pushed::Dropped;
        }
        let msg = if self.binary.get() {
            Message::Binary(payload.binary())
        } else {
            // SAFETY: `Payload::text` is the bytes of a `String`, so valid UTF-8.
            Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(payload.text()) })
        };
        self.enqueue(msg, bytes_max)
    }

    /// Queues a control frame (a pong) under the same bound: a client that pings without reading
    /// is a slow consumer like any other.
    fn push_control(self: &Rc<Self>, m: Message, bytes_max: usize) -> Pushed {
        if self.closing.get().is_some() {
            return Pushed::Closing;
        }
        self.enqueue(m, bytes_max)
    }

    fn enqueue(self: &Rc<Self>, msg: Message, bytes_max: usize) -> Pushed {
        let len = msg.len();
        if self.queued_bytes.get() + len > bytes_max {
            tracing::debug!(queued = self.queued_bytes.get(), "slow consumer: closing");
            self.close(1013, "slow consumer: reconnect and sync");
            return Pushed::Overflowed;
        }
        self.queued_bytes.set(self.queued_bytes.get() + len);
        self.queue.borrow_mut().push_back(msg);
        self.wake();
        Pushed::Queued
    }

    /// Asks the connection to close with `code`; if it cannot within the grace period (it is
    /// stuck writing to a client that does not read), its socket is shut down.
    pub fn close(self: &Rc<Self>, code: u16, reason: &'static str) {
        if self.closing.get().is_some() {
            return;
        }
        self.closing.set(Some((code, reason)));
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
        self.wake();
        let me = self.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(close_grace(code)).await;
            if !me.finished.get() {
                // SAFETY: not finished, so the socket still owns `fd`.
                unsafe { libc::shutdown(me.fd, libc::SHUT_RDWR) };
            }
        })
        .detach();
    }

    fn pop(&self) -> Option<Message> {
        let m = self.queue.borrow_mut().pop_front()?;
        self.queued_bytes.set(self.queued_bytes.get() - m.len());
        Some(m)
    }
}

/// Takes over a socket another shard accepted, authenticated and found a valid upgrade.
pub fn adopt(d: &Rc<Driver>, fd: RawFd, upgrade: Upgrade, identity: Identity) {
    // SAFETY: the accepting shard handed us this descriptor (a dup it no longer uses).
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    start(d, stream, upgrade, identity);
}

/// What the accepting shard worked out from the upgrade request: the `101` to send and any
/// bytes the client sent after the request (frames it did not wait to send).
pub struct Upgrade {
    pub answer: Vec<u8>,
    pub early: Vec<u8>,
    /// The connection's place under `connections_max`, held until it ends.
    pub slot: super::accept::Slot,
}

/// Runs a connection on this (its home) shard.
pub fn start(d: &Rc<Driver>, stream: TcpStream, upgrade: Upgrade, identity: Identity) {
    let d = d.clone();
    // This task lives as long as the connection, and its state (the largest of its await points)
    // is memory every connection pays. So the handshake and the close, whose futures are large,
    // run boxed: their state exists only while they run. What stays is `Conn` and two `Rc`s.
    // The arguments travel boxed too: what an `async` block captures stays in its state for good,
    // even after it is moved out (160 bytes a connection, unboxed).
    let setup = Box::new((stream, upgrade, identity));
    glommio::spawn_local(async move {
        // (A block, so that the box is freed here rather than when the task ends.)
        let (stream, Upgrade { answer, mut early, slot }, identity) = {
            let setup = setup;
            *setup
        };
        let Some(stream) = Box::pin(answer_upgrade(stream, answer)).await else { return };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let id = d.next_conn_id();
        let handle = Rc::new(ConnHandle::new(fd));
        d.register(id, handle.clone(), identity);
        let mut conn = Conn::new(&d, id, handle, stream);
        let first = conn.on_bytes(&mut early);
        drop(early);
        serve(conn, first, slot).await;
    })
    .detach();
}

/// Gives a parked connection (`lot.rs`) a task again, on its descriptor.
pub fn resume(d: &Rc<Driver>, id: ConnId, fd: RawFd, slot: super::accept::Slot) {
    let Some(handle) = d.handle(id) else {
        // Not registered: cannot be (a parked connection ends only through a task); still, the
        // descriptor is closed rather than leaked.
        debug_assert!(false, "a parked connection without a handle");
        // SAFETY: the lot owned `fd`.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        return;
    };
    handle.parked.set(false);
    let d = d.clone();
    glommio::spawn_local(async move {
        // SAFETY: the lot handed over the descriptor it held.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        serve(Conn::new(&d, id, handle, stream), None, slot).await;
    })
    .detach();
}

/// The connection's life from here: its turns until it ends (the close, then unregistered) or
/// parks (the socket to the lot, the task ends, the handle stays registered).
async fn serve(mut conn: Conn, first: Option<Exit>, mut slot: super::accept::Slot) {
    // `slot` is given back when the connection ends, however it ends; the lot holds it while
    // the connection is parked.
    let mut first = first;
    let exit = loop {
        let exit = match first.take() {
            Some(exit) => exit,
            None => std::future::poll_fn(|cx| conn.poll_run(cx)).await,
        };
        let Exit::Park = exit else { break exit };
        match conn.park(slot) {
            Ok(()) => return,
            // The lot could not take it: it goes on with a task.
            Err(back) => (conn, slot) = *back,
        }
    };
    let (d, id, handle) = (conn.d.clone(), conn.id, conn.h.clone());
    Box::pin(conn.finish(exit)).await;
    handle.finished.set(true);
    d.unregister(id);
    drop(slot);
}

/// Sends the `101`; `None` if the client is already gone.
async fn answer_upgrade(mut stream: TcpStream, answer: Vec<u8>) -> Option<TcpStream> {
    let _ = stream.set_nodelay(true);
    stream.write_all(&answer).await.ok()?;
    Some(stream)
}

/// Why a connection's task ends.
enum Exit {
    /// The socket failed or the client went away: nothing more to send.
    Gone,
    /// Send a close frame with this code and reason, then end.
    Close(u16, &'static str),
    /// Idle: the socket goes to the shard's lot, the connection stays open.
    Park,
}

/// Reads a connection may do in one turn before letting other tasks run.
const READS_PER_TURN: usize = 4;

/// How long a connection stays off its socket while the shard's outboxes are congested.
const CONGESTED_NAP_MS: u64 = 1;

/// How long, after sending a close frame, the connection waits for the client's close (or EOF)
/// before closing the socket; a closed socket with unread input resets, losing the frame.
const CLOSE_DRAIN_MS: u64 = 1_000;

/// Why `Conn::stream` is always there: only parking takes it, and parking ends the `Conn`.
const STREAM: &str = "a connection's stream is there until it parks";

struct Conn {
    d: Rc<Driver>,
    id: ConnId,
    h: Rc<ConnHandle>,
    /// None only on the way to the lot (`park`).
    stream: Option<TcpStream>,
    reader: FrameReader,
    /// Encoded bytes the socket did not take yet (a client slower than we write); empty, and
    /// unallocated, for nearly every connection.
    unsent: Vec<u8>,
    /// How many bytes at the start of `unsent` finish the frame the socket took part of: what
    /// must still go out before any other frame (a close) can. 0 at a frame boundary.
    unsent_head: usize,
    /// Bytes `reader` held after the last read, as counted in the shard's partial-message total.
    held: usize,
    /// While the shard is congested: the timer after which reading resumes.
    nap: Option<glommio::timer::Timer>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Whatever half-sent message the client left is freed with the reader.
        self.d.partial_held(self.id, &self.h, self.held, 0);
    }
}

impl Conn {
    fn new(d: &Rc<Driver>, id: ConnId, h: Rc<ConnHandle>, stream: TcpStream) -> Conn {
        h.active_ms.set(d.clock_ms());
        d.idle_watch(id, h.active_ms.get());
        Conn {
            d: d.clone(),
            id,
            h,
            stream: Some(stream),
            reader: FrameReader::default(),
            unsent: Vec::new(),
            unsent_head: 0,
            held: 0,
            nap: None,
        }
    }

    /// Whether nothing of the connection lives in its task: nothing queued or half-sent, no
    /// half-read message, no close asked, not napping, and the socket said "no input now".
    fn parkable(&self, read_parked: bool) -> bool {
        read_parked
            && self.unsent.is_empty()
            && self.h.queue.borrow().is_empty()
            && self.h.closing.get().is_none()
            && self.reader.is_idle()
            && self.held == 0
            && self.nap.is_none()
            && !self.h.dropped_ephemeral.get()
    }

    /// Hands the socket to the shard's lot (the task then ends); the connection back if the lot
    /// could not take it.
    fn park(self, slot: super::accept::Slot) -> Result<(), Box<(Conn, super::accept::Slot)>> {
        use std::os::fd::IntoRawFd;
        let (d, id, h) = (self.d.clone(), self.id, self.h.clone());
        // `Conn`'s drop has nothing to give back: a parkable connection holds no partial bytes.
        debug_assert_eq!(self.held, 0);
        let mut me = self;
        let fd = me.stream.take().expect("a connection's stream is taken only here").into_raw_fd();
        drop(me);
        let Some(lot) = d.lot.as_ref() else { unreachable!("park requests come only from a driver with a lot") };
        match lot.park(fd, id, slot) {
            Ok(()) => {
                h.waker.borrow_mut().take();
                h.parked.set(true);
                d.metrics.connections_parked.store(lot.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            // SAFETY: the lot gave the descriptor back untouched.
            Err((fd, slot)) => Err(Box::new((Conn::new(&d, id, h, unsafe { TcpStream::from_raw_fd(fd) }), slot))),
        }
    }

    /// One turn: write what is queued, then read what arrived. Ready when the connection ends
    /// or parks.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        self.h.active_ms.set(self.d.clock_ms());
        // Whether this turn moved anything (read a frame, wrote one): a connection asked to park
        // that turns out busy in the same turn (its client spoke just then; a send whose ack is
        // still to come) keeps its task.
        let mut busy = false;
        loop {
            if let Some((code, reason)) = self.h.closing.get() {
                return Poll::Ready(Exit::Close(code, reason));
            }
            busy |= !self.unsent.is_empty() || !self.h.queue.borrow().is_empty();
            let write_blocked = match self.poll_write_queue(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(Exit::Gone),
                Poll::Ready(Ok(())) => {
                    if self.h.dropped_ephemeral.replace(false) {
                        // Presence frames were dropped while the client lagged: it gets the
                        // current state of what it watches now that it caught up.
                        self.d.dispatch(Event::Resubscribe { conn: self.id });
                    }
                    false
                }
                // The socket is full; glommio wakes us when it drains.
                Poll::Pending => true,
            };
            let mut read_parked = false;
            if self.d.congested() {
                // Keep writing, stop reading: the client's TCP window carries the backpressure.
                let nap = self.nap.get_or_insert_with(|| glommio::timer::Timer::new(Duration::from_millis(CONGESTED_NAP_MS)));
                if Pin::new(nap).poll(cx).is_ready() {
                    self.nap = None;
                    continue;
                }
            } else {
                self.nap = None;
                // Whether the socket said "nothing more now" (and so will wake us when more
                // comes). If every read of the turn returned data, nothing is registered to wake
                // this task for the rest: it must ask to be polled again itself.
                for _ in 0..READS_PER_TURN {
                    match self.poll_read_once(cx) {
                        Poll::Ready(Some(exit)) => return Poll::Ready(exit),
                        Poll::Ready(None) => busy = true,
                        Poll::Pending => {
                            read_parked = true;
                            break;
                        }
                    }
                }
                if !read_parked {
                    // Yield (other connections run first), then read on: a client sending
                    // frames that need no answer must not stall until something is pushed.
                    cx.waker().wake_by_ref();
                }
            }
            // Wake for outbound frames and close requests too. Go round again only if frames
            // arrived while reading and the socket can take them.
            *self.h.waker.borrow_mut() = Some(cx.waker().clone());
            if self.h.closing.get().is_none() && (write_blocked || self.h.queue.borrow().is_empty()) {
                if self.h.park_requested.replace(false) {
                    if !busy && !write_blocked && self.parkable(read_parked) {
                        return Poll::Ready(Exit::Park);
                    }
                    // Busy after all: watched again, asked again once idle.
                    self.d.idle_watch(self.id, self.h.active_ms.get());
                }
                return Poll::Pending;
            }
        }
    }

    /// Reads once into the shard's buffer and handles the frames; `Some` when the connection ends.
    fn poll_read_once(&mut self, cx: &mut Context<'_>) -> Poll<Option<Exit>> {
        let d = self.d.clone();
        let mut buf = d.read_buf.borrow_mut();
        match Pin::new(self.stream.as_mut().expect(STREAM)).poll_read(cx, &mut buf[..]) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Some(Exit::Gone)),
            Poll::Ready(Ok(n)) => Poll::Ready(self.on_bytes(&mut buf[..n])),
        }
    }

    /// Parses bytes from the client and dispatches its messages.
    fn on_bytes(&mut self, bytes: &mut [u8]) -> Option<Exit> {
        if bytes.is_empty() {
            return None;
        }
        let (d, id, h) = (&self.d, self.id, &self.h);
        let mut closed_with = None;
        let outcome = self.reader.feed(bytes, d.cfg.ws_message_bytes_max(), |msg| {
            if let Msg::Close(code) = msg {
                closed_with = Some(code);
            }
            inbound(d, id, h, msg)
        });
        let held = self.reader.held_bytes();
        let over = d.partial_held(id, h, self.held, held);
        self.held = held;
        if over && outcome == Ok(Fed::More) {
            // This connection's half-sent message took the shard past its bound for them: it
            // goes, rather than the memory (or every other connection's partial message).
            ShardMetrics::add(&d.metrics.closes_incomplete, 1);
            return Some(Exit::Close(1013, "server busy: too many unfinished messages, retry"));
        }
        match outcome {
            Ok(Fed::More) => None,
            // Answer a client's close with its own code (RFC 6455 §5.5.1).
            Ok(Fed::Closed) => Some(match closed_with.flatten() {
                Some(code) => Exit::Close(code, ""),
                None => Exit::Close(1000, ""),
            }),
            Err(WsError { code, reason }) => {
                tracing::debug!(code, reason, "closing on protocol error");
                ShardMetrics::add(&d.metrics.closes_protocol, 1);
                Some(Exit::Close(code, reason))
            }
        }
    }

    /// Writes `unsent`, then the queue in batches through the shard's write buffer. Ready(Ok)
    /// once everything is written.
    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.unsent.is_empty() {
                let n = std::task::ready!(poll_write_some(self.stream.as_mut().expect(STREAM), cx, &self.unsent))?;
                self.unsent.drain(..n);
                self.unsent_head = self.unsent_head.saturating_sub(n);
                if self.unsent.is_empty() {
                    // Caught up: give the memory back.
                    self.unsent = Vec::new();
                }
                continue;
            }
            let d = self.d.clone();
            let mut batch = d.write_buf.borrow_mut();
            let mut ends = d.write_ends.borrow_mut();
            batch.clear();
            ends.clear();
            while batch.len() < d.cfg.write_batch_bytes {
                let Some(m) = self.h.pop() else { break };
                encode_message(&m, &mut batch);
                ends.push(batch.len());
            }
            if batch.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let mut off = 0;
            while off < batch.len() {
                match poll_write_some(self.stream.as_mut().expect(STREAM), cx, &batch[off..]) {
                    Poll::Ready(Ok(n)) => off += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.unsent.extend_from_slice(&batch[off..]);
                        // The first frame not wholly written ends here.
                        let end = ends.iter().find(|&&e| e > off).copied().unwrap_or(batch.len());
                        self.unsent_head = if off == 0 || ends.contains(&off) { 0 } else { end - off };
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Sends the close frame (after anything half-sent), half-closes, and waits briefly for the
    /// client to finish so that the frame is not lost to a reset.
    async fn finish(mut self, exit: Exit) {
        // Nothing more is read into messages: a half-sent one is freed now, not once the
        // client has taken the close.
        self.reader = FrameReader::default();
        self.d.partial_held(self.id, &self.h, self.held, 0);
        self.held = 0;
        let Exit::Close(code, reason) = exit else { return };
        let mut out = std::mem::take(&mut self.unsent);
        if code == 1013 {
            // A slow consumer: its backlog is dropped (it resyncs), so the close frame waits
            // only behind the rest of the frame the socket took part of.
            out.truncate(self.unsent_head);
        } else {
            // Answers queued before the close (to frames that came in the same read as the
            // client's close or a violation) go out first, as RFC 6455 allows.
            while let Some(m) = self.h.pop() {
                encode_message(&m, &mut out);
            }
        }
        ws::encode_close(code, reason, &mut out);
        // Up to the grace a close request gives (`ConnHandle::close`): a client that reads
        // slowly still gets its close frame.
        let grace = close_grace(code);
        let sent = glommio::timer::timeout(grace, async { Ok(self.stream.as_mut().expect(STREAM).write_all(&out).await) }).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        let grace = Duration::from_millis(CLOSE_DRAIN_MS);
        let _ = self.stream.as_mut().expect(STREAM).shutdown(std::net::Shutdown::Write).await;
        let d = self.d.clone();
        let drain = std::future::poll_fn(|cx| loop {
            let mut buf = d.read_buf.borrow_mut();
            match Pin::new(self.stream.as_mut().expect(STREAM)).poll_read(cx, &mut buf[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        });
        let _ = glommio::timer::timeout(grace, drain).await;
    }
}

fn poll_write_some(stream: &mut TcpStream, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
    match Pin::new(stream).poll_write(cx, bytes) {
        Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        other => other,
    }
}

fn encode_message(m: &Message, out: &mut Vec<u8>) {
    let (opcode, bytes): (OpCode, &[u8]) = match m {
        Message::Text(t) => (OpCode::Data(Data::Text), t.as_bytes()),
        Message::Binary(b) => (OpCode::Data(Data::Binary), b),
        Message::Pong(p) => (OpCode::Control(Control::Pong), p),
        Message::Ping(p) => (OpCode::Control(Control::Ping), p),
        Message::Close(_) | Message::Frame(_) => unreachable!("closes are sent by finish; raw frames are never queued"),
    };
    ws::encode(opcode, bytes, out);
}

fn inbound(d: &Rc<Driver>, conn: ConnId, h: &Rc<ConnHandle>, msg: Msg<'_>) {
    ShardMetrics::add(&d.metrics.frames_in, 1);
    let decoded = match msg {
        Msg::Text(t) => {
            h.binary.set(false);
            decode_text(t, &d.limits)
        }
        Msg::Binary(b) => {
            h.binary.set(true);
            decode_binary(b, &d.limits)
        }
        Msg::Ping(p) => {
            if h.push_control(Message::Pong(p.to_vec().into()), d.cfg.outbound_queue_bytes_max) == Pushed::Overflowed {
                ShardMetrics::add(&d.metrics.closes_slow_consumer, 1);
            }
            d.dispatch(Event::Activity { conn });
            return;
        }
        Msg::Pong | Msg::Close(_) => {
            d.dispatch(Event::Activity { conn });
            return;
        }
    };
    match decoded {
        Ok(frame) => d.dispatch(Event::Frame { conn, frame }),
        Err(e) => {
            d.dispatch(Event::Activity { conn });
            h.push(&ServerFrame::from(e).into(), Class::Durable, d.cfg.outbound_queue_bytes_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: usize) -> Payload {
        ServerFrame::Typing { conv: "g:1".into(), user: "u".repeat(bytes) }.into()
    }

    #[test]
    fn ephemeral_frames_are_dropped_first_when_the_queue_fills() {
        let h = Rc::new(ConnHandle::new(-1));
        let max = 10_000;
        assert_eq!(h.push(&frame(100), Class::Ephemeral, max), Pushed::Queued);
        assert_eq!(h.queue.borrow().len(), 1, "an empty queue takes ephemeral frames");
        h.push(&frame(3_000), Class::Durable, max);
        let before = h.queued_bytes();
        assert!(before > max / EPHEMERAL_QUEUE_FRACTION);
        assert_eq!(h.push(&frame(100), Class::Ephemeral, max), Pushed::Dropped);
        assert_eq!(h.queued_bytes(), before, "over a quarter full: typing and presence are dropped");
        assert!(h.dropped_ephemeral.get(), "and the drop is remembered so presence is re-sent");
        h.push(&frame(3_000), Class::Durable, max);
        assert_eq!(h.queue.borrow().len(), 3, "durable frames still queue up to the bound");
        while h.pop().is_some() {}
        assert_eq!(h.queued_bytes(), 0);
    }

    #[test]
    fn pongs_count_against_the_bound_too() {
        // Inside an executor: closing arms a timer.
        glommio::LocalExecutor::default().run(async {
            let h = Rc::new(ConnHandle::new(-1));
            let pong = || Message::Pong(vec![0; 100].into());
            let max = 1_000;
            for _ in 0..10 {
                assert_eq!(h.push_control(pong(), max), Pushed::Queued);
            }
            assert_eq!(h.push_control(pong(), max), Pushed::Overflowed, "a ping flood from a client that does not read");
            assert_eq!(h.closing.get().map(|c| c.0), Some(1013));
            assert_eq!(h.push_control(pong(), max), Pushed::Closing);
        });
    }
}

#[cfg(test)]
mod size {
    /// What every connection, parked or not, pays for its handle (ARCHITECTURE.md's budget).
    #[test]
    fn a_connection_handle_stays_within_its_budget() {
        let bytes = std::mem::size_of::<super::ConnHandle>();
        eprintln!("ConnHandle: {bytes} bytes");
        assert!(bytes <= 120, "ConnHandle grew to {bytes} bytes: recount the memory budget");
    }
}
