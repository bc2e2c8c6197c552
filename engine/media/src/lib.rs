//! Media: the bytes of images and files shared in conversations, kept out of the message path.
//!
//! A client asks the control plane for an upload URL, PUTs the bytes there, then sends a
//! message whose `media` object names what it uploaded (its SHA-256 is its id). Downloads are
//! signed URLs the control plane hands only to those who may read a message naming the media.
//!
//! - [`MediaStore`] is where bytes live, by content: the same bytes uploaded twice (a forwarded
//!   file) are stored once. [`FsMediaStore`] is the embedded one, files under the data directory,
//!   each written to a temporary file, fsynced, then renamed into place, so a reader never sees
//!   half a file and an interrupted upload leaves nothing but a temporary file that
//!   [`MediaStore::reclaim`] removes.
//! - [`Signer`] signs and checks what a URL grants (HMAC-SHA-256, with an expiry).
//! - [`images`] reads an image's dimensions and makes its thumbnail with decoding bounded in
//!   pixels and bytes, so a decompression bomb or a malformed file harms nothing.
//!
//! Everything here blocks on disk or CPU: callers run it on a blocking pool, never on a shard.

pub mod images;
mod s3;
mod signer;
mod store;

pub use s3::{checksum_header, S3Media, Signed};
pub use signer::{Grant, Signer};
pub use store::{FsMediaStore, MediaError, MediaStore, Stored, Upload};

// What a media id and a content type look like is the wire's rule (a `media` object in a
// message is checked by the codec): one definition, used here too.
pub use shardchat_codec::{valid_content_type, valid_media_id, CONTENT_TYPE_BYTES_MAX};

/// The media id of `bytes`: their SHA-256, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_content_types() {
        assert!(valid_media_id(&"ab".repeat(32)));
        assert!(!valid_media_id(&"AB".repeat(32)) && !valid_media_id("ab") && !valid_media_id(&"zz".repeat(32)));
        assert!(valid_content_type("image/png") && valid_content_type("application/vnd.ms-excel") && valid_content_type("image/svg+xml"));
        for bad in ["image", "image/", "/png", "Image/PNG", "text/html; charset=utf-8", "a/b/c", &format!("a/{}", "b".repeat(200))] {
            assert!(!valid_content_type(bad), "{bad}");
        }
    }
}
