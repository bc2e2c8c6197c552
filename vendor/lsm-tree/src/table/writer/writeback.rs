// shardchat patch (see vendor/README.md in shardchat): a table being written starts the
// kernel's writeback of what it wrote every MiB, as RocksDB's `bytes_per_sync` does.

//! Writeback started as a table is written, not all at its end.
//!
//! A flushed memtable (64 MiB by default) or a compaction's output was written into the page
//! cache whole and pushed to the disk by the `sync_all` that finishes the table: tens of
//! megabytes at once, and every `fsync` of the journal issued meanwhile (the database's commits)
//! queued behind them. On a 2-core VM at 20,000 one-on-one messages a second, commits of 10–35
//! ms clustered in the second of each flush. Starting the writeback of each MiB as it is
//! written (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait for it) spreads the
//! same writes over the flush, so a journal `fsync` waits behind about a MiB at most, and the
//! final `sync_all` has little left to do. Durability is unchanged: the table is still
//! `sync_all`ed before it is used, and a failed hint here changes nothing.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of a table written before their writeback is started.
pub(crate) const EVERY_BYTES: u64 = 1 << 20;

/// Writebacks started (for tests).
static STARTED: AtomicU64 = AtomicU64::new(0);

/// How many times a table writer has started a writeback.
pub fn writebacks_started() -> u64 {
    STARTED.load(Ordering::Acquire)
}

/// Starts writing back `file`'s dirty pages from `from` to its end, without waiting for them.
pub(crate) fn start(file: &File, from: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        // SAFETY: a syscall on a descriptor borrowed for its duration; it touches no memory of
        // ours. `nbytes` 0 means through the end of the file.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), from, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc == 0 {
            STARTED.fetch_add(1, Ordering::Release);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from);
}
