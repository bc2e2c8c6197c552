//! Where a scan of the search index queue may start: no queued id is below the floor.
//!
//! The queue is keyed by message id, and the indexer clears what it indexed, so the front of the
//! keyspace is a run of tombstones until the memtable is flushed and compacted: a scan from the
//! start walked every one of them (8% of the engine's CPU at 10,000 messages a second, growing
//! with the run). A scan from the floor skips them.
//!
//! The floor is a lower bound that only a scan raises, to the first id it met, and only so far
//! that nothing it could have missed falls below: writes that raced it lower the floor
//! themselves. The rule, with the write's order: a commit registers its messages as undurable
//! (`Undurable::begin`), then [`QueueFloor::queued`], then inserts them. A scan begins with
//! [`QueueFloor::scan`], reads the lowest id still registered, scans, then ends with
//! [`Scan::done`] and the first id it met. A message the scan missed was inserted
//! after the scan passed its place, so either it was registered when the scan read the
//! registrations (its id bounds the floor), or its `queued` came after the scan began (and is
//! remembered until it is done), or after (it lowers the floor itself).

use std::sync::Mutex;

#[derive(Debug)]
pub struct QueueFloor {
    inner: Mutex<Inner>,
    /// Held for a whole scan: the rule above holds for one scan at a time.
    scanning: Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    floor: u64,
    /// The lowest id queued since the running scan began (u64::MAX: none).
    since_scan: u64,
}

impl Default for QueueFloor {
    /// At open: the first scan starts from the beginning.
    fn default() -> Self {
        QueueFloor { inner: Mutex::new(Inner { floor: 0, since_scan: u64::MAX }), scanning: Mutex::new(()) }
    }
}

impl QueueFloor {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A commit is about to insert queue entries, the lowest with id `lowest` (after it
    /// registered them as undurable).
    pub fn queued(&self, lowest: u64) {
        let mut f = self.lock();
        f.floor = f.floor.min(lowest);
        f.since_scan = f.since_scan.min(lowest);
    }

    /// A scan begins (waiting for any other to end): [`Scan::from`] is where it starts.
    pub fn scan(&self) -> Scan<'_> {
        let one = self.scanning.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = self.lock();
        f.since_scan = u64::MAX;
        Scan { of: self, from: f.floor, _one: one }
    }

    /// The floor now (tests).
    #[cfg(test)]
    fn floor(&self) -> u64 {
        self.lock().floor
    }
}

/// One scan of the queue, from [`QueueFloor::scan`] to [`Scan::done`].
pub struct Scan<'a> {
    of: &'a QueueFloor,
    /// Where the scan starts: no queued id is below it.
    pub from: u64,
    _one: std::sync::MutexGuard<'a, ()>,
}

impl Scan<'_> {
    /// The scan ended: `first` is the first id it met (u64::MAX: none), `registered` the lowest
    /// id registered as undurable when it began (u64::MAX: none).
    pub fn done(self, first: u64, registered: u64) {
        let mut f = self.of.lock();
        f.floor = first.min(registered).min(f.since_scan);
        f.since_scan = u64::MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_raises_the_floor_to_what_it_met_and_no_further_than_what_raced_it() {
        let f = QueueFloor::default();
        assert_eq!(f.scan().from, 0, "the first scan starts at the beginning");
        f.scan().done(500, u64::MAX);
        assert_eq!(f.floor(), 500);
        // Queued between scans: lowers the floor at once.
        f.queued(300);
        assert_eq!(f.scan().from, 300);
        // Queued during a scan, below what the scan met (it was inserted behind the scan).
        let scan = f.scan();
        f.queued(400);
        scan.done(700, u64::MAX);
        assert_eq!(f.floor(), 400, "not past what was queued while the scan ran");
        // Registered (in flight) when the scan began, inserted after it passed.
        let scan = f.scan();
        assert_eq!(scan.from, 400);
        scan.done(900, 450);
        assert_eq!(f.floor(), 450);
        // An empty queue: the floor goes up to what the next write lowers it to.
        f.scan().done(u64::MAX, u64::MAX);
        assert_eq!(f.floor(), u64::MAX);
        f.queued(1_000);
        assert_eq!(f.scan().from, 1_000);
    }
}
