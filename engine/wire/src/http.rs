//! The HTTP/1.1 request head of a WebSocket upgrade, read before tungstenite sees the socket so
//! the accepting shard can authenticate and route it to the user's home shard.

/// Largest request head accepted, in bytes: an upgrade with a JWT fits in well under this.
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
const HEADERS_MAX: usize = 32;

#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    /// Bytes of the head in the buffer it was parsed from; what follows is the body (or, after
    /// an upgrade, the first WebSocket frames a client sent without waiting).
    pub len: usize,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

/// Why a request head is refused, with the HTTP answer each gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.1 as RFC 9112 writes it: 400.
    Malformed,
    /// Over [`HEAD_BYTES_MAX`] bytes, or more than [`HEADERS_MAX`] header fields: 431.
    TooLarge,
}

impl HeadError {
    /// The status, its reason phrase and a body line.
    pub fn answer(self) -> (u16, &'static str, &'static str) {
        match self {
            HeadError::Malformed => (400, "Bad Request", "malformed request head"),
            HeadError::TooLarge => (431, "Request Header Fields Too Large", "request head over 8 KiB or 32 header fields"),
        }
    }
}

impl RequestHead {
    /// Parses `buf`: `Ok(None)` when the head is not complete yet ("not enough bytes" is not an
    /// error), `Err` when it is malformed or too large.
    pub fn parse(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Partial) if buf.len() >= HEAD_BYTES_MAX => Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => Ok(None),
            Ok(httparse::Status::Complete(len)) if len > HEAD_BYTES_MAX => Err(HeadError::TooLarge),
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                Ok(Some(RequestHead {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    len,
                    query: form_urlencoded::parse(query.as_bytes()).into_owned().collect(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                }))
            }
            Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
            Err(_) => Err(HeadError::Malformed),
        }
    }

    /// The `101 Switching Protocols` answer to this head, or why it is not a valid WebSocket
    /// upgrade (tungstenite checks the method, version and `Upgrade`/`Connection`/key headers).
    pub fn upgrade_response(&self) -> Result<Vec<u8>, String> {
        use tungstenite::handshake::server::{create_response, write_response};
        let mut req = tungstenite::http::Request::builder().method(self.method.as_str()).uri(self.path.as_str());
        for (n, v) in &self.headers {
            req = req.header(n.as_str(), v.as_str());
        }
        let req = req.body(()).map_err(|e| e.to_string())?;
        let resp = create_response(&req).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(160);
        write_response(&mut out, &resp).map_err(|e| e.to_string())?;
        Ok(out)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<String> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
}

/// A minimal HTTP response for refused upgrades.
pub fn response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        body.len() + 1
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_at_every_split_point() {
        let raw = b"GET /ws?user=a&x=%3A HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        for cut in 0..raw.len() {
            assert!(RequestHead::parse(&raw[..cut]).unwrap().is_none(), "complete at {cut}");
        }
        let h = RequestHead::parse(raw).unwrap().unwrap();
        assert_eq!((h.method.as_str(), h.path.as_str()), ("GET", "/ws"));
        assert_eq!(h.query("x").as_deref(), Some(":"));
        assert_eq!(h.header("upgrade"), Some("websocket"));
    }

    #[test]
    fn upgrade_answers_with_the_rfc_accept_key_and_refuses_non_upgrades() {
        let raw = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x80";
        let h = RequestHead::parse(raw).unwrap().unwrap();
        assert_eq!(&raw[h.len..], b"\x81\x80", "bytes after the head are not part of it");
        let resp = String::from_utf8(h.upgrade_response().unwrap()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
        // RFC 6455 §1.3's example key and answer.
        assert!(resp.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{resp}");
        let plain = RequestHead::parse(b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n").unwrap().unwrap();
        assert!(plain.upgrade_response().is_err(), "no Upgrade header: not a WebSocket request");
    }

    #[test]
    fn garbage_and_oversized_heads_are_errors() {
        assert_eq!(RequestHead::parse(b"\x00\x01\x02 nonsense\r\n\r\n").unwrap_err(), HeadError::Malformed);
        // Over 8 KiB, unfinished or complete: 431.
        let mut big = b"GET /ws HTTP/1.1\r\nX: ".to_vec();
        big.resize(HEAD_BYTES_MAX + 10, b'a');
        assert_eq!(RequestHead::parse(&big).unwrap_err(), HeadError::TooLarge);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(RequestHead::parse(&big).unwrap_err(), HeadError::TooLarge);
        // Within 8 KiB but more header fields than taken: 431 as well.
        let mut many = b"GET /ws HTTP/1.1\r\n".to_vec();
        for i in 0..HEADERS_MAX + 1 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(RequestHead::parse(&many).unwrap_err(), HeadError::TooLarge);
        assert_eq!(HeadError::TooLarge.answer().0, 431);
    }
}
