//! Every scenario, small, against the real engine (and `echo` against an echo server in this
//! process): the reports must add up, with nothing lost or doubled.
//!
//! Needs the `shardchat` binary beside the load generator's: `cargo test --workspace` builds it.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOADGEN: &str = env!("CARGO_BIN_EXE_shardchat-loadgen");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Engine {
    child: Child,
    port: u16,
    /// The control plane: readiness and the engine's own connection count.
    http: u16,
    _dir: tempfile::TempDir,
}

impl Engine {
    fn start() -> Engine {
        Engine::start_with(&["--dev-auth"])
    }

    fn start_with(auth: &[&str]) -> Engine {
        let exe = Path::new(LOADGEN).with_file_name("shardchat");
        assert!(exe.exists(), "{} is missing: build it first (`cargo build -p shardchat`; `cargo test --workspace` does)", exe.display());
        let dir = tempfile::tempdir().unwrap();
        let (port, http) = (free_port(), free_port());
        let child = Command::new(exe)
            .arg("serve")
            .args(auth)
            .args(["--shards", "2", "--listen", &format!("127.0.0.1:{port}"), "--http", &format!("127.0.0.1:{http}"), "--data-dir"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Owned before waiting: if the wait fails, dropping it kills the engine.
        let e = Engine { child, port, http, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(http, "/readyz").is_none_or(|(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "engine did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    /// WebSocket connections the engine holds, by its own count (`shardchat_connections`).
    fn connections(&self) -> u64 {
        let (_, body) = get(self.http, "/metrics").expect("metrics");
        body.lines().filter(|l| l.starts_with("shardchat_connections{")).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load generator; returns its JSON report.
fn loadgen(target: &str, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json: PathBuf = dir.path().join("r.json");
    // Two threads everywhere, so that how work is shared (and rounded) does not depend on the
    // machine's core count.
    let out = Command::new(LOADGEN).arg("--target").arg(target).args(args).args(["--threads", "2", "--json"]).arg(&json).output().unwrap();
    assert!(
        out.status.success(),
        "loadgen {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn clean(v: &Value) {
    assert_eq!((n(v, "lost"), n(v, "duplicates"), n(v, "errors")), (0, 0, 0), "{v}");
}

#[test]
fn direct_in_binary_over_two_processes_merges_everything() {
    let e = Engine::start();
    let pid = e.child.id().to_string();
    let args = [
        "--scenario",
        "direct",
        "--connections",
        "40",
        "--rate",
        "200",
        "--duration",
        "2",
        "--procs",
        "2",
        "--binary",
        "--server-pid",
        &pid,
    ];
    let r = loadgen(&e.url(), &args);
    clean(&r);
    // CPU per message, the server's (weighed by the parent) and the load generator's (the
    // workers' own, summed), beside each other.
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}"));
    assert!(f("server_cpu_s_per_1000_msgs") > 0.0 && f("server_cpu_seconds") > 0.0, "{r}");
    assert!(f("loadgen_cpu_s_per_1000_msgs") >= 0.0, "{r}");
    let per_1000 = f("server_cpu_seconds") / 400.0 * 1000.0;
    assert!((f("server_cpu_s_per_1000_msgs") - per_1000).abs() < 1e-9, "per 1,000 messages sent: {r}");
    assert_eq!(n(&r, "procs"), 2);
    assert_eq!(n(&r, "connected"), 40);
    assert_eq!(n(&r, "sent"), 400);
    assert_eq!(n(&r, "delivered"), 400, "{r}");
    assert_eq!(n(&r, "acked"), 400);
    assert!(n(&r, "binary_frames_received") >= 400, "--binary: the server answered in rkyv: {r}");
    assert!(r["latency_p50_ms"].as_f64().unwrap() > 0.0, "merged histograms give percentiles");
}

#[test]
fn groups_mixed_and_a_reconnect_storm_lose_nothing() {
    let e = Engine::start();
    let g = loadgen(&e.url(), &["--scenario", "group:5", "--connections", "20", "--rate", "100", "--duration", "2", "--prefix", "g"]);
    clean(&g);
    assert_eq!(n(&g, "delivered"), n(&g, "sent") * 4, "every message reaches the 4 other members");

    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("m.svg");
    let m = loadgen(
        &e.url(),
        &[
            "--scenario",
            "mixed",
            "--connections",
            "20",
            "--group-size",
            "5",
            "--subs",
            "3",
            "--rate",
            "100",
            "--duration",
            "2",
            "--prefix",
            "m",
        ],
    );
    clean(&m);
    assert_eq!(n(&m, "delivered"), n(&m, "sent") * 4);
    assert!(n(&m, "typing_frames") > 0 && n(&m, "presence_frames") > 0, "{m}");

    let s = loadgen(&e.url(), &["--scenario", "reconnect-storm", "--connections", "40", "--storm-fraction", "0.5", "--prefix", "s"]);
    clean(&s);
    // 20 pairs × 5 messages before; 10 dropped receivers × 20 more, recovered by sync.
    assert_eq!(n(&s, "delivered"), 20 * 5 + 10 * 20, "{s}");

    let out = Command::new(LOADGEN)
        .args([
            "--target",
            &e.url(),
            "--scenario",
            "direct",
            "--connections",
            "4",
            "--rate",
            "50",
            "--duration",
            "1",
            "--prefix",
            "q",
            "--plot",
        ])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"), "--plot wrote a picture");
    assert!(g["connects_per_second"].as_f64().unwrap() > 0.0, "{g}");
}

#[test]
fn without_dev_auth_users_log_in_with_minted_tokens() {
    let e = Engine::start_with(&["--jwt-secret", "load-test-secret"]);
    let r = loadgen(
        &e.url(),
        &["--scenario", "direct", "--connections", "8", "--rate", "40", "--duration", "1", "--jwt-secret", "load-test-secret"],
    );
    clean(&r);
    assert_eq!((n(&r, "connected"), n(&r, "delivered")), (8, n(&r, "sent")), "{r}");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(LOADGEN)
        .args(["--target", &e.url(), "--scenario", "idle", "--connections", "2", "--duration", "1", "--jwt-secret", "wrong", "--json"])
        .arg(dir.path().join("r.json"))
        .output()
        .unwrap();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert!(out.status.success());
    assert_eq!((n(&r, "connected"), n(&r, "connect_failures")), (0, 2), "a wrong secret is refused: {r}");
}

#[test]
fn idle_reports_server_memory_per_connection() {
    let e = Engine::start();
    let pid = e.child.id().to_string();
    let r = loadgen(&e.url(), &["--scenario", "idle", "--connections", "200", "--duration", "1", "--server-pid", &pid, "--ramp", "1000"]);
    assert_eq!(n(&r, "connected"), 200);
    assert!(r["server_bytes_per_connection"].as_f64().is_some(), "{r}");
    // Weighed twice: on connecting and once idle, from one process and from several.
    for procs in ["1", "2"] {
        let r =
            loadgen(&e.url(), &["--scenario", "idle", "--connections", "200", "--duration", "4", "--server-pid", &pid, "--procs", procs]);
        assert_eq!(n(&r, "connected"), 200, "{r}");
        let idle = r["server_rss_idle_bytes"].as_u64().unwrap_or_else(|| panic!("--procs {procs}: no idle weighing in {r}"));
        assert!(idle > n(&r, "server_rss_before_bytes") / 2, "{r}");
        assert!(r["server_bytes_per_connection_idle"].as_f64().is_some(), "{r}");
    }
}

#[test]
fn echo_measures_round_trips_against_any_echo_server() {
    // Bound here and kept: a port picked free and bound later can be taken meanwhile by another
    // test's server (it was, in CI).
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.spawn(async move {
        use futures::{SinkExt, StreamExt};
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(sock).await.unwrap();
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let r = loadgen(&format!("ws://127.0.0.1:{port}/"), &["--scenario", "echo", "--connections", "10", "--rate", "500", "--duration", "1"]);
    clean(&r);
    assert_eq!(n(&r, "sent"), 500);
    assert_eq!(n(&r, "delivered"), 500);
}

/// Established server-side connections on `port` (from /proc/net/tcp: state 01).
/// A plain HTTP/1.1 GET on loopback: the status and the body, or None if nothing answered.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Several `--target`s: connections go round-robin, so each engine process holds its share (how
/// one host runs several processes, each under its open-file cap).
#[test]
fn several_targets_share_the_connections() {
    let (a, b) = (Engine::start(), Engine::start());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut child = Command::new(LOADGEN)
        .args([
            "--target",
            &format!("{},{}", a.url(), b.url()),
            "--scenario",
            "idle",
            "--connections",
            "200",
            "--duration",
            "3",
            "--threads",
            "2",
        ])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = (0, 0);
    while seen != (100, 100) {
        assert!(Instant::now() < deadline, "connections not spread round-robin: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
        seen = (a.connections(), b.connections());
        assert!(seen.0 <= 100 && seen.1 <= 100, "round-robin: {seen:?}");
    }
    assert!(child.wait().unwrap().success());
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(n(&r, "connected"), 200);
}

/// Started on its last allowed CPU alone (as `taskset -c N` or a cgroup cpuset would), the load
/// generator pins its threads there. Pinned by plain core numbers, its one thread went to CPU 0,
/// onto the server's core, and every figure of the run was of two programs sharing one core.
#[test]
fn threads_stay_on_the_cpus_the_process_was_given() {
    let mine: Vec<usize> = core_affinity::get_core_ids().expect("read the affinity mask").into_iter().map(|c| c.id).collect();
    if mine.len() < 2 {
        eprintln!("SKIPPED threads_stay_on_the_cpus_the_process_was_given: one CPU, none to leave out");
        return;
    }
    let last = *mine.last().unwrap();
    let e = Engine::start();
    let mut cmd = Command::new(LOADGEN);
    cmd.args(["--target", &e.url(), "--scenario", "direct", "--connections", "20", "--rate", "100", "--duration", "3"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: between fork and exec only sched_setaffinity runs, on a set built before the fork.
    unsafe {
        use std::os::unix::process::CommandExt;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(last, &mut set);
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", child.id())) else { continue };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("loadgen-") {
                continue;
            }
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or_default().trim().to_string();
            seen.push((comm.trim().to_string(), cpus));
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(!seen.is_empty(), "no loadgen thread seen");
    for (comm, cpus) in &seen {
        assert_eq!(cpus, &last.to_string(), "{comm} runs on CPUs {cpus}, not the process's {last}");
    }
}
