//! No user data in the logs at info level: user ids, conversation ids, message bodies, group
//! names, client message ids and what malformed frames carried never appear, whatever clients do
//! (ordinary traffic, bad frames, bad upgrades, REST calls, abrupt disconnects, shutdown).

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn the_info_log_holds_no_user_data() {
    // Every piece of user data below carries "zq", which nothing else in a log does.
    let mut s = Server::start_logged(&[], "info");
    let mut a = Client::connect(&s, "zqalice", "zqphone").await;
    let mut b = Client::connect(&s, "zqbob", "zqlaptop").await;
    let ack = a.dm("zqbob", "zq-cmid-1", "zq body one").await;
    assert_eq!(ack["t"], "ack", "{ack}");
    b.recv_where(|v| v["t"] == "msg").await;
    a.send(json!({"t":"group_create","name":"zq group","members":["zqbob","zqcarol"],"ref":"zq-ref"})).await;
    let g = a.recv_where(|v| v["t"] == "group").await;
    let conv = g["conv"].as_str().unwrap().to_string();
    a.send(json!({"t":"send","cmid":"zq-cmid-2","conv":conv,"body":"zq body two"})).await;
    a.recv_where(|v| v["t"] == "ack").await;
    b.send(json!({"t":"read","conv":conv,"seq":2})).await;
    b.send(json!({"t":"presence_sub","users":["zqalice","zqnobody"]})).await;
    b.send(json!({"t":"history","conv":conv,"ref":"zq-h"})).await;
    b.recv_where(|v| v["t"] == "history").await;
    // Refused requests: a stranger's conversation, a malformed frame, a bad field, a huge body.
    let mut c = Client::connect(&s, "zqcarl", "zqx").await;
    c.send(json!({"t":"send","cmid":"zq-cmid-3","conv":conv,"body":"zq intrusion"})).await;
    c.recv_where(|v| v["t"] == "error").await;
    c.send_raw(tokio_tungstenite::tungstenite::Message::Text("{\"t\":\"send\",\"cmid\":\"zq-bad\" zq garbage".into())).await;
    c.recv_where(|v| v["t"] == "error").await;
    c.send(json!({"t":"send","cmid":"zq-cmid-4","to":"zq bad id","body":"zq"})).await;
    c.recv_where(|v| v["t"] == "error").await;
    // A bad upgrade, and REST with and without errors.
    let bad = reqwest::get(format!("http://127.0.0.1:{}/ws?user=zq%20bad%20user", s.port)).await.unwrap();
    assert!(bad.status().is_client_error(), "{}", bad.status());
    let http = reqwest::Client::new();
    let r = http
        .post(s.rest(&format!("/v1/conversations/{conv}/messages"), "zqalice"))
        .json(&json!({"cmid":"zq-rest","body":"zq rest body"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = http.get(s.rest(&format!("/v1/conversations/{conv}/messages"), "zqcarl")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = http.get(s.rest("/v1/search?q=zqsearchterm", "zqalice")).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // Abrupt disconnects, then a clean shutdown.
    drop(b);
    drop(c);
    a.dm("zqbob", "zq-cmid-5", "zq body five").await;
    drop(a);
    // Until the server has seen every connection go (their departures are logged too).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric_sum(&s, "shardchat_connections", "").await > 0.0 {
        assert!(std::time::Instant::now() < deadline, "the server never saw the clients go");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.stop();

    let log = s.log();
    assert!(log.contains("listening"), "the log must hold the server's info lines:\n{log}");
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains("zq")).collect();
    assert!(leaks.is_empty(), "user data in the info log:\n{}", leaks.join("\n"));
    // Written to a file, not a terminal: no colour escape codes.
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a redirected log:\n{log}");
    // A newcomer finds the page from the log.
    assert!(log.contains(&format!("web client: http://127.0.0.1:{}/", s.http)), "no page URL in the log:\n{log}");
}
