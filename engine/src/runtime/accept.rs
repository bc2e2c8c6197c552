//! Accepting: every shard accepts on its own SO_REUSEPORT listener, reads the upgrade request
//! head, authenticates it, builds the `101` answer, and hands the socket to the user's home shard.

use super::conn::Upgrade;
use super::driver::{Driver, Wire};
use crate::http::{response, RequestHead, HEAD_BYTES_MAX};
use crate::metrics::ShardMetrics;
use futures::future::{select, Either};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use shardchat_shard::home_shard;
use shardchat_shard::rate::{Gcra, Rate};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Source addresses whose connection rate this shard tracks, at most; beyond it the idle ones
/// (bucket full again) are forgotten, which costs them nothing.
const RATE_TRACKED_IPS_MAX: usize = 100_000;

/// Per source address: new connections a second this shard accepts (its share of the host's
/// `--connect-rate-per-ip-per-s`: SO_REUSEPORT spreads a client's connections over the shards).
struct PerIp {
    rate: Rate,
    seen: HashMap<IpAddr, Gcra>,
    started: Instant,
}

impl PerIp {
    fn new(per_sec_host: u32, shards: usize) -> PerIp {
        let share = if per_sec_host == 0 { 0 } else { (per_sec_host / shards.max(1) as u32).max(1) };
        PerIp { rate: Rate { per_sec: share, burst: share }, seen: HashMap::new(), started: Instant::now() }
    }

    fn allow(&mut self, ip: IpAddr) -> bool {
        if self.rate.per_sec == 0 {
            return true;
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        if self.seen.len() >= RATE_TRACKED_IPS_MAX {
            // A bucket that would allow a full burst now is indistinguishable from a new one.
            self.seen.retain(|_, g| !g.is_full(now_ms));
        }
        self.seen.entry(ip).or_default().allow(now_ms, self.rate)
    }
}

pub async fn accept_loop(d: Rc<Driver>, listener: TcpListener) {
    let mut per_ip = PerIp::new(d.cfg.connect_rate_per_ip_per_s, d.cfg.shards);
    loop {
        match listener.accept().await {
            Ok(mut stream) => {
                let ip = stream.peer_addr().map(|a| a.ip());
                if ip.is_ok_and(|ip| !per_ip.allow(ip)) {
                    ShardMetrics::add(&d.metrics.connections_refused_rate, 1);
                    glommio::spawn_local(async move {
                        let _ = stream.write_all(&response(429, "Too Many Requests", "too many new connections from this address")).await;
                    })
                    .detach();
                    continue;
                }
                glommio::spawn_local(handshake(d.clone(), stream)).detach();
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads until the request head is complete. `Err` carries the response to send.
async fn read_head(stream: &mut TcpStream) -> Result<(RequestHead, Vec<u8>), Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        match RequestHead::parse(&buf) {
            Ok(Some(head)) => return Ok((head, buf)),
            Ok(None) => {}
            Err(why) => return Err(Some(response(400, "Bad Request", why))),
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Err(Some(response(431, "Request Header Fields Too Large", "request head too large")));
        }
    }
}

async fn handshake(d: Rc<Driver>, mut stream: TcpStream) {
    let timeout = glommio::timer::sleep(Duration::from_millis(d.cfg.handshake_timeout_ms));
    let (outcome, timed_out) = match select(Box::pin(read_head(&mut stream)), Box::pin(timeout)).await {
        Either::Left((r, _)) => (r, false),
        Either::Right(_) => (Err(Some(response(408, "Request Timeout", "handshake timeout"))), true),
    };
    let refused = || ShardMetrics::add(&d.metrics.handshakes_refused, 1);
    let (head, bytes) = match outcome {
        Ok(x) => x,
        Err(resp) => {
            if let Some(resp) = resp {
                match timed_out {
                    true => ShardMetrics::add(&d.metrics.handshake_timeouts, 1),
                    // 400 or 431 from the head's parser.
                    false => refused(),
                }
                let _ = stream.write_all(&resp).await;
            }
            return;
        }
    };
    if head.path != "/ws" {
        refused();
        let _ = stream.write_all(&response(404, "Not Found", "the WebSocket endpoint is /ws")).await;
        return;
    }
    let identity = match d.auth.authenticate(&head) {
        Ok(id) => id,
        Err(why) => {
            refused();
            let _ = stream.write_all(&response(401, "Unauthorized", why)).await;
            return;
        }
    };
    let answer = match head.upgrade_response() {
        Ok(answer) => answer,
        Err(why) => {
            tracing::debug!(%why, "not a WebSocket upgrade");
            refused();
            let _ = stream.write_all(&response(400, "Bad Request", &why)).await;
            return;
        }
    };
    let upgrade = Upgrade { answer, early: bytes[head.len..].to_vec() };
    let home = home_shard(&identity.user, d.cfg.shards);
    if home == d.id {
        super::conn::start(&d, stream, upgrade, identity);
        return;
    }
    // Hand the socket over: a duplicate descriptor travels, this one closes with the stream.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    drop(stream);
    if fd < 0 {
        tracing::warn!("dup failed: out of descriptors");
        return;
    }
    if d.senders.send_to(home, Wire::Adopt { fd, upgrade, identity }).await.is_err() {
        // The home shard is gone (shutting down): the descriptor was not taken over.
        // SAFETY: `fd` is our dup; nobody else closes it.
        unsafe { libc::close(fd) };
    }
}
