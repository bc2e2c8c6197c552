//! The vendored glommio's patches (vendor/README.md). First: an executor preempted before it ran any
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

/// The second patch (vendor/README.md): the sleep handshake with SeqCst fences in place of a
/// `membarrier` per park. Two executors bounce a counter over the channel mesh, the sender
/// pausing with a blocking spin of 0–150 µs between messages so that the receiver parks about
/// half the time, right as a message may be landing: a lost wake-up leaves the receiver asleep
/// with an entry in its queue and the exchange never finishes. (With `prepare_to_sleep` not
/// raising the flag, the first parked receiver hangs it.)
#[test]
fn a_parked_executor_is_woken_by_every_cross_executor_message() {
    use glommio::channels::channel_mesh::MeshBuilder;
    const ROUND_TRIPS: u64 = 5_000;
    let (tx_done, rx_done) = mpsc::channel();
    let mesh = MeshBuilder::<u64, _>::full(2, 64);
    for _ in 0..2 {
        let (mesh, tx_done) = (mesh.clone(), tx_done.clone());
        std::thread::spawn(move || {
            let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
            ex.run(async move {
                let (tx, mut rx) = mesh.join().await.unwrap();
                let peer = 1 - tx.peer_id();
                let (_, inbox) = rx.streams().pop().unwrap();
                let leader = tx.peer_id() == 0;
                for i in 0..ROUND_TRIPS {
                    if leader {
                        // A cheap deterministic spread of pauses, no RNG crate for a test.
                        let pause = Duration::from_micros((i * 7919) % 151);
                        let t = std::time::Instant::now();
                        while t.elapsed() < pause {
                            std::hint::spin_loop();
                        }
                        tx.send_to(peer, i).await.unwrap();
                        assert_eq!(inbox.recv().await.unwrap(), i);
                    } else {
                        let v = inbox.recv().await.unwrap();
                        tx.send_to(peer, v).await.unwrap();
                    }
                }
            });
            let _ = tx_done.send(());
        });
    }
    for side in 0..2 {
        assert!(rx_done.recv_timeout(Duration::from_secs(60)).is_ok(), "side {side}: a wake-up was lost and the exchange hung");
    }
}
