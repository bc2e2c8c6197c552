//! `mixed`: a day in a chat app, compressed. Users in groups of `--group-size`; everyone watches
//! the presence of `--subs` others, shows a typing indicator before each message it sends, and
//! marks every fifth message it receives as read (authors get `receipt_counts`). Every member
//! sends, open loop, at an equal share of `--rate`. Delivery latency, loss and duplicates are
//! counted as in the other scenarios; typing, receipt and presence frames are counted too.

use crate::{connect_all, create_group, frame_json, progress, Args, Report, Schedule, Shared, Ws};
use futures::StreamExt;
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tungstenite::Message;

/// A receiver marks every this-many-th message it receives as read.
const READ_EVERY: u64 = 5;
/// How long after the last scheduled send deliveries are still waited for.
const GRACE: Duration = Duration::from_secs(10);

pub async fn run(args: &Args, report: &mut Report) {
    let size = args.group_size.clamp(2, 500);
    let groups = (args.connections / size).max(1);
    let users: Vec<String> = (0..groups * size).map(|i| format!("{}x{}m{}", args.prefix, i / size, i % size)).collect();
    let mut conns = connect_all(args, users.clone(), report).await.into_iter();
    let shared = Arc::new(Shared::with_histograms());
    let n_users = users.len();
    let per_user = (args.rate as f64 / n_users as f64).max(0.001);
    let interval = Duration::from_secs_f64(1.0 / per_user);
    let total = (per_user * args.duration as f64).round() as u64;
    let pad = "x".repeat(args.payload.saturating_sub(24));
    let pb = progress(groups as u64, "groups");
    let mut plans = Vec::new();
    for g in 0..groups {
        let mut members: Vec<Ws> = (0..size).filter_map(|_| conns.next().flatten()).collect();
        if members.len() < size {
            report.errors += 1;
            continue;
        }
        let names: Vec<String> = (1..size).map(|m| users[g * size + m].clone()).collect();
        let Some(conv) = create_group(&mut members[0], &names).await else {
            report.errors += 1;
            continue;
        };
        plans.push((g, conv, members));
        pb.inc(1);
    }
    pb.finish();
    let epoch = crate::traffic::Epoch::after(Duration::from_millis(500));
    let start = epoch.at;
    let cpu = crate::report::CpuMark::now(args.cpu_of);
    let pb = progress(total * n_users as u64, "send");
    let mut tasks = Vec::new();
    for (g, conv, members) in plans {
        for (m, ws) in members.into_iter().enumerate() {
            let i = g * size + m;
            let watch: Vec<String> = (1..=args.subs.min(n_users - 1)).map(|k| users[(i + k) % n_users].clone()).collect();
            let schedule =
                Schedule { epoch, start: start + interval.mul_f64(i as f64 / n_users as f64), interval, total, tick: args.send_tick() };
            let expect = total * (size as u64 - 1);
            let (conv, sh, pad, pb) = (conv.clone(), shared.clone(), pad.clone(), pb.clone());
            tasks.push(crate::rt::spawn(member(ws, conv, watch, schedule, expect, sh, pad, pb)));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    pb.finish();
    shared.finish(args, report, start, cpu);
    report.typing_frames = shared.typing.load(Relaxed);
    report.receipt_frames = shared.receipts.load(Relaxed);
    report.presence_frames = shared.presence.load(Relaxed);
}

#[allow(clippy::too_many_arguments)]
async fn member(
    ws: Ws,
    conv: String,
    watch: Vec<String>,
    s: Schedule,
    expect: u64,
    sh: Arc<Shared>,
    pad: String,
    pb: indicatif::ProgressBar,
) {
    let (mut tx, mut rx) = ws.split();
    let (reads_tx, mut reads_rx) = futures::channel::mpsc::unbounded::<u64>();
    let sh2 = sh.clone();
    let conv2 = conv.clone();
    let reader = crate::rt::spawn(async move {
        let mut seen = HashSet::new();
        let mut deadline = crate::rt::Deadline::at(s.end() + GRACE);
        let mut acks = 0;
        while (seen.len() as u64) < expect || acks < s.total {
            let Ok(Some(Ok(m))) = deadline.run(rx.next()).await else { break };
            crate::early::awake();
            let Some(v) = frame_json(&m) else { continue };
            match v["t"].as_str() {
                Some("msg") if v["conv"] == conv2.as_str() && v["kind"] != "system" => {
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    if !seen.insert(seq) {
                        sh2.duplicates.fetch_add(1, Relaxed);
                        continue;
                    }
                    sh2.delivered.fetch_add(1, Relaxed);
                    if let Some(sent) = v["body"].as_str().and_then(|b| b.split('|').next()).and_then(|x| x.parse::<u64>().ok()) {
                        sh2.record(&sh2.latency, sent);
                    }
                    if (seen.len() as u64).is_multiple_of(READ_EVERY) {
                        let _ = reads_tx.unbounded_send(seq);
                    }
                }
                Some("ack") => {
                    acks += 1;
                    sh2.acked.fetch_add(1, Relaxed);
                    if let Some(sent) = v["cmid"].as_str().and_then(|c| c.split(':').nth(1)).and_then(|x| x.parse::<u64>().ok()) {
                        sh2.record(&sh2.ack_latency, sent);
                    }
                }
                Some("typing") => {
                    sh2.typing.fetch_add(1, Relaxed);
                }
                // Groups get coalesced `receipt_counts`, not a frame per reader.
                Some("receipt" | "receipt_counts") => {
                    sh2.receipts.fetch_add(1, Relaxed);
                }
                Some("presence") => {
                    sh2.presence.fetch_add(1, Relaxed);
                }
                Some("error") => {
                    sh2.errors.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
        sh2.lost.fetch_add(expect.saturating_sub(seen.len() as u64), Relaxed);
    });
    let _ = tx.send(Message::Text(json!({"t":"presence_sub","users":watch}).to_string().into())).await;
    let mut ticks = s.ticks();
    while let Some((k, stamp)) = ticks.next().await {
        while let Ok(seq) = reads_rx.try_recv() {
            let _ = tx.send(Message::Text(json!({"t":"read","conv":conv,"seq":seq}).to_string().into())).await;
        }
        let typing = json!({"t":"typing","conv":conv}).to_string();
        let send = json!({"t":"send","cmid":format!("{k}:{stamp}"),"conv":conv,"body":format!("{stamp}|{pad}")}).to_string();
        if tx.send(Message::Text(typing.into())).await.is_err() || tx.send(Message::Text(send.into())).await.is_err() {
            sh.errors.fetch_add(1, Relaxed);
            break;
        }
        sh.sent.fetch_add(1, Relaxed);
        pb.inc(1);
    }
    let _ = reader.await;
}
