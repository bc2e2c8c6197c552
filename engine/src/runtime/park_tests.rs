//! The vendored glommio's one patch (vendor/README.md): an executor preempted before it ran any
//! task queue must not park. Unpatched, this hangs: with a 5 µs preemption timer the timer fires
//! between the reactor's poll and the first queue almost every turn, the executor parks with its
//! own tasks runnable, and nothing ever wakes it (10 of 10 runs hung on the 2-core development
//! machine; with the patch 0 of 10).

use std::sync::mpsc;
use std::time::Duration;

/// Spawns and awaits tasks on an executor with a tiny preemption timer; `true` if it finished.
fn finishes(preempt_us: u64, within: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    // The thread is left behind if it hangs (the test then fails; its executor never returns).
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .preempt_timer(Duration::from_micros(preempt_us))
            .make()
            .expect("executor");
        ex.run(async {
            for _ in 0..2_000 {
                glommio::spawn_local(async { futures_lite::future::yield_now().await }).await;
            }
        });
        let _ = tx.send(());
    });
    rx.recv_timeout(within).is_ok()
}

#[test]
fn an_executor_preempted_before_running_anything_does_not_park() {
    for round in 0..3 {
        assert!(finishes(5, Duration::from_secs(30)), "round {round}: the executor parked with runnable tasks and hung");
    }
}
