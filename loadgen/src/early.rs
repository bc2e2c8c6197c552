//! Sends that leave while their thread is awake anyway.
//!
//! With a tick ([`crate::traffic::Schedule`]), a message may leave up to one tick before it is
//! due, stamped with when it leaves. The grid alone wakes a thread at the tick's start to send it;
//! but a thread that is woken meanwhile to read a frame (an ack, a delivery) can send it then, and
//! the grid's wake is saved. At 1,000 one-on-one msg/s, where a tick holds one message, a thread
//! otherwise wakes twice a message: once on the grid to send it, once to read its ack and the
//! delivery of another.
//!
//! A sender waits in [`until`]: for its grid point, or for [`awake`], which readers call after
//! each frame, once the message's window (one tick before its due time) has opened. The waiting
//! senders of a thread are one heap by window, so `awake` costs nothing when no window is open.
//! Thread-local: every executor of the load generator has its own senders and readers.

use std::cell::{Cell, RefCell};
use std::collections::BinaryHeap;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

/// One waiting send.
#[derive(Default)]
struct Waiter {
    waker: RefCell<Option<Waker>>,
    /// Its window opened while the thread was awake: it may leave.
    open: Cell<bool>,
    /// It left by its grid point instead: its heap entry is stale.
    gone: Cell<bool>,
}

struct Entry {
    from: Instant,
    waiter: Rc<Waiter>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.from == other.from
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: the heap's top is the earliest window.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.from.cmp(&self.from)
    }
}

thread_local! {
    static WAITING: RefCell<BinaryHeap<Entry>> = const { RefCell::new(BinaryHeap::new()) };
}

/// The thread is awake now: every waiting send whose window has opened may leave.
pub(crate) fn awake() {
    WAITING.with(|w| {
        let mut w = w.borrow_mut();
        // Readers call this on every frame; with no send waiting (`--send-tick-us 0`) it reads
        // no clock.
        if w.is_empty() {
            return;
        }
        let now = Instant::now();
        while w.peek().is_some_and(|e| e.from <= now) {
            let e = w.pop().expect("peeked");
            if !e.waiter.gone.get() {
                e.waiter.open.set(true);
                if let Some(waker) = e.waiter.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
        }
    });
}

/// Waiting sends, stale ones included (for tests).
#[cfg(test)]
pub(crate) fn waiting() -> usize {
    WAITING.with(|w| w.borrow().len())
}

/// Returns at `wake` (the grid point), or earlier once the thread is awake at or after `from`
/// (the window's start, at or before `wake`): at once when it is already past `from`.
pub(crate) async fn until(wake: Instant, from: Instant) {
    debug_assert!(from <= wake, "a window opens at or before its grid point");
    if Instant::now() >= from {
        return;
    }
    let waiter = Rc::new(Waiter::default());
    WAITING.with(|w| {
        let mut w = w.borrow_mut();
        // Entries of sends that left by their grid point go when they reach the top, so the heap
        // holds about one entry per waiting sender, not one per message sent.
        while w.peek().is_some_and(|e| e.waiter.gone.get()) {
            w.pop();
        }
        w.push(Entry { from, waiter: waiter.clone() });
    });
    let mut grid = std::pin::pin!(crate::rt::sleep_until(wake));
    std::future::poll_fn(|cx| {
        if waiter.open.get() || grid.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        *waiter.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
    waiter.gone.set(true);
    waiter.waker.borrow_mut().take();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Sends that left by their grid point, with no reader to wake the thread, leave no entries
    /// behind: the heap holds the waiting senders, not every message sent.
    #[test]
    fn sends_that_left_by_their_grid_point_leave_no_entries_behind() {
        let left = glommio::LocalExecutor::default().run(async {
            for _ in 0..100 {
                let now = Instant::now();
                until(now + Duration::from_millis(2), now + Duration::from_millis(1)).await;
            }
            waiting()
        });
        assert!(left <= 1, "{left} entries left for 100 sends");
    }
}
