//! The store contract as a test suite: every backend's tests run [`conformance`] against it
//! (`storage/fjall`, `storage/scylla` through the CQL double, `storage/mem`), so the in-memory
//! store the simulator runs on answers exactly as the real ones do.

use crate::*;
use shardchat_codec::MsgKind;

/// A text message of `conv` at `seq` (id 1000 + seq).
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
        ..Default::default()
    }
}

fn m(user: &str, role: Role, joined: u64) -> Membership {
    Membership { user: user.into(), role, joined }
}

fn joined(conv: &str, member: Membership) -> Joined {
    Joined { conv: conv.into(), member }
}

fn mark(conv: &str, user: &str, kind: ReceiptKind, seq: u64) -> Watermark {
    Watermark { conv: conv.into(), user: user.into(), kind, seq }
}

/// Stored messages in a new state: every field of the record comes back, reads show the new
/// state, dedup still names the message, and a changed text re-enters the search queue (a
/// reaction alone does not).
fn updates(store: &dyn MessageStore, c: &str) {
    let before: Vec<u64> = store.index_pending(100).unwrap().iter().map(|m| m.id).collect();
    let edited = MsgRecord { body: "edited".into(), edited_at: Some(9), edits: vec![6], ..rec(c, 3, "alice", "m3") };
    let event = MsgRecord { kind: MsgKind::Edit, target: Some(3), body: "edited".into(), ..rec(c, 6, "alice", "m6") };
    let reacted = MsgRecord {
        reactions: vec![shardchat_codec::Reaction { user: "alice".into(), emoji: "👍".into() }],
        reply_to: Some(1),
        media: Some(Box::new(shardchat_codec::Media {
            id: "0f".repeat(32),
            content_type: "image/jpeg".into(),
            size: 1234,
            name: "photo.jpg".into(),
            width: Some(640),
            height: Some(480),
            thumbnail: Some("1e".repeat(32)),
        })),
        ..rec(c, 2, "bob", "m2")
    };
    store
        .commit(&WriteBatch { messages: vec![event.clone()], updates: vec![edited.clone(), reacted.clone()], ..Default::default() })
        .unwrap();
    assert_eq!(
        store.messages_after(c, 1, 5).unwrap(),
        vec![reacted.clone(), edited.clone(), rec(c, 4, "bob", "m4"), rec(c, 5, "alice", "m5"), event]
    );
    assert_eq!(store.find_cmid(c, "alice", "m3").unwrap(), Some(edited.clone()));
    let queued: Vec<u64> = store.index_pending(100).unwrap().iter().map(|m| m.id).collect();
    let mut want = before.clone();
    want.extend([1003, 1006]);
    want.sort();
    want.dedup();
    assert_eq!(queued, want, "the edited message and the edit event are queued; the reaction is not");
    let deleted = MsgRecord { body: String::new(), deleted: true, edits: vec![], ..edited };
    store.commit(&WriteBatch { updates: vec![deleted.clone()], ..Default::default() }).unwrap();
    assert_eq!(store.messages_before(c, Some(4), 1).unwrap(), vec![deleted.clone()]);
    assert!(store.index_pending(100).unwrap().contains(&deleted), "the queue holds the message's last state");
    // Put back as the rest of the suite expects it.
    store.commit(&WriteBatch { updates: vec![rec(c, 2, "bob", "m2"), rec(c, 3, "alice", "m3")], ..Default::default() }).unwrap();
    let extra: Vec<u64> = store.index_pending(100).unwrap().iter().map(|m| m.id).filter(|id| !before.contains(id)).collect();
    store.index_done(&extra).unwrap();
}

