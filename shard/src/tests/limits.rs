//! Rate limits per connection and per user, and the bounded commit queue.
use super::*;

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
    let acked = acked(&frames);
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

/// The buffer the runtime gives back after carrying out an event's actions takes the next
/// event's (no growth from empty each time: a commit's few hundred acks and deliveries doubled
/// their way up through fresh pages), unless it is past [`ACTIONS_KEPT_MAX`].
#[test]
fn the_action_buffer_goes_back_for_the_next_event_up_to_its_bound() {
    let now = Now { unix_ms: 1_800_000_000_000, mono_us: 1_000_000 };
    let mut shard = Shard::new(ShardConfig::new(0, 1), now);
    shard.recycle_actions(Vec::with_capacity(100));
    shard.handle(now, Event::Tick);
    assert!(shard.take_actions().capacity() >= 100, "the next event's actions went into the buffer given back");
    shard.recycle_actions(Vec::with_capacity(ACTIONS_KEPT_MAX + 1));
    shard.handle(now, Event::Tick);
    assert!(shard.take_actions().capacity() <= ACTIONS_KEPT_MAX, "a buffer past the bound is not kept");
}
