//! Cluster mode (`serve --cluster redis://…`): this node's link to Redis, on a thread of its own
//! (tokio, like the control plane; the shards never wait on Redis).
//!
//! What it keeps in Redis, all under `shardchat:`:
//! - `node:{id}`: this node's liveness key, set with a TTL of [`NODE_TTL_MS`] and refreshed every
//!   [`NODE_REFRESH_MS`]. A node that stops refreshing is dead to the others once it expires.
//! - `nodes`: the set of node ids ever seen, so the others can tell a dead node from none.
//! - `user:{user}:nodes` and `node:{id}:users`: the directory, both directions. The home shards
//!   report a user's first connection on this node and their last one leaving
//!   ([`shardchat_shard::Action::Directory`]); the link writes each batch of changes in one
//!   transaction (MULTI) together with a refresh of the liveness key.
//!
//! Exactness: the link's own set of users here is the truth for this node. It rewrites its part
//! of the directory whole on every (re)connection, on a Redis that lost its data, and when its
//! liveness key had expired (a repairer may have removed it meanwhile). When a node dies, the
//! live node with the lowest id repairs the directory: a Lua script removes the dead node from
//! every user it listed, atomically and only if the dead node's key is still absent, so a node
//! coming back at that moment is never wiped.
//!
//! Routing between nodes: every node subscribes to its channel `inbox:{id}`. What the shards
//! send to other nodes (`Action::Remote`: an op for the conversation's owner node, an answer to
//! a connection there; `Action::RemoteFanout`: a frame for users elsewhere) waits in the link's
//! inbox with the directory changes (bounded: `shardchat_link::inbox`), in the order the shards
//! produced it, and each turn of the link takes it all. Each batch becomes one pipeline: the
//! nodes of every fanned-out user are read from the directory, and every destination node gets
//! one `PUBLISH` holding all of the batch's messages for it, so a group message costs one
//! publish per node holding members, whatever the member count. Pushes are not the link's
//! business: the owner writes one for every recipient in the message's batch, and a home shard
//! on any node withdraws it when the recipient gets the message live (the store is shared).
//! Messages arrive through the bridge.
//!
//! The live nodes, read every refresh, go to every shard (`PeerMsg::View`): conversation
//! ownership is rendezvous hashing over them.
//!
//! Redis down: nothing the shards do waits on it; the link retries every refresh and rewrites its
//! part of the directory when Redis answers again. Ops for other nodes are answered `unavailable`
//! at once (never dropped silently); frames for users on other nodes are stored messages that
//! those users get when they sync.

mod keys;
mod state;
mod store_link;

use keys::*;
use shardchat_bridge::clock::unix_ms;
use shardchat_bridge::health::Health;
use shardchat_bridge::{Bridge, Injected};
use shardchat_link::directory::Directory;
use shardchat_link::inbox::{Inbox, Turn};
use shardchat_link::liveness::{self, Liveness, Refreshed};
use shardchat_link::routing::{self, Outgoing};
use shardchat_shard::{Class, ConnRef, NodeId, PeerMsg, RemoteMsg};
use shardchat_storage::MessageStore;
pub use state::ClusterState;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store_link::{StoreLink, STORE_TIMEOUT_MS};
use tokio::sync::Notify;

/// How often the liveness key is refreshed and the live set read.
pub const NODE_REFRESH_MS: u64 = 1_000;
/// Life of the liveness key: three refreshes, so one slow refresh does not kill a node.
pub const NODE_TTL_MS: u64 = 3_000;
/// Longest wait for one Redis round trip before the link counts Redis as down.
const REDIS_TIMEOUT_MS: u64 = 2_000;
/// Longest the link keeps trying to hand the bridge one batch while the bridge's queue is full
/// (it sleeps between tries, so its other work goes on); then the batch is dropped and counted.
/// Far below the liveness key's life, so a stuck bridge never stops the refreshes.
pub const BRIDGE_WAIT_MS: u64 = 200;
/// How often the link tries the bridge again while its queue is full.
const BRIDGE_RETRY_MS: u64 = 1;

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub redis: String,
    pub node: usize,
    pub shards: usize,
    /// Where this node's clients connect (published in its liveness key for operators).
    pub listen: std::net::SocketAddr,
    /// Where this node's control plane listens (published in its liveness key: the other nodes
    /// ask it for its part of a search); None with `--no-http`.
    pub http: Option<std::net::SocketAddr>,
}

