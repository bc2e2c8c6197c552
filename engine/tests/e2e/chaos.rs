//! Chaos on the disk under the embedded store.
//!
//! A slow disk: every fsync delayed (an LD_PRELOAD shim, `common/slow_fsync.c`). Acks wait for
//! the disk and nothing else does: pings and history reads are answered meanwhile, and reads do
//! not show a message before it is durable. Ops that
//! pile up past `--owner-pending-ops-max` are refused with `unavailable` and their cmid, a crash
//! in the middle of a slow fsync loses nothing acknowledged, and the refused sends go through
//! when retried.
//!
//! A full disk: the data directory on a small tmpfs that fills up. Sends are answered `unavailable` (never acked unstored). The store then refuses all
//! writes (fjall after a failed journal write), so the engine exits with an error for its
//! supervisor to restart it, as fjall advises; restarted once space is back, it recovers from the
//! journal: every acknowledged message is in history once, with dense seqs, and the refused
//! sends go through when retried.
//!
//! The full disk needs `mount` (root with CAP_SYS_ADMIN, as where CI runs), the slow disk a C
//! compiler (`cc`); elsewhere each is skipped with a message, and under CI neither may be.

use crate::common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size_mb: u32) -> Option<(tempfile::TempDir, Tmpfs)> {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skip("cannot mount a tmpfs (needs root with CAP_SYS_ADMIN)");
            return None;
        }
        Some((dir, Tmpfs(at)))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem at `dir` with a ballast file; returns its path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_refuses_sends_loses_nothing_acknowledged_and_recovers_when_space_returns() {
    let Some((_keep, fs)) = Tmpfs::mount(64) else { return };
    let data = fs.0.join("data");
    let mut s = Server::start_in(&data, &[]);
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut acked: Vec<(u64, String)> = Vec::new();
    for i in 0..5 {
        let v = a.dm("bob", &format!("before{i}"), "x").await;
        assert_eq!(v["t"], "ack", "{v}");
        acked.push((seq(&v), format!("before{i}")));
    }

    // The disk fills up: sends are refused with `unavailable` (and their cmid), never acked. The
    // first failed journal write is fatal and the engine starts to stop: a few more sends may be
    // refused before it closes the connection, or none (on a busy machine the close came before
    // the second), so the loop ends at three refusals or at the close, whichever comes first.
    let ballast = fill(&fs.0);
    let mut refused = Vec::new();
    let mut i = 0;
    while refused.len() < 3 {
        i += 1;
        assert!(i < 2000, "a full disk never refused a send");
        let cmid = format!("full{i}");
        let Some(v) = dm_unless_closed(&mut a, &cmid, &"y".repeat(2000)).await else {
            // The send that met the close has no answer: never acked, so the final check below
            // also proves it was not stored.
            assert!(!refused.is_empty(), "the engine closed the connection without refusing the send that failed");
            break;
        };
        match v["t"].as_str() {
            Some("ack") => acked.push((seq(&v), cmid)),
            _ => {
                assert_eq!((v["code"].as_str(), v["cmid"].as_str()), (Some("unavailable"), Some(cmid.as_str())), "{v}");
                refused.push(cmid);
            }
        }
    }
    // The store refuses writes for good: the engine stops on its own, with an error, rather
    // than answer `unavailable` forever.
    let status = s.wait_exit(Duration::from_secs(15));
    assert!(!status.success(), "a failed store must end the process with an error: {status}");
    drop(a);

    // Space returns; the supervisor (here, the test) restarts it, and it recovers.
    std::fs::remove_file(&ballast).unwrap();
    s.restart();
    let mut a = Client::connect(&s, "alice", "d").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for cmid in &refused {
        loop {
            let v = a.dm("bob", cmid, "retried").await;
            if v["t"] == "ack" {
                acked.push((seq(&v), cmid.clone()));
                break;
            }
            assert!(Instant::now() < deadline, "the engine never recovered: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let v = a.dm("bob", "after", "z").await;
    assert_eq!(v["t"], "ack", "{v}");
    acked.push((seq(&v), "after".into()));

    // And all of it survives a crash.
    drop(a);
    s.kill();
    s.restart();
    let url = s.rest("/v1/conversations/d:alice:bob/messages?after=0&limit=200", "alice");
    let page: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let stored: Vec<(u64, String)> =
        page["messages"].as_array().unwrap().iter().map(|m| (seq(m), m["cmid"].as_str().unwrap().to_string())).collect();
    acked.sort();
    assert_eq!(stored, acked, "every acknowledged message once, with its seq, nothing else");
    assert_eq!(stored.iter().map(|(q, _)| *q).collect::<Vec<_>>(), (1..=stored.len() as u64).collect::<Vec<_>>());
}

/// Sends a direct message from `a` to bob and gives its answer (an ack or an error), or None once
/// the engine has closed the connection, which a stopping engine does with 1001 (going away).
async fn dm_unless_closed(a: &mut Client, cmid: &str, body: &str) -> Option<serde_json::Value> {
    let frame = json!({"t":"send","cmid":cmid,"to":"bob","body":body});
    a.ws.send(Message::Text(frame.to_string().into())).await.ok()?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), a.ws.next()).await.expect("neither an answer nor a close") {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["t"] == "ack" && v["cmid"] == cmid || v["t"] == "error" {
                    return Some(v);
                }
            }
            Some(Ok(Message::Close(f))) => {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(1001), "a stopping engine says it is going away");
                return None;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Builds the slow-fsync shim into `dir` with the system C compiler.
fn slow_fsync_shim(dir: &Path) -> Option<PathBuf> {
    let out = dir.join("slow_fsync.so");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/common/slow_fsync.c");
    let ok = Command::new("cc").args(["-shared", "-fPIC", "-O2", "-o"]).arg(&out).arg(src).arg("-ldl").status().is_ok_and(|s| s.success());
    if !ok {
        skip("no C compiler (`cc`) to build the slow-fsync shim");
        return None;
    }
    Some(out)
}

/// Sends `cmids` to bob without waiting, then reads until each has its one answer: Some(seq)
/// for an ack, None for `unavailable` (which must carry the cmid).
async fn pipelined(a: &mut Client, cmids: &[String]) -> BTreeMap<String, Option<u64>> {
    for cmid in cmids {
        a.send(json!({"t":"send","to":"bob","cmid":cmid,"body":"y"})).await;
    }
    let mut answers = BTreeMap::new();
    while answers.len() < cmids.len() {
        let v = a.recv().await;
        let cmid = v["cmid"].as_str().unwrap_or_else(|| panic!("an answer without its cmid: {v}")).to_string();
        let answer = match v["t"].as_str() {
            Some("ack") => Some(seq(&v)),
            _ => {
                assert_eq!(v["code"], "unavailable", "{v}");
                None
            }
        };
        assert!(answers.insert(cmid, answer).is_none(), "two answers for one send: {v}");
    }
    answers
}

#[tokio::test]
async fn a_slow_disk_delays_acks_not_the_engine_sheds_the_excess_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(shim) = slow_fsync_shim(tmp.path()) else { return };
    let (delay, fsyncs) = (tmp.path().join("delay_ms"), tmp.path().join("fsyncs"));
    std::fs::write(&delay, "0").unwrap();
    let env = [
        ("LD_PRELOAD", shim.to_str().unwrap()),
        ("SLOW_FSYNC_CONTROL", delay.to_str().unwrap()),
        ("SLOW_FSYNC_COUNT", fsyncs.to_str().unwrap()),
    ];
    let mut s = Server::start_in_env(&tmp.path().join("data"), &["--owner-pending-ops-max", "16"], &env);
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut b = Client::connect(&s, "bob", "d").await;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..3 {
        let v = a.dm("bob", &format!("fast{i}"), "x").await;
        acked.insert(format!("fast{i}"), seq(&v));
    }
    let synced = std::fs::metadata(&fsyncs).map(|m| m.len()).unwrap_or(0);
    assert!(synced >= 3, "each acked commit fsyncs through the shim: {synced} fsyncs seen");

    // 1.2 s an fsync: the ack waits for it; a ping and a history read sent after it do not.
    // The read runs while the message is written but not yet durable: it must not show it (a
    // crash now would take it back).
    std::fs::write(&delay, "1200").unwrap();
    let sent = Instant::now();
    a.send(json!({"t":"send","to":"bob","cmid":"slow0","body":"x"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.send(json!({"t":"history","conv":"d:alice:bob","ref":"h"})).await;
    b.send(json!({"t":"sync","cursors":{"d:alice:bob":0}})).await;
    a.send(json!({"t":"ping","ref":"p"})).await;
    let mut order = Vec::new();
    while order.len() < 3 {
        let v = a.recv().await;
        let t = v["t"].as_str().unwrap().to_string();
        if t == "history" {
            let cmids: Vec<&str> = v["messages"].as_array().unwrap().iter().filter_map(|m| m["cmid"].as_str()).collect();
            assert_eq!(cmids, ["fast2", "fast1", "fast0"], "durable messages only, newest first: {v}");
        }
        if t == "ack" {
            assert!(sent.elapsed() >= Duration::from_millis(1200), "acked before its fsync was done");
            acked.insert("slow0".into(), seq(&v));
        }
        order.push(t);
    }
    assert_eq!(order.last().map(String::as_str), Some("ack"), "the ping and the read are answered while the commit waits: {order:?}");
    // bob's sync ran during the fsync too: it ends at the last durable seq, and the message comes
    // live once durable (a cursor saved from `synced` never skips it).
    let (mut synced, mut live) = (None, None);
    while synced.is_none() || live.is_none() {
        let v = b.recv().await;
        match v["t"].as_str() {
            Some("synced") => synced = Some(v["convs"]["d:alice:bob"].as_u64().unwrap()),
            Some("msg") if v["cmid"] == "slow0" => live = Some(seq(&v)),
            _ => {}
        }
    }
    assert_eq!((synced, live), (Some(3), Some(4)));

    // A burst while the disk lags: one commit runs, 16 sends wait for the next, the rest are
    // refused with their cmid. Every send gets exactly one answer.
    std::fs::write(&delay, "600").unwrap();
    let burst: Vec<String> = (0..60).map(|i| format!("burst{i}")).collect();
    let answers = pipelined(&mut a, &burst).await;
    let refused: Vec<String> = answers.iter().filter(|(_, a)| a.is_none()).map(|(c, _)| c.clone()).collect();
    acked.extend(answers.iter().filter_map(|(c, a)| a.map(|q| (c.clone(), q))));
    assert!(!refused.is_empty() && refused.len() < burst.len(), "some sends wait, the excess is refused: {answers:?}");
    assert_eq!(metric_sum(&s, "shardchat_overloaded_total", "").await, refused.len() as f64);
    let slow =
        metric_sum(&s, "shardchat_commit_seconds_count", "").await - metric_sum(&s, "shardchat_commit_seconds_bucket", "le=\"0.5\"").await;
    assert!(slow >= 2.0, "the commit latency metric shows the slow disk: {slow} commits over 0.5 s");

    // A crash in the middle of a slow fsync: what was in flight was never acked.
    std::fs::write(&delay, "5000").unwrap();
    let in_flight: Vec<String> = (0..5).map(|i| format!("inflight{i}")).collect();
    for cmid in &in_flight {
        a.send(json!({"t":"send","to":"bob","cmid":cmid,"body":"y"})).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.kill();
    drop(a);

    // The disk is fast again; the engine restarts, and every retry gets through: the stored ones
    // with their first seq (dedup), the rest as new messages.
    std::fs::write(&delay, "0").unwrap();
    s.restart();
    let mut a = Client::connect(&s, "alice", "d").await;
    for cmid in refused.iter().chain(&in_flight) {
        let v = a.dm("bob", cmid, "retried").await;
        assert_eq!(v["t"], "ack", "{v}");
        acked.insert(cmid.clone(), seq(&v));
    }
    let url = s.rest("/v1/conversations/d:alice:bob/messages?after=0&limit=200", "alice");
    let page: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let stored: BTreeMap<String, u64> =
        page["messages"].as_array().unwrap().iter().map(|m| (m["cmid"].as_str().unwrap().to_string(), seq(m))).collect();
    assert_eq!(stored.len(), page["messages"].as_array().unwrap().len(), "a cmid stored twice");
    assert_eq!(stored, acked, "every acknowledged message once, with its seq, nothing else");
    let mut seqs: Vec<u64> = stored.values().copied().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "dense seqs");
}
