//! The long-polling fallback end to end: a client that only polls misses nothing and sees the
//! WebSocket's order.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn poll(s: &Server, user: &str, cursor: Option<&str>, timeout_s: u64) -> (u16, Value) {
    let mut path = format!("/v1/poll?timeout={timeout_s}");
    if let Some(c) = cursor {
        path.push_str(&format!("&cursor={c}"));
    }
    let r = reqwest::get(s.rest(&path, user)).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(s: &Server, user: &str, cursor: &str, frame: Value) -> u16 {
    let r = reqwest::Client::new().post(s.rest(&format!("/v1/poll?cursor={cursor}"), user)).body(frame.to_string()).send().await.unwrap();
    r.status().as_u16()
}

/// Polls until `n` events arrived (or fails after a while); returns them and the last cursor.
async fn events(s: &Server, user: &str, mut cursor: String, n: usize) -> (Vec<Value>, String) {
    let mut out = Vec::new();
    for _ in 0..50 {
        let (status, v) = poll(s, user, Some(&cursor), 2).await;
        assert_eq!(status, 200, "{v}");
        out.extend(v["events"].as_array().unwrap().iter().cloned());
        cursor = v["cursor"].as_str().unwrap().to_string();
        if out.len() >= n {
            return (out, cursor);
        }
    }
    panic!("only {} of {n} events: {out:?}", out.len());
}

