//! The authorization matrix: every WebSocket frame and REST endpoint that names a conversation
//! (and the conversation listing), tried by its admin, a member, a former member and a stranger,
//! against what docs/protocol.md promises. One table, so a rule changed in one place and not
//! another shows up here.

use crate::common::*;
use serde_json::{json, Value};

/// What came of a request: `ok:<frame type>`, `error:<code>`, or `quiet` (no answer: marks and
/// typing answer only when refused). The fence is a `receipt_query` on the same conversation
/// with ref "fence": the same owner shard handles it after the request and its answer comes
/// back in order, so anything the request caused has arrived before it.
async fn ws(c: &mut Client, frame: Value) -> String {
    let conv = frame["conv"].clone();
    c.send(frame).await;
    c.send(json!({"t":"receipt_query","conv":conv,"seq":1,"ref":"fence"})).await;
    let mut outcome = "quiet".to_string();
    loop {
        let v = c.recv().await;
        if v["ref"] == "fence" {
            return outcome;
        }
        match v["t"].as_str().unwrap() {
            "error" => outcome = format!("error:{}", v["code"].as_str().unwrap()),
            // Frames pushed to everyone (messages, group state, presence, typing) are not answers.
            "msg" | "receipt" | "receipt_counts" | "presence" | "typing" | "pong" => {}
            "group" if v["ref"].is_null() => {}
            t => outcome = format!("ok:{t}"),
        }
    }
}

