//! The message scenarios (`direct`, `group:SIZE`): senders on an open-loop schedule, receivers
//! checking seq contiguity, and the latency histograms they share.

use crate::rt::Ws;
use crate::*;
use futures::StreamExt;
use hdrhistogram::Histogram;
use shardchat_codec::{ClientFrame, MsgKind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Where a sender's messages go.
pub(crate) enum Dest {
    To(String),
    Conv(String),
}

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) latency: Mutex<Option<Histogram<u64>>>,
    pub(crate) ack_latency: Mutex<Option<Histogram<u64>>>,
    /// Deliveries in each second of the run.
    pub(crate) series: Mutex<Vec<u64>>,
    pub(crate) typing: AtomicU64,
    pub(crate) receipts: AtomicU64,
    pub(crate) presence: AtomicU64,
    pub(crate) binary_frames: AtomicU64,
}

pub(crate) fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

pub(crate) async fn direct(args: &Args, report: &mut Report) {
    fanout(args, report, 2).await
}

/// Groups of `size` users (`size` 2: direct pairs); member 0 of each sends, the others receive.
pub(crate) async fn fanout(args: &Args, report: &mut Report, size: usize) {
    let groups = (args.connections / size).max(1);
    let mut users = Vec::new();
    for g in 0..groups {
        for m in 0..size {
            users.push(format!("{}g{g}m{m}", args.prefix));
        }
    }
    let conns = connect_all(args, users, report).await;
    let shared = Arc::new(Shared::with_histograms());
    let per_sender_rate = (args.rate as f64 / groups as f64).max(0.001);
    let interval = Duration::from_secs_f64(1.0 / per_sender_rate);
    let total_per_sender = (per_sender_rate * args.duration as f64).round() as u64;
    let body_pad = "x".repeat(args.payload.saturating_sub(24));
    let mut conns = conns.into_iter();
    let mut tasks = Vec::new();
    let pb = progress(groups as u64, "groups");
    let mut plans = Vec::new();
    for g in 0..groups {
        let members: Vec<Option<Ws>> = (0..size).map(|_| conns.next().flatten()).collect();
        if members.iter().any(Option::is_none) {
            continue;
        }
        let mut members: Vec<Ws> = members.into_iter().flatten().collect();
        // Direct pairs use `to`; groups are created first and addressed by `conv`.
        let (dest, first_seq) = if size == 2 {
            (Dest::To(format!("{}g{g}m1", args.prefix)), 1)
        } else {
            let names: Vec<String> = (1..size).map(|m| format!("{}g{g}m{m}", args.prefix)).collect();
            match create_group(&mut members[0], &names).await {
                Some(conv) => (Dest::Conv(conv), 2),
                None => {
                    report.errors += 1;
                    continue;
                }
            }
        };
        pb.inc(1);
        plans.push((members, dest, first_seq));
    }
    pb.finish();
    let epoch = Epoch::after(Duration::from_millis(200));
    let start = epoch.at;
    let cpu = CpuMark::now(args.cpu_of);
    let receivers_per_group = (size - 1) as u64;
    let n_plans = plans.len();
    for (i, (mut members, dest, first_seq)) in plans.into_iter().enumerate() {
        let sender_ws = members.remove(0);
        let (sh, pad) = (shared.clone(), body_pad.clone());
        // Spread the senders' phases over one interval so the aggregate rate is smooth.
        let phase = interval.mul_f64(i as f64 / n_plans.max(1) as f64);
        let schedule = Schedule { epoch, start: start + phase, interval, total: total_per_sender, tick: args.send_tick() };
        tasks.push(crate::rt::spawn(sender(sender_ws, dest, sh.clone(), pad, schedule, args.binary)));
        for ws in members {
            tasks.push(crate::rt::spawn(receiver(
                ws,
                sh.clone(),
                total_per_sender,
                first_seq,
                start + Duration::from_secs(args.duration + 10),
                args.binary,
            )));
        }
    }
    let pb = progress(total_per_sender * n_plans as u64 * receivers_per_group, "deliver");
    let ticker = {
        let sh = shared.clone();
        let pb = pb.clone();
        crate::rt::spawn(async move {
            let (mut tick, mut last) = (0u64, 0u64);
            loop {
                glommio::timer::sleep(Duration::from_millis(200)).await;
                let now = sh.delivered.load(Relaxed);
                pb.set_position(now);
                tick += 1;
                if tick % 5 == 0 {
                    sh.series.lock().unwrap().push(now - last);
                    last = now;
                }
            }
        })
    };
    for t in tasks {
        t.await;
    }
    drop(ticker); // cancels it
    pb.finish();
    shared.finish(args, report, start, cpu);
}

