//! Nothing a client does stalls its connection, holds memory or descriptors without bound, or
//! reaches the store: bursts that need no answer, answers around a close, half-sent messages,
//! floods of connections that never speak, and more of them than the process has descriptors.

use crate::common::raw::{self, RawWs};
use crate::common::*;
use std::io::Read;
use std::time::{Duration, Instant};

/// Writes `bytes` on another thread (the server may stop reading, and a blocked write must not
/// hide what the test is waiting for).
fn write_in_background(ws: &RawWs, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut sock = ws.sock.try_clone().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = sock.write_all(&bytes);
    })
}

/// A text `ping` frame with `r` as its ref.
fn text_ping(r: &str) -> Vec<u8> {
    raw::frame(true, raw::TEXT, format!(r#"{{"t":"ping","ref":"{r}"}}"#).as_bytes())
}

/// Reads frames until a text frame containing `needle`; false if none came within `wait`.
fn answered(ws: &mut RawWs, needle: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match ws.next(left) {
            Some((raw::TEXT, p)) if String::from_utf8_lossy(&p).contains(needle) => return true,
            Some((raw::CLOSE, _)) | None => return false,
            Some(_) => {}
        }
    }
    false
}

#[test]
fn a_burst_of_frames_that_need_no_answer_never_stalls_reading() {
    let s = Server::start(&["--shards", "2"]);
    for burst_mb in [1, 4] {
        let mut ws = RawWs::connect(s.port, &format!("burst{burst_mb}"));
        // Unsolicited pongs (valid, answered by nothing), then a ping that is answered.
        let pong = raw::frame(true, raw::PONG, &[7; 125]);
        let mut bytes: Vec<u8> = pong.iter().copied().cycle().take(burst_mb << 20).collect();
        bytes.truncate(bytes.len() / pong.len() * pong.len());
        bytes.extend(text_ping("after-the-burst"));
        let writer = write_in_background(&ws, bytes);
        assert!(
            answered(&mut ws, "after-the-burst", Duration::from_secs(10)),
            "{burst_mb} MiB of pongs, then a ping: no pong (the connection stopped reading)"
        );
        writer.join().unwrap();
    }
}

#[test]
fn a_fragmented_message_over_the_limit_closes_with_1009_while_it_arrives() {
    let s = Server::start(&[]);
    let mut ws = RawWs::connect(s.port, "frag");
    // 4 MiB in 64 KiB fragments: ten times the default message bound.
    let chunk = vec![b'a'; 64 * 1024];
    let mut bytes = raw::frame(false, raw::TEXT, &chunk);
    for _ in 1..64 {
        bytes.extend(raw::frame(false, raw::CONTINUATION, &chunk));
    }
    let writer = write_in_background(&ws, bytes);
    let (_, code) = ws.until_close(Duration::from_secs(5));
    assert_eq!(code, Some(1009), "the message went past the bound: 1009 at once");
    drop(ws);
    writer.join().unwrap();
}

#[test]
fn answers_queued_before_a_close_or_a_violation_are_sent_first() {
    let s = Server::start(&[]);
    // A ping (text and control) and the client's close, in one write.
    let mut ws = RawWs::connect(s.port, "closer");
    let mut bytes = text_ping("before-close");
    bytes.extend(raw::frame(true, raw::PING, b"p"));
    bytes.extend(raw::frame(true, raw::CLOSE, &1000u16.to_be_bytes()));
    ws.send(&bytes);
    let (before, code) = ws.until_close(Duration::from_secs(5));
    assert_eq!(code, Some(1000));
    assert!(before.iter().any(|(op, p)| *op == raw::TEXT && String::from_utf8_lossy(p).contains("before-close")), "{before:?}");
    assert!(before.contains(&(raw::PONG, b"p".to_vec())), "{before:?}");
    // The same with a protocol violation (an unmasked frame) instead of the close.
    let mut ws = RawWs::connect(s.port, "violator");
    let mut bytes = text_ping("before-violation");
    bytes.extend([0x81, 0x02, b'h', b'i']);
    ws.send(&bytes);
    let (before, code) = ws.until_close(Duration::from_secs(5));
    assert_eq!(code, Some(1002));
    assert!(before.iter().any(|(op, p)| *op == raw::TEXT && String::from_utf8_lossy(p).contains("before-violation")), "{before:?}");
}

#[test]
fn invalid_utf8_in_a_fragment_closes_with_1007_before_the_message_ends() {
    let s = Server::start(&[]);
    let mut ws = RawWs::connect(s.port, "utf8");
    let mut bytes = raw::frame(false, raw::TEXT, b"{\"t\":\"ping\"");
    bytes.extend(raw::frame(false, raw::CONTINUATION, &[0xff, 0xfe]));
    ws.send(&bytes);
    // The message never ends: the fragment that broke it is enough.
    let (_, code) = ws.until_close(Duration::from_secs(5));
    assert_eq!(code, Some(1007));
}

#[test]
fn a_message_that_does_not_complete_in_time_closes_its_connection_whatever_pings_come() {
    let s = Server::start(&["--message-complete-timeout-ms", "1000"]);
    // A fragmented message kept open by pings between its fragments.
    let mut frag = RawWs::connect(s.port, "fragmenter");
    frag.send(&raw::frame(false, raw::TEXT, b"{\"t\":"));
    // A frame whose payload never all arrives.
    let mut cut = RawWs::connect(s.port, "cutter");
    cut.send(&raw::frame_announcing(true, raw::TEXT, b"{\"t\":\"pi", 5_000));
    let started = Instant::now();
    let pinger = {
        let mut sock = frag.sock.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            for _ in 0..25 {
                if sock.write_all(&raw::frame(true, raw::PING, b"alive")).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (_, code) = frag.until_close(Duration::from_secs(8));
    assert_eq!(code, Some(1008), "pings must not keep a half-sent message open");
    let (_, code) = cut.until_close(Duration::from_secs(8));
    assert_eq!(code, Some(1008));
    assert!(started.elapsed() < Duration::from_secs(5), "closed {:?} after the first byte", started.elapsed());
    pinger.join().unwrap();
}

#[tokio::test]
async fn half_sent_messages_are_bounded_per_shard() {
    // One shard; messages up to 10,096 bytes (body 1,000); half-sent ones 25,000 bytes at most.
    let s = Server::start(&["--shards", "1", "--body-bytes-max", "1000", "--partial-bytes-per-shard-max", "25000"]);
    let padded = |r: &str| {
        let mut p = format!(r#"{{"t":"ping","ref":"{r}"}}"#).into_bytes();
        p.resize(10_000, b' ');
        p
    };
    let mut held = Vec::new();
    for who in ["h1", "h2"] {
        let mut ws = RawWs::connect(s.port, who);
        let p = padded(who);
        ws.send(&raw::frame_announcing(true, raw::TEXT, &p[..9_000], p.len()));
        held.push((ws, p, who));
    }
    // Both are held (18,000 bytes); wait until the shard counts them before the third arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(&s, "shardchat_partial_message_bytes", "").await < 18_000.0 {
        assert!(Instant::now() < deadline, "the half-sent messages are not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A third would take the shard past its bound: that connection goes, the others stay.
    let mut third = RawWs::connect(s.port, "h3");
    third.send(&raw::frame_announcing(true, raw::TEXT, &padded("h3")[..9_000], 10_000));
    assert_eq!(third.until_close(Duration::from_secs(5)).1, Some(1013));
    for (ws, p, who) in &mut held {
        ws.send(&raw::masked(&p[9_000..], 9_000));
        assert!(answered(ws, who, Duration::from_secs(5)), "{who} finished its message and was answered");
    }
    assert_eq!(metric_sum(&s, "shardchat_partial_message_bytes", "").await, 0.0, "completed messages hold nothing");
    assert_eq!(metric_sum(&s, "shardchat_closes_incomplete_total", "").await, 1.0);
}

#[tokio::test]
async fn connections_beyond_the_bound_are_refused_at_once_and_their_slots_come_back() {
    // One shard, which may hold all 20 as handshakes: no eviction, only the bound.
    let s = Server::start(&["--shards", "1", "--connections-max", "20", "--handshakes-max", "20"]);
    // Twenty connections that never speak take every slot (until their handshake times out).
    let silent: Vec<std::net::TcpStream> = (0..20).map(|_| std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap()).collect();
    // Which of them the shards accept first is the kernel's choice, so a later connection may
    // take a slot before a silent one does; held open too, at most 20 of all of them get one, so
    // within 21 more one is refused: a 503 and the close, without a read of its own.
    let mut held = Vec::new();
    let refused = (0..=20).any(|_| {
        let mut extra = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        extra.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut got = String::new();
        let _ = extra.read_to_string(&mut got);
        held.push(extra);
        got.starts_with("HTTP/1.1 503")
    });
    assert!(refused, "41 connections that never speak, 20 slots, and none refused");
    assert!(metric_sum(&s, "shardchat_connections_refused_full_total", "").await >= 1.0);
    drop((silent, held));
    // Their slots come back: a client connects and is served.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(s.url("after", "d"))).await
        {
            use futures::{SinkExt, StreamExt};
            ws.send(tokio_tungstenite::tungstenite::Message::Text(r#"{"t":"ping","ref":1}"#.into())).await.unwrap();
            assert!(matches!(ws.next().await, Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) if t.contains("pong")));
            break;
        }
        assert!(Instant::now() < deadline, "the slots of closed connections never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connections_that_never_speak_cannot_crowd_out_clients_that_do() {
    // 100 connections, of which 12 at most in their handshake (4 a shard), and a flood of 300.
    let s = Server::start(&["--connections-max", "100", "--handshakes-max", "12"]);
    let silent: Vec<std::net::TcpStream> = (0..300).map(|_| std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap()).collect();
    // Each shard keeps 4 of the flood; the rest is refused (none of the kept ones is a second
    // old yet, so none gives way).
    let shed = || async {
        metric_sum(&s, "shardchat_handshakes_evicted_total", "").await
            + metric_sum(&s, "shardchat_connections_refused_full_total", "").await
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while shed().await < 280.0 {
        assert!(Instant::now() < deadline, "the flood was not shed at the handshake bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (Kept open on this side: the flood goes on holding what the engine lets it hold.)
    let closed = silent
        .iter()
        .filter(|c| {
            let mut c: &std::net::TcpStream = c;
            c.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            c.read(&mut [0u8; 16]).is_ok()
        })
        .count();
    assert!(closed >= 280, "{closed} of the flood's 300 closed by the engine");
    // Once the flood's handshakes have had their second, clients that speak take their places.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = Client::connect(&s, &format!("u{i}"), "d").await;
        c.send(serde_json::json!({"t":"ping","ref":i})).await;
        assert_eq!(c.recv().await["t"], "pong");
        clients.push(c);
    }
    assert!(metric_sum(&s, "shardchat_handshakes_evicted_total", "").await >= 1.0, "the clients took the flood's places");
    drop(silent);
}

#[tokio::test]
async fn more_connections_than_descriptors_never_reach_the_store() {
    // 2,600 descriptors: the engine keeps 2,048 back (store, index, control plane) and takes 552
    // connections. 3,000 connections that never speak arrive; the store keeps working.
    let mut s = Server::start_limited(2_600, &["--shards", "2"], "warn");
    let mut a = Client::connect(&s, "alice", "d").await;
    // 1,000 connections that never speak (shed at the handshake bound: 69 a shard), then clients
    // that authenticate and upgrade, one after the other: once the silent ones have had their
    // second they give way, and the clients take connection slots for good until the bound;
    // the rest are refused.
    let mut flood: Vec<std::net::TcpStream> = (0..1_000).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", s.port)).ok()).collect();
    let mut upgraded = 0;
    for i in 0..3_000 {
        use std::io::Write;
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", s.port)) else { continue };
        let _ = write!(
            c,
            "GET /ws?user=f{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = [0u8; 12];
        if c.read_exact(&mut head).is_ok() && head.ends_with(b" 101") {
            upgraded += 1;
            flood.push(c);
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // The bound less alice and the silent ones still held (at most 138).
    assert!((552 - 1 - 138..=551).contains(&upgraded), "{upgraded} upgraded under a bound of 552");
    // Commits need descriptors (the journal, new tables on flush); they still have them.
    for i in 0..50 {
        let ack = a.dm("bob", &format!("c{i}"), "the store has its descriptors").await;
        assert_eq!(ack["t"], "ack", "{ack}");
    }
    assert!(s.is_running());
    drop(flood);
    s.stop();
    // The bounds' warnings are logged once per interval, not once per refused connection.
    let warnings = s.log().lines().filter(|l| l.contains("bound reached")).count();
    assert!(s.log().contains("connection bound reached") && warnings <= 4, "{warnings} warnings about the bounds");
    assert!(!s.log().contains("accept failed"), "accept never ran out of descriptors");
}
