//! Everything that knows glommio lives under this module: executors, sockets, timers, the
//! cross-shard mesh and the blocking pools. The rest of the engine (config, auth, HTTP head
//! parsing) and the `shard/` logic are runtime-agnostic, so swapping glommio for another
//! thread-per-core io_uring runtime (compio) means rewriting these files only.

mod accept;
pub mod bridge;
mod conn;
mod driver;
mod lot;
#[cfg(test)]
mod park_tests;

use driver::{Driver, Wire};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};
use shardchat_bridge::health::Health;
use shardchat_bridge::metrics::ShardMetrics;
use shardchat_cluster::{Cluster, ClusterConfig};
use shardchat_config::Config;
use shardchat_storage::MessageStore;
use shardchat_storage_fjall::{FjallStore, StoreConfig};
use shardchat_storage_scylla::{ScyllaConfig, ScyllaStore};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Slots of the cross-shard channel between each pair of shards, in batches (each batch holds
/// every message one shard had for another at that moment). A full channel makes the sender's
/// flusher wait: backpressure, never unbounded growth.
const MESH_CHANNEL_BATCHES_MAX: usize = 1024;
/// How often a shard's coarse timer runs (heartbeat wheel, shutdown check).
const TICK_MS: u64 = 250;
// A shard counts as stalled only after missing several ticks in a row.
const _: () = assert!(TICK_MS * 4 <= shardchat_bridge::health::SHARD_STALL_MS);
/// How long shutdown waits for connections to take their close frames.
const SHUTDOWN_GRACE_MS: u64 = 3_000;

/// Why the engine stopped on its own, if it did: the store failed for good (the first reason wins).
static FATAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The flag every part of the engine watches to stop (set by SIGINT/SIGTERM, or by [`fatal`]).
static SHUTDOWN: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// The store refuses further writes (a write or fsync failed): stop the whole process so its
/// supervisor restarts it and the store recovers from its journal. Crash-only, as fjall advises
/// after a failed fsync; retrying in place could acknowledge what the kernel dropped.
pub fn fatal(why: String) {
    if FATAL.set(why.clone()).is_ok() {
        tracing::error!(error = %why, "storage failed for good: stopping so a restart recovers from the journal");
    }
    if let Some(flag) = SHUTDOWN.get() {
        flag.store(true, Ordering::Relaxed);
    }
}

/// Runs the engine until SIGINT or SIGTERM (or a fatal storage failure: then `Err`).
pub fn serve(cfg: Config) -> Result<(), String> {
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    if cfg.dev_auth {
        tracing::warn!("================================================================");
        tracing::warn!("DEVELOPMENT MODE: --dev-auth lets anyone connect as any user with");
        tracing::warn!("?user=<id>. Never expose this server to a network you do not own.");
        tracing::warn!("================================================================");
    }
    let open_files_max = raise_open_files_limit();
    let connections_max = cfg.connections_bound(open_files_max)?;
    // Each shard holds its share of the handshakes (SO_REUSEPORT spreads the accepts evenly).
    let handshakes_max = cfg.handshakes_bound(connections_max).div_ceil(cfg.shards);
    tracing::info!(
        connections_max,
        handshakes_max_per_shard = handshakes_max,
        reserved = open_files_max - connections_max,
        "connection bound (beyond it new connections are closed at once; the rest of the descriptors stay for the store, index, Redis and HTTP)"
    );
    let slots = Arc::new(accept::Slots::new(connections_max));
    probe_listen_address(&cfg)?;
    let store = open_store(&cfg)?;
    let health = Arc::new(Health::new(cfg.shards));
    let (bridge, bridge_end) = bridge::pair().map_err(|e| format!("bridge: {e}"))?;
    let cluster = match &cfg.cluster {
        Some(url) => {
            let cc = ClusterConfig { redis: url.clone(), node: cfg.node_id, shards: cfg.shards, listen: cfg.listen, http: cfg.http };
            Some(Arc::new(Cluster::start(cc, bridge.clone(), store.clone(), health.clone())?))
        }
        None => None,
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let _ = SHUTDOWN.set(shutdown.clone());
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, shutdown.clone()).map_err(|e| format!("installing signal handler: {e}"))?;
    }
    let online: Vec<usize> = CpuSet::online().map_err(|e| format!("reading CPUs: {e}"))?.into_iter().map(|l| l.cpu).collect();
    let cpus = shard_cpus(&online, &allowed_cpus());
    // Peers 0..shards are the shards, peer `shards` the control plane's bridge. glommio numbers
    // mesh peers by executor creation order, so shards are created first, in order.
    let mesh = MeshBuilder::<Wire, _>::full(cfg.shards + 1, MESH_CHANNEL_BATCHES_MAX);
    let cfg = Arc::new(cfg);
    tracing::info!(listen = %cfg.listen, shards = cfg.shards, data_dir = %cfg.data_dir.display(), "shardchat starting");
    let metrics: Vec<Arc<ShardMetrics>> = (0..cfg.shards).map(|_| Arc::new(ShardMetrics::default())).collect();
    let mut handles = Vec::new();
    for id in 0..cfg.shards {
        let (cfg, mesh, store, shutdown, cluster) = (cfg.clone(), mesh.clone(), store.clone(), shutdown.clone(), cluster.clone());
        let (metrics, health, slots) = (metrics[id].clone(), health.clone(), slots.clone());
        let cpu = cpus[id % cpus.len().max(1)];
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{id}"))
            .spin_before_park(Duration::from_micros(cfg.spin_before_park_us))
            .blocking_thread_pool_placement(PoolPlacement::Unbound(cfg.storage_threads_per_shard.max(1)))
            .spawn(move || async move {
                shard_main(id, Shared { cfg, mesh, store, cluster, shutdown, metrics, health, slots, handshakes_max }).await
            })
            .map_err(|e| format!("starting shard {id}: {e}"))?;
        handles.push(h);
    }
    let bridge_exec = {
        let (mesh, shards, node) = (mesh.clone(), cfg.shards, cfg.node_id);
        LocalExecutorBuilder::new(Placement::Unbound)
            .name("bridge")
            .spawn(move || async move { bridge::run(shards, shards, node, mesh, bridge_end).await })
            .map_err(|e| format!("starting the bridge: {e}"))?
    };
    let control = match cfg.http {
        Some(_) => {
            let search = Arc::new(shardchat_search::SearchIndex::open(&cfg.data_dir.join("search"))?);
            let (idx, st, stop) = (search.clone(), store.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("indexer".into())
                .spawn(move || idx.run_indexer(st, stop))
                .map_err(|e| format!("search indexer thread: {e}"))?;
            let cluster_state = cluster.as_ref().map(|c| c.state.clone());
            Some(shardchat_control::ControlPlane::start(shardchat_control::Parts {
                cfg: cfg.clone(),
                store: store.clone(),
                bridge,
                shutdown: shutdown.clone(),
                metrics,
                cluster: cluster_state,
                search,
                health: health.clone(),
            })?)
        }
        None => {
            drop(bridge);
            None
        }
    };
    let mut result = Ok(());
    for (id, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(format!("shard {id}: {e}")),
            Err(e) => result = Err(format!("shard {id} failed: {e}")),
        }
    }
    // The control plane stops on the same signal; its handle to the bridge goes with it, and
    // the cluster link lets go of its own, which stops the bridge.
    if let Some(c) = &cluster {
        c.detach_bridge();
    }
    if let Some(c) = control {
        c.join();
    }
    match bridge_exec.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => result = Err(e),
        Err(e) => result = Err(format!("bridge failed: {e}")),
    }
    if let Some(why) = FATAL.get() {
        if let Some(c) = &cluster {
            c.stop();
        }
        return Err(format!("stopped: {why}; restart to recover from the journal"));
    }
    store.flush().map_err(|e| format!("final flush: {e}"))?;
    // The shards are gone: the link removes this node's liveness key.
    if let Some(c) = &cluster {
        c.stop();
    }
    tracing::info!("shardchat stopped");
    result
}

