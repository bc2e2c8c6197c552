//! The S3-compatible object store: what the engine signs so that clients move media bytes to
//! and from the object store itself, and the engine never carries them.
//!
//! Sans-I/O: this module only makes signed URLs (SigV4 query signing, `rusty-s3`) and says
//! which headers each request must carry; the control plane does the few requests of its own
//! (a HEAD to check an upload, a GET for a thumbnail, a PUT of the thumbnail) over HTTP.
//!
//! Objects are named by content, `objects/<sha256 hex>`, as in the embedded store, so a file
//! forwarded or uploaded twice is stored once. An upload URL signs the object's exact
//! `content-length`, its `content-type` and its `x-amz-checksum-sha256`: the store refuses other
//! sizes and types, and a store that verifies checksums (AWS S3, MinIO, Ceph RGW, Garage, R2)
//! refuses bytes that are not the ones the name says. The control plane checks again before it
//! answers an upload (the checksum the store reports, or the bytes' own hash where the store
//! reports none), so a store that does not verify cannot be made to serve other bytes under a
//! name either.

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::time::Duration;

/// Where an S3-compatible store is and how to sign for it.
pub struct S3Media {
    bucket: Bucket,
    credentials: Credentials,
}

/// A signed request: its URL and the headers it must carry, exactly (they are signed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
}

impl S3Media {
    /// `url` is `http[s]://HOST[:PORT]/BUCKET` (path-style, as MinIO, Ceph and most
    /// S3-compatible stores serve), or with `?style=virtual-host` for `BUCKET.HOST` (AWS's
    /// buckets made since 2020). The access key and secret come from the environment, never the
    /// command line.
    pub fn new(url: &str, region: &str, access_key: &str, secret_key: &str) -> Result<S3Media, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("--media-s3 {url}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("--media-s3 {url}: http:// or https://"));
        }
        let style = match parsed.query() {
            None | Some("style=path") => UrlStyle::Path,
            Some("style=virtual-host") => UrlStyle::VirtualHost,
            Some(q) => return Err(format!("--media-s3 {url}: unknown option {q:?} (style=path or style=virtual-host)")),
        };
        let bucket_name = parsed.path().trim_matches('/');
        if bucket_name.is_empty() || bucket_name.contains('/') {
            return Err(format!("--media-s3 {url}: the URL's path is the bucket, one name"));
        }
        let mut endpoint = parsed.clone();
        endpoint.set_path("/");
        endpoint.set_query(None);
        let bucket =
            Bucket::new(endpoint, style, bucket_name.to_string(), region.to_string()).map_err(|e| format!("--media-s3 {url}: {e}"))?;
        if access_key.is_empty() || secret_key.is_empty() {
            return Err("the S3 media store needs SHARDCHAT_MEDIA_S3_ACCESS_KEY and SHARDCHAT_MEDIA_S3_SECRET_KEY".into());
        }
        Ok(S3Media { bucket, credentials: Credentials::new(access_key.to_string(), secret_key.to_string()) })
    }

    fn key(id: &str) -> String {
        debug_assert!(crate::valid_media_id(id), "object keys are media ids");
        format!("objects/{id}")
    }

    /// The PUT that uploads object `id`: exactly `size` bytes of type `content_type`, whose
    /// SHA-256 is `id`.
    pub fn put(&self, id: &str, size: u64, content_type: &str, ttl: Duration) -> Signed {
        let key = Self::key(id);
        let checksum = checksum_header(id).expect("a media id is a SHA-256");
        let size = size.to_string();
        let mut action = self.bucket.put_object(Some(&self.credentials), &key);
        let headers = [("content-length", size), ("content-type", content_type.to_string()), ("x-amz-checksum-sha256", checksum)];
        for (name, value) in &headers {
            action.headers_mut().insert(*name, value.as_str());
        }
        // content-length travels with any body; a client sends the other two itself.
        Signed { url: action.sign(ttl).to_string(), headers: headers.into_iter().filter(|(n, _)| *n != "content-length").collect() }
    }

    /// The GET that downloads object `id`, served with `content_type` and `disposition` (the
    /// store sets them from the signed query, whatever the object was stored with).
    pub fn get(&self, id: &str, content_type: &str, disposition: &str, ttl: Duration) -> String {
        let key = Self::key(id);
        let mut action = self.bucket.get_object(Some(&self.credentials), &key);
        action.query_mut().insert("response-content-type", content_type);
        action.query_mut().insert("response-content-disposition", disposition);
        action.sign(ttl).to_string()
    }

    /// The HEAD that tells whether object `id` is stored, its size and (where the store keeps
    /// one) its checksum.
    pub fn head(&self, id: &str, ttl: Duration) -> Signed {
        let key = Self::key(id);
        let mut action = self.bucket.head_object(Some(&self.credentials), &key);
        action.headers_mut().insert("x-amz-checksum-mode", "ENABLED");
        Signed { url: action.sign(ttl).to_string(), headers: vec![("x-amz-checksum-mode", "ENABLED".into())] }
    }

    /// The DELETE of object `id` (bytes that are not what their name says).
    pub fn delete(&self, id: &str, ttl: Duration) -> String {
        self.bucket.delete_object(Some(&self.credentials), &Self::key(id)).sign(ttl).to_string()
    }
}

