//! The vendored glommio's patches (vendor/README.md). First: an executor preempted before it ran any
//! task queue must not park. Unpatched, this hangs: with a 10 µs preemption timer the timer fires
//! between the reactor's poll and the first queue almost every turn, the executor parks with its
//! own tasks runnable, and nothing ever wakes it (no task of 2,000 ran in 15 s, in each of 3 runs
//! on the 2-core development machine; with the patch all ran, in about 20 ms).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Tasks spawned and awaited one after the other by [`runs_to_the_end`].
const TASKS: usize = 2_000;

/// Spawns and awaits [`TASKS`] tasks on an executor with a tiny preemption timer. `Err` with the
/// tasks done if it stopped: no task finished for `stall`. A slow executor is not a hung one: a
/// timer shorter than one pass of the reactor (5 µs, as this test first had, on a VM slower than
/// usual) leaves a patched executor getting through a task every ~20 ms, which is progress, and
/// is told from a park with runnable tasks, which makes none. `cap` bounds the whole run.
fn runs_to_the_end(preempt_us: u64, stall: Duration, cap: Duration) -> Result<(), usize> {
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    // The thread is left behind if it hangs (the test then fails; its executor never returns).
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .preempt_timer(Duration::from_micros(preempt_us))
            .make()
            .expect("executor");
        ex.run(async move {
            for _ in 0..TASKS {
                glommio::spawn_local(async { futures_lite::future::yield_now().await }).await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let _ = tx.send(());
    });
    let started = Instant::now();
    let mut seen = 0;
    loop {
        if rx.recv_timeout(stall).is_ok() {
            return Ok(());
        }
        let now = done.load(Ordering::Relaxed);
        if now == seen || started.elapsed() > cap {
            return Err(now);
        }
        seen = now;
    }
}

#[test]
fn an_executor_preempted_before_running_anything_does_not_park() {
    for round in 0..3 {
        if let Err(done) = runs_to_the_end(10, Duration::from_secs(5), Duration::from_secs(120)) {
            panic!("round {round}: the executor stopped after {done} of {TASKS} tasks (parked with runnable tasks, or too slow)");
        }
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

/// This thread's voluntary context switches so far: each time it slept and was woken.
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("read /proc/thread-self/status");
    let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).expect("a voluntary_ctxt_switches line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a count")
}

/// Two executors over the channel mesh, with queues of `capacity`: the first (the producer)
/// sends `items` as fast as it can and then runs `then`; the second receives them and runs
/// `consume` on each. Returns what `then` returned, or `None` if the two had not finished within
/// `within` (a wake-up lost for good).
fn over_the_mesh<P: Send + 'static>(
    capacity: usize,
    items: u64,
    within: Duration,
    then: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = P>>> + Send + 'static,
    consume: impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static,
) -> Option<P> {
    use glommio::channels::channel_mesh::MeshBuilder;
    let mesh = MeshBuilder::<u64, _>::full(2, capacity);
    let (tx_out, rx_out) = mpsc::channel();
    let (tx_done, rx_done) = mpsc::channel();
    let m = mesh.clone();
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
        let out = ex.run(async move {
            let (tx, _rx) = m.join().await.unwrap();
            assert_eq!(tx.peer_id(), 0, "the producer joins first");
            for i in 0..items {
                tx.send_to(1, i).await.unwrap();
            }
            then().await
        });
        let _ = tx_out.send(out);
    });
    // The producer takes peer 0: let it join first.
    std::thread::sleep(Duration::from_millis(50));
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
        ex.run(async move {
            let (_tx, mut rx) = mesh.join().await.unwrap();
            let (_, inbox) = rx.streams().pop().unwrap();
            for i in 0..items {
                assert_eq!(inbox.recv().await.unwrap(), i);
                consume(i).await;
            }
        });
        let _ = tx_done.send(());
    });
    let out = rx_out.recv_timeout(within).ok()?;
    rx_done.recv_timeout(within).ok()?;
    Some(out)
}

/// The third patch (vendor/README.md): a consumer wakes the producer's executor only when its
/// pop frees a full queue. Here the queue holds 2 and the producer sends 20,000 as fast as it
/// can, so it waits for room all the time while the consumer, pausing now and then, parks: a
/// producer that registered for room and was not woken hangs the exchange. (With pops never
/// waking the producer, it hangs at once.)
#[test]
fn a_producer_waiting_for_room_is_woken_by_the_pop_that_frees_it() {
    const ITEMS: u64 = 20_000;
    let sent = over_the_mesh(
        2,
        ITEMS,
        Duration::from_secs(60),
        || Box::pin(async { ITEMS }),
        |i| {
            Box::pin(async move {
                if i % 64 == 0 {
                    glommio::timer::sleep(Duration::from_micros(200)).await;
                }
            })
        },
    );
    assert_eq!(sent, Some(ITEMS), "a producer waiting for room was never woken and the exchange hung");
}

