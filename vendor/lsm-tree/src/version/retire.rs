// shardchat patch (see vendor/README.md in shardchat): versions retired by
// `SuperVersions::maintenance` are dropped on a thread of their own.

//! Dropping retired super versions off the caller's thread.
//!
//! `SuperVersions::maintenance` runs with the tree's version-history write lock held (its
//! callers take the lock to call it), and a retired version can hold the last reference to a
//! flushed memtable: a crossbeam skiplist of up to `max_memtable_size` (64 MiB by default),
//! freed node by node. Dropped there, that took 60–160 ms on a 2-core machine, during which
//! every insert into the tree waited for the lock, and with it every batch commit of the whole
//! database (fjall applies a batch holding its journal lock). So the retired versions go to one
//! dropper thread; the lock is held only to move them out.

use super::super_version::SuperVersion;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    mpsc, OnceLock,
};

/// Batches of retired versions the dropper thread has dropped (for tests).
static DROPPED_BATCHES: AtomicU64 = AtomicU64::new(0);

/// The dropper thread's inbox; `None` when the thread could not be started (then the caller
/// drops, as upstream does).
static DROPPER: OnceLock<Option<mpsc::Sender<Vec<SuperVersion>>>> = OnceLock::new();

fn dropper() -> Option<&'static mpsc::Sender<Vec<SuperVersion>>> {
    DROPPER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Vec<SuperVersion>>();
            std::thread::Builder::new()
                .name("lsm-tree:retire".into())
                .spawn(move || {
                    for batch in rx {
                        drop(batch);
                        DROPPED_BATCHES.fetch_add(1, Ordering::Release);
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Drops `retired` on the dropper thread (inline only if it cannot run).
pub(crate) fn retire(retired: Vec<SuperVersion>) {
    if retired.is_empty() {
        return;
    }
    match dropper() {
        Some(tx) => {
            // A send fails only once the thread is gone; the batch comes back and drops here.
            if let Err(mpsc::SendError(batch)) = tx.send(retired) {
                drop(batch);
            }
        }
        None => drop(retired),
    }
}

/// How many batches of retired versions were dropped off their caller's thread so far.
#[doc(hidden)]
#[must_use]
pub fn retired_batches_dropped() -> u64 {
    DROPPED_BATCHES.load(Ordering::Acquire)
}
