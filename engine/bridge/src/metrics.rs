//! Counters each shard writes and the control plane reads (`GET /metrics`, Prometheus text).
//!
//! One [`ShardMetrics`] per shard, written only by that shard's thread (relaxed atomics, no
//! locks) and read by the control plane. Each sits on its own cache lines (`align(128)`), so
//! shards never write to a line another shard writes.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the latency histograms' buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS_S: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A fixed-bucket histogram of durations.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    /// Sum of observations in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe_us(&self, us: u64) {
        let s = us as f64 / 1e6;
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[repr(align(128))]
#[derive(Default)]
pub struct ShardMetrics {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    /// Connections parked: idle, held without a task (see `park_idle_ms`).
    pub connections_parked: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    /// `msg` frames queued to connections.
    pub deliveries: AtomicU64,
    /// Ephemeral frames (typing, presence) dropped for connections that were behind.
    pub drops_ephemeral: AtomicU64,
    /// Connections closed because their outbound queue was full (durable frames never drop).
    pub closes_slow_consumer: AtomicU64,
    /// Messages waiting in this shard's outboxes to other shards.
    pub outbox_depth: AtomicU64,
    /// Ops waiting for this shard's next commit.
    pub pending_ops: AtomicU64,
    /// Ops refused with `unavailable` because the owner shard's queue was full (a lagging disk).
    pub overloaded: AtomicU64,
    /// Connections closed for breaking the WebSocket protocol (1002, 1007, 1009: oversized,
    /// malformed, unmasked, bad UTF-8).
    pub closes_protocol: AtomicU64,
    /// Connections closed for a partial message: not completed within
    /// `message_complete_timeout_ms` (1008), or over the shard's bound on bytes held (1013).
    pub closes_incomplete: AtomicU64,
    /// Bytes held for partial messages (frames split across reads, fragmented messages).
    pub partial_bytes: AtomicU64,
    /// New connections closed at once: the engine holds `connections_max` already, or the shard
    /// its share of `handshakes_max` with none old enough to give way.
    pub connections_refused_full: AtomicU64,
    /// Handshakes closed to make room for a newer one (this shard held its share of
    /// `handshakes_max`): the oldest goes.
    pub handshakes_evicted: AtomicU64,
    /// Upgrade requests refused before a connection existed (400, 401, 404, 431).
    pub handshakes_refused: AtomicU64,
    /// Upgrade requests not finished within `handshake_timeout_ms` (408: slowloris).
    pub handshake_timeouts: AtomicU64,
    /// `typing` frames dropped by the per-user, per-conversation interval.
    pub typing_dropped: AtomicU64,
    /// New connections refused (429) by the per-address connection rate.
    pub connections_refused_rate: AtomicU64,
    /// Requests refused with `rate_limited` (send, group change and history rates, sync, presence).
    pub rate_limited: AtomicU64,
    /// From a message's acceptance (its `ts`) to its frame being queued to a connection.
    pub delivery_latency: Histogram,
    /// One commit job: sequencing, the batch write and its fsync.
    pub commit_latency: Histogram,
}

impl ShardMetrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}

