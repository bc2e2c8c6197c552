//! The engine's settings: command-line flags over an optional TOML file over defaults. Every
//! bound names its unit.

use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Every plain setting of `shardchat serve`, once: its doc (also its `--help`), its type and its
/// default. From this table come the [`Config`] field, its default, the `--flag` (an override
/// of the file's value when given) and the TOML key (the field's name); `--help` shows the
/// default ([`ServeArgs::show_defaults`]). The settings that are not plain (`http` with
/// `--no-http`, the URLs that default to none, the secret read from the environment, the
/// development flag) are written out beside the table.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr; )*) => {
        /// Settings of `shardchat serve`, as the engine uses them.
        #[derive(Clone, Debug, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            /// The control plane (REST, health, metrics); None turns it off.
            pub http: Option<SocketAddr>,
            /// Cluster mode: the Redis that holds node liveness and the user directory (`redis://…`).
            pub cluster: Option<String>,
            /// Where messages live: None for the embedded store in `data_dir`, or a `scylla://` URI.
            pub store: Option<String>,
            pub dev_auth: bool,
            pub jwt_secret: Option<String>,
            /// Webhook (http://) that receives push notifications for offline users.
            pub push_webhook: Option<String>,
            /// Media in an S3-compatible object store (`http[s]://HOST[:PORT]/BUCKET`); None keeps
            /// it under `data_dir`.
            pub media_s3: Option<String>,
            pub media_s3_access_key: Option<String>,
            pub media_s3_secret_key: Option<String>,
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    http: Some("127.0.0.1:7701".parse().expect("valid literal")),
                    cluster: None,
                    store: None,
                    dev_auth: false,
                    jwt_secret: None,
                    push_webhook: None,
                    media_s3: None,
                    media_s3_access_key: None,
                    media_s3_secret_key: None,
                    $( $name: $default, )*
                }
            }
        }

        /// Flags of `shardchat serve`. Each overrides the config file's value when given.
        #[derive(Args, Debug, Default)]
        pub struct ServeArgs {
            /// TOML file with any of the settings below (snake_case keys).
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            /// Address of the control plane: REST API, /healthz, /readyz, /metrics. [default: 127.0.0.1:7701]
            #[arg(long)]
            pub http: Option<SocketAddr>,
            /// Run without the control plane.
            #[arg(long, conflicts_with = "http")]
            pub no_http: bool,
            /// Cluster mode: Redis (`redis://HOST:PORT[/DB]`) for node liveness and the user → nodes
            /// directory. Each node needs its own --node-id.
            #[arg(long, value_name = "URL")]
            pub cluster: Option<String>,
            /// Message store: `scylla://HOST[:PORT][,HOST…]/KEYSPACE[?consistency=quorum]` for ScyllaDB
            /// (apply the schema first with `shardchat migrate`); without it, the embedded store in --data-dir.
            #[arg(long, value_name = "URI")]
            pub store: Option<String>,
            /// DEVELOPMENT ONLY: accept `?user=&device=` without a token.
            #[arg(long)]
            pub dev_auth: bool,
            /// HS256 secret that client JWTs are signed with.
            #[arg(long, env = "SHARDCHAT_JWT_SECRET", hide_env_values = true)]
            pub jwt_secret: Option<String>,
            /// Push notifications for offline users are POSTed here (http://; batched, retried, durable).
            #[arg(long, value_name = "URL")]
            pub push_webhook: Option<String>,
            /// Media (uploads, thumbnails) in an S3-compatible object store instead of under
            /// --data-dir: `http[s]://HOST[:PORT]/BUCKET` (path-style), `?style=virtual-host` for
            /// BUCKET.HOST. Clients upload to and download from it directly, by signed URLs.
            #[arg(long, value_name = "URL")]
            pub media_s3: Option<String>,
            /// Access key of the S3 media store.
            #[arg(long, env = "SHARDCHAT_MEDIA_S3_ACCESS_KEY", hide_env_values = true)]
            pub media_s3_access_key: Option<String>,
            /// Secret key of the S3 media store.
            #[arg(long, env = "SHARDCHAT_MEDIA_S3_SECRET_KEY", hide_env_values = true)]
            pub media_s3_secret_key: Option<String>,
            $( $(#[doc = $doc])* #[arg(long)] pub $name: Option<$ty>, )*
        }

        impl ServeArgs {
            /// `serve`'s command with every plain setting's default appended to its help, from
            /// [`Config::default`] (so the help cannot disagree with the defaults).
            pub fn show_defaults(cmd: clap::Command) -> clap::Command {
                let d = Config::default();
                let mut cmd = cmd;
                $(
                    let shown = show(&d.$name);
                    cmd = cmd.mut_arg(stringify!($name), |a| {
                        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                        a.help(format!("{help} [default: {shown}]"))
                    });
                )*
                cmd
            }
        }

        impl Config {
            /// The flags given in `args` over `self`.
            fn overlay(&mut self, args: &ServeArgs) {
                $( if let Some(v) = &args.$name { self.$name = v.clone(); } )*
                if args.http.is_some() {
                    self.http = args.http;
                }
                if args.no_http {
                    self.http = None;
                }
                if args.push_webhook.is_some() {
                    self.push_webhook = args.push_webhook.clone();
                }
                if args.cluster.is_some() {
                    self.cluster = args.cluster.clone();
                }
                if args.store.is_some() {
                    self.store = args.store.clone();
                }
                for (to, from) in [
                    (&mut self.media_s3, &args.media_s3),
                    (&mut self.media_s3_access_key, &args.media_s3_access_key),
                    (&mut self.media_s3_secret_key, &args.media_s3_secret_key),
                ] {
                    if from.is_some() {
                        *to = from.clone();
                    }
                }
                if args.jwt_secret.is_some() {
                    self.jwt_secret = args.jwt_secret.clone();
                }
                self.dev_auth |= args.dev_auth;
            }
        }
    };
}

