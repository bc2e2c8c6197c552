//! Parked connections: idle sockets held without a task, a stream or a reactor source.
//!
//! A connection silent for `park_idle_ms`, with nothing queued or half-sent, no half-read
//! message and no close pending, gives its descriptor to its shard's lot, and its task ends
//! (see `conn.rs`, `Exit::Park`). What stays is the shard's record of it, its `ConnHandle` and
//! an entry here: the task and glommio's readiness source of its pending read, about 1 KiB
//! together, are gone. The lot keeps the descriptors in one epoll instance, level-triggered (so
//! input that came before a descriptor was added is reported at once, never lost), and waits on
//! that instance with one reactor poll for the whole shard.
//!
//! A parked connection is unparked, its descriptor out of the epoll set and a fresh task on it,
//! when its socket has input (a frame, a ping, the client gone) or when anything wakes its
//! handle (a frame queued for it, a close asked by the shard). Invariant: a connection is
//! parked (in `parked`, its handle marked) or has a task, never both, never neither while it is
//! registered with the driver.

use super::accept::Slot;
use super::driver::Driver;
use shardchat_shard::ops::ConnId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Events taken from the epoll instance per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// What the lot holds of a parked connection.
struct Parked {
    conn: ConnId,
    /// Its place under `connections_max`, held while parked as while it runs.
    slot: Slot,
}

pub struct Lot {
    epoll: OwnedFd,
    /// By descriptor (unique among open sockets; what epoll hands back).
    parked: RefCell<HashMap<RawFd, Parked>>,
}

thread_local! {
    /// Descriptors of parked connections whose handle was woken, and the lot task's waker: a
    /// handle reaches its shard's lot here without holding a pointer to it (one lot per shard
    /// thread).
    static WOKEN: RefCell<(Vec<RawFd>, Option<Waker>)> = const { RefCell::new((Vec::new(), None)) };
}

/// Called by a parked connection's handle when something is queued for it or it is told to
/// close: its lot unparks it.
pub fn wake_parked(fd: RawFd) {
    WOKEN.with(|w| {
        let mut w = w.borrow_mut();
        w.0.push(fd);
        if let Some(waker) = w.1.take() {
            waker.wake();
        }
    });
}

impl Lot {
    pub fn new() -> io::Result<Lot> {
        // SAFETY: plain syscall; the descriptor is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nobody else owns.
        Ok(Lot { epoll: unsafe { OwnedFd::from_raw_fd(fd) }, parked: RefCell::new(HashMap::new()) })
    }

    pub fn len(&self) -> usize {
        self.parked.borrow().len()
    }

    /// Takes a connection's descriptor. On failure (the kernel refused the epoll entry) the
    /// descriptor and slot come back and the caller keeps serving the connection with a task.
    pub fn park(&self, fd: RawFd, conn: ConnId, slot: Slot) -> Result<(), (RawFd, Slot)> {
        let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: fd as u64 };
        // SAFETY: both descriptors are open; `ev` outlives the call.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "parking a connection failed; it keeps its task");
            return Err((fd, slot));
        }
        let before = self.parked.borrow_mut().insert(fd, Parked { conn, slot });
        assert!(before.is_none(), "a descriptor parked twice");
        Ok(())
    }

    /// Gives a parked connection a task again.
    fn unpark(&self, d: &Rc<Driver>, fd: RawFd) {
        let Some(Parked { conn, slot }) = self.parked.borrow_mut().remove(&fd) else { return };
        // SAFETY: `fd` is open (the lot owned it) and in the set.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        super::conn::resume(d, conn, fd, slot);
    }

    /// The lot's task: unparks connections whose socket has input or whose handle was woken.
    pub async fn run(self: Rc<Self>, d: Rc<Driver>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        let epoll = self.epoll.as_raw_fd();
        loop {
            {
                // One reactor poll on the epoll instance for every parked socket, or a wake.
                let mut readable = Box::pin(glommio::net::readable(epoll));
                std::future::poll_fn(|cx| {
                    let woken = WOKEN.with(|w| {
                        let mut w = w.borrow_mut();
                        if w.0.is_empty() {
                            w.1 = Some(cx.waker().clone());
                            false
                        } else {
                            true
                        }
                    });
                    if woken || readable.as_mut().poll(cx).is_ready() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
            }
            loop {
                // SAFETY: `events` has room for EVENTS_PER_WAIT entries; 0 ms: never blocks.
                let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), EVENTS_PER_WAIT as i32, 0) };
                if n <= 0 {
                    break;
                }
                for ev in &events[..n as usize] {
                    self.unpark(&d, ev.u64 as RawFd);
                }
                if (n as usize) < EVENTS_PER_WAIT {
                    break;
                }
            }
            let woken = WOKEN.with(|w| std::mem::take(&mut w.borrow_mut().0));
            for fd in woken {
                self.unpark(&d, fd);
            }
            d.metrics.connections_parked.store(self.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
