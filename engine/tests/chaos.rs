//! Chaos on the disk under the embedded store: the data directory on a small tmpfs that fills
//! up. Sends are answered `unavailable` (never acked unstored). The store then refuses all
//! writes (fjall after a failed journal write), so the engine exits with an error for its
//! supervisor to restart it, as fjall advises; restarted once space is back, it recovers from the
//! journal: every acknowledged message is in history once, with dense seqs, and the refused
//! sends go through when retried.
//!
//! Needs `mount` (root with CAP_SYS_ADMIN, as where CI runs); elsewhere skipped with a message.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

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
            assert!(std::env::var("CI").is_err(), "CI is set but a tmpfs cannot be mounted here");
            eprintln!("skipped: cannot mount a tmpfs (needs root with CAP_SYS_ADMIN)");
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

    // The disk fills up: sends are refused with `unavailable` (and their cmid), never acked.
    let ballast = fill(&fs.0);
    let mut refused = Vec::new();
    let mut i = 0;
    while refused.len() < 3 {
        i += 1;
        assert!(i < 2000, "a full disk never refused a send");
        let cmid = format!("full{i}");
        let v = a.dm("bob", &cmid, &"y".repeat(2000)).await;
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
