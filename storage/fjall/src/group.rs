//! Group commit: many writers, one fsync.
//!
//! A writer appends its batch to the journal (no fsync), takes a ticket, and then either finds its
//! ticket already covered by a finished fsync, waits for the one in progress, or becomes the
//! leader and runs the next fsync for every ticket taken so far. Under load an fsync covers the
//! batches of every shard that wrote while the previous one ran, so acks per fsync grow with load
//! while an idle system pays one fsync per batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest a leader waits, before its fsync, for writers that are in the middle of writing
/// their batch. Why wait at all: the journal's writer lock is held through an fsync, so writers
/// that queued behind the previous fsync write right after it; a leader that synced at once
/// would cover only its own batch, and every writer would pay a whole fsync (measured: 8 writers
/// got no more through than 1). They take microseconds, so the bound is rarely reached.
const LEADER_WAIT_FOR_WRITERS: Duration = Duration::from_micros(300);

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
    /// When the last fsync started: the next starts no sooner than `interval` after it.
    last_start: Option<Instant>,
    /// Writers asleep on `done`. A leader wakes them only when there are any: a `notify_all`
    /// is a futex syscall even with nobody waiting, and with traffic light enough that each
    /// fsync covers one batch (1,000 msg/s) nobody is.
    waiters: usize,
}

/// Counts what group commit did, for metrics and tests.
#[derive(Default, Debug)]
pub struct GroupStats {
    pub commits: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Times a leader woke the writers waiting on its fsync.
    pub wakeups: AtomicU64,
}

pub struct GroupCommit {
    /// Tickets handed out; a ticket is taken after its batch is in the journal.
    written: AtomicU64,
    /// Writers between `begin_write` and their ticket.
    writing: AtomicU64,
    state: Mutex<State>,
    done: Condvar,
    /// The shortest time between the starts of two fsyncs (0: none). A leader whose fsync would
    /// start sooner after the previous one's start waits the rest, and its fsync covers what was
    /// written meanwhile; one that comes later waits nothing. So it costs no latency to traffic
    /// light enough that commits are further apart than this, and under heavy traffic it caps
    /// the fsyncs a second, trading at most this much latency for fewer of them.
    pub interval: Duration,
    pub stats: GroupStats,
}

impl GroupCommit {
    pub fn new(interval: Duration) -> Self {
        GroupCommit {
            written: AtomicU64::new(0),
            writing: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            interval,
            stats: GroupStats::default(),
        }
    }

    /// Call before writing a batch to the journal, then [`Writer::wait_durable`] after: a leader
    /// about to fsync waits for writers in between so that its fsync covers them too.
    pub fn begin_write(&self) -> Writer<'_> {
        self.writing.fetch_add(1, Ordering::AcqRel);
        Writer { group: self, open: true }
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
                let since_last = st.last_start.map(|t| t.elapsed());
                drop(st);
                if let Some(wait) = since_last.and_then(|d| self.interval.checked_sub(d)).filter(|w| !w.is_zero()) {
                    std::thread::sleep(wait);
                }
                let started = Instant::now();
                while self.writing.load(Ordering::Acquire) > 0 && started.elapsed() < LEADER_WAIT_FOR_WRITERS {
                    std::thread::yield_now();
                }
                // Everything with a ticket up to `target` was written before this load.
                let target = self.written.load(Ordering::Acquire);
                let result = (sync.take().expect("a writer leads at most one fsync"))();
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.syncing = false;
                st.last_start = Some(started);
                match &result {
                    Ok(()) => st.synced = st.synced.max(target),
                    Err(e) => st.failed = Some((target, e.clone())),
                }
                if st.waiters > 0 {
                    self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
                    self.done.notify_all();
                }
                return result;
            }
            st.waiters += 1;
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
            st.waiters -= 1;
        }
    }
}

/// A writer between `begin_write` and its ticket; dropping it (a failed write) withdraws it.
pub struct Writer<'a> {
    group: &'a GroupCommit,
    open: bool,
}

