//! `shardchat-loadgen`: a small load generator for shardchat (the foundation's measuring tool).
//!
//! Scenarios:
//! - `idle`: open N connections, hold them for the duration with an application ping every
//!   `--ping-interval` seconds; with `--server-pid` it reports the server's RSS growth per connection.
//! - `direct`: N/2 pairs; in each pair user `A` sends to user `B` at an open-loop rate (the
//!   schedule does not wait for replies, and latency is measured from the scheduled send time, so
//!   a stalled server shows up as latency instead of hiding as fewer sends). Every receiver checks
//!   that seq is contiguous, so loss and duplicates are counted, not assumed.
//! - `group:SIZE`: N/SIZE groups; in each, one member sends at the rate and every other member
//!   receives (deliveries = messages × (SIZE − 1)).
//! - `mixed`: groups of `--group-size` where everyone sends, types first, marks every fifth
//!   message read and watches `--subs` others' presence.
//! - `reconnect-storm`: pairs chat, a `--storm-fraction` of the receivers drop at once and come
//!   back at once, syncing from their cursors; checks nothing missed is lost or doubled.
//! - `echo`: against any WebSocket echo server, round-trip latency of stamped text frames.
//! - `presence-storm`: N users each subscribe to `--subs` others; then all disconnect and
//!   reconnect at once and subscribe again. Reports presence frames received, the server's CPU
//!   time and peak memory (`--server-pid`).
//!
//! Options common to them: `--rate` (open loop), `--ramp` (connections per second),
//! `--payload`, `--binary` (rkyv frames on the message path), `--json`, `--plot`.
//!
//! Scale: `--procs P` runs P worker processes (each under its own open-file limit) with 1/P of
//! the connections and of the rate each, and merges their HdrHistograms; `--source-ips` spreads
//! client sockets over local addresses, each with its own ephemeral port range.
//!
//! Prints a table, optionally writes `--json` and `--plot` (PNG or SVG: latency by percentile beside
//! deliveries per second). Thread-per-core like the engine: `--threads` glommio executors
//! (default: one per core) each run the scenario with their share of the work (`rt.rs`).

mod echo;
mod mixed;
mod plot;
mod rt;
mod storm;

use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use shardchat_codec::{ClientFrame, MsgKind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Idle,
    Direct,
    Group(usize),
    Mixed,
    ReconnectStorm,
    Echo,
    PresenceStorm,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    match s {
        "idle" => Ok(Scenario::Idle),
        "direct" => Ok(Scenario::Direct),
        "presence-storm" => Ok(Scenario::PresenceStorm),
        "mixed" => Ok(Scenario::Mixed),
        "reconnect-storm" => Ok(Scenario::ReconnectStorm),
        "echo" => Ok(Scenario::Echo),
        _ => match s.strip_prefix("group:").map(str::parse::<usize>) {
            Some(Ok(n)) if (2..=500).contains(&n) => Ok(Scenario::Group(n)),
            _ => Err("expected idle, direct, group:SIZE (2..=500), mixed, reconnect-storm, echo or presence-storm".into()),
        },
    }
}

