//! One WebSocket connection on its home shard: a single task that reads frames and writes the
//! outbound queue in batches (`feed` every queued frame, one `flush`).

use super::driver::Driver;
use super::prefixed::Prefixed;
use crate::auth::Identity;
use crate::metrics::ShardMetrics;
use async_tungstenite::WebSocketStream;
use futures::future::{select, Either};
use futures::{SinkExt, StreamExt};
use glommio::net::TcpStream;
use shardchat_codec::{decode_binary, decode_text, ServerFrame};
use shardchat_shard::{Class, Event, Payload};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

/// Ephemeral frames (typing, presence) are dropped once a connection's queue holds more than
/// this fraction of its bound: they are the first to go when a client falls behind.
const EPHEMERAL_QUEUE_FRACTION: usize = 4;

/// How long a connection told to close may take to do so before its socket is shut down under
/// it (a client that stopped reading cannot take a close frame).
const CLOSE_GRACE_MS: u64 = 2_000;

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
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    pub fn is_finished(&self) -> bool {
        self.finished.get()
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
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
            glommio::timer::sleep(Duration::from_millis(CLOSE_GRACE_MS)).await;
            if !me.finished.get() {
                // SAFETY: not finished, so the socket still owns `fd`.
                unsafe { libc::shutdown(me.fd, libc::SHUT_RDWR) };
            }
        })
        .detach();
    }

    /// Ready when there is something to write or a close to send.
    fn outbound(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if !self.queue.borrow().is_empty() || self.closing.get().is_some() {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    fn pop(&self) -> Option<Message> {
        let m = self.queue.borrow_mut().pop_front()?;
        self.queued_bytes.set(self.queued_bytes.get() - m.len());
        Some(m)
    }
}

/// Takes over a socket another shard accepted and authenticated.
pub fn adopt(d: &Rc<Driver>, fd: RawFd, head: Vec<u8>, identity: Identity) {
    // SAFETY: the accepting shard handed us this descriptor (a dup it no longer uses).
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    start(d, stream, head, identity);
}

/// Runs a connection on this (its home) shard.
pub fn start(d: &Rc<Driver>, stream: TcpStream, head: Vec<u8>, identity: Identity) {
    let d = d.clone();
    glommio::spawn_local(async move {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let _ = stream.set_nodelay(true);
        let io = Prefixed::new(head, stream);
        // Authentication already happened on the accepting shard; the callback accepts as is
        // (its error type is tungstenite's, a large response we never build).
        #[allow(clippy::result_large_err)]
        let accept = |_: &_, resp| Ok(resp);
        let ws = match async_tungstenite::accept_hdr_async_with_config(io, accept, Some(d.ws_config)).await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let conn = d.next_conn_id();
        let handle = Rc::new(ConnHandle::new(fd));
        d.register(conn, handle.clone(), identity);
        run(&d, conn, &handle, ws).await;
        handle.finished.set(true);
        d.unregister(conn);
    })
    .detach();
}

type Ws = WebSocketStream<Prefixed<TcpStream>>;

async fn run(d: &Rc<Driver>, conn: u64, h: &Rc<ConnHandle>, mut ws: Ws) {
    loop {
        if let Some((code, reason)) = h.closing.get() {
            let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static(reason) };
            let _ = ws.close(Some(frame)).await;
            return;
        }
        if !h.queue.borrow().is_empty() {
            // Write batching: every queued frame into tungstenite's buffer, then one flush.
            while let Some(m) = h.pop() {
                if ws.feed(m).await.is_err() {
                    return;
                }
            }
            if ws.flush().await.is_err() {
                return;
            }
            if h.queue.borrow().is_empty() && h.dropped_ephemeral.replace(false) {
                d.dispatch(Event::Resubscribe { conn });
            }
            continue;
        }
        if d.congested() {
            // Keep writing, stop reading: the client's TCP window carries the backpressure.
            let _ = select(Box::pin(glommio::timer::sleep(Duration::from_millis(1))), Box::pin(h.outbound())).await;
            continue;
        }
        let next = match select(ws.next(), Box::pin(h.outbound())).await {
            Either::Left((next, _)) => next,
            Either::Right(_) => continue,
        };
        match next {
            None => return,
            Some(Ok(msg)) => inbound(d, conn, h, msg),
            Some(Err(e)) => {
                // Protocol violations close with the RFC's codes; I/O errors just end.
                let code = match e {
                    tungstenite::Error::Capacity(_) => CloseCode::Size,
                    tungstenite::Error::Protocol(_) => CloseCode::Protocol,
                    tungstenite::Error::Utf8(_) => CloseCode::Invalid,
                    _ => return,
                };
                tracing::debug!(error = %e, "closing on protocol error");
                let _ = ws.close(Some(CloseFrame { code, reason: Utf8Bytes::from_static("protocol error") })).await;
                return;
            }
        }
    }
}

fn inbound(d: &Rc<Driver>, conn: u64, h: &Rc<ConnHandle>, msg: Message) {
    ShardMetrics::add(&d.metrics.frames_in, 1);
    let decoded = match &msg {
        Message::Text(t) => {
            h.binary.set(false);
            decode_text(t.as_str(), &d.limits)
        }
        Message::Binary(b) => {
            h.binary.set(true);
            decode_binary(b, &d.limits)
        }
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
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
}
