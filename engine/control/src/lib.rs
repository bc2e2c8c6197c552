//! The control plane: HTTP beside the shards (REST API, health, metrics), on its own tokio
//! runtime and port (`--http`). It never holds shard state: writes go to the owner shards
//! through the bridge (`runtime/bridge.rs`), like a WebSocket client's would; reads that the
//! store answers (history, conversation lists) go to the store on tokio's blocking pool.

mod cluster_search;
mod media;
mod openapi;
mod poll;
mod push;
mod rest;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shardchat_auth::{Authenticator, Identity};
use shardchat_bridge::{Bridge, BridgeOp, BridgeRequest};
use shardchat_codec::{ErrorCode, FrameError, ServerFrame};
use shardchat_config::Config;
use shardchat_storage::MessageStore;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a REST request waits for the shards' answer before it is `unavailable`.
const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Worker threads of the control plane's runtime: it is not the hot path.
const CONTROL_THREADS: usize = 2;

/// What every handler shares.
#[derive(Clone)]
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub store: Arc<dyn MessageStore>,
    pub bridge: Bridge,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Vec<Arc<shardchat_bridge::metrics::ShardMetrics>>>,
    /// Cluster mode's link state, for /metrics.
    pub cluster: Option<Arc<shardchat_cluster::ClusterState>>,
    /// Long-poll sessions by id (the id is the session's connection id at the bridge).
    pub sessions: Arc<std::sync::Mutex<std::collections::HashMap<u64, poll::PollSession>>>,
    pub next_session: Arc<std::sync::atomic::AtomicU64>,
    pub search: Arc<shardchat_search::SearchIndex>,
    /// Uploads and downloads of files (`media.rs`).
    pub media: Arc<media::MediaCtx>,
    /// Whether every shard serves (`/readyz`).
    pub health: Arc<shardchat_bridge::health::Health>,
}

/// An error of the contract's table as an HTTP response: the status says the class, the JSON body
/// `{"code", "msg"}` says which.
pub struct ApiError(pub FrameError);

impl From<FrameError> for ApiError {
    fn from(e: FrameError) -> Self {
        ApiError(e)
    }
}

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::GroupFull => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.0.code.as_str(), "msg": self.0.msg });
        (status_of(self.0.code), Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

fn unauthorized(why: &str) -> Response {
    let body = serde_json::json!({ "code": "unauthorized", "msg": why });
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// The caller's identity: the same rules as the WebSocket upgrade (JWT in `Authorization` or
/// `?token=`; with `--dev-auth`, `?user=`).
pub struct Caller(pub Identity);

impl axum::extract::FromRequestParts<Ctx> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, ctx: &Ctx) -> Result<Self, Response> {
        let authorization = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
        let query: Vec<(String, String)> =
            parts.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        let lookup = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        ctx.auth.authenticate_with(authorization, lookup).map(Caller).map_err(unauthorized)
    }
}

impl Ctx {
    /// Sends an op to the shards and waits for their answer frames.
    pub async fn ask(&self, user: &str, op: BridgeOp) -> ApiResult<Vec<ServerFrame>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = BridgeRequest { user: user.to_string(), op, reply: tx };
        if self.bridge.submit(req).is_err() {
            return Err(FrameError::new(ErrorCode::Unavailable, "shards unavailable").into());
        }
        match tokio::time::timeout(SHARD_ANSWER_TIMEOUT, rx).await {
            Ok(Ok(frames)) => Ok(frames),
            _ => Err(FrameError::new(ErrorCode::Unavailable, "no answer from the shards, retry later").into()),
        }
    }

    /// Sends an op whose answer nobody waits for; whether the bridge took it.
    pub fn submit_quiet(&self, user: &str, op: BridgeOp) -> bool {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        self.bridge.submit(BridgeRequest { user: user.to_string(), op, reply: tx }).is_ok()
    }

    /// Runs a store read on the blocking pool.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn MessageStore) -> Result<T, FrameError> + Send + 'static,
    ) -> ApiResult<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&*store)).await {
            Ok(r) => r.map_err(ApiError),
            Err(_) => Err(FrameError::new(ErrorCode::Internal, "read failed").into()),
        }
    }
}

