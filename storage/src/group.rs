//! Group commit: many writers, one fsync.
//!
//! A writer appends its batch to the journal (no fsync), takes a ticket, and then either finds its
//! ticket already covered by a finished fsync, waits for the one in progress, or becomes the
//! leader and runs the next fsync for every ticket taken so far. Under load an fsync covers the
//! batches of every shard that wrote while the previous one ran, so acks per fsync grow with load
//! while an idle system pays one fsync per batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// Every ticket up to this one is durable.
    synced: u64,
    /// Some exactly while a leader runs an fsync.
    syncing: bool,
    /// The tickets up to this one were covered by an fsync that failed, and the error. Their
    /// writers get the error: after a failed fsync the kernel may have dropped the dirty pages, so
    /// a later successful fsync proves nothing about them (the "fsyncgate" lesson).
    failed: Option<(u64, String)>,
}

/// Counts what group commit did, for metrics and tests.
#[derive(Default, Debug)]
pub struct GroupStats {
    pub commits: AtomicU64,
    pub fsyncs: AtomicU64,
}

pub struct GroupCommit {
    /// Tickets handed out; a ticket is taken after its batch is in the journal.
    written: AtomicU64,
    state: Mutex<State>,
    done: Condvar,
    /// How long a leader waits before syncing, to let more writers join (0: sync at once).
    pub interval: Duration,
    pub stats: GroupStats,
}

impl GroupCommit {
    pub fn new(interval: Duration) -> Self {
        GroupCommit {
            written: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            interval,
            stats: GroupStats::default(),
        }
    }

    /// Call after the batch is written to the journal; returns once an fsync covering it is done,
    /// or with the error of the fsync that covered it. `sync` makes everything written so far
    /// durable.
    pub fn wait_durable(&self, sync: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        let ticket = self.written.fetch_add(1, Ordering::AcqRel) + 1;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut sync = Some(sync);
        loop {
            if st.synced >= ticket {
                return Ok(());
            }
            if let Some((upto, e)) = &st.failed {
                if *upto >= ticket {
                    return Err(e.clone());
                }
            }
            if !st.syncing {
                st.syncing = true;
                drop(st);
                if !self.interval.is_zero() {
                    std::thread::sleep(self.interval);
                }
                // Everything with a ticket up to `target` was written before this load.
                let target = self.written.load(Ordering::Acquire);
                let result = (sync.take().expect("a writer leads at most one fsync"))();
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.syncing = false;
                match &result {
                    Ok(()) => st.synced = st.synced.max(target),
                    Err(e) => st.failed = Some((target, e.clone())),
                }
                self.done.notify_all();
                return result;
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_writers_share_fsyncs_and_all_become_durable() {
        let gc = Arc::new(GroupCommit::new(Duration::from_millis(2)));
        let durable = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gc, durable) = (gc.clone(), durable.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        gc.wait_durable(|| {
                            std::thread::sleep(Duration::from_millis(1));
                            Ok(())
                        })
                        .unwrap();
                        durable.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(durable.load(Ordering::Relaxed), 400);
        let fsyncs = gc.stats.fsyncs.load(Ordering::Relaxed);
        assert!(fsyncs < 400, "group commit shared no fsync: {fsyncs} fsyncs for 400 commits");
    }

    #[test]
    fn a_failed_fsync_is_reported_and_the_next_one_retries() {
        let gc = GroupCommit::new(Duration::ZERO);
        assert_eq!(gc.wait_durable(|| Err("disk gone".to_string())), Err("disk gone".to_string()));
        assert_eq!(gc.wait_durable(|| Ok(())), Ok(()));
        assert_eq!(gc.stats.fsyncs.load(Ordering::Relaxed), 2);
    }
}
