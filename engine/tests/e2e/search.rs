//! Full-text search: ranked, paged, limited to the caller's conversations, and caught up after a
//! crash.

use crate::common::*;
use serde_json::Value;
use std::time::Duration;

async fn search(s: &Server, user: &str, query: &str) -> (u16, Value) {
    let r = reqwest::get(s.rest(&format!("/v1/search?{query}"), user)).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Searches until at least `n` hits show (indexing lags by design).
async fn hits(s: &Server, user: &str, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let (status, v) = search(s, user, query).await;
        assert_eq!(status, 200, "{v}");
        let h = v["hits"].as_array().unwrap().clone();
        if h.len() >= n {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} hits for {query}");
}

#[tokio::test]
async fn search_is_ranked_paged_and_private() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "d").await;
    alice.dm("bob", "1", "the quick brown fox jumps").await;
    alice.dm("bob", "2", "a fox, a fox, another fox").await;
    alice.dm("bob", "3", "nothing to see here").await;
    alice.dm("carol", "4", "carol hears about the fox too").await;
    let h = hits(&s, "bob", "q=fox", 2).await;
    assert_eq!(h.len(), 2, "bob sees only his conversation: {h:?}");
    assert_eq!(h[0]["body"], "a fox, a fox, another fox", "ranked by relevance");
    assert!(h[0]["id"].is_string());
    // Paging.
    let (_, v) = search(&s, "bob", "q=fox&limit=1&offset=1").await;
    assert_eq!(v["hits"].as_array().unwrap().len(), 1);
    assert_eq!(v["hits"][0]["body"], "the quick brown fox jumps");
    // Within one conversation, and only one's own.
    let h = hits(&s, "carol", "q=fox&conv=d:alice:carol", 1).await;
    assert_eq!(h.len(), 1);
    let (status, _) = search(&s, "carol", "q=fox&conv=d:alice:bob").await;
    assert_eq!(status, 403, "a stranger cannot search someone else's conversation");
    let (_, v) = search(&s, "eve", "q=fox").await;
    assert_eq!(v["hits"], serde_json::json!([]), "nor find it without naming it");
    let (status, _) = search(&s, "bob", "q=").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_index_catches_up_after_kill_9() {
    let mut s = Server::start(&[]);
    {
        let mut alice = Client::connect(&s, "alice", "d").await;
        for i in 0..20 {
            alice.dm("bob", &format!("{i}"), &format!("durable needle {i}")).await;
        }
        // Killed right after the acks: the index may not have seen them yet.
        s.kill();
    }
    s.restart();
    let h = hits(&s, "bob", "q=needle&limit=50", 20).await;
    assert_eq!(h.len(), 20, "every acked message is searchable after the restart, once");
}

/// `q` is bounded in characters, as the document's `maxLength` counts: 1,024 two-byte characters
/// (2,048 bytes) are a query, 1,025 are not.
#[tokio::test]
async fn the_query_bound_counts_characters() {
    let s = Server::start(&[]);
    let q = |n: usize| format!("q={}", form_urlencoded::byte_serialize("é".repeat(n).as_bytes()).collect::<String>());
    let (status, v) = search(&s, "alice", &q(1024)).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = search(&s, "alice", &q(1025)).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")), "{v}");
}
