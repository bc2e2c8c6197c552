//! The engine's settings: command-line flags over an optional TOML file over defaults. Every
//! bound names its unit.

use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of `shardchat serve`, as the engine uses them.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// The control plane (REST, health, metrics); None turns it off.
    pub http: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Cluster mode: the Redis that holds node liveness and the user directory (`redis://…`).
    pub cluster: Option<String>,
    /// Where messages live: None for the embedded store in `data_dir`, or a `scylla://` URI.
    pub store: Option<String>,
    /// Shards (executor threads); 0 means one per available core.
    pub shards: usize,
    pub node_id: usize,
    pub dev_auth: bool,
    pub jwt_secret: Option<String>,
    /// Clock skew tolerated on token times (`exp`, `nbf`), in seconds; a connection is closed
    /// (1008) when its token's `exp` plus this has passed.
    pub jwt_leeway_s: u64,
    pub heartbeat_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    /// How long a group-commit leader waits for more writers before its fsync.
    pub commit_interval_us: u64,
    pub body_bytes_max: usize,
    /// A connection whose unsent frames exceed this is closed (1013) and resyncs on reconnect.
    pub outbound_queue_bytes_max: usize,
    /// The read buffer of each shard (connections own none): the most one read takes.
    pub shard_read_buffer_bytes: usize,
    /// Queued frames are encoded into one write of about this many bytes.
    pub write_batch_bytes: usize,
    /// How long an idle executor spins before parking: trades CPU for cross-shard wake-up latency.
    pub spin_before_park_us: u64,
    /// Blocking threads per shard for storage jobs (commits and reads).
    pub storage_threads_per_shard: usize,
    /// Ops waiting on one owner shard for its next commit (a commit runs at a time): when the
    /// disk lags, sends beyond this get `unavailable` instead of queueing without bound.
    pub owner_pending_ops_max: usize,
    /// New connections a second from one source address, for the whole host (0: unlimited).
    /// Off by default: clients behind one NAT or proxy share an address.
    pub connect_rate_per_ip_per_s: u32,
    /// Per connection: sustained `send`s and group changes a second (0: unlimited), and the burst.
    pub send_rate_per_s: u32,
    pub send_burst: u32,
    /// Per connection: sustained `history` reads a second (0: unlimited), and the burst.
    pub history_rate_per_s: u32,
    pub history_burst: u32,
    /// Per connection: sustained `presence_sub`/`presence_unsub` frames a second (0: unlimited),
    /// and the burst.
    pub presence_rate_per_s: u32,
    pub presence_burst: u32,
    /// Presence subscriptions one connection may hold at once.
    pub presence_subs_per_conn_max: usize,
    /// One `typing` per user and conversation per this interval is relayed, the rest dropped.
    pub typing_interval_ms: u64,
    /// Per user, all of their connections on a node together: sustained `send`s and group
    /// changes a second (0: unlimited), and the burst.
    pub user_send_rate_per_s: u32,
    pub user_send_burst: u32,
    /// Per user, all of their connections on a node together: sustained `history` reads a
    /// second (0: unlimited), and the burst.
    pub user_history_rate_per_s: u32,
    pub user_history_burst: u32,
    /// Per user, all of their connections on a node together: sustained presence subscription
    /// changes a second (0: unlimited), and the burst.
    pub user_presence_rate_per_s: u32,
    pub user_presence_burst: u32,
    /// Webhook (http://) that receives push notifications for offline users.
    pub push_webhook: Option<String>,
    /// WebSocket connections the engine holds at once, handshakes included (0: derived from the
    /// descriptor limit, leaving [`Config::fd_reserve`] descriptors for the store, the search
    /// index, Redis and the control plane). More are closed at once, before reading anything.
    pub connections_max: usize,
    /// Of `connections_max`, those still in their handshake (no request head read and
    /// authenticated yet) at once (0: a quarter of `connections_max`); a shard holding its share
    /// closes its oldest handshake to make room, so connections that never speak cannot crowd out
    /// clients that do.
    pub handshakes_max: usize,
    /// Connections the control plane (REST, long-poll, metrics) holds at once.
    pub http_connections_max: usize,
    /// Bytes one shard holds for partial messages (frames split across reads, fragmented
    /// messages) of all its connections together; the connection that goes past it is closed
    /// (1013).
    pub partial_bytes_per_shard_max: usize,
    /// A message must complete within this many ms of its first byte, whatever else (pings) the
    /// client sends meanwhile; else its connection is closed (1008).
    pub message_complete_timeout_ms: u64,
    /// Long-poll sessions one user may hold at once; a new one beyond it ends their oldest.
    pub poll_sessions_per_user_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7700".parse().expect("valid literal"),
            http: Some("127.0.0.1:7701".parse().expect("valid literal")),
            data_dir: PathBuf::from("./data"),
            store: None,
            cluster: None,
            shards: 0,
            node_id: 0,
            dev_auth: false,
            jwt_secret: None,
            jwt_leeway_s: crate::auth::JWT_LEEWAY_S_DEFAULT,
            heartbeat_timeout_ms: 60_000,
            handshake_timeout_ms: 10_000,
            commit_interval_us: 0,
            body_bytes_max: shardchat_codec::BODY_BYTES_MAX_DEFAULT,
            outbound_queue_bytes_max: 4 * 1024 * 1024,
            shard_read_buffer_bytes: 64 * 1024,
            write_batch_bytes: 64 * 1024,
            spin_before_park_us: 50,
            storage_threads_per_shard: 2,
            owner_pending_ops_max: 100_000,
            push_webhook: None,
            connect_rate_per_ip_per_s: 0,
            send_rate_per_s: 200,
            send_burst: 1000,
            history_rate_per_s: 50,
            history_burst: 100,
            presence_rate_per_s: 20,
            presence_burst: 100,
            presence_subs_per_conn_max: 1024,
            typing_interval_ms: 2_000,
            user_send_rate_per_s: 400,
            user_send_burst: 2000,
            user_history_rate_per_s: 100,
            user_history_burst: 200,
            user_presence_rate_per_s: 40,
            user_presence_burst: 200,
            connections_max: 0,
            handshakes_max: 0,
            http_connections_max: 1024,
            partial_bytes_per_shard_max: 64 * 1024 * 1024,
            message_complete_timeout_ms: 10_000,
            poll_sessions_per_user_max: 8,
        }
    }
}

