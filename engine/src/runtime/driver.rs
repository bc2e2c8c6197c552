//! The driver of one shard: feeds events into the [`Shard`] state machine and carries out the
//! actions it returns: writes to connections, batches to other shards, jobs on the blocking pool.

use super::conn::{ConnHandle, Pushed, Upgrade};
use glommio::channels::channel_mesh::{Receivers, Senders};
use shardchat_auth::{Authenticator, Identity};
use shardchat_bridge::metrics::ShardMetrics;
use shardchat_cluster::Cluster;
use shardchat_codec::Limits;
use shardchat_config::Config;
use shardchat_shard::ops::ConnId;
use shardchat_shard::{run_commit, run_read};
use shardchat_shard::{Action, ConnMap, Event, Now, PeerMsg, Shard};
use shardchat_storage::MessageStore;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Messages waiting in one shard's outboxes beyond which its connections stop reading client
/// frames until the flusher catches up: backpressure reaches the clients through TCP instead of
/// the outboxes growing while a peer shard's channel is full.
const OUTBOX_MESSAGES_MAX: usize = 64 * 1024;

/// A commit slower than this is logged: it delays every ack and message of the shard's batch.
const SLOW_COMMIT: Duration = Duration::from_millis(50);

/// What crosses between shard threads: the only type that does.
pub enum Wire {
    /// A batch of shard messages, in the order the sender produced them.
    Batch(Vec<PeerMsg>),
    /// A socket whose upgrade request was read, authenticated and validated on another shard:
    /// this shard is the user's home and takes it over.
    Adopt { fd: RawFd, upgrade: Upgrade, identity: Identity },
}

