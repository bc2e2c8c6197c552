//! Push notifications to a local webhook receiver: one per user per burst, retried, durable
//! across a restart.

use crate::common::webhook::{receiver, wait_for};
use crate::common::*;
use std::time::Duration;

#[tokio::test]
async fn offline_users_get_one_notification_per_burst_even_after_refusals() {
    let r = receiver(0, 2).await;
    let s = Server::start(&["--push-webhook", &format!("http://127.0.0.1:{}/hook", r.port)]);
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