/// The shards' side of the link: what they hand it waits in an [`Inbox`] (bounded; see
/// `shardchat_link::inbox`) until the link's next turn. A mutex shared by the node's shards
/// guards it; it holds no shard state, and each shard holds it only to add one entry.
struct Shared {
    inbox: Mutex<Inbox>,
    /// Rung on every handover; a permit is kept while the link is busy, so none is lost.
    bell: Notify,
    /// Set by [`Cluster::stop`]: the link's next turn is its last.
    stopping: AtomicBool,
}

impl Shared {
    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The shards' handle: report directory changes and send to other nodes without waiting.
pub struct Cluster {
    shared: Arc<Shared>,
    shards: usize,
    bridge: Arc<Mutex<Option<Bridge>>>,
    pub state: Arc<ClusterState>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Cluster {
    /// Starts the link thread. Redis being unreachable is not an error: the node serves its own
    /// clients and the link keeps trying.
    /// What other nodes send arrives through `bridge`.
    pub fn start(cfg: ClusterConfig, bridge: Bridge, store: Arc<dyn MessageStore>, health: Arc<Health>) -> Result<Cluster, String> {
        let client = redis::Client::open(cfg.redis.as_str()).map_err(|e| format!("cluster: {}: {e}", cfg.redis))?;
        let shared = Arc::new(Shared { inbox: Mutex::new(Inbox::default()), bell: Notify::new(), stopping: AtomicBool::new(false) });
        let state = Arc::new(ClusterState::default());
        let bridge = Arc::new(Mutex::new(Some(bridge)));
        let shards = cfg.shards;
        let link = Link {
            bridge: bridge.clone(),
            store: StoreLink::new(store, Duration::from_millis(STORE_TIMEOUT_MS)),
            // Made again from this node's fence before the link joins (see `run`).
            liveness: Liveness::new(cfg.node, 0, 0),
            client,
            con: None,
            directory: Directory::default(),
            state: state.clone(),
            base: format!(
                "{{\"listen\":\"{}\",{}\"shards\":{},\"pid\":{}",
                cfg.listen,
                cfg.http.map(|h| format!("\"http\":\"{h}\",")).unwrap_or_default(),
                cfg.shards,
                std::process::id()
            ),
            down_logged: false,
            health,
            stalled_logged: Vec::new(),
            cfg,
        };
        let from_shards = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cluster runtime");
                rt.block_on(link.run(from_shards));
            })
            .map_err(|e| format!("cluster thread: {e}"))?;
        Ok(Cluster { shared, shards, bridge, state, thread: Mutex::new(Some(thread)) })
    }

    /// From a home shard: `user`'s first connection here arrived (`here`) or the last one left.
    pub fn directory(&self, user: String, here: bool) {
        self.shared.inbox().directory(user, here);
        self.shared.bell.notify_one();
    }

    /// From a home shard: someone here watches `user`'s presence (or no longer does).
    pub fn watch(&self, user: String, watch: bool) {
        self.shared.inbox().watch(user, watch);
        self.shared.bell.notify_one();
    }

    /// From a shard: `msg` for node `node`. Returns what this node's shards must be handed at
    /// once when the link's queue is at its bound: the `unavailable` answer an op is owed (its
    /// client retries the same cmid); nothing for what answers no one.
    #[must_use = "an op refused at the link's bound is owed an answer"]
    pub fn remote(&self, node: NodeId, msg: RemoteMsg) -> Vec<(usize, PeerMsg)> {
        self.offer(Outgoing::Remote(node, msg))
    }

