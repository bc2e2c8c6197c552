//! Parked connections (`--park-idle-ms`): an idle connection gives up its task and waits in its
//! shard's epoll set, and whatever concerns it brings it back at once: its own input (a frame, a
//! ping, half a frame, the client gone), a frame for it, a close the shard decides (heartbeat).
//! Nothing is lost or delayed for good on the way in or out, over many rounds.

use crate::common::raw::{self, RawWs};
use crate::common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Engines here park after 200 ms idle (the tick is 250 ms: parked within half a second).
const PARK: &[&str] = &["--park-idle-ms", "200", "--shards", "2"];

async fn parked(s: &Server) -> u64 {
    metric_sum(s, "shardchat_connections_parked", "").await as u64
}

/// Until exactly `n` connections are parked.
async fn until_parked(s: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = parked(s).await;
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{now} connections parked, never {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_connections_park_and_anything_that_concerns_them_brings_them_back() {
    let s = Server::start(PARK);
    let mut alice = Client::connect(&s, "alice", "phone").await;
    let mut bob = Client::connect(&s, "bob", "phone").await;
    let mut idle = Vec::new();
    for i in 0..40 {
        idle.push(Client::connect(&s, &format!("idle{i}"), "d").await);
    }
    until_parked(&s, 42).await;
    assert_eq!(metric_sum(&s, "shardchat_connections", "").await, 42.0, "parked connections stay open");

    // A frame from a parked connection, and one for another: both come back, the message goes
    // through, the ack comes back; then they park again.
    for round in 0..10 {
        let ack = alice.dm("bob", &format!("m{round}"), "are you there?").await;
        assert_eq!(ack["t"], "ack", "{ack}");
        let got = bob.recv_where(|v| v["t"] == "msg").await;
        assert_eq!(got["body"], "are you there?");
        until_parked(&s, 42).await;
    }

    // A group message to forty parked members at once: each gets it.
    let members: Vec<String> = (0..40).map(|i| format!("idle{i}")).collect();
    alice.send(json!({"t":"group_create","name":"all","members":members,"ref":"g"})).await;
    let g = alice.recv_where(|v| v["t"] == "group").await["conv"].as_str().unwrap().to_string();
    until_parked(&s, 42).await;
    alice.send(json!({"t":"send","cmid":"hello-all","conv":g,"body":"hello, all"})).await;
    for c in &mut idle {
        let m = c.recv_where(|v| v["t"] == "msg" && v["cmid"] == "hello-all").await;
        assert_eq!(m["body"], "hello, all");
    }
    until_parked(&s, 42).await;

    // A WebSocket ping to a parked connection is answered.
    idle[0].send_raw(tokio_tungstenite::tungstenite::Message::Ping(b"hb".to_vec().into())).await;
    let pong = tokio::time::timeout(FRAME_WAIT, futures::StreamExt::next(&mut idle[0].ws)).await.unwrap();
    assert!(matches!(pong, Some(Ok(tokio_tungstenite::tungstenite::Message::Pong(_)))), "{pong:?}");
    until_parked(&s, 42).await;

    // A parked client that goes away is noticed: its connection ends.
    drop(idle.pop());
    until_parked(&s, 41).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(&s, "shardchat_connections", "").await != 41.0 {
        assert!(Instant::now() < deadline, "a parked connection whose client left was never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_half_sent_frame_unparks_and_keeps_its_connection_until_the_rest_comes() {
    let s = Server::start(PARK);
    let mut ws = RawWs::connect(s.port, "carol");
    until_parked(&s, 1).await;
    let frame = raw::frame(true, raw::TEXT, br#"{"t":"ping","ref":"split"}"#);
    let (head, tail) = frame.split_at(7);
    ws.send(head);
    // Half a frame is state the task holds: the connection stays unparked while it waits.
    until_parked(&s, 0).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(parked(&s).await, 0, "a connection holding half a frame must not park");
    ws.send(tail);
    let deadline = Instant::now() + FRAME_WAIT;
    let mut answered = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match ws.next(left) {
            Some((raw::TEXT, p)) if String::from_utf8_lossy(&p).contains("split") => {
                answered = true;
                break;
            }
            Some((raw::CLOSE, _)) | None => break,
            Some(_) => {}
        }
    }
    assert!(answered, "the frame completed after the wait was answered");
    until_parked(&s, 1).await;
}

#[tokio::test]
async fn a_parked_connection_that_misses_its_heartbeat_is_closed_with_a_close_frame() {
    let mut flags = PARK.to_vec();
    flags.extend(["--heartbeat-timeout-ms", "1500"]);
    let s = Server::start(&flags);
    let mut dave = Client::connect(&s, "dave", "d").await;
    until_parked(&s, 1).await;
    // The shard's heartbeat closes it; being parked must not swallow the close frame.
    let code = dave.closed(Duration::from_secs(10)).await;
    assert_eq!(code, Some(1000), "the heartbeat's close code");
    assert_eq!(parked(&s).await, 0);
}

#[tokio::test]
async fn with_parking_off_nothing_parks() {
    let s = Server::start(&["--park-idle-ms", "0"]);
    let _c = Client::connect(&s, "erin", "d").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(parked(&s).await, 0);
}
