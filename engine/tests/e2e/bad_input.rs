//! Every error of the contract's table over the wire, protocol violations, auth refusals,
//! heartbeat timeouts, slowloris handshakes, binary frames and slow consumers.

use crate::common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use shardchat_codec::{decode_server_binary, encode_client_binary, ClientFrame, MsgKind, ServerFrame};
use std::io::{Read, Write};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn each_error_code_is_answered_and_the_connection_stays_open() {
    let s = Server::start(&["--body-bytes-max", "1000"]);
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut eve = Client::connect(&s, "eve", "d").await;
    a.dm("bob", "c0", "hello").await;

    // bad_request: not JSON, unknown type, missing field, invalid id, reserved kind.
    a.send_raw(Message::Text("not json".into())).await;
    assert_eq!(a.recv().await["code"], "bad_request");
    a.send(json!({"t":"teleport","ref":"r1"})).await;
    let e = a.recv().await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("bad_request"), Some("r1")), "{e}");
    assert!(e["msg"].as_str().unwrap().contains("unknown frame type"));
    a.send(json!({"t":"send","cmid":"c1","to":"bob"})).await;
    let e = a.recv().await;
    assert_eq!((e["code"].as_str(), e["cmid"].as_str()), (Some("bad_request"), Some("c1")), "{e}");
    a.send(json!({"t":"send","cmid":"c2","to":"bad id!","body":"x"})).await;
    assert_eq!(a.recv().await["code"], "bad_request");
    a.send(json!({"t":"send","cmid":"c3","to":"bob","body":"x","kind":"system"})).await;
    assert_eq!(a.recv().await["code"], "bad_request");
    a.send(json!({"t":"read","conv":"d:alice:bob","seq":99})).await;
    assert_eq!(a.recv().await["code"], "bad_request", "a watermark beyond the last message");

    // too_large: a body over the configured limit.
    let e = a.dm("bob", "big", &"x".repeat(1001)).await;
    assert_eq!((e["code"].as_str(), e["cmid"].as_str()), (Some("too_large"), Some("big")), "{e}");

    // group_full: more than 500 members.
    let members: Vec<String> = (0..501).map(|i| format!("u{i}")).collect();
    a.send(json!({"t":"group_create","name":"big","members":members,"ref":"g"})).await;
    let e = a.recv().await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("group_full"), Some("g")));

    // forbidden: a stranger's send, history and receipt on someone else's conversation.
    eve.send(json!({"t":"send","cmid":"e1","conv":"d:alice:bob","body":"hi"})).await;
    assert_eq!(eve.recv().await["code"], "forbidden");
    eve.send(json!({"t":"history","conv":"d:alice:bob","ref":7})).await;
    let e = eve.recv().await;
    assert_eq!((e["code"].as_str(), e["ref"].as_i64()), (Some("forbidden"), Some(7)));
    eve.send(json!({"t":"read","conv":"d:alice:bob","seq":1})).await;
    assert_eq!(eve.recv().await["code"], "forbidden");
    // Nor does a stranger learn the conversation through sync.
    eve.send(json!({"t":"sync","cursors":{"d:alice:bob":0}})).await;
    assert_eq!(eve.recv().await, json!({"t":"synced","convs":{}}));

    // not_found: conversations that do not exist (well-formed ids).
    eve.send(json!({"t":"history","conv":"g:424242"})).await;
    assert_eq!(eve.recv().await["code"], "not_found");
    eve.send(json!({"t":"send","cmid":"e2","conv":"g:424242","body":"x"})).await;
    assert_eq!(eve.recv().await["code"], "not_found");
    // bad_request: ids that cannot name a conversation.
    eve.send(json!({"t":"history","conv":"g:abc","ref":"m"})).await;
    let e = eve.recv().await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("bad_request"), Some("m")), "{e}");

    // Still open and working after all of that.
    assert_eq!(a.dm("bob", "c9", "still here").await["t"], "ack");
    eve.send(json!({"t":"ping"})).await;
    assert_eq!(eve.recv().await["t"], "pong");
}

