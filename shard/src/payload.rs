//! A server frame encoded at most once per encoding and shared, by reference count, by every
//! connection it goes to: a group message costs one encode whatever its fan-out.

use bytes::Bytes;
use shardchat_codec::{encode_binary, encode_text, ServerFrame};
use std::sync::{Arc, OnceLock};

/// How a frame may be treated when its connection falls behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Class {
    /// Acks, messages, receipts, answers: never dropped; a connection that cannot take them is
    /// closed and resyncs.
    Durable,
    /// Typing and presence: dropped first when the connection is behind (presence is re-sent
    /// once it catches up).
    Ephemeral,
}

#[derive(Clone)]
pub struct Payload(Arc<Inner>);

struct Inner {
    frame: ServerFrame,
    /// JSON text; always valid UTF-8 (it comes from a `String`).
    text: OnceLock<Bytes>,
    binary: OnceLock<Bytes>,
}

impl Payload {
    pub fn new(frame: ServerFrame) -> Self {
        Payload(Arc::new(Inner { frame, text: OnceLock::new(), binary: OnceLock::new() }))
    }

    pub fn frame(&self) -> &ServerFrame {
        &self.0.frame
    }

    /// When the message was stored (unix ms), when this is a message: what delivery latency is
    /// measured from.
    pub fn message_ts(&self) -> Option<u64> {
        match &self.0.frame {
            ServerFrame::Msg(m) => Some(m.ts),
            _ => None,
        }
    }

    /// The JSON encoding: bytes that are valid UTF-8, encoded on first use.
    pub fn text(&self) -> Bytes {
        self.0.text.get_or_init(|| Bytes::from(encode_text(&self.0.frame))).clone()
    }

    /// The rkyv encoding, encoded on first use.
    pub fn binary(&self) -> Bytes {
        self.0.binary.get_or_init(|| Bytes::from(encode_binary(&self.0.frame))).clone()
    }

    /// Whether two handles share one encoding (tests check the fan-out encodes once).
    pub fn ptr_eq(&self, other: &Payload) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({:?})", self.0.frame)
    }
}

impl From<ServerFrame> for Payload {
    fn from(f: ServerFrame) -> Self {
        Payload::new(f)
    }
}
