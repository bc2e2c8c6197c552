//! Shard behaviour, driven through [`crate::sim`]: several shards and clients in one thread, the
//! interleaving chosen from a seed, the store in memory and run inline.

use crate::sim::*;
use crate::*;
use shardchat_codec::*;
use shardchat_storage::MessageStore;
use std::collections::HashMap;
fn send(to: &str, cmid: &str, body: &str) -> String {
    format!(r#"{{"t":"send","cmid":"{cmid}","to":"{to}","body":"{body}"}}"#)
}

fn err_code(frames: &[ServerFrame]) -> Vec<ErrorCode> {
    frames.iter().filter_map(|f| if let ServerFrame::Error { code, .. } = f { Some(*code) } else { None }).collect()
}

#[test]
fn a_direct_message_reaches_every_device_of_both_users_but_the_sending_one() {
    for seed in 1..20 {
        let mut sim = Sim::new(3, seed, store());
        let (a1, a2, b1, b2) = (sim.connect("alice"), sim.connect("alice"), sim.connect("bob"), sim.connect("bob"));
        sim.send(a1, &send("bob", "c1", "hi"));
        let acks = sim.frames(a1);
        assert!(matches!(&acks[..], [ServerFrame::Ack { seq: 1, conv, cmid, .. }] if conv == "d:alice:bob" && cmid == "c1"), "{acks:?}");
        for d in [a2, b1, b2] {
            let m = sim.msgs(d);
            assert_eq!(m.len(), 1, "seed {seed}");
            assert_eq!((m[0].seq, m[0].from.as_str(), m[0].body.as_str()), (1, "alice", "hi"));
        }
        // One encode for the whole fan-out: every device got the same shared payload.
        let p = &sim.received[&a2][0];
        assert!(sim.received[&b1][0].ptr_eq(p) && sim.received[&b2][0].ptr_eq(p));
    }
}

#[test]
fn concurrent_senders_get_dense_seqs_and_every_device_sees_them_in_order() {
    for seed in [3, 7, 11] {
        let mut sim = Sim::new(4, seed, store());
        let alice: Vec<Dev> = (0..3).map(|_| sim.connect("alice")).collect();
        let bob: Vec<Dev> = (0..3).map(|_| sim.connect("bob")).collect();
        for i in 0..40 {
            for (j, d) in alice.iter().chain(&bob).enumerate() {
                let to = if j < 3 { "bob" } else { "alice" };
                sim.push(*d, &send(to, &format!("m{i}-{j}"), "x"));
            }
            if i % 7 == 0 {
                sim.run();
            }
        }
        sim.run();
        let mut acked: Vec<u64> = Vec::new();
        for d in alice.iter().chain(&bob) {
            let seqs: Vec<u64> = sim.msgs(*d).iter().map(|m| m.seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order on {d:?}: {seqs:?}");
            for f in sim.frames(*d) {
                if let ServerFrame::Ack { seq, .. } = f {
                    acked.push(seq);
                }
            }
            // Each device gets every message except its own sends (40 of them).
            assert_eq!(seqs.len(), 240 - 40);
        }
        acked.sort();
        assert_eq!(acked, (1..=240).collect::<Vec<_>>(), "seqs are dense and each acked once");
    }
}

#[test]
fn a_retried_cmid_gets_the_original_ack_and_is_stored_once_even_after_restart() {
    let st = store();
    let mut sim = Sim::new(2, 5, st.clone());
    let (a, b) = (sim.connect("alice"), sim.connect("bob"));
    // Twice in one batch, then again later.
    sim.push(a, &send("bob", "same", "one"));
    sim.push(a, &send("bob", "same", "one"));
    sim.run();
    sim.send(a, &send("bob", "same", "one"));
    let acks: Vec<ServerFrame> = sim.frames(a);
    assert_eq!(acks.len(), 3);
    assert!(acks.iter().all(|f| *f == acks[0]), "{acks:?}");
    assert_eq!(sim.msgs(b).len(), 1);
    // A new process over the same store.
    let mut sim = Sim::new(2, 6, st.clone());
    let (a, b) = (sim.connect("alice"), sim.connect("bob"));
    sim.send(a, &send("bob", "same", "one"));
    assert_eq!(sim.frames(a), vec![acks[0].clone()]);
    assert!(sim.msgs(b).is_empty());
    // And seq continues after the restart.
    sim.send(a, &send("bob", "next", "two"));
    assert!(matches!(sim.frames(a)[1], ServerFrame::Ack { seq: 2, .. }));
    assert_eq!(st.last_seq("d:alice:bob").unwrap(), 2);
}

#[test]
fn watermarks_are_monotonic_stored_and_forwarded_to_the_other_member() {
    let st = store();
    let mut sim = Sim::new(3, 9, st.clone());
    let (a, b, eve) = (sim.connect("alice"), sim.connect("bob"), sim.connect("eve"));
    for i in 0..5 {
        sim.send(a, &send("bob", &format!("c{i}"), "x"));
    }
    sim.take(a);
    sim.send(b, r#"{"t":"read","conv":"d:alice:bob","seq":3}"#);
    assert_eq!(sim.take(a), vec![ServerFrame::Receipt { conv: "d:alice:bob".into(), user: "bob".into(), kind: ReceiptKind::Read, seq: 3 }]);
    sim.send(b, r#"{"t":"read","conv":"d:alice:bob","seq":2}"#);
    assert!(sim.take(a).is_empty(), "a lower watermark is not forwarded");
    sim.send(b, r#"{"t":"delivered","conv":"d:alice:bob","seq":5}"#);
    assert!(matches!(&sim.take(a)[..], [ServerFrame::Receipt { kind: ReceiptKind::Delivered, seq: 5, .. }]));
    sim.take(b);
    sim.send(b, r#"{"t":"read","conv":"d:alice:bob","seq":9}"#);
    sim.send(eve, r#"{"t":"read","conv":"d:alice:bob","seq":1}"#);
    sim.send(eve, r#"{"t":"read","conv":"d:eve:nobody","seq":1}"#);
    assert_eq!(err_code(&sim.take(b)), vec![ErrorCode::BadRequest]);
    assert_eq!(err_code(&sim.take(eve)), vec![ErrorCode::Forbidden, ErrorCode::NotFound]);
    assert!(sim.take(a).is_empty(), "nothing leaks to members from refused receipts");
    assert_eq!(st.watermark("d:alice:bob", "bob", ReceiptKind::Read).unwrap(), 3);
    assert_eq!(st.watermark("d:alice:bob", "bob", ReceiptKind::Delivered).unwrap(), 5);
}

#[test]
fn strangers_cannot_send_or_read_and_unknown_conversations_are_not_found() {
    let mut sim = Sim::new(2, 4, store());
    let (a, eve) = (sim.connect("alice"), sim.connect("eve"));
    sim.send(a, &send("bob", "c", "secret"));
    sim.send(eve, r#"{"t":"send","cmid":"x","conv":"d:alice:bob","body":"hi"}"#);
    sim.send(eve, r#"{"t":"history","conv":"d:alice:bob","ref":1}"#);
    sim.send(eve, r#"{"t":"history","conv":"g:424242","ref":2}"#);
    sim.send(eve, r#"{"t":"send","cmid":"y","conv":"g:424242","body":"hi"}"#);
    let f = sim.take(eve);
    assert_eq!(err_code(&f), vec![ErrorCode::Forbidden, ErrorCode::Forbidden, ErrorCode::NotFound, ErrorCode::NotFound]);
    assert!(matches!(&f[1], ServerFrame::Error { r#ref: Some(Ref::Num(1)), .. }));
    assert!(matches!(&f[0], ServerFrame::Error { cmid: Some(c), .. } if c == "x"));
    // Sending with the direct id before the conversation exists creates it, for its members only.
    sim.send(eve, r#"{"t":"send","cmid":"z","conv":"d:eve:zed","body":"hi"}"#);
    assert!(matches!(&sim.take(eve)[..], [ServerFrame::Ack { seq: 1, .. }]));
}

#[test]
fn colliding_direct_ids_do_not_merge_conversations() {
    let mut sim = Sim::new(2, 4, store());
    let (ax, a) = (sim.connect("a:x"), sim.connect("a"));
    sim.send(ax, &send("a:y", "c", "private"));
    sim.send(a, &send("x:a:y", "c", "hi"));
    assert_eq!(err_code(&sim.take(a)), vec![ErrorCode::Forbidden]);
}

#[test]
fn sync_catches_up_an_offline_device_in_batches_and_lists_every_conversation() {
    let mut sim = Sim::new(3, 13, store());
    let (a, c) = (sim.connect("alice"), sim.connect("carol"));
    for i in 0..250 {
        sim.send(a, &send("bob", &format!("b{i}"), &format!("{i}")));
    }
    sim.send(c, &send("bob", "c0", "from carol"));
    let b = sim.connect("bob");
    sim.send(b, r#"{"t":"sync","cursors":{"d:alice:bob":20}}"#);
    let frames = sim.take(b);
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for f in &frames[..frames.len() - 1] {
        let ServerFrame::Sync { conv, messages, more } = f else { panic!("{f:?}") };
        assert!(messages.len() <= SYNC_FRAME_MESSAGES_MAX);
        let last = messages.last().unwrap().seq;
        assert_eq!(*more, conv == "d:alice:bob" && last < 250, "{conv} {last}");
        got.entry(conv.clone()).or_default().extend(messages.iter().map(|m| m.seq));
    }
    assert_eq!(got["d:alice:bob"], (21..=250).collect::<Vec<_>>());
    assert_eq!(got["d:bob:carol"], vec![1]);
    let ServerFrame::Synced { convs } = frames.last().unwrap() else { panic!() };
    assert_eq!(convs.len(), 2);
    assert_eq!(convs["d:alice:bob"], 250);
    // A limit stops each conversation early and says there is more.
    sim.send(b, r#"{"t":"sync","cursors":{"d:alice:bob":0,"d:bob:carol":1},"limit":5}"#);
    let frames = sim.take(b);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(matches!(&frames[0], ServerFrame::Sync { messages, more: true, .. } if messages.len() == 5));
}

#[test]
fn sync_does_not_replay_what_was_delivered_live() {
    let mut sim = Sim::new(2, 17, store());
    let a = sim.connect("alice");
    for i in 0..3 {
        sim.send(a, &send("bob", &format!("{i}"), "x"));
    }
    let b = sim.connect("bob");
    // Messages 4 and 5 arrive live before the device syncs from cursor 0.
    sim.send(a, &send("bob", "3", "x"));
    sim.send(a, &send("bob", "4", "x"));
    sim.send(b, r#"{"t":"sync","cursors":{}}"#);
    let mut seqs = Vec::new();
    for f in sim.take(b) {
        match f {
            ServerFrame::Msg(m) => seqs.push(m.seq),
            ServerFrame::Sync { messages, more, .. } => {
                assert!(!more);
                seqs.extend(messages.iter().map(|m| m.seq));
            }
            _ => {}
        }
    }
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "each message once");
}

#[test]
fn history_pages_backwards_with_refs() {
    let mut sim = Sim::new(2, 21, store());
    let (a, b) = (sim.connect("alice"), sim.connect("bob"));
    for i in 0..120 {
        sim.send(a, &send("bob", &format!("{i}"), "x"));
    }
    sim.send(b, r#"{"t":"history","conv":"d:alice:bob","ref":"p1"}"#);
    let f = sim.take(b).pop().unwrap();
    let ServerFrame::History { messages, r#ref, .. } = f else { panic!("{f:?}") };
    assert_eq!(r#ref, Some(Ref::Str("p1".into())));
    assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (71..=120).rev().collect::<Vec<_>>());
    sim.send(b, r#"{"t":"history","conv":"d:alice:bob","before":71,"limit":200}"#);
    let ServerFrame::History { messages, .. } = sim.take(b).pop().unwrap() else { panic!() };
    assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=70).rev().collect::<Vec<_>>());
}

#[test]
fn silent_connections_time_out_and_active_ones_stay() {
    let mut sim = Sim::new(1, 2, store());
    let (quiet, chatty) = (sim.connect("q"), sim.connect("c"));
    for _ in 0..70 {
        sim.inbox[0].push_back(Event::Activity { conn: chatty.1 });
        sim.tick(1_000);
    }
    assert_eq!(sim.closed, vec![(quiet, 1000, "heartbeat timeout")]);
    assert_eq!(sim.shards[0].connections(), 1);
    // A closed connection gets nothing more.
    sim.send(chatty, &send("q", "x", "y"));
    assert!(sim.frames(quiet).is_empty());
}

#[test]
fn a_connection_is_closed_when_its_token_expires_however_active() {
    let mut sim = Sim::new(1, 2, store());
    let forever = sim.connect("f");
    let conn = sim.next_conn;
    sim.next_conn += 1;
    let expiring = Dev(0, conn);
    let exp = sim.now.unix_ms + 5_000;
    sim.inbox[0].push_back(Event::Connected { conn, user: "e".into(), device: "d".into(), expires_unix_ms: Some(exp) });
    sim.run();
    for _ in 0..4 {
        for d in [forever, expiring] {
            sim.inbox[0].push_back(Event::Activity { conn: d.1 });
        }
        sim.tick(1_000);
    }
    assert!(sim.closed.is_empty(), "4 s in, the token has a second left");
    for _ in 0..3 {
        for d in [forever, expiring] {
            sim.inbox[0].push_back(Event::Activity { conn: d.1 });
        }
        sim.tick(1_000);
    }
    assert_eq!(sim.closed, vec![(expiring, 1008, "token expired")]);
    assert_eq!(sim.shards[0].connections(), 1);
    // A token that expired before the connection was handled closes it at the next tick.
    let conn = sim.next_conn;
    sim.inbox[0].push_back(Event::Connected { conn, user: "l".into(), device: "d".into(), expires_unix_ms: Some(sim.now.unix_ms - 1) });
    sim.run();
    sim.tick(1_000);
    assert_eq!(sim.closed.last(), Some(&(Dev(0, conn), 1008, "token expired")));
}

#[test]
fn disconnected_devices_get_nothing_and_ping_is_answered() {
    let mut sim = Sim::new(2, 3, store());
    let (a, b) = (sim.connect("alice"), sim.connect("bob"));
    sim.disconnect(b);
    sim.send(a, &send("bob", "1", "x"));
    assert!(sim.frames(b).is_empty());
    sim.send(a, r#"{"t":"ping","ref":"p"}"#);
    assert_eq!(sim.frames(a).last().unwrap(), &ServerFrame::Pong { r#ref: Some(Ref::Str("p".into())) });
}

#[test]
fn a_failed_commit_is_unavailable_nothing_is_delivered_and_seq_has_no_hole() {
    let st = store();
    let mut sim = Sim::new(2, 8, st.clone());
    let (a, b) = (sim.connect("alice"), sim.connect("bob"));
    sim.send(a, &send("bob", "1", "x"));
    st.faults.commits_down.store(true, std::sync::atomic::Ordering::Relaxed);
    sim.send(a, &send("bob", "2", "x"));
    let f = sim.take(a);
    assert!(matches!(&f[1], ServerFrame::Error { code: ErrorCode::Unavailable, cmid: Some(c), .. } if c == "2"), "{f:?}");
    assert_eq!(sim.take(b).len(), 1, "only the stored message was delivered");
    st.faults.commits_down.store(false, std::sync::atomic::Ordering::Relaxed);
    sim.send(a, &send("bob", "2", "x"));
    assert!(matches!(&sim.take(a)[..], [ServerFrame::Ack { seq: 2, .. }]), "the retry takes the next seq: no hole");
}

#[test]
fn a_second_sync_while_one_runs_is_rate_limited() {
    let mut sim = Sim::new(1, 8, store());
    let b = sim.connect("bob");
    sim.push(b, r#"{"t":"sync"}"#);
    sim.push(b, r#"{"t":"sync"}"#);
    sim.run();
    let f = sim.take(b);
    assert_eq!(err_code(&f), vec![ErrorCode::RateLimited]);
    assert!(matches!(f.last(), Some(ServerFrame::Synced { .. })));
}

#[test]
fn large_messages_make_smaller_history_and_sync_frames() {
    let mut sim = Sim::new(2, 8, store());
    let a = sim.connect("alice");
    let big = "z".repeat(50_000);
    for i in 0..30 {
        sim.send(a, &send("bob", &format!("{i}"), &big));
    }
    let b = sim.connect("bob");
    sim.send(b, r#"{"t":"history","conv":"d:alice:bob","limit":200}"#);
    let ServerFrame::History { messages, .. } = sim.take(b).pop().unwrap() else { panic!() };
    // The default budget is 1 MiB and a body counts six-fold: three messages per frame.
    assert_eq!(messages.len(), 3);
    sim.send(b, r#"{"t":"sync"}"#);
    let frames = sim.take(b);
    assert_eq!(frames.len(), 11, "ten frames of three, then synced");
}

// ---- groups, group receipts, typing, presence ----

fn group_of(frames: &[ServerFrame]) -> Option<(String, Vec<(String, Role)>)> {
    frames.iter().find_map(|f| match f {
        ServerFrame::Group { conv, members, .. } => Some((conv.clone(), members.iter().map(|m| (m.user.clone(), m.role)).collect())),
        _ => None,
    })
}

fn create_group(sim: &mut Sim, admin: Dev, members: &[&str]) -> String {
    let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    sim.send(admin, &format!(r#"{{"t":"group_create","name":"team","members":[{}],"ref":"c"}}"#, list.join(",")));
    let frames = sim.take(admin);
    let (conv, _) = group_of(&frames).unwrap_or_else(|| panic!("no group frame: {frames:?}"));
    conv
}

#[test]
fn a_group_message_reaches_every_member_once_in_order_with_one_encode() {
    for seed in [1, 2, 3] {
        let mut sim = Sim::new(4, seed, store());
        let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
        let devs: Vec<Dev> = users.iter().map(|u| sim.connect(u)).collect();
        let names: Vec<&str> = users[1..].iter().map(|s| s.as_str()).collect();
        let conv = create_group(&mut sim, devs[0], &names);
        for d in &devs[1..] {
            let f = sim.take(*d);
            assert!(
                matches!(f.as_slice(), [ServerFrame::Group { .. }, ServerFrame::Msg(m)] if m.kind == MsgKind::System && m.seq == 1),
                "{f:?}"
            );
        }
        for (i, d) in devs.iter().enumerate().take(5) {
            for j in 0..10 {
                sim.push(*d, &format!(r#"{{"t":"send","cmid":"{i}-{j}","conv":"{conv}","body":"x"}}"#));
            }
        }
        sim.run();
        let mut first: Option<Payload> = None;
        for (i, d) in devs.iter().enumerate() {
            let seqs: Vec<u64> = sim.msgs(*d).iter().map(|m| m.seq).collect();
            let expect = if i < 5 { 40 } else { 50 };
            assert_eq!(seqs.len(), expect, "member {i}");
            assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            // Every member got the same encoded frame for seq 2 (or it was their own).
            if let Some(p) = sim.received[d].iter().find(|p| matches!(p.frame(), ServerFrame::Msg(m) if m.seq == 2)) {
                match &first {
                    None => first = Some(p.clone()),
                    Some(f) => assert!(f.ptr_eq(p)),
                }
            }
        }
    }
}

#[test]
fn group_membership_rules() {
    let st = store();
    let mut sim = Sim::new(3, 5, st.clone());
    let (a, b, c, d) = (sim.connect("ann"), sim.connect("bob"), sim.connect("cat"), sim.connect("dan"));
    let conv = create_group(&mut sim, a, &["bob", "cat"]);
    sim.take(b);
    sim.take(c);
    // Only admins add or remove.
    sim.send(b, &format!(r#"{{"t":"group_add","conv":"{conv}","users":["dan"],"ref":1}}"#));
    assert_eq!(err_code(&sim.take(b)), vec![ErrorCode::Forbidden]);
    // Strangers can do nothing with it.
    sim.send(d, &format!(r#"{{"t":"send","cmid":"x","conv":"{conv}","body":"hi"}}"#));
    sim.send(d, &format!(r#"{{"t":"history","conv":"{conv}"}}"#));
    sim.send(d, &format!(r#"{{"t":"read","conv":"{conv}","seq":1}}"#));
    sim.send(d, &format!(r#"{{"t":"typing","conv":"{conv}"}}"#));
    sim.send(d, &format!(r#"{{"t":"group_leave","conv":"{conv}"}}"#));
    sim.send(d, &format!(r#"{{"t":"receipt_query","conv":"{conv}","seq":1}}"#));
    assert_eq!(err_code(&sim.take(d)), vec![ErrorCode::Forbidden; 6]);
    // Removal: the removed member gets the system message that removes them, then nothing.
    sim.send(a, &format!(r#"{{"t":"send","cmid":"m1","conv":"{conv}","body":"before"}}"#));
    sim.send(a, &format!(r#"{{"t":"group_remove","conv":"{conv}","users":["cat"],"ref":2}}"#));
    let cat = sim.take(c);
    assert!(matches!(cat.last(), Some(ServerFrame::Msg(m)) if m.kind == MsgKind::System && m.body.contains("\"remove\"")), "{cat:?}");
    sim.send(a, &format!(r#"{{"t":"send","cmid":"m2","conv":"{conv}","body":"after"}}"#));
    assert!(sim.take(c).is_empty(), "nothing after removal");
    // A former member reads history up to their removal, not beyond, and cannot send.
    sim.send(c, &format!(r#"{{"t":"history","conv":"{conv}"}}"#));
    let ServerFrame::History { messages, .. } = sim.take(c).pop().unwrap() else { panic!() };
    assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 2, 1]);
    sim.send(c, r#"{"t":"sync"}"#);
    let f = sim.take(c);
    let ServerFrame::Synced { convs } = f.last().unwrap() else { panic!("{f:?}") };
    assert_eq!(convs[&conv], 3, "a former member's sync ends where they left");
    sim.send(c, &format!(r#"{{"t":"send","cmid":"z","conv":"{conv}","body":"hi"}}"#));
    assert_eq!(err_code(&sim.take(c)), vec![ErrorCode::Forbidden]);
    // The admin leaves: admin goes to the oldest member.
    sim.take(b);
    sim.send(a, &format!(r#"{{"t":"group_leave","conv":"{conv}","ref":3}}"#));
    let (_, members) = group_of(&sim.take(b)).unwrap();
    assert_eq!(members, vec![("bob".to_string(), Role::Admin)]);
    assert_eq!(st.members(&conv).unwrap().len(), 1);
}

#[test]
fn groups_hold_at_most_500() {
    let mut sim = Sim::new(2, 5, store());
    let a = sim.connect("admin");
    let many: Vec<String> = (0..499).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
    let conv = create_group(&mut sim, a, &refs);
    sim.send(a, &format!(r#"{{"t":"group_add","conv":"{conv}","users":["one-more"]}}"#));
    assert_eq!(err_code(&sim.take(a)), vec![ErrorCode::GroupFull]);
    sim.send(a, &format!(r#"{{"t":"group_add","conv":"{conv}","users":["m1"]}}"#));
    assert!(group_of(&sim.take(a)).is_some(), "adding a member who is in changes nothing");
}

#[test]
fn group_receipts_are_coalesced_counts_for_the_author() {
    let mut sim = Sim::new(3, 7, store());
    let a = sim.connect("ann");
    let readers: Vec<Dev> = (0..10).map(|i| sim.connect(&format!("r{i}"))).collect();
    let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let conv = create_group(&mut sim, a, &names.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    sim.send(a, &format!(r#"{{"t":"send","cmid":"m","conv":"{conv}","body":"hello"}}"#));
    sim.take(a);
    for (i, r) in readers.iter().enumerate() {
        sim.take(*r);
        sim.send(*r, &format!(r#"{{"t":"delivered","conv":"{conv}","seq":2}}"#));
        if i < 4 {
            sim.send(*r, &format!(r#"{{"t":"read","conv":"{conv}","seq":2}}"#));
        }
    }
    // No per-reader receipts to anyone.
    assert!(readers.iter().all(|r| sim.frames(*r).is_empty()));
    assert!(sim.frames(a).is_empty(), "counts wait for the tick");
    sim.tick(600);
    let f = sim.take(a);
    assert_eq!(
        f,
        vec![ServerFrame::ReceiptCounts { conv: conv.clone(), of: 10, counts: vec![SeqCounts { seq: 2, delivered: 10, read: 4 }] }]
    );
    // Coalesced: more reads inside the interval wait; nothing changed → nothing sent.
    sim.send(readers[5], &format!(r#"{{"t":"read","conv":"{conv}","seq":2}}"#));
    sim.tick(100);
    assert!(sim.take(a).is_empty());
    sim.tick(500);
    assert!(matches!(&sim.take(a)[..], [ServerFrame::ReceiptCounts { counts, .. }] if counts[0].read == 5));
    sim.tick(1000);
    assert!(sim.take(a).is_empty());
    // The exact query says who.
    sim.send(a, &format!(r#"{{"t":"receipt_query","conv":"{conv}","seq":2,"ref":"q"}}"#));
    let ServerFrame::ReceiptDetail { of, delivered, read, r#ref, .. } = sim.take(a).pop().unwrap() else { panic!() };
    assert_eq!((of, delivered.len(), r#ref), (10, 10, Some(Ref::Str("q".into()))));
    assert_eq!(read, vec!["r0", "r1", "r2", "r3", "r5"]);
    // An author who left gets no more receipts of the conversation.
    sim.send(readers[0], &format!(r#"{{"t":"send","cmid":"r0m","conv":"{conv}","body":"mine"}}"#));
    sim.send(readers[0], &format!(r#"{{"t":"group_leave","conv":"{conv}"}}"#));
    sim.take(readers[0]);
    sim.send(readers[1], &format!(r#"{{"t":"read","conv":"{conv}","seq":4}}"#));
    sim.tick(1_000);
    assert!(sim.take(readers[0]).is_empty());
}

#[test]
fn typing_reaches_the_other_members_is_rate_limited_and_never_stored() {
    let st = store();
    let mut sim = Sim::new(3, 9, st.clone());
    let (a, b, c) = (sim.connect("ann"), sim.connect("bob"), sim.connect("cat"));
    let conv = create_group(&mut sim, a, &["bob", "cat"]);
    sim.take(b);
    sim.take(c);
    for _ in 0..5 {
        sim.send(a, &format!(r#"{{"t":"typing","conv":"{conv}"}}"#));
    }
    let want = vec![ServerFrame::Typing { conv: conv.clone(), user: "ann".into() }];
    assert_eq!(sim.take(b), want, "one per interval");
    assert_eq!(sim.take(c), want);
    assert!(sim.take(a).is_empty(), "not echoed to the typist");
    let dropped: u64 = sim.shards.iter().map(|s| s.counters().typing_dropped).sum();
    assert_eq!(dropped, 4, "the dropped ones are counted");
    sim.tick(2_500);
    sim.send(a, &format!(r#"{{"t":"typing","conv":"{conv}"}}"#));
    assert_eq!(sim.take(b), want, "allowed again after the interval");
    assert_eq!(st.last_seq(&conv).unwrap(), 1, "only the group's creation is stored");
}

/// Typing before a direct conversation's first message reaches the other member, the first
/// time (the commit job loads the empty conversation) and again (from the owner's cache); a
/// stranger typing there is refused.
#[test]
fn typing_in_a_direct_conversation_before_its_first_message() {
    let mut sim = Sim::new(2, 5, store());
    let (a, b, c) = (sim.connect("ann"), sim.connect("bob"), sim.connect("cat"));
    let want = vec![ServerFrame::Typing { conv: "d:ann:bob".into(), user: "ann".into() }];
    sim.send(a, r#"{"t":"typing","conv":"d:ann:bob"}"#);
    assert_eq!(sim.take(b), want);
    sim.tick(2_500);
    sim.send(a, r#"{"t":"typing","conv":"d:ann:bob"}"#);
    assert_eq!(sim.take(b), want);
    sim.send(c, r#"{"t":"typing","conv":"d:ann:bob"}"#);
    assert_eq!(err_code(&sim.take(c)), [ErrorCode::NotFound]);
    assert!(sim.take(b).is_empty() && sim.take(a).is_empty());
}

/// Subscription churn costs messages to other shards: past the connection's rate a
/// `presence_sub` or `presence_unsub` is refused with `rate_limited` and changes nothing, and
/// the budget comes back with time.
#[test]
fn presence_subscription_changes_are_rate_limited_per_connection() {
    let mut sim = Sim::with(2, 3, store(), |c| c.presence_rate = crate::rate::Rate { per_sec: 2, burst: 3 });
    let (a, b) = (sim.connect("ann"), sim.connect("bob"));
    sim.take(a);
    for t in ["presence_sub", "presence_unsub", "presence_sub", "presence_unsub"] {
        sim.send(a, &format!(r#"{{"t":"{t}","users":["bob"]}}"#));
    }
    let frames = sim.take(a);
    assert_eq!(err_code(&frames), [ErrorCode::RateLimited], "the fourth change is over the burst of 3: {frames:?}");
    assert_eq!(presence(&frames).len(), 2, "the two subscriptions were answered: {frames:?}");
    // The refused unsubscribe changed nothing: bob's changes still arrive.
    sim.disconnect(b);
    sim.tick(1_100);
    assert_eq!(presence(&sim.take(a)).last().map(|p| p.1.as_str()), Some("offline"));
    // A second later the budget is back (2 a second).
    sim.send(a, r#"{"t":"presence_unsub","users":["bob"]}"#);
    assert!(err_code(&sim.take(a)).is_empty());
}

fn presence(frames: &[ServerFrame]) -> Vec<(String, String, Option<u64>)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Presence { user, status, last_seen } => Some((user.clone(), status.clone(), *last_seen)),
            _ => None,
        })
        .collect()
}

#[test]
fn presence_by_interest_with_coalescing_and_last_seen_that_survives_restart() {
    let st = store();
    let mut sim = Sim::new(3, 11, st.clone());
    let watcher = sim.connect("watcher");
    let bystander = sim.connect("bystander");
    sim.send(watcher, r#"{"t":"presence_sub","users":["alice","nobody"]}"#);
    let mut got = presence(&sim.take(watcher));
    got.sort();
    assert_eq!(got, vec![("alice".into(), "offline".into(), None), ("nobody".into(), "offline".into(), None)]);
    let a1 = sim.connect("alice");
    sim.tick(1_100);
    assert_eq!(presence(&sim.take(watcher)), vec![("alice".into(), "online".into(), None)]);
    assert!(sim.take(bystander).is_empty(), "no broadcast to those who did not ask");
    // Flapping within the interval: one update at most, none if back where it was.
    let a2 = sim.connect("alice");
    sim.disconnect(a1);
    sim.disconnect(a2);
    let off_at = sim.now.unix_ms;
    for _ in 0..5 {
        let d = sim.connect("alice");
        sim.disconnect(d);
    }
    sim.tick(300);
    sim.tick(1_000);
    assert_eq!(presence(&sim.take(watcher)), vec![("alice".into(), "offline".into(), Some(off_at))]);
    sim.tick(1_000);
    assert!(sim.take(watcher).is_empty());
    // last_seen is written lazily and read back by a new process.
    sim.tick(1_000);
    assert_eq!(st.last_seen("alice").unwrap(), Some(off_at));
    let mut sim = Sim::new(3, 12, st.clone());
    let w = sim.connect("watcher2");
    sim.send(w, r#"{"t":"presence_sub","users":["alice"]}"#);
    assert_eq!(presence(&sim.take(w)), vec![("alice".into(), "offline".into(), Some(off_at))]);
    // Unsubscribed: nothing more.
    sim.send(w, r#"{"t":"presence_unsub","users":["alice"]}"#);
    sim.connect("alice");
    sim.tick(1_100);
    assert!(sim.take(w).is_empty());
}

#[test]
fn presence_flips_when_heartbeats_stop() {
    let mut sim = Sim::new(2, 13, store());
    let w = sim.connect("w");
    let a = sim.connect("alice");
    sim.send(w, r#"{"t":"presence_sub","users":["alice"]}"#);
    assert_eq!(presence(&sim.take(w))[0].1, "online");
    for _ in 0..65 {
        sim.inbox[w.0].push_back(Event::Activity { conn: w.1 });
        sim.tick(1_000);
    }
    assert!(sim.closed.iter().any(|(d, _, _)| *d == a));
    let p = presence(&sim.take(w));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1, "offline");
    assert!(p[0].2.is_some());
}

/// Frames the bridge got for one of its sessions, in order.
fn bridge_frames(sim: &mut Sim, session: u64) -> Vec<ServerFrame> {
    let mut out = Vec::new();
    for m in std::mem::take(&mut sim.bridge) {
        match m {
            PeerMsg::Deliver { conns, payload, .. } if conns.contains(&session) => out.push(payload.frame().clone()),
            PeerMsg::Detach { remote } if remote.conn == session => {
                out.push(ServerFrame::Pong { r#ref: Some(Ref::Str("detached".into())) })
            }
            _ => {}
        }
    }
    out
}

#[test]
fn a_remote_session_is_a_connection_whose_frames_go_to_its_holder() {
    let mut sim = Sim::new(3, 21, store());
    let n = sim.shards.len();
    let remote = ConnRef { node: 0, shard: n, conn: 7 };
    let home = home_shard("bob", n);
    sim.inbox[home].push_back(Event::Peer(PeerMsg::Attach { user: "bob".into(), device: "poll".into(), remote }));
    sim.run();
    let a = sim.connect("alice");
    sim.send(a, &send("bob", "1", "to the poller"));
    let f = bridge_frames(&mut sim, 7);
    assert!(matches!(&f[..], [ServerFrame::Msg(m)] if m.body == "to the poller"), "{f:?}");
    // Frames posted to the session are the session's requests; answers come back to the holder.
    let frame = decode_text(&send("alice", "b1", "from the poller"), &Limits::default()).unwrap();
    sim.inbox[home].push_back(Event::Peer(PeerMsg::RemoteFrame { remote, frame }));
    sim.run();
    assert!(matches!(&bridge_frames(&mut sim, 7)[..], [ServerFrame::Ack { seq: 2, .. }]));
    assert_eq!(sim.msgs(a).last().unwrap().body, "from the poller");
    // Not polled for the heartbeat timeout: expired here, and the holder is told.
    for _ in 0..65 {
        sim.inbox[a.0].push_back(Event::Activity { conn: a.1 });
        sim.tick(1_000);
    }
    assert_eq!(bridge_frames(&mut sim, 7), vec![ServerFrame::Pong { r#ref: Some(Ref::Str("detached".into())) }]);
    sim.send(a, &send("bob", "2", "after expiry"));
    assert!(bridge_frames(&mut sim, 7).is_empty());
}

#[test]
fn in_cluster_mode_a_users_first_arrival_and_last_departure_on_the_node_are_reported() {
    for seed in 1..=8 {
        let store = store();
        let mut sim = Sim::with(3, seed, store.clone(), |c| {
            c.cluster = true;
            c.heartbeat_timeout_ms = 5_000;
        });
        let a1 = sim.connect("alice");
        let a2 = sim.connect("alice");
        let b = sim.connect("bob");
        assert_eq!(sim.directory, vec![("alice".into(), true), ("bob".into(), true)]);
        sim.disconnect(a1);
        assert_eq!(sim.directory.len(), 2, "alice still has a device here");
        sim.disconnect(a2);
        assert_eq!(sim.directory[2], ("alice".into(), false));
        // A heartbeat timeout is a departure too.
        sim.tick(10_000);
        let _ = b;
        assert_eq!(sim.directory[3], ("bob".into(), false));
        // Outside cluster mode nothing is reported.
        let mut single = Sim::new(2, seed, store);
        let c = single.connect("carol");
        single.disconnect(c);
        assert!(single.directory.is_empty());
    }
}

#[test]
fn sends_and_history_reads_beyond_a_connections_rate_are_refused_with_their_cmid() {
    let mut sim = Sim::with(2, 3, store(), |c| {
        c.send_rate = crate::rate::Rate { per_sec: 10, burst: 5 };
        c.history_rate = crate::rate::Rate { per_sec: 1, burst: 2 };
    });
    let a = sim.connect("alice");
    let other = sim.connect("alice");
    for i in 0..8 {
        sim.push(a, &send("bob", &format!("c{i}"), "x"));
    }
    sim.run();
    let frames = sim.take(a);
    let acked: Vec<String> =
        frames.iter().filter_map(|f| if let ServerFrame::Ack { cmid, .. } = f { Some(cmid.clone()) } else { None }).collect();
    let refused: Vec<(ErrorCode, Option<String>)> = frames
        .iter()
        .filter_map(|f| if let ServerFrame::Error { code, cmid, .. } = f { Some((*code, cmid.clone())) } else { None })
        .collect();
    assert_eq!(acked, vec!["c0", "c1", "c2", "c3", "c4"], "the burst");
    assert_eq!(refused, (5..8).map(|i| (ErrorCode::RateLimited, Some(format!("c{i}")))).collect::<Vec<_>>());
    // The limit is the connection's: another device of the same user is not affected.
    sim.send(other, &send("bob", "o1", "x"));
    assert!(err_code(&sim.take(other)).is_empty());
    // A retry after the refill goes through, with the next seq: nothing was half-stored.
    sim.tick(100);
    sim.send(a, &send("bob", "c5", "x"));
    let f = sim.take(a);
    assert!(matches!(f.last(), Some(ServerFrame::Ack { cmid, seq, .. }) if cmid == "c5" && *seq == 7), "{f:?}");
    for _ in 0..3 {
        sim.push(a, r#"{"t":"history","conv":"d:alice:bob","ref":"h"}"#);
    }
    sim.run();
    assert_eq!(err_code(&sim.take(a)), vec![ErrorCode::RateLimited]);
}

#[test]
fn a_users_connections_share_one_send_limit_so_more_connections_do_not_multiply_it() {
    let mut sim = Sim::with(2, 5, store(), |c| {
        c.send_rate = crate::rate::Rate { per_sec: 10, burst: 5 };
        c.user_send_rate = crate::rate::Rate { per_sec: 10, burst: 8 };
    });
    let devs: Vec<Dev> = (0..4).map(|_| sim.connect("alice")).collect();
    // Each device sends 3, within its own burst of 5: together 12, over the user's 8.
    for (d, dev) in devs.iter().enumerate() {
        for i in 0..3 {
            sim.push(*dev, &send("bob", &format!("d{d}-{i}"), "x"));
        }
    }
    sim.run();
    let (mut acked, mut limited) = (0, Vec::new());
    for dev in &devs {
        for f in sim.take(*dev) {
            match f {
                ServerFrame::Ack { .. } => acked += 1,
                ServerFrame::Error { code: ErrorCode::RateLimited, cmid, msg, .. } => limited.push((cmid, msg)),
                _ => {}
            }
        }
    }
    assert_eq!((acked, limited.len()), (8, 4), "{limited:?}");
    assert!(limited.iter().all(|(cmid, msg)| cmid.is_some() && msg.contains("your connections together")), "{limited:?}");
    // Another user is not affected, and alice's limit refills.
    let bob = sim.connect("bob");
    sim.send(bob, &send("alice", "b1", "x"));
    assert!(err_code(&sim.take(bob)).is_empty());
    sim.tick(200);
    sim.send(devs[0], &send("bob", "again", "x"));
    assert!(matches!(sim.take(devs[0]).last(), Some(ServerFrame::Ack { .. })));
}

/// History reads and presence subscription changes have a per-user limit too, over all of the
/// user's connections; each device stays within its own.
#[test]
fn a_users_connections_share_one_history_and_one_presence_limit() {
    let mut sim = Sim::with(2, 5, store(), |c| {
        c.history_rate = crate::rate::Rate { per_sec: 10, burst: 5 };
        c.user_history_rate = crate::rate::Rate { per_sec: 10, burst: 4 };
        c.presence_rate = crate::rate::Rate { per_sec: 10, burst: 5 };
        c.user_presence_rate = crate::rate::Rate { per_sec: 10, burst: 4 };
    });
    let devs: Vec<Dev> = (0..3).map(|_| sim.connect("alice")).collect();
    sim.send(devs[0], &send("bob", "c1", "x"));
    for dev in &devs {
        sim.take(*dev);
    }
    for (i, frame) in [r#"{"t":"history","conv":"d:alice:bob","ref":"h"}"#, r#"{"t":"presence_sub","users":["bob"]}"#].iter().enumerate() {
        // Two each from three devices: six, over the user's four.
        for dev in &devs {
            sim.push(*dev, frame);
            sim.push(*dev, frame);
        }
        sim.run();
        let limited: Vec<String> = devs
            .iter()
            .flat_map(|d| sim.take(*d))
            .filter_map(|f| match f {
                ServerFrame::Error { code: ErrorCode::RateLimited, msg, .. } => Some(msg),
                _ => None,
            })
            .collect();
        assert_eq!(limited.len(), 2, "frame {i}: {limited:?}");
        assert!(limited.iter().all(|m| m.contains("from your connections together")), "{limited:?}");
    }
}

/// A slow disk holds the owner's one commit; what arrives meanwhile waits up to
/// `owner_pending_ops_max` and the rest is refused with `unavailable` carrying the cmid or ref,
/// so clients retry exactly those; the retries go through once the queue drains.
#[test]
fn a_full_commit_queue_refuses_with_the_cmid_or_ref_and_the_retries_go_through() {
    let mut sim = Sim::with(1, 7, store(), |c| c.owner_pending_ops_max = 3);
    let a = sim.connect("ann");
    // m0 starts a commit (the sim finishes it only after everything queued before it); m1..m3
    // wait; the rest find the queue full.
    for i in 0..8 {
        sim.push(a, &send("ben", &format!("m{i}"), "x"));
    }
    sim.push(a, r#"{"t":"group_create","name":"team","members":["ben"],"ref":"g"}"#);
    sim.run();
    let frames = sim.take(a);
    let acked: Vec<(String, u64)> =
        frames.iter().filter_map(|f| if let ServerFrame::Ack { cmid, seq, .. } = f { Some((cmid.clone(), *seq)) } else { None }).collect();
    assert_eq!(acked, (0..4).map(|i| (format!("m{i}"), i + 1)).collect::<Vec<_>>());
    let refused: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Error { code: ErrorCode::Unavailable, cmid: Some(c), .. } => Some(c.clone()),
            ServerFrame::Error { code: ErrorCode::Unavailable, r#ref: Some(Ref::Str(r)), .. } => Some(format!("ref:{r}")),
            _ => None,
        })
        .collect();
    assert_eq!(refused, ["m4", "m5", "m6", "m7", "ref:g"]);
    assert_eq!(sim.shards[0].counters().overloaded, 5);
    for cmid in ["m4", "m5", "m6", "m7"] {
        sim.send(a, &send("ben", cmid, "x"));
    }
    let acked: Vec<u64> = sim.take(a).iter().filter_map(|f| if let ServerFrame::Ack { seq, .. } = f { Some(*seq) } else { None }).collect();
    assert_eq!(acked, [5, 6, 7, 8]);
}

/// One step of a client population, for the property test below.
#[derive(Clone, Debug)]
enum Step {
    /// Device `dev` sends a new message to `to`.
    Send { dev: usize, to: usize },
    /// Device `dev` sends again the `nth` message it ever sent (a retry after a lost ack).
    Retry { dev: usize, nth: usize },
    /// Device `dev` marks `seq` of its conversation with `to` read (or delivered).
    Mark { dev: usize, to: usize, seq: u64, read: bool },
    /// Device `dev` drops and connects again.
    Reconnect { dev: usize },
    /// Time passes.
    Tick,
}

const USERS: [&str; 3] = ["ann", "ben", "cat"];

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        5 => (0..6usize, 0..3usize).prop_map(|(dev, to)| Step::Send { dev, to }),
        2 => (0..6usize, 0..20usize).prop_map(|(dev, nth)| Step::Retry { dev, nth }),
        2 => (0..6usize, 0..3usize, 1..12u64, any::<bool>()).prop_map(|(dev, to, seq, read)| Step::Mark { dev, to, seq, read }),
        1 => (0..6usize).prop_map(|dev| Step::Reconnect { dev }),
        1 => Just(Step::Tick),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 96, ..Default::default() })]
    /// Whatever devices do and in whatever interleaving: seqs are dense from 1, each (sender,
    /// cmid) is stored once and a retry gets the first ack again, and watermarks never go back
    /// and never pass the conversation's last seq.
    #[test]
    fn seq_dedup_and_watermarks_hold_under_any_interleaving(seed in 1u64.., shards in 1usize..4, steps in proptest::collection::vec(step(), 1..60)) {
        let store = store();
        let mut sim = Sim::new(shards, seed, store.clone());
        // Devices 0..6: two per user.
        let mut devs: Vec<Dev> = (0..6).map(|i| sim.connect(USERS[i / 2])).collect();
        let mut sent: Vec<Vec<(String, usize)>> = vec![Vec::new(); 6];
        let mut first_ack: HashMap<String, (String, u64)> = HashMap::new();
        let mut marks: HashMap<(String, String, bool), u64> = HashMap::new();
        let mut n = 0;
        for s in steps {
            match s {
                Step::Send { dev, to } if USERS[to] != USERS[dev / 2] => {
                    n += 1;
                    let cmid = format!("m{n}");
                    sent[dev].push((cmid.clone(), to));
                    sim.push(devs[dev], &send(USERS[to], &cmid, "x"));
                }
                Step::Retry { dev, nth } if !sent[dev].is_empty() => {
                    let (cmid, to) = sent[dev][nth % sent[dev].len()].clone();
                    sim.push(devs[dev], &send(USERS[to], &cmid, "x"));
                }
                Step::Mark { dev, to, seq, read } if USERS[to] != USERS[dev / 2] => {
                    let (a, b) = (USERS[dev / 2].min(USERS[to]), USERS[dev / 2].max(USERS[to]));
                    let kind = if read { "read" } else { "delivered" };
                    sim.push(devs[dev], &format!(r#"{{"t":"{kind}","conv":"d:{a}:{b}","seq":{seq}}}"#));
                }
                Step::Reconnect { dev } => {
                    sim.disconnect(devs[dev]);
                    devs[dev] = sim.connect(USERS[dev / 2]);
                }
                Step::Tick => sim.tick(100),
                _ => {}
            }
            // Runs some of the time only, so frames pile up and interleave across shards.
            if sim.rng.below(3) == 0 {
                sim.run();
                // Watermarks are read while the run goes on, not only at its end: each reading
                // must be at least the one before.
                watermarks_never_go_back(&*store, &mut marks)?;
            }
            for (i, d) in devs.iter().enumerate() {
                for f in sim.take(*d) {
                    if let ServerFrame::Ack { cmid, conv, seq, .. } = f {
                        let first = first_ack.entry(cmid.clone()).or_insert((conv.clone(), seq));
                        proptest::prop_assert_eq!(&*first, &(conv, seq), "device {} got a second ack for {} that differs", i, cmid);
                    }
                }
            }
        }
        sim.run();
        for d in &devs {
            for f in sim.take(*d) {
                if let ServerFrame::Ack { cmid, conv, seq, .. } = f {
                    let first = first_ack.entry(cmid.clone()).or_insert((conv.clone(), seq));
                    proptest::prop_assert_eq!(&*first, &(conv, seq));
                }
            }
        }
        let mut stored = 0;
        for (i, a) in USERS.iter().enumerate() {
            for b in &USERS[i + 1..] {
                let conv = format!("d:{a}:{b}");
                let msgs = store.messages_after(&conv, 0, 10_000).unwrap();
                let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
                proptest::prop_assert_eq!(seqs, (1..=msgs.len() as u64).collect::<Vec<_>>(), "dense seqs in {}", conv);
                let mut cmids: Vec<&str> = msgs.iter().map(|m| m.cmid.as_str()).collect();
                cmids.sort_unstable();
                let len = cmids.len();
                cmids.dedup();
                proptest::prop_assert_eq!(cmids.len(), len, "a cmid stored twice in {}", conv);
                for m in &msgs {
                    // An ack can be lost with its connection (the client retries); one that
                    // arrived names exactly what is stored.
                    if let Some(ack) = first_ack.get(&m.cmid) {
                        proptest::prop_assert_eq!(ack, &(conv.clone(), m.seq), "acked otherwise than stored");
                        stored += 1;
                    }
                    proptest::prop_assert!(sent.iter().flatten().any(|(c, _)| *c == m.cmid), "stored but never sent");
                }
                for user in [a, b] {
                    for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
                        let w = store.watermark(&conv, user, kind).unwrap();
                        proptest::prop_assert!(w <= msgs.len() as u64, "watermark past the last seq");
                    }
                }
            }
        }
        watermarks_never_go_back(&*store, &mut marks)?;
        proptest::prop_assert_eq!(stored, first_ack.len(), "every ack names a stored message");
    }
}

/// Reads every watermark of the users' direct conversations and checks none is below the last
/// reading in `marks` (which it then updates).
fn watermarks_never_go_back(
    store: &dyn MessageStore,
    marks: &mut HashMap<(String, String, bool), u64>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    for (i, a) in USERS.iter().enumerate() {
        for b in &USERS[i + 1..] {
            let conv = format!("d:{a}:{b}");
            for user in [a, b] {
                for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
                    let w = store.watermark(&conv, user, kind).unwrap();
                    let key = (conv.clone(), user.to_string(), kind == ReceiptKind::Read);
                    let before = marks.get(&key).copied().unwrap_or(0);
                    proptest::prop_assert!(w >= before, "watermark of {} in {} went back from {} to {}", user, conv, before, w);
                    marks.insert(key, w);
                }
            }
        }
    }
    Ok(())
}
