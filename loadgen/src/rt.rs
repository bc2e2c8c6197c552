//! The load generator's runtime: glommio, one executor pinned to each core it uses, the same
//! thread-per-core model as the engine. Every scenario runs on each executor with that thread's
//! share of the connections and of the rate (like `--procs`, within a process); the reports are
//! merged. This file holds the few primitives the scenarios need, so they read like plain async.

use futures::future::{select, Either};
use glommio::net::TcpStream;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

pub type Ws = async_tungstenite::WebSocketStream<TcpStream>;
pub type Task<T> = glommio::Task<T>;

/// Runs `f` as a task of this executor; awaiting the task gives its output, dropping it cancels.
pub fn spawn<T: 'static>(f: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(f)
}

pub async fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        glommio::timer::sleep(t - now).await;
    }
}

/// The deadline passed first.
#[derive(Debug)]
pub struct Elapsed;

pub async fn timeout_at<F: Future>(t: Instant, f: F) -> Result<F::Output, Elapsed> {
    match select(Box::pin(f), Box::pin(sleep_until(t))).await {
        Either::Left((out, _)) => Ok(out),
        Either::Right(_) => Err(Elapsed),
    }
}

pub async fn timeout<F: Future>(d: Duration, f: F) -> Result<F::Output, Elapsed> {
    timeout_at(Instant::now() + d, f).await
}

/// One deadline for a task's whole loop of waits (every frame a receiver reads), armed once.
///
/// [`timeout_at`] arms a fresh timer for each wait, and glommio re-inserts a pending timer into
/// its reactor's map on every poll: in 100-member groups, where a receiver task is woken once
/// per frame, that insert was 4% of the load generator's CPU. This polls the timer on its first
/// wait, which registers the task's waker, and after that only once the deadline is within
/// [`Deadline::SLACK`]: the registered waker still wakes the task when the timer fires, and the
/// task then sees the clock past the deadline and polls the timer again.
///
/// Use it from one task only (the waker registered on the first wait must be the one that
/// runs the later waits): not inside a `select` or `join` that gives its arms wakers of their
/// own.
pub struct Deadline {
    at: Instant,
    timer: glommio::timer::Timer,
    armed: bool,
}

impl Deadline {
    /// How close to the deadline every wait polls the timer again. A timer never fires before
    /// its time, so a wake from it always finds the clock within this of the deadline.
    pub const SLACK: Duration = Duration::from_millis(1);

    pub fn at(at: Instant) -> Deadline {
        Deadline { at, timer: glommio::timer::Timer::new(at.saturating_duration_since(Instant::now())), armed: false }
    }

    /// `f`'s output, or `Err(Elapsed)` once the deadline has passed.
    pub async fn run<F: Future>(&mut self, f: F) -> Result<F::Output, Elapsed> {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(out) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready(Ok(out));
            }
            if !self.armed || Instant::now() + Self::SLACK >= self.at {
                self.armed = true;
                if std::pin::Pin::new(&mut self.timer).poll(cx).is_ready() {
                    return std::task::Poll::Ready(Err(Elapsed));
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// Opens a WebSocket to `url`, from local address `from` when given. The socket connects
/// without blocking (a loopback connect completes at once; elsewhere the first write waits for
/// it) and has TCP_NODELAY: without it two frames written back to back (typing, then send) meet
/// Nagle's algorithm and the server's delayed ACK, 40 ms added to the second.
pub async fn connect(url: String, from: Option<IpAddr>) -> Result<Ws, String> {
    let uri: tungstenite::http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("no host in --target")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let to: SocketAddr = (host.as_str(), port).to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("target does not resolve")?;
    let sock = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None).map_err(|e| e.to_string())?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    if let Some(from) = from {
        sock.bind(&SocketAddr::new(from, 0).into()).map_err(|e| format!("bind {from}: {e}"))?;
    }
    match sock.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e.to_string()),
    }
    // SAFETY: the descriptor is ours and moves into the stream.
    let stream = unsafe { TcpStream::from_raw_fd(sock.into_raw_fd()) };
    let (ws, _) = async_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Small buffers: tungstenite's defaults (128 KiB of read buffer a connection) would make half a
/// million client connections cost 64 GiB in the load generator.
fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// Runs `f` on an executor of its own and fails if it has not finished within `limit`: a
    /// wait that is never woken again must fail the test, not hang it.
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).expect("the wait was never woken again")
    }

    /// A receiver's wait is woken by a frame every 5 ms, so its timer is polled only on its
    /// first wait and near the end; the deadline still ends the loop, on time.
    #[test]
    fn a_deadline_armed_once_ends_a_loop_woken_by_frames() {
        let (got, waited) = within(Duration::from_secs(10), || {
            glommio::LocalExecutor::default().run(async {
                let (tx, mut rx) = futures::channel::mpsc::unbounded::<u32>();
                let _feeder = spawn(async move {
                    for i in 0.. {
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                        if tx.unbounded_send(i).is_err() {
                            break;
                        }
                    }
                });
                let t0 = Instant::now();
                let mut deadline = Deadline::at(t0 + Duration::from_millis(100));
                let mut got = 0;
                while let Ok(frame) = deadline.run(rx.next()).await {
                    assert!(frame.is_some(), "the feeder outlives the wait");
                    got += 1;
                }
                (got, t0.elapsed())
            })
        });
        assert!(got >= 5, "frames woke the wait before its deadline ({got})");
        assert!(waited >= Duration::from_millis(100), "the deadline ended it early: {waited:?}");
    }

    /// With nothing else to wake it, the timer registered on the first wait ends it.
    #[test]
    fn a_deadline_ends_a_wait_that_nothing_else_wakes() {
        let waited = within(Duration::from_secs(10), || {
            glommio::LocalExecutor::default().run(async {
                let t0 = Instant::now();
                let mut deadline = Deadline::at(t0 + Duration::from_millis(50));
                assert!(deadline.run(std::future::pending::<()>()).await.is_err());
                // Past its deadline, a wait ends at once.
                assert!(deadline.run(std::future::pending::<()>()).await.is_err());
                t0.elapsed()
            })
        });
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
    }
}
