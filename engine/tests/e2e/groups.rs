//! Groups, group receipts, presence and typing over real WebSockets.

use crate::common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

async fn create(admin: &mut Client, members: &[String]) -> String {
    admin.send(json!({"t":"group_create","name":"crew","members":members,"ref":"create"})).await;
    let g = admin.recv_where(|v| v["t"] == "group" && v["ref"] == "create" || v["t"] == "error").await;
    assert_eq!(g["t"], "group", "{g}");
    g["conv"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_500_member_group_across_shards_gets_every_message_once_in_order() {
    let s = Server::start(&["--shards", "3"]);
    let names: Vec<String> = (0..500).map(|i| format!("member{i}")).collect();
    let mut clients = Vec::new();
    for n in &names {
        clients.push(Client::connect(&s, n, "d").await);
    }
    let conv = create(&mut clients[0], &names[1..]).await;
    // The 501st member does not fit.
    clients[0].send(json!({"t":"group_add","conv":conv,"users":["one-too-many"],"ref":"full"})).await;
    let e = clients[0].recv_where(|v| v["ref"] == "full").await;
    assert_eq!(e["code"], "group_full", "{e}");
    // Five members send 20 messages each, concurrently.
    let per = 20;
    let mut senders = Vec::new();
    for _ in 0..5 {
        senders.push(clients.remove(0));
    }
    let conv2 = conv.clone();
    let send_tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let conv = conv2.clone();
            tokio::spawn(async move {
                for j in 0..per {
                    c.send(json!({"t":"send","cmid":format!("{i}-{j}"),"conv":conv,"body":format!("m{i}-{j}")})).await;
                }
                let mut acks = 0;
                while acks < per {
                    if c.recv().await["t"] == "ack" {
                        acks += 1;
                    }
                }
            })
        })
        .collect();
    let total = 5 * per as u64;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                while seqs.len() < total as usize {
                    let v = c.recv().await;
                    if v["t"] == "msg" && v["kind"] != "system" {
                        seqs.push(seq(&v));
                    }
                }
                seqs
            })
        })
        .collect();
    for t in send_tasks {
        t.await.unwrap();
    }
    for r in readers {
        let seqs = r.await.unwrap();
        // seq 1 is the creation; the 100 messages are 2..=101, each once, in order.
        assert_eq!(seqs, (2..=total + 1).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn strangers_and_former_members_are_kept_out() {
    let s = Server::start(&[]);
    let mut ann = Client::connect(&s, "ann", "d").await;
    let mut bob = Client::connect(&s, "bob", "d").await;
    let mut eve = Client::connect(&s, "eve", "d").await;
    let conv = create(&mut ann, &["bob".into()]).await;
    for req in [
        json!({"t":"send","cmid":"x","conv":conv,"body":"hi"}),
        json!({"t":"history","conv":conv}),
        json!({"t":"read","conv":conv,"seq":1}),
        json!({"t":"typing","conv":conv}),
        json!({"t":"receipt_query","conv":conv,"seq":1}),
    ] {
        eve.send(req.clone()).await;
        assert_eq!(eve.recv().await["code"], "forbidden", "{req}");
    }
    ann.send(json!({"t":"group_remove","conv":conv,"users":["bob"],"ref":"rm"})).await;
    ann.recv_where(|v| v["ref"] == "rm").await;
    let last = bob.recv_where(|v| v["t"] == "msg" && v["body"].as_str().unwrap().contains("remove")).await;
    ann.send(json!({"t":"send","cmid":"secret","conv":conv,"body":"bob is gone"})).await;
    ann.recv_where(|v| v["t"] == "ack").await;
    bob.silent_for(Duration::from_millis(300)).await;
    bob.send(json!({"t":"history","conv":conv,"ref":"h"})).await;
    let h = bob.recv().await;
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs.first(), Some(&seq(&last)), "history stops at the removal: {h}");
    assert!(!h.to_string().contains("bob is gone"));
}

#[tokio::test]
async fn typing_reaches_members_and_never_history() {
    let s = Server::start(&[]);
    let mut ann = Client::connect(&s, "ann", "d").await;
    let mut bob = Client::connect(&s, "bob", "d").await;
    let conv = create(&mut ann, &["bob".into()]).await;
    bob.recv_where(|v| v["t"] == "msg").await;
    ann.send(json!({"t":"typing","conv":conv})).await;
    assert_eq!(bob.recv().await, json!({"t":"typing","conv":conv,"user":"ann"}));
    // Composing the first message of a direct conversation: bob hears it.
    ann.send(json!({"t":"typing","conv":"d:ann:bob"})).await;
    assert_eq!(bob.recv().await, json!({"t":"typing","conv":"d:ann:bob","user":"ann"}));
    ann.send(json!({"t":"typing","conv":"g:999"})).await;
    let e = ann.recv_where(|v| v["t"] == "error").await;
    assert_eq!(e["code"], "not_found", "typing into a conversation that does not exist");
    bob.send(json!({"t":"history","conv":conv})).await;
    let h = bob.recv().await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1, "only the creation: {h}");
}