impl Writer<'_> {
    /// [`GroupCommit::wait_durable`] for this writer's batch, now in the journal.
    pub fn wait_durable(mut self, sync: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        self.open = false;
        self.group.writing.fetch_sub(1, Ordering::AcqRel);
        self.group.wait_durable(sync)
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if self.open {
            self.group.writing.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Runs `f` on a thread of its own and fails if it has not returned within `limit`: a writer
    /// left asleep on the condition variable must fail the test, not hang it.
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).expect("a writer waiting on an fsync was never woken")
    }

    /// One writer at a time (traffic light enough that every fsync covers one batch): nobody
    /// waits, so no leader pays for waking anybody.
    #[test]
    fn a_lone_writer_wakes_nobody() {
        let gc = GroupCommit::new(Duration::ZERO);
        for _ in 0..100 {
            gc.begin_write().wait_durable(|| Ok(())).unwrap();
        }
        assert_eq!(gc.stats.fsyncs.load(Ordering::Relaxed), 100);
        assert_eq!(gc.stats.wakeups.load(Ordering::Relaxed), 0);
    }

    /// Back to back, a lone writer's fsyncs start `interval` apart; after a pause longer than
    /// that, its fsync starts at once.
    #[test]
    fn fsyncs_start_an_interval_apart_and_no_later() {
        let interval = Duration::from_millis(300);
        let gc = GroupCommit::new(interval);
        let starts = Mutex::new(Vec::new());
        let commit = || {
            gc.begin_write()
                .wait_durable(|| {
                    starts.lock().unwrap().push(Instant::now());
                    Ok(())
                })
                .unwrap()
        };
        let t0 = Instant::now();
        commit();
        commit();
        std::thread::sleep(interval + Duration::from_millis(100));
        let t2 = Instant::now();
        commit();
        let s = starts.into_inner().unwrap();
        assert!(s[0] - t0 < interval, "the first fsync waits for no earlier one");
        assert!(s[1] - s[0] >= interval, "the second started {:?} after the first", s[1] - s[0]);
        // Bounded by the interval, not timed: a pause longer than it leaves nothing to wait.
        assert!(s[2] - t2 < interval, "after a pause the fsync waited {:?}", s[2] - t2);
    }

    #[test]
    fn concurrent_writers_share_fsyncs_and_all_become_durable() {
        within(Duration::from_secs(60), concurrent_writers_share_fsyncs_and_all_become_durable_inner)
    }

    fn concurrent_writers_share_fsyncs_and_all_become_durable_inner() {
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
        assert!(gc.stats.wakeups.load(Ordering::Relaxed) > 0, "writers that shared an fsync waited for it");
    }

    /// The journal's lock is held through an fsync (as fjall's is): writers queue behind it and
    /// write together right after. The leader waits for them, so fsyncs are shared even with no
    /// commit interval.
    #[test]
    fn writers_queued_behind_an_fsync_share_the_next_one() {
        within(Duration::from_secs(60), writers_queued_behind_an_fsync_share_the_next_one_inner)
    }

    fn writers_queued_behind_an_fsync_share_the_next_one_inner() {
        let gc = Arc::new(GroupCommit::new(Duration::ZERO));
        let journal = Arc::new(Mutex::new(()));
        let (writers, each) = (4, 100);
        let threads: Vec<_> = (0..writers)
            .map(|_| {
                let (gc, journal) = (gc.clone(), journal.clone());
                std::thread::spawn(move || {
                    for _ in 0..each {
                        let w = gc.begin_write();
                        drop(journal.lock().unwrap());
                        w.wait_durable(|| {
                            let _held = journal.lock().unwrap();
                            std::thread::sleep(Duration::from_micros(500));
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let fsyncs = gc.stats.fsyncs.load(Ordering::Relaxed);
        let commits = writers * each;
        eprintln!("{fsyncs} fsyncs for {commits} commits");
        assert!(
            fsyncs * 10 < commits as u64 * 6,
            "{fsyncs} fsyncs for {commits} commits: writers queued behind the lock were not waited for"
        );
    }

    #[test]
    fn a_failed_fsync_is_reported_and_the_next_one_retries() {
        let gc = GroupCommit::new(Duration::ZERO);
        assert_eq!(gc.wait_durable(|| Err("disk gone".to_string())), Err("disk gone".to_string()));
        assert_eq!(gc.wait_durable(|| Ok(())), Ok(()));
        assert_eq!(gc.stats.fsyncs.load(Ordering::Relaxed), 2);
    }
}