/// A metric's name, type, help text and where to read it.
type CounterSpec = (&'static str, &'static str, &'static str, fn(&ShardMetrics) -> &AtomicU64);
type HistogramSpec = (&'static str, &'static str, fn(&ShardMetrics) -> &Histogram);

/// The Prometheus text exposition of every shard's metrics.
pub fn render(shards: &[std::sync::Arc<ShardMetrics>]) -> String {
    let mut out = String::new();
    let counters: [CounterSpec; 21] = [
        ("shardchat_connections", "gauge", "Open WebSocket connections.", |m| &m.connections),
        ("shardchat_connections_total", "counter", "WebSocket connections accepted.", |m| &m.connections_total),
        ("shardchat_connections_parked", "gauge", "Open connections parked: idle, held without a task or a reactor source.", |m| {
            &m.connections_parked
        }),
        ("shardchat_frames_in_total", "counter", "Frames received from clients.", |m| &m.frames_in),
        ("shardchat_frames_out_total", "counter", "Frames queued to clients.", |m| &m.frames_out),
        ("shardchat_deliveries_total", "counter", "Messages queued to connections.", |m| &m.deliveries),
        ("shardchat_drops_ephemeral_total", "counter", "Typing and presence frames dropped for slow connections.", |m| &m.drops_ephemeral),
        ("shardchat_closes_slow_consumer_total", "counter", "Connections closed because their outbound queue was full.", |m| {
            &m.closes_slow_consumer
        }),
        ("shardchat_outbox_depth", "gauge", "Messages waiting to go to other shards.", |m| &m.outbox_depth),
        ("shardchat_pending_ops", "gauge", "Ops waiting for the owner shard's next commit.", |m| &m.pending_ops),
        ("shardchat_overloaded_total", "counter", "Ops refused with unavailable: the owner shard's commit queue was full.", |m| {
            &m.overloaded
        }),
        ("shardchat_closes_protocol_total", "counter", "Connections closed for WebSocket protocol errors (oversized, malformed).", |m| {
            &m.closes_protocol
        }),
        (
            "shardchat_handshakes_refused_total",
            "counter",
            "Upgrade requests refused (bad request, unauthorized, not found, head too large).",
            |m| &m.handshakes_refused,
        ),
        ("shardchat_handshake_timeouts_total", "counter", "Upgrade requests not finished in time (408).", |m| &m.handshake_timeouts),
        (
            "shardchat_typing_dropped_total",
            "counter",
            "Typing notices dropped: more than one per user and conversation per interval.",
            |m| &m.typing_dropped,
        ),
        (
            "shardchat_closes_incomplete_total",
            "counter",
            "Connections closed for a partial message: too slow to complete, or over the shard's bound.",
            |m| &m.closes_incomplete,
        ),
        ("shardchat_partial_message_bytes", "gauge", "Bytes held for partial messages.", |m| &m.partial_bytes),
        (
            "shardchat_connections_refused_full_total",
            "counter",
            "New connections closed at once: at connections_max, or at the shard's share of handshakes_max.",
            |m| &m.connections_refused_full,
        ),
        (
            "shardchat_handshakes_evicted_total",
            "counter",
            "Handshakes closed to make room for newer ones: the shard held its share of handshakes_max.",
            |m| &m.handshakes_evicted,
        ),
        ("shardchat_rate_limited_total", "counter", "Requests refused with rate_limited.", |m| &m.rate_limited),
        ("shardchat_connections_refused_rate_total", "counter", "New connections refused (429) by the per-address rate.", |m| {
            &m.connections_refused_rate
        }),
    ];
    for (name, kind, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(m).load(Relaxed));
        }
    }
    let hists: [HistogramSpec; 2] = [
        ("shardchat_delivery_latency_seconds", "From a message's acceptance to its frame queued to a connection.", |m| &m.delivery_latency),
        ("shardchat_commit_seconds", "Commit jobs: sequencing, batch write and fsync.", |m| &m.commit_latency),
    ];
    for (name, help, get) in hists {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, m) in shards.iter().enumerate() {
            get(m).render(&mut out, name, &format!("shard=\"{i}\""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_prometheus_text_with_cumulative_buckets() {
        let m = Arc::new(ShardMetrics::default());
        m.commit_latency.observe_us(700);
        m.commit_latency.observe_us(3_000);
        m.commit_latency.observe_us(9_000_000);
        ShardMetrics::add(&m.deliveries, 5);
        let text = render(&[m]);
        assert!(text.contains("shardchat_deliveries_total{shard=\"0\"} 5\n"), "{text}");
        assert!(text.contains("shardchat_commit_seconds_bucket{shard=\"0\",le=\"0.0005\"} 0\n"));
        assert!(text.contains("shardchat_commit_seconds_bucket{shard=\"0\",le=\"0.001\"} 1\n"));
        assert!(text.contains("shardchat_commit_seconds_bucket{shard=\"0\",le=\"0.005\"} 2\n"));
        assert!(text.contains("shardchat_commit_seconds_bucket{shard=\"0\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("shardchat_commit_seconds_count{shard=\"0\"} 3\n"));
        assert!(text.contains("# TYPE shardchat_connections gauge\n"));
    }
}