impl Shared {
    pub(crate) fn with_histograms() -> Self {
        Shared { latency: Mutex::new(Some(hist())), ack_latency: Mutex::new(Some(hist())), ..Default::default() }
    }

    /// Records into `h` (one of this run's histograms) the time since `sent_us` (Unix µs).
    ///
    /// Every task of an executor records into its scenario's one pair of histograms, not into
    /// a histogram of its own merged at the end: one is 139 KiB of counts (microseconds up to a
    /// minute, 3 significant digits), so one per task scattered every record over a different
    /// page (4% of the load generator's CPU in 100-member groups) and would have cost gigabytes
    /// at 100,000 connections. The lock is never contended: a scenario's tasks share one
    /// executor thread (each thread runs the scenario on its own share, see `procs.rs`).
    pub(crate) fn record(&self, h: &Mutex<Option<Histogram<u64>>>, sent_us: u64) {
        if let Some(h) = h.lock().unwrap().as_mut() {
            let _ = h.record(now_us().saturating_sub(sent_us).max(1));
        }
    }

    /// Moves the counters and histograms into the report once a run is over; `cpu` marks the
    /// start of the phase measured.
    pub(crate) fn finish(&self, args: &Args, report: &mut Report, start: Instant, cpu: CpuMark) {
        cpu.spent(args.cpu_of, report);
        report.sent = self.sent.load(Relaxed);
        report.acked = self.acked.load(Relaxed);
        report.delivered = self.delivered.load(Relaxed);
        report.duplicates = self.duplicates.load(Relaxed);
        report.lost = self.lost.load(Relaxed);
        report.errors += self.errors.load(Relaxed);
        report.send_seconds = start.elapsed().as_secs_f64();
        report.delivered_per_second = report.delivered as f64 / args.duration.max(1) as f64;
        let lat = self.latency.lock().unwrap().take().unwrap_or_else(hist);
        let ack = self.ack_latency.lock().unwrap().take().unwrap_or_else(hist);
        report.hists = Some((lat, ack));
        report.delivered_series = std::mem::take(&mut *self.series.lock().unwrap());
        report.binary_frames_received = self.binary_frames.load(Relaxed);
    }
}

/// Creates a group with `members` (the creator is added as admin) and returns its id.
pub(crate) async fn create_group(ws: &mut Ws, members: &[String]) -> Option<String> {
    let frame = serde_json::json!({"t":"group_create","name":"load","members":members,"ref":"lg"});
    ws.send(Message::Text(frame.to_string().into())).await.ok()?;
    loop {
        let m = crate::rt::timeout(Duration::from_secs(30), ws.next()).await.ok()??.ok()?;
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).ok()?;
            if v["t"] == "group" && v["ref"] == "lg" {
                return v["conv"].as_str().map(str::to_string);
            }
            if v["t"] == "error" {
                eprintln!("group_create failed: {v}");
                return None;
            }
        }
    }
}

/// The run's start on both clocks, read once for all senders. Every intended send time is an
/// offset from it on the monotonic clock, stamped as the same offset from its wall-clock time,
/// so a sender whose first wake comes late (a busy core, a slow spawn) still stamps each
/// message with when it was due: the delay shows as latency (true coordinated-omission
/// correction) instead of shifting that sender's whole schedule.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epoch {
    pub(crate) at: Instant,
    /// Unix µs at `at`.
    pub(crate) wall_us: u64,
}

impl Epoch {
    /// An epoch `delay` from now.
    pub(crate) fn after(delay: Duration) -> Epoch {
        let (now, wall) = (Instant::now(), now_us());
        Epoch { at: now + delay, wall_us: wall + delay.as_micros() as u64 }
    }

    /// The wall-clock time (Unix µs) of `t`, an instant at or after the epoch.
    pub(crate) fn wall_of(&self, t: Instant) -> u64 {
        debug_assert!(t >= self.at, "a schedule never starts before its run");
        self.wall_us + t.saturating_duration_since(self.at).as_micros() as u64
    }
}