/// The running control plane.
pub struct ControlPlane {
    thread: std::thread::JoinHandle<()>,
}

/// What the control plane is started with: the engine's shared parts it reads or hands requests to.
pub struct Parts {
    pub cfg: Arc<Config>,
    pub store: Arc<dyn MessageStore>,
    pub bridge: Bridge,
    pub shutdown: Arc<AtomicBool>,
    pub metrics: Vec<Arc<shardchat_bridge::metrics::ShardMetrics>>,
    pub cluster: Option<Arc<shardchat_cluster::ClusterState>>,
    pub search: Arc<shardchat_search::SearchIndex>,
    pub health: Arc<shardchat_bridge::health::Health>,
}

impl ControlPlane {
    /// Binds `--http` and serves until `shutdown` is set.
    pub fn start(parts: Parts) -> Result<ControlPlane, String> {
        let Parts { cfg, store, bridge, shutdown, metrics, cluster, search, health } = parts;
        let addr = cfg.http.ok_or("no --http address")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(CONTROL_THREADS)
            .thread_name("control")
            .enable_all()
            .build()
            .map_err(|e| format!("control plane runtime: {e}"))?;
        // Like the WebSocket listener: right after a crash the old process's socket may linger a
        // moment, so a restart retries for a few seconds.
        let listener = rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                        tracing::warn!(http = %addr, "address in use; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    r => return r,
                }
            }
        });
        let listener = listener.map_err(|e| format!("binding --http {addr}: {e}"))?;
        let auth = Arc::new(Authenticator::with_leeway(cfg.jwt_secret.as_deref(), cfg.dev_auth, cfg.jwt_leeway_s));
        let media = Arc::new(media::MediaCtx::open(&cfg)?);
        let ctx = Ctx {
            cfg,
            store,
            bridge,
            auth,
            metrics: Arc::new(metrics),
            cluster,
            sessions: Default::default(),
            next_session: Default::default(),
            search,
            media,
            health,
        };
        let http_connections_max = ctx.cfg.http_connections_max;
        let reaper = ctx.clone();
        let reclaimer = ctx.clone();
        let pusher = ctx.cfg.push_webhook.clone().map(|url| (ctx.clone(), url));
        let app = rest::router(ctx);
        tracing::info!(http = %addr, "control plane listening");
        tracing::info!("web client: http://{addr}/  (REST: http://{addr}/v1/openapi.json)");
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::spawn(poll::reap(reaper));
                    tokio::spawn(media::reclaim(reclaimer));
                    if let Some((ctx, url)) = pusher {
                        tracing::info!(webhook = %url, "push notifications on");
                        tokio::spawn(push::run(ctx, url));
                    }
                    let stop = async move {
                        while !shutdown.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    };
                    let listener = Bounded::new(listener, http_connections_max);
                    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                        tracing::error!(error = %e, "control plane failed");
                    }
                });
            })
            .map_err(|e| format!("control plane thread: {e}"))?;
        Ok(ControlPlane { thread })
    }

    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// The control plane's listener, holding at most `max` connections: at the bound it stops
/// accepting, so further clients wait in the kernel's backlog (holding no descriptor of ours)
/// until one closes, and REST or long-poll clients can never take the descriptors the shards'
/// store needs.
struct Bounded {
    inner: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Bounded {
    fn new(inner: tokio::net::TcpListener, max: usize) -> Bounded {
        Bounded { inner, slots: Arc::new(tokio::sync::Semaphore::new(max)) }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = BoundedIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (BoundedIo, std::net::SocketAddr) {
        let permit = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (BoundedIo { io, _permit: permit }, addr)
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// A control plane connection and its place under the bound, given back when it closes.
struct BoundedIo {
    io: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for BoundedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for BoundedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
