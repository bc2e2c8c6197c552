//! Edits, deletes, reactions and replies end to end: over WebSocket and REST, live and through
//! `sync` from a cursor, history in the current state, unread counts, search, and all of it kept
//! across `kill -9`.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

const C: &str = "d:alice:bob";

/// Sends `frame` and returns its ack (or the error about it).
async fn sent(c: &mut Client, frame: Value) -> Value {
    let cmid = frame["cmid"].as_str().unwrap().to_string();
    c.send(frame).await;
    c.recv_where(|v| (v["t"] == "ack" || v["t"] == "error") && v["cmid"] == cmid.as_str()).await
}

fn event(cmid: &str, kind: &str, target: u64, body: &str) -> Value {
    json!({"t":"send","cmid":cmid,"conv":C,"kind":kind,"target":target,"body":body})
}

/// The whole history of `C` as `c` sees it, oldest first.
async fn history(c: &mut Client) -> Vec<Value> {
    c.send(json!({"t":"history","conv":C,"limit":200,"ref":"h"})).await;
    let page = c.recv_where(|v| v["t"] == "history").await;
    let mut msgs = page["messages"].as_array().unwrap().clone();
    msgs.reverse();
    msgs
}

async fn search_hits(s: &Server, user: &str, q: &str) -> usize {
    let v: Value = reqwest::get(s.rest(&format!("/v1/search?q={q}"), user)).await.unwrap().json().await.unwrap();
    v["hits"].as_array().unwrap().len()
}

async fn unread(s: &Server, user: &str) -> u64 {
    let v: Value = reqwest::get(s.rest("/v1/conversations", user)).await.unwrap().json().await.unwrap();
    v["conversations"][0]["unread"].as_u64().unwrap()
}

