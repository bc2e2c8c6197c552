//! The WebSocket layer at the byte level, against the real server: frames a client library would
//! rarely produce (pipelined right after the upgrade, fragmented, split across writes, unmasked).

use crate::common::Server;
use std::io::Cursor;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

const WAIT: Duration = Duration::from_secs(10);

fn frame(fin: bool, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let header = FrameHeader { is_final: fin, rsv1: false, rsv2: false, rsv3: false, opcode, mask };
    let mut out = Vec::new();
    header.format(payload.len() as u64, &mut out).unwrap();
    let m = mask.unwrap_or([0; 4]);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
    out
}

fn masked(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, Some([9, 200, 33, 71]))
}

struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Sends the upgrade request and `first` in one write, then reads the 101.
    async fn open(s: &Server, user: &str, first: &[u8]) -> Raw {
        let mut sock = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        let mut req = format!(
            "GET /ws?user={user}&device=d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(first);
        sock.write_all(&req).await.unwrap();
        let mut raw = Raw { sock, buf: Vec::new() };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8(raw.buf.drain(..end).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        raw
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.sock.read(&mut chunk)).await.expect("timed out reading").unwrap();
        assert!(n > 0, "connection closed early");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next server frame: opcode and payload.
    async fn next(&mut self) -> (OpCode, Vec<u8>) {
        loop {
            let mut cur = Cursor::new(&self.buf);
            if let Some((h, len)) = FrameHeader::parse(&mut cur).unwrap() {
                assert!(h.mask.is_none(), "server frames are not masked");
                let start = cur.position() as usize;
                if self.buf.len() >= start + len as usize {
                    let payload = self.buf[start..start + len as usize].to_vec();
                    self.buf.drain(..start + len as usize);
                    return (h.opcode, payload);
                }
            }
            self.fill().await;
        }
    }

    /// Skips presence and other text frames until one of the given type.
    async fn next_text(&mut self, t: &str) -> serde_json::Value {
        loop {
            let (op, p) = self.next().await;
            if op == OpCode::Data(Data::Text) {
                let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
                if v["t"] == t {
                    return v;
                }
            }
        }
    }
}

#[tokio::test]
async fn pipelined_fragmented_and_split_frames_are_understood() {
    let s = Server::start(&[]);
    let send = br#"{"t":"send","cmid":"frag","to":"bob","body":"put together"}"#;
    // The first fragment travels with the upgrade request, before the 101 was seen.
    let mut raw = Raw::open(&s, "alice", &masked(false, OpCode::Data(Data::Text), &send[..10])).await;
    let mut rest = masked(false, OpCode::Data(Data::Continue), &send[10..30]);
    rest.extend(masked(true, OpCode::Control(Control::Ping), b"hb"));
    rest.extend(masked(true, OpCode::Data(Data::Continue), &send[30..]));
    // Written a few bytes at a time: frames split across reads.
    for piece in rest.chunks(7) {
        raw.sock.write_all(piece).await.unwrap();
        raw.sock.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut pong = None;
    let ack = loop {
        let (op, p) = raw.next().await;
        match op {
            OpCode::Control(Control::Pong) => pong = Some(p),
            OpCode::Data(Data::Text) => {
                let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
                if v["t"] == "ack" {
                    break v;
                }
            }
            _ => {}
        }
    };
    assert_eq!(ack["cmid"], "frag");
    assert_eq!(ack["seq"], 1);
    assert_eq!(pong.as_deref(), Some(&b"hb"[..]), "a ping amid fragments is answered with its payload");
    // A close from the client is answered with its code.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"done");
    raw.sock.write_all(&masked(true, OpCode::Control(Control::Close), &close)).await.unwrap();
    let (op, p) = raw.next().await;
    assert_eq!(op, OpCode::Control(Control::Close));
    assert_eq!(&p[..2], &1000u16.to_be_bytes());
}

#[tokio::test]
async fn protocol_violations_close_with_their_codes_and_harm_nobody() {
    let s = Server::start(&[]);
    let bystander = br#"{"t":"send","cmid":"ok","to":"carol","body":"fine"}"#;
    let mut calm = Raw::open(&s, "bob", &[]).await;
    let violations: Vec<(Vec<u8>, u16)> = vec![
        (frame(true, OpCode::Data(Data::Text), b"{}", None), 1002),
        (masked(true, OpCode::Data(Data::Continue), b"x"), 1002),
        (masked(true, OpCode::Data(Data::Text), &[0xc3, 0x28]), 1007),
        (masked(true, OpCode::Data(Data::Reserved(5)), b""), 1002),
    ];
    for (i, (bad, code)) in violations.into_iter().enumerate() {
        let mut raw = Raw::open(&s, &format!("eve{i}"), &[]).await;
        raw.sock.write_all(&bad).await.unwrap();
        let (op, p) = raw.next().await;
        assert_eq!(op, OpCode::Control(Control::Close), "case {i}");
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), code, "case {i}: {}", String::from_utf8_lossy(&p[2..]));
        calm.sock.write_all(&masked(true, OpCode::Data(Data::Text), bystander)).await.unwrap();
        assert_eq!(calm.next_text("ack").await["cmid"], "ok");
    }
}

#[tokio::test]
async fn a_request_that_is_not_a_websocket_upgrade_gets_400() {
    let s = Server::start(&[]);
    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    sock.write_all(b"GET /ws?user=alice HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, sock.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}