/// A one-slot wake-up: `ring` from anywhere on this thread, `wait` in one task.
#[derive(Default)]
pub struct Bell {
    rung: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Bell {
    pub fn ring(&self) {
        self.rung.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if self.rung.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

pub struct Driver {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub auth: Authenticator,
    pub limits: Limits,
    /// The shard's one read buffer: every connection reads into it on readiness and parses
    /// there, so idle connections hold no buffer. Borrowed only within a synchronous poll.
    pub read_buf: RefCell<Vec<u8>>,
    /// Where queued frames are encoded before one write; borrowed like `read_buf`.
    pub write_buf: RefCell<Vec<u8>>,
    /// Where each frame in `write_buf` ends (so a half-written batch knows its frame bounds).
    pub write_ends: RefCell<Vec<usize>>,
    /// Connections holding part of a message (a frame split across reads, or a fragmented
    /// message): since when (ms on this shard's clock), to close those that take too long.
    partials: RefCell<ConnMap<(u64, Rc<ConnHandle>)>>,
    /// Bytes the connections' readers hold for partial messages, all together; bounded by
    /// `partial_bytes_per_shard_max`.
    partial_bytes: Cell<usize>,
    shard: RefCell<Shard>,
    conns: RefCell<ConnMap<Rc<ConnHandle>>>,
    next_conn: Cell<u64>,
    store: Arc<dyn MessageStore>,
    /// Cluster mode's link to Redis (the directory of which node holds whom).
    cluster: Option<Arc<Cluster>>,
    pub senders: Senders<Wire>,
    /// Messages for each other shard, sent as one batch by the flusher.
    outboxes: RefCell<Vec<Vec<PeerMsg>>>,
    /// Messages in `outboxes` (bounded by `OUTBOX_MESSAGES_MAX` through backpressure).
    outbox_len: Cell<usize>,
    flush_bell: Bell,
    pub metrics: Arc<ShardMetrics>,
    /// Jobs on the blocking pool; shutdown waits for them.
    jobs_in_flight: Cell<usize>,
    started: Instant,
    /// Where idle connections are parked (`lot.rs`); None with `park_idle_ms` 0.
    pub lot: Option<Rc<super::lot::Lot>>,
    /// Connections with a task, oldest stamp first: (connection, when it was last seen active,
    /// ms). Each connection with a task is here once; the tick asks those idle for
    /// `park_idle_ms` to park, and puts back those active since.
    idle: RefCell<std::collections::VecDeque<(ConnId, u64)>>,
    /// The coarse clock connections stamp their activity with: ms since the shard started, as of
    /// the last tick or connection start (no clock read per turn of a connection).
    clock_ms: Cell<u64>,
}

fn now(started: Instant) -> Now {
    let unix_ms = shardchat_bridge::clock::unix_ms();
    Now { unix_ms, mono_us: started.elapsed().as_micros() as u64 }
}

impl Driver {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        store: Arc<dyn MessageStore>,
        cluster: Option<Arc<Cluster>>,
        senders: Senders<Wire>,
        metrics: Arc<ShardMetrics>,
    ) -> Self {
        let started = Instant::now();
        let sc = cfg.shard(id, cluster.is_some());
        Driver {
            id,
            auth: Authenticator::with_leeway(cfg.jwt_secret.as_deref(), cfg.dev_auth, cfg.jwt_leeway_s),
            limits: Limits { body_bytes_max: cfg.body_bytes_max },
            read_buf: RefCell::new(vec![0; cfg.shard_read_buffer_bytes]),
            write_buf: RefCell::new(Vec::with_capacity(cfg.write_batch_bytes)),
            write_ends: RefCell::new(Vec::new()),
            partials: RefCell::new(ConnMap::default()),
            partial_bytes: Cell::new(0),
            shard: RefCell::new(Shard::new(sc, now(started))),
            conns: RefCell::new(ConnMap::default()),
            next_conn: Cell::new(1),
            store,
            cluster,
            // One outbox per peer of the mesh: every shard, and the bridge (peer `shards`).
            outboxes: RefCell::new((0..=cfg.shards).map(|_| Vec::new()).collect()),
            outbox_len: Cell::new(0),
            senders,
            flush_bell: Bell::default(),
            metrics,
            jobs_in_flight: Cell::new(0),
            started,
            lot: (cfg.park_idle_ms > 0)
                .then(|| {
                    super::lot::Lot::new().map_err(|e| tracing::warn!(error = %e, "no epoll instance: connections are never parked")).ok()
                })
                .flatten()
                .map(Rc::new),
            idle: RefCell::new(std::collections::VecDeque::new()),
            clock_ms: Cell::new(0),
            cfg,
        }
    }

    /// Starts the task that unparks connections (with a lot).
    pub fn start_lot(self: &Rc<Self>) {
        if let Some(lot) = &self.lot {
            glommio::spawn_local(lot.clone().run(self.clone())).detach();
        }
    }

    /// The coarse clock (see `clock_ms`).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms.get()
    }

    /// Watches a connection with a task for idleness, from `since` (ms).
    pub fn idle_watch(&self, conn: ConnId, since: u64) {
        if self.lot.is_some() {
            self.idle.borrow_mut().push_back((conn, since));
        }
    }

    /// A registered connection's handle.
    pub fn handle(&self, conn: ConnId) -> Option<Rc<ConnHandle>> {
        self.conns.borrow().get(&conn).cloned()
    }

    /// Asks connections idle for `park_idle_ms` to park; the rest are watched on.
    fn park_idle(&self) {
        let now = self.clock_ms.get();
        let after = self.cfg.park_idle_ms;
        loop {
            let Some(&(conn, since)) = self.idle.borrow().front() else { break };
            if since + after > now {
                break;
            }
            self.idle.borrow_mut().pop_front();
            // Gone, or parked (and so not watched): nothing to do.
            let Some(h) = self.handle(conn) else { continue };
            if h.is_finished() || h.is_parked() {
                continue;
            }
            if h.active_ms() + after <= now {
                // The task parks it, or (busy after all) watches it again.
                h.request_park();
            } else {
                self.idle.borrow_mut().push_back((conn, h.active_ms()));
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Starts the tasks that receive from every other shard and the one that sends to them.
    pub fn start_mesh(self: &Rc<Self>, mut receivers: Receivers<Wire>) {
        for (_, rx) in receivers.streams() {
            let d = self.clone();
            glommio::spawn_local(async move {
                while let Some(wire) = rx.recv().await {
                    match wire {
                        Wire::Batch(msgs) => {
                            for m in msgs {
                                d.dispatch(Event::Peer(m));
                            }
                        }
                        Wire::Adopt { fd, upgrade, identity } => super::conn::adopt(&d, fd, upgrade, identity),
                    }
                }
            })
            .detach();
        }
        let d = self.clone();
        glommio::spawn_local(async move {
            loop {
                d.flush_bell.wait().await;
                // Let every task that is ready run first, so their messages join this batch.
                futures_lite::future::yield_now().await;
                let batches: Vec<(usize, Vec<PeerMsg>)> = d
                    .outboxes
                    .borrow_mut()
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(i, v)| (i, std::mem::take(v)))
                    .collect();
                d.outbox_len.set(0);
                d.metrics.outbox_depth.store(0, std::sync::atomic::Ordering::Relaxed);
                for (to, batch) in batches {
                    if d.senders.send_to(to, Wire::Batch(batch)).await.is_err() {
                        tracing::warn!(to, "shard channel closed; dropping a batch (shutting down?)");
                    }
                }
            }
        })
        .detach();
    }

    /// Whether the outboxes are over their bound: connections stop reading until they drain.
    pub fn congested(&self) -> bool {
        self.outbox_len.get() > OUTBOX_MESSAGES_MAX
    }

    pub fn next_conn_id(&self) -> ConnId {
        let id = self.next_conn.get();
        assert!(id < shardchat_shard::ops::REMOTE_CONN_BASE, "socket ids stay below the remote connections' space");
        self.next_conn.set(id + 1);
        ConnId(id)
    }

    pub fn register(self: &Rc<Self>, conn: ConnId, handle: Rc<ConnHandle>, identity: Identity) {
        self.conns.borrow_mut().insert(conn, handle);
        ShardMetrics::add(&self.metrics.connections, 1);
        ShardMetrics::add(&self.metrics.connections_total, 1);
        self.dispatch(Event::Connected { conn, user: identity.user, device: identity.device, expires_unix_ms: identity.expires_unix_ms });
    }

    pub fn unregister(self: &Rc<Self>, conn: ConnId) {
        if self.conns.borrow_mut().remove(&conn).is_some() {
            self.metrics.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.dispatch(Event::Disconnected { conn });
    }

    pub fn tick(self: &Rc<Self>) {
        self.clock_ms.set(self.started.elapsed().as_millis() as u64);
        self.park_idle();
        self.close_overdue_partials();
        self.dispatch(Event::Tick);
    }

    /// A connection's reader went from holding `before` bytes of partial messages to `after`.
    /// Returns whether the shard now holds more than its bound (the caller closes the connection).
    pub fn partial_held(&self, conn: ConnId, handle: &Rc<ConnHandle>, before: usize, after: usize) -> bool {
        if before == after {
            return false;
        }
        debug_assert!(self.partial_bytes.get() >= before, "a connection released bytes it never held");
        let total = self.partial_bytes.get() + after - before;
        self.partial_bytes.set(total);
        self.metrics.partial_bytes.store(total as u64, std::sync::atomic::Ordering::Relaxed);
        match (before, after) {
            (0, _) => {
                // The message's clock starts with its first byte; pings and later bytes do not
                // reset it.
                self.partials.borrow_mut().insert(conn, (self.started.elapsed().as_millis() as u64, handle.clone()));
            }
            (_, 0) => {
                self.partials.borrow_mut().remove(&conn);
            }
            _ => {}
        }
        after > before && total > self.cfg.partial_bytes_per_shard_max
    }

    /// Closes connections whose partial message is older than `message_complete_timeout_ms`.
    fn close_overdue_partials(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let limit = self.cfg.message_complete_timeout_ms;
        for (since, handle) in self.partials.borrow().values() {
            if now.saturating_sub(*since) > limit && !handle.is_closing() {
                ShardMetrics::add(&self.metrics.closes_incomplete, 1);
                handle.close(1008, "message not completed in time");
            }
        }
    }

    pub fn close_all(&self, code: u16, reason: &'static str) {
        for c in self.conns.borrow().values() {
            c.close(code, reason);
        }
    }

    /// Waits until no storage job is running (bounded). Ops the shard holds for commit pacing
    /// are sent out first (`Event::Drain`, at the stop): with no job out, none waits.
    pub async fn wait_idle(&self, max: Duration) {
        let deadline = Instant::now() + max;
        while self.jobs_in_flight.get() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Feeds one event to the shard and carries out what it asks.
    pub fn dispatch(self: &Rc<Self>, ev: Event) {
        // One clock read per dispatch: what the actions it returns need of the time (a delivery's
        // latency) is this too, not a read of their own (two `clock_gettime` per delivery were
        // 2.6% of the engine's CPU in 100-member group fan-out).
        let now = now(self.started);
        let mut actions = {
            let mut shard = self.shard.borrow_mut();
            shard.handle(now, ev);
            self.metrics.pending_ops.store(shard.pending_ops() as u64, std::sync::atomic::Ordering::Relaxed);
            let counters = shard.counters();
            self.metrics.overloaded.store(counters.overloaded, std::sync::atomic::Ordering::Relaxed);
            self.metrics.typing_dropped.store(counters.typing_dropped, std::sync::atomic::Ordering::Relaxed);
            self.metrics.rate_limited.store(counters.rate_limited, std::sync::atomic::Ordering::Relaxed);
            shard.take_actions()
        };
        for a in actions.drain(..) {
            self.act(a, now);
        }
        // An action may dispatch again (its shard borrow is over by then); this one's buffer
        // goes back for the next event's actions.
        self.shard.borrow_mut().recycle_actions(actions);
    }

    /// Queues `msg` for peer `to` (another shard, or the bridge); one for this shard itself is
    /// dispatched in a task of its own, never from inside the dispatch that produced it.
    fn to_peer(self: &Rc<Self>, to: usize, msg: PeerMsg) {
        if to == self.id {
            let d = self.clone();
            glommio::spawn_local(async move { d.dispatch(Event::Peer(msg)) }).detach();
            return;
        }
        self.outboxes.borrow_mut()[to].push(msg);
        self.outbox_len.set(self.outbox_len.get() + 1);
        self.metrics.outbox_depth.store(self.outbox_len.get() as u64, std::sync::atomic::Ordering::Relaxed);
        self.flush_bell.ring();
    }

    fn act(self: &Rc<Self>, a: Action, now: Now) {
        match a {
            Action::Directory { user, here } => {
                if let Some(c) = &self.cluster {
                    c.directory(user, here);
                }
            }
            Action::PresenceWatch { user, watch } => {
                if let Some(c) = &self.cluster {
                    c.watch(user, watch);
                }
            }
            Action::Remote { node, msg } => {
                if let Some(c) = &self.cluster {
                    // At the link's bound the op is answered `unavailable` here and now.
                    for (to, msg) in c.remote(node, *msg) {
                        self.to_peer(to, msg);
                    }
                }
            }
            Action::RemoteFanout(f) => {
                if let Some(c) = &self.cluster {
                    let shardchat_shard::RemoteFanout { users, payload, except, msg, class } = *f;
                    c.fanout(users, &payload, except, msg, class);
                }
            }
            Action::Send { conn, payload, class } => {
                let m = &self.metrics;
                let Some(c) = self.handle(conn) else { return };
                match c.push(&payload, class, self.cfg.outbound_queue_bytes_max) {
                    Pushed::Queued => {
                        ShardMetrics::add(&m.frames_out, 1);
                        if let Some(ts) = payload.message_ts() {
                            ShardMetrics::add(&m.deliveries, 1);
                            m.delivery_latency.observe_us(now.unix_ms.saturating_sub(ts) * 1000);
                        }
                    }
                    Pushed::Dropped => ShardMetrics::add(&m.drops_ephemeral, 1),
                    Pushed::Overflowed => ShardMetrics::add(&m.closes_slow_consumer, 1),
                    Pushed::Closing => {}
                }
            }
            Action::Lookup(job) => {
                let (d, store) = (self.clone(), self.store.clone());
                self.jobs_in_flight.set(self.jobs_in_flight.get() + 1);
                glommio::spawn_local(async move {
                    let outcome = glommio::executor().spawn_blocking(move || run_read(&*store, *job)).await;
                    d.jobs_in_flight.set(d.jobs_in_flight.get() - 1);
                    d.dispatch(Event::LookupDone(outcome));
                })
                .detach();
            }
            Action::WakeAt { mono_us } => {
                let d = self.clone();
                glommio::spawn_local(async move {
                    glommio::timer::sleep((d.started + Duration::from_micros(mono_us)).saturating_duration_since(Instant::now())).await;
                    d.dispatch(Event::Wake);
                })
                .detach();
            }
            Action::Close { conn, code, reason } => {
                if let Some(c) = self.handle(conn) {
                    c.close(code, reason);
                }
            }
            Action::Peer { to, msg } => {
                assert_ne!(to, self.id, "the shard handles its own messages itself");
                self.to_peer(to, *msg);
            }
            Action::Commit(job) => {
                let (d, store) = (self.clone(), self.store.clone());
                self.jobs_in_flight.set(self.jobs_in_flight.get() + 1);
                glommio::spawn_local(async move {
                    let started = Instant::now();
                    let ops = job.ops.len();
                    // The job's clock: how old its fence read is (the shard's own monotonic ms).
                    let epoch = d.started;
                    let mono_ms = move || epoch.elapsed().as_millis() as u64;
                    let out = glommio::executor().spawn_blocking(move || run_commit(&*store, *job, &mono_ms)).await;
                    let took = started.elapsed();
                    d.metrics.commit_latency.observe_us(took.as_micros() as u64);
                    if took > SLOW_COMMIT {
                        tracing::warn!(shard = d.id, ops, took_ms = took.as_millis() as u64, "slow commit");
                    }
                    d.jobs_in_flight.set(d.jobs_in_flight.get() - 1);
                    if let Some(why) = &out.fatal {
                        super::fatal(why.clone());
                    }
                    d.dispatch(Event::CommitDone(out));
                })
                .detach();
            }
            Action::Read { conn, job } => {
                let (d, store) = (self.clone(), self.store.clone());
                // A socket of this shard, or (None) a long-poll session the bridge holds.
                let handle = self.handle(conn);
                self.jobs_in_flight.set(self.jobs_in_flight.get() + 1);
                glommio::spawn_local(async move {
                    // Pace reads by the reader: a sync streams only as fast as the client takes
                    // it, so a large backlog never piles up in the outbound queue. (Sessions are
                    // bounded by their holder's event limit instead.)
                    if let Some(handle) = handle {
                        let low = d.cfg.outbound_queue_bytes_max / 2;
                        while handle.queued_bytes() > low && !handle.is_finished() {
                            glommio::timer::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    let outcome = glommio::executor().spawn_blocking(move || run_read(&*store, *job)).await;
                    d.jobs_in_flight.set(d.jobs_in_flight.get() - 1);
                    d.dispatch(Event::ReadDone { conn, outcome });
                })
                .detach();
            }
        }
    }
}
