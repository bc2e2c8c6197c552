//! Accepting: every shard accepts on its own SO_REUSEPORT listener, reads the upgrade request
//! head, authenticates it, builds the `101` answer, and hands the socket to the user's home shard.

use super::conn::Upgrade;
use super::driver::{Driver, Wire};
use futures::future::{select, Either};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use shardchat_auth::Identity;
use shardchat_bridge::metrics::ShardMetrics;
use shardchat_shard::home_shard;
use shardchat_shard::rate::{Gcra, Rate};
use shardchat_wire::http::{response, RequestHead, HEAD_BYTES_MAX};
use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Source addresses whose connection rate this shard tracks, at most; beyond it the idle ones
/// (bucket full again) are forgotten, which costs them nothing.
const RATE_TRACKED_IPS_MAX: usize = 100_000;

/// Per source address: new connections a second this shard accepts (its share of the host's
/// `--connect-rate-per-ip-per-s`: SO_REUSEPORT spreads a client's connections over the shards).
struct PerIp {
    rate: Rate,
    seen: HashMap<IpAddr, Gcra>,
    started: Instant,
}

impl PerIp {
    fn new(per_sec_host: u32, shards: usize) -> PerIp {
        let share = if per_sec_host == 0 { 0 } else { (per_sec_host / shards.max(1) as u32).max(1) };
        PerIp { rate: Rate { per_sec: share, burst: share }, seen: HashMap::new(), started: Instant::now() }
    }

    fn allow(&mut self, ip: IpAddr) -> bool {
        if self.rate.per_sec == 0 {
            return true;
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        if self.seen.len() >= RATE_TRACKED_IPS_MAX {
            // A bucket that would allow a full burst now is indistinguishable from a new one.
            self.seen.retain(|_, g| !g.is_full(now_ms));
        }
        self.seen.entry(ip).or_default().allow(now_ms, self.rate)
    }
}

/// The engine's WebSocket connections, handshakes included, against `connections_max`: shared
/// by every shard (SO_REUSEPORT spreads accepts, and a connection moves to its home shard), so
/// the bound holds for the process whichever shard accepts. Touched once per accept and once
/// per close, never per frame.
pub struct Slots {
    used: AtomicUsize,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots { used: AtomicUsize::new(0), max }
    }

    /// A slot for one more connection, or None at the bound.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1)).ok().map(|_| Slot(self.clone()))
    }
}

/// One connection's place under the bound; it travels with the socket to the home shard and is
/// given back when the connection ends, however it ends.
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.0.used.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a connection slot was given back twice");
    }
}

/// A handshake younger than this is never closed to make room: it may not have had a turn to
/// read its request yet (a burst of accepts runs ahead of the handshake tasks), and a client
/// that speaks sends its request head at once. At the bound with none older, the new connection
/// is refused instead.
const HANDSHAKE_EVICTABLE_AFTER_MS: u64 = 1_000;

/// A connection of this shard in its handshake (no request head read and authenticated yet).
struct Pending {
    fd: RawFd,
    since: Instant,
    /// Its slot, until it upgrades (then the slot travels with it) or ends; None once taken.
    slot: RefCell<Option<Slot>>,
}

/// This shard's handshakes in progress, oldest first, at most `max`. At the bound the oldest is
/// evicted to make room, if it has had [`HANDSHAKE_EVICTABLE_AFTER_MS`]: a client that upgrades
/// does so in milliseconds, so under a flood of connections that never speak the ones evicted are
/// the flood's, and clients that do speak still get in (instead of a refusal for as long as the
/// flood lasts).
struct Handshakes {
    queue: VecDeque<Rc<Pending>>,
    /// Entries of `queue` still holding their slot.
    live: usize,
    max: usize,
}

