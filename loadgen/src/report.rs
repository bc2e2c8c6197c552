//! The report: what a run measured (its table, its JSON, the merge of worker processes' reports)
//! and what it read of the server process (CPU, memory).

use crate::*;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The server's RSS growth from `before` to `after`, per connection: signed, so that a server
/// that gave memory back over the run shows it (a negative figure says the weighing measured
/// noise, not connections) instead of a 0 that reads as "free".
pub(crate) fn growth_per_connection(after: Option<u64>, before: Option<u64>, connections: u64) -> Option<f64> {
    Some((after? as f64 - before? as f64) / connections.max(1) as f64)
}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) connections_requested: usize,
    pub(crate) connected: u64,
    pub(crate) connect_failures: u64,
    pub(crate) connect_seconds: f64,
    /// Connections established per second while ramping (WebSocket upgrades included).
    pub(crate) connects_per_second: f64,
    pub(crate) server_rss_before_bytes: Option<u64>,
    pub(crate) server_rss_after_bytes: Option<u64>,
    pub(crate) server_bytes_per_connection: Option<f64>,
    /// `idle`: the server's RSS a second before the hold ends (the connections idle for the
    /// duration: parked, if the server parks idle connections), and its growth per connection.
    pub(crate) server_rss_idle_bytes: Option<u64>,
    pub(crate) server_bytes_per_connection_idle: Option<f64>,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) errors: u64,
    pub(crate) send_seconds: f64,
    /// The grid senders woke on (`--send-tick-us`), 0 for none: a figure's context, as a burst
    /// a tick costs both sides less than the same rate spread evenly.
    pub(crate) send_tick_us: u64,
    pub(crate) delivered_per_second: f64,
    pub(crate) latency_p50_ms: f64,
    pub(crate) latency_p90_ms: f64,
    pub(crate) latency_p99_ms: f64,
    pub(crate) latency_p999_ms: f64,
    pub(crate) latency_max_ms: f64,
    pub(crate) ack_p50_ms: f64,
    pub(crate) ack_p99_ms: f64,
    pub(crate) presence_frames: u64,
    pub(crate) storm_seconds: f64,
    /// The server's CPU time (user + system) over the measured phase: the storm, or the
    /// sending phase of the message scenarios (`--server-pid`).
    pub(crate) server_cpu_seconds: Option<f64>,
    /// This load generator's own CPU time over the sending phase, all worker processes together:
    /// what it costs to measure, beside what the server costs.
    pub(crate) loadgen_cpu_seconds: Option<f64>,
    /// CPU seconds per 1,000 messages sent, of the server and of the load generator.
    pub(crate) server_cpu_s_per_1000_msgs: Option<f64>,
    pub(crate) loadgen_cpu_s_per_1000_msgs: Option<f64>,
    pub(crate) server_peak_rss_bytes: Option<u64>,
    /// Worker processes the figures were merged from.
    pub(crate) procs: usize,
    /// Deliveries in each second of the sending phase.
    pub(crate) delivered_series: Vec<u64>,
    /// `mixed`: typing indicators and receipts received.
    pub(crate) typing_frames: u64,
    pub(crate) receipt_frames: u64,
    /// Server frames that came as rkyv binary (`--binary`) rather than JSON.
    pub(crate) binary_frames_received: u64,
    /// Workers only: the delivery and ack latency histograms (µs), HdrHistogram V2 + base64, so
    /// that the parent merges distributions rather than averaging percentiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) latency_histogram: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ack_histogram: Option<String>,
    #[serde(skip)]
    pub(crate) hists: Option<(Histogram<u64>, Histogram<u64>)>,
}

pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// User plus system CPU time of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The CPU time of the server (when known) and of this process at the start of a measured phase.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuMark {
    server: Option<f64>,
    this: Option<f64>,
}

impl CpuMark {
    pub(crate) fn now(server_pid: Option<u32>) -> CpuMark {
        CpuMark { server: server_pid.and_then(cpu_seconds), this: cpu_seconds(std::process::id()) }
    }