#[tokio::test]
async fn a_polling_client_sends_receives_and_misses_nothing() {
    let s = Server::start(&[]);
    let (status, start) = poll(&s, "bob", None, 1).await;
    assert_eq!(status, 200, "{start}");
    let cursor = start["cursor"].as_str().unwrap().to_string();
    // A WebSocket user sends to the poller; the poller sends back over POST.
    let mut alice = Client::connect(&s, "alice", "d").await;
    for i in 0..30 {
        alice.dm("bob", &format!("a{i}"), &format!("{i}")).await;
    }
    assert_eq!(post(&s, "bob", &cursor, json!({"t":"send","cmid":"b1","to":"alice","body":"polled reply"})).await, 202);
    let (evs, cursor) = events(&s, "bob", cursor, 31).await;
    let seqs: Vec<u64> = evs.iter().filter(|e| e["t"] == "msg").map(seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "every message, once, in order");
    assert!(evs.iter().any(|e| e["t"] == "ack" && e["cmid"] == "b1" && e["seq"] == 31));
    assert_eq!(alice.recv_where(|v| v["t"] == "msg").await["body"], "polled reply");
    // Receipts, presence and sync work as on the WebSocket.
    assert_eq!(post(&s, "bob", &cursor, json!({"t":"read","conv":"d:alice:bob","seq":30})).await, 202);
    assert_eq!(alice.recv_where(|v| v["t"] == "receipt").await["seq"], 30);
    assert_eq!(post(&s, "bob", &cursor, json!({"t":"presence_sub","users":["alice"]})).await, 202);
    // This session got 1..31 live, so its sync replays nothing and just says where things stand.
    assert_eq!(post(&s, "bob", &cursor, json!({"t":"sync","cursors":{"d:alice:bob":28}})).await, 202);
    let (evs, cursor) = events(&s, "bob", cursor, 2).await;
    assert!(evs.iter().any(|e| e["t"] == "presence" && e["status"] == "online"), "{evs:?}");
    assert!(evs.iter().any(|e| e["t"] == "synced" && e["convs"]["d:alice:bob"] == 31), "{evs:?}");
    assert!(!evs.iter().any(|e| e["t"] == "sync"), "nothing replayed twice: {evs:?}");
    // A second polling device catches up from its own cursor.
    let (_, other) = poll(&s, "bob", None, 1).await;
    let other = other["cursor"].as_str().unwrap().to_string();
    assert_eq!(post(&s, "bob", &other, json!({"t":"sync","cursors":{"d:alice:bob":28}})).await, 202);
    let (evs, _) = events(&s, "bob", other, 2).await;
    let synced: Vec<u64> = evs
        .iter()
        .filter(|e| e["t"] == "sync")
        .flat_map(|e| e["messages"].as_array().unwrap().iter().map(seq).collect::<Vec<_>>())
        .collect();
    assert_eq!(synced, vec![29, 30, 31]);
    // An empty poll waits for its timeout and keeps the cursor.
    let t = std::time::Instant::now();
    let (_, v) = poll(&s, "bob", Some(&cursor), 1).await;
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!((v["cursor"].as_str(), v["events"].as_array().map(Vec::len)), (Some(cursor.as_str()), Some(0)));
    // A waiting poll is answered as soon as something arrives.
    let waiter = {
        let c = cursor.clone();
        let url = s.rest(&format!("/v1/poll?timeout=20&cursor={c}"), "bob");
        tokio::spawn(async move { reqwest::get(url).await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    alice.dm("bob", "late", "wake up").await;
    let v = waiter.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(v["events"][0]["body"], "wake up");
}

#[tokio::test]
async fn sessions_belong_to_their_user_and_expire_when_not_polled() {
    let s = Server::start(&["--heartbeat-timeout-ms", "1000"]);
    let (_, start) = poll(&s, "bob", None, 1).await;
    let cursor = start["cursor"].as_str().unwrap().to_string();
    let (status, _) = poll(&s, "eve", Some(&cursor), 1).await;
    assert_eq!(status, 403, "another user's cursor");
    assert_eq!(post(&s, "eve", &cursor, json!({"t":"ping"})).await, 403);
    assert_eq!(post(&s, "bob", &cursor, json!({"t":"nonsense"})).await, 400, "frames are checked like WebSocket frames");
    let (status, _) = poll(&s, "bob", Some("garbage"), 1).await;
    assert_eq!(status, 400);
    // Not polled for longer than the heartbeat timeout: gone.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (status, v) = poll(&s, "bob", Some(&cursor), 1).await;
    assert_eq!(status, 410, "{v}");
}

#[tokio::test]
async fn a_session_holds_a_bounded_number_of_bytes_and_a_user_a_bounded_number_of_sessions() {
    // Bodies up to 1,000 bytes, and a session holds at most 30,000 bytes of unconfirmed events.
    let s = Server::start(&["--body-bytes-max", "1000", "--outbound-queue-bytes-max", "30000", "--poll-sessions-per-user-max", "2"]);
    let (_, start) = poll(&s, "bob", None, 1).await;
    let cursor = start["cursor"].as_str().unwrap().to_string();
    // 40 messages of 900 bytes (36 KB with their fields) and no poll: the session ends, as a
    // WebSocket slow consumer is closed, whatever the event count (far below 10,000).
    let mut alice = Client::connect(&s, "alice", "d").await;
    for i in 0..40 {
        alice.dm("bob", &format!("a{i}"), &"x".repeat(900)).await;
    }
    let (status, v) = poll(&s, "bob", Some(&cursor), 1).await;
    assert_eq!((status, v["code"].as_str()), (410, Some("not_found")), "{v}");
    // Sessions per user: starting a third of two ends the oldest; the others go on.
    let mut cursors = Vec::new();
    for _ in 0..3 {
        let (status, v) = poll(&s, "carol", None, 1).await;
        assert_eq!(status, 200, "{v}");
        cursors.push(v["cursor"].as_str().unwrap().to_string());
    }
    let (status, v) = poll(&s, "carol", Some(&cursors[0]), 1).await;
    assert_eq!(status, 410, "the oldest session ended: {v}");
    assert!(v["msg"].as_str().unwrap().contains("more poll sessions than allowed"), "{v}");
    for c in &cursors[1..] {
        assert_eq!(poll(&s, "carol", Some(c), 1).await.0, 200);
    }
}