#[tokio::test]
async fn binary_frames_are_answered_in_binary() {
    let s = Server::start(&[]);
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut b = Client::connect(&s, "bob", "d").await;
    let frame = ClientFrame::Send {
        cmid: "bin".into(),
        to: Some("bob".into()),
        conv: None,
        body: "rkyv".into(),
        kind: MsgKind::Text,
        target: None,
        reply_to: None,
        media: None,
    };
    a.send_raw(Message::Binary(encode_client_binary(&frame).into())).await;
    let ack = match a.ws.next().await.unwrap().unwrap() {
        Message::Binary(bytes) => decode_server_binary(&bytes).unwrap(),
        other => panic!("expected binary, got {other:?}"),
    };
    assert!(matches!(ack, ServerFrame::Ack { seq: 1, .. }), "{ack:?}");
    // The text client gets text.
    let m = b.recv().await;
    assert_eq!((m["t"].as_str(), m["body"].as_str()), (Some("msg"), Some("rkyv")));
    // Garbage in binary is an error, in binary, and the connection stays.
    a.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    let e = match a.ws.next().await.unwrap().unwrap() {
        Message::Binary(bytes) => decode_server_binary(&bytes).unwrap(),
        other => panic!("expected binary, got {other:?}"),
    };
    assert!(matches!(e, ServerFrame::Error { code: shardchat_codec::ErrorCode::BadRequest, .. }));
    // Speaking text again switches the answers back.
    a.send(json!({"t":"ping"})).await;
    assert_eq!(a.recv().await["t"], "pong");
}

#[tokio::test]
async fn a_message_over_the_websocket_limit_closes_with_1009() {
    let s = Server::start(&["--body-bytes-max", "1000"]);
    let mut a = Client::connect(&s, "alice", "d").await;
    a.send_raw(Message::Text("x".repeat(100_000).into())).await;
    assert_eq!(a.closed(Duration::from_secs(5)).await, Some(1009));
    assert_eq!(metric_sum(&s, "shardchat_closes_protocol_total", "").await, 1.0);
}