/// `x-amz-checksum-sha256` for media id `id`: the same SHA-256, base64 instead of hex.
pub fn checksum_header(id: &str) -> Option<String> {
    use base64::Engine as _;
    if !crate::valid_media_id(id) {
        return None;
    }
    let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).expect("hex checked")).collect();
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> S3Media {
        S3Media::new("http://127.0.0.1:9000/media", "us-east-1", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap()
    }

    #[test]
    fn an_upload_url_signs_size_type_and_checksum() {
        let id = "ab".repeat(32);
        let put = store().put(&id, 1234, "image/png", Duration::from_secs(600));
        assert!(put.url.starts_with("http://127.0.0.1:9000/media/objects/abab"), "{}", put.url);
        assert!(put.url.contains("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost%3Bx-amz-checksum-sha256"), "{}", put.url);
        assert!(put.url.contains("X-Amz-Expires=600"));
        assert_eq!(put.headers, vec![("content-type", "image/png".into()), ("x-amz-checksum-sha256", checksum_header(&id).unwrap())]);
        // Another size is another signature.
        assert_ne!(put.url, store().put(&id, 1235, "image/png", Duration::from_secs(600)).url);
    }

    #[test]
    fn a_download_url_names_how_it_is_served() {
        let url = store().get(&"cd".repeat(32), "application/pdf", "attachment; filename*=UTF-8''a%20b.pdf", Duration::from_secs(60));
        assert!(url.contains("response-content-type=application%2Fpdf"), "{url}");
        assert!(url.contains("response-content-disposition=attachment"), "{url}");
        let vh = S3Media::new("https://s3.eu-west-1.amazonaws.com/chat-media?style=virtual-host", "eu-west-1", "k", "s").unwrap();
        assert!(vh
            .get(&"cd".repeat(32), "a/b", "inline", Duration::from_secs(60))
            .starts_with("https://chat-media.s3.eu-west-1.amazonaws.com/objects/"));
    }

    #[test]
    fn checksums_and_bad_settings() {
        // SHA-256 of the empty string, hex and base64.
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(checksum_header(empty).unwrap(), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(checksum_header("xyz"), None);
        for bad in ["ftp://h/b", "http://h/", "http://h/a/b", "http://h/b?style=odd", "not a url"] {
            assert!(S3Media::new(bad, "r", "k", "s").is_err(), "{bad}");
        }
        assert!(S3Media::new("http://h/b", "r", "", "s").is_err());
    }
}