/// The CPUs this process may run on: its affinity mask, as `taskset`, a cgroup cpuset or
/// systemd's `CPUAffinity=` left it. Empty if it cannot be read.
fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect()
}

/// The CPUs shards are pinned to, shard `i` to the `i`th (modulo their number): the online CPUs
/// the process was allowed. Pinning a shard outside that mask would override the operator's
/// choice (a core kept for interrupts or for another process, a container's cpuset); every
/// online CPU when nothing is allowed (an unreadable mask).
fn shard_cpus(online: &[usize], allowed: &[usize]) -> Vec<usize> {
    let both: Vec<usize> = online.iter().copied().filter(|c| allowed.contains(c)).collect();
    if both.is_empty() {
        online.to_vec()
    } else {
        both
    }
}

/// The embedded store in `data_dir`, or ScyllaDB when `store` names a cluster. The search index
/// stays in `data_dir` either way: each node indexes the messages it commits.
fn open_store(cfg: &Config) -> Result<Arc<dyn MessageStore>, String> {
    match &cfg.store {
        None => {
            let sc = StoreConfig {
                commit_interval: cfg.store_commit_interval(),
                maintenance_nice: cfg.store_maintenance_nice,
                ..StoreConfig::new(&cfg.data_dir)
            };
            let store = FjallStore::open(&sc).map_err(|e| format!("opening the store in {}: {e}", cfg.data_dir.display()))?;
            Ok(Arc::new(store))
        }
        Some(uri) => {
            let sc = ScyllaConfig { node: cfg.node_id as i32, ..ScyllaConfig::from_uri(uri)? };
            let store = ScyllaStore::open(&sc).map_err(|e| format!("opening the ScyllaDB store {uri}: {e}"))?;
            tracing::info!(nodes = ?sc.nodes, keyspace = %sc.keyspace, consistency = ?sc.consistency, "message store: ScyllaDB");
            Ok(Arc::new(store))
        }
    }
}