#[tokio::test]
async fn upgrades_without_valid_identity_get_401() {
    let s = Server::start(&["--jwt-secret", "topsecret"]);
    for target in ["/ws", "/ws?token=garbage", "/ws?user=alice&token=x.y.z"] {
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        write!(sock, "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let mut resp = String::new();
        sock.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 401"), "{target}: {resp}");
    }
    assert_eq!(metric_sum(&s, "shardchat_handshakes_refused_total", "").await, 3.0);
    // A valid token in the header or the query works, and its `dev` claim names the device.
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        dev: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub: "alice", dev: "phone", exp },
        &jsonwebtoken::EncodingKey::from_secret(b"topsecret"),
    )
    .unwrap();
    let url = format!("ws://127.0.0.1:{}/ws?token={token}", s.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(r#"{"t":"ping","ref":1}"#.into())).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.contains("pong")));
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{}/ws", s.port).into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

#[test]
fn a_request_head_over_8_kib_gets_431_and_a_malformed_one_400() {
    let s = Server::start(&[]);
    let answer = |head: Vec<u8>| {
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server answers as soon as it has seen enough; the rest may not be read.
        let _ = sock.write_all(&head);
        let mut resp = Vec::new();
        let _ = sock.read_to_end(&mut resp);
        String::from_utf8_lossy(&resp).into_owned()
    };
    let mut big = b"GET /ws?user=a HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    big.resize(9 * 1024, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert!(answer(big).starts_with("HTTP/1.1 431"));
    let mut many = b"GET /ws?user=a HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(answer(many).starts_with("HTTP/1.1 431"), "more header fields than taken");
    assert!(answer(b"\x00\x01 nonsense\r\n\r\n".to_vec()).starts_with("HTTP/1.1 400"));
}

#[tokio::test]
async fn a_silent_handshake_is_cut_off() {
    let s = Server::start(&["--handshake-timeout-ms", "300"]);
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.write_all(b"GET /ws?user=slow HTTP/1.1\r\n").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert_eq!(metric_sum(&s, "shardchat_handshake_timeouts_total", "").await, 1.0);
    assert_eq!(metric_sum(&s, "shardchat_handshakes_refused_total", "").await, 0.0);
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_heartbeat_timeout() {
    let s = Server::start(&["--heartbeat-timeout-ms", "1000"]);
    let mut quiet = Client::connect(&s, "quiet", "d").await;
    let mut chatty = Client::connect(&s, "chatty", "d").await;
    let pinger = tokio::spawn(async move {
        for _ in 0..12 {
            chatty.send_raw(Message::Ping(vec![1].into())).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        chatty.send(json!({"t":"ping"})).await;
        chatty.recv_where(|v| v["t"] == "pong").await;
    });
    assert_eq!(quiet.closed(Duration::from_secs(5)).await, Some(1000));
    pinger.await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_loose_without_stalling_others_and_loses_nothing() {
    let s = Server::start(&["--outbound-queue-bytes-max", "1048576", "--send-rate-per-s", "0", "--user-send-rate-per-s", "0"]);
    // The slow client's receive buffer is small, as a phone's on a bad network: the sockets
    // hold little, and what the server had not written yet stands between it and its close.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(format!("127.0.0.1:{}", s.port).parse().unwrap()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(s.url("slow", "d"), tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    let mut slow = Client { ws, user: "slow".into() };
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut c = Client::connect(&s, "carol", "d").await;
    // The slow client never reads; alice floods it. Loopback socket buffers absorb a few MiB,
    // then the server's queue for it fills and it is closed.
    let body = "y".repeat(4_000);
    let mut total = 0;
    for i in 0..4000 {
        a.send(json!({"t":"send","cmid":format!("f{i}"),"to":"slow","body":body})).await;
        total += 1;
        if i % 50 == 0 {
            // Others are not stalled meanwhile.
            assert_eq!(c.dm("alice", &format!("c{i}"), "still fast").await["t"], "ack");
        }
        if i % 10 == 9 && metric_sum(&s, "shardchat_closes_slow_consumer_total", "").await > 0.0 {
            break;
        }
    }
    assert!(total < 4000, "the slow client was never cut off");
    // The slow client reads again 3 s after it was cut off: what was already in the sockets,
    // then its close frame, 1013 (its backlog was dropped so that the close could go out, and
    // the server waits that long for it to be taken).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut seen = 0u64;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                seen = seq(&v);
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the connection ended without its close frame: {e}"),
            None => panic!("the connection ended without its close frame"),
        }
    };
    assert_eq!(code, Some(1013));
    let mut acks = 0;
    while acks < total {
        let v = a.recv().await;
        if v["t"] == "ack" && v["cmid"].as_str().unwrap().starts_with('f') {
            acks += 1;
        }
    }
    assert!(seen < total as u64, "the slow client should have been cut off, saw {seen}");
    // Reconnect and sync from what it had: everything is there.
    let mut again = Client::connect(&s, "slow", "d").await;
    let next = again.catch_up("d:alice:slow", seen).await;
    assert_eq!(next, total as u64 + 1, "sync brought back every message");
}

#[tokio::test]
async fn a_connection_is_closed_with_1008_when_its_token_expires() {
    let s = Server::start(&["--jwt-secret", "topsecret", "--jwt-leeway-s", "0"]);
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let token = |user: &str, secs: u64| {
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + secs;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &Claims { sub: user, exp },
            &jsonwebtoken::EncodingKey::from_secret(b"topsecret"),
        )
        .unwrap()
    };
    let connect = |t: String| tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws?token={t}", s.port));
    let (mut short, _) = connect(token("alice", 2)).await.unwrap();
    let (mut long, _) = connect(token("bob", 600)).await.unwrap();
    // Activity does not keep an expired token alive.
    let started = std::time::Instant::now();
    let code = loop {
        short.send(Message::Text(r#"{"t":"ping"}"#.into())).await.ok();
        match tokio::time::timeout(std::time::Duration::from_millis(300), short.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(other) => panic!("{other:?}"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "still open long after exp");
    };
    assert_eq!(code, Some(1008));
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "closed before exp: {:?}", started.elapsed());
    long.send(Message::Text(r#"{"t":"ping","ref":1}"#.into())).await.unwrap();
    assert!(matches!(long.next().await, Some(Ok(Message::Text(t))) if t.contains("pong")), "a valid token's connection stays");
}

#[tokio::test]
async fn a_users_connections_share_the_users_send_limit() {
    let s = Server::start(&["--send-burst", "100", "--user-send-rate-per-s", "1", "--user-send-burst", "3"]);
    let mut a = Client::connect(&s, "alice", "one").await;
    let mut b = Client::connect(&s, "alice", "two").await;
    let mut outcomes = Vec::new();
    for i in 0..4 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        let v = c.dm("bob", &format!("u{i}"), "x").await;
        outcomes.push(if v["t"] == "ack" { "ack".to_string() } else { v["code"].as_str().unwrap().to_string() });
    }
    assert_eq!(outcomes, ["ack", "ack", "ack", "rate_limited"], "four sends from two devices against a burst of three");
}

#[tokio::test]
async fn a_flood_of_sends_is_refused_beyond_the_connections_rate_and_counted() {
    let s = Server::start(&["--send-rate-per-s", "2", "--send-burst", "3"]);
    let mut a = Client::connect(&s, "alice", "d").await;
    for i in 0..6 {
        a.send(json!({"t":"send","cmid":format!("f{i}"),"to":"bob","body":"x"})).await;
    }
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    while acked.len() + refused.len() < 6 {
        let v = a.recv().await;
        match v["t"].as_str() {
            Some("ack") => acked.push(v["cmid"].as_str().unwrap().to_string()),
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                refused.push(v["cmid"].as_str().unwrap().to_string());
            }
            _ => panic!("{v}"),
        }
    }
    assert_eq!(acked, ["f0", "f1", "f2"]);
    assert_eq!(refused, ["f3", "f4", "f5"], "each refusal names its send, so the client can retry it");
    // Other frames are not limited, and the sustained rate comes back.
    a.send(json!({"t":"ping","ref":"p"})).await;
    assert_eq!(a.recv().await["t"], "pong");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(a.dm("bob", "f3", "x").await["seq"], 4);
    assert_eq!(metric_sum(&s, "shardchat_rate_limited_total", "").await, 3.0);
}

#[tokio::test]
async fn new_connections_beyond_an_addresss_rate_get_429_and_other_addresses_do_not_notice() {
    // Three a second (the harness probes readiness on the control plane, not this port).
    let s = Server::start(&["--shards", "1", "--connect-rate-per-ip-per-s", "3"]);
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(tokio_tungstenite::connect_async(s.url("alice", &format!("d{i}"))).await.expect("within the rate"));
    }
    match tokio_tungstenite::connect_async(s.url("alice", "d3")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("the fourth connection in a second must get 429: {:?}", other.map(|_| ())),
    }
    // Another source address has its own budget.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = sock.connect(format!("127.0.0.1:{}", s.port).parse().unwrap()).await.unwrap();
    tokio_tungstenite::client_async(s.url("bob", "d"), stream).await.expect("another address is not limited");
    // And the first one's budget comes back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    tokio_tungstenite::connect_async(s.url("alice", "d4")).await.expect("one more after a third of a second");
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", s.http)).await.unwrap().text().await.unwrap();
    assert!(text.contains("shardchat_connections_refused_rate_total{shard=\"0\"} 1\n"), "{text}");
}

#[tokio::test]
async fn presence_and_typing_limits_are_flags_answered_or_dropped_and_counted() {
    let s = Server::start(&[
        "--presence-rate-per-s",
        "1",
        "--presence-burst",
        "2",
        "--presence-subs-per-conn-max",
        "1",
        "--typing-interval-ms",
        "60000",
    ]);
    let mut a = Client::connect(&s, "alice", "d").await;
    let mut b = Client::connect(&s, "bob", "d").await;
    // One subscription at most: bob is answered, cat refused.
    a.send(json!({"t":"presence_sub","users":["bob","cat"]})).await;
    let mut got = vec![a.recv().await, a.recv().await];
    got.sort_by_key(|v| v["t"].as_str().unwrap().to_string());
    assert_eq!((got[0]["t"].as_str(), got[0]["code"].as_str()), (Some("error"), Some("rate_limited")), "{got:?}");
    assert_eq!((got[1]["t"].as_str(), got[1]["user"].as_str()), (Some("presence"), Some("bob")), "{got:?}");
    // Two changes in the burst; the third is refused.
    a.send(json!({"t":"presence_unsub","users":["bob"]})).await;
    a.send(json!({"t":"presence_sub","users":["cat"]})).await;
    let v = a.recv().await;
    assert_eq!((v["t"].as_str(), v["code"].as_str()), (Some("error"), Some("rate_limited")), "{v}");
    assert_eq!(metric_sum(&s, "shardchat_rate_limited_total", "").await, 2.0);

    // One typing notice per minute is relayed (before the conversation's first message too);
    // the rest are dropped and counted.
    for _ in 0..3 {
        a.send(json!({"t":"typing","conv":"d:alice:bob"})).await;
    }
    assert_eq!(b.recv_where(|v| v["t"] == "typing").await["user"], "alice");
    b.silent_for(Duration::from_millis(300)).await;
    assert_eq!(metric_sum(&s, "shardchat_typing_dropped_total", "").await, 2.0);
}

#[tokio::test]
async fn a_users_connections_share_their_history_and_presence_limits() {
    let s = Server::start(&["--history-burst", "5", "--user-history-burst", "3", "--presence-burst", "5", "--user-presence-burst", "3"]);
    let mut a1 = Client::connect(&s, "alice", "d1").await;
    let mut a2 = Client::connect(&s, "alice", "d2").await;
    assert_eq!(a1.dm("bob", "c1", "hi").await["t"], "ack");
    let history = json!({"t":"history","conv":"d:alice:bob","ref":"h"});
    let presence = [json!({"t":"presence_sub","users":["bob"]}), json!({"t":"presence_sub","users":["carol"]})];
    for frames in [[history.clone(), history], presence] {
        // Two from each connection, within its own burst of 5: four, over the user's 3.
        for c in [&mut a1, &mut a2] {
            for f in &frames {
                c.send(f.clone()).await;
            }
        }
        let mut limited = 0;
        for c in [&mut a1, &mut a2] {
            for _ in 0..2 {
                let v = c.recv_where(|v| v["t"] != "msg").await;
                if v["t"] == "error" {
                    assert_eq!(v["code"], "rate_limited", "{v}");
                    assert!(v["msg"].as_str().unwrap().contains("your connections together"), "{v}");
                    limited += 1;
                }
            }
        }
        assert_eq!(limited, 1, "{frames:?}");
    }
    assert_eq!(metric_sum(&s, "shardchat_rate_limited_total", "").await, 2.0);
}
