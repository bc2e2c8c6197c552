//! The link's bounds: what the shards hand it, and what it hands the bridge.

use super::*;
use shardchat_codec::{ErrorCode, MsgKind, ServerFrame};
use shardchat_shard::ops::{ConnId, SendOp, Target};
use shardchat_shard::RemoteOp;

/// A handle whose link never takes a turn, so what is handed over stays in its inbox.
fn handle_without_link(inbox: Inbox, bridge: Bridge) -> Cluster {
    let shared = Arc::new(Shared { inbox: Mutex::new(inbox), bell: Notify::new(), stopping: AtomicBool::new(false) });
    Cluster {
        shared,
        shards: 4,
        bridge: Arc::new(Mutex::new(Some(bridge))),
        state: Arc::new(ClusterState::default()),
        thread: Mutex::new(None),
    }
}

fn send(cmid: &str) -> RemoteMsg {
    let from = ConnRef { node: 1, shard: 2, conn: ConnId(7) };
    RemoteMsg::Op(RemoteOp::Send(SendOp::new(from, "a".into(), cmid.into(), Target::Conv("g:7".into()), "hi".into(), MsgKind::Text)))
}

#[test]
fn at_the_link_bound_an_op_is_answered_unavailable_at_once_and_a_fanout_is_dropped() {
    let (bridge, _end) = shardchat_bridge::pair().unwrap();
    let c = handle_without_link(Inbox::with_bounds(2, 1 << 20), bridge);
    assert!(c.remote(3, send("c1")).is_empty());
    assert!(c.remote(3, send("c2")).is_empty());
    let owed = c.remote(3, send("c3"));
    let [(shard, PeerMsg::Reply { conn, payload })] = &owed[..] else { panic!("one answer owed: {}", owed.len()) };
    assert_eq!((*shard, *conn), (2, ConnId(7)), "to the requester's shard and connection");
    assert!(
        matches!(payload.frame(), ServerFrame::Error { code: ErrorCode::Unavailable, cmid: Some(c), .. } if c == "c3"),
        "unavailable with the refused send's cmid, so its client retries exactly that"
    );
    let payload = shardchat_shard::Payload::new(ServerFrame::Pong { r#ref: None });
    c.fanout(vec!["u".into()], &payload, None, None, Class::Durable);
    assert_eq!(c.state.remote_refused.load(Ordering::Relaxed), 2);
    assert_eq!(c.shared.inbox().held().0, 2, "the queue stayed at its bound");
    let mut text = String::new();
    c.state.render(&mut text);
    assert!(text.contains("shardchat_cluster_remote_refused_total 2"), "{text}");

    // Directory changes are never refused: they coalesce per user.
    for i in 0..1000 {
        c.directory(format!("u{}", i % 10), i % 2 == 0);
    }
    let turn = c.shared.inbox().take();
    assert_eq!(turn.directory.len(), 10);
    assert_eq!(turn.out.len(), 2);
}

#[test]
fn the_link_never_blocks_on_a_full_bridge() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (bridge, end) = shardchat_bridge::pair_holding(1).unwrap();
        let msg = || vec![(0, PeerMsg::Reply { conn: ConnId(1), payload: ServerFrame::Pong { r#ref: None }.into() })];
        assert!(bridge.try_inject(msg()).is_ok());
        assert!(matches!(bridge.try_inject(msg()), Err(Injected::Full(_))), "a queue of one is full");
        let slot = Mutex::new(Some(bridge));
        let state = ClusterState::default();

        // The link's thread keeps running its other work while the bridge is full.
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        let started = std::time::Instant::now();
        assert!(!hand_to_bridge(&slot, msg(), &state).await, "dropped once the wait is over");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(BRIDGE_WAIT_MS), "tried for the whole wait: {waited:?}");
        assert!(ticks.load(Ordering::Relaxed) >= 20, "other tasks ran meanwhile: {}", ticks.load(Ordering::Relaxed));
        assert_eq!(state.bridge_dropped.load(Ordering::Relaxed), 1);

        // Room made during the wait: the batch goes through.
        let rx = end.rx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let _ = rx.recv();
        });
        assert!(hand_to_bridge(&slot, msg(), &state).await, "handed over once the bridge took one");
        assert_eq!(state.bridge_dropped.load(Ordering::Relaxed), 1);
        ticker.abort();
        drop(end);
        assert!(!hand_to_bridge(&slot, msg(), &state).await, "a stopped bridge takes nothing");
        assert_eq!(state.bridge_dropped.load(Ordering::Relaxed), 1, "and that is no drop to count");
    });
}

/// A node whose store never answers its fence read cannot join, and must still stop: shutdown
/// waited on the link for good (its retry loop never looked at the stop).
#[test]
fn a_node_that_cannot_read_its_fence_still_stops() {
    let (bridge, _end) = shardchat_bridge::pair().unwrap();
    let store = Arc::new(shardchat_storage_mem::MemStore::new());
    store.faults.reads_down.store(true, Ordering::Release);
    let cfg = ClusterConfig { redis: "redis://127.0.0.1:1".into(), node: 1, shards: 2, listen: "127.0.0.1:1".parse().unwrap(), http: None };
    let health = Arc::new(Health::new(2));
    let c = Cluster::start(cfg, bridge, store, health).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        c.stop();
        let _ = done_tx.send(());
    });
    assert!(done.recv_timeout(Duration::from_secs(10)).is_ok(), "stop returned");
}

#[test]
fn search_peers_are_the_other_nodes_that_publish_a_control_plane() {
    let values = [
        Some(r#"{"listen":"127.0.0.1:1","http":"127.0.0.1:11","shards":2,"pid":1,"inc":5}"#.to_string()),
        Some(r#"{"listen":"127.0.0.1:2","http":"127.0.0.1:12","shards":2,"pid":2,"inc":5}"#.to_string()),
        Some(r#"{"listen":"127.0.0.1:3","shards":2,"pid":3,"inc":5}"#.to_string()),
        None,
        Some("not json".to_string()),
    ];
    let peers = super::search_peers(1, &[1, 2, 3, 4, 5], &values);
    assert_eq!(peers, vec![(2, "127.0.0.1:12".to_string())], "not itself, not one without --http, not a dead or garbled key");
}