/// Flags of `shardchat serve`. Each overrides the config file's value when given.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address the WebSocket listener binds (every shard binds it with SO_REUSEPORT). [default: 127.0.0.1:7700]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address of the control plane: REST API, /healthz, /readyz, /metrics. [default: 127.0.0.1:7701]
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Run without the control plane.
    #[arg(long, conflicts_with = "http")]
    pub no_http: bool,
    /// Directory of the embedded store. [default: ./data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Cluster mode: Redis (`redis://HOST:PORT[/DB]`) for node liveness and the user → nodes
    /// directory. Each node needs its own --node-id.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// Message store: `scylla://HOST[:PORT][,HOST…]/KEYSPACE[?consistency=quorum]` for ScyllaDB
    /// (apply the schema first with `shardchat migrate`); without it, the embedded store in --data-dir.
    #[arg(long, value_name = "URI")]
    pub store: Option<String>,
    /// Number of shards (one thread each, pinned); default one per core.
    #[arg(long)]
    pub shards: Option<usize>,
    /// This node's id (0..16): part of every message id.
    #[arg(long)]
    pub node_id: Option<usize>,
    /// DEVELOPMENT ONLY: accept `?user=&device=` without a token.
    #[arg(long)]
    pub dev_auth: bool,
    /// HS256 secret that client JWTs are signed with.
    #[arg(long, env = "SHARDCHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Clock skew tolerated on token times, in seconds; connections close when exp + this passes. [default: 30]
    #[arg(long)]
    pub jwt_leeway_s: Option<u64>,
    /// Close connections silent for longer than this. [default: 60000]
    #[arg(long)]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Close connections that have not finished the upgrade within this. [default: 10000]
    #[arg(long)]
    pub handshake_timeout_ms: Option<u64>,
    /// Group commit: wait this long for more writers before each fsync. [default: 0]
    #[arg(long)]
    pub commit_interval_us: Option<u64>,
    /// Largest message body in bytes. [default: 65536]
    #[arg(long)]
    pub body_bytes_max: Option<usize>,
    /// Per-connection outbound queue bound in bytes. [default: 4194304]
    #[arg(long)]
    pub outbound_queue_bytes_max: Option<usize>,
    /// Push notifications for offline users are POSTed here (http://; batched, retried, durable).
    #[arg(long, value_name = "URL")]
    pub push_webhook: Option<String>,
    /// New connections a second from one source address (0: unlimited); more get 429. [default: 0]
    #[arg(long)]
    pub connect_rate_per_ip_per_s: Option<u32>,
    /// Per connection: sends and group changes a second, sustained (0: unlimited); more get `rate_limited`. [default: 200]
    #[arg(long)]
    pub send_rate_per_s: Option<u32>,
    /// Per connection: sends allowed at once above the sustained rate. [default: 1000]
    #[arg(long)]
    pub send_burst: Option<u32>,
    /// Per connection: history reads a second, sustained (0: unlimited). [default: 50]
    #[arg(long)]
    pub history_rate_per_s: Option<u32>,
    /// Per connection: history reads allowed at once. [default: 100]
    #[arg(long)]
    pub history_burst: Option<u32>,
    /// Per connection: presence_sub/presence_unsub frames a second, sustained (0: unlimited); more get `rate_limited`. [default: 20]
    #[arg(long)]
    pub presence_rate_per_s: Option<u32>,
    /// Per connection: presence subscription changes allowed at once. [default: 100]
    #[arg(long)]
    pub presence_burst: Option<u32>,
    /// Presence subscriptions one connection may hold; more get `rate_limited`. [default: 1024]
    #[arg(long)]
    pub presence_subs_per_conn_max: Option<usize>,
    /// One typing notice per user and conversation per this interval is relayed, the rest dropped. [default: 2000]
    #[arg(long)]
    pub typing_interval_ms: Option<u64>,
    /// Per user (all of their connections together): sends and group changes a second, sustained (0: unlimited). [default: 400]
    #[arg(long)]
    pub user_send_rate_per_s: Option<u32>,
    /// Per user: sends allowed at once above the sustained rate. [default: 2000]
    #[arg(long)]
    pub user_send_burst: Option<u32>,
    /// Ops queued on one owner shard while its commit runs (a slow disk backs them up); more get `unavailable`. [default: 100000]
    #[arg(long)]
    pub owner_pending_ops_max: Option<usize>,
    /// Per user (all of their connections together): history reads a second, sustained (0: unlimited). [default: 100]
    #[arg(long)]
    pub user_history_rate_per_s: Option<u32>,
    /// Per user: history reads allowed at once. [default: 200]
    #[arg(long)]
    pub user_history_burst: Option<u32>,
    /// Per user (all of their connections together): presence subscription changes a second, sustained (0: unlimited). [default: 40]
    #[arg(long)]
    pub user_presence_rate_per_s: Option<u32>,
    /// Per user: presence subscription changes allowed at once. [default: 200]
    #[arg(long)]
    pub user_presence_burst: Option<u32>,
    /// Idle executors spin this long before parking. [default: 50]
    #[arg(long)]
    pub spin_before_park_us: Option<u64>,
    /// WebSocket connections held at once, handshakes included; more are closed at once (0: the descriptor limit less a reserve for the store, index, Redis and HTTP). [default: 0]
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// Connections still in their handshake held at once (0: a quarter of the connection bound); beyond it the oldest handshake is closed. [default: 0]
    #[arg(long)]
    pub handshakes_max: Option<usize>,
    /// Control plane (REST, long-poll, metrics) connections held at once. [default: 1024]
    #[arg(long)]
    pub http_connections_max: Option<usize>,
    /// Bytes one shard holds for unfinished messages of all its connections; the connection going past it is closed (1013). [default: 67108864]
    #[arg(long)]
    pub partial_bytes_per_shard_max: Option<usize>,
    /// A message must complete within this many ms of its first byte (pings do not extend it); else 1008. [default: 10000]
    #[arg(long)]
    pub message_complete_timeout_ms: Option<u64>,
    /// Long-poll sessions per user; a new one beyond it ends the user's oldest. [default: 8]
    #[arg(long)]
    pub poll_sessions_per_user_max: Option<usize>,
}