#[tokio::test]
async fn group_receipts_arrive_as_counts() {
    let s = Server::start(&[]);
    let mut ann = Client::connect(&s, "ann", "d").await;
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(Client::connect(&s, &format!("o{i}"), "d").await);
    }
    let conv = create(&mut ann, &(0..4).map(|i| format!("o{i}")).collect::<Vec<_>>()).await;
    ann.send(json!({"t":"send","cmid":"m","conv":conv,"body":"read me"})).await;
    let ack = ann.recv_where(|v| v["t"] == "ack").await;
    for (i, o) in others.iter_mut().enumerate() {
        o.send(json!({"t":"delivered","conv":conv,"seq":seq(&ack)})).await;
        if i < 2 {
            o.send(json!({"t":"read","conv":conv,"seq":seq(&ack)})).await;
        }
    }
    let c = ann.recv_where(|v| v["t"] == "receipt_counts" && v["counts"][0]["delivered"] == 4 && v["counts"][0]["read"] == 2).await;
    assert_eq!((c["of"].as_u64(), c["counts"][0]["seq"].as_u64()), (Some(4), Some(seq(&ack))));
    ann.send(json!({"t":"receipt_query","conv":conv,"seq":seq(&ack),"ref":"q"})).await;
    let d = ann.recv_where(|v| v["t"] == "receipt_detail").await;
    assert_eq!(d["read"], json!(["o0", "o1"]));
    assert_eq!(d["delivered"].as_array().unwrap().len(), 4);
}

fn presence_of(v: &Value) -> (String, String) {
    (v["user"].as_str().unwrap().to_string(), v["status"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn presence_flips_on_connect_disconnect_and_heartbeat_timeout() {
    // The watcher is silent until its pinger starts below, through a change and a coalescing
    // interval (1 s): the timeout leaves it room for that on a loaded machine.
    let s = Server::start(&["--heartbeat-timeout-ms", "3000"]);
    let mut w = Client::connect(&s, "watcher", "d").await;
    w.send(json!({"t":"presence_sub","users":["alice"]})).await;
    assert_eq!(presence_of(&w.recv().await), ("alice".into(), "offline".into()));
    let keep_alive = |mut c: Client| {
        tokio::spawn(async move {
            loop {
                c.send(json!({"t":"ping"})).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), c.ws.next()).await {}
            }
        })
    };
    let alice = Client::connect(&s, "alice", "d").await;
    let v = w.recv_where(|v| v["t"] == "presence").await;
    assert_eq!(presence_of(&v), ("alice".into(), "online".into()));
    drop(alice);
    let v = w.recv_where(|v| v["t"] == "presence").await;
    assert_eq!(presence_of(&v), ("alice".into(), "offline".into()));
    assert!(v["last_seen"].as_u64().unwrap() > 1_700_000_000_000);
    let pinger = keep_alive(w);
    // A silent connection goes offline when its heartbeat times out.
    let mut w2 = Client::connect(&s, "watcher2", "d").await;
    let _silent = Client::connect(&s, "sam", "d").await;
    w2.send(json!({"t":"presence_sub","users":["sam"]})).await;
    assert_eq!(presence_of(&w2.recv().await), ("sam".into(), "online".into()));
    let w2 = keep_alive_until_offline(w2).await;
    drop(w2);
    pinger.abort();
}

/// Keeps `c` alive with pings while waiting for an offline presence frame.
async fn keep_alive_until_offline(mut c: Client) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        c.send(json!({"t":"ping"})).await;
        if let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(300), c.ws.next()).await
        {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["t"] == "presence" && v["status"] == "offline" {
                assert!(v["last_seen"].is_u64());
                return c;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no offline presence after the heartbeat timeout");
    }
}

#[tokio::test]
async fn a_slow_member_neither_stalls_the_group_nor_loses_messages() {
    let s = Server::start(&[]);
    let mut ann = Client::connect(&s, "ann", "d").await;
    let mut fast = Client::connect(&s, "fast", "d").await;
    let mut slow = Client::connect(&s, "slow", "d").await;
    let conv = create(&mut ann, &["fast".into(), "slow".into()]).await;
    let body = "z".repeat(50_000);
    let total = 600u64;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            let v = fast.recv().await;
            if v["t"] == "msg" && v["kind"] == "text" {
                n += 1;
            }
        }
    });
    // Paced by acks, as a real client is: the fast member keeps up, the slow one never reads.
    for i in 0..total {
        ann.send(json!({"t":"send","cmid":format!("{i}"),"conv":conv,"body":body})).await;
        ann.recv_where(|v| v["t"] == "ack").await;
    }
    reader.await.unwrap();
    // The slow member was cut loose (or is still catching up); either way a reconnect + sync
    // from its last seq brings everything back.
    let mut last = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.ws.next()).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["t"] == "msg" {
                    last = seq(&v);
                }
                if last == total + 1 {
                    break;
                }
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    let mut again = Client::connect(&s, "slow", "d").await;
    let next = again.catch_up(&conv, last).await;
    assert_eq!(next, total + 2);
}