/// Every connection is a descriptor: take the hard limit as the soft one, and say what it is
/// (raising the hard limit is `tuning/`'s job). Returns the limit now in force.
fn raise_open_files_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    tracing::info!(open_files_max = lim.rlim_cur, "descriptor limit (each connection takes one; see tuning/)");
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Every shard binds with SO_REUSEPORT, which would also let a second shardchat (same user) bind
/// the same address and silently take half the connections. A plain bind first fails with
/// "address in use" while anyone holds the address. Right after a crash the kernel may hold the
/// dead process's listeners a moment longer (io_uring tears down asynchronously), so a restart
/// retries for a few seconds before giving up.
fn probe_listen_address(cfg: &Config) -> Result<(), String> {
    use socket2::{Domain, Socket, Type};
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Bind without listening: nobody can connect to the probe by mistake.
        let sock = Socket::new(Domain::for_address(cfg.listen), Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
        let _ = sock.set_reuse_address(true);
        match sock.bind(&cfg.listen.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                tracing::warn!(listen = %cfg.listen, "address in use; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("binding {}: {e}", cfg.listen)),
        }
    }
}

/// Fault injection for tests: `SHARDCHAT_FAULT_STALL_SHARD=ID@MS` makes shard ID stop running
/// MS ms after it starts serving, as an executor that hangs would (its thread blocks for good),
/// so that tests can check what the rest of the node and the cluster do about it. Unset in
/// production; read once per shard at start.
fn fault_stall(shard: usize) -> Option<Duration> {
    let spec = std::env::var("SHARDCHAT_FAULT_STALL_SHARD").ok()?;
    let (id, ms) = spec.split_once('@')?;
    (id.parse::<usize>().ok()? == shard).then_some(Duration::from_millis(ms.parse().ok()?))
}

/// Backlog of each shard's listener: a reconnect storm arrives all at once.
const LISTEN_BACKLOG: i32 = 4096;

/// One shard's listener. glommio's own `bind` sets SO_REUSEPORT but not SO_REUSEADDR, and then a
/// restart after a crash fails while the dead server's connections sit in TIME_WAIT on the port;
/// so the socket is made here with both, and handed to glommio.
fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sk.set_reuse_address(true)?;
    sk.set_reuse_port(true)?;
    sk.bind(&addr.into())?;
    sk.listen(LISTEN_BACKLOG)?;
    // SAFETY: a bound, listening socket we own, handed over whole.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(sk.into_raw_fd()) })
}

