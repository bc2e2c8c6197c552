//! Where media bytes live: by content, written whole or not at all.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("media storage: {0}")]
    Io(#[from] std::io::Error),
    /// More bytes came than the upload was granted.
    #[error("the upload is larger than the {0} bytes it was granted")]
    TooLarge(u64),
    /// The upload ended short of the bytes it was granted.
    #[error("the upload ended after {got} of its {want} bytes")]
    Short { got: u64, want: u64 },
    /// The bytes are not those the upload named by their SHA-256.
    #[error("the bytes uploaded have SHA-256 {got}, not the {want} the upload named")]
    Mismatch { got: String, want: String },
}

/// An object stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The SHA-256 of the bytes (lowercase hex): the object's id.
    pub id: String,
    pub size: u64,
    /// The same bytes were stored already (this upload added nothing).
    pub existed: bool,
}

/// One upload in progress. Dropped without [`Upload::finish`], it leaves nothing.
pub trait Upload: Send {
    fn write(&mut self, chunk: &[u8]) -> Result<(), MediaError>;
    /// Makes the object durable and visible under its id, once it holds exactly the bytes
    /// granted.
    fn finish(self: Box<Self>) -> Result<Stored, MediaError>;
}

/// The media storage contract. All methods may block on disk.
pub trait MediaStore: Send + Sync + 'static {
    /// Starts an upload of exactly `size` bytes; with `sha256` (lowercase hex), of exactly the
    /// bytes with that digest ([`MediaError::Mismatch`] otherwise, and nothing stored).
    fn begin(&self, size: u64, sha256: Option<String>) -> Result<Box<dyn Upload>, MediaError>;
    /// Object `id`'s bytes, if stored.
    fn open(&self, id: &str) -> Result<Option<std::fs::File>, MediaError>;
    /// Removes what uploads left unfinished (a crash, a client gone mid-upload) that is older
    /// than `older_than`; returns how many.
    fn reclaim(&self, older_than: Duration) -> Result<usize, MediaError>;
}

/// The embedded store: `objects/<first two hex digits>/<id>` under its directory, uploads in
/// `tmp/` until they are whole.
pub struct FsMediaStore {
    dir: PathBuf,
}

