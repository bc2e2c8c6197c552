//! The store's background threads run at the niceness the configuration adds, and the threads
//! that open the store keep theirs. Its own test binary: the threads of other tests' stores
//! would be counted too in a shared process.

use shardchat_storage_fjall::{FjallStore, StoreConfig};

/// (thread name, niceness) of every thread of this process.
fn threads() -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("Linux /proc") {
        let path = task.expect("a task").path();
        let (Ok(comm), Ok(stat)) = (std::fs::read_to_string(path.join("comm")), std::fs::read_to_string(path.join("stat"))) else {
            continue; // the thread ended while being read
        };
        // The fields after the name, which is in parentheses and may hold spaces: state is
        // field 3, niceness field 19.
        let after = &stat[stat.rfind(')').expect("stat has the name in parentheses") + 2..];
        let nice = after.split(' ').nth(16).expect("stat has a niceness").parse().expect("a number");
        out.push((comm.trim().to_string(), nice));
    }
    out
}

fn own_nice() -> i32 {
    // SAFETY: a plain syscall.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
}

#[test]
fn the_store_s_workers_run_at_the_added_niceness_and_the_opener_keeps_its_own() {
    let before = own_nice();
    let dir = tempfile::tempdir().unwrap();
    let store = FjallStore::open(&StoreConfig { maintenance_nice: 7, ..StoreConfig::new(dir.path()) }).unwrap();
    let workers: Vec<i32> = threads().into_iter().filter(|(name, _)| name.starts_with("fjall")).map(|(_, n)| n).collect();
    assert!(!workers.is_empty(), "fjall starts background threads when it opens: {:?}", threads());
    assert!(workers.iter().all(|&n| n == (before + 7).min(19)), "fjall's threads at {workers:?}, the opener at {before}");
    assert_eq!(own_nice(), before, "the thread that opened the store keeps its niceness");
    drop(store);

    // 0 adds nothing: the workers run at the opener's niceness.
    let dir = tempfile::tempdir().unwrap();
    let _store = FjallStore::open(&StoreConfig::new(dir.path())).unwrap();
    let workers: Vec<i32> = threads().into_iter().filter(|(name, _)| name.starts_with("fjall")).map(|(_, n)| n).collect();
    assert!(
        !workers.is_empty() && workers.iter().all(|&n| n == before),
        "the second store's workers at the opener's niceness ({before}): {workers:?}"
    );
}