/// What every shard is started with.
struct Shared {
    cfg: Arc<Config>,
    mesh: MeshBuilder<Wire, glommio::channels::channel_mesh::Full>,
    store: Arc<dyn MessageStore>,
    cluster: Option<Arc<Cluster>>,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<ShardMetrics>,
    health: Arc<Health>,
    slots: Arc<accept::Slots>,
    /// This shard's share of `handshakes_max`.
    handshakes_max: usize,
}

async fn shard_main(id: usize, sh: Shared) -> Result<(), String> {
    let Shared { cfg, mesh, store, cluster, shutdown, metrics, health, slots, handshakes_max } = sh;
    let (senders, receivers) = mesh.join().await.map_err(|_| "joining the shard mesh".to_string())?;
    if senders.peer_id() != id {
        return Err(format!("shard {id} joined the mesh as peer {}", senders.peer_id()));
    }
    let listener = bind_listener(cfg.listen).map_err(|e| format!("binding {}: {e}", cfg.listen))?;
    let d = Rc::new(Driver::new(id, cfg.clone(), store, cluster, senders, metrics));
    d.start_mesh(receivers);
    d.start_lot();
    let acceptor = glommio::spawn_local(accept::accept_loop(d.clone(), listener, slots, handshakes_max));
    // The shard serves from here: its listener accepts (the kernel queues connections before
    // the accept loop first runs) and its loop runs. Readiness and, in cluster mode, this node's
    // liveness follow these beats, so a shard that never got here, or stops, is seen.
    health.beat(id);
    tracing::info!(shard = id, listen = %cfg.listen, "listening");
    let stall_at = fault_stall(id).map(|after| std::time::Instant::now() + after);
    while !shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        if stall_at.is_some_and(|t| std::time::Instant::now() >= t) {
            tracing::error!(shard = id, "fault injection (SHARDCHAT_FAULT_STALL_SHARD): this shard stops running");
            // Blocks the shard's thread as a hung executor would (nothing of it runs again).
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        health.beat(id);
        d.tick();
    }
    drop(acceptor.cancel());
    d.close_all(1001, "server shutting down");
    let deadline = std::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
    while d.connections() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    // Write what is kept lazily (last-seen times of the users who just went offline), and what
    // commit pacing holds, now.
    d.tick();
    d.dispatch(shardchat_shard::Event::Drain);
    d.wait_idle(Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
    Ok(())
}

#[cfg(test)]
mod placement_tests {
    use super::shard_cpus;

    #[test]
    fn shards_go_to_the_online_cpus_the_process_was_allowed() {
        assert_eq!(shard_cpus(&[0, 1, 2, 3], &[2, 3]), vec![2, 3]);
        assert_eq!(shard_cpus(&[0, 1, 2, 3], &[1, 3, 7]), vec![1, 3], "an allowed CPU that is offline is skipped");
        assert_eq!(shard_cpus(&[0, 1], &[]), vec![0, 1], "an unreadable mask: every online CPU");
    }
}
