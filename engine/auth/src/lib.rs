//! Who is connecting: an HS256 JWT (`Authorization: Bearer` or `?token=`), or in development
//! mode `?user=&device=`. Runtime-agnostic: it sees a parsed request head, not a socket.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use shardchat_codec::valid_user_id;
use shardchat_wire::http::RequestHead;

/// The user and device a connection speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub device: String,
    /// When the token stops being valid (its `exp` plus the clock-skew leeway), in Unix ms; the
    /// connection is closed then. None for tokens without `exp` and for dev logins.
    pub expires_unix_ms: Option<u64>,
}

/// The device id of a token or dev login that names none.
pub const DEFAULT_DEVICE: &str = "default";

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
}

pub struct Authenticator {
    key: Option<DecodingKey>,
    /// The same secret, to sign the tokens nodes of a cluster show each other.
    signing: Option<EncodingKey>,
    validation: Validation,
    dev_auth: bool,
}

/// The audience of the tokens nodes show each other.
const NODE_AUDIENCE: &str = "shardchat-node";
/// Life of a node token, in seconds: one request's.
const NODE_TOKEN_LIFE_S: u64 = 60;

#[derive(serde::Serialize, Deserialize)]
struct NodeClaims {
    sub: String,
    aud: String,
    exp: u64,
}

/// Clock skew tolerated by default, in seconds.
pub const JWT_LEEWAY_S_DEFAULT: u64 = 30;

impl Authenticator {
    pub fn new(jwt_secret: Option<&str>, dev_auth: bool) -> Self {
        Authenticator::with_leeway(jwt_secret, dev_auth, JWT_LEEWAY_S_DEFAULT)
    }

    /// `leeway_s`: clock skew tolerated between the token's issuer and this server, in seconds,
    /// both ways: a token is accepted until `exp + leeway_s`, and its connection closed then.
    pub fn with_leeway(jwt_secret: Option<&str>, dev_auth: bool, leeway_s: u64) -> Self {
        // The algorithm is pinned: a token claiming any other (`none` included) is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is checked when present; tokens without one are accepted (the contract makes it
        // optional). `nbf` is checked when present. Leeway covers clock skew between issuers.
        validation.required_spec_claims.clear();
        validation.validate_nbf = true;
        validation.leeway = leeway_s;
        let secret = jwt_secret.filter(|s| !s.is_empty());
        Authenticator {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            signing: secret.map(|s| EncodingKey::from_secret(s.as_bytes())),
            validation,
            dev_auth,
        }
    }

    /// A short-lived token by which node `node` of a cluster shows another node that a request
    /// comes from a node (the nodes share the JWT secret, as clients may connect to any). None
    /// without a secret: a development cluster trusts its callers as it trusts `?user=`.
    pub fn node_token(&self, node: usize, now_unix_s: u64) -> Option<String> {
        let claims = NodeClaims { sub: format!("node:{node}"), aud: NODE_AUDIENCE.into(), exp: now_unix_s + NODE_TOKEN_LIFE_S };
        self.signing.as_ref().map(|k| encode(&Header::new(Algorithm::HS256), &claims, k).expect("HS256 signs any claims"))
    }

