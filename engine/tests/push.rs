//! Push notifications to a local webhook receiver: one per user per burst, retried, durable
//! across a restart.

mod common;

use axum::routing::post;
use axum::{extract::State, http::StatusCode, Json, Router};
use common::*;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Value>>>,
    /// Requests to refuse (500) before accepting.
    refuse: Arc<Mutex<u32>>,
}

async fn hook(State(r): State<Receiver>, Json(body): Json<Value>) -> StatusCode {
    let mut refuse = r.refuse.lock().unwrap();
    if *refuse > 0 {
        *refuse -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.got.lock().unwrap().extend(body["notifications"].as_array().unwrap().iter().cloned());
    StatusCode::OK
}

async fn receiver(port: u16, refuse: u32) -> Receiver {
    let r = Receiver { refuse: Arc::new(Mutex::new(refuse)), ..Default::default() };
    let app = Router::new().route("/hook", post(hook)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    r
}

async fn wait_for(r: &Receiver, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let got = r.got.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the webhook got {:?}", r.got.lock().unwrap());
}

#[tokio::test]
async fn offline_users_get_one_notification_per_burst_even_after_refusals() {
    let port = free_port();
    let r = receiver(port, 2).await;
    let s = Server::start(&["--push-webhook", &format!("http://127.0.0.1:{port}/hook")]);
    let mut alice = Client::connect(&s, "alice", "d").await;
    let mut carol = Client::connect(&s, "carol", "d").await;
    for i in 0..3 {
        alice.dm("bob", &format!("{i}"), "secret body").await;
    }
    alice.dm("carol", "c", "carol is online").await;
    carol.recv().await;
    let got = wait_for(&r, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_later = r.got.lock().unwrap().clone();
    assert_eq!(got_later.len(), 1, "one notification for the burst, none for online users: {got_later:?}");
    let n = &got[0];
    assert_eq!((n["user"].as_str(), n["count"].as_u64()), (Some("bob"), Some(3)));
    assert_eq!(n["text"], "3 new messages in d:alice:bob");
    assert!(!n.to_string().contains("secret body"), "content stays vague");
}

#[tokio::test]
async fn owed_notifications_survive_a_restart() {
    let port = free_port();
    let mut s = Server::start(&["--push-webhook", &format!("http://127.0.0.1:{port}/hook")]);
    {
        let mut alice = Client::connect(&s, "alice", "d").await;
        alice.dm("bob", "1", "x").await;
        alice.dm("bob", "2", "y").await;
        // Nobody listens on the webhook's port: the attempts fail and the entries stay owed.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    s.stop();
    let r = receiver(port, 0).await;
    s.restart();
    let got = wait_for(&r, 1).await;
    assert_eq!((got[0]["user"].as_str(), got[0]["count"].as_u64()), (Some("bob"), Some(2)));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(r.got.lock().unwrap().len(), 1, "delivered once, then removed from the outbox");
}