/// Longest life S3 gives a signed URL, in seconds (7 days).
pub const S3_URL_TTL_S_MAX: u64 = 7 * 24 * 3600;

/// A default as `--help` shows it: paths and addresses without their quotes.
fn show(v: &dyn std::fmt::Debug) -> String {
    format!("{v:?}").trim_matches('"').to_string()
}

settings! {
    /// Address the WebSocket listener binds (every shard binds it with SO_REUSEPORT).
    listen: SocketAddr = "127.0.0.1:7700".parse().expect("valid literal");
    /// Directory of the embedded store (and of the search index, whatever the store).
    data_dir: PathBuf = PathBuf::from("./data");
    /// Number of shards (one thread each, pinned); 0: one per core.
    shards: usize = 0;
    /// This node's id (0..16): part of every message id.
    node_id: usize = 0;
    /// Clock skew tolerated on token times (`exp`, `nbf`), in seconds; a connection is closed
    /// (1008) when its token's `exp` plus this has passed.
    jwt_leeway_s: u64 = shardchat_auth::JWT_LEEWAY_S_DEFAULT;
    /// Close connections silent for longer than this many ms.
    heartbeat_timeout_ms: u64 = 60_000;
    /// Close connections that have not finished the upgrade within this many ms.
    handshake_timeout_ms: u64 = 10_000;
    /// Group commit: the least time between the starts of two commits, in µs. A commit that
    /// comes sooner after the previous one waits the rest and shares the next fsync; one that
    /// comes later waits nothing (0: at once). Fewer fsyncs under load for at most this much
    /// latency. One shard paces its own commits; several share the store's (ARCHITECTURE.md,
    /// group commit).
    commit_interval_us: u64 = 500;
    /// Largest message body in bytes.
    body_bytes_max: usize = shardchat_codec::BODY_BYTES_MAX_DEFAULT;
    /// A connection whose unsent frames exceed this many bytes is closed (1013) and resyncs on
    /// reconnect.
    outbound_queue_bytes_max: usize = 4 * 1024 * 1024;
    /// The read buffer of each shard in bytes (connections own none): the most one read takes.
    shard_read_buffer_bytes: usize = 64 * 1024;
    /// Queued frames are encoded into one write of about this many bytes.
    write_batch_bytes: usize = 64 * 1024;
    /// How long an idle executor spins before parking, in µs: trades CPU for cross-shard
    /// wake-up latency. Off by default: on a host the shards share with anything else (the load
    /// generator, other services) the spin takes the CPU the work needs, and at low traffic it is
    /// most of the engine's CPU. Dedicated hosts chasing latency set 50 (see `tuning/`).
    spin_before_park_us: u64 = 0;
    /// A connection silent and with nothing to send for this many ms is parked: its task and its
    /// reactor source are dropped and its socket waits in the shard's epoll set, at a few dozen
    /// bytes, until it speaks or something is sent to it (0: never park).
    park_idle_ms: u64 = 5_000;
    /// Niceness added to the embedded store's background threads (memtable flushes,
    /// compactions), 0 to 19: a flush is a burst of CPU, and at the shards' weight it takes the
    /// core from the shard it lands beside, whose commits then queue (ARCHITECTURE.md, storage).
    /// 0: the same weight as the shards, for a host run at its limit for long, where the lower
    /// weight lets flushes fall behind until fjall slows the writers (tuning/README.md); 10, a
    /// tenth of it.
    store_maintenance_nice: u8 = 10;
    /// Blocking threads per shard for storage jobs (commits and reads).
    storage_threads_per_shard: usize = 2;
    /// Ops waiting on one owner shard for its next commit (a commit runs at a time): when the
    /// disk lags, sends beyond this get `unavailable` instead of queueing without bound.
    owner_pending_ops_max: usize = 100_000;
    /// New connections a second from one source address, for the whole host (0: unlimited); more
    /// get 429. Off by default: clients behind one NAT or proxy share an address.
    connect_rate_per_ip_per_s: u32 = 0;
    /// Per connection: sends and group changes a second, sustained (0: unlimited); more get
    /// `rate_limited`.
    send_rate_per_s: u32 = 200;
    /// Per connection: sends allowed at once above the sustained rate.
    send_burst: u32 = 1000;
    /// Per connection: history reads a second, sustained (0: unlimited).
    history_rate_per_s: u32 = 50;
    /// Per connection: history reads allowed at once.
    history_burst: u32 = 100;
    /// Per connection: presence_sub/presence_unsub frames a second, sustained (0: unlimited);
    /// more get `rate_limited`.
    presence_rate_per_s: u32 = 20;
    /// Per connection: presence subscription changes allowed at once.
    presence_burst: u32 = 100;
    /// Presence subscriptions one connection may hold at once; more get `rate_limited`.
    presence_subs_per_conn_max: usize = 1024;
    /// One `typing` per user and conversation per this many ms is relayed, the rest dropped.
    typing_interval_ms: u64 = 2_000;
    /// Per user, all of their connections on a node together: sends and group changes a second,
    /// sustained (0: unlimited).
    user_send_rate_per_s: u32 = 400;
    /// Per user: sends allowed at once above the sustained rate.
    user_send_burst: u32 = 2000;
    /// Per user, all of their connections on a node together: history reads a second, sustained
    /// (0: unlimited).
    user_history_rate_per_s: u32 = 100;
    /// Per user: history reads allowed at once.
    user_history_burst: u32 = 200;
    /// Per user, all of their connections on a node together: presence subscription changes a
    /// second, sustained (0: unlimited).
    user_presence_rate_per_s: u32 = 40;
    /// Per user: presence subscription changes allowed at once.
    user_presence_burst: u32 = 200;
    /// WebSocket connections the engine holds at once, handshakes included (0: the descriptor
    /// limit less a reserve for the store, the search index, Redis and the control plane). More
    /// are closed at once, before reading anything.
    connections_max: usize = 0;
    /// Of `connections_max`, those still in their handshake at once (0: a quarter of the
    /// connection bound); a shard holding its share closes its oldest handshake to make room, so
    /// connections that never speak cannot crowd out clients that do.
    handshakes_max: usize = 0;
    /// Connections the control plane (REST, long-poll, metrics) holds at once.
    http_connections_max: usize = 1024;
    /// Bytes one shard holds for partial messages (frames split across reads, fragmented
    /// messages) of all its connections together; the connection that goes past it is closed
    /// (1013).
    partial_bytes_per_shard_max: usize = 64 * 1024 * 1024;
    /// A message must complete within this many ms of its first byte, whatever else (pings) the
    /// client sends meanwhile; else its connection is closed (1008).
    message_complete_timeout_ms: u64 = 10_000;
    /// Long-poll sessions one user may hold at once; a new one beyond it ends their oldest.
    poll_sessions_per_user_max: usize = 8;
    /// Largest media upload, in bytes; a larger one is refused (413) before a byte is sent.
    media_bytes_max: u64 = 25 * 1024 * 1024;
    /// Media bytes one user may upload per UTC day, counted on this node (0: unlimited); past it,
    /// uploads are refused (429) until the next day.
    media_user_bytes_per_day: u64 = 1024 * 1024 * 1024;
    /// Life of a signed media URL (upload or download), in seconds.
    media_url_ttl_s: u64 = 600;
    /// Region the S3 media store signs for (`--media-s3`).
    media_s3_region: String = "us-east-1".to_string();
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
        c.overlay(args);
        if c.shards == 0 {
            c.shards = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        }
        c.validate()?;
        Ok(c)
    }

    /// What is allowed but probably a mistake, one line each: logged at startup.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(secret) = self.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
            if secret.len() < JWT_SECRET_BYTES_MIN {
                out.push(format!(
                    "the JWT secret is {} bytes: HS256 wants at least {JWT_SECRET_BYTES_MIN} random bytes (RFC 7518, 3.2), \
                     and a short one can be guessed offline from any token; generate one with `openssl rand -base64 48`",
                    secret.len()
                ));
            }
        }
        out
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
        if self.media_s3.is_some() && !(1..=S3_URL_TTL_S_MAX).contains(&self.media_url_ttl_s) {
            return Err(format!("with --media-s3, media_url_ttl_s must be 1 to {S3_URL_TTL_S_MAX} (S3 signs URLs for at most 7 days)"));
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
        // 19: Linux's highest niceness.
        if self.store_maintenance_nice > 19 {
            return Err("store_maintenance_nice must be 0 to 19".into());
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
    /// Where `--commit-interval-us` paces commits. One shard holds its ops in the shard until
    /// the interval since its last commit has passed, so what comes meanwhile joins that commit
    /// (at 10,000 one-on-one msg/s p50 fell from 1.03–1.10 to 0.54–0.67 ms). Several shards pace
    /// in the store: spacing the fsyncs of all of them is what merges their commits, and shards
    /// pacing each on its own doubled the fsyncs a message (0.175 → 0.31–0.33 with two).
    pub fn shard_commit_interval_us(&self) -> u64 {
        if self.shards == 1 {
            self.commit_interval_us
        } else {
            0
        }
    }

    /// The store's part of `--commit-interval-us`: what the shard does not pace (see
    /// [`Config::shard_commit_interval_us`]).
    pub fn store_commit_interval(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.commit_interval_us - self.shard_commit_interval_us())
    }

    /// Connections in their handshake held at once, under `connections_max` connections.
    pub fn handshakes_bound(&self, connections_max: usize) -> usize {
        match self.handshakes_max {
            0 => (connections_max / 4).max(1),
            n => n.min(connections_max),
        }
    }
}

