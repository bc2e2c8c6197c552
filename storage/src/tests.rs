//! The store contract, run against the embedded backend. Later backends run the same suite.

use super::*;
use shardchat_codec::MsgKind;
use std::sync::Arc;
use std::time::Duration;

pub fn rec(conv: &str, seq: u64, from: &str, cmid: &str) -> MsgRecord {
    MsgRecord {
        conv: conv.into(),
        id: 1000 + seq,
        seq,
        from: from.into(),
        cmid: cmid.into(),
        body: format!("body {seq}"),
        kind: MsgKind::Text,
        ts: 5,
    }
}

fn open(dir: &std::path::Path) -> FjallStore {
    FjallStore::open(&StoreConfig { dir: dir.into(), commit_interval: Duration::ZERO }).unwrap()
}

/// The conformance suite every `MessageStore` passes.
pub fn conformance(store: &dyn MessageStore) {
    let c = "d:alice:bob";
    assert_eq!(store.last_seq(c).unwrap(), 0);
    assert!(store.messages_after(c, 0, 10).unwrap().is_empty());
    let batch = WriteBatch {
        messages: (1..=5).map(|s| rec(c, s, if s % 2 == 0 { "bob" } else { "alice" }, &format!("m{s}"))).collect(),
        members: vec![(c.into(), "alice".into(), Role::Member), (c.into(), "bob".into(), Role::Member)],
        watermarks: vec![(c.into(), "bob".into(), ReceiptKind::Read, 3)],
    };
    store.commit(&batch).unwrap();
    // A conversation whose id extends this one must not leak into its scans.
    store.commit(&WriteBatch { messages: vec![rec("d:alice:bobby", 1, "alice", "x")], ..Default::default() }).unwrap();
    assert_eq!(store.last_seq(c).unwrap(), 5);
    let seqs = |v: Vec<MsgRecord>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.messages_after(c, 0, 10).unwrap()), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs(store.messages_after(c, 2, 2).unwrap()), vec![3, 4]);
    assert_eq!(seqs(store.messages_after(c, 5, 2).unwrap()), Vec::<u64>::new());
    assert_eq!(seqs(store.messages_before(c, None, 2).unwrap()), vec![5, 4]);
    assert_eq!(seqs(store.messages_before(c, Some(4), 10).unwrap()), vec![3, 2, 1]);
    assert_eq!(seqs(store.messages_before(c, Some(1), 10).unwrap()), Vec::<u64>::new());
    assert_eq!(store.find_cmid(c, "bob", "m4").unwrap().map(|m| m.seq), Some(4));
    assert_eq!(store.find_cmid(c, "alice", "m4").unwrap(), None, "dedup is per sender");
    assert_eq!(store.find_cmid(c, "bob", "m").unwrap(), None);
    let mut members = store.members(c).unwrap();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(members, vec![("alice".into(), Role::Member), ("bob".into(), Role::Member)]);
    assert_eq!(store.members("d:x:y").unwrap(), vec![]);
    assert_eq!(store.user_convs("alice").unwrap(), vec![c.to_string()]);
    assert_eq!(store.user_convs("ali").unwrap(), Vec::<String>::new());
    assert_eq!(store.watermark(c, "bob", ReceiptKind::Read).unwrap(), 3);
    assert_eq!(store.watermark(c, "bob", ReceiptKind::Delivered).unwrap(), 0);
    let m = &store.messages_after(c, 0, 1).unwrap()[0];
    assert_eq!(m, &rec(c, 1, "alice", "m1"));
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
    let s = Arc::new(open(dir.path()));
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
    assert!(st.fsyncs.load(std::sync::atomic::Ordering::Relaxed) <= 200);
}
