//! `echo`: for any WebSocket echo server (to compare other servers with the same tool). Each
//! connection sends text frames on an open-loop schedule, stamped with the time each was due;
//! the round trip is measured when the echo comes back. Echoes missing at the end are lost.

use crate::{connect_all, progress, Args, Report, Schedule, Shared};
use futures::StreamExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tungstenite::Message;

/// How long after the last send echoes are still waited for.
const ECHO_GRACE: Duration = Duration::from_secs(3);

pub async fn run(args: &Args, report: &mut Report) {
    let users: Vec<String> = (0..args.connections).map(|i| format!("{}e{i}", args.prefix)).collect();
    let conns: Vec<_> = connect_all(args, users, report).await.into_iter().flatten().collect();
    let shared = Arc::new(Shared::with_histograms());
    let n = conns.len().max(1);
    let per_conn = (args.rate as f64 / n as f64).max(0.001);
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let total = (per_conn * args.duration as f64).round() as u64;
    let pad = "x".repeat(args.payload.saturating_sub(20));
    let epoch = crate::traffic::Epoch::after(Duration::from_millis(200));
    let start = epoch.at;
    let cpu = crate::report::CpuMark::now(args.cpu_of);
    let pb = progress(total * n as u64, "echo");
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let (sh, pad, pb) = (shared.clone(), pad.clone(), pb.clone());
        let schedule = Schedule { epoch, start: start + interval.mul_f64(i as f64 / n as f64), interval, total, tick: args.send_tick() };
        tasks.push(crate::rt::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let sh2 = sh.clone();
            let reader = crate::rt::spawn(async move {
                let mut got = 0;
                let mut deadline = crate::rt::Deadline::at(schedule.end() + ECHO_GRACE);
                while got < schedule.total {
                    let Ok(Some(Ok(m))) = deadline.run(rx.next()).await else { break };
                    crate::early::awake();
                    let Message::Text(t) = m else { continue };
                    if let Some(sent) = t.split('|').next().and_then(|s| s.parse::<u64>().ok()) {
                        got += 1;
                        sh2.delivered.fetch_add(1, Relaxed);
                        sh2.record(&sh2.latency, sent);
                    }
                }
                sh2.lost.fetch_add(schedule.total - got, Relaxed);
            });
            let mut ticks = schedule.ticks();
            while let Some((_, stamp)) = ticks.next().await {
                if tx.send(Message::Text(format!("{stamp}|{pad}").into())).await.is_err() {
                    sh.errors.fetch_add(1, Relaxed);
                    break;
                }
                sh.sent.fetch_add(1, Relaxed);
                pb.inc(1);
            }
            let _ = reader.await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    pb.finish();
    shared.finish(args, report, start, cpu);
}
