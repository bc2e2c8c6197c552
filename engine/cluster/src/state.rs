//! What the rest of the node may read about the cluster link: its counters and gauges, and
//! their Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// What the rest of the node may read about the cluster: metrics, health.
#[derive(Default)]
pub struct ClusterState {
    pub(super) redis_up: AtomicBool,
    pub(super) live: Mutex<Vec<usize>>,
    /// The other live nodes' control planes (node, host:port), as of the last refresh.
    pub(super) peers: Mutex<Vec<(usize, String)>>,
    pub(super) directory_writes: AtomicU64,
    pub(super) rewrites: AtomicU64,
    pub(super) repairs: AtomicU64,
    pub(super) node_id_conflicts: AtomicU64,
    pub(super) rejoins: AtomicU64,
    pub(super) fences: AtomicU64,
    pub(super) remote_sent: AtomicU64,
    pub(super) remote_received: AtomicU64,
    pub(super) remote_unreachable: AtomicU64,
    pub(super) publishes: AtomicU64,
    pub(super) remote_refused: AtomicU64,
    pub(super) bridge_dropped: AtomicU64,
}

impl ClusterState {
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    /// Live nodes as last read from Redis (this one included while Redis answers).
    pub fn live(&self) -> Vec<usize> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The other live nodes and where their control planes listen (a search asks each for its
    /// part), as of the last refresh.
    pub fn peers(&self) -> Vec<(usize, String)> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Prometheus text for the cluster link.
    pub fn render(&self, out: &mut String) {
        let gauges = [
            (
                "shardchat_cluster_redis_up",
                "gauge",
                "Whether the last Redis round trip succeeded (1) or not (0).",
                u64::from(self.redis_up()),
            ),
            (
                "shardchat_cluster_live_nodes",
                "gauge",
                "Nodes whose liveness key was present at the last refresh.",
                self.live().len() as u64,
            ),
            (
                "shardchat_cluster_directory_writes_total",
                "counter",
                "Batches of directory changes written.",
                self.directory_writes.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_directory_rewrites_total",
                "counter",
                "Times this node rewrote its part of the directory whole.",
                self.rewrites.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_repairs_total",
                "counter",
                "Dead nodes this node removed from the directory.",
                self.repairs.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_node_id_conflicts_total",
                "counter",
                "Times another process was found writing this node's liveness key (a duplicated --node-id).",
                self.node_id_conflicts.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_rejoins_total",
                "counter",
                "Times this node found itself taken for dead and rejoined as a new incarnation.",
                self.rejoins.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_fences_total",
                "counter",
                "Dead nodes' incarnations this node fenced in the store before taking their conversations.",
                self.fences.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_remote_sent_total",
                "counter",
                "Messages sent to other nodes (ops, answers, fan-outs).",
                self.remote_sent.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_remote_received_total",
                "counter",
                "Messages received from other nodes.",
                self.remote_received.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_remote_unreachable_total",
                "counter",
                "Messages for another node that could not be sent (Redis down, or the node not listening); ops among them were answered unavailable.",
                self.remote_unreachable.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_remote_refused_total",
                "counter",
                "Messages for other nodes refused because the link's queue was at its bound; ops among them were answered unavailable.",
                self.remote_refused.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_bridge_dropped_total",
                "counter",
                "Batches the link dropped because the bridge's queue stayed full (messages from other nodes, views, answers): the link never waits on the bridge for long.",
                self.bridge_dropped.load(Ordering::Relaxed),
            ),
            (
                "shardchat_cluster_publishes_total",
                "counter",
                "PUBLISH commands sent (one per destination node per batch).",
                self.publishes.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
}
