//! Errors of the contract's table, as values: decoding produces them, the engine sends them.

use crate::frames::Ref;
use serde::{Deserialize, Serialize};

/// The contract's error codes (`error.code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    GroupFull,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::GroupFull => "group_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A request the server refuses: what to answer, and which request it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub msg: String,
    /// The `cmid` of the `send` this answers, where it could be read.
    pub cmid: Option<String>,
    /// The `ref` of the request this answers, where it could be read.
    pub r#ref: Option<Ref>,
}

impl FrameError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        FrameError { code, msg: msg.into(), cmid: None, r#ref: None }
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, msg)
    }
    pub fn with_cmid(mut self, cmid: Option<String>) -> Self {
        self.cmid = cmid;
        self
    }
    pub fn with_ref(mut self, r: Option<Ref>) -> Self {
        self.r#ref = r;
        self
    }

    /// A JSON frame that did not parse as a client frame: say why, and echo its `cmid`/`ref` when
    /// the text is at least a JSON object holding them, so the client can match the error.
    pub(crate) fn from_json(text: &str, e: serde_json::Error) -> Self {
        let mut err = FrameError::bad_request(format!("malformed frame: {e}"));
        if let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text) {
            if let Some(serde_json::Value::String(c)) = obj.get("cmid") {
                if c.chars().count() <= crate::CMID_CHARS_MAX {
                    err.cmid = Some(c.clone());
                }
            }
            err.r#ref = obj.get("ref").and_then(Ref::from_json);
            match obj.get("t") {
                None => err.msg = "missing field `t`".into(),
                Some(serde_json::Value::String(t)) if !crate::frames::is_client_frame_type(t) => {
                    err.msg = format!("unknown frame type `{}`", truncate(t, 32));
                }
                _ => {}
            }
        }
        err
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.msg)
    }
}

impl std::error::Error for FrameError {}