    /// The CPU each spent since the mark, into `report`.
    pub(crate) fn spent(&self, server_pid: Option<u32>, report: &mut Report) {
        let since = |now: Option<f64>, then: Option<f64>| now.zip(then).map(|(a, b)| (a - b).max(0.0));
        report.server_cpu_seconds = since(server_pid.and_then(cpu_seconds), self.server).or(report.server_cpu_seconds);
        report.loadgen_cpu_seconds = since(cpu_seconds(std::process::id()), self.this);
    }
}

/// Fills the per-message CPU figures from the CPU times and the messages sent.
pub(crate) fn cpu_per_message(report: &mut Report) {
    if report.sent == 0 {
        return;
    }
    let per_1000 = |cpu: Option<f64>| cpu.map(|c| c / report.sent as f64 * 1000.0);
    report.server_cpu_s_per_1000_msgs = per_1000(report.server_cpu_seconds);
    report.loadgen_cpu_s_per_1000_msgs = per_1000(report.loadgen_cpu_seconds);
}

/// Fills the percentile fields from the histograms.
pub(crate) fn percentiles(report: &mut Report) {
    let Some((lat, ack)) = &report.hists else { return };
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    report.latency_p50_ms = ms(lat, 0.5);
    report.latency_p90_ms = ms(lat, 0.9);
    report.latency_p99_ms = ms(lat, 0.99);
    report.latency_p999_ms = ms(lat, 0.999);
    report.latency_max_ms = lat.max() as f64 / 1000.0;
    report.ack_p50_ms = ms(ack, 0.5);
    report.ack_p99_ms = ms(ack, 0.99);
}

pub(crate) fn print_table(r: &Report) {
    let rows: Vec<(&str, String)> = vec![
        ("scenario", r.scenario.clone()),
        (
            "connected",
            format!("{} of {} ({} failed) in {:.1} s", r.connected, r.connections_requested, r.connect_failures, r.connect_seconds),
        ),
        ("connections per second", format!("{:.0}", r.connects_per_second)),
        ("server RSS before", r.server_rss_before_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or("-".into())),
        ("server RSS after", r.server_rss_after_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or("-".into())),
        ("bytes per connection", r.server_bytes_per_connection.map(|b| format!("{b:.0}")).unwrap_or("-".into())),
        ("bytes per connection, idle", r.server_bytes_per_connection_idle.map(|b| format!("{b:.0}")).unwrap_or("-".into())),
        ("sent / acked / delivered", format!("{} / {} / {}", r.sent, r.acked, r.delivered)),
        ("lost / duplicates / errors", format!("{} / {} / {}", r.lost, r.duplicates, r.errors)),
        ("delivered per second", format!("{:.0}", r.delivered_per_second)),
        ("send tick", if r.send_tick_us == 0 { "none (each message at its time)".into() } else { format!("{} µs", r.send_tick_us) }),
        ("latency p50 / p90 / p99", format!("{:.2} / {:.2} / {:.2} ms", r.latency_p50_ms, r.latency_p90_ms, r.latency_p99_ms)),
        ("latency p99.9 / max", format!("{:.2} / {:.2} ms", r.latency_p999_ms, r.latency_max_ms)),
        ("ack p50 / p99", format!("{:.2} / {:.2} ms", r.ack_p50_ms, r.ack_p99_ms)),
        ("presence frames", format!("{}", r.presence_frames)),
        ("typing / receipt frames", format!("{} / {}", r.typing_frames, r.receipt_frames)),
        ("storm: reconnect to resynced", format!("{:.1} s", r.storm_seconds)),
        ("server CPU time (storm)", r.server_cpu_seconds.filter(|_| r.sent == 0).map(|c| format!("{c:.2} s")).unwrap_or("-".into())),
        (
            "CPU s / 1,000 msgs: server",
            r.server_cpu_s_per_1000_msgs.map(|c| format!("{c:.4} ({:.1} µs a message)", c * 1000.0)).unwrap_or("-".into()),
        ),
        (
            "CPU s / 1,000 msgs: loadgen",
            r.loadgen_cpu_s_per_1000_msgs.map(|c| format!("{c:.4} ({:.1} µs a message)", c * 1000.0)).unwrap_or("-".into()),
        ),
        ("server peak RSS", r.server_peak_rss_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or("-".into())),
    ];
    println!("\n| {:<28} | {:<44} |", "figure", "value");
    println!("|{}|{}|", "-".repeat(30), "-".repeat(46));
    for (k, v) in rows {
        println!("| {k:<28} | {v:<44} |");
    }
}

