//! The embedded backend: the store contract, durability across reopening, shared fsyncs.

use super::*;
use shardchat_storage::conformance::{conformance, rec};
use std::sync::Arc;
use std::time::Duration;

fn open(dir: &std::path::Path) -> FjallStore {
    FjallStore::open(&StoreConfig { dir: dir.into(), commit_interval: Duration::ZERO }).unwrap()
}

#[test]
fn fjall_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&open(dir.path()));
}

#[test]
fn committed_batches_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        for seq in 1..=100 {
            s.commit(&WriteBatch { messages: vec![rec("d:a:b", seq, "a", &format!("c{seq}"))], ..Default::default() }).unwrap();
        }
    }
    let s = open(dir.path());
    assert_eq!(s.last_seq("d:a:b").unwrap(), 100);
    assert_eq!(s.find_cmid("d:a:b", "a", "c77").unwrap().unwrap().seq, 77);
}

#[test]
fn commits_from_many_threads_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    // A 2 ms commit interval: each fsync's leader waits that long, so the other threads' next
    // batches land in its window (on any but a machine that stalls every thread for 2 ms, 50
    // times over).
    let s = Arc::new(FjallStore::open(&StoreConfig { dir: dir.path().to_path_buf(), commit_interval: Duration::from_millis(2) }).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let conv = format!("d:t{t}:z");
                for seq in 1..=50 {
                    s.commit(&WriteBatch { messages: vec![rec(&conv, seq, "z", &format!("{seq}"))], ..Default::default() }).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4 {
        assert_eq!(s.last_seq(&format!("d:t{t}:z")).unwrap(), 50);
    }
    let st = &s.group.stats;
    assert_eq!(st.commits.load(std::sync::atomic::Ordering::Relaxed), 200);
    let fsyncs = st.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(fsyncs > 0 && fsyncs < 200, "{fsyncs} fsyncs for 200 commits from 4 threads: none was shared");
}
