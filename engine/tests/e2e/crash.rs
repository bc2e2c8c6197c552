//! Crash safety under traffic: senders keep sending while the engine is `kill -9`ed at random
//! points, several times. After each restart the clients retry what was not acknowledged (same
//! cmid, as the protocol asks). Checked against the clients' own records at the end:
//! every acknowledged message is in history exactly once, with the seq its ack named, seqs have
//! no holes, and the search index caught up with the last messages before the last crash.
//!
//! The kill points come from a seed printed at the start; `SHARDCHAT_CRASH_SEED=N` replays one.

use crate::common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// What the clients know: every cmid they sent, and the ack of those acknowledged.
#[derive(Default)]
struct Records {
    sent: Vec<(String, String)>,
    acked: HashMap<String, (String, u64)>,
}

const SENDERS: [(&str, &str); 4] = [("s0", "r0"), ("s1", "r0"), ("s2", "r1"), ("s3", "r1")];
const ROUNDS: usize = 4;

fn body(cmid: &str) -> String {
    format!("tok{}", cmid.replace('-', "q"))
}

/// Sends `cmid`s (and first the `retry` ones) one after another, ack-paced, until the
/// connection dies or `stop` is set. Never panics on a dead server: that is the point.
async fn sender(
    url: String,
    from: &'static str,
    to: &'static str,
    retry: Vec<String>,
    first: usize,
    rec: Arc<Mutex<Records>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else { return };
    let fresh = (first..).map(|n| format!("{from}-{n}"));
    for cmid in retry.into_iter().chain(fresh) {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        {
            let mut r = rec.lock().unwrap();
            if !r.sent.iter().any(|(_, c)| *c == cmid) {
                r.sent.push((from.to_string(), cmid.clone()));
            }
        }
        let frame = json!({"t":"send","cmid":cmid,"to":to,"body":body(&cmid)}).to_string();
        if ws.send(Message::Text(frame.clone().into())).await.is_err() {
            return;
        }
        loop {
            let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await else { return };
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["t"].as_str() {
                Some("ack") => {
                    assert_eq!(v["cmid"], cmid.as_str());
                    let conv = v["conv"].as_str().unwrap().to_string();
                    let mut r = rec.lock().unwrap();
                    if let Some(before) = r.acked.get(&cmid) {
                        assert_eq!(before, &(conv.clone(), seq(&v)), "a retried cmid must get its first ack again");
                    }
                    r.acked.insert(cmid.clone(), (conv, seq(&v)));
                    break;
                }
                // A fast machine outruns the send rate's burst within a round: the refusal
                // stored nothing and asks for the same cmid again later, as a client does.
                Some("error") if v["code"] == "rate_limited" => {
                    assert_eq!(v["cmid"], cmid.as_str(), "{v}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if ws.send(Message::Text(frame.clone().into())).await.is_err() {
                        return;
                    }
                }
                Some("error") => panic!("{v}"),
                _ => {}
            }
        }
    }
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_at_random_points_under_traffic() {
    let mut seed: u64 = std::env::var("SHARDCHAT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    eprintln!("crash test seed: SHARDCHAT_CRASH_SEED={seed}");
    // The receivers never connect: every message to them is owed a push, through the outbox.
    let hook = crate::common::webhook::receiver(0, 0).await;
    // A small send burst makes the `rate_limited` retry below happen in most rounds rather than
    // only on machines fast enough to outrun the default burst of 1000.
    let webhook = format!("http://127.0.0.1:{}/hook", hook.port);
    let mut s = Server::start(&["--push-webhook", &webhook, "--send-burst", "100"]);
    let rec = Arc::new(Mutex::new(Records::default()));
    let mut next = 0;
    for round in 0..ROUNDS {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks: Vec<_> = SENDERS
            .iter()
            .map(|&(from, to)| {
                // Retry what this sender sent but never saw acknowledged, before anything new.
                let retry: Vec<String> = {
                    let r = rec.lock().unwrap();
                    r.sent.iter().filter(|(f, c)| f == from && !r.acked.contains_key(c)).map(|(_, c)| c.clone()).collect()
                };
                tokio::spawn(sender(s.url(from, "d"), from, to, retry, next, rec.clone(), stop.clone()))
            })
            .collect();
        next += 100_000;
        let wait = 100 + rng(&mut seed) % 400;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if round + 1 < ROUNDS {
            s.kill();
        } else {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for t in tasks {
            t.await.unwrap();
        }
        let r = rec.lock().unwrap();
        eprintln!("round {round}: killed after {wait} ms; {} sent, {} acknowledged so far", r.sent.len(), r.acked.len());
        drop(r);
        if round + 1 < ROUNDS {
            s.restart();
        }
    }
    // The last round ends cleanly with every send acknowledged (its retries included).
    // Every sender has finished: the records are final.
    let r = std::mem::take(&mut *rec.lock().unwrap());
    assert!(r.acked.len() >= 40, "too little traffic to mean anything: {}", r.acked.len());
    let unacked: Vec<_> = r.sent.iter().filter(|(_, c)| !r.acked.contains_key(c)).collect();
    assert!(unacked.is_empty(), "the last round retries and finishes every send: {unacked:?}");
    assert_eq!(r.acked.values().map(|(conv, _)| conv).collect::<HashSet<_>>().len(), SENDERS.len());

    // The push outbox survived the crashes: every acknowledged message to an offline receiver
    // was notified at least once (a crash between a post and its delete repeats one). Checked
    // before the receivers connect below: a message whose fan-out reaches the receiver's home
    // shard after its connection is delivered live, and its push rightly withdrawn.
    for user in ["r0", "r1"] {
        let owed = r.acked.values().filter(|(conv, _)| conv.contains(&format!(":{user}"))).count() as u64;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let notified: u64 = hook.got.lock().unwrap().iter().filter(|n| n["user"] == user).map(|n| n["count"].as_u64().unwrap()).sum();
            if notified >= owed {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{user}: {notified} notified of {owed} acknowledged messages");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // History, as a member reads it: every seq from 1 to the last, each cmid once, as acked.
    let mut reader = Client::connect(&s, "r0", "check").await;
    let mut reader1 = Client::connect(&s, "r1", "check").await;
    let mut by_conv: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for conv in r.acked.values().map(|(conv, _)| conv.clone()).collect::<HashSet<_>>() {
        let c = if conv.contains(":r0") { &mut reader } else { &mut reader1 };
        let mut before: Option<u64> = None;
        let mut all = Vec::new();
        loop {
            let mut q = json!({"t":"history","conv":conv,"limit":200,"ref":"h"});
            if let Some(b) = before {
                q["before"] = b.into();
            }
            c.send(q).await;
            let page = c.recv_where(|v| v["t"] == "history").await;
            let msgs = page["messages"].as_array().unwrap().clone();
            if msgs.is_empty() {
                break;
            }
            before = Some(seq(msgs.last().unwrap()));
            all.extend(msgs.iter().map(|m| (seq(m), m["cmid"].as_str().unwrap().to_string())));
        }
        all.reverse();
        by_conv.insert(conv, all);
    }
    let mut stored: HashMap<String, (String, u64)> = HashMap::new();
    for (conv, msgs) in &by_conv {
        for (i, (sq, cmid)) in msgs.iter().enumerate() {
            assert_eq!(*sq, i as u64 + 1, "{conv}: a hole or a repeat in seq at {cmid}");
            assert!(stored.insert(cmid.clone(), (conv.clone(), *sq)).is_none(), "{cmid} stored twice");
        }
    }
    for (cmid, ack) in &r.acked {
        assert_eq!(stored.get(cmid), Some(ack), "acknowledged {cmid} is not in history as acked");
    }
    for cmid in stored.keys() {
        assert!(r.sent.iter().any(|(_, c)| c == cmid), "{cmid} was never sent");
    }

    // The search index caught up after the crashes: the last message acked before the last kill
    // is found.
    let (cmid, (conv, _)) = r
        .acked
        .iter()
        .filter(|(c, _)| c.split('-').nth(1).unwrap().parse::<usize>().unwrap() < next - 100_000)
        .max_by_key(|(_, (_, sq))| *sq)
        .unwrap();
    let member = if conv.contains(":r0") { "r0" } else { "r1" };
    let q = body(cmid);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v: Value = reqwest::get(s.rest(&format!("/v1/search?q={q}"), member)).await.unwrap().json().await.unwrap();
        if v.to_string().contains(&q) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "search never found {q}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
