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