#[derive(Parser, Debug, Clone)]
#[command(name = "shardchat-loadgen", about = "Load generator for shardchat")]
struct Args {
    /// WebSocket endpoint, e.g. ws://127.0.0.1:7700/ws (dev-auth: users log in with ?user=).
    /// Several, comma-separated, spread connections round-robin: one per engine process when a
    /// host runs several (each under its open-file cap). Across independent processes only
    /// `idle` and `echo` make sense until they route messages to each other (cluster mode).
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    target: String,
    /// idle | direct | group:SIZE | mixed | reconnect-storm | echo | presence-storm
    #[arg(long, default_value = "idle", value_parser = parse_scenario)]
    scenario: Scenario,
    /// Presence subscriptions per user (presence-storm).
    #[arg(long, default_value_t = 50)]
    subs: usize,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Seconds to hold (idle) or send (direct) once connected.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Messages per second over all senders (direct).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Message body size in bytes (direct).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds between application pings on idle connections.
    #[arg(long, default_value_t = 20)]
    ping_interval: u64,
    /// Server process id: report its RSS and memory per connection.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Prefix of user ids, so runs do not share conversations.
    #[arg(long, default_value = "lg")]
    prefix: String,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Worker processes: each opens its share of the connections (and sends its share of the
    /// rate) under its own open-file limit; their histograms are merged into one report.
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Local addresses to connect from, round robin: `127.0.0.2-127.0.0.40` or `a,b,c`. Each
    /// source address has its own ephemeral port range (about 28K ports), so more than ~28K
    /// connections to one server address need several.
    #[arg(long, value_parser = parse_source_ips)]
    source_ips: Option<SourceIps>,
    /// Log users in with HS256 JWTs minted from this secret (the server's `--jwt-secret`)
    /// instead of `?user=` (which only a `--dev-auth` server accepts).
    #[arg(long, env = "SHARDCHAT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Members per group (mixed).
    #[arg(long, default_value_t = 20)]
    group_size: usize,
    /// Share of the receivers that drop and reconnect at once (reconnect-storm).
    #[arg(long, default_value_t = 0.5)]
    storm_fraction: f64,
    /// Messages travel as rkyv binary frames instead of JSON (send, ack and msg).
    #[arg(long)]
    binary: bool,
    /// Connections opened per second while ramping up (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 0)]
    ramp: u64,
    /// Draw the latency percentile distribution and deliveries over time here (PNG if the name
    /// ends in .png, else SVG).
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Threads (glommio executors, one per core) in each process; 0: the cores divided by --procs.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Which of this process's threads these arguments are for (set at run time).
    #[arg(skip)]
    thread: usize,
    /// Internal: this process is worker K of P (`K/P`), started by `--procs`.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

#[derive(Clone, Debug)]
struct SourceIps(Vec<std::net::IpAddr>);

fn parse_source_ips(s: &str) -> Result<SourceIps, String> {
    let bad = |e: std::net::AddrParseError| e.to_string();
    let ips: Vec<std::net::IpAddr> = if let Some((a, b)) = s.split_once('-') {
        let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (a.trim().parse().map_err(bad)?, b.trim().parse().map_err(bad)?);
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            return Err("a range is low-high, at most 65,536 addresses".into());
        }
        (a..=b).map(|x| std::net::IpAddr::V4(x.into())).collect()
    } else {
        s.split(',').map(|x| x.trim().parse().map_err(bad)).collect::<Result<_, _>>()?
    };
    if ips.is_empty() {
        return Err("no addresses".into());
    }
    Ok(SourceIps(ips))
}

#[derive(Serialize, Deserialize, Default)]
struct Report {
    scenario: String,
    connections_requested: usize,
    connected: u64,
    connect_failures: u64,
    connect_seconds: f64,
    /// Connections established per second while ramping (WebSocket upgrades included).
    connects_per_second: f64,
    server_rss_before_bytes: Option<u64>,
    server_rss_after_bytes: Option<u64>,
    server_bytes_per_connection: Option<f64>,
    sent: u64,
    acked: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    errors: u64,
    send_seconds: f64,
    delivered_per_second: f64,
    latency_p50_ms: f64,
    latency_p90_ms: f64,
    latency_p99_ms: f64,
    latency_p999_ms: f64,
    latency_max_ms: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    presence_frames: u64,
    storm_seconds: f64,
    server_cpu_seconds: Option<f64>,
    server_peak_rss_bytes: Option<u64>,
    /// Worker processes the figures were merged from.
    procs: usize,
    /// Deliveries in each second of the sending phase.
    delivered_series: Vec<u64>,
    /// `mixed`: typing indicators and receipts received.
    typing_frames: u64,
    receipt_frames: u64,
    /// Server frames that came as rkyv binary (`--binary`) rather than JSON.
    binary_frames_received: u64,
    /// Workers only: the delivery and ack latency histograms (µs), HdrHistogram V2 + base64, so
    /// that the parent merges distributions rather than averaging percentiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_histogram: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_histogram: Option<String>,
    #[serde(skip)]
    hists: Option<(Histogram<u64>, Histogram<u64>)>,
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Where a sender's messages go.
enum Dest {
    To(String),
    Conv(String),
}

/// A server frame as JSON, whichever encoding it came in.
fn frame_json(m: &Message) -> Option<serde_json::Value> {
    match m {
        Message::Text(t) => serde_json::from_str(t).ok(),
        Message::Binary(b) => shardchat_codec::decode_server_binary(b).ok().and_then(|f| serde_json::to_value(&f).ok()),
        _ => None,
    }
}

/// The fields of a server frame the receivers look at, borrowed from the text.
#[derive(Deserialize)]
struct Lite<'a> {
    t: &'a str,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    kind: &'a str,
    #[serde(default)]
    body: &'a str,
}

/// If `m` is a (non-system) `msg`: its seq and the send time stamped in its body.
fn delivered_msg(m: &Message) -> Option<(u64, Option<u64>)> {
    let stamp = |body: &str| body.split('|').next().and_then(|s| s.parse::<u64>().ok());
    match m {
        Message::Text(t) => {
            // Bodies here are plain ASCII, so borrowing works; escaped text falls back to None.
            let f: Lite = serde_json::from_str(t).ok()?;
            (f.t == "msg" && f.kind != "system").then(|| (f.seq, stamp(f.body)))
        }
        Message::Binary(b) => match shardchat_codec::decode_server_binary(b).ok()? {
            shardchat_codec::ServerFrame::Msg(r) if r.kind != MsgKind::System => Some((r.seq, stamp(&r.body))),
            _ => None,
        },
        _ => None,
    }
}

/// A client frame in JSON, or in rkyv with `--binary`.
fn client_msg(frame: &ClientFrame, binary: bool) -> Message {
    if binary {
        Message::Binary(shardchat_codec::encode_client_binary(frame).into())
    } else {
        Message::Text(shardchat_codec::encode_client_text(frame).into())
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

use rt::Ws;

/// How user `user` logs in: `token=<JWT>` with `--jwt-secret`, else the development `user=`.
fn login_query(args: &Args, user: &str) -> String {
    let Some(secret) = &args.jwt_secret else { return format!("user={user}&device=lg") };
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        dev: &'a str,
        exp: u64,
    }
    // Valid for a day: long runs must not see their tokens expire under them.
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 86_400;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, dev: "lg", exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail");
    format!("token={token}")
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {per_sec} {msg}").unwrap().progress_chars("=> "));
    pb.set_prefix(what.to_string());
    pb
}

/// Opens `users.len()` connections with bounded concurrency.
async fn connect_all(args: &Args, users: Vec<String>, report: &mut Report) -> Vec<Option<Ws>> {
    let pb = progress(users.len() as u64, "connect");
    let sem = std::rc::Rc::new(glommio::sync::Semaphore::new(args.connect_concurrency as u64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let targets: Vec<&str> = args.target.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    for (i, u) in users.into_iter().enumerate() {
        let slot = (i * args.procs + worker_index(args)) * args.threads.max(1) + args.thread;
        let (sem, target, pb) = (sem.clone(), targets[slot % targets.len()].to_string(), pb.clone());
        let from = args.source_ips.as_ref().map(|ips| ips.0[slot % ips.0.len()]);
        let login = login_query(args, &u);
        // Ramp: connection i starts no earlier than i/ramp seconds in.
        let not_before = (args.ramp > 0).then(|| started + Duration::from_secs_f64(i as f64 / args.ramp as f64));
        tasks.push(crate::rt::spawn(async move {
            if let Some(t) = not_before {
                crate::rt::sleep_until(t).await;
            }
            let _permit = sem.acquire_static_permit(1).await.unwrap();
            let r = rt::connect(format!("{target}?{login}"), from).await;
            pb.inc(1);
            r
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        match t.await {
            Ok(ws) => {
                report.connected += 1;
                out.push(Some(ws));
            }
            Err(e) => {
                if report.connect_failures == 0 {
                    eprintln!("connect failed: {e}");
                }
                report.connect_failures += 1;
                out.push(None);
            }
        }
    }
    report.connect_seconds = started.elapsed().as_secs_f64();
    pb.finish_with_message(format!("{} connected, {} failed", report.connected, report.connect_failures));
    out
}

async fn idle(args: &Args, report: &mut Report) {
    let users: Vec<String> = (0..args.connections).map(|i| format!("{}i{i}", args.prefix)).collect();
    let conns = connect_all(args, users, report).await;
    // The threads of this process meet once all have connected (a blocking wait, but nothing
    // runs on these executors yet); one of them then weighs the server.
    CONNECTED_HERE.fetch_add(report.connected, Relaxed);
    if ALL_CONNECTED.get().is_none_or(|b| b.wait().is_leader()) {
        let here = CONNECTED_HERE.load(Relaxed);
        if args.worker.is_some() {
            println!("{WORKER_CONNECTED}{here}");
        }
        // Let the server settle (allocator, handshake buffers freed) before reading its RSS.
        glommio::timer::sleep(Duration::from_secs(2)).await;
        if let Some(pid) = args.server_pid {
            report.server_rss_after_bytes = rss_bytes(pid);
            if let (Some(a), Some(b)) = (report.server_rss_after_bytes, report.server_rss_before_bytes) {
                report.server_bytes_per_connection = Some(a.saturating_sub(b) as f64 / here.max(1) as f64);
            }
        }
    }
    let pb = progress(args.duration, "hold");
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    for ws in conns.into_iter().flatten() {
        let interval = Duration::from_secs(args.ping_interval);
        tasks.push(crate::rt::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            loop {
                let next = Instant::now() + interval;
                if next > deadline {
                    break;
                }
                crate::rt::sleep_until(next).await;
                if tx.send(Message::Text(r#"{"t":"ping"}"#.into())).await.is_err() {
                    return false;
                }
                if !matches!(rx.next().await, Some(Ok(_))) {
                    return false;
                }
            }
            // Hold to the end: a duration shorter than the ping interval must not close the
            // connection at once (it did, and a short run measured fewer connections than it
            // reported).
            crate::rt::sleep_until(deadline).await;
            drop((tx, rx));
            true
        }));
    }
    for _ in 0..args.duration {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        pb.inc(1);
    }
    pb.finish();
    for t in tasks {
        if !t.await {
            report.errors += 1;
        }
    }
}

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    lost: AtomicU64,
    errors: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
    ack_latency: Mutex<Option<Histogram<u64>>>,
    /// Deliveries in each second of the run.
    series: Mutex<Vec<u64>>,
    typing: AtomicU64,
    receipts: AtomicU64,
    presence: AtomicU64,
    binary_frames: AtomicU64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

async fn direct(args: &Args, report: &mut Report) {
    fanout(args, report, 2).await
}

/// Groups of `size` users (`size` 2: direct pairs); member 0 of each sends, the others receive.
async fn fanout(args: &Args, report: &mut Report, size: usize) {
    let groups = (args.connections / size).max(1);
    let mut users = Vec::new();
    for g in 0..groups {
        for m in 0..size {
            users.push(format!("{}g{g}m{m}", args.prefix));
        }
    }
    let conns = connect_all(args, users, report).await;
    let shared = Arc::new(Shared::with_histograms());
    let per_sender_rate = (args.rate as f64 / groups as f64).max(0.001);
    let interval = Duration::from_secs_f64(1.0 / per_sender_rate);
    let total_per_sender = (per_sender_rate * args.duration as f64).round() as u64;
    let body_pad = "x".repeat(args.payload.saturating_sub(24));
    let mut conns = conns.into_iter();
    let mut tasks = Vec::new();
    let pb = progress(groups as u64, "groups");
    let mut plans = Vec::new();
    for g in 0..groups {
        let members: Vec<Option<Ws>> = (0..size).map(|_| conns.next().flatten()).collect();
        if members.iter().any(Option::is_none) {
            continue;
        }
        let mut members: Vec<Ws> = members.into_iter().flatten().collect();
        // Direct pairs use `to`; groups are created first and addressed by `conv`.
        let (dest, first_seq) = if size == 2 {
            (Dest::To(format!("{}g{g}m1", args.prefix)), 1)
        } else {
            let names: Vec<String> = (1..size).map(|m| format!("{}g{g}m{m}", args.prefix)).collect();
            match create_group(&mut members[0], &names).await {
                Some(conv) => (Dest::Conv(conv), 2),
                None => {
                    report.errors += 1;
                    continue;
                }
            }
        };
        pb.inc(1);
        plans.push((members, dest, first_seq));
    }
    pb.finish();
    let start = Instant::now() + Duration::from_millis(200);
    let receivers_per_group = (size - 1) as u64;
    let n_plans = plans.len();
    for (i, (mut members, dest, first_seq)) in plans.into_iter().enumerate() {
        let sender_ws = members.remove(0);
        let (sh, pad) = (shared.clone(), body_pad.clone());
        // Spread the senders' phases over one interval so the aggregate rate is smooth.
        let phase = interval.mul_f64(i as f64 / n_plans.max(1) as f64);
        let schedule = Schedule { start: start + phase, interval, total: total_per_sender };
        tasks.push(crate::rt::spawn(sender(sender_ws, dest, sh.clone(), pad, schedule, args.binary)));
        for ws in members {
            tasks.push(crate::rt::spawn(receiver(
                ws,
                sh.clone(),
                total_per_sender,
                first_seq,
                start + Duration::from_secs(args.duration + 10),
                args.binary,
            )));
        }
    }
    let pb = progress(total_per_sender * n_plans as u64 * receivers_per_group, "deliver");
    let ticker = {
        let sh = shared.clone();
        let pb = pb.clone();
        crate::rt::spawn(async move {
            let (mut tick, mut last) = (0u64, 0u64);
            loop {
                glommio::timer::sleep(Duration::from_millis(200)).await;
                let now = sh.delivered.load(Relaxed);
                pb.set_position(now);
                tick += 1;
                if tick % 5 == 0 {
                    sh.series.lock().unwrap().push(now - last);
                    last = now;
                }
            }
        })
    };
    for t in tasks {
        t.await;
    }
    drop(ticker); // cancels it
    pb.finish();
    shared.finish(args, report, start);
}

impl Shared {
    fn with_histograms() -> Self {
        Shared { latency: Mutex::new(Some(hist())), ack_latency: Mutex::new(Some(hist())), ..Default::default() }
    }

    /// Moves the counters and histograms into the report once a run is over.
    fn finish(&self, args: &Args, report: &mut Report, start: Instant) {
        report.sent = self.sent.load(Relaxed);
        report.acked = self.acked.load(Relaxed);
        report.delivered = self.delivered.load(Relaxed);
        report.duplicates = self.duplicates.load(Relaxed);
        report.lost = self.lost.load(Relaxed);
        report.errors += self.errors.load(Relaxed);
        report.send_seconds = start.elapsed().as_secs_f64();
        report.delivered_per_second = report.delivered as f64 / args.duration.max(1) as f64;
        let lat = self.latency.lock().unwrap().take().unwrap_or_else(hist);
        let ack = self.ack_latency.lock().unwrap().take().unwrap_or_else(hist);
        report.hists = Some((lat, ack));
        report.delivered_series = std::mem::take(&mut *self.series.lock().unwrap());
        report.binary_frames_received = self.binary_frames.load(Relaxed);
    }
}

/// Fills the percentile fields from the histograms.
fn percentiles(report: &mut Report) {
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

/// Creates a group with `members` (the creator is added as admin) and returns its id.
async fn create_group(ws: &mut Ws, members: &[String]) -> Option<String> {
    let frame = serde_json::json!({"t":"group_create","name":"load","members":members,"ref":"lg"});
    ws.send(Message::Text(frame.to_string().into())).await.ok()?;
    loop {
        let m = crate::rt::timeout(Duration::from_secs(30), ws.next()).await.ok()??.ok()?;
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).ok()?;
            if v["t"] == "group" && v["ref"] == "lg" {
                return v["conv"].as_str().map(str::to_string);
            }
            if v["t"] == "error" {
                eprintln!("group_create failed: {v}");
                return None;
            }
        }
    }
}

/// Sends `total` messages on a fixed schedule; the body carries the scheduled send time, so
/// latency includes any time the schedule slipped (coordinated omission corrected).
/// When a sender sends: `total` messages, one every `interval` from `start`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    interval: Duration,
    total: u64,
}

impl Schedule {
    /// When the last send is due.
    fn end(&self) -> Instant {
        self.start + self.interval.mul_f64(self.total as f64)
    }

    /// Walks the schedule open loop: see [`Ticks::next`].
    fn ticks(self) -> Ticks {
        Ticks { s: self, k: 0, wall0: None }
    }
}

struct Ticks {
    s: Schedule,
    k: u64,
    /// The wall clock at `start`, read once so stamps follow the schedule, not the clock's steps.
    wall0: Option<u64>,
}

impl Ticks {
    /// Waits until send `k` is due and gives `k` and its stamp: the wall-clock time it was due,
    /// not when it happened, so a stalled sender or server shows up as latency (coordinated
    /// omission corrected). `None` once all are sent.
    async fn next(&mut self) -> Option<(u64, u64)> {
        let k = self.k;
        if k >= self.s.total {
            return None;
        }
        let due = self.s.start + self.s.interval.mul_f64(k as f64);
        crate::rt::sleep_until(due).await;
        let wall0 = *self.wall0.get_or_insert_with(now_us);
        self.k += 1;
        Some((k, wall0 + due.saturating_duration_since(self.s.start).as_micros() as u64))
    }
}

async fn sender(ws: Ws, dest: Dest, sh: Arc<Shared>, pad: String, schedule: Schedule, binary: bool) {
    let total = schedule.total;
    let (mut tx, mut rx) = ws.split();
    let sh2 = sh.clone();
    let acks = crate::rt::spawn(async move {
        let mut local = hist();
        let mut n = 0;
        while n < total {
            match crate::rt::timeout(Duration::from_secs(30), rx.next()).await {
                Ok(Some(Ok(m))) => {
                    let Some(v) = frame_json(&m) else { continue };
                    if v["t"] == "ack" {
                        n += 1;
                        sh2.acked.fetch_add(1, Relaxed);
                        if let Some(sent) = v["cmid"].as_str().and_then(|c| c.split(':').nth(1)).and_then(|s| s.parse::<u64>().ok()) {
                            let _ = local.record(now_us().saturating_sub(sent).max(1));
                        }
                    } else if v["t"] == "error" {
                        sh2.errors.fetch_add(1, Relaxed);
                        n += 1;
                    }
                }
                _ => break,
            }
        }
        sh2.ack_latency.lock().unwrap().as_mut().unwrap().add(&local).unwrap();
    });
    let mut ticks = schedule.ticks();
    while let Some((i, stamp)) = ticks.next().await {
        let (to, conv) = match &dest {
            Dest::To(u) => (Some(u.clone()), None),
            Dest::Conv(c) => (None, Some(c.clone())),
        };
        let frame = ClientFrame::Send { cmid: format!("{i}:{stamp}"), to, conv, body: format!("{stamp}|{pad}"), kind: MsgKind::Text };
        if tx.send(client_msg(&frame, binary)).await.is_err() {
            sh.errors.fetch_add(1, Relaxed);
            break;
        }
        sh.sent.fetch_add(1, Relaxed);
    }
    let _ = acks.await;
}

/// Receives until `total` messages arrived or the deadline; checks seq contiguity from
/// `first_seq` (system messages, like a group's creation, are not counted).
async fn receiver(ws: Ws, sh: Arc<Shared>, total: u64, first_seq: u64, deadline: Instant, binary: bool) {
    let (mut tx, mut rx) = ws.split();
    if binary {
        // The server answers in the encoding a connection last spoke: speak rkyv once.
        let _ = tx.send(client_msg(&ClientFrame::Ping { r#ref: None }, true)).await;
    }
    let mut local = hist();
    let mut next_seq = first_seq;
    let mut got = 0u64;
    while got < total {
        let m = match crate::rt::timeout_at(deadline, rx.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        if m.is_binary() {
            sh.binary_frames.fetch_add(1, Relaxed);
        }
        // The hot path of every scenario: read just the fields it needs, not a whole JSON tree
        // (that made the load generator spend more CPU than the server it measured).
        let Some((seq, sent)) = delivered_msg(&m) else { continue };
        if seq < next_seq {
            sh.duplicates.fetch_add(1, Relaxed);
            continue;
        }
        if seq > next_seq {
            sh.lost.fetch_add(seq - next_seq, Relaxed);
        }
        next_seq = seq + 1;
        got += 1;
        sh.delivered.fetch_add(1, Relaxed);
        if let Some(sent) = sent {
            let _ = local.record(now_us().saturating_sub(sent).max(1));
        }
    }
    if got < total {
        sh.lost.fetch_add(total - got, Relaxed);
    }
    sh.latency.lock().unwrap().as_mut().unwrap().add(&local).unwrap();
}

/// Connects `users`, subscribes each to `subs` others and waits for the initial presence frames.
async fn subscribe_all(args: &Args, users: &[String], report: &mut Report) -> Vec<rt::Task<(u64, Option<Ws>)>> {
    let conns = connect_all(args, users.to_vec(), report).await;
    let n = users.len();
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let Some(mut ws) = ws else { continue };
        let targets: Vec<&String> = (1..=args.subs.min(n - 1)).map(|k| &users[(i + k) % n]).collect();
        let frame = serde_json::json!({"t":"presence_sub","users":targets}).to_string();
        let want = targets.len() as u64;
        tasks.push(crate::rt::spawn(async move {
            if ws.send(Message::Text(frame.into())).await.is_err() {
                return (0, None);
            }
            let mut got = 0;
            while got < want {
                match crate::rt::timeout(Duration::from_secs(30), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""t":"presence""#) => got += 1,
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            (got, Some(ws))
        }));
    }
    tasks
}

async fn presence_storm(args: &Args, report: &mut Report) {
    let users: Vec<String> = (0..args.connections).map(|i| format!("{}p{i}", args.prefix)).collect();
    let mut first = Vec::new();
    for t in subscribe_all(args, &users, report).await {
        first.push(t.await);
    }
    println!("subscribed: {} presence frames", first.iter().map(|(n, _)| n).sum::<u64>());
    // The storm: everyone drops at once, then everyone comes back and subscribes again.
    let cpu0 = args.server_pid.and_then(cpu_seconds);
    let t0 = Instant::now();
    drop(first);
    glommio::timer::sleep(Duration::from_millis(200)).await;
    report.connected = 0;
    let again = subscribe_all(args, &users, report).await;
    let mut frames = 0;
    let mut held = Vec::new();
    for t in again {
        let (n, ws) = t.await;
        frames += n;
        held.push(ws);
    }
    // Coalesced offline/online updates still in flight arrive within the coalescing interval.
    glommio::timer::sleep(Duration::from_millis(1500)).await;
    report.storm_seconds = t0.elapsed().as_secs_f64();
    let mut late = 0u64;
    for ws in held.iter_mut().flatten() {
        while let Ok(Some(Ok(Message::Text(t)))) = crate::rt::timeout(Duration::from_millis(1), ws.next()).await {
            if t.contains(r#""t":"presence""#) {
                late += 1;
            }
        }
    }
    report.presence_frames = frames + late;
    if let Some(pid) = args.server_pid {
        report.server_cpu_seconds = cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
        report.server_peak_rss_bytes = peak_rss_bytes(pid);
    }
}

fn print_table(r: &Report) {
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
        ("sent / acked / delivered", format!("{} / {} / {}", r.sent, r.acked, r.delivered)),
        ("lost / duplicates / errors", format!("{} / {} / {}", r.lost, r.duplicates, r.errors)),
        ("delivered per second", format!("{:.0}", r.delivered_per_second)),
        ("latency p50 / p90 / p99", format!("{:.2} / {:.2} / {:.2} ms", r.latency_p50_ms, r.latency_p90_ms, r.latency_p99_ms)),
        ("latency p99.9 / max", format!("{:.2} / {:.2} ms", r.latency_p999_ms, r.latency_max_ms)),
        ("ack p50 / p99", format!("{:.2} / {:.2} ms", r.ack_p50_ms, r.ack_p99_ms)),
        ("presence frames", format!("{}", r.presence_frames)),
        ("typing / receipt frames", format!("{} / {}", r.typing_frames, r.receipt_frames)),
        ("storm: reconnect to resynced", format!("{:.1} s", r.storm_seconds)),
        ("server CPU time (storm)", r.server_cpu_seconds.map(|c| format!("{c:.2} s")).unwrap_or("-".into())),
        ("server peak RSS", r.server_peak_rss_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or("-".into())),
    ];
    println!("\n| {:<28} | {:<44} |", "figure", "value");
    println!("|{}|{}|", "-".repeat(30), "-".repeat(46));
    for (k, v) in rows {
        println!("| {k:<28} | {v:<44} |");
    }
}

/// Narrows `args` to share `k` of `n` (a worker process's or a thread's): its part of the
/// connections, rate and ramp, under user names of its own.
fn share(args: &mut Args, k: usize, n: usize, tag: &str) {
    args.connections = args.connections / n + usize::from(k < args.connections % n);
    args.rate = (args.rate / n as u64).max(1);
    if args.ramp > 0 {
        args.ramp = (args.ramp / n as u64).max(1);
    }
    args.prefix = format!("{}{tag}{k}-", args.prefix);
}

/// Connections made by this process's threads, and where they meet once all connected (the
/// idle scenario weighs the server then).
static CONNECTED_HERE: AtomicU64 = AtomicU64::new(0);
static ALL_CONNECTED: std::sync::OnceLock<std::sync::Barrier> = std::sync::OnceLock::new();

/// Runs the scenario on `--threads` glommio executors, one pinned to each core, each with its
/// share of the work, and merges their reports into `report`.
fn run_threads(args: &Args, report: &mut Report) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if args.threads > 0 { args.threads } else { (cores / args.procs).max(1) };
    let _ = ALL_CONNECTED.set(std::sync::Barrier::new(threads));
    let first_core = worker_index(args) * threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mut a = args.clone();
            share(&mut a, t, threads, "t");
            a.thread = t;
            a.threads = threads;
            let mut r =
                Report { scenario: report.scenario.clone(), server_rss_before_bytes: report.server_rss_before_bytes, ..Default::default() };
            glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed((first_core + t) % cores))
                .name(&format!("loadgen-{t}"))
                .spawn(move || async move {
                    run_scenario(&a, &mut r).await;
                    r
                })
                .expect("start a glommio executor (io_uring and locked memory, see tuning/)")
        })
        .collect();
    for h in handles {
        let r = h.join().expect("a load generator thread failed");
        merge(report, r);
    }
}

async fn run_scenario(args: &Args, report: &mut Report) {
    match args.scenario {
        Scenario::Idle => idle(args, report).await,
        Scenario::Direct => direct(args, report).await,
        Scenario::Group(size) => fanout(args, report, size).await,
        Scenario::PresenceStorm => presence_storm(args, report).await,
        Scenario::Mixed => mixed::run(args, report).await,
        Scenario::ReconnectStorm => storm::run(args, report).await,
        Scenario::Echo => echo::run(args, report).await,
    }
}

/// `K` of `--worker K/P` (0 outside workers).
fn worker_index(args: &Args) -> usize {
    args.worker.as_deref().and_then(|w| w.split_once('/')).and_then(|(k, _)| k.parse().ok()).unwrap_or(0)
}

/// Prefix of the lines a worker prints for its parent on stdout.
const WORKER_CONNECTED: &str = "worker-connected ";
const WORKER_REPORT: &str = "worker-report ";

fn encode_hist(h: &Histogram<u64>) -> String {
    use base64::Engine;
    use hdrhistogram::serialization::Serializer;
    let mut buf = Vec::new();
    hdrhistogram::serialization::V2Serializer::new().serialize(h, &mut buf).expect("serialize histogram");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

fn decode_hist(s: &str) -> Option<Histogram<u64>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    hdrhistogram::serialization::Deserializer::new().deserialize(&mut &bytes[..]).ok()
}

/// Adds a worker's counts and histograms into the merged report.
fn merge(into: &mut Report, w: Report) {
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
    into.server_cpu_seconds = match (into.server_cpu_seconds, w.server_cpu_seconds) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    into.server_peak_rss_bytes = into.server_peak_rss_bytes.max(w.server_peak_rss_bytes);
}

/// `--procs P`: runs P copies of this program as workers, each with 1/P of the connections and
/// of the rate, and merges what they report.
async fn parent(args: &Args, report: &mut Report) {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe().expect("own executable");
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut children = Vec::new();
    for k in 0..args.procs {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&raw).arg("--worker").arg(format!("{k}/{}", args.procs));
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).kill_on_drop(true);
        children.push(cmd.spawn().expect("start a worker"));
    }
    let pb = progress(args.procs as u64, "workers");
    pb.set_message("connecting");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    for (k, child) in children.iter_mut().enumerate() {
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send((k, l));
            }
        });
    }
    drop(tx);
    let (mut connected, mut reported) = (0, 0);
    while let Some((k, line)) = rx.recv().await {
        if let Some(n) = line.strip_prefix(WORKER_CONNECTED) {
            connected += 1;
            pb.set_message(format!("{connected} of {} connected ({n} in worker {k})", args.procs));
            if connected == args.procs && args.scenario == Scenario::Idle {
                // Everyone holds their connections now: the moment to weigh the server.
                tokio::time::sleep(Duration::from_secs(2)).await;
                report.server_rss_after_bytes = args.server_pid.and_then(rss_bytes);
            }
        } else if let Some(json) = line.strip_prefix(WORKER_REPORT) {
            match serde_json::from_str::<Report>(json) {
                Ok(w) => merge(report, w),
                Err(e) => eprintln!("worker {k}: unreadable report: {e}"),
            }
            reported += 1;
            pb.inc(1);
        }
    }
    pb.finish_with_message(format!("{reported} of {} reported", args.procs));
    if reported < args.procs {
        report.errors += (args.procs - reported) as u64;
        eprintln!("{} worker(s) exited without a report", args.procs - reported);
    }
    if let (Some(a), Some(b)) = (report.server_rss_after_bytes, report.server_rss_before_bytes) {
        report.server_bytes_per_connection = Some((a as f64 - b as f64) / report.connected.max(1) as f64);
    }
    if let Some(pid) = args.server_pid {
        report.server_peak_rss_bytes = peak_rss_bytes(pid);
    }
}

