//! The REST API over real HTTP, beside real WebSocket clients.

use crate::common::*;
use serde_json::{json, Value};

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn health_and_readiness() {
    let s = Server::start(&[]);
    let r = reqwest::get(format!("http://127.0.0.1:{}/healthz", s.http)).await.unwrap();
    assert_eq!(r.status(), 200);
    // Ready once the control plane's bridge has joined the shards (a moment after start).
    let mut status = 0;
    for _ in 0..200 {
        status = reqwest::get(format!("http://127.0.0.1:{}/readyz", s.http)).await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "not ready is 503");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rest_send_is_a_real_send_acked_deduped_and_delivered_live() {
    let s = Server::start(&[]);
    let mut bob = Client::connect(&s, "bob", "d").await;
    let url = s.rest("/v1/conversations/d:alice:bob/messages", "alice");
    let (status, ack) = post(&url, json!({"cmid":"r1","body":"over rest"})).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!((ack["seq"].as_u64(), ack["conv"].as_str()), (Some(1), Some("d:alice:bob")));
    assert!(ack["id"].is_string());
    let m = bob.recv().await;
    assert_eq!((m["t"].as_str(), m["body"].as_str(), m["from"].as_str()), (Some("msg"), Some("over rest"), Some("alice")));
    // Retried with the same cmid: the same ack, nothing delivered again.
    let (_, again) = post(&url, json!({"cmid":"r1","body":"over rest"})).await;
    assert_eq!(again, ack);
    bob.silent_for(std::time::Duration::from_millis(300)).await;
    // Sent over the WebSocket, read over REST.
    assert_eq!(bob.dm("alice", "w1", "over ws").await["seq"], 2);
    let (status, page) = get(&s.rest("/v1/conversations/d:alice:bob/messages?limit=10", "alice")).await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, vec![2, 1]);
    let (_, page) = get(&s.rest("/v1/conversations/d:alice:bob/messages?after=1", "alice")).await;
    assert_eq!(page["messages"].as_array().unwrap().iter().map(seq).collect::<Vec<_>>(), vec![2]);
    let (_, page) = get(&s.rest("/v1/conversations/d:alice:bob/messages?before=2", "alice")).await;
    assert_eq!(page["messages"].as_array().unwrap().iter().map(seq).collect::<Vec<_>>(), vec![1]);
}

