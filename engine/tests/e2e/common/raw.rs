//! A WebSocket client at the byte level, for tests that send what a well-behaved client library
//! never would: frames cut anywhere, fragments that never end, bursts in one write.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// One client frame, masked as RFC 6455 requires, announcing `len` payload bytes of which
/// `payload` is what is sent now (a frame whose rest never comes when `payload` is shorter).
pub fn frame_announcing(fin: bool, opcode: u8, payload: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(masked(payload, 0));
    out
}

/// The mask every frame here uses.
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// `payload` masked as the bytes from offset `at` of a frame's payload: the rest of a frame that
/// [`frame_announcing`] began.
pub fn masked(payload: &[u8], at: usize) -> Vec<u8> {
    payload.iter().enumerate().map(|(i, b)| b ^ MASK[(at + i) % 4]).collect()
}

/// A whole client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_announcing(fin, opcode, payload, payload.len())
}

pub struct RawWs {
    pub sock: TcpStream,
    /// Bytes read and not yet parsed into frames.
    buf: Vec<u8>,
}

/// What the server sent: the opcode and the payload of one frame.
pub type Frame = (u8, Vec<u8>);

impl RawWs {
    /// Upgrades on `port` as `user` (dev identity) and reads the `101`.
    pub fn connect(port: u16, user: &str) -> RawWs {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_nodelay(true).unwrap();
        write!(
            sock,
            "GET /ws?user={user}&device=raw HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut ws = RawWs { sock, buf: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(10);
        let head_end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(Instant::now() < deadline, "no upgrade answer");
            assert!(ws.fill(Duration::from_secs(10)), "closed during the upgrade");
        };
        assert!(ws.buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&ws.buf));
        ws.buf.drain(..head_end);
        ws
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).unwrap();
    }

    /// Reads once more; false at EOF or error.
    fn fill(&mut self, wait: Duration) -> bool {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 65536];
        match self.sock.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next whole server frame, or None if the connection ended (or nothing came) within `wait`.
    pub fn next(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((f, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if !self.fill(left.max(Duration::from_millis(1))) {
                return None;
            }
        }
    }

    /// Frames until a close frame: the frames before it and its code (None: the connection
    /// ended, or `wait` passed, without one).
    pub fn until_close(&mut self, wait: Duration) -> (Vec<Frame>, Option<u16>) {
        let deadline = Instant::now() + wait;
        let mut before = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some((CLOSE, p)) => return (before, (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]))),
                Some(f) => before.push(f),
                None => break,
            }
        }
        (before, None)
    }
}

/// An unmasked server frame at the start of `buf`, and how many bytes it took.
fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?;
    Some(((opcode, payload.to_vec()), at + len))
}
