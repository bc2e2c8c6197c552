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
//! - `presence-storm`: N users each subscribe to `--subs` others; then all disconnect and
//!   reconnect at once and subscribe again. Reports presence frames received, the server's CPU
//!   time and peak memory (`--server-pid`).
//!
//! Prints a table, optionally writes `--json`. Runs on tokio (the thread-per-core load generator
//! is its own issue).

use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Idle,
    Direct,
    Group(usize),
    PresenceStorm,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    match s {
        "idle" => Ok(Scenario::Idle),
        "direct" => Ok(Scenario::Direct),
        "presence-storm" => Ok(Scenario::PresenceStorm),
        _ => match s.strip_prefix("group:").map(str::parse::<usize>) {
            Some(Ok(n)) if (2..=500).contains(&n) => Ok(Scenario::Group(n)),
            _ => Err("expected idle, direct, group:SIZE (2..=500) or presence-storm".into()),
        },
    }
}

#[derive(Parser, Debug)]
#[command(name = "shardchat-loadgen", about = "Load generator for shardchat")]
struct Args {
    /// WebSocket endpoint, e.g. ws://127.0.0.1:7700/ws (dev-auth: users log in with ?user=)
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    target: String,
    /// idle | direct | group:SIZE | presence-storm
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
}

#[derive(Serialize, Default)]
struct Report {
    scenario: String,
    connections_requested: usize,
    connected: u64,
    connect_failures: u64,
    connect_seconds: f64,
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

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(target: &str, user: &str) -> Result<Ws, String> {
    let url = format!("{target}?user={user}&device=lg");
    tokio_tungstenite::connect_async(url).await.map(|(ws, _)| ws).map_err(|e| e.to_string())
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
    let sem = Arc::new(Semaphore::new(args.connect_concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for u in users {
        let (sem, target, pb) = (sem.clone(), args.target.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let r = connect(&target, &u).await;
            pb.inc(1);
            r
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
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
    // Let the server settle (allocator, handshake buffers freed) before reading its RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(pid) = args.server_pid {
        report.server_rss_after_bytes = rss_bytes(pid);
        if let (Some(a), Some(b)) = (report.server_rss_after_bytes, report.server_rss_before_bytes) {
            report.server_bytes_per_connection = Some(a.saturating_sub(b) as f64 / report.connected.max(1) as f64);
        }
    }
    let pb = progress(args.duration, "hold");
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    for ws in conns.into_iter().flatten() {
        let interval = Duration::from_secs(args.ping_interval);
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            loop {
                let next = Instant::now() + interval;
                if next > deadline {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
                if tx.send(Message::Text(r#"{"t":"ping"}"#.into())).await.is_err() {
                    return false;
                }
                if !matches!(rx.next().await, Some(Ok(_))) {
                    return false;
                }
            }
            true
        }));
    }
    for _ in 0..args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pb.inc(1);
    }
    pb.finish();
    for t in tasks {
        if !t.await.unwrap() {
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
    let shared = Arc::new(Shared { latency: Mutex::new(Some(hist())), ack_latency: Mutex::new(Some(hist())), ..Default::default() });
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
            (format!(r#""to":"{}g{g}m1""#, args.prefix), 1)
        } else {
            let names: Vec<String> = (1..size).map(|m| format!("{}g{g}m{m}", args.prefix)).collect();
            match create_group(&mut members[0], &names).await {
                Some(conv) => (format!(r#""conv":"{conv}""#), 2),
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
        tasks.push(tokio::spawn(sender(sender_ws, dest, sh.clone(), pad, start + phase, interval, total_per_sender)));
        for ws in members {
            tasks.push(tokio::spawn(receiver(
                ws,
                sh.clone(),
                total_per_sender,
                first_seq,
                start + Duration::from_secs(args.duration + 10),
            )));
        }
    }
    let pb = progress(total_per_sender * n_plans as u64 * receivers_per_group, "deliver");
    let ticker = {
        let sh = shared.clone();
        let pb = pb.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                pb.set_position(sh.delivered.load(Relaxed));
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    ticker.abort();
    let elapsed = start.elapsed().as_secs_f64();
    pb.finish();
    report.sent = shared.sent.load(Relaxed);
    report.acked = shared.acked.load(Relaxed);
    report.delivered = shared.delivered.load(Relaxed);
    report.duplicates = shared.duplicates.load(Relaxed);
    report.lost = shared.lost.load(Relaxed);
    report.errors += shared.errors.load(Relaxed);
    report.send_seconds = elapsed;
    report.delivered_per_second = report.delivered as f64 / args.duration.max(1) as f64;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let lat = shared.latency.lock().unwrap().take().unwrap();
    let ack = shared.ack_latency.lock().unwrap().take().unwrap();
    report.latency_p50_ms = ms(&lat, 0.5);
    report.latency_p90_ms = ms(&lat, 0.9);
    report.latency_p99_ms = ms(&lat, 0.99);
    report.latency_p999_ms = ms(&lat, 0.999);
    report.latency_max_ms = lat.max() as f64 / 1000.0;
    report.ack_p50_ms = ms(&ack, 0.5);
    report.ack_p99_ms = ms(&ack, 0.99);
}

/// Creates a group with `members` (the creator is added as admin) and returns its id.
async fn create_group(ws: &mut Ws, members: &[String]) -> Option<String> {
    let frame = serde_json::json!({"t":"group_create","name":"load","members":members,"ref":"lg"});
    ws.send(Message::Text(frame.to_string().into())).await.ok()?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.ok()??.ok()?;
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
async fn sender(ws: Ws, dest: String, sh: Arc<Shared>, pad: String, start: Instant, interval: Duration, total: u64) {
    let (mut tx, mut rx) = ws.split();
    let sh2 = sh.clone();
    let acks = tokio::spawn(async move {
        let mut local = hist();
        let mut n = 0;
        while n < total {
            match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
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
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        sh2.ack_latency.lock().unwrap().as_mut().unwrap().add(&local).unwrap();
    });
    // `start` lies in the future; anchor the wall clock to it once.
    let start0 = start;
    tokio::time::sleep_until(start.into()).await;
    let wall0 = now_us();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        // The scheduled time on the wall clock: when this send was due, not when it happened.
        let stamp = wall0 + due.saturating_duration_since(start0).as_micros() as u64;
        let frame = format!(r#"{{"t":"send","cmid":"{i}:{stamp}",{dest},"body":"{stamp}|{pad}"}}"#);
        if tx.send(Message::Text(frame.into())).await.is_err() {
            sh.errors.fetch_add(1, Relaxed);
            break;
        }
        sh.sent.fetch_add(1, Relaxed);
    }
    let _ = acks.await;
}

/// Receives until `total` messages arrived or the deadline; checks seq contiguity from
/// `first_seq` (system messages, like a group's creation, are not counted).
async fn receiver(ws: Ws, sh: Arc<Shared>, total: u64, first_seq: u64, deadline: Instant) {
    let (_tx, mut rx) = ws.split();
    let mut local = hist();
    let mut next_seq = first_seq;
    let mut got = 0u64;
    while got < total {
        let m = match tokio::time::timeout_at(deadline.into(), rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            _ => break,
        };
        let v: serde_json::Value = serde_json::from_str(&m).unwrap_or_default();
        if v["t"] != "msg" || v["kind"] == "system" {
            continue;
        }
        let seq = v["seq"].as_u64().unwrap_or(0);
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
        if let Some(sent) = v["body"].as_str().and_then(|b| b.split('|').next()).and_then(|s| s.parse::<u64>().ok()) {
            let _ = local.record(now_us().saturating_sub(sent).max(1));
        }
    }
    if got < total {
        sh.lost.fetch_add(total - got, Relaxed);
    }
    sh.latency.lock().unwrap().as_mut().unwrap().add(&local).unwrap();
}

/// Connects `users`, subscribes each to `subs` others and waits for the initial presence frames.
async fn subscribe_all(args: &Args, users: &[String], report: &mut Report) -> Vec<tokio::task::JoinHandle<(u64, Option<Ws>)>> {
    let conns = connect_all(args, users.to_vec(), report).await;
    let n = users.len();
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let Some(mut ws) = ws else { continue };
        let targets: Vec<&String> = (1..=args.subs.min(n - 1)).map(|k| &users[(i + k) % n]).collect();
        let frame = serde_json::json!({"t":"presence_sub","users":targets}).to_string();
        let want = targets.len() as u64;
        tasks.push(tokio::spawn(async move {
            if ws.send(Message::Text(frame.into())).await.is_err() {
                return (0, None);
            }
            let mut got = 0;
            while got < want {
                match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
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
        first.push(t.await.unwrap());
    }
    println!("subscribed: {} presence frames", first.iter().map(|(n, _)| n).sum::<u64>());
    // The storm: everyone drops at once, then everyone comes back and subscribes again.
    let cpu0 = args.server_pid.and_then(cpu_seconds);
    let t0 = Instant::now();
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    report.connected = 0;
    let again = subscribe_all(args, &users, report).await;
    let mut frames = 0;
    let mut held = Vec::new();
    for t in again {
        let (n, ws) = t.await.unwrap();
        frames += n;
        held.push(ws);
    }
    // Coalesced offline/online updates still in flight arrive within the coalescing interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    report.storm_seconds = t0.elapsed().as_secs_f64();
    let mut late = 0u64;
    for ws in held.iter_mut().flatten() {
        while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(1), ws.next()).await {
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
        ("server RSS before", r.server_rss_before_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or("-".into())),
        ("server RSS after", r.server_rss_after_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or("-".into())),
        ("bytes per connection", r.server_bytes_per_connection.map(|b| format!("{b:.0}")).unwrap_or("-".into())),
        ("sent / acked / delivered", format!("{} / {} / {}", r.sent, r.acked, r.delivered)),
        ("lost / duplicates / errors", format!("{} / {} / {}", r.lost, r.duplicates, r.errors)),
        ("delivered per second", format!("{:.0}", r.delivered_per_second)),
        ("latency p50 / p90 / p99", format!("{:.2} / {:.2} / {:.2} ms", r.latency_p50_ms, r.latency_p90_ms, r.latency_p99_ms)),
        ("latency p99.9 / max", format!("{:.2} / {:.2} ms", r.latency_p999_ms, r.latency_max_ms)),
        ("ack p50 / p99", format!("{:.2} / {:.2} ms", r.ack_p50_ms, r.ack_p99_ms)),
        ("presence frames (storm)", format!("{} in {:.1} s", r.presence_frames, r.storm_seconds)),
        ("server CPU time (storm)", r.server_cpu_seconds.map(|c| format!("{c:.2} s")).unwrap_or("-".into())),
        ("server peak RSS", r.server_peak_rss_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or("-".into())),
    ];
    println!("\n| {:<28} | {:<44} |", "figure", "value");
    println!("|{}|{}|", "-".repeat(30), "-".repeat(46));
    for (k, v) in rows {
        println!("| {k:<28} | {v:<44} |");
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut report = Report {
        scenario: match args.scenario {
            Scenario::Group(n) => format!("group:{n}"),
            Scenario::PresenceStorm => "presence-storm".into(),
            other => format!("{other:?}").to_lowercase(),
        },
        connections_requested: args.connections,
        server_rss_before_bytes: args.server_pid.and_then(rss_bytes),
        ..Default::default()
    };
    match args.scenario {
        Scenario::Idle => idle(&args, &mut report).await,
        Scenario::Direct => direct(&args, &mut report).await,
        Scenario::Group(size) => fanout(&args, &mut report, size).await,
        Scenario::PresenceStorm => presence_storm(&args, &mut report).await,
    }
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).expect("write --json");
        println!("report written to {}", path.display());
    }
    if report.lost > 0 || report.duplicates > 0 {
        std::process::exit(2);
    }
}