    /// Whether `token` is a node's (see [`Authenticator::node_token`]). A user's token never is:
    /// it has no audience. Without a secret, in development mode, every caller is trusted.
    pub fn is_node(&self, token: Option<&str>) -> bool {
        let Some(key) = &self.key else { return self.dev_auth };
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[NODE_AUDIENCE]);
        v.leeway = self.validation.leeway;
        token.is_some_and(|t| decode::<NodeClaims>(t, key, &v).is_ok())
    }

    /// The identity of an upgrade request, or why it is refused (the 401 body).
    pub fn authenticate(&self, head: &RequestHead) -> Result<Identity, &'static str> {
        self.authenticate_with(head.header("authorization"), |name| head.query(name))
    }

    /// The same rules over any request: its `Authorization` header and a query lookup (the REST
    /// API uses this with axum's request parts).
    pub fn authenticate_with(&self, authorization: Option<&str>, query: impl Fn(&str) -> Option<String>) -> Result<Identity, &'static str> {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .map(str::to_string)
            .or_else(|| query("token"));
        if let Some(token) = token {
            let key = self.key.as_ref().ok_or("tokens are not accepted: the server has no JWT secret")?;
            let data = decode::<Claims>(&token, key, &self.validation).map_err(|_| "invalid or expired token")?;
            let device = data.claims.dev.unwrap_or_else(|| DEFAULT_DEVICE.to_string());
            if !valid_user_id(&data.claims.sub) || !valid_user_id(&device) {
                return Err("token names an invalid user or device id");
            }
            let expires_unix_ms = data.claims.exp.map(|s| s.saturating_add(self.validation.leeway).saturating_mul(1000));
            return Ok(Identity { user: data.claims.sub, device, expires_unix_ms });
        }
        if self.dev_auth {
            let user = query("user").ok_or("missing token (or ?user= in development mode)")?;
            let device = query("device").unwrap_or_else(|| DEFAULT_DEVICE.to_string());
            if !valid_user_id(&user) || !valid_user_id(&device) {
                return Err("invalid user or device id");
            }
            return Ok(Identity { user, device, expires_unix_ms: None });
        }
        Err("missing token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_tokens_are_told_from_user_tokens_and_need_the_secret() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let a = Authenticator::new(Some("s3cret-s3cret-s3cret-s3cret"), false);
        let node = a.node_token(2, now).unwrap();
        assert!(a.is_node(Some(&node)));
        assert!(!a.is_node(None) && !a.is_node(Some("garbage")));
        let other = Authenticator::new(Some("another-secret-another-secret"), false);
        assert!(!other.is_node(Some(&node)), "signed with another secret");
        assert!(!a.is_node(Some(&a.node_token(2, now - 3600).unwrap())), "expired");
        // A user's token is not a node's, and a node's is not a user's.
        let user = token("s3cret-s3cret-s3cret-s3cret", &C { sub: "alice", ..Default::default() }, Algorithm::HS256);
        assert!(!a.is_node(Some(&user)));
        assert!(a.authenticate_with(Some(&format!("Bearer {node}")), |_| None).is_err());
        // Development mode without a secret trusts every caller, as it trusts `?user=`.
        assert!(Authenticator::new(None, true).is_node(None));
        assert_eq!(Authenticator::new(None, true).node_token(1, now), None);
    }
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    /// The claims a test token carries; unset ones are left out of it.
    #[derive(Serialize, Default)]
    struct C<'a> {
        sub: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        dev: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        nbf: Option<u64>,
    }

    fn token(secret: &str, c: &C, alg: Algorithm) -> String {
        encode(&Header::new(alg), c, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn head(target: &str, auth: Option<&str>) -> RequestHead {
        let mut raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n");
        if let Some(a) = auth {
            raw.push_str(&format!("Authorization: {a}\r\n"));
        }
        raw.push_str("\r\n");
        RequestHead::parse(raw.as_bytes()).unwrap().unwrap()
    }

    fn now() -> u64 {
        shardchat_bridge::clock::unix_ms() / 1000
    }

    #[test]
    fn jwt_in_header_or_query() {
        let a = Authenticator::new(Some("sekrit"), false);
        let exp = now() + 600;
        let t = token("sekrit", &C { sub: "alice", dev: Some("phone"), exp: Some(exp), ..Default::default() }, Algorithm::HS256);
        let want = Identity { user: "alice".into(), device: "phone".into(), expires_unix_ms: Some((exp + 30) * 1000) };
        assert_eq!(a.authenticate(&head("/ws", Some(&format!("Bearer {t}")))), Ok(want.clone()));
        assert_eq!(a.authenticate(&head(&format!("/ws?token={t}"), None)), Ok(want));
        let t = token("sekrit", &C { sub: "bob", ..Default::default() }, Algorithm::HS256);
        let bob = a.authenticate(&head(&format!("/ws?token={t}"), None)).unwrap();
        assert_eq!((bob.device.as_str(), bob.expires_unix_ms), (DEFAULT_DEVICE, None), "no exp, no expiry");
    }

    #[test]
    fn forged_expired_or_foreign_algorithm_tokens_are_refused() {
        let a = Authenticator::new(Some("sekrit"), true);
        let forged = token("other", &C { sub: "alice", ..Default::default() }, Algorithm::HS256);
        let expired = token("sekrit", &C { sub: "alice", exp: Some(now() - 3600), ..Default::default() }, Algorithm::HS256);
        let hs512 = token("sekrit", &C { sub: "alice", ..Default::default() }, Algorithm::HS512);
        let bad_sub = token("sekrit", &C { sub: "not valid", ..Default::default() }, Algorithm::HS256);
        for t in [forged, expired, hs512, bad_sub, "garbage".into()] {
            // Even in dev mode a token that is present must be valid.
            assert!(a.authenticate(&head(&format!("/ws?token={t}&user=alice"), None)).is_err(), "{t}");
        }
        assert!(Authenticator::new(Some("sekrit"), false).authenticate(&head("/ws", None)).is_err());
    }

    #[test]
    fn not_before_and_expiry_allow_the_clock_skew_leeway_and_no_more() {
        let a = Authenticator::with_leeway(Some("sekrit"), false, 30);
        let check = |exp: Option<u64>, nbf: Option<u64>| {
            let t = token("sekrit", &C { sub: "alice", exp, nbf, ..Default::default() }, Algorithm::HS256);
            a.authenticate(&head(&format!("/ws?token={t}"), None)).map(|i| i.expires_unix_ms)
        };
        let now = now();
        // Expired 10 s ago by the issuer's clock: within the skew, accepted until exp + leeway.
        assert_eq!(check(Some(now - 10), None), Ok(Some((now - 10 + 30) * 1000)));
        assert!(check(Some(now - 60), None).is_err(), "expired beyond the skew");
        // Valid from 10 s from now: the issuer's clock may be ahead. A minute ahead is not skew.
        assert!(check(None, Some(now + 10)).is_ok());
        assert!(check(None, Some(now + 60)).is_err(), "not yet valid beyond the skew");
        assert!(check(Some(now + 600), Some(now - 600)).is_ok());
    }

    #[test]
    fn an_unsigned_token_is_refused_whatever_it_claims() {
        let a = Authenticator::new(Some("sekrit"), false);
        // {"alg":"none","typ":"JWT"} . {"sub":"alice"} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSJ9.";
        assert!(a.authenticate(&head(&format!("/ws?token={none}"), None)).is_err());
        assert!(a.authenticate(&head("/ws", Some(&format!("Bearer {none}")))).is_err());
    }

    #[test]
    fn dev_mode_takes_user_and_device_from_the_query_only_when_enabled() {
        let dev = Authenticator::new(None, true);
        assert_eq!(
            dev.authenticate(&head("/ws?user=al%40ice&device=d1", None)),
            Ok(Identity { user: "al@ice".into(), device: "d1".into(), expires_unix_ms: None })
        );
        assert!(dev.authenticate(&head("/ws?user=bad%20id", None)).is_err());
        assert!(dev.authenticate(&head("/ws", None)).is_err());
        assert!(Authenticator::new(Some("s"), false).authenticate(&head("/ws?user=alice", None)).is_err());
    }
}
