//! WebSocket framing for the server side of a connection, with no buffer per connection.
//!
//! Why not tungstenite's `WebSocket` here: it keeps a read buffer and a write buffer in every
//! connection (at 512 bytes of read buffer an idle connection still cost about 4.6 KiB of
//! user-space memory). The runtime instead reads on readiness into one buffer per shard and hands
//! the bytes to a [`FrameReader`], which owns nothing while a connection sits between frames. Only
//! a frame split across reads, or a fragmented message, allocates, and frees once complete.
//!
//! tungstenite still does the parts it does well: the upgrade handshake (`create_response`), frame
//! header parsing and formatting ([`FrameHeader`]) and the opcode and close-code tables. What is
//! here are RFC 6455's rules for a server: client frames are masked, reserved bits are clear,
//! control frames are short and unfragmented, continuations continue something, text is UTF-8,
//! close codes are ones a peer may send, and messages stay under the size limit.
//!
//! Pure code (no I/O): tested below by splitting streams at every byte.

use std::io::Cursor;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Longest control frame payload (RFC 6455 §5.5).
const CONTROL_PAYLOAD_BYTES_MAX: u64 = 125;

/// A message the client sent, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// The client closes; the code it gave, if any. Nothing after it is read.
    Close(Option<u16>),
}

/// A violation: the connection closes with `code` (RFC 6455 §7.4.1) and `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsError {
    pub code: u16,
    pub reason: &'static str,
}

const fn protocol(reason: &'static str) -> WsError {
    WsError { code: 1002, reason }
}
const TOO_BIG: WsError = WsError { code: 1009, reason: "message too big" };
const NOT_UTF8: WsError = WsError { code: 1007, reason: "text frame is not valid UTF-8" };

/// What `feed` found at the end of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Everything was consumed or kept for the next read.
    More,
    /// The client sent a close frame: stop reading.
    Closed,
}

/// Per-connection read state: `None` (no allocation) between frames.
#[derive(Default)]
pub struct FrameReader {
    partial: Option<Box<Partial>>,
}

#[derive(Default)]
struct Partial {
    /// The start of a frame whose rest has not arrived yet.
    pending: Vec<u8>,
    /// A fragmented message being put together.
    message: Option<Fragmented>,
}

struct Fragmented {
    binary: bool,
    body: Vec<u8>,
    /// For text: how much of `body` is known to be valid UTF-8 so far (a character may be cut
    /// between fragments). Each fragment is checked as it arrives, so invalid text is refused
    /// (1007) on the fragment that breaks it rather than once the message completes.
    checked: usize,
}

impl Fragmented {
    /// Appends a fragment; for text, fails as soon as the bytes cannot be UTF-8.
    fn extend(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.body.extend_from_slice(payload);
        if self.binary {
            return Ok(());
        }
        match std::str::from_utf8(&self.body[self.checked..]) {
            Ok(_) => self.checked = self.body.len(),
            // Invalid, not merely cut short at the end.
            Err(e) if e.error_len().is_some() => return Err(NOT_UTF8),
            Err(e) => self.checked += e.valid_up_to(),
        }
        Ok(())
    }
}

impl FrameReader {
    /// Bytes this reader holds between reads (0 for a connection between frames).
    /// Whether no frame or message is half read: the reader holds no state at all.
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    pub fn held_bytes(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.pending.capacity() + p.message.as_ref().map_or(0, |m| m.body.capacity()))
    }

    /// Parses `input` (just read from the socket; unmasked in place), calling `on` for every
    /// complete message. Bytes of an incomplete frame are kept until the next call.
    pub fn feed(&mut self, input: &mut [u8], message_bytes_max: usize, mut on: impl FnMut(Msg<'_>)) -> Result<Fed, WsError> {
        let mut partial = self.partial.take().unwrap_or_default();
        let outcome = if partial.pending.is_empty() {
            let (outcome, used) = parse(input, &mut partial.message, message_bytes_max, &mut on);
            if outcome == Ok(Fed::More) {
                partial.pending.extend_from_slice(&input[used..]);
            }
            outcome
        } else {
            // A frame was split across reads: continue it from the kept bytes.
            let mut buf = std::mem::take(&mut partial.pending);
            buf.extend_from_slice(input);
            let (outcome, used) = parse(&mut buf, &mut partial.message, message_bytes_max, &mut on);
            if outcome == Ok(Fed::More) {
                buf.drain(..used);
                partial.pending = buf;
            }
            outcome
        };
        if !partial.pending.is_empty() || partial.message.is_some() {
            self.partial = Some(partial);
        }
        outcome
    }
}