#[tokio::test]
async fn conversations_are_listed_newest_first_with_unread_counts() {
    let s = Server::start(&[]);
    let mut a = Client::connect(&s, "alice", "d").await;
    a.dm("bob", "1", "one").await;
    a.dm("bob", "2", "two").await;
    // Newest first is by server time (ms): keep the two apart.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    a.dm("carol", "3", "three").await;
    let (status, v) = get(&s.rest("/v1/conversations", "alice")).await;
    assert_eq!(status, 200);
    let convs = v["conversations"].as_array().unwrap();
    assert_eq!(convs.iter().map(|c| c["conv"].as_str().unwrap()).collect::<Vec<_>>(), vec!["d:alice:carol", "d:alice:bob"]);
    assert_eq!(convs[0]["unread"], 0, "own messages are not unread");
    let (_, v) = get(&s.rest("/v1/conversations", "bob")).await;
    let c = &v["conversations"][0];
    assert_eq!((c["unread"].as_u64(), c["last_seq"].as_u64(), c["last"]["body"].as_str()), (Some(2), Some(2), Some("two")));
    let mut b = Client::connect(&s, "bob", "d").await;
    b.send(json!({"t":"read","conv":"d:alice:bob","seq":1})).await;
    b.send(json!({"t":"ping"})).await;
    b.recv_where(|v| v["t"] == "pong").await;
    // The watermark is written by the owner's next commit; give it that long.
    let mut unread = 2;
    for _ in 0..50 {
        let (_, v) = get(&s.rest("/v1/conversations", "bob")).await;
        unread = v["conversations"][0]["unread"].as_u64().unwrap();
        if unread == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(unread, 1);
}

#[tokio::test]
async fn groups_over_rest() {
    let s = Server::start(&[]);
    let mut bob = Client::connect(&s, "bob", "d").await;
    let (status, g) = post(&s.rest("/v1/groups", "alice"), json!({"name":"team","members":["bob"]})).await;
    assert_eq!(status, 201, "{g}");
    let conv = g["conv"].as_str().unwrap().to_string();
    assert_eq!(bob.recv().await["t"], "group");
    let (status, _) = post(&s.rest(&format!("/v1/conversations/{conv}/members"), "bob"), json!({"users":["carol"]})).await;
    assert_eq!(status, 403, "only admins add");
    let (status, g) = post(&s.rest(&format!("/v1/conversations/{conv}/members"), "alice"), json!({"users":["carol"]})).await;
    assert_eq!(status, 200);
    assert_eq!(g["members"].as_array().unwrap().len(), 3);
    let r = reqwest::Client::new()
        .patch(s.rest(&format!("/v1/conversations/{conv}"), "alice"))
        .json(&json!({"name":"renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, info) = get(&s.rest(&format!("/v1/conversations/{conv}"), "carol")).await;
    assert_eq!(status, 200);
    assert_eq!(info["name"], "renamed");
    assert_eq!(info["members"].as_array().unwrap().len(), 3);
    let r = reqwest::Client::new().delete(s.rest(&format!("/v1/conversations/{conv}/members/carol"), "alice")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = get(&s.rest(&format!("/v1/conversations/{conv}"), "carol")).await;
    assert_eq!(status, 403, "a former member no longer sees the group's state");
    let (status, g) = post(&s.rest(&format!("/v1/conversations/{conv}/leave"), "alice"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(g["members"], json!([{"user":"bob","role":"admin"}]));
    let many: Vec<String> = (0..600).map(|i| format!("u{i}")).collect();
    let (status, e) = post(&s.rest("/v1/groups", "alice"), json!({"name":"big","members":many})).await;
    assert_eq!((status, e["code"].as_str()), (409, Some("group_full")));
}

#[tokio::test]
async fn receipts_and_presence_over_rest() {
    let s = Server::start(&[]);
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut b = Client::connect(&s, "bob", "d").await;
    a.dm("bob", "1", "x").await;
    b.send(json!({"t":"read","conv":"d:alice:bob","seq":1})).await;
    a.recv_where(|v| v["t"] == "receipt").await;
    let (status, r) = get(&s.rest("/v1/conversations/d:alice:bob/messages/1/receipts", "alice")).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!((r["read"].clone(), r["delivered"].clone(), r["of"].as_u64()), (json!(["bob"]), json!(["bob"]), Some(1)));
    for users in ["alice,nobody", "nobody,alice"] {
        let (status, p) = get(&s.rest(&format!("/v1/presence?users={users}"), "bob")).await;
        assert_eq!(status, 200);
        let mut want = vec![json!({"user":"alice","status":"online"}), json!({"user":"nobody","status":"offline"})];
        if users.starts_with("nobody") {
            want.reverse();
        }
        assert_eq!(p["presence"], json!(want), "in the order asked");
    }
}

#[tokio::test]
async fn authorization_and_errors() {
    let s = Server::start(&["--body-bytes-max", "1000"]);
    let mut a = Client::connect(&s, "alice", "d").await;
    a.dm("bob", "1", "secret").await;
    // No identity: 401.
    let r = reqwest::get(format!("http://127.0.0.1:{}/v1/conversations", s.http)).await.unwrap();
    assert_eq!(r.status(), 401);
    // A stranger sees nothing of alice and bob's conversation.
    let (_, v) = get(&s.rest("/v1/conversations", "eve")).await;
    assert_eq!(v["conversations"], json!([]));
    for path in
        ["/v1/conversations/d:alice:bob/messages", "/v1/conversations/d:alice:bob", "/v1/conversations/d:alice:bob/messages/1/receipts"]
    {
        let (status, e) = get(&s.rest(path, "eve")).await;
        assert_eq!((status, e["code"].as_str()), (403, Some("forbidden")), "{path}");
    }
    let (status, _) = post(&s.rest("/v1/conversations/d:alice:bob/messages", "eve"), json!({"cmid":"x","body":"hi"})).await;
    assert_eq!(status, 403);
    let (status, e) = get(&s.rest("/v1/conversations/g:424242/messages", "eve")).await;
    assert_eq!((status, e["code"].as_str()), (404, Some("not_found")));
    let (status, e) = get(&s.rest("/v1/conversations/bogus/messages", "eve")).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("bad_request")));
    let (status, e) = post(&s.rest("/v1/conversations/d:alice:bob/messages", "alice"), json!({"cmid":"big","body":"x".repeat(1001)})).await;
    assert_eq!((status, e["code"].as_str()), (413, Some("too_large")));
    // Over the request size limit: refused before parsing.
    let r = reqwest::Client::new()
        .post(s.rest("/v1/conversations/d:alice:bob/messages", "alice"))
        .header("content-type", "application/json")
        .body("x".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let (status, _) = get(&s.rest("/v1/presence?users=bad%20id", "alice")).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn metrics_count_connections_deliveries_and_commits() {
    let s = Server::start(&["--shards", "2"]);
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut b = Client::connect(&s, "bob", "d").await;
    for i in 0..5 {
        a.dm("bob", &format!("{i}"), "x").await;
    }
    for _ in 0..5 {
        b.recv().await;
    }
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", s.http)).await.unwrap().text().await.unwrap();
    let sum = |name: &str| -> f64 {
        text.lines().filter(|l| l.starts_with(&format!("{name}{{"))).map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()).sum()
    };
    assert_eq!(sum("shardchat_connections"), 2.0, "{text}");
    assert_eq!(sum("shardchat_deliveries_total"), 5.0);
    assert!(sum("shardchat_commit_seconds_count") >= 1.0);
    assert_eq!(sum("shardchat_delivery_latency_seconds_count"), 5.0);
    assert!(sum("shardchat_frames_in_total") >= 5.0);
    assert!(text.contains("# TYPE shardchat_commit_seconds histogram"));
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint() {
    let s = Server::start(&[]);
    let doc: Value = reqwest::get(format!("http://127.0.0.1:{}/v1/openapi.json", s.http)).await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/conversations",
        "/v1/conversations/{conv}",
        "/v1/conversations/{conv}/messages",
        "/v1/conversations/{conv}/messages/{seq}/receipts",
        "/v1/conversations/{conv}/members",
        "/v1/conversations/{conv}/members/{user}",
        "/v1/conversations/{conv}/leave",
        "/v1/groups",
        "/v1/presence",
        "/v1/search",
        "/v1/poll",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
    }
    assert!(paths["/v1/conversations/{conv}/messages"].get("post").is_some());
    assert!(doc["components"]["schemas"]["NewMessage"].is_object());
    // The body limit is this server's (the document is made per server), and the error answers
    // are documented with their shape (schemathesis, `.ci/openapi`, checks the rest).
    assert_eq!(doc["components"]["schemas"]["NewMessage"]["properties"]["body"]["maxLength"], shardchat_codec::BODY_BYTES_MAX_DEFAULT);
    let send = &paths["/v1/conversations/{conv}/messages"]["post"]["responses"];
    for status in ["200", "400", "401", "403", "404", "413", "415", "422", "429", "503"] {
        assert!(send.get(status).is_some(), "send's {status} is not documented: {send}");
    }
    assert_eq!(send["403"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody");
}

/// What the document's patterns admit is never a 400: a direct id with its users out of order
/// is 404 (it names no conversation), a receipt beyond the last message 404; `before` with
/// `after` is the page between them.
#[tokio::test]
async fn well_formed_requests_about_nothing_are_not_found_and_pages_take_both_bounds() {
    let s = Server::start(&[]);
    let mut a = Client::connect(&s, "alice", "d").await;
    for i in 1..=5 {
        a.dm("bob", &format!("c{i}"), &format!("m{i}")).await;
    }
    let (status, r) = get(&s.rest("/v1/conversations/d:bob:alice/messages", "alice")).await;
    assert_eq!((status, r["code"].as_str()), (404, Some("not_found")), "{r}");
    let (status, r) = get(&s.rest("/v1/conversations/d:bob/messages", "alice")).await;
    assert_eq!((status, r["code"].as_str()), (400, Some("bad_request")), "{r}");
    let (status, r) = get(&s.rest("/v1/conversations/d:alice:bob/messages/9/receipts", "alice")).await;
    assert_eq!((status, r["code"].as_str()), (404, Some("not_found")), "{r}");
    let (status, r) = get(&s.rest("/v1/conversations/d:alice:bob/messages?after=1&before=5", "alice")).await;
    assert_eq!(status, 200, "{r}");
    let seqs: Vec<u64> = r["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!((seqs, r["order"].as_str()), (vec![2, 3, 4], Some("asc")));
    let (status, r) = get(&s.rest("/v1/conversations/d:alice:bob/messages?before=9223372036854775808", "alice")).await;
    assert_eq!(status, 400, "a seq beyond int64 is refused: {r}");
}

#[tokio::test]
async fn every_refusal_is_the_contracts_json_whoever_makes_it() {
    // --body-bytes-max 1000: request bodies are limited to 10,096 bytes.
    let s = Server::start(&["--body-bytes-max", "1000"]);
    let http = reqwest::Client::new();
    let conv = "/v1/conversations/d:alice:bob/messages";
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("unparsable query", http.get(s.rest(&format!("{conv}?limit=abc"), "alice")), 400, "bad_request"),
        ("unparsable body", http.post(s.rest(conv, "alice")).header("content-type", "application/json").body("{nope"), 400, "bad_request"),
        ("no content type", http.post(s.rest(conv, "alice")).body(r#"{"cmid":"c","body":"x"}"#), 415, "bad_request"),
        ("missing field", http.post(s.rest(conv, "alice")).json(&json!({"body": "x"})), 422, "bad_request"),
        ("wrong field type", http.post(s.rest(conv, "alice")).json(&json!({"cmid": 5, "body": "x"})), 422, "bad_request"),
        ("body over the limit", http.post(s.rest(conv, "alice")).json(&json!({"cmid": "c", "body": "x".repeat(20_000)})), 413, "too_large"),
        ("unknown path", http.get(s.rest("/v1/nothing-here", "alice")), 404, "not_found"),
        ("unknown method", http.delete(s.rest("/v1/groups", "alice")), 405, "bad_request"),
        ("malformed conversation id", http.get(s.rest("/v1/conversations/g:abc/messages", "alice")), 400, "bad_request"),
    ];
    for (what, req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "{what}: not JSON");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], code, "{what}: {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    }
}

/// The client library's modules, which the page imports: each as JavaScript, anything else 404.
#[tokio::test]
async fn the_client_library_is_served_for_the_page() {
    let s = Server::start(&[]);
    let base = format!("http://127.0.0.1:{}/js", s.http);
    for module in ["index.js", "client.js", "order.js", "backoff.js", "storage.js", "rest.js", "frames.js", "revise.js"] {
        let r = reqwest::get(format!("{base}/{module}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{module}");
        assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
        let text = r.text().await.unwrap();
        // Every relative import resolves to a module served here.
        for import in text.lines().filter_map(|l| l.split("from './").nth(1)) {
            let name = import.split('\'').next().unwrap();
            assert_eq!(reqwest::get(format!("{base}/{name}")).await.unwrap().status().as_u16(), 200, "{module} imports {name}");
        }
    }
    let (status, v) = get(&format!("{base}/missing.js")).await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")), "{v}");
}