/// The conformance suite every `MessageStore` passes.
pub fn conformance(store: &dyn MessageStore) {
    let c = "d:alice:bob";
    assert_eq!(store.last_seq(c).unwrap(), 0);
    assert!(store.messages_after(c, 0, 10).unwrap().is_empty());
    let batch = WriteBatch {
        messages: (1..=5).map(|s| rec(c, s, if s % 2 == 0 { "bob" } else { "alice" }, &format!("m{s}"))).collect(),
        members: vec![joined(c, m("alice", Role::Member, 0)), joined(c, m("bob", Role::Member, 0))],
        watermarks: vec![mark(c, "bob", ReceiptKind::Read, 3), mark(c, "bob", ReceiptKind::Delivered, 4)],
        ..Default::default()
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
    // u64::MAX is how callers say "no bound".
    assert_eq!(seqs(store.messages_before(c, Some(u64::MAX), 2).unwrap()), vec![5, 4]);
    assert_eq!(seqs(store.messages_after(c, u64::MAX, 2).unwrap()), Vec::<u64>::new());
    assert_eq!(store.find_cmid(c, "bob", "m4").unwrap().map(|m| m.seq), Some(4));
    assert_eq!(store.find_cmid(c, "alice", "m4").unwrap(), None, "dedup is per sender");
    assert_eq!(store.find_cmid(c, "bob", "m").unwrap(), None);
    let mut members = store.members(c).unwrap();
    members.sort_by(|a, b| a.user.cmp(&b.user));
    assert_eq!(members, vec![m("alice", Role::Member, 0), m("bob", Role::Member, 0)]);
    assert_eq!(store.members("d:x:y").unwrap(), vec![]);
    let mut marks = store.watermarks(c).unwrap();
    marks.sort();
    assert_eq!(marks, vec![("bob".into(), ReceiptKind::Delivered, 4), ("bob".into(), ReceiptKind::Read, 3)]);
    // Groups: names, roles, joins, removal keeps read access up to a seq, re-adding clears it.
    let g = "g:1";
    store
        .commit(&WriteBatch {
            members: vec![joined(g, m("alice", Role::Admin, 1)), joined(g, m("bob", Role::Member, 1))],
            names: vec![Named { conv: g.into(), name: "team".into() }],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.conv_name(g).unwrap().as_deref(), Some("team"));
    assert_eq!(store.conv_name("g:2").unwrap(), None);
    store.commit(&WriteBatch { removed: vec![Left { conv: g.into(), user: "bob".into(), seq: 7 }], ..Default::default() }).unwrap();
    assert_eq!(store.members(g).unwrap(), vec![m("alice", Role::Admin, 1)]);
    assert_eq!(store.left_at(g, "bob").unwrap(), Some(7));
    assert!(store.user_convs("bob").unwrap().contains(&g.to_string()), "a former member keeps the conversation listed");
    store.commit(&WriteBatch { members: vec![joined(g, m("bob", Role::Member, 9))], ..Default::default() }).unwrap();
    assert_eq!(store.left_at(g, "bob").unwrap(), None);
    assert_eq!(store.members(g).unwrap().len(), 2);
    // Added and removed in one batch: the removal wins, as it comes later in the batch (a
    // backend whose writes share a timestamp must not let a tombstone decide instead).
    store
        .commit(&WriteBatch {
            members: vec![joined(g, m("dave", Role::Member, 10))],
            removed: vec![Left { conv: g.into(), user: "dave".into(), seq: 11 }],
            ..Default::default()
        })
        .unwrap();
    assert!(store.members(g).unwrap().iter().all(|x| x.user != "dave"));
    assert_eq!(store.left_at(g, "dave").unwrap(), Some(11));
    assert_eq!(store.last_seen("alice").unwrap(), None);
    store.commit(&WriteBatch { last_seen: vec![LastSeen { user: "alice".into(), unix_ms: 1234 }], ..Default::default() }).unwrap();
    assert_eq!(store.last_seen("alice").unwrap(), Some(1234));
    // The push outbox: oldest first, removed exactly.
    let e = |user: &str, id: u64| PushEntry { user: user.into(), conv: "d:a:b".into(), from: "a".into(), id, ts: 7 };
    store.commit(&WriteBatch { push: vec![e("bob", 20), e("bob", 10), e("carol", 15)], ..Default::default() }).unwrap();
    assert_eq!(store.push_pending(10).unwrap(), vec![e("bob", 10), e("carol", 15), e("bob", 20)]);
    store.push_done(&[e("bob", 10), e("bob", 20)]).unwrap();
    assert_eq!(store.push_pending(10).unwrap(), vec![e("carol", 15)]);
    // Entries withdrawn in a commit (the recipient got the message live), one of them written
    // by the same batch, and one that was never there.
    let owed = WriteBatch { push: vec![e("dave", 30), e("erin", 31)], ..Default::default() };
    store.commit(&owed).unwrap();
    let done = WriteBatch { push: vec![e("fay", 32)], push_done: vec![e("dave", 30), e("fay", 32), e("nobody", 1)], ..Default::default() };
    store.commit(&done).unwrap();
    assert_eq!(store.push_pending(10).unwrap(), vec![e("carol", 15), e("erin", 31)]);
    store.push_done(&[e("erin", 31)]).unwrap();
    // Every message waits in the search queue until indexed.
    let queued: Vec<u64> = store.index_pending(100).unwrap().iter().map(|m| m.id).collect();
    // Keyed by message id (unique in a real store; this suite reuses 1001, which overwrote).
    assert_eq!(queued, vec![1001, 1002, 1003, 1004, 1005]);
    store.index_done(&[1001, 1002]).unwrap();
    assert_eq!(store.index_pending(100).unwrap().len(), 3);
    assert_eq!(store.user_convs("alice").unwrap(), vec![c.to_string(), "g:1".to_string()]);
    assert_eq!(store.user_convs("carol").unwrap(), Vec::<String>::new());
    assert_eq!(store.user_convs("ali").unwrap(), Vec::<String>::new());
    assert_eq!(store.watermark(c, "bob", ReceiptKind::Read).unwrap(), 3);
    assert_eq!(store.watermark(c, "bob", ReceiptKind::Delivered).unwrap(), 4);
    let m = &store.messages_after(c, 0, 1).unwrap()[0];
    assert_eq!(m, &rec(c, 1, "alice", "m1"));
    updates(store, c);
    // Cluster fences: the highest fenced incarnation per node; fencing an older one (a fencer
    // that saw an older incarnation) never lowers it; nodes are apart.
    assert_eq!(store.node_fence(3).unwrap(), 0);
    store.fence_node(3, 1_700_000_000_500).unwrap();
    store.fence_node(3, 1_700_000_000_100).unwrap();
    store.fence_node(300, 9).unwrap();
    assert_eq!(store.node_fence(3).unwrap(), 1_700_000_000_500);
    assert_eq!(store.node_fence(300).unwrap(), 9);
    assert_eq!(store.node_fence(4).unwrap(), 0);
    store.fence_node(3, 1_700_000_000_900).unwrap();
    assert_eq!(store.node_fence(3).unwrap(), 1_700_000_000_900);
}
