//! The wire contract as types: client and server frames, their JSON (text frame) and rkyv
//! (binary frame) encodings, and validation of untrusted input. No I/O, no shards, no clocks.
//!
//! Decoding never panics: malformed, unknown or oversized input is a [`FrameError`] carrying the
//! contract's error code and, where it could be read, the `cmid`/`ref` of the request.
//!
//! Binary frames use rkyv's `unaligned` format (see the workspace `Cargo.toml` features): every
//! archived type has alignment 1, so a frame is validated (`bytecheck`) and read in place at
//! whatever offset the WebSocket layer hands it to us, without a copy into an aligned buffer.

mod error;
mod frames;
mod ids;

pub use error::{ErrorCode, FrameError};
pub use frames::*;
pub use ids::*;

use rkyv::rancor;

/// Bounds the codec enforces on untrusted input. Every bound names its unit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest `body` of a `send`, in bytes of UTF-8 (the contract's default: 64 KiB).
    pub body_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { body_bytes_max: BODY_BYTES_MAX_DEFAULT }
    }
}

/// The contract's default body limit.
pub const BODY_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// History page size when the client names none, and the most it may ask for.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
pub const HISTORY_LIMIT_MAX: u32 = 200;
/// Messages per conversation that one `sync` returns when the client names no `limit`, and the
/// most it may ask for; what is left is flagged with `more: true` and fetched by another `sync`.
pub const SYNC_LIMIT_DEFAULT: u32 = 500;
pub const SYNC_LIMIT_MAX: u32 = 5000;
/// Messages in one `sync` frame: bounds the size of a single frame.
pub const SYNC_FRAME_MESSAGES_MAX: usize = 100;
/// Users in one group, creator included.
pub const GROUP_MEMBERS_MAX: usize = 500;
/// Conversations named in one `sync` request.
pub const SYNC_CURSORS_MAX: usize = 10_000;

/// Decodes a text frame (one JSON object with a `t` field) and validates it.
pub fn decode_text(text: &str, limits: &Limits) -> Result<ClientFrame, FrameError> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => {
            frame.validate(limits)?;
            Ok(frame)
        }
        Err(e) => Err(FrameError::from_json(text, e)),
    }
}

/// Decodes a binary frame (an rkyv archive of [`ClientFrame`]), validating the archive before
/// reading it, then the frame's fields.
pub fn decode_binary(bytes: &[u8], limits: &Limits) -> Result<ClientFrame, FrameError> {
    let archived = rkyv::access::<ArchivedClientFrame, rancor::Error>(bytes)
        .map_err(|e| FrameError::bad_request(format!("invalid binary frame: {e}")))?;
    let frame: ClientFrame = rkyv::deserialize::<ClientFrame, rancor::Error>(archived)
        .map_err(|e| FrameError::bad_request(format!("invalid binary frame: {e}")))?;
    frame.validate(limits)?;
    Ok(frame)
}

/// Encodes a server frame as JSON text.
pub fn encode_text(frame: &ServerFrame) -> String {
    // Serializing our own types to a String cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_string(frame).expect("server frames always serialize")
}

/// Encodes a server frame as an rkyv archive.
pub fn encode_binary(frame: &ServerFrame) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(frame).expect("server frames always archive").into_vec()
}

/// Client side of the codec (load generator, tests): encodes a client frame as JSON.
pub fn encode_client_text(frame: &ClientFrame) -> String {
    serde_json::to_string(frame).expect("client frames always serialize")
}

/// Client side of the codec: encodes a client frame as an rkyv archive.
pub fn encode_client_binary(frame: &ClientFrame) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(frame).expect("client frames always archive").into_vec()
}

/// Client side of the codec: decodes a server text frame.
pub fn decode_server_text(text: &str) -> Result<ServerFrame, FrameError> {
    serde_json::from_str(text).map_err(|e| FrameError::bad_request(e.to_string()))
}

/// Client side of the codec: decodes a server binary frame (validated).
pub fn decode_server_binary(bytes: &[u8]) -> Result<ServerFrame, FrameError> {
    let archived = rkyv::access::<ArchivedServerFrame, rancor::Error>(bytes)
        .map_err(|e| FrameError::bad_request(format!("invalid binary frame: {e}")))?;
    rkyv::deserialize::<ServerFrame, rancor::Error>(archived).map_err(|e| FrameError::bad_request(format!("invalid binary frame: {e}")))
}

#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests;