impl FsMediaStore {
    pub fn open(dir: &Path) -> Result<FsMediaStore, MediaError> {
        std::fs::create_dir_all(dir.join("objects"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(FsMediaStore { dir: dir.to_path_buf() })
    }

    fn object(&self, id: &str) -> PathBuf {
        self.dir.join("objects").join(&id[..2]).join(id)
    }

    /// Objects stored (for tests and metrics: a walk of the directory).
    pub fn count(&self) -> usize {
        let Ok(dirs) = std::fs::read_dir(self.dir.join("objects")) else { return 0 };
        dirs.flatten().filter_map(|d| std::fs::read_dir(d.path()).ok()).map(|f| f.count()).sum()
    }

    /// Unfinished uploads present (for tests).
    pub fn unfinished(&self) -> usize {
        std::fs::read_dir(self.dir.join("tmp")).map(|d| d.count()).unwrap_or(0)
    }
}

struct FsUpload {
    tmp: PathBuf,
    file: Option<std::fs::File>,
    hash: Sha256,
    got: u64,
    want: u64,
    want_sha256: Option<String>,
    objects: PathBuf,
}

impl Upload for FsUpload {
    fn write(&mut self, chunk: &[u8]) -> Result<(), MediaError> {
        self.got += chunk.len() as u64;
        if self.got > self.want {
            return Err(MediaError::TooLarge(self.want));
        }
        self.hash.update(chunk);
        self.file.as_mut().expect("open until finished").write_all(chunk)?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Stored, MediaError> {
        if self.got != self.want {
            return Err(MediaError::Short { got: self.got, want: self.want });
        }
        let id = super::hex(&std::mem::take(&mut self.hash).finalize());
        if let Some(want) = self.want_sha256.take().filter(|w| *w != id) {
            // Dropped: the temporary file goes, nothing is stored.
            return Err(MediaError::Mismatch { got: id, want });
        }
        let file = self.file.take().expect("finished once");
        file.sync_all()?;
        drop(file);
        let dir = self.objects.join(&id[..2]);
        let target = dir.join(&id);
        let existed = target.exists();
        if existed {
            // Content-addressed: the bytes are there already.
            std::fs::remove_file(&self.tmp)?;
        } else {
            std::fs::create_dir_all(&dir)?;
            std::fs::rename(&self.tmp, &target)?;
            // The rename is durable once the directory is.
            std::fs::File::open(&dir)?.sync_all()?;
        }
        self.tmp = PathBuf::new();
        Ok(Stored { id, size: self.got, existed })
    }
}

impl Drop for FsUpload {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl MediaStore for FsMediaStore {
    fn begin(&self, size: u64, sha256: Option<String>) -> Result<Box<dyn Upload>, MediaError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("{}-{}.part", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let tmp = self.dir.join("tmp").join(name);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        Ok(Box::new(FsUpload {
            tmp,
            file: Some(file),
            hash: Sha256::new(),
            got: 0,
            want: size,
            want_sha256: sha256,
            objects: self.dir.join("objects"),
        }))
    }

    fn open(&self, id: &str) -> Result<Option<std::fs::File>, MediaError> {
        if !super::valid_media_id(id) {
            return Ok(None);
        }
        match std::fs::File::open(self.object(id)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn reclaim(&self, older_than: Duration) -> Result<usize, MediaError> {
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in std::fs::read_dir(self.dir.join("tmp"))?.flatten() {
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= older_than);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn put(store: &FsMediaStore, bytes: &[u8]) -> Result<Stored, MediaError> {
        let mut u = store.begin(bytes.len() as u64, None)?;
        for chunk in bytes.chunks(7) {
            u.write(chunk)?;
        }
        u.finish()
    }

    #[test]
    fn objects_are_stored_once_by_content_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsMediaStore::open(dir.path()).unwrap();
        let a = put(&store, b"hello media").unwrap();
        // sha256("hello media"), as `sha256sum` says.
        assert_eq!(a.id, "d28d2954ff97ac68052c4beff8c84ad0960d1408540fc486256cdd7cd68dd1fe");
        assert_eq!((a.size, a.existed), (11, false));
        let b = put(&store, b"hello media").unwrap();
        assert_eq!((b.id.as_str(), b.existed), (a.id.as_str(), true), "the same bytes are one object");
        assert_eq!(store.count(), 1);
        let mut back = String::new();
        store.open(&a.id).unwrap().unwrap().read_to_string(&mut back).unwrap();
        assert_eq!(back, "hello media");
        assert!(store.open(&"00".repeat(32)).unwrap().is_none());
        assert!(store.open("../../etc/passwd").unwrap().is_none(), "ids are hex, never paths");
        assert_eq!(store.unfinished(), 0);
    }

    #[test]
    fn an_upload_that_named_its_sha256_stores_only_those_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsMediaStore::open(dir.path()).unwrap();
        let id = "d28d2954ff97ac68052c4beff8c84ad0960d1408540fc486256cdd7cd68dd1fe".to_string();
        let mut u = store.begin(11, Some(id.clone())).unwrap();
        u.write(b"hello mediA").unwrap();
        match u.finish() {
            Err(MediaError::Mismatch { want, .. }) => assert_eq!(want, id),
            other => panic!("{other:?}"),
        }
        assert_eq!((store.count(), store.unfinished()), (0, 0), "other bytes leave nothing");
        let mut u = store.begin(11, Some(id.clone())).unwrap();
        u.write(b"hello media").unwrap();
        assert_eq!(u.finish().unwrap().id, id);
    }

    #[test]
    fn an_upload_that_is_too_long_short_or_abandoned_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsMediaStore::open(dir.path()).unwrap();
        let mut u = store.begin(4, None).unwrap();
        assert!(matches!(u.write(b"12345"), Err(MediaError::TooLarge(4))));
        drop(u);
        let mut u = store.begin(4, None).unwrap();
        u.write(b"12").unwrap();
        assert!(matches!(u.finish(), Err(MediaError::Short { got: 2, want: 4 })));
        let mut u = store.begin(4, None).unwrap();
        u.write(b"12").unwrap();
        drop(u); // the client went away
        assert_eq!((store.count(), store.unfinished()), (0, 0));
        // What a crash leaves (no drop ran) is reclaimed once old enough.
        let u = store.begin(4, None).unwrap();
        std::mem::forget(u);
        assert_eq!(store.unfinished(), 1);
        assert_eq!(store.reclaim(Duration::from_secs(3600)).unwrap(), 0, "not old yet");
        assert_eq!(store.reclaim(Duration::ZERO).unwrap(), 1);
        assert_eq!(store.unfinished(), 0);
    }
}