/// Parses the complete frames at the start of `buf`; returns how many bytes they took.
fn parse(
    buf: &mut [u8],
    message: &mut Option<Fragmented>,
    message_bytes_max: usize,
    on: &mut impl FnMut(Msg<'_>),
) -> (Result<Fed, WsError>, usize) {
    let mut pos = 0;
    loop {
        let mut cursor = Cursor::new(&buf[pos..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return (Ok(Fed::More), pos),
            Err(_) => return (Err(protocol("malformed frame header")), pos),
        };
        let header_len = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return (Err(protocol("reserved bits set (no extension was negotiated)")), pos);
        }
        let Some(mask) = header.mask else {
            return (Err(protocol("client frames must be masked")), pos);
        };
        if len > message_bytes_max as u64 {
            return (Err(TOO_BIG), pos);
        }
        let len = len as usize;
        if buf.len() - pos - header_len < len {
            // The payload has not all arrived (its size was checked above, before buffering).
            return (Ok(Fed::More), pos);
        }
        let start = pos + header_len;
        pos = start + len;
        let payload = &mut buf[start..pos];
        unmask(payload, mask);
        match header.opcode {
            OpCode::Control(c) => {
                if !header.is_final || len as u64 > CONTROL_PAYLOAD_BYTES_MAX {
                    return (Err(protocol("control frames must be final and at most 125 bytes")), pos);
                }
                match c {
                    Control::Ping => on(Msg::Ping(payload)),
                    Control::Pong => on(Msg::Pong),
                    Control::Close => {
                        return match close_code(payload) {
                            Ok(code) => {
                                on(Msg::Close(code));
                                (Ok(Fed::Closed), pos)
                            }
                            Err(e) => (Err(e), pos),
                        };
                    }
                    Control::Reserved(_) => return (Err(protocol("unknown control opcode")), pos),
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some(m) = message.as_mut() else {
                    return (Err(protocol("continuation frame without a message to continue")), pos);
                };
                if m.body.len() + len > message_bytes_max {
                    return (Err(TOO_BIG), pos);
                }
                if let Err(e) = m.extend(payload) {
                    return (Err(e), pos);
                }
                if header.is_final {
                    let m = message.take().expect("checked above");
                    if let Err(e) = deliver(m.binary, &m.body, on) {
                        return (Err(e), pos);
                    }
                }
            }
            OpCode::Data(d @ (Data::Text | Data::Binary)) => {
                if message.is_some() {
                    return (Err(protocol("new message while a fragmented one is unfinished")), pos);
                }
                let binary = d == Data::Binary;
                if header.is_final {
                    if let Err(e) = deliver(binary, payload, on) {
                        return (Err(e), pos);
                    }
                } else {
                    let mut m = Fragmented { binary, body: Vec::new(), checked: 0 };
                    if let Err(e) = m.extend(payload) {
                        return (Err(e), pos);
                    }
                    *message = Some(m);
                }
            }
            OpCode::Data(Data::Reserved(_)) => return (Err(protocol("unknown data opcode")), pos),
        }
    }
}

fn deliver(binary: bool, body: &[u8], on: &mut impl FnMut(Msg<'_>)) -> Result<(), WsError> {
    if binary {
        on(Msg::Binary(body));
    } else {
        on(Msg::Text(std::str::from_utf8(body).map_err(|_| NOT_UTF8)?));
    }
    Ok(())
}

/// The code of a close frame's payload (RFC 6455 §5.5.1): empty, or a code a peer may send
/// followed by a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(protocol("close code a peer may not send"));
            }
            std::str::from_utf8(reason).map_err(|_| NOT_UTF8)?;
            Ok(Some(code))
        }
    }
}