fn main() {
    let mut args = Args::parse();
    let procs = args.procs.max(1);
    args.procs = procs;
    let worker = args.worker.is_some();
    if worker {
        // A worker takes its share, under user names of its own.
        let k = worker_index(&args);
        share(&mut args, k, procs, "w");
        // Only the parent weighs the server.
        args.server_pid = None;
    }
    let mut report = Report {
        scenario: match args.scenario {
            Scenario::Group(n) => format!("group:{n}"),
            Scenario::PresenceStorm => "presence-storm".into(),
            Scenario::ReconnectStorm => "reconnect-storm".into(),
            other => format!("{other:?}").to_lowercase(),
        },
        connections_requested: args.connections,
        server_rss_before_bytes: args.server_pid.and_then(rss_bytes),
        procs,
        ..Default::default()
    };
    if procs > 1 && !worker {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(parent(&args, &mut report));
    } else {
        run_threads(&args, &mut report);
    }
    if worker {
        if let Some((l, a)) = &report.hists {
            report.latency_histogram = Some(encode_hist(l));
            report.ack_histogram = Some(encode_hist(a));
        }
        println!("{WORKER_REPORT}{}", serde_json::to_string(&report).unwrap());
        return;
    }
    percentiles(&mut report);
    if report.connect_seconds > 0.0 {
        report.connects_per_second = report.connected as f64 / report.connect_seconds;
    }
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).expect("write --json");
        println!("report written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        match plot::draw(path, &report) {
            Ok(()) => println!("plot written to {}", path.display()),
            Err(e) => eprintln!("plot: {e}"),
        }
    }
    if report.lost > 0 || report.duplicates > 0 {
        std::process::exit(2);
    }
}
