//! Scale: the scenario on one glommio executor per core (`--threads`), and across worker
//! processes (`--procs`), whose reports the parent merges.

use crate::*;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Narrows `args` to share `k` of `n` (a worker process's or a thread's): its part of the
/// connections, rate and ramp, under user names of its own.
pub(crate) fn share(args: &mut Args, k: usize, n: usize, tag: &str) {
    args.connections = args.connections / n + usize::from(k < args.connections % n);
    args.rate = (args.rate / n as u64).max(1);
    if args.ramp > 0 {
        args.ramp = (args.ramp / n as u64).max(1);
    }
    args.prefix = format!("{}{tag}{k}-", args.prefix);
}

/// Connections made by this process's threads, and where they meet once all connected (the
/// idle scenario weighs the server then).
pub(crate) static CONNECTED_HERE: AtomicU64 = AtomicU64::new(0);

pub(crate) static ALL_CONNECTED: std::sync::OnceLock<std::sync::Barrier> = std::sync::OnceLock::new();

/// Runs the scenario on `--threads` glommio executors, one pinned to each core, each with its
/// share of the work, and merges their reports into `report`.
pub(crate) fn run_threads(args: &Args, report: &mut Report) {
    let cpus = allowed_cpus();
    let cores = cpus.len();
    let (threads, first_core) = placement(cores, args.procs, worker_index(args), args.threads, colocated(&args.target));
    let _ = ALL_CONNECTED.set(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mut a = args.clone();
            share(&mut a, t, threads, "t");
            a.thread = t;
            a.threads = threads;
            let mut r =
                Report { scenario: report.scenario.clone(), server_rss_before_bytes: report.server_rss_before_bytes, ..Default::default() };
            glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpus[(first_core + t) % cores]))
                .name(&format!("loadgen-{t}"))
                .spawn(move || async move {
                    run_scenario(&a, &mut r).await;
                    r
                })
                .expect("start a glommio executor (io_uring and locked memory, see tuning/)")
        })
        .collect();
    // Each thread weighed this whole process over its own sending phase, and those overlap: the
    // process's figure is the largest, not their sum (which `merge` makes across processes).
    let mut this_process = None::<f64>;
    for h in handles {
        let r = h.join().expect("a load generator thread failed");
        this_process = combine(this_process, r.loadgen_cpu_seconds, f64::max);
        merge(report, r);
    }
    report.loadgen_cpu_seconds = this_process;
}

/// The CPUs this process may run on (its affinity mask: `taskset`, a cgroup cpuset), in order;
/// threads are pinned among these only. Numbered 0.. up to the available parallelism if the
/// mask cannot be read. Pinned by plain numbers, `taskset -c 1 shardchat-loadgen` put its
/// thread on CPU 0, the server's.
fn allowed_cpus() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).collect(),
        _ => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// This process's threads and the index (among the allowed CPUs) of the core the first is
/// pinned to (the others follow, modulo
/// `cores`), for worker `worker` of `procs`, with `--threads` `asked` (0: the default).
///
/// By default a load generator whose server runs on this host (`colocated`) takes half the
/// cores, the last ones, and leaves the first half (where the engine's shard 0 and its
/// neighbours run) to the server; one whose server is elsewhere takes every core. Sharing every
/// core with the server made both slower: on the 2-core VM, one-on-one at 1,000 connections,
/// one thread instead of two cost the load generator 13% less CPU per message at 1,000 msg/s
/// and 18% less at 10,000, and at 40,000 msg/s the engine's p99 fell from 1.3 s to 0.2 s.
pub(crate) fn placement(cores: usize, procs: usize, worker: usize, asked: usize, colocated: bool) -> (usize, usize) {
    let procs = procs.max(1);
    let ours = if colocated { cores.div_ceil(2) } else { cores };
    let threads = if asked > 0 { asked } else { (ours / procs).max(1) };
    let first = if colocated { cores - ours } else { 0 };
    (threads, (first + worker * threads) % cores.max(1))
}