impl Config {
    /// What shard `id`'s state machine is told of these settings: the one place an engine
    /// setting reaches the shard logic (the shard keeps its own names and test defaults in
    /// `ShardConfig::new`; the engine's defaults are this table's). `cluster` says whether this
    /// node runs a cluster link.
    pub fn shard(&self, id: usize, cluster: bool) -> shardchat_shard::ShardConfig {
        use shardchat_shard::rate::Rate;
        let mut sc = shardchat_shard::ShardConfig::new(id, self.shards);
        sc.node = self.node_id;
        sc.heartbeat_timeout_ms = self.heartbeat_timeout_ms;
        // Sixteen slots a timeout: a connection is closed within 1/16 of its timeout's end.
        sc.wheel_slot_ms = (self.heartbeat_timeout_ms / 16).clamp(50, 1000);
        // A read frame a quarter of the outbound bound, so answering a read never fills it.
        sc.read_frame_bytes_max = self.outbound_queue_bytes_max / 4;
        sc.push_enabled = self.push_webhook.is_some();
        sc.owner_pending_ops_max = self.owner_pending_ops_max;
        sc.presence_subs_per_conn_max = self.presence_subs_per_conn_max;
        sc.typing_interval_ms = self.typing_interval_ms;
        sc.cluster = cluster;
        sc.commit_interval_us = self.shard_commit_interval_us();
        sc.send_rate = Rate { per_sec: self.send_rate_per_s, burst: self.send_burst };
        sc.history_rate = Rate { per_sec: self.history_rate_per_s, burst: self.history_burst };
        sc.presence_rate = Rate { per_sec: self.presence_rate_per_s, burst: self.presence_burst };
        sc.user_send_rate = Rate { per_sec: self.user_send_rate_per_s, burst: self.user_send_burst };
        sc.user_history_rate = Rate { per_sec: self.user_history_rate_per_s, burst: self.user_history_burst };
        sc.user_presence_rate = Rate { per_sec: self.user_presence_rate_per_s, burst: self.user_presence_burst };
        sc
    }
}

