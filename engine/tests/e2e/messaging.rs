//! End to end over real WebSockets: direct messages, devices, ordering, sync, history,
//! receipts, restart and crash.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn a_direct_message_reaches_every_device_in_order() {
    let s = Server::start(&[]);
    let mut a1 = Client::connect(&s, "alice", "phone").await;
    let mut a2 = Client::connect(&s, "alice", "laptop").await;
    let mut b1 = Client::connect(&s, "bob", "phone").await;
    let mut b2 = Client::connect(&s, "bob", "laptop").await;
    for i in 1..=5 {
        let ack = a1.dm("bob", &format!("c{i}"), &format!("hello {i}")).await;
        assert_eq!(ack["t"], "ack", "{ack}");
        assert_eq!(ack["conv"], "d:alice:bob");
        assert_eq!(seq(&ack), i);
        assert!(ack["id"].is_string(), "ids are strings in JSON: {ack}");
        assert!(ack["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }
    for c in [&mut a2, &mut b1, &mut b2] {
        for i in 1..=5u64 {
            let m = c.recv().await;
            assert_eq!((m["t"].as_str(), seq(&m), m["from"].as_str()), (Some("msg"), i, Some("alice")), "{m}");
            assert_eq!(m["body"], format!("hello {i}"));
            assert_eq!(m["kind"], "text");
            assert_eq!(m["cmid"], format!("c{i}"));
        }
    }
    // The sending device gets acks, not its own messages.
    a1.send(json!({"t":"ping","ref":"p"})).await;
    assert_eq!(a1.recv().await, json!({"t":"pong","ref":"p"}));
}

#[tokio::test]
async fn many_concurrent_senders_get_one_dense_order_seen_by_everyone() {
    let s = Server::start(&["--shards", "4"]);
    let per_device = 100;
    let mut tasks = Vec::new();
    let mut watchers = Vec::new();
    for u in ["alice", "bob"] {
        watchers.push(Client::connect(&s, u, "watcher").await);
    }
    for (u, to) in [("alice", "bob"), ("bob", "alice")] {
        for d in 0..4 {
            let mut c = Client::connect(&s, u, &format!("d{d}")).await;
            tasks.push(tokio::spawn(async move {
                for i in 0..per_device {
                    c.send(json!({"t":"send","cmid":format!("{d}-{i}"),"to":to,"body":"x"})).await;
                }
                let mut acks = Vec::new();
                while acks.len() < per_device {
                    let v = c.recv().await;
                    if v["t"] == "ack" {
                        acks.push(seq(&v));
                    }
                }
                acks
            }));
        }
    }
    let mut all: Vec<u64> = Vec::new();
    for t in tasks {
        let acks = t.await.unwrap();
        assert!(acks.windows(2).all(|w| w[0] < w[1]), "one device's sends are sequenced in its order");
        all.extend(acks);
    }
    all.sort();
    let total = 8 * per_device as u64;
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
    for w in &mut watchers {
        for want in 1..=total {
            let m = w.recv().await;
            assert_eq!(seq(&m), want, "{m}");
        }
    }
}

#[tokio::test]
async fn receipts_are_forwarded_and_monotonic() {
    let s = Server::start(&[]);
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut b = Client::connect(&s, "bob", "d").await;
    for i in 0..3 {
        a.dm("bob", &format!("{i}"), "x").await;
    }
    b.send(json!({"t":"delivered","conv":"d:alice:bob","seq":3})).await;
    b.send(json!({"t":"read","conv":"d:alice:bob","seq":2})).await;
    b.send(json!({"t":"read","conv":"d:alice:bob","seq":1})).await;
    assert_eq!(a.recv().await, json!({"t":"receipt","conv":"d:alice:bob","user":"bob","kind":"delivered","seq":3}));
    assert_eq!(a.recv().await, json!({"t":"receipt","conv":"d:alice:bob","user":"bob","kind":"read","seq":2}));
    a.silent_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn offline_devices_catch_up_with_sync_and_history_pages_backwards() {
    let s = Server::start(&[]);
    let mut a = Client::connect(&s, "alice", "d").await;
    for i in 1..=230 {
        a.dm("bob", &format!("m{i}"), &format!("{i}")).await;
    }
    a.dm("carol", "c1", "hi carol").await;
    let mut c = Client::connect(&s, "carol", "d").await;
    c.dm("bob", "cb", "hi bob").await;
    let mut b = Client::connect(&s, "bob", "d").await;
    b.send(json!({"t":"sync","cursors":{"d:alice:bob":30}})).await;
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    let synced = loop {
        let v = b.recv().await;
        match v["t"].as_str().unwrap() {
            "sync" => {
                let conv = v["conv"].as_str().unwrap().to_string();
                let msgs = v["messages"].as_array().unwrap();
                assert!(msgs.iter().all(|m| m.get("t").is_none()), "messages in sync carry no t");
                got.entry(conv).or_default().extend(msgs.iter().map(seq));
            }
            // A message still in flight when bob connected arrives live (and is then not
            // replayed by the sync): either way, once.
            "msg" => got.entry(v["conv"].as_str().unwrap().to_string()).or_default().push(seq(&v)),
            "synced" => break v,
            other => panic!("unexpected {other}: {v}"),
        }
    };
    assert_eq!(got["d:alice:bob"], (31..=230).collect::<Vec<_>>());
    assert_eq!(got["d:bob:carol"], vec![1]);
    assert_eq!(synced["convs"], json!({"d:alice:bob":230,"d:bob:carol":1}));
    // Up to date: the next sync sends only `synced`.
    b.send(json!({"t":"sync","cursors":{"d:alice:bob":230,"d:bob:carol":1}})).await;
    assert_eq!(b.recv().await["t"], "synced");

    b.send(json!({"t":"history","conv":"d:alice:bob","limit":100,"ref":"h"})).await;
    let page = b.recv().await;
    assert_eq!(page["t"], "history");
    assert_eq!(page["ref"], "h");
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, (131..=230).rev().collect::<Vec<_>>());
    b.send(json!({"t":"history","conv":"d:alice:bob","before":131,"limit":200})).await;
    let seqs: Vec<u64> = b.recv().await["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, (1..=130).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn a_retried_send_is_acked_once_and_delivered_once() {
    let s = Server::start(&[]);
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut b = Client::connect(&s, "bob", "d").await;
    let first = a.dm("bob", "same", "once").await;
    let again = a.dm("bob", "same", "once").await;
    assert_eq!(first, again);
    assert_eq!(seq(&b.recv().await), 1);
    b.silent_for(Duration::from_millis(300)).await;
}

async fn acked_then_restarted(crash: bool) {
    let mut s = Server::start(&[]);
    let mut acked: Vec<Value> = Vec::new();
    {
        let mut a = Client::connect(&s, "alice", "d").await;
        for i in 0..50 {
            acked.push(a.dm("bob", &format!("{i}"), &format!("body {i}")).await);
        }
        a.send(json!({"t":"read","conv":"d:alice:bob","seq":50})).await;
        a.send(json!({"t":"ping"})).await;
        a.recv_where(|v| v["t"] == "pong").await;
        if crash {
            s.kill();
        } else {
            s.stop();
        }
    }
    s.restart();
    let mut b = Client::connect(&s, "bob", "d").await;
    b.send(json!({"t":"history","conv":"d:alice:bob","limit":200})).await;
    let page = b.recv().await;
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 50, "every acked message survives");
    for (m, ack) in msgs.iter().rev().zip(&acked) {
        assert_eq!((&m["id"], &m["seq"], &m["ts"]), (&ack["id"], &ack["seq"], &ack["ts"]));
    }
    b.send(json!({"t":"sync","cursors":{}})).await;
    let mut n = 0;
    loop {
        let v = b.recv().await;
        if v["t"] == "synced" {
            assert_eq!(v["convs"]["d:alice:bob"], 50);
            break;
        }
        n += v["messages"].as_array().unwrap().len();
    }
    assert_eq!(n, 50);
    let mut a = Client::connect(&s, "alice", "d2").await;
    // seq continues, dedup survives the restart.
    assert_eq!(seq(&a.dm("bob", "next", "after restart").await), 51);
    assert_eq!(a.dm("bob", "7", "retry").await, acked[7]);
}

#[tokio::test]
async fn acked_messages_survive_a_clean_restart() {
    acked_then_restarted(false).await;
}

#[tokio::test]
async fn acked_messages_survive_kill_9() {
    acked_then_restarted(true).await;
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001() {
    let mut s = Server::start(&[]);
    let mut a = Client::connect(&s, "alice", "d").await;
    a.send(json!({"t":"ping"})).await;
    a.recv().await;
    let stop = std::thread::spawn(move || s.stop());
    assert_eq!(a.closed(Duration::from_secs(10)).await, Some(1001));
    stop.join().unwrap();
}

/// A clean stop writes what a paced shard still holds: the last-seen time of a user who left
/// just before it, held (one shard, a 5 s commit interval) behind a commit that had just
/// gone out, is read back after the restart.
#[tokio::test]
async fn a_clean_stop_writes_what_a_paced_shard_holds() {
    let mut s = Server::start(&["--shards", "1", "--commit-interval-us", "5000000"]);
    // Nobody else connected: the stop does not wait for a close handshake past the interval.
    let mut alice = Client::connect(&s, "alice", "d").await;
    let ack = alice.dm("bob", "c1", "hi").await;
    assert_eq!(ack["t"], "ack", "{ack}");
    drop(alice);
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.stop();
    s.restart();
    let mut w = Client::connect(&s, "watcher", "d").await;
    w.send(json!({"t":"presence_sub","users":["alice"]})).await;
    let p = w.recv_where(|v| v["t"] == "presence").await;
    assert_eq!(p["status"], "offline", "{p}");
    assert!(p["last_seen"].as_u64().is_some(), "alice's last-seen time was lost at the stop: {p}");
}