/// Whether every `--target` is on this host (a loopback address or `localhost`).
pub(crate) fn colocated(targets: &str) -> bool {
    targets.split(',').all(|t| {
        let host = t.trim().parse::<tungstenite::http::Uri>().ok().and_then(|u| u.host().map(str::to_string)).unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// `K` of `--worker K/P` (0 outside workers).
pub(crate) fn worker_index(args: &Args) -> usize {
    args.worker.as_deref().and_then(|w| w.split_once('/')).and_then(|(k, _)| k.parse().ok()).unwrap_or(0)
}

/// Prefix of the lines a worker prints for its parent on stdout.
pub(crate) const WORKER_CONNECTED: &str = "worker-connected ";

pub(crate) const WORKER_REPORT: &str = "worker-report ";

/// `--procs P`: runs P copies of this program as workers, each with 1/P of the connections and
/// of the rate, and merges what they report.
pub(crate) async fn parent(args: &Args, report: &mut Report) {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe().expect("own executable");
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut children = Vec::new();
    for k in 0..args.procs {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&raw).arg("--worker").arg(format!("{k}/{}", args.procs));
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).kill_on_drop(true);
        children.push(cmd.spawn().expect("start a worker"));
    }
    let pb = progress(args.procs as u64, "workers");
    pb.set_message("connecting");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    for (k, child) in children.iter_mut().enumerate() {
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send((k, l));
            }
        });
    }
    drop(tx);
    let (mut connected, mut reported) = (0, 0);
    let mut idle_weight: Option<tokio::task::JoinHandle<Option<u64>>> = None;
    while let Some((k, line)) = rx.recv().await {
        if let Some(n) = line.strip_prefix(WORKER_CONNECTED) {
            connected += 1;
            pb.set_message(format!("{connected} of {} connected ({n} in worker {k})", args.procs));
            if connected == args.procs && args.scenario == Scenario::Idle {
                // Everyone holds their connections now: the moment to weigh the server.
                tokio::time::sleep(Duration::from_secs(2)).await;
                report.server_rss_after_bytes = args.server_pid.and_then(rss_bytes);
                // And again a second before the workers' hold ends (they started it on
                // connecting, two seconds ago): the idle figure.
                let pid = args.server_pid;
                let wait = Duration::from_secs(args.duration.saturating_sub(3).max(1));
                idle_weight = Some(tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    pid.and_then(rss_bytes)
                }));
            }
        } else if let Some(json) = line.strip_prefix(WORKER_REPORT) {
            match serde_json::from_str::<Report>(json) {
                Ok(w) => merge(report, w),
                Err(e) => eprintln!("worker {k}: unreadable report: {e}"),
            }
            reported += 1;
            pb.inc(1);
        }
    }
    pb.finish_with_message(format!("{reported} of {} reported", args.procs));
    if reported < args.procs {
        report.errors += (args.procs - reported) as u64;
        eprintln!("{} worker(s) exited without a report", args.procs - reported);
    }
    report.server_bytes_per_connection =
        growth_per_connection(report.server_rss_after_bytes, report.server_rss_before_bytes, report.connected);
    if let Some(w) = idle_weight {
        report.server_rss_idle_bytes = w.await.ok().flatten();
    }
    report.server_bytes_per_connection_idle =
        growth_per_connection(report.server_rss_idle_bytes, report.server_rss_before_bytes, report.connected);
    if let Some(pid) = args.server_pid {
        report.server_peak_rss_bytes = peak_rss_bytes(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_on_this_host_gets_the_first_half_of_the_cores() {
        // 2 cores, server here: one thread, on core 1.
        assert_eq!(placement(2, 1, 0, 0, true), (1, 1));
        // 16 cores: 8 threads on cores 8..15; with 2 workers, 4 each, from 8 and from 12.
        assert_eq!(placement(16, 1, 0, 0, true), (8, 8));
        assert_eq!(placement(16, 2, 0, 0, true), (4, 8));
        assert_eq!(placement(16, 2, 1, 0, true), (4, 12));
        // A remote server: every core, as before.
        assert_eq!(placement(16, 1, 0, 0, false), (16, 0));
        assert_eq!(placement(16, 2, 1, 0, false), (8, 8));
        // --threads wins; one core, one thread.
        assert_eq!(placement(2, 1, 0, 2, true), (2, 1));
        assert_eq!(placement(1, 1, 0, 0, true), (1, 0));
        // More workers than cores: one thread each, wrapping around.
        assert_eq!(placement(2, 4, 3, 0, true), (1, 0));
    }

    #[test]
    fn loopback_targets_are_colocated() {
        assert!(colocated("ws://127.0.0.1:7700/ws"));
        assert!(colocated("ws://localhost:7700/ws,ws://127.0.0.2:7701/ws"));
        assert!(colocated("ws://[::1]:7700/ws"));
        assert!(!colocated("ws://10.0.0.5:7700/ws"));
        assert!(!colocated("ws://127.0.0.1:7700/ws,ws://chat.example.com/ws"));
    }
}
