//! `reconnect-storm`: N/2 pairs chat; then a fraction of the receivers drop at once, their
//! partners keep sending, and the dropped all reconnect at once and `sync` from their cursors.
//! Checks that every message missed comes back exactly once (live ones in order, the sync's
//! replay in order, the two together complete), and measures each
//! client's time from reconnecting to `synced` (the latency figures of this scenario).

use crate::{connect_all, frame_json, hist, progress, Args, Report, Shared, Ws};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Messages each sender sends before the storm and while its partner is away.
const BEFORE: u64 = 5;
const WHILE_AWAY: u64 = 20;
const WAIT: Duration = Duration::from_secs(60);

pub async fn run(args: &Args, report: &mut Report) {
    let pairs = (args.connections / 2).max(1);
    let (senders, receivers): (Vec<String>, Vec<String>) =
        (0..pairs).map(|p| (format!("{}s{p}a", args.prefix), format!("{}s{p}b", args.prefix))).unzip();
    let mut users = senders.clone();
    users.extend(receivers.iter().cloned());
    let mut conns = connect_all(args, users, report).await;
    let rx_conns: Vec<Option<Ws>> = conns.split_off(pairs);
    let shared = Arc::new(Shared::with_histograms());
    let dropped = ((pairs as f64) * args.storm_fraction).round() as usize;
    // Phase 1: everyone chats; receivers learn their cursor.
    let mut sender_ws: Vec<Option<Ws>> = Vec::new();
    for (p, ws) in conns.into_iter().enumerate() {
        let Some(mut ws) = ws else {
            sender_ws.push(None);
            continue;
        };
        send_and_ack(&mut ws, &receivers[p], 0, BEFORE, &shared).await;
        sender_ws.push(Some(ws));
    }
    let mut kept = Vec::new();
    for (p, ws) in rx_conns.into_iter().enumerate() {
        let Some(mut ws) = ws else { continue };
        let conv = conv_of(&senders[p], &receivers[p]);
        let last = receive_live(&mut ws, &conv, BEFORE, &shared).await;
        if p < dropped {
            drop(ws); // The storm: these all go at once, below.
        } else {
            kept.push((p, ws, last));
        }
    }
    // Phase 2: partners of the dropped keep sending while they are away.
    let pb = progress(dropped as u64, "away");
    for (p, ws) in sender_ws.iter_mut().enumerate().take(dropped) {
        if let Some(ws) = ws {
            send_and_ack(ws, &receivers[p], BEFORE, WHILE_AWAY, &shared).await;
        }
        pb.inc(1);
    }
    pb.finish();
    // Phase 3: all of them come back at once and sync from their cursor.
    report.connected = 0;
    let t0 = Instant::now();
    let cpu = crate::report::CpuMark::now(args.cpu_of);
    let back = connect_all(args, receivers[..dropped].to_vec(), report).await;
    let mut tasks = Vec::new();
    for (p, ws) in back.into_iter().enumerate() {
        let Some(ws) = ws else { continue };
        let (conv, sh) = (conv_of(&senders[p], &receivers[p]), shared.clone());
        tasks.push(crate::rt::spawn(resync(ws, conv, BEFORE, BEFORE + WHILE_AWAY, sh, t0)));
    }
    for t in tasks {
        let _ = t.await;
    }
    report.storm_seconds = t0.elapsed().as_secs_f64();
    report.connected += kept.len() as u64 + sender_ws.iter().flatten().count() as u64;
    shared.finish(args, report, t0, cpu);
}

fn conv_of(a: &str, b: &str) -> String {
    if a < b {
        format!("d:{a}:{b}")
    } else {
        format!("d:{b}:{a}")
    }
}

/// Sends messages `from+1 ..= from+n` to `to` and waits for their acks.
async fn send_and_ack(ws: &mut Ws, to: &str, from: u64, n: u64, sh: &Shared) {
    for i in from + 1..=from + n {
        let frame = serde_json::json!({"t":"send","cmid":format!("s{i}"),"to":to,"body":format!("m{i}")});
        if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
            sh.errors.fetch_add(1, Relaxed);
            return;
        }
        sh.sent.fetch_add(1, Relaxed);
    }
    let mut acked = 0;
    while acked < n {
        match crate::rt::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(m))) => match frame_json(&m) {
                Some(v) if v["t"] == "ack" => {
                    acked += 1;
                    sh.acked.fetch_add(1, Relaxed);
                }
                Some(v) if v["t"] == "error" => {
                    acked += 1;
                    sh.errors.fetch_add(1, Relaxed);
                }
                _ => {}
            },
            _ => {
                sh.errors.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}

/// Receives `n` live messages of `conv`; returns the last seq.
async fn receive_live(ws: &mut Ws, conv: &str, n: u64, sh: &Shared) -> u64 {
    let mut last = 0;
    while last < n {
        match crate::rt::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(m))) => {
                let Some(v) = frame_json(&m) else { continue };
                if v["t"] == "msg" && v["conv"] == conv {
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    count(seq, &mut last, sh);
                }
            }
            _ => break,
        }
    }
    last
}

/// Checks one delivered seq against the last one seen.
fn count(seq: u64, last: &mut u64, sh: &Shared) {
    if seq <= *last {
        sh.duplicates.fetch_add(1, Relaxed);
        return;
    }
    if seq > *last + 1 {
        sh.lost.fetch_add(seq - *last - 1, Relaxed);
    }
    *last = seq;
    sh.delivered.fetch_add(1, Relaxed);
}

/// Syncs from `cursor` and takes messages (sync batches or live) until `want` and `synced`.
async fn resync(mut ws: Ws, conv: String, cursor: u64, want: u64, sh: Arc<Shared>, t0: Instant) {
    let cursors: BTreeMap<&str, u64> = [(conv.as_str(), cursor)].into();
    let frame = serde_json::json!({"t":"sync","cursors":cursors});
    if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
        sh.errors.fetch_add(1, Relaxed);
        return;
    }
    // Live messages start at connect, so they may overtake the sync's replay of older ones
    // (docs/protocol.md, Sync): each stream must be in order by itself, and together they must
    // hold every seq from the cursor on exactly once.
    let mut got = BTreeSet::new();
    let (mut last_live, mut last_replay) = (cursor, cursor);
    let mut synced = false;
    while !(synced && got.len() as u64 >= want - cursor) {
        let v = match crate::rt::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(m))) => match frame_json(&m) {
                Some(v) => v,
                None => continue,
            },
            _ => break,
        };
        let mut take = |seq: u64, last: &mut u64, what: &str| {
            if seq <= *last {
                eprintln!("{conv}: {what} out of order, seq {seq} after {last}");
                sh.errors.fetch_add(1, Relaxed);
            }
            *last = seq;
            if got.insert(seq) {
                sh.delivered.fetch_add(1, Relaxed);
            } else {
                sh.duplicates.fetch_add(1, Relaxed);
            }
        };
        match v["t"].as_str() {
            Some("sync") if v["conv"] == conv.as_str() => {
                for m in v["messages"].as_array().into_iter().flatten() {
                    take(m["seq"].as_u64().unwrap_or(0), &mut last_replay, "replay");
                }
            }
            Some("msg") if v["conv"] == conv.as_str() => take(v["seq"].as_u64().unwrap_or(0), &mut last_live, "live"),
            Some("synced") => synced = true,
            _ => {}
        }
    }
    let missing = (cursor + 1..=want).filter(|s| !got.contains(s)).count() as u64;
    sh.lost.fetch_add(missing, Relaxed);
    let mut h = hist();
    let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
    sh.latency.lock().unwrap().as_mut().unwrap().add(&h).unwrap();
}