/// ... and a pop from a queue with room wakes nobody. The producer sends 100 (the queue holds
/// 256) and sleeps 400 ms while the consumer takes them one every 2 ms: the producer's thread
/// should sleep through it. Upstream, every pop wrote the producer's eventfd: 100 wakes for
/// nothing, one per cross-shard message in the engine.
#[test]
fn a_pop_from_a_queue_with_room_does_not_wake_the_producer() {
    const ITEMS: u64 = 100;
    let woken = over_the_mesh(
        256,
        ITEMS,
        Duration::from_secs(60),
        || {
            Box::pin(async {
                let before = voluntary_switches();
                glommio::timer::sleep(Duration::from_millis(400)).await;
                voluntary_switches() - before
            })
        },
        |_| Box::pin(glommio::timer::sleep(Duration::from_millis(2))),
    )
    .expect("the exchange finished");
    assert!(woken < ITEMS / 4, "the producer was woken {woken} times while the consumer took {ITEMS} items");
}

/// Runs `task` on an executor of its own (spinning `spin` before each park) while another thread
/// connects a TCP client to it and, 50 ms later, writes one byte. `task` gets the accepted
/// stream. `false` if the executor had not finished within `within`.
fn with_a_byte_from_another_thread(
    spin: Option<Duration>,
    within: Duration,
    task: impl FnOnce(glommio::net::TcpStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static,
) -> bool {
    let (tx_addr, rx_addr) = mpsc::channel();
    let (tx_done, rx_done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound);
        if let Some(spin) = spin {
            b = b.spin_before_park(spin);
        }
        b.make().expect("executor").run(async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            tx_addr.send(listener.local_addr().expect("addr")).unwrap();
            let stream = listener.accept().await.expect("accept");
            task(stream).await;
        });
        let _ = tx_done.send(());
    });
    let addr = rx_addr.recv_timeout(within).expect("the executor listens");
    let mut client = std::net::TcpStream::connect(addr).expect("connect");
    std::thread::sleep(Duration::from_millis(50));
    std::io::Write::write_all(&mut client, b"x").expect("write");
    rx_done.recv_timeout(within).is_ok()
}

/// The eighth patch (vendor/README.md): the rings run with `COOP_TASKRUN`, so a completion that
/// another core raises (here a socket made readable by a client thread) is posted only when the
/// executor's thread next enters the kernel, not by interrupting it. An executor spinning before
/// it parks enters no kernel on its own: it must still see the byte while it spins (the spin is
/// 60 s, the limit 20 s). With the rings' task work deferred to an explicit wait for events
/// (`DEFER_TASKRUN` without the enter that `run_task_work` makes) this waits out the spin.
#[test]
fn a_spinning_executor_sees_what_another_core_completes() {
    let read = with_a_byte_from_another_thread(Some(Duration::from_secs(60)), Duration::from_secs(20), |mut s| {
        Box::pin(async move {
            let mut b = [0u8; 1];
            assert_eq!(futures_lite::AsyncReadExt::read(&mut s, &mut b).await.expect("read"), 1);
        })
    });
    assert!(read, "the spinning executor did not see the byte within 20 s");
}

/// ... and an executor that never runs out of work, so never parks, sees it too: one task yields
/// in a loop until the reader task has the byte.
#[test]
fn an_executor_that_never_parks_sees_what_another_core_completes() {
    let read = with_a_byte_from_another_thread(None, Duration::from_secs(20), |mut s| {
        Box::pin(async move {
            let got = std::rc::Rc::new(std::cell::Cell::new(false));
            let flag = got.clone();
            let busy = glommio::spawn_local(async move {
                while !flag.get() {
                    futures_lite::future::yield_now().await;
                }
            });
            let mut b = [0u8; 1];
            assert_eq!(futures_lite::AsyncReadExt::read(&mut s, &mut b).await.expect("read"), 1);
            got.set(true);
            busy.await;
        })
    });
    assert!(read, "the busy executor did not see the byte within 20 s");
}