/// When a sender sends: `total` messages, one every `interval` from `start` (at or after the
/// run's `epoch`). The body carries each message's stamp, so latency includes any time the
/// schedule slipped.
///
/// With a `tick`, a message is sent at the last multiple of `tick` from the epoch at or before
/// its due time: every sender of a thread then wakes on the same grid, so a thread wakes once a
/// tick (not once a message) and writes the tick's messages back to back, and the server reads
/// them in one wake as well. Measured at 10,000 one-on-one msg/s on this 2-core VM, a 1 ms tick
/// took the load generator from 57-61 to 37-46 µs of CPU a message and the engine from 73-78 to
/// 63-78 (against the tokio relay: 68 to 37-40 and 39-41 to 31-32): most of what a smooth schedule costs
/// is the wake-ups, each one an interrupt to the other core (`sock_def_readable` under `send`
/// was 12% of the load generator's samples). A thread woken before a grid point to read a frame
/// sends what falls due within a tick of then (see [`crate::early`]): the same bound on how early
/// a message leaves, one wake fewer. See [`Ticks::next`] for the stamps.
#[derive(Clone, Copy)]
pub(crate) struct Schedule {
    pub(crate) epoch: Epoch,
    pub(crate) start: Instant,
    pub(crate) interval: Duration,
    pub(crate) total: u64,
    /// The grid senders wake on; zero: each message at its own due time.
    pub(crate) tick: Duration,
}

impl Schedule {
    /// When a send due at `due` wakes its sender: the grid point at or before it.
    pub(crate) fn wake(&self, due: Instant) -> Instant {
        let tick = self.tick.as_nanos();
        if tick == 0 {
            return due;
        }
        let offset = due.saturating_duration_since(self.epoch.at).as_nanos();
        self.epoch.at + Duration::from_nanos((offset - offset % tick) as u64)
    }

    /// When the last send is due.
    pub(crate) fn end(&self) -> Instant {
        self.start + self.interval.mul_f64(self.total as f64)
    }

    /// When send `k` is due.
    pub(crate) fn due(&self, k: u64) -> Instant {
        self.start + self.interval.mul_f64(k as f64)
    }

    /// Walks the schedule open loop: see [`Ticks::next`].
    pub(crate) fn ticks(self) -> Ticks {
        Ticks { s: self, k: 0 }
    }
}

pub(crate) struct Ticks {
    pub(crate) s: Schedule,
    pub(crate) k: u64,
}

impl Ticks {
    /// Waits until send `k`'s grid point, or less once its thread is awake within a tick of its
    /// due time, and gives `k` and its stamp. A send that goes out late is stamped with the
    /// wall-clock time it was due (from the run's epoch), not when it happened, so a stalled
    /// sender or server shows up as latency (coordinated omission corrected); one that goes out
    /// early, at most a tick ahead of its due time, is stamped with now, when it leaves, so the
    /// tick never hides latency either. `None` once all are sent.
    pub(crate) async fn next(&mut self) -> Option<(u64, u64)> {
        let k = self.k;
        if k >= self.s.total {
            return None;
        }
        let due = self.s.due(k);
        let wake = self.s.wake(due);
        if self.s.tick.is_zero() {
            crate::rt::sleep_until(wake).await;
        } else {
            // Its window opens a tick before it is due, never before the run's start: so at or
            // before its grid point, which is less than a tick before it is due.
            let from = due.checked_sub(self.s.tick).map_or(self.s.epoch.at, |t| t.max(self.s.epoch.at));
            crate::early::until(wake, from).await;
        }
        self.k += 1;
        Some((k, self.s.epoch.wall_of(due).min(now_us())))
    }
}

pub(crate) async fn sender(ws: Ws, dest: Dest, sh: Arc<Shared>, pad: String, schedule: Schedule, binary: bool) {
    let total = schedule.total;
    let (mut tx, mut rx) = ws.split();
    let sh2 = sh.clone();
    // One timer for the whole wait, not a timer (and two allocations) per frame: acks stop
    // counting 30 s after the last send was due.
    let ack_deadline = schedule.end() + Duration::from_secs(30);
    let acks = crate::rt::spawn(async move {
        let mut n = 0;
        let mut deadline = crate::rt::Deadline::at(ack_deadline);
        while n < total {
            let Ok(Some(Ok(m))) = deadline.run(rx.next()).await else { break };
            crate::early::awake();
            match crate::frames::answer(&m) {
                Some(crate::frames::Answer::Ack(sent)) => {
                    n += 1;
                    sh2.acked.fetch_add(1, Relaxed);
                    if let Some(sent) = sent {
                        sh2.record(&sh2.ack_latency, sent);
                    }
                }
                Some(crate::frames::Answer::Error) => {
                    sh2.errors.fetch_add(1, Relaxed);
                    n += 1;
                }
                None => {}
            }
        }
    });
    let mut ticks = schedule.ticks();
    while let Some((i, stamp)) = ticks.next().await {
        let (to, conv) = match &dest {
            Dest::To(u) => (Some(u.clone()), None),
            Dest::Conv(c) => (None, Some(c.clone())),
        };
        let frame = ClientFrame::Send {
            cmid: format!("{i}:{stamp}"),
            to,
            conv,
            body: format!("{stamp}|{pad}"),
            kind: MsgKind::Text,
            target: None,
            reply_to: None,
            media: None,
        };
        if tx.send(client_msg(&frame, binary)).await.is_err() {
            sh.errors.fetch_add(1, Relaxed);
            break;
        }
        sh.sent.fetch_add(1, Relaxed);
    }
    let _ = acks.await;
}

