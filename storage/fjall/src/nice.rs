//! fjall's background threads (memtable flushes, compactions) at a lower CPU weight than the
//! threads that answer clients.
//!
//! Why: a memtable flush is a burst of about a quarter of a second of CPU (a 64 MiB memtable
//! encoded, compressed and written). At equal weight it takes its share of whatever core it lands
//! on: on a core a shard keeps 85% busy, the shard was cut to 60% for the length of the flush,
//! ops queued, commits grew to hundreds of ops and 20–40 ms each, and p99 went from under 10 ms to
//! 60–130 ms (perf samples by thread against the log of slow commits, `direct` at 15,000 msg/s;
//! ARCHITECTURE.md, storage). At niceness 10 (weight 110 against a shard's 1024, about a tenth)
//! the flush takes the core's idle time and only a sliver of the shard's.
//!
//! The price, under sustained saturation: with no idle time left, flushes and compactions fall
//! behind, and fjall's own backpressure (writers slowed at 20 level-0 runs, stopped at 30 or at
//! 4 sealed memtables) slows the commits. One-on-one at 30,000 msg/s for 60 s, past what one
//! core holds, every message was acknowledged at niceness 0 (3 runs; p99 1.2–5.2 s), while at
//! 3, 5 and 10 commits grew to the owner's 100,000-op bound and 71,000–197,000 sends were
//! refused `unavailable` (p99 9–12 s). A host run at its limit for long sets 0.
//!
//! How: Linux gives a new thread its creator's niceness, and fjall starts its worker pool while
//! the database opens. So the database is opened on a short-lived thread that first raises its
//! own niceness; the workers it starts inherit it, and the caller's threads keep theirs (raising
//! niceness needs no privilege; lowering it again would, which is why it is not done in place).

use std::io;

/// The highest niceness Linux has (the lowest weight).
pub const NICE_MAX: u8 = 19;

/// Runs `open` on a thread of its own whose niceness is the caller's plus `nice` (0: the
/// caller's thread, unchanged), so that every thread `open` starts inherits it; returns what
/// `open` returned.
pub fn open_at_nice<T: Send>(nice: u8, open: impl FnOnce() -> T + Send) -> io::Result<T> {
    assert!(nice <= NICE_MAX, "niceness {nice} is beyond {NICE_MAX}");
    if nice == 0 {
        return Ok(open());
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("store-open".into())
            .spawn_scoped(s, move || {
                raise_own_nice(nice)?;
                Ok(open())
            })?
            .join()
            // A panic inside `open` is the caller's, as if it had opened the store itself.
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Adds `by` to the calling thread's niceness.
fn raise_own_nice(by: u8) -> io::Result<()> {
    let to = (own()? + by as i32).min(NICE_MAX as i32);
    // SAFETY: a plain syscall with no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, gettid(), to) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's niceness (the thread's only: on Linux `PRIO_PROCESS` with a thread id
/// names that thread).
pub fn own() -> io::Result<i32> {
    // SAFETY: plain syscalls with no pointers; errno is this thread's.
    unsafe {
        // -1 is a valid niceness: errno tells a failure apart.
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, gettid());
        if now == -1 && *libc::__errno_location() != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(now)
    }
}

/// (name, niceness) of each thread of process `pid`, from `/proc`: where the tests see which
/// threads run at which weight. A thread that ends while being read is left out.
pub fn of_threads(pid: u32) -> io::Result<Vec<(String, i32)>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path();
        let (Ok(comm), Ok(stat)) = (std::fs::read_to_string(path.join("comm")), std::fs::read_to_string(path.join("stat"))) else {
            continue;
        };
        // The name is in parentheses and may hold spaces: the fields after it run from the state
        // (field 3) to the niceness (field 19).
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("{}: {stat:?}", path.display()));
        let after = stat.rfind(')').and_then(|i| stat.get(i + 2..)).ok_or_else(bad)?;
        let nice = after.split(' ').nth(16).and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        out.push((comm.trim().to_string(), nice));
    }
    Ok(out)
}

fn gettid() -> libc::id_t {
    // SAFETY: a plain syscall with no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
}