async fn rest(method: &str, url: String, body: Option<Value>) -> u16 {
    let http = reqwest::Client::new();
    let req = match method {
        "GET" => http.get(url),
        "POST" => http.post(url),
        "PATCH" => http.patch(url),
        "DELETE" => http.delete(url),
        _ => unreachable!(),
    };
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn every_conversation_request_is_allowed_exactly_as_the_protocol_says() {
    let s = Server::start(&[]);
    let mut ann = Client::connect(&s, "ann", "d").await;
    ann.send(json!({"t":"group_create","name":"crew","members":["mem","fmr"],"ref":"c"})).await;
    let g = ann.recv_where(|v| v["t"] == "group").await["conv"].as_str().unwrap().to_string();
    let ack = ann.dm("mem", "d1", "direct").await;
    assert_eq!(ack["t"], "ack");
    ann.send(json!({"t":"send","cmid":"m1","conv":g,"body":"before the leave"})).await;
    ann.recv_where(|v| v["t"] == "ack").await;
    let mut fmr = Client::connect(&s, "fmr", "d").await;
    assert_eq!(ws(&mut fmr, json!({"t":"group_leave","conv":g,"ref":"l"})).await, "ok:group");
    ann.send(json!({"t":"send","cmid":"m2","conv":g,"body":"after the leave"})).await;
    ann.recv_where(|v| v["t"] == "ack").await;
    let mut mem = Client::connect(&s, "mem", "d").await;
    let mut str_ = Client::connect(&s, "str", "d").await;
    // g: 1 create, 2 m1, 3 fmr leaves, 4 m2.

    // (request, admin, member, former, stranger)
    let n = std::sync::atomic::AtomicU32::new(0);
    let cmid = || format!("x{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    type Row = (&'static str, [&'static str; 4]);
    let rows: Vec<(Row, Box<dyn Fn() -> Value>)> = vec![
        (
            ("send", ["ok:ack", "ok:ack", "error:forbidden", "error:forbidden"]),
            Box::new(|| json!({"t":"send","cmid":cmid(),"conv":g,"body":"x"})),
        ),
        (("read", ["quiet", "quiet", "error:forbidden", "error:forbidden"]), Box::new(|| json!({"t":"read","conv":g,"seq":2}))),
        (("delivered", ["quiet", "quiet", "error:forbidden", "error:forbidden"]), Box::new(|| json!({"t":"delivered","conv":g,"seq":2}))),
        (("typing", ["quiet", "quiet", "error:forbidden", "error:forbidden"]), Box::new(|| json!({"t":"typing","conv":g}))),
        (
            ("history", ["ok:history", "ok:history", "ok:history", "error:forbidden"]),
            Box::new(|| json!({"t":"history","conv":g,"ref":"h"})),
        ),
        (
            ("receipt_query", ["ok:receipt_detail", "ok:receipt_detail", "error:forbidden", "error:forbidden"]),
            Box::new(|| json!({"t":"receipt_query","conv":g,"seq":2,"ref":"q"})),
        ),
        (
            ("group_add", ["ok:group", "error:forbidden", "error:forbidden", "error:forbidden"]),
            Box::new(|| json!({"t":"group_add","conv":g,"users":["newbie"],"ref":"a"})),
        ),
        (
            ("group_remove", ["ok:group", "error:forbidden", "error:forbidden", "error:forbidden"]),
            Box::new(|| json!({"t":"group_remove","conv":g,"users":["newbie"],"ref":"r"})),
        ),
        (
            ("group_rename", ["ok:group", "error:forbidden", "error:forbidden", "error:forbidden"]),
            Box::new(|| json!({"t":"group_rename","conv":g,"name":"renamed","ref":"n"})),
        ),
        (
            ("send to a group that does not exist", ["error:not_found"; 4]),
            Box::new(|| json!({"t":"send","cmid":cmid(),"conv":"g:999999","body":"x"})),
        ),
    ];
    let mut failures = Vec::new();
    for ((what, want), frame) in &rows {
        for (i, c) in [&mut ann, &mut mem, &mut fmr, &mut str_].into_iter().enumerate() {
            let got = ws(c, frame()).await;
            if got != want[i] {
                failures.push(format!("ws {what} as {}: got {got}, want {}", c.user, want[i]));
            }
        }
    }
    // A former member's history stops where they left; a stranger's sync leaves the group out.
    fmr.send(json!({"t":"history","conv":g,"ref":"h2"})).await;
    let h = fmr.recv_where(|v| v["t"] == "history").await;
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, vec![3, 2, 1], "a former member reads up to the message that removed them");
    str_.send(json!({"t":"sync","cursors":{g.as_str(): 0}})).await;
    let synced = str_.recv_where(|v| v["t"] == "synced").await;
    assert!(synced["convs"].get(&g).is_none(), "{synced}");

    // REST: (method, path, body, admin, member, former, stranger)
    let d = shardchat_codec::direct_conv_id("ann", "mem");
    let rest_rows: Vec<(&str, String, Option<Value>, [u16; 4])> = vec![
        ("GET", format!("/v1/conversations/{g}"), None, [200, 200, 403, 403]),
        ("GET", format!("/v1/conversations/{g}/messages"), None, [200, 200, 200, 403]),
        ("POST", format!("/v1/conversations/{g}/messages"), Some(json!({"cmid":"rest","body":"x"})), [200, 200, 403, 403]),
        ("GET", format!("/v1/conversations/{g}/messages/2/receipts"), None, [200, 200, 403, 403]),
        ("PATCH", format!("/v1/conversations/{g}"), Some(json!({"name":"again"})), [200, 403, 403, 403]),
        ("POST", format!("/v1/conversations/{g}/members"), Some(json!({"users":["newbie"]})), [200, 403, 403, 403]),
        ("DELETE", format!("/v1/conversations/{g}/members/newbie"), None, [200, 403, 403, 403]),
        ("GET", format!("/v1/search?q=leave&conv={g}"), None, [200, 200, 200, 403]),
        ("GET", format!("/v1/conversations/{d}/messages"), None, [200, 200, 403, 403]),
        ("GET", "/v1/conversations/g:999999/messages".to_string(), None, [404, 404, 404, 404]),
    ];
    for (method, path, body, want) in &rest_rows {
        for (i, user) in ["ann", "mem", "fmr", "str"].into_iter().enumerate() {
            // The direct conversation is ann's and mem's: "former" and stranger are outsiders.
            let got = rest(method, s.rest(path, user), body.clone()).await;
            if got != want[i] {
                failures.push(format!("REST {method} {path} as {user}: got {got}, want {}", want[i]));
            }
        }
    }
    // The listing: members see the group, a former member sees it marked as left, a stranger
    // does not see it at all.
    for (user, want) in [("ann", Some(true)), ("mem", Some(true)), ("fmr", Some(false)), ("str", None)] {
        let list: Value = reqwest::get(s.rest("/v1/conversations", user)).await.unwrap().json().await.unwrap();
        let entry = list["conversations"].as_array().unwrap_or_else(|| panic!("{list}")).iter().find(|c| c["conv"] == g.as_str());
        let got = entry.map(|c| c["member"].as_bool().unwrap());
        if got != want {
            failures.push(format!("REST GET /v1/conversations as {user}: member {got:?}, want {want:?}"));
        }
    }
    // Leaving over the WebSocket: a stranger and a former member cannot (nothing changes).
    for c in [&mut str_, &mut fmr] {
        let got = ws(c, json!({"t":"group_leave","conv":g,"ref":"l2"})).await;
        if got != "error:forbidden" {
            failures.push(format!("ws group_leave as {}: got {got}, want error:forbidden", c.user));
        }
    }
    // Leaving over REST: a stranger and a former member cannot; a member can.
    for (user, want) in [("str", 403), ("fmr", 403), ("mem", 200)] {
        let got = rest("POST", s.rest(&format!("/v1/conversations/{g}/leave"), user), None).await;
        if got != want {
            failures.push(format!("REST leave as {user}: got {got}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "authorization differs from the protocol:\n{}", failures.join("\n"));
}