pub(crate) fn encode_hist(h: &Histogram<u64>) -> String {
    use base64::Engine;
    use hdrhistogram::serialization::Serializer;
    let mut buf = Vec::new();
    hdrhistogram::serialization::V2Serializer::new().serialize(h, &mut buf).expect("serialize histogram");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

pub(crate) fn decode_hist(s: &str) -> Option<Histogram<u64>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    hdrhistogram::serialization::Deserializer::new().deserialize(&mut &bytes[..]).ok()
}

/// Adds a worker's counts and histograms into the merged report.
pub(crate) fn merge(into: &mut Report, w: Report) {
    into.connected += w.connected;
    into.connect_failures += w.connect_failures;
    into.connect_seconds = into.connect_seconds.max(w.connect_seconds);
    into.sent += w.sent;
    into.acked += w.acked;
    into.delivered += w.delivered;
    into.lost += w.lost;
    into.duplicates += w.duplicates;
    into.errors += w.errors;
    into.send_seconds = into.send_seconds.max(w.send_seconds);
    into.delivered_per_second += w.delivered_per_second;
    into.presence_frames += w.presence_frames;
    into.typing_frames += w.typing_frames;
    into.binary_frames_received += w.binary_frames_received;
    into.receipt_frames += w.receipt_frames;
    if into.delivered_series.len() < w.delivered_series.len() {
        into.delivered_series.resize(w.delivered_series.len(), 0);
    }
    for (a, b) in into.delivered_series.iter_mut().zip(&w.delivered_series) {
        *a += b;
    }
    into.storm_seconds = into.storm_seconds.max(w.storm_seconds);
    let hists = w.hists.or_else(|| Some((decode_hist(w.latency_histogram.as_deref()?)?, decode_hist(w.ack_histogram.as_deref()?)?)));
    if let Some((l, a)) = hists {
        let (ml, ma) = into.hists.get_or_insert_with(|| (hist(), hist()));
        ml.add(&l).expect("same bounds");
        ma.add(&a).expect("same bounds");
    }
    // Server figures are taken by one thread of the process that weighs the server.
    into.server_rss_after_bytes = into.server_rss_after_bytes.or(w.server_rss_after_bytes);
    into.server_bytes_per_connection = into.server_bytes_per_connection.or(w.server_bytes_per_connection);
    into.server_rss_idle_bytes = into.server_rss_idle_bytes.or(w.server_rss_idle_bytes);
    into.server_bytes_per_connection_idle = into.server_bytes_per_connection_idle.or(w.server_bytes_per_connection_idle);
    into.server_cpu_seconds = combine(into.server_cpu_seconds, w.server_cpu_seconds, f64::max);
    into.server_peak_rss_bytes = into.server_peak_rss_bytes.max(w.server_peak_rss_bytes);
    // Each worker measures its own CPU: the load generator's is their sum.
    into.loadgen_cpu_seconds = combine(into.loadgen_cpu_seconds, w.loadgen_cpu_seconds, |a, b| a + b);
}

/// Two figures either of which may be missing: `f` of both, or the one there is.
pub(crate) fn combine(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::growth_per_connection;

    #[test]
    fn growth_is_per_connection_signed_and_needs_both_weighings() {
        assert_eq!(growth_per_connection(Some(3_000), Some(1_000), 2), Some(1_000.0));
        // Memory given back shows as such, not as a free connection.
        assert_eq!(growth_per_connection(Some(1_000), Some(3_000), 4), Some(-500.0));
        assert_eq!(growth_per_connection(Some(3_000), Some(1_000), 0), Some(2_000.0));
        assert_eq!(growth_per_connection(None, Some(1_000), 2), None);
        assert_eq!(growth_per_connection(Some(1_000), None, 2), None);
    }
}