impl Config {
    /// Defaults, then the file, then the flags.
    pub fn load(args: &ServeArgs) -> Result<Config, String> {
        let mut c = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => {$( if let Some(v) = &args.$f { c.$f = v.clone(); } )*};
        }
        over!(
            listen,
            data_dir,
            shards,
            node_id,
            jwt_leeway_s,
            heartbeat_timeout_ms,
            handshake_timeout_ms,
            commit_interval_us,
            body_bytes_max,
            outbound_queue_bytes_max,
            spin_before_park_us,
            connect_rate_per_ip_per_s,
            send_rate_per_s,
            send_burst,
            history_rate_per_s,
            history_burst,
            user_send_rate_per_s,
            user_send_burst,
            owner_pending_ops_max,
            presence_rate_per_s,
            presence_burst,
            presence_subs_per_conn_max,
            typing_interval_ms,
            user_history_rate_per_s,
            user_history_burst,
            user_presence_rate_per_s,
            user_presence_burst,
            connections_max,
            handshakes_max,
            http_connections_max,
            partial_bytes_per_shard_max,
            message_complete_timeout_ms,
            poll_sessions_per_user_max
        );
        if args.http.is_some() {
            c.http = args.http;
        }
        if args.no_http {
            c.http = None;
        }
        if args.push_webhook.is_some() {
            c.push_webhook = args.push_webhook.clone();
        }
        if args.cluster.is_some() {
            c.cluster = args.cluster.clone();
        }
        if args.store.is_some() {
            c.store = args.store.clone();
        }
        if args.jwt_secret.is_some() {
            c.jwt_secret = args.jwt_secret.clone();
        }
        c.dev_auth |= args.dev_auth;
        if c.shards == 0 {
            c.shards = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        }
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        use shardchat_shard::snowflake::{NODES_MAX, SHARDS_PER_NODE_MAX};
        // One worker id per node is the control plane's bridge (it names the groups it creates).
        if self.shards == 0 || self.shards >= SHARDS_PER_NODE_MAX {
            return Err(format!("shards must be 1 to {}", SHARDS_PER_NODE_MAX - 1));
        }
        if self.owner_pending_ops_max == 0 {
            return Err("owner_pending_ops_max must be at least 1".into());
        }
        if self.node_id >= NODES_MAX {
            return Err(format!("node_id must be below {NODES_MAX}"));
        }
        if !self.dev_auth && self.jwt_secret.as_deref().unwrap_or("").is_empty() {
            return Err("no way to authenticate clients: set --jwt-secret (or SHARDCHAT_JWT_SECRET), or --dev-auth for development".into());
        }
        if let Some(url) = &self.push_webhook {
            if !url.starts_with("http://") {
                return Err("push_webhook must be an http:// URL (put a TLS-terminating proxy in front of an https endpoint)".into());
            }
            if self.http.is_none() {
                return Err("push_webhook needs the control plane (--http)".into());
            }
        }
        if let Some(url) = &self.cluster {
            if !url.starts_with("redis://") {
                return Err(format!("cluster must be a redis:// URL (got {url})"));
            }
            // Each node's embedded store is its own: fences written there stop nobody, so two
            // nodes would both sequence a conversation (the same seq acked for different
            // messages), and each node could read only what it stored itself.
            if self.store.is_none() {
                return Err("cluster mode needs a store every node shares: give --store scylla://HOST/KEYSPACE \
                     (the embedded store is one node's own; run independent engines without --cluster instead)"
                    .into());
            }
        }
        if let Some(uri) = &self.store {
            shardchat_storage_scylla::ScyllaConfig::from_uri(uri).map_err(|e| format!("store: {e}"))?;
        }
        if self.http_connections_max == 0 || self.poll_sessions_per_user_max == 0 {
            return Err("http_connections_max and poll_sessions_per_user_max must be at least 1".into());
        }
        if self.message_complete_timeout_ms < 100 {
            return Err("message_complete_timeout_ms must be at least 100".into());
        }
        if self.partial_bytes_per_shard_max < self.ws_message_bytes_max() {
            return Err(format!(
                "partial_bytes_per_shard_max must be at least {} (one message of the largest size)",
                self.ws_message_bytes_max()
            ));
        }
        if self.heartbeat_timeout_ms < 1000 {
            return Err("heartbeat_timeout_ms must be at least 1000".into());
        }
        // Two frames of the largest size must fit: a sync or history frame always carries at
        // least one message, and it is sent once the queue is half empty.
        if self.outbound_queue_bytes_max < 2 * self.ws_message_bytes_max() {
            return Err(format!(
                "outbound_queue_bytes_max must be at least {} (two frames of the largest size)",
                2 * self.ws_message_bytes_max()
            ));
        }
        Ok(())
    }

    /// Largest WebSocket message accepted: a body of the limit, JSON-escaped at worst (6 bytes per
    /// byte for \u00XX), plus the frame's other fields. Larger ones are a protocol violation (1009);
    /// smaller ones with an oversized body get a `too_large` error and the connection stays.
    pub fn ws_message_bytes_max(&self) -> usize {
        self.body_bytes_max * 6 + 4096
    }

    /// Descriptors kept back from WebSocket connections when `connections_max` is derived: the
    /// store's journal and tables, the search index's segments, Redis, the control plane's
    /// connections (`http_connections_max`), handshake hand-offs (a dup each) and the logs.
    pub fn fd_reserve(&self, open_files_max: usize) -> usize {
        (open_files_max / 20).max(FD_RESERVE_MIN) + self.http_connections_max
    }

    /// The WebSocket connections the engine holds at once under `open_files_max` descriptors.
    pub fn connections_bound(&self, open_files_max: usize) -> Result<usize, String> {
        let reserve = self.fd_reserve(open_files_max);
        if self.connections_max > 0 {
            if self.connections_max + reserve > open_files_max {
                return Err(format!(
                    "connections_max {} leaves fewer than the {reserve} descriptors the store, index and control plane need under the limit of {open_files_max} (raise it: see tuning/)",
                    self.connections_max
                ));
            }
            return Ok(self.connections_max);
        }
        match open_files_max.checked_sub(reserve) {
            Some(n) if n >= CONNECTIONS_MIN => Ok(n),
            _ => Err(format!("the descriptor limit {open_files_max} is too low: raise it (ulimit -n; see tuning/)")),
        }
    }
}