/// Bytes of an HS256 secret below which startup warns: the hash's output size (RFC 7518, 3.2).
pub const JWT_SECRET_BYTES_MIN: usize = 32;
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
    fn every_plain_setting_is_a_flag_whose_help_shows_the_default() {
        use clap::Args as _;
        let cmd = ServeArgs::show_defaults(ServeArgs::augment_args(clap::Command::new("serve")));
        let help = |id: &str| cmd.get_arguments().find(|a| a.get_id() == id).and_then(|a| a.get_help()).map(|h| h.to_string());
        assert!(help("heartbeat_timeout_ms").unwrap().ends_with("[default: 60000]"));
        assert!(help("data_dir").unwrap().ends_with("[default: ./data]"));
        assert!(help("partial_bytes_per_shard_max").unwrap().ends_with(&format!("[default: {}]", 64 << 20)));
        // A flag given overrides the default; one not given leaves it.
        let args = ServeArgs { storage_threads_per_shard: Some(5), dev_auth: true, ..Default::default() };
        let c = Config::load(&args).unwrap();
        assert_eq!((c.storage_threads_per_shard, c.write_batch_bytes), (5, Config::default().write_batch_bytes));
    }

    /// Every setting the shard logic uses reaches it: each is given a value unlike any default
    /// (the engine's and the shard's own), and the shard's config must carry it.
    #[test]
    fn every_shard_setting_reaches_the_shard() {
        let c = Config {
            shards: 3,
            node_id: 5,
            heartbeat_timeout_ms: 8_000,
            outbound_queue_bytes_max: 4_000,
            push_webhook: Some("http://127.0.0.1:1/".into()),
            owner_pending_ops_max: 7,
            presence_subs_per_conn_max: 9,
            typing_interval_ms: 11,
            send_rate_per_s: 13,
            send_burst: 14,
            history_rate_per_s: 15,
            history_burst: 16,
            presence_rate_per_s: 17,
            presence_burst: 18,
            user_send_rate_per_s: 19,
            user_send_burst: 20,
            user_history_rate_per_s: 21,
            user_history_burst: 22,
            user_presence_rate_per_s: 23,
            user_presence_burst: 24,
            ..Config::default()
        };
        let sc = c.shard(2, true);
        let rate = |r: shardchat_shard::rate::Rate| (r.per_sec, r.burst);
        assert_eq!((sc.id, sc.shards, sc.node, sc.cluster, sc.push_enabled), (2, 3, 5, true, true));
        assert_eq!((sc.heartbeat_timeout_ms, sc.wheel_slot_ms, sc.read_frame_bytes_max), (8_000, 500, 1_000));
        assert_eq!((sc.owner_pending_ops_max, sc.presence_subs_per_conn_max, sc.typing_interval_ms), (7, 9, 11));
        assert_eq!([rate(sc.send_rate), rate(sc.history_rate), rate(sc.presence_rate)], [(13, 14), (15, 16), (17, 18)]);
        assert_eq!([rate(sc.user_send_rate), rate(sc.user_history_rate), rate(sc.user_presence_rate)], [(19, 20), (21, 22), (23, 24)]);
    }

    /// The commit interval paces in the one shard, or in the store for several: never both
    /// (each commit would wait twice) and never neither.
    #[test]
    fn the_commit_interval_paces_the_one_shard_or_the_store() {
        for (shards, in_shard, in_store) in [(1, 700, 0), (2, 0, 700), (8, 0, 700)] {
            let c = Config { shards, commit_interval_us: 700, ..Config::default() };
            assert_eq!(c.shard(0, false).commit_interval_us, in_shard, "{shards} shards");
            assert_eq!(c.store_commit_interval(), std::time::Duration::from_micros(in_store), "{shards} shards");
        }
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
    fn the_store_s_maintenance_niceness_is_linux_s_range() {
        let with = |nice: u8| Config::load(&ServeArgs { dev_auth: true, store_maintenance_nice: Some(nice), ..Default::default() });
        assert_eq!(with(19).unwrap().store_maintenance_nice, 19);
        assert_eq!(with(0).unwrap().store_maintenance_nice, 0);
        assert!(with(20).unwrap_err().contains("store_maintenance_nice must be 0 to 19"));
    }

    #[test]
    fn refuses_to_start_without_a_way_to_authenticate() {
        let err = Config::load(&ServeArgs::default()).unwrap_err();
        assert!(err.contains("--jwt-secret"), "{err}");
        let args = ServeArgs { jwt_secret: Some("s".into()), ..Default::default() };
        assert!(Config::load(&args).is_ok());
    }

    /// A short HS256 secret starts (it is the operator's call) but says why it should not.
    #[test]
    fn a_short_jwt_secret_is_warned_about() {
        let with = |secret: &str| Config::load(&ServeArgs { jwt_secret: Some(secret.into()), ..Default::default() }).unwrap();
        let w = with("nineteen-byte-secrt").warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("19 bytes") && w[0].contains("at least 32"), "{w:?}");
        assert!(with(&"k".repeat(JWT_SECRET_BYTES_MIN)).warnings().is_empty());
        assert!(Config::load(&ServeArgs { dev_auth: true, ..Default::default() }).unwrap().warnings().is_empty());
    }
}
