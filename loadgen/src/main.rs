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
//! (default: one per core, or half the cores when the server is on this host: `procs.rs`) each
//! run the scenario with their share of the work (`rt.rs`).

mod args;
mod early;
mod echo;
mod frames;
mod mixed;
mod plot;
mod procs;
mod report;
mod rt;
mod storm;
mod traffic;

use clap::Parser;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tungstenite::Message;

use args::*;
use frames::*;
use procs::*;
use report::*;
use traffic::*;

use rt::Ws;

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
    let leader = ALL_CONNECTED.get().is_none_or(|b| b.wait().is_leader());
    if leader {
        let here = CONNECTED_HERE.load(Relaxed);
        if args.worker.is_some() {
            println!("{WORKER_CONNECTED}{here}");
        }
        // Let the server settle (allocator, handshake buffers freed) before reading its RSS.
        glommio::timer::sleep(Duration::from_secs(2)).await;
        if let Some(pid) = args.server_pid {
            report.server_rss_after_bytes = rss_bytes(pid);
            report.server_bytes_per_connection = growth_per_connection(report.server_rss_after_bytes, report.server_rss_before_bytes, here);
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
    for second in 1..=args.duration {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        pb.inc(1);
        // A second before the hold ends (a second into it at the least): the server's memory
        // once the connections have been idle (a server that parks idle connections has parked
        // them by then, if the hold is longer than its parking delay).
        if leader && args.worker.is_none() && second == args.duration.saturating_sub(1).max(1) {
            if let Some(pid) = args.server_pid {
                report.server_rss_idle_bytes = rss_bytes(pid);
                let here = CONNECTED_HERE.load(Relaxed);
                report.server_bytes_per_connection_idle =
                    growth_per_connection(report.server_rss_idle_bytes, report.server_rss_before_bytes, here);
            }
        }
    }
    pb.finish();
    for t in tasks {
        if !t.await {
            report.errors += 1;
        }
    }
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

fn main() {
    let mut args = Args::parse();
    let procs = args.procs.max(1);
    args.procs = procs;
    let worker = args.worker.is_some();
    args.cpu_of = args.server_pid;
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
        send_tick_us: args.send_tick_us,
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
    cpu_per_message(&mut report);
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