impl Config {
    /// Connections in their handshake held at once, under `connections_max` connections.
    pub fn handshakes_bound(&self, connections_max: usize) -> usize {
        match self.handshakes_max {
            0 => (connections_max / 4).max(1),
            n => n.min(connections_max),
        }
    }
}

/// At least this many descriptors stay reserved whatever the limit (the rest of the reserve is
/// a twentieth of the limit plus the control plane's connections).
pub const FD_RESERVE_MIN: usize = 1024;
/// The fewest WebSocket connections a derived bound may leave.
const CONNECTIONS_MIN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nshards = 3\ndev_auth = true\nbody_bytes_max = 1000\n").unwrap();
        let args = ServeArgs { config: Some(path.clone()), shards: Some(2), ..Default::default() };
        let c = Config::load(&args).unwrap();
        assert_eq!((c.listen.port(), c.shards, c.body_bytes_max, c.dev_auth), (9000, 2, 1000, true));
        std::fs::write(&path, "nonsense = 1\n").unwrap();
        assert!(Config::load(&args).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn cluster_mode_refuses_the_embedded_store() {
        let args = ServeArgs { dev_auth: true, cluster: Some("redis://127.0.0.1:1".into()), ..Default::default() };
        let err = Config::load(&args).unwrap_err();
        assert!(err.contains("cluster mode needs a store every node shares"), "{err}");
        let args = ServeArgs { store: Some("scylla://127.0.0.1/ks".into()), ..args };
        assert!(Config::load(&args).is_ok());
    }

    #[test]
    fn the_connection_bound_leaves_descriptors_for_the_rest() {
        let c = Config::default();
        // This machine's 20,000: 1,024 + 1,024 (control plane) kept back.
        assert_eq!(c.connections_bound(20_000), Ok(20_000 - 1_024 - 1_024));
        // A tuned host's million: a twentieth kept back.
        assert_eq!(c.connections_bound(1_000_000), Ok(1_000_000 - 50_000 - 1_024));
        assert!(c.connections_bound(1_500).is_err(), "too few descriptors to run at all");
        let c = Config { connections_max: 5_000, ..Config::default() };
        assert_eq!(c.connections_bound(20_000), Ok(5_000));
        assert!(c.connections_bound(6_000).unwrap_err().contains("connections_max 5000"));
    }

    #[test]
    fn refuses_to_start_without_a_way_to_authenticate() {
        let err = Config::load(&ServeArgs::default()).unwrap_err();
        assert!(err.contains("--jwt-secret"), "{err}");
        let args = ServeArgs { jwt_secret: Some("s".into()), ..Default::default() };
        assert!(Config::load(&args).is_ok());
    }
}
