//! What a media URL grants, signed: an upload of at most so many bytes of one content type by one
//! user, or a download of one object, each until an expiry. The token is the grant as JSON
//! (base64url) and its HMAC-SHA-256, so a URL is checked without any stored state.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a signed URL allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Grant {
    /// Upload exactly `size` bytes of `ct` as `user`, named `name`; with `sha256`, exactly the
    /// bytes of that digest (required by the S3 store, whose object it names).
    Put {
        user: String,
        size: u64,
        ct: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        exp: u64,
    },
    /// Download object `id`, served as `ct` (named `name`).
    Get { id: String, ct: String, name: String, exp: u64 },
}

impl Grant {
    fn exp(&self) -> u64 {
        match self {
            Grant::Put { exp, .. } | Grant::Get { exp, .. } => *exp,
        }
    }
}

pub struct Signer {
    key: Vec<u8>,
}

/// Longest token accepted, in bytes (a grant names at most a user, a content type and a name).
const TOKEN_BYTES_MAX: usize = 2048;

impl Signer {
    /// A signer whose key is derived from `secret` (the server's JWT secret: every node of a
    /// cluster signs alike, and URLs outlive a restart).
    pub fn from_secret(secret: &[u8]) -> Signer {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key");
        mac.update(b"shardchat media urls v1");
        Signer { key: mac.finalize().into_bytes().to_vec() }
    }

    /// A signer with a key of this process alone (development without a secret): its URLs end
    /// with the process.
    pub fn random() -> std::io::Result<Signer> {
        use std::io::Read;
        let mut key = vec![0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Ok(Signer { key })
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(payload.as_bytes());
        mac
    }

    /// The token for `grant`: URL-safe, no padding.
    pub fn sign(&self, grant: &Grant) -> String {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(grant).expect("grants serialize"));
        let sig = super::hex(&self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// The grant `token` carries, if this signer made it and it has not expired at `now_s`.
    pub fn check(&self, token: &str, now_s: u64) -> Result<Grant, &'static str> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err("malformed link");
        }
        let (payload, sig) = token.rsplit_once('.').ok_or("malformed link")?;
        let sig: Vec<u8> = (0..sig.len())
            .step_by(2)
            .map(|i| sig.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<_>>()
            .ok_or("malformed link")?;
        self.mac(payload).verify_slice(&sig).map_err(|_| "the link's signature is not this server's")?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).map_err(|_| "malformed link")?;
        let grant: Grant = serde_json::from_slice(&json).map_err(|_| "malformed link")?;
        if grant.exp() < now_s {
            return Err("the link has expired");
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_grants_what_it_says_until_it_expires_and_only_from_its_signer() {
        let s = Signer::from_secret(b"secret");
        let g = Grant::Get { id: "ab".repeat(32), ct: "image/png".into(), name: "cat.png".into(), exp: 100 };
        let t = s.sign(&g);
        assert_eq!(s.check(&t, 100), Ok(g.clone()));
        assert_eq!(s.check(&t, 101), Err("the link has expired"));
        assert!(Signer::from_secret(b"other").check(&t, 0).is_err(), "another server's key");
        assert!(Signer::random().unwrap().check(&t, 0).is_err());
        // Any change to the grant breaks the signature.
        let (payload, sig) = t.rsplit_once('.').unwrap();
        let other = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&Grant::Get { id: "cd".repeat(32), ct: "image/png".into(), name: "x".into(), exp: 100 }).unwrap());
        assert!(s.check(&format!("{other}.{sig}"), 0).is_err());
        for bad in ["", "nodot", &format!("{payload}.zz"), &format!("{payload}."), &"x".repeat(5000)] {
            assert!(s.check(bad, 0).is_err(), "{bad}");
        }
    }
}