/// Undoes the client's masking in place, eight bytes at a time.
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends one unmasked, final server frame.
pub fn encode(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader { is_final: true, rsv1: false, rsv2: false, rsv3: false, opcode, mask: None };
    header.format(payload.len() as u64, out).expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (cut to fit a control frame).
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut cut = reason.len().min(CONTROL_PAYLOAD_BYTES_MAX as usize - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(OpCode::Control(Control::Close), &payload, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame as a client sends it: masked with `mask`.
    fn client_frame(fin: bool, opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let header = FrameHeader { is_final: fin, rsv1: false, rsv2: false, rsv3: false, opcode, mask: Some(mask) };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    use crate::fuzzing::{read_cut as run, Owned};

    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const TEXT: OpCode = OpCode::Data(Data::Text);
    const BIN: OpCode = OpCode::Data(Data::Binary);
    const CONT: OpCode = OpCode::Data(Data::Continue);

    #[test]
    fn whole_frames_in_one_read_hold_nothing_afterwards() {
        let mut s = client_frame(true, TEXT, b"{\"t\":\"ping\"}", M);
        s.extend(client_frame(true, BIN, &[1, 2, 3], M));
        let (got, out, r) = run(&s, &[], 1024);
        assert_eq!(out, Ok(Fed::More));
        assert_eq!(got, vec![Owned::Text("{\"t\":\"ping\"}".into()), Owned::Binary(vec![1, 2, 3])]);
        assert_eq!(r.held_bytes(), 0);
        assert!(r.partial.is_none(), "an idle connection keeps no allocation");
    }

    #[test]
    fn fragments_and_interleaved_control_frames_assemble() {
        let mut s = client_frame(false, TEXT, "héllo ".as_bytes(), M);
        s.extend(client_frame(true, OpCode::Control(Control::Ping), b"p", M));
        s.extend(client_frame(true, CONT, "wörld".as_bytes(), M));
        let (got, out, r) = run(&s, &[3, 9, 17], 1024);
        assert_eq!(out, Ok(Fed::More));
        assert_eq!(got, vec![Owned::Ping(b"p".to_vec()), Owned::Text("héllo wörld".into())]);
        assert!(r.partial.is_none());
    }

    #[test]
    fn violations_close_with_the_rfc_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            // Unmasked client frame.
            (
                {
                    let mut v = Vec::new();
                    encode(TEXT, b"hi", &mut v);
                    v
                },
                1002,
            ),
            (client_frame(true, CONT, b"x", M), 1002),
            ([client_frame(false, TEXT, b"a", M), client_frame(true, BIN, b"b", M)].concat(), 1002),
            (client_frame(false, OpCode::Control(Control::Ping), b"", M), 1002),
            (client_frame(true, OpCode::Control(Control::Ping), &[0; 126], M), 1002),
            (client_frame(true, OpCode::Data(Data::Reserved(3)), b"", M), 1002),
            (client_frame(true, TEXT, &[0xff, 0xfe], M), 1007),
            (client_frame(true, TEXT, &[b'a'; 2000], M), 1009),
            ([client_frame(false, BIN, &[0; 600], M), client_frame(true, CONT, &[0; 600], M)].concat(), 1009),
            (client_frame(true, OpCode::Control(Control::Close), &[3], M), 1002),
            (client_frame(true, OpCode::Control(Control::Close), &1005u16.to_be_bytes(), M), 1002),
        ];
        for (i, (stream, code)) in cases.into_iter().enumerate() {
            let (_, out, _) = run(&stream, &[1, 5], 1024);
            assert_eq!(out.map_err(|e| e.code), Err(code), "case {i}");
        }
        let mut rsv = client_frame(true, TEXT, b"x", M);
        rsv[0] |= 0x40;
        assert_eq!(run(&rsv, &[], 1024).1.map_err(|e| e.code), Err(1002), "reserved bit");
    }

    #[test]
    fn invalid_text_is_refused_on_the_fragment_that_breaks_it() {
        // A valid character cut between fragments is fine...
        let e_acute = "é".as_bytes();
        let mut s = client_frame(false, TEXT, &[b'a', e_acute[0]], M);
        s.extend(client_frame(false, CONT, &[e_acute[1], b'b'], M));
        let (got, out, r) = run(&s, &[], 1024);
        assert_eq!((got, out), (vec![], Ok(Fed::More)), "a character split across fragments is not an error");
        assert!(r.held_bytes() > 0, "the message is still open");
        // ...bytes that can never be UTF-8 are refused at once, before the message ends.
        for bad in [&[0xff][..], &[0xc3, 0x28], &[0xed, 0xa0, 0x80]] {
            let mut s = client_frame(false, TEXT, b"ok", M);
            s.extend(client_frame(false, CONT, bad, M));
            let (_, out, _) = run(&s, &[], 1024);
            assert_eq!(out.map_err(|e| e.code), Err(1007), "{bad:?} in a middle fragment");
            let (_, out, _) = run(&client_frame(false, TEXT, bad, M), &[], 1024);
            assert_eq!(out.map_err(|e| e.code), Err(1007), "{bad:?} in the first fragment");
        }
        // Binary fragments are not text.
        let (_, out, _) = run(&client_frame(false, BIN, &[0xff], M), &[], 1024);
        assert_eq!(out, Ok(Fed::More));
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let s = client_frame(true, BIN, &vec![0; 100_000], M);
        // Only the header has arrived: the size is refused before the payload is buffered.
        let (_, out, _) = run(&s[..20], &[], 1024);
        assert_eq!(out, Err(TOO_BIG));
    }

    #[test]
    fn close_stops_reading() {
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        let mut s = client_frame(true, OpCode::Control(Control::Close), &close, M);
        s.extend(client_frame(true, TEXT, b"after", M));
        let (got, out, _) = run(&s, &[], 1024);
        assert_eq!(out, Ok(Fed::Closed));
        assert_eq!(got, vec![Owned::Close(Some(1000))]);
    }

    #[test]
    fn server_frames_parse_back() {
        let mut out = Vec::new();
        encode(TEXT, &[b'x'; 300], &mut out);
        let (h, len) = FrameHeader::parse(&mut Cursor::new(&out)).unwrap().unwrap();
        assert_eq!((h.opcode, h.mask, len), (TEXT, None, 300));
        let mut out = Vec::new();
        encode_close(1013, &"é".repeat(100), &mut out);
        let (h, len) = FrameHeader::parse(&mut Cursor::new(&out)).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Control(Control::Close));
        assert!(len <= 125 && std::str::from_utf8(&out[out.len() - len as usize + 2..]).is_ok(), "cut on a char boundary");
    }

    proptest! {
        /// Whatever bytes a client sends, in whatever pieces: no panic, and a refusal is one of
        /// the three close codes a server gives for bad input.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
            let (_, out, r) = run(&bytes, &cuts, 256);
            if let Err(e) = out {
                prop_assert!([1002, 1007, 1009].contains(&e.code), "{e:?}");
            }
            prop_assert!(r.held_bytes() <= 2 * (600 + 256), "holds at most about a frame: {}", r.held_bytes());
        }

        /// However the stream is split into reads, the same messages come out, in order.
        #[test]
        fn any_split_gives_the_same_messages(
            msgs in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 1usize..4), 1..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            mask in any::<[u8; 4]>(),
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (binary, body, pieces) in &msgs {
                let body: Vec<u8> = if *binary { body.clone() } else { body.iter().map(|b| b'a' + b % 26).collect() };
                let chunk = body.len().div_ceil(*pieces).max(1);
                let parts: Vec<&[u8]> = if body.is_empty() { vec![&[][..]] } else { body.chunks(chunk).collect() };
                for (i, p) in parts.iter().enumerate() {
                    let op = if i > 0 { CONT } else if *binary { BIN } else { TEXT };
                    stream.extend(client_frame(i + 1 == parts.len(), op, p, mask));
                }
                want.push(if *binary { Owned::Binary(body) } else { Owned::Text(String::from_utf8(body).unwrap()) });
            }
            let (got, out, r) = run(&stream, &cuts, 4096);
            prop_assert_eq!(out, Ok(Fed::More));
            prop_assert_eq!(got, want);
            prop_assert!(r.partial.is_none());
        }
    }
}