impl Handshakes {
    /// Registers a new handshake, evicting the oldest if this shard holds `max`; returns it and
    /// whether one was evicted, or None (the slot given back) when this shard holds `max` and
    /// none is old enough to give way.
    fn admit(&mut self, fd: RawFd, slot: Slot, now: Instant) -> Option<(Rc<Pending>, bool)> {
        // Entries that finished are dropped from the front as they come up, and all at once when
        // finished ones pile up behind a slow one (so the queue stays within twice the bound).
        while self.queue.front().is_some_and(|p| p.slot.borrow().is_none()) {
            self.queue.pop_front();
        }
        if self.queue.len() > 2 * self.max + 16 {
            self.queue.retain(|p| p.slot.borrow().is_some());
        }
        let mut evicted = false;
        if self.live >= self.max {
            // The front is the oldest live one (finished ones were dropped from the front).
            let oldest = self.queue.front().expect("live handshakes are queued");
            if now.duration_since(oldest.since) < Duration::from_millis(HANDSHAKE_EVICTABLE_AFTER_MS) {
                return None;
            }
            let old = self.queue.pop_front().expect("checked");
            drop(old.slot.borrow_mut().take());
            self.live -= 1;
            // Its task sees the socket end (a read of 0) and returns.
            // SAFETY: the slot was still held, so the handshake has not ended and its stream
            // still owns `fd`.
            unsafe { libc::shutdown(old.fd, libc::SHUT_RDWR) };
            evicted = true;
        }
        let p = Rc::new(Pending { fd, since: now, slot: RefCell::new(Some(slot)) });
        self.queue.push_back(p.clone());
        self.live += 1;
        debug_assert!(self.live <= self.max, "handshakes over their bound");
        Some((p, evicted))
    }

    /// The handshake ended (upgraded or refused): its slot, unless it was evicted.
    fn finish(&mut self, p: &Pending) -> Option<Slot> {
        let slot = p.slot.borrow_mut().take();
        if slot.is_some() {
            self.live -= 1;
        }
        slot
    }
}

/// What a client refused at the bound gets, written without waiting (if its socket cannot take
/// even this, it gets the close alone).
const FULL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 34\r\nRetry-After: 5\r\nConnection: close\r\n\r\nserver full: too many connections\n";

/// A warning repeated at most once per this interval, with how many were not logged between.
const WARN_EVERY_MS: u64 = 10_000;

/// A log line that a flood cannot turn into a flood of lines.
struct Quiet {
    last: Option<Instant>,
    suppressed: u64,
}

impl Quiet {
    fn new() -> Quiet {
        Quiet { last: None, suppressed: 0 }
    }

    /// Whether to log now; if so, also how many were suppressed since the last line.
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(WARN_EVERY_MS)) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

