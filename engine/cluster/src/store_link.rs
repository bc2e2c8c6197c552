//! The link's way to the store: a call off its thread, given up after [`STORE_TIMEOUT_MS`] so a
//! store that hangs cannot stop the link (its directory writes, routing and refreshes go on; a
//! fence not written in time is owed again next refresh, and writing it twice is harmless).
//! While a call given up is still running, the next one fails at once instead of piling up
//! threads on a store that does not answer. (Store calls block, and the ScyllaDB backend runs
//! its own runtime, which must not be entered from the link's.)

use shardchat_storage::MessageStore;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest the link waits for one store call.
pub const STORE_TIMEOUT_MS: u64 = 2_000;

#[derive(Clone)]
pub struct StoreLink {
    store: Arc<dyn MessageStore>,
    busy: Arc<AtomicBool>,
    timeout: Duration,
}

impl StoreLink {
    pub fn new(store: Arc<dyn MessageStore>, timeout: Duration) -> StoreLink {
        StoreLink { store, busy: Arc::new(AtomicBool::new(false)), timeout }
    }

    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn MessageStore) -> Result<T, shardchat_storage::StoreError> + Send + 'static,
    ) -> Result<T, String> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err("the store has not answered an earlier call yet".into());
        }
        let (store, busy) = (self.store.clone(), self.busy.clone());
        let call = tokio::task::spawn_blocking(move || {
            // Cleared however the call ends (a panic included), so the link is never stuck busy.
            struct Done(Arc<AtomicBool>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(busy);
            f(&*store)
        });
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(r)) => r.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the store did not answer within {} ms", self.timeout.as_millis())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardchat_storage_mem::MemStore;

    /// A store that stops answering costs the link one timeout, then fails its calls at once
    /// until the stuck one returns; then calls go through again.
    #[tokio::test]
    async fn a_store_that_hangs_does_not_stop_the_link() {
        let mem = Arc::new(MemStore::new());
        mem.faults.reads_held.store(true, Ordering::Release);
        let link = StoreLink::new(mem.clone(), Duration::from_millis(50));
        let first = link.call(|s| s.node_fence(1)).await;
        assert!(first.unwrap_err().contains("did not answer"), "given up on, not waited for");
        let second = link.call(|s| s.fence_node(1, 5)).await;
        assert!(second.unwrap_err().contains("earlier call"), "no second thread on a stuck store");
        mem.faults.reads_held.store(false, Ordering::Release);
        while link.busy.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        link.call(|s| s.fence_node(1, 5)).await.unwrap();
        assert_eq!(link.call(|s| s.node_fence(1)).await.unwrap(), 5);
    }
}
