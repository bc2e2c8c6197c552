//! Test harness: the real `shardchat` binary on a loopback port, real WebSocket clients.

#![allow(dead_code)]

pub mod raw;
pub mod s3;
pub mod webhook;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::TcpStream as StdTcp;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for one expected frame before failing.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A test that cannot run here because a tool is missing: it fails under CI (where `.ci/run`
/// installs every tool), and elsewhere says so in the normal test output. The harness captures
/// `eprintln!`, shown only with `--nocapture`, so the line goes to the process's stderr directly.
pub fn skip(tool_missing: &str) {
    assert!(std::env::var_os("CI").is_none(), "CI is set but this test cannot run: {tool_missing}");
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {tool_missing}");
}

pub struct Server {
    pub port: u16,
    /// The control plane's port (REST).
    pub http: u16,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    extra: Vec<String>,
    /// Some: the server's log (stdout) goes to this file, filtered by the given `RUST_LOG`.
    log: Option<(PathBuf, String)>,
    /// Extra environment of the server process (kept across restarts).
    env: Vec<(String, String)>,
    /// Some: the server process's descriptor limit (RLIMIT_NOFILE, soft and hard).
    pub nofile: Option<u64>,
}

/// A port no other server of this test process got: the kernel's bind(0) may hand a port that
/// was just released to the next caller, and two servers on one port would each take half the
/// connections (the server refuses to start on a port in use, so this only keeps tests apart).
pub fn free_port() -> u16 {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

impl Server {
    /// Starts a server with `--dev-auth`, 3 shards, and the extra flags.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_inner(extra, None)
    }

    /// Like `start`, with the server's log kept (see [`Server::log`]) at `filter` (`RUST_LOG`).
    pub fn start_logged(extra: &[&str], filter: &str) -> Server {
        Server::start_inner(extra, Some(filter))
    }

    /// Like `start`, with the data directory at `dir` (the caller keeps it).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Server {
        Server::start_in_env(dir, extra, &[])
    }

    /// Like `start_in`, with extra environment for the server process.
    pub fn start_in_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            port: free_port(),
            http: free_port(),
            dir: dir.to_path_buf(),
            _tmp: None,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            nofile: None,
        };
        s.spawn();
        s
    }

    /// Like `start`, with the process held to `nofile` descriptors.
    pub fn start_limited(nofile: u64, extra: &[&str], filter: &str) -> Server {
        Server::start_inner_with(extra, Some(filter), Some(nofile))
    }

    fn start_inner(extra: &[&str], filter: Option<&str>) -> Server {
        Server::start_inner_with(extra, filter, None)
    }

    fn start_inner_with(extra: &[&str], filter: Option<&str>, nofile: Option<u64>) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let log = filter.map(|f| (tmp.path().join("server.log"), f.to_string()));
        let mut s = Server {
            port: free_port(),
            http: free_port(),
            dir,
            _tmp: Some(tmp),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log,
            env: Vec::new(),
            nofile,
        };
        s.spawn();
        s
    }

    /// Everything the server logged so far (`start_logged` only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log.as_ref().expect("started with start_logged").0).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
            "--data-dir".into(),
            self.dir.display().to_string(),
            "--dev-auth".into(),
            "--http".into(),
            format!("127.0.0.1:{}", self.http),
        ];
        if !self.extra.iter().any(|a| a == "--shards") {
            args.extend(["--shards".into(), "3".into()]);
        }
        args.extend(self.extra.iter().cloned());
        let (filter, stdout) = match &self.log {
            Some((path, filter)) => {
                let f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
                (filter.clone(), Stdio::from(f))
            }
            // Logs go to stdout: shown when SHARDCHAT_TEST_LOG asks for them.
            None => match std::env::var("SHARDCHAT_TEST_LOG") {
                Ok(f) => (f, Stdio::inherit()),
                Err(_) => ("warn".into(), Stdio::null()),
            },
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardchat"));
        let nofile = self.nofile;
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl and setrlimit only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Killed with the test's thread if the test process dies without unwinding (a
                // harness timeout, a kill): no engine outlives its test. Servers are started and
                // dropped on their test's thread, which is the thread this follows.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(n) = nofile {
                    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .args(&args)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start shardchat");
        // Held by the server before anything can fail, so that a failed start (the panics
        // below) still kills it when the test unwinds, rather than leaving it running.
        self.child = Some(child);
        // Ready means every shard accepts and runs (a process can listen on the port, since the
        // kernel queues connections for any shard's listener, while a shard never started).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready(self.http) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("shardchat exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "server did not become ready (/readyz) within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, user: &str, device: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?user={user}&device={device}", self.port)
    }

    /// A REST URL as `user` (dev identity in the query).
    pub fn rest(&self, path: &str, user: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("http://127.0.0.1:{}{path}{sep}user={user}", self.http)
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process was started and not stopped or killed since.
    #[allow(dead_code)]
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM and wait: the clean shutdown path.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = c.try_wait().unwrap() {
                    assert!(status.success(), "shardchat exited with {status}");
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("shardchat did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits for the process to exit on its own; returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("shardchat did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the crash path.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        // A killed server's listeners may outlive it briefly (io_uring teardown is asynchronous):
        // wait until nothing answers on the port, or the probe below could reach the old one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while StdTcp::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the old server's port stays open");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether the control plane on `http` answers `/readyz` with 200 (a blocking probe).
pub fn ready(http: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = StdTcp::connect(("127.0.0.1", http)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub user: String,
}

impl Client {
    pub async fn connect(s: &Server, user: &str, device: &str) -> Client {
        let (ws, _) =
            tokio_tungstenite::connect_async(s.url(user, device)).await.unwrap_or_else(|e| panic!("connect {user}/{device}: {e}"));
        Client { ws, user: user.into() }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Sends a direct message and returns the ack.
    pub async fn dm(&mut self, to: &str, cmid: &str, body: &str) -> Value {
        self.send(json!({"t":"send","cmid":cmid,"to":to,"body":body})).await;
        self.recv_where(|v| v["t"] == "ack" && v["cmid"] == cmid || v["t"] == "error").await
    }

    /// The next text frame as JSON.
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(FRAME_WAIT, self.ws.next()).await.expect("timed out waiting for a frame");
            match m {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("{}: expected a text frame, got {other:?}", self.user),
            }
        }
    }

    /// Skips frames until one matches.
    pub async fn recv_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// Asserts that nothing arrives for `d`.
    pub async fn silent_for(&mut self, d: Duration) {
        if let Ok(m) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("expected silence, got {m:?}");
        }
    }

    /// Waits for the connection to end; returns the close code if a close frame came.
    pub async fn closed(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await.expect("connection did not close") {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

impl Client {
    /// Syncs `conv` from `have` until caught up (one sync returns at most its limit per
    /// conversation), checking that seqs arrive contiguous; returns the seq after the last one.
    /// Live `msg` frames in between are ignored (sync skips what was delivered live).
    pub async fn catch_up(&mut self, conv: &str, have: u64) -> u64 {
        let mut next = have + 1;
        loop {
            self.send(serde_json::json!({"t":"sync","cursors":{conv: next - 1}})).await;
            let synced = loop {
                let v = self.recv().await;
                match v["t"].as_str().unwrap() {
                    "sync" => {
                        for m in v["messages"].as_array().unwrap() {
                            assert_eq!(seq(m), next, "sync must be contiguous");
                            next += 1;
                        }
                    }
                    "synced" => break v,
                    "msg" => {}
                    other => panic!("unexpected {other} during sync: {v}"),
                }
            };
            if synced["convs"][conv].as_u64().unwrap_or(0) < next {
                return next;
            }
        }
    }
}

/// The sum of a metric over its series whose labels contain `labels` ("" for all), read from
/// the server's /metrics.
pub async fn metric_sum(s: &Server, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", s.http)).await.unwrap().text().await.unwrap();
    text.lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && rest.contains(labels)).then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

pub fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}