pub async fn accept_loop(d: Rc<Driver>, listener: TcpListener, slots: Arc<Slots>, handshakes_max: usize) {
    let mut per_ip = PerIp::new(d.cfg.connect_rate_per_ip_per_s, d.cfg.shards);
    let (mut full_log, mut handshakes_log, mut error_log) = (Quiet::new(), Quiet::new(), Quiet::new());
    let handshakes = Rc::new(RefCell::new(Handshakes { queue: VecDeque::new(), live: 0, max: handshakes_max.max(1) }));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let Some(slot) = slots.take() else {
                    refuse_full(&d, stream);
                    if let Some(suppressed) = full_log.due() {
                        tracing::warn!(connections_max = slots.max, suppressed, "connection bound reached: refusing new connections");
                    }
                    continue;
                };
                let mut stream = stream;
                let ip = stream.peer_addr().map(|a| a.ip());
                if ip.is_ok_and(|ip| !per_ip.allow(ip)) {
                    ShardMetrics::add(&d.metrics.connections_refused_rate, 1);
                    glommio::spawn_local(async move {
                        let _slot = slot;
                        let _ = stream.write_all(&response(429, "Too Many Requests", "too many new connections from this address")).await;
                    })
                    .detach();
                    continue;
                }
                let admitted = handshakes.borrow_mut().admit(stream.as_raw_fd(), slot, Instant::now());
                let Some((pending, evicted)) = admitted else {
                    refuse_full(&d, stream);
                    if let Some(suppressed) = handshakes_log.due() {
                        tracing::warn!(
                            handshakes_max = handshakes.borrow().max,
                            suppressed,
                            "handshake bound reached: refusing new connections"
                        );
                    }
                    continue;
                };
                if evicted {
                    ShardMetrics::add(&d.metrics.handshakes_evicted, 1);
                }
                let (d, handshakes) = (d.clone(), handshakes.clone());
                glommio::spawn_local(async move {
                    let upgraded = handshake(&d, stream).await;
                    let slot = handshakes.borrow_mut().finish(&pending);
                    // Evicted meanwhile: the slot is gone with the socket; nothing goes on.
                    if let (Some(h), Some(slot)) = (upgraded, slot) {
                        hand_over(&d, h, slot).await;
                    }
                })
                .detach();
            }
            Err(e) => {
                // Out of descriptors or memory (the bound keeps this rare: something else took
                // them): back off instead of spinning on the error, and do not flood the log.
                if let Some(suppressed) = error_log.due() {
                    tracing::warn!(error = %e, suppressed, "accept failed");
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Refuses a connection at a bound, before reading anything and without a task or a timer, so a
/// flood costs an accept and a close each and never a descriptor held.
fn refuse_full(d: &Driver, stream: TcpStream) {
    // Counted before the client can see the refusal: a client that reads its 503 and then asks
    // /metrics finds it counted, even when this thread is preempted right after the send.
    ShardMetrics::add(&d.metrics.connections_refused_full, 1);
    // SAFETY: a send on a socket we own; MSG_DONTWAIT never blocks the shard.
    unsafe { libc::send(stream.as_raw_fd(), FULL_RESPONSE.as_ptr().cast(), FULL_RESPONSE.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    drop(stream);
}

/// Reads until the request head is complete. `Err` carries the response to send.
async fn read_head(stream: &mut TcpStream) -> Result<(RequestHead, Vec<u8>), Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        match RequestHead::parse(&buf) {
            Ok(Some(head)) => return Ok((head, buf)),
            Ok(None) => {}
            Err(e) => {
                let (status, reason, body) = e.answer();
                return Err(Some(response(status, reason, body)));
            }
        }
        // `parse` refuses a head past HEAD_BYTES_MAX, so the buffer never grows beyond it.
        debug_assert!(buf.len() <= HEAD_BYTES_MAX + chunk.len());
    }
}

/// Reads and checks the upgrade request; the socket, its upgrade and the client's identity when
/// it is a valid, authenticated WebSocket upgrade (anything else was answered and is done).
async fn handshake(d: &Rc<Driver>, mut stream: TcpStream) -> Option<Handshaken> {
    let timeout = glommio::timer::sleep(Duration::from_millis(d.cfg.handshake_timeout_ms));
    let (outcome, timed_out) = match select(Box::pin(read_head(&mut stream)), Box::pin(timeout)).await {
        Either::Left((r, _)) => (r, false),
        Either::Right(_) => (Err(Some(response(408, "Request Timeout", "handshake timeout"))), true),
    };
    let refused = || ShardMetrics::add(&d.metrics.handshakes_refused, 1);
    let (head, bytes) = match outcome {
        Ok(x) => x,
        Err(resp) => {
            if let Some(resp) = resp {
                match timed_out {
                    true => ShardMetrics::add(&d.metrics.handshake_timeouts, 1),
                    // 400 or 431 from the head's parser.
                    false => refused(),
                }
                let _ = stream.write_all(&resp).await;
            }
            return None;
        }
    };
    if head.path != "/ws" {
        refused();
        let _ = stream.write_all(&response(404, "Not Found", "the WebSocket endpoint is /ws")).await;
        return None;
    }
    let identity = match d.auth.authenticate(&head) {
        Ok(id) => id,
        Err(why) => {
            refused();
            let _ = stream.write_all(&response(401, "Unauthorized", why)).await;
            return None;
        }
    };
    let answer = match head.upgrade_response() {
        Ok(answer) => answer,
        Err(why) => {
            tracing::debug!(%why, "not a WebSocket upgrade");
            refused();
            let _ = stream.write_all(&response(400, "Bad Request", &why)).await;
            return None;
        }
    };
    Some(Handshaken { stream, answer, early: bytes[head.len..].to_vec(), identity })
}

/// What a handshake that succeeded leaves: the socket, the `101` to send, the bytes that came
/// after the request head, and who the client is.
struct Handshaken {
    stream: TcpStream,
    answer: Vec<u8>,
    early: Vec<u8>,
    identity: Identity,
}

/// Runs the connection on its home shard: here, or handed over to the shard that is.
async fn hand_over(d: &Rc<Driver>, h: Handshaken, slot: Slot) {
    let Handshaken { stream, answer, early, identity } = h;
    let upgrade = Upgrade { answer, early, slot };
    let home = home_shard(&identity.user, d.cfg.shards);
    if home == d.id {
        super::conn::start(d, stream, upgrade, identity);
        return;
    }
    // Hand the socket over: a duplicate descriptor travels, this one closes with the stream.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    drop(stream);
    if fd < 0 {
        tracing::warn!("dup failed: out of descriptors");
        return;
    }
    if d.senders.send_to(home, Wire::Adopt { fd, upgrade, identity }).await.is_err() {
        // The home shard is gone (shutting down): the descriptor was not taken over.
        // SAFETY: `fd` is our dup; nobody else closes it.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_handshake_bound_the_oldest_handshake_makes_room_and_slots_come_back() {
        let slots = Arc::new(Slots::new(10));
        let mut hs = Handshakes { queue: VecDeque::new(), live: 0, max: 2 };
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(HANDSHAKE_EVICTABLE_AFTER_MS);
        // (fd -1: the eviction's shutdown has no socket to end here.)
        let (a, evicted) = hs.admit(-1, slots.take().unwrap(), t0).unwrap();
        assert!(!evicted);
        let (b, _) = hs.admit(-1, slots.take().unwrap(), t0).unwrap();
        // At the bound, with none old enough to give way: refused, its slot given back.
        assert!(hs.admit(-1, slots.take().unwrap(), t0).is_none());
        assert_eq!(slots.used.load(Ordering::Acquire), 2);
        let (c, evicted) = hs.admit(-1, slots.take().unwrap(), later).unwrap();
        assert!(evicted, "a third handshake on a shard that holds two evicts the oldest once it had its time");
        assert_eq!((hs.live, slots.used.load(Ordering::Acquire)), (2, 2), "the evicted one's slot came back");
        assert!(hs.finish(&a).is_none(), "the oldest was the one evicted: nothing goes on");
        let slot = hs.finish(&b).expect("b still had its slot");
        assert_eq!(hs.live, 1);
        drop(slot);
        drop(hs.finish(&c));
        assert_eq!((hs.live, slots.used.load(Ordering::Acquire)), (0, 0));
        // Finished entries behind a slow one do not pile up.
        let _slow = hs.admit(-1, slots.take().unwrap(), later);
        for _ in 0..100 {
            let (p, _) = hs.admit(-1, slots.take().unwrap(), later).unwrap();
            drop(hs.finish(&p));
        }
        assert!(hs.queue.len() <= 2 * hs.max + 17, "{} entries kept", hs.queue.len());
    }

    #[test]
    fn the_connection_bound_holds_across_takes() {
        let slots = Arc::new(Slots::new(2));
        let (a, b) = (slots.take().unwrap(), slots.take().unwrap());
        assert!(slots.take().is_none());
        drop(a);
        assert!(slots.take().is_some());
        drop(b);
    }
}
