//! The bridge between the control plane (tokio: REST, later polling and push) and the shards.
//!
//! It is one more glommio executor, unpinned, joined to the shard mesh as peer `shards` (after
//! every shard). To the shards it looks like a home shard whose "connections" are REST requests:
//! it sends them ops with `reply_to = (bridge, request)`, and their answers come back as ordinary
//! `Reply`/`Deliver` messages. The control plane hands it requests through a crossbeam channel
//! and wakes it through a socket pair (a byte per wake-up, coalesced by a flag): no polling.

use super::driver::Wire;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
pub use shardchat_bridge::*;
use shardchat_codec::ServerFrame;
use shardchat_shard::ops::{ConnId, ConnRef, GroupOp, Op, SendOp, Target};
use shardchat_shard::snowflake::Snowflake;
use shardchat_shard::{home_shard, owner_shard, PeerMsg};
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
                if let Some((_, buf)) = self.sessions.remove(&remote.conn.0) {
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

    fn complete(&mut self, ConnId(conn): ConnId, payload: &shardchat_shard::Payload) {
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
                Ok(Input::Request(r)) => *r,
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
                ConnRef { node, shard: me, conn: ConnId(c) }
            };
            let now = shardchat_bridge::clock::unix_ms();
            let user = req.user;
            let msgs: Vec<(usize, PeerMsg)> = match req.op {
                BridgeOp::Send { conv, cmid, body, kind, target, reply_to: answers, media } => {
                    let reply_to = conn();
                    let op =
                        SendOp::new(reply_to, user, cmid, Target::Conv(conv.clone()), body, kind).refers(target, answers).with_media(media);
                    vec![(owner_shard(&conv, shards), PeerMsg::Op(Op::Send(op)))]
                }
                BridgeOp::Group { conv, change } => {
                    let conv = conv.unwrap_or_else(|| format!("g:{}", ids.next(now)));
                    let reply_to = conn();
                    let op = GroupOp::new(reply_to, user, conv.clone(), change, None);
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
                    out.push((home, PeerMsg::Attach { user, device, remote: ConnRef { node, shard: me, conn: ConnId(conn) } }));
                    Vec::new()
                }
                BridgeOp::PollFrame { conn, frame } => {
                    if let Some((home, _)) = st.sessions.get(&conn) {
                        out.push((*home, PeerMsg::RemoteFrame { remote: ConnRef { node, shard: me, conn: ConnId(conn) }, frame }));
                    }
                    Vec::new()
                }
                BridgeOp::PollTouch { conn } => {
                    if let Some((home, _)) = st.sessions.get(&conn) {
                        out.push((*home, PeerMsg::RemoteTouch { remote: ConnRef { node, shard: me, conn: ConnId(conn) } }));
                    }
                    Vec::new()
                }
                BridgeOp::Detach { conn } => {
                    if let Some((home, buf)) = st.sessions.remove(&conn) {
                        buf.end("session closed");
                        out.push((home, PeerMsg::Detach { remote: ConnRef { node, shard: me, conn: ConnId(conn) } }));
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
