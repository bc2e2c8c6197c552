//! The engine on the ScyllaDB backend, through the real `scylla` driver, against the CQL test
//! double (`storage/cql-double`: a test fixture; no ScyllaDB can be installed where CI runs).
//! `shardchat migrate` applies the schema, `serve --store scylla://…` keeps every message there:
//! a second engine with an empty data directory sees the first one's history and resumes seq.

use crate::common::*;
use serde_json::json;
use shardchat_cql_double::CqlDouble;
use std::process::Command;

fn uri(double: &CqlDouble, keyspace: &str) -> String {
    format!("scylla://{}/{keyspace}?schema_metadata=off", double.addr())
}

fn migrate(uri: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shardchat")).args(["migrate", "--scylla", uri, "--replication-factor", "1"]).output().unwrap()
}

#[tokio::test]
async fn messages_groups_and_dedup_live_in_scylla_and_survive_losing_the_node() {
    let double = CqlDouble::start().unwrap();
    let uri = uri(&double, "chat");
    let out = migrate(&uri);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema applied to keyspace chat"));
    // Migrating again is harmless.
    assert!(migrate(&uri).status.success());

    let mut first = Server::start(&["--store", &uri]);
    let mut a = Client::connect(&first, "alice", "phone").await;
    let mut b = Client::connect(&first, "bob", "phone").await;
    for i in 1..=3 {
        let ack = a.dm("bob", &format!("c{i}"), &format!("hello {i}")).await;
        assert_eq!((ack["t"].as_str(), seq(&ack)), (Some("ack"), i), "{ack}");
        let m = b.recv().await;
        assert_eq!((m["t"].as_str(), seq(&m)), (Some("msg"), i), "{m}");
    }
    a.send(json!({"t":"group_create","name":"crew","members":["bob","carol"],"ref":"g"})).await;
    let g = a.recv_where(|v| v["ref"] == "g").await;
    assert_eq!(g["t"], "group", "{g}");
    let conv = g["conv"].as_str().unwrap().to_string();
    a.send(json!({"t":"send","conv":conv,"cmid":"g1","body":"to the crew"})).await;
    let ack = a.recv_where(|v| v["t"] == "ack").await;
    assert_eq!(seq(&ack), 2, "seq 1 is the group's creation: {ack}");
    assert_eq!(double.row_count("chat.messages"), 5);
    assert_eq!(double.row_count("chat.members"), 5, "two in the direct conversation, three in the group");
    first.kill();

    // A new node with nothing on its disk: everything comes from the cluster.
    let second = Server::start(&["--store", &uri]);
    let mut b = Client::connect(&second, "bob", "laptop").await;
    b.send(json!({"t":"sync","cursors":{}})).await;
    let mut got: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    loop {
        let v = b.recv().await;
        match v["t"].as_str() {
            Some("sync") => {
                got.entry(v["conv"].as_str().unwrap().into()).or_default().extend(v["messages"].as_array().unwrap().iter().map(seq))
            }
            Some("synced") => break,
            _ => panic!("{v}"),
        }
    }
    assert_eq!(got["d:alice:bob"], vec![1, 2, 3], "the direct messages, in order, from the cluster");
    assert_eq!(got[&conv], vec![1, 2], "the group, from the member list in the cluster");
    b.send(json!({"t":"history","conv":conv,"ref":"h"})).await;
    let h = b.recv_where(|v| v["ref"] == "h").await;
    assert_eq!(h["messages"][0]["body"], "to the crew", "{h}");
    let mut a = Client::connect(&second, "alice", "laptop").await;
    // A retried send is answered with the stored message, not stored twice.
    let again = a.dm("bob", "c2", "hello 2").await;
    assert_eq!((again["t"].as_str(), seq(&again)), (Some("ack"), 2), "{again}");
    // seq resumes from the store.
    let next = a.dm("bob", "c4", "hello 4").await;
    assert_eq!(seq(&next), 4, "{next}");
    // Edits, reactions and replies are kept in the cluster like the rest.
    a.send(json!({"t":"send","cmid":"e1","conv":"d:alice:bob","kind":"edit","target":1,"body":"hello one"})).await;
    assert_eq!(seq(&a.recv_where(|v| v["t"] == "ack" && v["cmid"] == "e1").await), 5);
    a.send(json!({"t":"send","cmid":"r1","conv":"d:alice:bob","kind":"reaction","target":2,"body":"👍"})).await;
    a.recv_where(|v| v["t"] == "ack" && v["cmid"] == "r1").await;
    a.send(json!({"t":"send","cmid":"c5","to":"bob","body":"see above","reply_to":1})).await;
    a.recv_where(|v| v["t"] == "ack" && v["cmid"] == "c5").await;
    a.send(json!({"t":"history","conv":"d:alice:bob","before":5,"limit":4,"ref":"h2"})).await;
    let h = a.recv_where(|v| v["ref"] == "h2").await;
    let page = h["messages"].as_array().unwrap();
    assert_eq!((&page[3]["body"], page[3]["edited_at"].is_u64()), (&json!("hello one"), true), "{h}");
    assert_eq!(page[2]["reactions"], json!([{"user":"alice","emoji":"👍"}]), "{h}");
    a.send(json!({"t":"history","conv":"d:alice:bob","limit":1,"ref":"h3"})).await;
    assert_eq!(a.recv_where(|v| v["ref"] == "h3").await["messages"][0]["reply_to"], 1);
    assert_eq!(double.row_count("chat.messages"), 9, "seven direct (an edit and a reaction among them), two in the group");
    // Membership came from the cluster too: a stranger is refused, a member is not.
    let mut eve = Client::connect(&second, "eve", "d").await;
    eve.send(json!({"t":"history","conv":conv})).await;
    assert_eq!(eve.recv().await["code"], "forbidden");
}

#[tokio::test]
async fn an_unavailable_cluster_answers_unavailable_and_nothing_is_lost_when_it_returns() {
    let double = CqlDouble::start().unwrap();
    let uri = uri(&double, "shardchat");
    assert!(migrate(&uri).status.success());
    let s = Server::start(&["--store", &uri]);
    let mut a = Client::connect(&s, "alice", "phone").await;
    let mut b = Client::connect(&s, "bob", "phone").await;
    assert_eq!(seq(&a.dm("bob", "c1", "before").await), 1);
    assert_eq!(seq(&b.recv().await), 1);
    double.set_unavailable(true);
    let e = a.dm("bob", "c2", "during").await;
    assert_eq!((e["t"].as_str(), e["code"].as_str(), e["cmid"].as_str()), (Some("error"), Some("unavailable"), Some("c2")), "{e}");
    double.set_unavailable(false);
    // The client retries with the same cmid; the message is stored once, with the next seq.
    let ack = a.dm("bob", "c2", "during").await;
    assert_eq!((ack["t"].as_str(), seq(&ack)), (Some("ack"), 2), "{ack}");
    let m = b.recv().await;
    assert_eq!((m["body"].as_str(), seq(&m)), (Some("during"), 2), "{m}");
    assert_eq!(double.row_count("shardchat.messages"), 2);
}

#[test]
fn serve_refuses_a_cluster_without_the_schema_and_names_the_fix() {
    let double = CqlDouble::start().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardchat"))
        .args(["serve", "--dev-auth", "--no-http", "--listen", &format!("127.0.0.1:{}", free_port()), "--store", &uri(&double, "empty")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shardchat migrate"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_shardchat")).args(["serve", "--dev-auth", "--store", "scylla://"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no hosts"));
}
