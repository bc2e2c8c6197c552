//! Direct messages: delivery to every device, dense seqs, dedup across restarts, watermarks,
//! authorization, sync and history, heartbeats and token expiry, a failing store.
use super::*;

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
    let conn = ConnId(sim.next_conn);
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
    let conn = ConnId(sim.next_conn);
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

/// Commit pacing: a send that comes within the interval of the last job's start waits in the
/// shard, with whatever comes meanwhile, for a wake-up at its end, and they go out in one job;
/// one that comes later goes out at once.
#[test]
fn paced_commits_hold_sends_until_the_interval_ends_and_take_them_together() {
    let mut sim = Sim::with(1, 9, store(), |c| c.commit_interval_us = 5_000);
    sim.trace = Some(Vec::new());
    let (a, b) = (sim.connect("alice"), sim.connect("bob"));
    let jobs = |sim: &Sim| sim.trace.as_ref().unwrap().iter().filter(|a| a.starts_with("0 Commit(")).count();
    sim.send(a, &send("bob", "c1", "first"));
    assert_eq!(acked(&sim.take(a)), ["c1"], "the first job goes out at once");
    let start = sim.now.mono_us;
    sim.send(a, &send("bob", "c2", "x"));
    sim.send(b, &send("alice", "c3", "y"));
    assert!(acked(&sim.take(a)).is_empty() && acked(&sim.take(b)).is_empty(), "held: within 5 ms of the first job");
    assert_eq!(sim.wakes[0], Some(start + 5_000), "one wake-up, at the interval's end");
    sim.tick(1);
    assert!(sim.take(a).is_empty(), "still held at 1 ms");
    sim.tick(4);
    assert_eq!(acked(&sim.take(a)), ["c2"]);
    assert_eq!(acked(&sim.take(b)), ["c3"]);
    assert_eq!(jobs(&sim), 2, "the two held sends went out in one job");
    // Past the interval a send goes out at once again.
    sim.tick(10);
    sim.send(a, &send("bob", "c4", "z"));
    assert_eq!(acked(&sim.take(a)), ["c4"]);
    assert_eq!(sim.wakes[0], None);
    // Held again, then the engine stops: what is held goes out at once.
    sim.send(a, &send("bob", "c5", "w"));
    assert!(acked(&sim.take(a)).is_empty());
    sim.inbox[0].push_back(Event::Drain);
    sim.run();
    assert_eq!(acked(&sim.take(a)), ["c5"]);
    let stored = sim.store.messages_after("d:alice:bob", 0, 10).unwrap();
    assert_eq!(
        stored.iter().map(|m| (m.seq, m.cmid.as_str())).collect::<Vec<_>>(),
        [(1, "c1"), (2, "c2"), (3, "c3"), (4, "c4"), (5, "c5")]
    );
}