    /// From an owner shard: a frame for `users` wherever else they are connected. At the link's
    /// bound it is dropped (counted): the message is stored, and its receivers elsewhere fill the
    /// gap from history.
    pub fn fanout(
        &self,
        users: Vec<String>,
        payload: &shardchat_shard::Payload,
        except: Option<ConnRef>,
        msg: Option<(String, u64)>,
        class: Class,
    ) {
        let frame = payload.frame().clone();
        let owed = self.offer(Outgoing::Fanout { users, frame, except, msg, class });
        debug_assert!(owed.is_empty(), "a fan-out answers no one");
    }

    fn offer(&self, m: Outgoing) -> Vec<(usize, PeerMsg)> {
        let refused = self.shared.inbox().offer(m);
        self.shared.bell.notify_one();
        match refused {
            Ok(()) => Vec::new(),
            Err(m) => {
                let n = self.state.remote_refused.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(refused = n + 1, "cluster: the link's queue is full (Redis slow?); refusing messages for other nodes");
                }
                let failed = match *m {
                    Outgoing::Remote(_, msg) => vec![msg],
                    Outgoing::Fanout { .. } => Vec::new(),
                };
                routing::unreachable(&failed, self.shards)
            }
        }
    }

    /// Stops handing what arrives to the bridge, so the bridge can stop (it runs until every
    /// handle is gone). Called once the shards have stopped.
    pub fn detach_bridge(&self) {
        self.bridge.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Stops the link, after the changes handed over before this call. The liveness key is
    /// removed so the others see this node gone at once (and repair the directory). A handle is
    /// enough: shutdown must not depend on every shard's copy having been dropped.
    pub fn stop(&self) {
        self.detach_bridge();
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.bell.notify_one();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

struct Link {
    cfg: ClusterConfig,
    /// Where messages from other nodes and the live nodes go (None once the node is stopping).
    bridge: Arc<Mutex<Option<Bridge>>>,
    /// Where fences are kept (the message store every node shares).
    store: StoreLink,
    /// The decisions: incarnation, live and dead nodes, fences owed, the view, the repairer.
    liveness: Liveness,
    client: redis::Client,
    con: Option<redis::aio::MultiplexedConnection>,
    /// This node's part of the directory: who is here, what is not yet written, whether a
    /// whole rewrite is owed (and the presence watches held).
    directory: Directory,
    state: Arc<ClusterState>,
    /// The liveness value without its incarnation: what tells this process from another one
    /// given the same node id.
    base: String,
    down_logged: bool,
    /// Whether this process's shards serve: the liveness key is written only while they all do.
    health: Arc<Health>,
    /// The stalled shards last logged (so a stall is logged once, not every refresh).
    stalled_logged: Vec<usize>,
}

impl Link {
    /// Runs until [`Cluster::stop`].
    async fn run(mut self, shared: Arc<Shared>) {
        // The incarnation comes first: a node that cannot read its fences does not join.
        loop {
            match self.store.call(move |s| s.node_fence(me16(self.cfg.node))).await {
                Ok(f) => {
                    self.liveness = Liveness::new(self.cfg.node, f, unix_ms());
                    break;
                }
                Err(e) => {
                    // A node stopping before it ever joined has nothing to take down.
                    if shared.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    tracing::warn!(error = %e, "cluster: cannot read this node's fence from the store; retrying");
                    tokio::time::sleep(Duration::from_millis(NODE_REFRESH_MS)).await;
                }
            }
        }
        let subscriber = tokio::spawn(subscribe(self.client.clone(), self.cfg.clone(), self.bridge.clone(), self.state.clone()));
        let mut tick = tokio::time::interval(Duration::from_millis(NODE_REFRESH_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.refresh().await,
                _ = shared.bell.notified() => {
                    // Read before the take: everything handed over before `stop` is in this turn.
                    let stop = shared.stopping.load(Ordering::Acquire);
                    let turn = shared.inbox().take();
                    self.turn(turn).await;
                    if stop {
                        break;
                    }
                }
            }
        }
        subscriber.abort();
        if let Some(con) = self.con.as_mut() {
            let _ = timeout(redis::cmd("DEL").arg(node_key(self.cfg.node)).query_async::<()>(con)).await;
        }
    }

    /// One turn: everything the shards handed over since the last, applied in one batch each
    /// (directory, presence, routing, watches).
    async fn turn(&mut self, turn: Turn) {
        let Turn { directory, watches, out } = turn;
        for (user, here) in directory {
            self.directory.note(user, here);
        }
        let changes = self.write_directory().await;
        let mut out = out;
        out.extend(self.presence_changes(changes).await);
        self.route(out).await;
        self.watch(watches).await;
    }

    async fn connection(&mut self) -> Option<redis::aio::MultiplexedConnection> {
        if self.con.is_none() {
            match timeout(self.client.get_multiplexed_async_connection()).await {
                Ok(c) => {
                    tracing::info!(node = self.cfg.node, redis = %self.cfg.redis, "cluster: connected to Redis");
                    self.con = Some(c);
                    self.directory.lost();
                    self.down_logged = false;
                }
                Err(e) => {
                    self.down(e);
                    return None;
                }
            }
        }
        self.con.clone()
    }

    /// Every write of the liveness key reads back the one before. Another value there means
    /// another process wrote it since our last write: two nodes were given the same --node-id.
    fn check_owner(&self, previous: Option<&str>) {
        if let Some(other) = previous.filter(|v| liveness::written_by_another(&self.base, Some(v))) {
            self.state.node_id_conflicts.fetch_add(1, Ordering::Relaxed);
            tracing::error!(node = self.cfg.node, ours = %self.value(), theirs = %other, "cluster: another process runs with this node id; give every node its own --node-id");
        }
    }

    /// The liveness key's value: where clients connect, and the incarnation.
    fn value(&self) -> String {
        liveness::value(&self.base, self.liveness.incarnation())
    }

    /// This node was taken for dead (its key expired, or a fence names its incarnation) and came
    /// back as a new incarnation, so its shards drop what they cached and take their
    /// conversations over afresh.
    fn rejoined(&mut self, old: u64) {
        self.directory.lost();
        self.state.rejoins.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            node = self.cfg.node,
            old,
            new = self.liveness.incarnation(),
            "cluster: this node was taken for dead; rejoining as a new incarnation"
        );
    }

    fn down(&mut self, e: String) {
        self.con = None;
        // Whatever reached Redis or not, the next connection rewrites the whole.
        self.directory.lost();
        self.state.redis_up.store(false, Ordering::Relaxed);
        if !self.down_logged {
            tracing::warn!(error = %e, "cluster: Redis unreachable; this node keeps serving its own clients and retries");
            self.down_logged = true;
        }
    }

    /// Whether this node may announce itself now: only while every shard accepts and runs. A
    /// node whose shards never started, or stopped, must not be routed to: its key then expires
    /// and the other nodes fence it and take its conversations, and once its shards run again
    /// it rejoins as a new incarnation.
    fn may_announce(&mut self) -> bool {
        let stalled = self.health.stalled();
        if stalled != self.stalled_logged {
            match stalled.is_empty() {
                true => tracing::info!(node = self.cfg.node, "cluster: every shard serves; announcing this node"),
                false if self.liveness.registered() => {
                    tracing::error!(node = self.cfg.node, ?stalled, "cluster: shards stopped serving; no longer announcing this node")
                }
                false => {
                    tracing::info!(node = self.cfg.node, ?stalled, "cluster: waiting for every shard to serve before announcing this node")
                }
            }
            self.stalled_logged = stalled.clone();
        }
        stalled.is_empty()
    }

    /// Writes pending directory changes (or the whole, when due) with a liveness refresh.
    async fn write_directory(&mut self) -> Vec<(String, bool)> {
        if !self.may_announce() {
            // Kept for when the shards serve again (a rewrite then covers them).
            return Vec::new();
        }
        if self.directory.rewrite_owed() {
            self.rewrite_directory().await;
            return Vec::new();
        }
        if self.directory.pending().is_empty() {
            return Vec::new();
        }
        let Some(mut con) = self.connection().await else { return Vec::new() };
        let node = self.cfg.node;
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("SET").arg(node_key(node)).arg(self.value()).arg("PX").arg(NODE_TTL_MS).arg("GET");
        for (user, here) in self.directory.pending() {
            let op = if *here { "SADD" } else { "SREM" };
            p.cmd(op).arg(user_nodes_key(user)).arg(node).ignore();
            p.cmd(op).arg(node_users_key(node)).arg(user).ignore();
        }
        match timeout(p.query_async::<(Option<String>,)>(&mut con)).await {
            Ok((previous,)) => {
                let written = self.directory.written();
                self.check_owner(previous.as_deref());
                self.state.directory_writes.fetch_add(1, Ordering::Relaxed);
                self.state.redis_up.store(true, Ordering::Relaxed);
                if previous.is_none() {
                    // Our key had expired: a repairer may have removed us meanwhile.
                    self.directory.lost();
                    self.rewrite_directory().await;
                }
                written
            }
            Err(e) => {
                self.down(e);
                Vec::new()
            }
        }
    }

    /// The presence changes behind directory changes, for the nodes watching those users (one
    /// read of every watcher set, in one pipeline). Lost when Redis is away: presence is
    /// ephemeral, and watchers ask again when they subscribe again.
    async fn presence_changes(&mut self, changes: Vec<(String, bool)>) -> Vec<Outgoing> {
        if changes.is_empty() {
            return Vec::new();
        }
        let Some(mut con) = self.connection().await else { return Vec::new() };
        let mut p = redis::pipe();
        for (user, _) in &changes {
            p.cmd("SMEMBERS").arg(watch_key(user));
        }
        let watchers: Vec<Vec<usize>> = match timeout(p.query_async(&mut con)).await {
            Ok(w) => w,
            Err(e) => {
                self.down(e);
                return Vec::new();
            }
        };
        routing::presence(changes, watchers, self.cfg.node, unix_ms())
    }

    /// Registers (or drops) this node's watches and answers each new one with the other nodes
    /// holding the user now. With Redis away the answer is "nowhere else", so a first answer is
    /// never held up.
    async fn watch(&mut self, watches: Vec<(String, bool)>) {
        if watches.is_empty() {
            return;
        }
        let me = self.cfg.node;
        for (user, on) in &watches {
            self.directory.watch(user, *on);
        }
        let con = self.connection().await;
        let mut sets: Vec<Vec<usize>> = Vec::new();
        if let Some(mut con) = con {
            let mut p = redis::pipe();
            for (user, on) in &watches {
                if *on {
                    p.cmd("SADD").arg(watch_key(user)).arg(me).ignore();
                    p.cmd("SMEMBERS").arg(user_nodes_key(user));
                } else {
                    p.cmd("SREM").arg(watch_key(user)).arg(me).ignore();
                }
            }
            match timeout(p.query_async::<Vec<Vec<usize>>>(&mut con)).await {
                Ok(v) => sets = v,
                Err(e) => self.down(e),
            }
        }
        let live = self.liveness.view().map(<[usize]>::to_vec).unwrap_or_default();
        let mut sets = sets.into_iter();
        let mut local = Vec::new();
        for (user, _) in watches.into_iter().filter(|(_, on)| *on) {
            let nodes: Vec<NodeId> =
                sets.next().unwrap_or_default().into_iter().filter(|&n| n != me && live.contains(&n)).map(me16).collect();
            local.push((shardchat_shard::home_shard(&user, self.cfg.shards), PeerMsg::PresenceNodes { user, nodes }));
        }
        self.inject(local).await;
    }

    /// Makes this node's part of the directory exactly `here`.
    async fn rewrite_directory(&mut self) {
        if !self.may_announce() {
            return;
        }
        let Some(mut con) = self.connection().await else { return };
        let node = self.cfg.node;
        let listed: Vec<String> = match timeout(redis::cmd("SMEMBERS").arg(node_users_key(node)).query_async(&mut con)).await {
            Ok(v) => v,
            Err(e) => return self.down(e),
        };
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("SET").arg(node_key(node)).arg(self.value()).arg("PX").arg(NODE_TTL_MS).ignore();
        p.cmd("SADD").arg(NODES_KEY).arg(node).ignore();
        let r = self.directory.rewrite(&listed);
        for gone in &r.gone {
            p.cmd("SREM").arg(user_nodes_key(gone)).arg(node).ignore();
        }
        p.cmd("DEL").arg(node_users_key(node)).ignore();
        if !r.here.is_empty() {
            p.cmd("SADD").arg(node_users_key(node)).arg(&r.here).ignore();
        }
        for user in &r.here {
            p.cmd("SADD").arg(user_nodes_key(user)).arg(node).ignore();
        }
        // Watches too: a Redis that lost its data lost them.
        for user in &r.watching {
            p.cmd("SADD").arg(watch_key(user)).arg(node).ignore();
        }
        match timeout(p.query_async::<()>(&mut con)).await {
            Ok(()) => {
                self.directory.rewritten();
                self.state.rewrites.fetch_add(1, Ordering::Relaxed);
                self.state.redis_up.store(true, Ordering::Relaxed);
                tracing::info!(node, users = self.directory.users_here(), "cluster: directory rewritten");
            }
            Err(e) => self.down(e),
        }
    }

    /// Refreshes the liveness key, reads the live set, fences and repairs after dead nodes: the
    /// I/O of one refresh, the decisions in [`Liveness`].
    async fn refresh(&mut self) {
        // Fenced while Redis said nothing (this process paused, or cut off from Redis alone)?
        let me = me16(self.cfg.node);
        match self.store.call(move |s| s.node_fence(me)).await {
            Ok(f) => {
                let old = self.liveness.incarnation();
                if self.liveness.own_fence(f, unix_ms()) {
                    self.rejoined(old);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster: reading this node's fence failed"),
        }
        if !self.may_announce() {
            return;
        }
        if self.directory.dirty() {
            self.write_directory().await;
        }
        let Some(mut con) = self.connection().await else { return };
        let node = self.cfg.node;
        let mut p = redis::pipe();
        p.cmd("SET").arg(node_key(node)).arg(self.value()).arg("PX").arg(NODE_TTL_MS).arg("GET");
        p.cmd("SADD").arg(NODES_KEY).arg(node).ignore();
        p.cmd("SMEMBERS").arg(NODES_KEY);
        let (previous, known): (Option<String>, BTreeSet<usize>) = match timeout(p.query_async(&mut con)).await {
            Ok(v) => v,
            Err(e) => return self.down(e),
        };
        self.state.redis_up.store(true, Ordering::Relaxed);
        self.check_owner(previous.as_deref());
        let old = self.liveness.incarnation();
        let written = self.liveness.wrote_key(previous.as_deref(), unix_ms());
        if written.rejoined {
            self.rejoined(old);
        }
        if written.rewrite {
            // Make our part of the directory whole again (with the key's new value).
            self.directory.lost();
            self.rewrite_directory().await;
        }
        let known: Vec<usize> = known.into_iter().collect();
        let keys: Vec<String> = known.iter().map(|&n| node_key(n)).collect();
        let values: Vec<Option<String>> = match timeout(redis::cmd("MGET").arg(&keys).query_async(&mut con)).await {
            Ok(v) => v,
            Err(e) => return self.down(e),
        };
        let peers = search_peers(node, &known, &values);
        let plan = self.liveness.refreshed(Refreshed { nodes: known.into_iter().zip(values).collect() });
        let peers = peers.into_iter().filter(|(n, _)| plan.live.contains(n)).collect();
        *self.state.peers.lock().unwrap_or_else(|e| e.into_inner()) = peers;
        let before = std::mem::replace(&mut *self.state.live.lock().unwrap_or_else(|e| e.into_inner()), plan.live.clone());
        if before != plan.live {
            tracing::info!(live = ?plan.live, "cluster: live nodes changed");
        }
        // Before any shard here may take a dead node's conversations, its incarnation is fenced
        // in the store, so if it still runs its next commit finds the fence.
        for &(d, inc) in &plan.fence {
            match self.store.call(move |s| s.fence_node(me16(d), inc)).await {
                Ok(()) => {
                    self.liveness.fence_written(d, inc);
                    self.state.fences.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(dead = d, incarnation = inc, "cluster: node taken for dead; fenced");
                }
                Err(e) => {
                    tracing::error!(error = %e, dead = d, "cluster: fencing a dead node failed; its conversations stay put until it succeeds");
                }
            }
        }
        if let Some(view) = self.liveness.view_after(&plan) {
            let nodes: Vec<NodeId> = view.iter().map(|&n| me16(n)).collect();
            let inc = self.liveness.incarnation();
            let msgs = (0..self.cfg.shards).map(|s| (s, PeerMsg::View { live: nodes.clone(), incarnation: inc })).collect();
            if self.inject(msgs).await {
                self.liveness.view_told(view);
            }
        }
        for d in plan.repair {
            let script = redis::Script::new(REPAIR_LUA);
            let mut inv = script.prepare_invoke();
            inv.key(node_key(d)).key(node_users_key(d)).key(NODES_KEY).arg(d).arg(format!("{PREFIX}user:")).arg(":nodes");
            match timeout(inv.invoke_async::<i64>(&mut con)).await {
                Ok(n) if n >= 0 => {
                    self.state.repairs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(dead = d, users = n, "cluster: node dead; removed from the directory");
                }
                Ok(_) => {}
                Err(e) => return self.down(e),
            }
        }
    }
}

impl Link {
    async fn inject(&self, msgs: Vec<(usize, PeerMsg)>) -> bool {
        hand_to_bridge(&self.bridge, msgs, &self.state).await
    }

    /// Sends one batch of what the shards had for other nodes: the directory read for every
    /// fanned-out user, then one PUBLISH per destination node, all in one pipeline each.
    async fn route(&mut self, out: Vec<Outgoing>) {
        if out.is_empty() {
            return;
        }
        let con = self.connection().await;
        // Nodes of every fanned-out user (not needed for those only here when Redis is away).
        let wanted = routing::fanout_users(&out);
        let mut nodes_of: HashMap<String, Vec<usize>> = HashMap::new();
        let mut con = match con {
            Some(c) if !wanted.is_empty() => {
                let mut p = redis::pipe();
                for u in &wanted {
                    p.cmd("SMEMBERS").arg(user_nodes_key(u));
                }
                match timeout(p.query_async::<Vec<Vec<usize>>>(&mut c.clone())).await {
                    Ok(sets) => {
                        nodes_of = wanted.into_iter().zip(sets).collect();
                        Some(c)
                    }
                    Err(e) => {
                        self.down(e);
                        None
                    }
                }
            }
            c => c,
        };
        let per_node = routing::per_node(out, &nodes_of, self.cfg.node);
        let mut failed: Vec<RemoteMsg> = Vec::new();
        if let Some(c) = con.as_mut().filter(|_| !per_node.is_empty()) {
            let mut p = redis::pipe();
            let mut sent = Vec::new();
            for (n, msgs) in per_node {
                match serde_json::to_vec(&msgs) {
                    Ok(body) => {
                        p.cmd("PUBLISH").arg(inbox_channel(n)).arg(body);
                        sent.push(msgs);
                    }
                    Err(e) => tracing::error!(error = %e, "cluster: a message for another node did not encode"),
                }
            }
            match timeout(p.query_async::<Vec<u64>>(c)).await {
                Ok(listeners) => {
                    self.state.publishes.fetch_add(sent.len() as u64, Ordering::Relaxed);
                    for (msgs, l) in sent.into_iter().zip(listeners) {
                        if l == 0 {
                            // Nobody subscribed: the node is gone or not yet listening.
                            failed.extend(msgs);
                        } else {
                            self.state.remote_sent.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => {
                    failed.extend(sent.into_iter().flatten());
                    self.down(e);
                }
            }
        } else {
            failed.extend(per_node.into_values().flatten());
        }
        if !failed.is_empty() {
            self.state.remote_unreachable.fetch_add(failed.len() as u64, Ordering::Relaxed);
            self.inject(routing::unreachable(&failed, self.cfg.shards)).await;
        }
    }
}

/// Receives what other nodes publish to this node's channel and hands it to the bridge; on any
/// break, subscribes again.
async fn subscribe(client: redis::Client, cfg: ClusterConfig, bridge: Arc<Mutex<Option<Bridge>>>, state: Arc<ClusterState>) {
    use futures::StreamExt;
    let channel = inbox_channel(cfg.node);
    loop {
        let sub = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        if let Ok(Ok(mut ps)) = tokio::time::timeout(Duration::from_millis(REDIS_TIMEOUT_MS), sub).await {
            tracing::info!(channel = %channel, "cluster: subscribed");
            let mut stream = ps.on_message();
            while let Some(m) = stream.next().await {
                let msgs: Vec<RemoteMsg> = match serde_json::from_slice(m.get_payload_bytes()) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(error = %e, "cluster: a message from another node did not decode (mixed versions?)");
                        continue;
                    }
                };
                state.remote_received.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                let local: Vec<(usize, PeerMsg)> = msgs.into_iter().flat_map(|m| m.into_local(cfg.shards)).collect();
                if bridge.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                    return;
                }
                hand_to_bridge(&bridge, local, &state).await;
            }
            tracing::warn!(channel = %channel, "cluster: subscription lost; subscribing again");
        }
        tokio::time::sleep(Duration::from_millis(RESUBSCRIBE_MS)).await;
    }
}

/// Hands `msgs` to this node's peers through the bridge. Never blocks the link's thread: while
/// the bridge's queue is full it tries again every `BRIDGE_RETRY_MS`, for at most
/// `BRIDGE_WAIT_MS` (the refreshes, routing and the subscription go on meanwhile), then drops
/// the batch and counts it. What is lost so is what Redis pub/sub may lose anyway: answers and
/// ops whose clients retry, fan-outs of stored messages their receivers fill from history, a
/// view told again at the next refresh. False when the batch was not handed over.
async fn hand_to_bridge(bridge: &Mutex<Option<Bridge>>, msgs: Vec<(usize, PeerMsg)>, state: &ClusterState) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(BRIDGE_WAIT_MS);
    let mut msgs = msgs;
    loop {
        let Some(b) = bridge.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return false };
        match b.try_inject(msgs) {
            Ok(()) => return true,
            Err(Injected::Stopped) => return false,
            Err(Injected::Full(back)) if tokio::time::Instant::now() < deadline => {
                msgs = back;
                tokio::time::sleep(Duration::from_millis(BRIDGE_RETRY_MS)).await;
            }
            Err(Injected::Full(_)) => {
                let n = state.bridge_dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n + 1, "cluster: the bridge's queue stayed full; dropped a batch from the link");
                }
                return false;
            }
        }
    }
}

/// The other nodes' control planes, from their liveness keys' values (`http`): where a search
/// asks for their parts.
fn search_peers(me: usize, nodes: &[usize], values: &[Option<String>]) -> Vec<(usize, String)> {
    nodes
        .iter()
        .zip(values)
        .filter(|(n, _)| **n != me)
        .filter_map(|(n, v)| {
            let v: serde_json::Value = serde_json::from_str(v.as_deref()?).ok()?;
            Some((*n, v.get("http")?.as_str()?.to_string()))
        })
        .collect()
}

fn me16(node: usize) -> NodeId {
    node as NodeId
}

async fn timeout<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_millis(REDIS_TIMEOUT_MS), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {REDIS_TIMEOUT_MS} ms")),
    }
}

#[cfg(test)]
mod tests;