#[tokio::test]
async fn edits_deletes_reactions_and_replies_reach_everyone_and_survive_kill_9() {
    let mut s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "phone").await;
    let mut bob = Client::connect(&s, "bob", "phone").await;
    assert_eq!(seq(&alice.dm("bob", "m1", "helo wrold").await), 1);
    bob.recv_where(|v| v["t"] == "msg").await;

    // An edit: the next seq, live to bob with its target.
    let ack = sent(&mut alice, event("e1", "edit", 1, "hello world")).await;
    assert_eq!((ack["t"].as_str(), seq(&ack)), (Some("ack"), 2), "{ack}");
    let live = bob.recv_where(|v| v["t"] == "msg").await;
    assert_eq!((live["kind"].as_str(), live["target"].as_u64(), live["body"].as_str()), (Some("edit"), Some(1), Some("hello world")));
    // A reaction, a reply, and a message deleted after it was seen.
    assert_eq!(seq(&sent(&mut bob, event("r1", "reaction", 1, "👍")).await), 3);
    let reply = sent(&mut bob, json!({"t":"send","cmid":"m2","to":"alice","body":"hi!","reply_to":1})).await;
    assert_eq!(seq(&reply), 4);
    assert_eq!(seq(&alice.dm("bob", "m3", "secret plans").await), 5);
    assert_eq!(seq(&sent(&mut alice, event("d1", "delete", 5, "")).await), 6);
    // Over REST too, with the same rules: a reaction by alice to bob's reply.
    let http = reqwest::Client::new();
    let r = http
        .put(s.rest(&format!("/v1/conversations/{C}/messages/4/reaction"), "alice"))
        .json(&json!({"cmid":"r2","emoji":"😂"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    assert_eq!(seq(&ack), 7);
    let r = http
        .put(s.rest(&format!("/v1/conversations/{C}/messages/4/reaction"), "alice"))
        .json(&json!({"cmid":"r3","emoji":"nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "one emoji or nothing");
    let r = http
        .patch(s.rest(&format!("/v1/conversations/{C}/messages/4"), "alice"))
        .json(&json!({"cmid":"x3","body":"bob's"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "only the author edits, over REST too");
    let r = http.delete(s.rest(&format!("/v1/conversations/{C}/messages/99?cmid=x4"), "alice")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(s.rest(&format!("/v1/conversations/{C}/messages"), "alice"))
        .json(&json!({"cmid":"x5","body":"hi","reply_to":null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "reply_to is a seq or absent, never null");
    // And the refusals: bob edits alice's message, alice reacts to a message that is not there.
    let e = sent(&mut bob, event("x1", "edit", 1, "mine now")).await;
    assert_eq!((e["t"].as_str(), e["code"].as_str()), (Some("error"), Some("forbidden")), "{e}");
    let e = sent(&mut alice, event("x2", "reaction", 99, "👍")).await;
    assert_eq!(e["code"], "not_found", "{e}");

    let check = |msgs: &[Value]| {
        assert_eq!(msgs.iter().map(seq).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>(), "{msgs:?}");
        let first = &msgs[0];
        assert_eq!(first["body"], "hello world");
        assert!(first["edited_at"].as_u64().is_some(), "{first}");
        assert_eq!(first["reactions"], json!([{"user":"bob","emoji":"👍"}]));
        assert_eq!((msgs[3]["reply_to"].as_u64(), &msgs[3]["reactions"]), (Some(1), &json!([{"user":"alice","emoji":"😂"}])));
        assert_eq!((&msgs[4]["deleted"], &msgs[4]["body"]), (&json!(true), &json!("")), "a tombstone: {}", msgs[4]);
        assert_eq!(msgs[1]["kind"], "edit");
        assert!(msgs.iter().all(|m| !m["body"].as_str().unwrap().contains("secret")));
        assert!(msgs.iter().all(|m| m.get("edits").is_none()), "the store's bookkeeping stays off the wire");
    };
    check(&history(&mut alice).await);

    // A device that was offline since seq 1 learns every change from its cursor.
    let mut tablet = Client::connect(&s, "bob", "tablet").await;
    tablet.send(json!({"t":"sync","cursors":{C: 1}})).await;
    let chunk = tablet.recv_where(|v| v["t"] == "sync").await;
    let kinds: Vec<&str> = chunk["messages"].as_array().unwrap().iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["edit", "reaction", "text", "text", "delete", "reaction"]);

    // Unread counts messages proper only: bob has alice's first (the second was deleted).
    assert_eq!(unread(&s, "bob").await, 1);
    // The list's preview is the newest message proper (a tombstone), not the reaction after it.
    let list: Value = reqwest::get(s.rest("/v1/conversations", "bob")).await.unwrap().json().await.unwrap();
    let c = &list["conversations"][0];
    assert_eq!((c["last_seq"].as_u64(), c["last"]["seq"].as_u64(), &c["last"]["deleted"]), (Some(7), Some(5), &json!(true)), "{c}");
    assert_eq!(unread(&s, "alice").await, 1, "bob's reply, not his reaction");

    // Search follows: the new text is found, the old text and the deleted message are not.
    for _ in 0..100 {
        if search_hits(&s, "bob", "hello").await == 1 && search_hits(&s, "bob", "wrold").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((search_hits(&s, "bob", "hello").await, search_hits(&s, "bob", "wrold").await), (1, 0));
    assert_eq!(search_hits(&s, "bob", "secret").await, 0);

    // Everything acknowledged is durable: the same state after kill -9.
    s.kill();
    s.restart();
    let mut alice = Client::connect(&s, "alice", "phone").await;
    check(&history(&mut alice).await);
    // Dedup across the restart: the retried edit gets its first ack, nothing new is stored.
    let again = sent(&mut alice, event("e1", "edit", 1, "hello world")).await;
    assert_eq!(seq(&again), 2);
    assert_eq!(history(&mut alice).await.len(), 7);
}

/// In a group an admin deletes anyone's message; a member only their own.
#[tokio::test]
async fn group_admins_delete_any_message() {
    let s = Server::start(&[]);
    let mut ann = Client::connect(&s, "ann", "d").await;
    let mut ben = Client::connect(&s, "ben", "d").await;
    ann.send(json!({"t":"group_create","name":"team","members":["ben","cat"],"ref":"g"})).await;
    let g = ann.recv_where(|v| v["t"] == "group").await["conv"].as_str().unwrap().to_string();
    let m = sent(&mut ben, json!({"t":"send","cmid":"b1","conv":g,"body":"ben's"})).await;
    let target = seq(&m);
    let mut cat = Client::connect(&s, "cat", "d").await;
    let e = sent(&mut cat, json!({"t":"send","cmid":"x","conv":g,"kind":"delete","target":target,"body":""})).await;
    assert_eq!(e["code"], "forbidden");
    let ok = sent(&mut ann, json!({"t":"send","cmid":"d","conv":g,"kind":"delete","target":target,"body":""})).await;
    assert_eq!(ok["t"], "ack", "{ok}");
    let live = ben.recv_where(|v| v["t"] == "msg" && v["kind"] == "delete").await;
    assert_eq!(live["target"].as_u64(), Some(target));
}
