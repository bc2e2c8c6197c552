//! The store's background threads run at the niceness the configuration adds, and the threads
//! that open the store keep theirs. Its own test binary: the threads of other tests' stores
//! would be counted too in a shared process.

use shardchat_storage_fjall::{nice, FjallStore, StoreConfig};

/// The niceness of each of fjall's threads in this process.
fn fjall_threads() -> Vec<i32> {
    let threads = nice::of_threads(std::process::id()).unwrap();
    threads.into_iter().filter(|(name, _)| name.starts_with("fjall")).map(|(_, n)| n).collect()
}

#[test]
fn the_store_s_workers_run_at_the_added_niceness_and_the_opener_keeps_its_own() {
    let before = nice::own().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = FjallStore::open(&StoreConfig { maintenance_nice: 7, ..StoreConfig::new(dir.path()) }).unwrap();
    let workers = fjall_threads();
    assert!(!workers.is_empty(), "fjall starts background threads when it opens");
    assert!(
        workers.iter().all(|&n| n == (before + 7).min(nice::NICE_MAX.into())),
        "fjall's threads at {workers:?}, the opener at {before}"
    );
    assert_eq!(nice::own().unwrap(), before, "the thread that opened the store keeps its niceness");
    drop(store);

    // 0 adds nothing: the workers run at the opener's niceness.
    let dir = tempfile::tempdir().unwrap();
    let _store = FjallStore::open(&StoreConfig::new(dir.path())).unwrap();
    let workers = fjall_threads();
    assert!(
        !workers.is_empty() && workers.iter().all(|&n| n == before),
        "the second store's workers at the opener's niceness ({before}): {workers:?}"
    );
}
