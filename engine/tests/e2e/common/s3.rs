//! An S3-compatible server for the media tests: `s3s-fs` (crates.io, the s3s project's
//! file-system store; `.ci/run` installs it), on a free loopback port with one bucket, `media`.
//! It checks SigV4 signatures, of headers and of presigned URLs with their signed headers and
//! expiry, and verifies `x-amz-checksum-sha256` against the bytes, as S3 does. Without it the
//! test is skipped locally and fails in CI.

use super::{free_port, skip};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const S3_ACCESS_KEY: &str = "shardchat-test-key";
pub const S3_SECRET_KEY: &str = "shardchat-test-secret";
pub const S3_BUCKET: &str = "media";

pub struct S3Server {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
}

/// `$SHARDCHAT_S3S_FS`, else `s3s-fs` on the PATH.
fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHARDCHAT_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("s3s-fs")).find(|p| p.is_file())
}

impl S3Server {
    /// None when s3s-fs is not installed here (and not in CI, where that fails).
    pub fn start() -> Option<S3Server> {
        let Some(bin) = binary() else {
            skip("s3s-fs not installed (cargo install s3s-fs@0.14.1 --features binary --locked)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // A bucket is a directory of the store's root.
        std::fs::create_dir(dir.path().join(S3_BUCKET)).unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(dir.path())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start s3s-fs");
        let s = S3Server { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(s)
    }

    /// The engine's `--media-s3`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/{S3_BUCKET}", self.port)
    }

    /// Objects stored (s3s-fs keeps each key as a file under the bucket's directory).
    pub fn objects(&self) -> usize {
        let dir = self.dir.path().join(S3_BUCKET).join("objects");
        std::fs::read_dir(dir).map(|d| d.flatten().filter(|e| e.path().is_file()).count()).unwrap_or(0)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
