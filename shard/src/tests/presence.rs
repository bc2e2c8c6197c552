//! Presence by interest, remote sessions (long-poll and other nodes' users), the cluster
//! directory reports.
use super::*;

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

/// The first answer counts as told. Alice connects while her last-seen time is being read
/// for a new subscriber; the answer (online) comes after, and the change behind it is not
/// published again. A second subscriber told "online" while the first still holds "offline"
/// does not stop the first from hearing the change.
#[test]
fn a_first_answer_is_not_followed_by_the_same_status() {
    let mut sim = Sim::new(1, 14, store());
    let w = sim.connect("w");
    sim.push(w, r#"{"t":"presence_sub","users":["alice"]}"#);
    sim.inbox[0].push_back(Event::Connected { conn: ConnId(99), user: "alice".into(), device: "d".into(), expires_unix_ms: None });
    sim.run();
    assert_eq!(presence(&sim.take(w)), vec![("alice".into(), "online".into(), None)]);
    sim.tick(1_100);
    assert_eq!(presence(&sim.take(w)), vec![], "alice was online all along");

    // Mixed: w2 hears "online" while w last heard "offline" (not yet published, coalesced).
    sim.disconnect(Dev(0, ConnId(99)));
    sim.tick(1_100);
    assert_eq!(presence(&sim.take(w))[0].1, "offline");
    let a = sim.connect("alice");
    let w2 = sim.connect("w2");
    sim.send(w2, r#"{"t":"presence_sub","users":["alice"]}"#);
    assert_eq!(presence(&sim.take(w2))[0].1, "online");
    sim.tick(1_100);
    assert_eq!(presence(&sim.take(w))[0].1, "online", "w still hears the change");
    sim.disconnect(a);
    sim.tick(1_100);
    assert_eq!(presence(&sim.take(w))[0].1, "offline");
    // w2 may have heard "online" twice: a publication after a mixed state goes to everyone.
    assert_eq!(presence(&sim.take(w2)).last().unwrap().1, "offline");
}

/// A first answer is not a publication for the coalescing interval: the first change after it
/// goes out at the next tick, even in an engine's first second (its monotonic clock near 0).
#[test]
fn the_first_change_after_a_first_answer_is_not_held_back() {
    let mut sim = Sim::new(2, 15, store());
    sim.now.mono_us = 0;
    let w = sim.connect("w");
    sim.send(w, r#"{"t":"presence_sub","users":["alice"]}"#);
    assert_eq!(presence(&sim.take(w))[0].1, "offline");
    sim.connect("alice");
    sim.tick(250);
    assert_eq!(presence(&sim.take(w)).last().map(|p| p.1.clone()), Some("online".to_string()));
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

#[test]
fn a_remote_session_is_a_connection_whose_frames_go_to_its_holder() {
    let mut sim = Sim::new(3, 21, store());
    let n = sim.shards.len();
    let remote = ConnRef { node: 0, shard: n, conn: ConnId(7) };
    let home = home_shard("bob", n);
    sim.inbox[home].push_back(Event::Peer(PeerMsg::Attach { user: "bob".into(), device: "poll".into(), remote }));
    sim.run();
    let a = sim.connect("alice");
    sim.send(a, &send("bob", "1", "to the poller"));
    let f = bridge_frames(&mut sim, ConnId(7));
    assert!(matches!(&f[..], [ServerFrame::Msg(m)] if m.body == "to the poller"), "{f:?}");
    // Frames posted to the session are the session's requests; answers come back to the holder.
    let frame = decode_text(&send("alice", "b1", "from the poller"), &Limits::default()).unwrap();
    sim.inbox[home].push_back(Event::Peer(PeerMsg::RemoteFrame { remote, frame }));
    sim.run();
    assert!(matches!(&bridge_frames(&mut sim, ConnId(7))[..], [ServerFrame::Ack { seq: 2, .. }]));
    assert_eq!(sim.msgs(a).last().unwrap().body, "from the poller");
    // Not polled for the heartbeat timeout: expired here, and the holder is told.
    for _ in 0..65 {
        sim.inbox[a.0].push_back(Event::Activity { conn: a.1 });
        sim.tick(1_000);
    }
    assert_eq!(bridge_frames(&mut sim, ConnId(7)), vec![ServerFrame::Pong { r#ref: Some(Ref::Str("detached".into())) }]);
    sim.send(a, &send("bob", "2", "after expiry"));
    assert!(bridge_frames(&mut sim, ConnId(7)).is_empty());
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
