//! Frames as the load generator speaks them: decoding only what it measures (a delivered
//! message's seq and stamp), encoding client frames, the login query.

use crate::*;
use serde::{Deserialize, Serialize};
use shardchat_codec::{ClientFrame, MsgKind};
use std::time::{SystemTime, UNIX_EPOCH};
use tungstenite::Message;

/// A server frame as JSON, whichever encoding it came in.
pub(crate) fn frame_json(m: &Message) -> Option<serde_json::Value> {
    match m {
        Message::Text(t) => serde_json::from_str(t).ok(),
        Message::Binary(b) => shardchat_codec::decode_server_binary(b).ok().and_then(|f| serde_json::to_value(&f).ok()),
        _ => None,
    }
}

/// The fields of a server frame the receivers look at, borrowed from the text.
#[derive(Deserialize)]
pub(crate) struct Lite<'a> {
    pub(crate) t: &'a str,
    #[serde(default)]
    pub(crate) seq: u64,
    #[serde(default)]
    pub(crate) kind: &'a str,
    #[serde(default)]
    pub(crate) body: &'a str,
}

/// If `m` is a (non-system) `msg`: its seq and the send time stamped in its body.
pub(crate) fn delivered_msg(m: &Message) -> Option<(u64, Option<u64>)> {
    let stamp = |body: &str| body.split('|').next().and_then(|s| s.parse::<u64>().ok());
    match m {
        Message::Text(t) => {
            // Bodies here are plain ASCII, so borrowing works; escaped text falls back to None.
            let f: Lite = serde_json::from_str(t).ok()?;
            (f.t == "msg" && f.kind != "system").then(|| (f.seq, stamp(f.body)))
        }
        Message::Binary(b) => match shardchat_codec::decode_server_binary(b).ok()? {
            shardchat_codec::ServerFrame::Msg(r) if r.kind != MsgKind::System => Some((r.seq, stamp(&r.body))),
            _ => None,
        },
        _ => None,
    }
}

/// What a sender hears back for one of its sends.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    /// Acked; the send time stamped in its cmid (`<k>:<unix µs>`), if it has one.
    Ack(Option<u64>),
    Error,
}

/// If `m` answers a send: an `ack` (with the stamp in its cmid) or an `error`. Reads the two
/// fields it needs, borrowed, not a whole JSON tree: this runs once per message sent.
pub(crate) fn answer(m: &Message) -> Option<Answer> {
    #[derive(Deserialize)]
    struct AckLite<'a> {
        t: &'a str,
        #[serde(default)]
        cmid: &'a str,
    }
    let stamp = |cmid: &str| cmid.split(':').nth(1).and_then(|s| s.parse::<u64>().ok());
    match m {
        Message::Text(t) => {
            let f: AckLite = serde_json::from_str(t).ok()?;
            match f.t {
                "ack" => Some(Answer::Ack(stamp(f.cmid))),
                "error" => Some(Answer::Error),
                _ => None,
            }
        }
        Message::Binary(b) => match shardchat_codec::decode_server_binary(b).ok()? {
            shardchat_codec::ServerFrame::Ack { cmid, .. } => Some(Answer::Ack(stamp(&cmid))),
            shardchat_codec::ServerFrame::Error { .. } => Some(Answer::Error),
            _ => None,
        },
        _ => None,
    }
}

/// A client frame in JSON, or in rkyv with `--binary`.
pub(crate) fn client_msg(frame: &ClientFrame, binary: bool) -> Message {
    if binary {
        Message::Binary(shardchat_codec::encode_client_binary(frame).into())
    } else {
        Message::Text(shardchat_codec::encode_client_text(frame).into())
    }
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// How user `user` logs in: `token=<JWT>` with `--jwt-secret`, else the development `user=`.
pub(crate) fn login_query(args: &Args, user: &str) -> String {
    let Some(secret) = &args.jwt_secret else { return format!("user={user}&device=lg") };
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        dev: &'a str,
        exp: u64,
    }
    // Valid for a day: long runs must not see their tokens expire under them.
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 86_400;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, dev: "lg", exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail");
    format!("token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sender's reading of its answers, in both encodings: the stamp comes from the cmid.
    #[test]
    fn answers_are_read_from_acks_and_errors() {
        let ack = r#"{"t":"ack","cmid":"7:1700000000123456","conv":"d:a:b","id":"9","seq":3,"ts":1}"#;
        assert_eq!(answer(&Message::Text(ack.into())), Some(Answer::Ack(Some(1_700_000_000_123_456))));
        let unstamped = r#"{"t":"ack","cmid":"x","conv":"d:a:b","id":"9","seq":3,"ts":1}"#;
        assert_eq!(answer(&Message::Text(unstamped.into())), Some(Answer::Ack(None)));
        let err = r#"{"t":"error","code":"rate_limited","msg":"slow down","cmid":"7:1"}"#;
        assert_eq!(answer(&Message::Text(err.into())), Some(Answer::Error));
        let msg = r#"{"t":"msg","conv":"d:a:b","id":"9","seq":3,"from":"a","cmid":"7:1","body":"1|x","kind":"text","ts":1}"#;
        assert_eq!(answer(&Message::Text(msg.into())), None);
        let frame = shardchat_codec::ServerFrame::Ack { cmid: "1:42".into(), conv: "c".into(), id: 1, seq: 1, ts: 1 };
        let bin = shardchat_codec::encode_binary(&frame);
        assert_eq!(answer(&Message::Binary(bin.into())), Some(Answer::Ack(Some(42))));
    }
}