/// Receives until `total` messages arrived or the deadline; checks seq contiguity from
/// `first_seq` (system messages, like a group's creation, are not counted).
pub(crate) async fn receiver(mut ws: Ws, sh: Arc<Shared>, total: u64, first_seq: u64, deadline: Instant, binary: bool) {
    if binary {
        // The server answers in the encoding a connection last spoke: speak rkyv once.
        let _ = ws.send(client_msg(&ClientFrame::Ping { r#ref: None }, true)).await;
    }
    // A receiver only reads after that, so the stream is not split (a split costs a lock and a
    // waker registration on every frame).
    let mut next_seq = first_seq;
    let mut got = 0u64;
    let mut deadline = crate::rt::Deadline::at(deadline);
    while got < total {
        let m = match deadline.run(ws.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        crate::early::awake();
        if m.is_binary() {
            sh.binary_frames.fetch_add(1, Relaxed);
        }
        // The hot path of every scenario: read just the fields it needs, not a whole JSON tree
        // (that made the load generator spend more CPU than the server it measured).
        let Some((seq, sent)) = delivered_msg(&m) else { continue };
        if seq < next_seq {
            sh.duplicates.fetch_add(1, Relaxed);
            continue;
        }
        if seq > next_seq {
            sh.lost.fetch_add(seq - next_seq, Relaxed);
        }
        next_seq = seq + 1;
        got += 1;
        sh.delivered.fetch_add(1, Relaxed);
        if let Some(sent) = sent {
            sh.record(&sh.latency, sent);
        }
    }
    if got < total {
        sh.lost.fetch_add(total - got, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender whose first wake comes 60 ms late still stamps its first messages with when
    /// they were due: the stall is latency, not a shifted schedule (it was: each sender read
    /// the wall clock at its first wake, so every later stamp was late by the same delay).
    #[test]
    fn a_late_first_wake_shows_as_latency() {
        // With a tick as well: a late send goes at once and keeps its due time as its stamp.
        for tick in [Duration::ZERO, Duration::from_millis(4)] {
            let epoch = Epoch::after(Duration::from_millis(5));
            let s = Schedule { epoch, start: epoch.at + Duration::from_millis(1), interval: Duration::from_millis(2), total: 3, tick };
            let stall = Duration::from_millis(60);
            std::thread::sleep(stall);
            let stamps = run_ticks(s);
            assert_eq!(stamps.iter().map(|(k, ..)| *k).collect::<Vec<_>>(), vec![0, 1, 2]);
            for (k, stamp, sent, _) in &stamps {
                assert_eq!(*stamp, epoch.wall_us + 1_000 + 2_000 * k, "due times follow the run's epoch");
                assert!(sent - stamp >= 50_000, "send {k} went {} µs after it was due, and says so", sent - stamp);
            }
        }
    }

    /// Every send of one tick goes out at the tick's start, ahead of its due time, stamped with
    /// when it left: the senders wake together, and the early send does not pass for a fast one.
    #[test]
    fn a_tick_sends_its_messages_together_stamped_when_they_leave() {
        let epoch = Epoch::after(Duration::from_millis(5));
        // Due 200, 300 and 400 ms after the epoch, all in the tick that starts at the epoch.
        let s = Schedule {
            epoch,
            start: epoch.at + Duration::from_millis(200),
            interval: Duration::from_millis(100),
            total: 3,
            tick: Duration::from_secs(10),
        };
        let stamps = run_ticks(s);
        assert_eq!(stamps.len(), 3);
        for (k, stamp, sent, at) in &stamps {
            let due = s.due(*k);
            assert!(*at < due, "send {k} waited for its due time, not for its tick");
            assert!(*stamp < epoch.wall_of(due), "send {k} left early and is stamped with its due time");
            assert!(*stamp >= epoch.wall_us && stamp <= sent, "send {k} is stamped with when it left");
        }
    }

    /// A thread woken inside a message's window (a tick before its due time) to read a frame
    /// sends the message then, before its grid point, stamped when it leaves; woken before the
    /// window opens, it sends nothing.
    #[test]
    fn a_thread_awake_inside_a_window_sends_then() {
        let epoch = Epoch::after(Duration::from_millis(5));
        let ms = |n: u64| epoch.at + Duration::from_millis(n);
        // Due at 1,500 ms with a 1 s tick: the window opens at 500 ms, the grid point is 1,000.
        let s = Schedule { epoch, start: ms(1_500), interval: Duration::from_secs(10), total: 1, tick: Duration::from_secs(1) };
        let (k, stamp, at) = glommio::LocalExecutor::default().run(async move {
            let wakes = [ms(200), ms(600)];
            let _reader = crate::rt::spawn(async move {
                for at in wakes {
                    crate::rt::sleep_until(at).await;
                    crate::early::awake();
                }
            });
            let mut ticks = s.ticks();
            let (k, stamp) = ticks.next().await.expect("one send");
            (k, stamp, Instant::now())
        });
        assert_eq!(k, 0);
        assert!(at >= ms(600), "the send left when the thread woke before its window: {:?}", at - epoch.at);
        assert!(at < ms(1_000), "the send waited for its grid point: {:?}", at - epoch.at);
        assert!(stamp >= epoch.wall_of(ms(600)) && stamp < epoch.wall_of(ms(1_000)), "stamped when it left");
    }

    /// A frame a receiver reads counts as the thread being awake: a send whose window is open
    /// leaves then. (A server thread sends the frame 600 ms into the run.)
    #[test]
    fn a_frame_read_by_a_receiver_lets_a_waiting_send_leave() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let epoch = Epoch::after(Duration::from_millis(5));
        let ms = move |n: u64| epoch.at + Duration::from_millis(n);
        let server = std::thread::spawn(move || {
            let mut ws = tungstenite::accept(listener.accept().unwrap().0).unwrap();
            std::thread::sleep(ms(600).saturating_duration_since(Instant::now()));
            ws.send(Message::Text("{}".into())).unwrap();
            // Until the client goes.
            while ws.read().is_ok() {}
        });
        let s = Schedule { epoch, start: ms(1_500), interval: Duration::from_secs(10), total: 1, tick: Duration::from_secs(1) };
        let at = glommio::LocalExecutor::default().run(async move {
            let ws = crate::rt::connect(url, None).await.expect("connect");
            let reader = crate::rt::spawn(receiver(ws, Arc::new(Shared::default()), 1, 1, ms(3_000), false));
            s.ticks().next().await.expect("one send");
            let at = Instant::now();
            drop(reader);
            at
        });
        server.join().unwrap();
        assert!(at >= ms(600) && at < ms(1_000), "the send left at {:?}, not on the frame", at - epoch.at);
    }

    #[test]
    fn a_send_wakes_at_the_grid_point_at_or_before_it() {
        let epoch = Epoch::after(Duration::ZERO);
        let mut s = Schedule { epoch, start: epoch.at, interval: Duration::from_millis(1), total: 1, tick: Duration::from_millis(1) };
        let at = |us: u64| epoch.at + Duration::from_micros(us);
        assert_eq!(s.wake(at(2_500)), at(2_000));
        assert_eq!(s.wake(at(2_000)), at(2_000));
        assert_eq!(s.wake(at(999)), at(0));
        s.tick = Duration::ZERO;
        assert_eq!(s.wake(at(2_500)), at(2_500), "no tick: each send at its own time");
    }

    /// Walks `s` on an executor: each send's `k`, stamp, and the wall and monotonic clocks when
    /// it was given.
    fn run_ticks(s: Schedule) -> Vec<(u64, u64, u64, Instant)> {
        glommio::LocalExecutor::default().run(async move {
            let mut ticks = s.ticks();
            let mut out = Vec::new();
            while let Some((k, stamp)) = ticks.next().await {
                out.push((k, stamp, now_us(), Instant::now()));
            }
            out
        })
    }
}
