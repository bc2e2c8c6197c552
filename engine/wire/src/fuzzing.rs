//! What the engine's fuzz targets check (`fuzz/fuzz_targets/`), as plain functions so that the
//! committed corpora also run as ordinary tests on the stable toolchain
//! (`engine/wire/tests/fuzz_corpus.rs`). Each panics exactly when an invariant breaks.

use crate::http::RequestHead;
use crate::ws::{Fed, FrameReader, Msg, WsError};

/// A message as `FrameReader` hands it over, owned so two runs can be compared.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// Message size limit used by the target: small, so the size checks are reached.
const MESSAGE_BYTES_MAX: usize = 4096;

/// Feeds `stream` to a fresh reader in pieces cut at `cuts` (taken modulo the length, in any
/// order); returns the messages, the final outcome and the reader.
pub fn read_cut(stream: &[u8], cuts: &[usize], max: usize) -> (Vec<Owned>, Result<Fed, WsError>, FrameReader) {
    let mut r = FrameReader::default();
    let mut got = Vec::new();
    let mut at = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    bounds.push(stream.len());
    bounds.sort();
    let mut last = Ok(Fed::More);
    for b in bounds {
        let mut piece = stream[at..b].to_vec();
        at = b;
        last = r.feed(&mut piece, max, |m| {
            got.push(match m {
                Msg::Text(t) => Owned::Text(t.into()),
                Msg::Binary(b) => Owned::Binary(b.into()),
                Msg::Ping(p) => Owned::Ping(p.into()),
                Msg::Pong => Owned::Pong,
                Msg::Close(c) => Owned::Close(c),
            })
        });
        if last != Ok(Fed::More) {
            break;
        }
    }
    (got, last, r)
}

/// Bytes from a client after the upgrade, however the socket splits them: the reader never
/// panics, a violation is a close code a server may send, text is UTF-8 and messages respect the
/// size limit, and cutting the stream anywhere changes nothing. The first byte of `data` says how
/// many cut points follow (at most 7), each one byte scaled over the stream.
pub fn ws_stream(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 8).min(rest.len());
    let (cut_bytes, stream) = rest.split_at(n);
    let cuts: Vec<usize> = cut_bytes.iter().map(|&c| usize::from(c) * stream.len() / 255).collect();
    let (whole, whole_end, _) = read_cut(stream, &[], MESSAGE_BYTES_MAX);
    let (split, split_end, _) = read_cut(stream, &cuts, MESSAGE_BYTES_MAX);
    assert_eq!((&whole, &whole_end), (&split, &split_end), "cutting the stream at {cuts:?} changed what was read");
    if let Err(e) = whole_end {
        assert!(matches!(e.code, 1002 | 1007 | 1009), "unexpected close code {}", e.code);
    }
    for m in &whole {
        match m {
            Owned::Text(t) => assert!(t.len() <= MESSAGE_BYTES_MAX),
            Owned::Binary(b) => assert!(b.len() <= MESSAGE_BYTES_MAX),
            Owned::Ping(p) => assert!(p.len() <= 125, "control frames are short"),
            _ => {}
        }
    }
}

/// The upgrade request head, as the accepting shard reads it before anything is authenticated:
/// parsing never panics, and neither does building the answer or reading fields of what parsed.
pub fn upgrade_head(data: &[u8]) {
    if let Ok(Some(head)) = RequestHead::parse(data) {
        let _ = head.upgrade_response();
        let _ = (head.header("sec-websocket-key"), head.query("user"), head.query("token"));
    }
}
