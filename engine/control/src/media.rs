//! Media over HTTP (docs/protocol.md, "Media"): upload URLs, the uploads themselves, download
//! URLs for those who may read the message that shares a file, and the downloads.
//!
//! Two stores, by content (`engine/media`), never touched by the shards:
//! - embedded (the default): files under the data directory. The bytes come through this
//!   server, to the store on the control plane's blocking pool.
//! - S3-compatible (`--media-s3`): the URLs this server hands out are the object store's own,
//!   signed, so clients move the bytes to and from it directly; this server only checks an
//!   upload when it completes (size and SHA-256), and reads images to make their thumbnails.
//!
//! An upload is granted by a signed token naming its user, size, content type and (needed by
//! S3, optional on the embedded store) SHA-256, so the PUT needs no other credential and the
//! store holds no half-made state; a download URL names one object and how it is served. Every
//! bound is a flag: bytes per file, bytes per user per day, a URL's life.

use crate::{ApiResult, Caller, Ctx};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shardchat_codec::{ErrorCode, FrameError, Media};
use shardchat_media::{images, FsMediaStore, Grant, MediaError, MediaStore, S3Media, Signer};
use shardchat_shard::read::{readable_upto, unavailable};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Thumbnails made at once (each decodes an image of up to `images::DECODE_BYTES_MAX`).
const THUMBNAILS_AT_ONCE: usize = 2;
/// Longest a thumbnail may take before the upload is answered without one.
const THUMBNAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks of an upload in flight between the request and the writer thread.
const UPLOAD_CHUNKS_IN_FLIGHT: usize = 8;
/// How often unfinished uploads are looked for.
const RECLAIM_EVERY: Duration = Duration::from_secs(60);
/// Longest one request of this server to the S3 store may take (a HEAD, or a GET or PUT of at
/// most `--media-bytes-max`).
const S3_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Life of the URLs this server signs for its own requests to the S3 store.
const S3_OWN_URL_TTL: Duration = Duration::from_secs(300);

/// Where the bytes are.
enum Backend {
    /// Embedded: this server receives and serves the bytes.
    Fs(Arc<dyn MediaStore>),
    /// An S3-compatible object store: clients move the bytes, by URLs signed here.
    S3 { s3: Arc<S3Media>, http: reqwest::Client },
}

/// The media part of the control plane's state.
pub struct MediaCtx {
    backend: Backend,
    signer: Signer,
    /// (user) → (UTC day, bytes uploaded that day), on this node.
    quota: Mutex<HashMap<String, (u64, u64)>>,
    thumbnails: tokio::sync::Semaphore,
    pub metrics: MediaMetrics,
}

#[derive(Default)]
pub struct MediaMetrics {
    uploads: AtomicU64,
    bytes: AtomicU64,
    deduplicated: AtomicU64,
    refused_too_large: AtomicU64,
    refused_quota: AtomicU64,
    refused_link: AtomicU64,
    incomplete: AtomicU64,
    mismatched: AtomicU64,
    thumbnails_made: AtomicU64,
    thumbnails_failed: AtomicU64,
    downloads: AtomicU64,
}

impl MediaMetrics {
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP shardchat_media_uploads_total Uploads stored (new objects and deduplicated ones).\n# TYPE shardchat_media_uploads_total counter\nshardchat_media_uploads_total {}", get(&self.uploads));
        let _ = writeln!(out, "# HELP shardchat_media_uploaded_bytes_total Bytes of uploads stored.\n# TYPE shardchat_media_uploaded_bytes_total counter\nshardchat_media_uploaded_bytes_total {}", get(&self.bytes));
        let _ = writeln!(out, "# HELP shardchat_media_deduplicated_total Uploads whose bytes were stored already.\n# TYPE shardchat_media_deduplicated_total counter\nshardchat_media_deduplicated_total {}", get(&self.deduplicated));
        let _ = writeln!(
            out,
            "# HELP shardchat_media_refused_total Uploads and downloads refused, by why.\n# TYPE shardchat_media_refused_total counter"
        );
        for (why, a) in [
            ("too_large", &self.refused_too_large),
            ("quota", &self.refused_quota),
            ("link", &self.refused_link),
            ("incomplete", &self.incomplete),
            ("mismatched", &self.mismatched),
        ] {
            let _ = writeln!(out, "shardchat_media_refused_total{{why=\"{why}\"}} {}", get(a));
        }
        let _ = writeln!(
            out,
            "# HELP shardchat_media_thumbnails_total Thumbnails attempted, by result.\n# TYPE shardchat_media_thumbnails_total counter"
        );
        let _ = writeln!(out, "shardchat_media_thumbnails_total{{result=\"made\"}} {}", get(&self.thumbnails_made));
        let _ = writeln!(out, "shardchat_media_thumbnails_total{{result=\"failed\"}} {}", get(&self.thumbnails_failed));
        let _ = writeln!(out, "# HELP shardchat_media_downloads_total Downloads served.\n# TYPE shardchat_media_downloads_total counter\nshardchat_media_downloads_total {}", get(&self.downloads));
    }
}

impl MediaCtx {
    /// The embedded media store under `<data dir>/media`, URLs signed with a key derived from
    /// the JWT secret (a random one per process without it).
    pub fn open(cfg: &shardchat_config::Config) -> Result<MediaCtx, String> {
        let backend = match &cfg.media_s3 {
            None => Backend::Fs(Arc::new(FsMediaStore::open(&cfg.data_dir.join("media")).map_err(|e| e.to_string())?)),
            Some(url) => {
                let key = |k: &Option<String>| k.clone().unwrap_or_default();
                let s3 = S3Media::new(url, &cfg.media_s3_region, &key(&cfg.media_s3_access_key), &key(&cfg.media_s3_secret_key))?;
                let http = reqwest::Client::builder().timeout(S3_REQUEST_TIMEOUT).build().map_err(|e| format!("media: {e}"))?;
                Backend::S3 { s3: Arc::new(s3), http }
            }
        };
        let signer = match cfg.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(secret) => Signer::from_secret(secret.as_bytes()),
            None => Signer::random().map_err(|e| format!("media signing key: {e}"))?,
        };
        Ok(MediaCtx {
            backend,
            signer,
            quota: Mutex::default(),
            thumbnails: tokio::sync::Semaphore::new(THUMBNAILS_AT_ONCE),
            metrics: MediaMetrics::default(),
        })
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn failed(e: impl std::fmt::Display) -> FrameError {
    FrameError::new(ErrorCode::Unavailable, format!("media storage: {e}"))
}

/// Removes what interrupted uploads left, every minute (older than a URL's life: none of them
/// can still be written).
pub async fn reclaim(ctx: Ctx) {
    let mut every = tokio::time::interval(RECLAIM_EVERY);
    loop {
        every.tick().await;
        // Nothing to reclaim in S3: a PUT stores a whole object or none.
        let Backend::Fs(store) = &ctx.media.backend else { return };
        let store = store.clone();
        let older_than = Duration::from_secs(ctx.cfg.media_url_ttl_s + 60);
        match tokio::task::spawn_blocking(move || store.reclaim(older_than)).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(files = n, "media: unfinished uploads reclaimed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "media: reclaiming unfinished uploads"),
            _ => {}
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct NewUpload {
    /// `type/subtype`, lowercase, as the file will be served.
    #[schema(pattern = "^[a-z0-9+.-]+/[a-z0-9+.-]+$", max_length = 127, example = "image/png")]
    content_type: String,
    /// The file's exact size in bytes (the server's bound: `--media-bytes-max`).
    #[serde(deserialize_with = "crate::rest::integral")]
    #[schema(minimum = 1)]
    size: u64,
    /// The file's name, at most 255 characters.
    #[schema(max_length = 255, example = "cat.png")]
    name: String,
    /// The SHA-256 of the file's bytes, lowercase hex: the PUT must carry exactly those bytes,
    /// and the upload is then completed at `complete_url`. Required when the server keeps media
    /// in S3 (`--media-s3`); optional on the embedded store, whose PUT answers the media object.
    #[schema(pattern = "^[0-9a-f]{64}$", min_length = 64, max_length = 64)]
    #[serde(default)]
    sha256: Option<String>,
}

#[utoipa::path(post, path = "/v1/uploads", tag = "media", request_body = NewUpload, responses((status = 200, description = "where to PUT the bytes: a signed URL for this size and content type, until `expires_at`", body = crate::openapi::UploadGrant)), security(("bearer" = [])))]
pub(crate) async fn new_upload(State(ctx): State<Ctx>, Caller(me): Caller, Json(u): Json<NewUpload>) -> ApiResult<Json<Value>> {
    if !shardchat_media::valid_content_type(&u.content_type)
        || u.size == 0
        || u.name.chars().count() > shardchat_codec::MEDIA_NAME_CHARS_MAX
        || u.sha256.as_deref().is_some_and(|h| !shardchat_media::valid_media_id(h))
    {
        return Err(FrameError::bad_request(
            "content_type type/subtype, size of at least 1, name of at most 255 characters, sha256 of 64 lowercase hex digits",
        )
        .into());
    }
    if matches!(ctx.media.backend, Backend::S3 { .. }) && u.sha256.is_none() {
        return Err(FrameError::bad_request("this server keeps media in S3: name the file's sha256 (lowercase hex)").into());
    }
    let m = &ctx.media;
    if u.size > ctx.cfg.media_bytes_max {
        m.metrics.refused_too_large.fetch_add(1, Ordering::Relaxed);
        return Err(
            FrameError::new(ErrorCode::TooLarge, format!("a file of {} bytes; the limit is {}", u.size, ctx.cfg.media_bytes_max)).into()
        );
    }
    // The embedded store counts the bytes it receives; S3 receives them unseen, so what is
    // granted counts.
    let count_now = matches!(m.backend, Backend::S3 { .. });
    if !within_quota(&ctx, &me.user, u.size, count_now) {
        m.metrics.refused_quota.fetch_add(1, Ordering::Relaxed);
        return Err(FrameError::new(ErrorCode::RateLimited, "today's media bytes are used up; retry tomorrow (UTC)").into());
    }
    let exp = now_s() + ctx.cfg.media_url_ttl_s;
    let sha256 = u.sha256.clone();
    let grant = Grant::Put { user: me.user, size: u.size, ct: u.content_type.clone(), name: u.name, sha256: u.sha256, exp };
    let token = m.signer.sign(&grant);
    let mut headers = serde_json::Map::new();
    headers.insert("content-type".into(), u.content_type.clone().into());
    let url = match (&m.backend, &sha256) {
        (Backend::S3 { s3, .. }, Some(id)) => {
            let put = s3.put(id, u.size, &u.content_type, Duration::from_secs(ctx.cfg.media_url_ttl_s));
            headers.extend(put.headers.into_iter().map(|(k, v)| (k.to_string(), v.into())));
            put.url
        }
        _ => format!("/v1/uploads/{token}"),
    };
    let complete_url = sha256.map(|_| format!("/v1/uploads/{token}/complete"));
    Ok(Json(json!({
        "url": url, "method": "PUT", "headers": headers, "content_type": u.content_type, "size": u.size,
        "expires_at": exp, "complete_url": complete_url,
    })))
}

/// Whether `user` may upload `size` more bytes today; with `count`, counts them.
fn within_quota(ctx: &Ctx, user: &str, size: u64, count: bool) -> bool {
    let per_day = ctx.cfg.media_user_bytes_per_day;
    let day = now_s() / 86_400;
    let mut q = ctx.media.quota.lock().unwrap_or_else(|e| e.into_inner());
    // Yesterday's entries go: the table holds today's uploaders only.
    q.retain(|_, (d, _)| *d == day);
    let used = q.get(user).map_or(0, |(_, b)| *b);
    if per_day != 0 && used.saturating_add(size) > per_day {
        return false;
    }
    if count {
        q.insert(user.to_string(), (day, used + size));
    }
    true
}

#[utoipa::path(put, path = "/v1/uploads/{token}", tag = "media",
    params(("token" = String, Path, max_length = 2048, description = "the signed grant `POST /v1/uploads` answered")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "exactly the granted size of bytes, sent with the granted content type"),
    responses((status = 200, description = "stored: the `media` object for the message that shares it", body = crate::openapi::Media),
              (status = 400, description = "bad_request: fewer bytes than granted, or another content type", body = crate::openapi::ErrorBody),
              (status = 403, description = "forbidden: a link that is not this server's, or has expired", body = crate::openapi::ErrorBody),
              (status = 413, description = "too_large: more bytes than granted", body = crate::openapi::ErrorBody),
              (status = 429, description = "rate_limited: the uploader's bytes for today are used up", body = crate::openapi::ErrorBody),
              (status = 503, description = "unavailable: media storage failed", body = crate::openapi::ErrorBody)))]
pub(crate) async fn put_upload(
    State(ctx): State<Ctx>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let m = &ctx.media;
    let Ok(Grant::Put { user, size, ct, name, sha256, .. }) = m.signer.check(&token, now_s()) else {
        m.metrics.refused_link.fetch_add(1, Ordering::Relaxed);
        return Err(FrameError::new(ErrorCode::Forbidden, "not a valid upload link (expired, or not this server's)").into());
    };
    let Backend::Fs(store) = &m.backend else {
        return Err(FrameError::new(ErrorCode::NotFound, "this server keeps media in S3: PUT the bytes to the URL the grant gave").into());
    };
    let sent_ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if sent_ct != ct {
        return Err(FrameError::bad_request(format!("this link takes content type {ct}")).into());
    }
    if !within_quota(&ctx, &user, size, false) {
        m.metrics.refused_quota.fetch_add(1, Ordering::Relaxed);
        return Err(FrameError::new(ErrorCode::RateLimited, "today's media bytes are used up; retry tomorrow (UTC)").into());
    }
    // The bytes go to a writer on the blocking pool as they come (a bounded channel: a slow disk
    // slows the client, never fills memory); the upload's life bounds how long it may take.
    let upload = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.begin(size, sha256)).await.map_err(failed)?.map_err(failed)?
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(UPLOAD_CHUNKS_IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = upload;
        while let Some(chunk) = rx.blocking_recv() {
            upload.write(&chunk)?;
        }
        upload.finish()
    });
    let feed = async {
        use futures::StreamExt;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return false };
            if tx.send(chunk).await.is_err() {
                // The writer stopped (too many bytes): what it says is the answer.
                return true;
            }
        }
        true
    };
    let whole = tokio::time::timeout(Duration::from_secs(ctx.cfg.media_url_ttl_s), feed).await.unwrap_or(false);
    drop(tx);
    let stored = writer.await.map_err(failed)?;
    let stored = match (whole, stored) {
        (_, Err(MediaError::TooLarge(n))) => {
            m.metrics.refused_too_large.fetch_add(1, Ordering::Relaxed);
            return Err(FrameError::new(ErrorCode::TooLarge, format!("more than the {n} bytes this link takes")).into());
        }
        (false, _) | (_, Err(MediaError::Short { .. })) => {
            m.metrics.incomplete.fetch_add(1, Ordering::Relaxed);
            return Err(FrameError::bad_request(format!("the upload ended short of its {size} bytes; nothing was stored")).into());
        }
        (true, Err(e @ MediaError::Mismatch { .. })) => {
            m.metrics.mismatched.fetch_add(1, Ordering::Relaxed);
            return Err(FrameError::bad_request(format!("{e}; nothing was stored")).into());
        }
        (true, Err(e)) => return Err(failed(e).into()),
        (true, Ok(s)) => s,
    };
    within_quota(&ctx, &user, size, true);
    m.metrics.uploads.fetch_add(1, Ordering::Relaxed);
    m.metrics.bytes.fetch_add(size, Ordering::Relaxed);
    if stored.existed {
        m.metrics.deduplicated.fetch_add(1, Ordering::Relaxed);
    }
    let mut media = Media { id: stored.id, content_type: ct, size, name, width: None, height: None, thumbnail: None };
    if is_image(&media.content_type) {
        let source = ImageSource::Stored(media.id.clone());
        image_extras(&ctx, &mut media, source).await;
    }
    Ok(Json(serde_json::to_value(&media).expect("media serializes")))
}

/// An image's (width, height), its thumbnail's bytes, and the thumbnail's id once stored.
type Shrunk = ((u32, u32), Vec<u8>, Option<String>);

/// Images this server measures and shrinks.
fn is_image(content_type: &str) -> bool {
    matches!(content_type, "image/png" | "image/jpeg")
}

/// An image's bytes, for its dimensions and thumbnail.
enum ImageSource {
    /// Object `id` of the embedded store, opened on the blocking pool.
    Stored(String),
    /// An object of the embedded store, open.
    File(std::fs::File),
    /// An object read from S3.
    Bytes(Vec<u8>),
}

#[utoipa::path(post, path = "/v1/uploads/{token}/complete", tag = "media",
    params(("token" = String, Path, max_length = 2048, description = "the signed grant `POST /v1/uploads` answered (its `complete_url`)")),
    responses((status = 200, description = "the bytes are stored and are those the grant named: the `media` object for the message that shares it", body = crate::openapi::Media),
              (status = 400, description = "bad_request: the bytes stored are not those named (they are removed), or the grant named no sha256", body = crate::openapi::ErrorBody),
              (status = 403, description = "forbidden: a link that is not this server's, or has expired", body = crate::openapi::ErrorBody),
              (status = 404, description = "not_found: nothing was uploaded to this link yet", body = crate::openapi::ErrorBody),
              (status = 503, description = "unavailable: media storage failed", body = crate::openapi::ErrorBody)))]
pub(crate) async fn complete_upload(State(ctx): State<Ctx>, Path(token): Path<String>) -> ApiResult<Json<Value>> {
    let m = &ctx.media;
    let Ok(Grant::Put { size, ct, name, sha256, .. }) = m.signer.check(&token, now_s()) else {
        m.metrics.refused_link.fetch_add(1, Ordering::Relaxed);
        return Err(FrameError::new(ErrorCode::Forbidden, "not a valid upload link (expired, or not this server's)").into());
    };
    let Some(id) = sha256 else {
        return Err(FrameError::bad_request("this upload named no sha256: its PUT answered the media object").into());
    };
    let nothing = || FrameError::new(ErrorCode::NotFound, "nothing was uploaded to this link yet: PUT the bytes first");
    let mut media = Media { id: id.clone(), content_type: ct, size, name, width: None, height: None, thumbnail: None };
    match &m.backend {
        Backend::Fs(store) => {
            let (store, found) = (store.clone(), id.clone());
            // Content-addressed: an object under this id holds exactly the bytes named.
            let file = tokio::task::spawn_blocking(move || store.open(&found)).await.map_err(failed)?.map_err(failed)?;
            let file = file.ok_or_else(nothing)?;
            if is_image(&media.content_type) {
                image_extras(&ctx, &mut media, ImageSource::File(file)).await;
            }
        }
        Backend::S3 { s3, http } => {
            let bytes = s3_check_upload(&ctx, s3, http, &id, size).await?.ok_or_else(nothing)?;
            m.metrics.uploads.fetch_add(1, Ordering::Relaxed);
            m.metrics.bytes.fetch_add(size, Ordering::Relaxed);
            if is_image(&media.content_type) {
                let bytes = match bytes {
                    Some(b) => b,
                    None => s3_get(http, &s3.get(&id, &media.content_type, "inline", S3_OWN_URL_TTL), size).await.map_err(failed)?,
                };
                image_extras(&ctx, &mut media, ImageSource::Bytes(bytes)).await;
            }
        }
    }
    Ok(Json(serde_json::to_value(&media).expect("media serializes")))
}

/// Whether object `id` is in S3 holding exactly the `size` bytes whose SHA-256 is `id`: None if
/// absent, Some(bytes read) if present and right (the bytes when this server had to read them
/// to hash them). Wrong bytes under the name are deleted and refused.
async fn s3_check_upload(
    ctx: &Ctx,
    s3: &S3Media,
    http: &reqwest::Client,
    id: &str,
    size: u64,
) -> Result<Option<Option<Vec<u8>>>, FrameError> {
    let head = s3.head(id, S3_OWN_URL_TTL);
    let answer = with_signed_headers(http.head(&head.url), &head).send().await.map_err(failed)?;
    match answer.status() {
        reqwest::StatusCode::NOT_FOUND => return Ok(None),
        s if !s.is_success() => return Err(failed(format!("S3 HEAD: {s}"))),
        _ => {}
    }
    let stored_size = answer.headers().get(reqwest::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let checksum = answer.headers().get("x-amz-checksum-sha256").and_then(|v| v.to_str().ok()).map(str::to_string);
    let want = shardchat_media::checksum_header(id).expect("a media id");
    let (right, read) = match (stored_size, checksum) {
        (Some(n), _) if n != size => (false, None),
        // The store verified the bytes against this checksum when it took them.
        (_, Some(sum)) => (sum == want, None),
        // A store that keeps no checksum: hash the bytes here.
        _ => {
            let bytes = s3_get(http, &s3.get(id, "application/octet-stream", "attachment", S3_OWN_URL_TTL), size).await.map_err(failed)?;
            let got = shardchat_media::sha256_hex(&bytes);
            (got == id && bytes.len() as u64 == size, Some(bytes))
        }
    };
    if !right {
        ctx.media.metrics.mismatched.fetch_add(1, Ordering::Relaxed);
        let _ = http.delete(s3.delete(id, S3_OWN_URL_TTL)).send().await;
        return Err(FrameError::bad_request(format!("the bytes uploaded are not the {size} bytes of SHA-256 {id}; they were removed")));
    }
    Ok(Some(read))
}

/// `req` with the headers its signature covers.
fn with_signed_headers(mut req: reqwest::RequestBuilder, signed: &shardchat_media::Signed) -> reqwest::RequestBuilder {
    for (k, v) in &signed.headers {
        req = req.header(*k, v);
    }
    req
}

/// Object bytes from a signed S3 GET: at most `size_max` of them.
async fn s3_get(http: &reqwest::Client, url: &str, size_max: u64) -> Result<Vec<u8>, String> {
    let mut answer = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !answer.status().is_success() {
        return Err(format!("S3 GET: {}", answer.status()));
    }
    let mut out = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| e.to_string())? {
        if (out.len() + chunk.len()) as u64 > size_max {
            return Err(format!("S3 object larger than its {size_max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Stores a thumbnail's bytes (a JPEG) in S3 under its SHA-256; answers that id.
async fn s3_put(s3: &S3Media, http: &reqwest::Client, bytes: Vec<u8>) -> Result<String, String> {
    let id = shardchat_media::sha256_hex(&bytes);
    let put = s3.put(&id, bytes.len() as u64, "image/jpeg", S3_OWN_URL_TTL);
    let answer = with_signed_headers(http.put(&put.url).body(bytes), &put).send().await.map_err(|e| e.to_string())?;
    if !answer.status().is_success() {
        return Err(format!("S3 PUT: {}", answer.status()));
    }
    Ok(id)
}

/// An image's dimensions and thumbnail, off the shards, bounded in pixels, memory and time; an
/// image that cannot be measured or shrunk (malformed, a decompression bomb) is stored without
/// them.
async fn image_extras(ctx: &Ctx, media: &mut Media, source: ImageSource) {
    let m = &ctx.media;
    let Ok(_permit) = m.thumbnails.acquire().await else { return };
    let fs = match &m.backend {
        Backend::Fs(store) => Some(store.clone()),
        Backend::S3 { .. } => None,
    };
    // Measured and shrunk on the blocking pool; stored there too on the embedded store, by the
    // S3 client here otherwise.
    let job = tokio::task::spawn_blocking(move || -> Result<Shrunk, String> {
        let from_file = |mut f: std::fs::File| -> Result<((u32, u32), Vec<u8>), String> {
            use std::io::Seek as _;
            let dims = images::dimensions(&mut f)?;
            f.rewind().map_err(|e| e.to_string())?;
            Ok((dims, images::thumbnail(f)?))
        };
        let (dims, thumb) = match source {
            ImageSource::Stored(id) => {
                let store = fs.as_ref().expect("only the embedded store names its objects so");
                from_file(store.open(&id).map_err(|e| e.to_string())?.ok_or_else(|| "stored object missing".to_string())?)?
            }
            ImageSource::File(f) => from_file(f)?,
            ImageSource::Bytes(b) => (images::dimensions(std::io::Cursor::new(&b))?, images::thumbnail(std::io::Cursor::new(&b))?),
        };
        let Some(store) = fs else { return Ok((dims, thumb, None)) };
        let mut up = store.begin(thumb.len() as u64, None).map_err(|e| e.to_string())?;
        up.write(&thumb).map_err(|e| e.to_string())?;
        Ok((dims, Vec::new(), Some(up.finish().map_err(|e| e.to_string())?.id)))
    });
    let stored = async {
        let (dims, thumb, id) = job.await.map_err(|e| e.to_string())??;
        match (id, &m.backend) {
            (Some(id), _) => Ok::<_, String>((dims, id)),
            (None, Backend::S3 { s3, http }) => Ok((dims, s3_put(s3, http, thumb).await?)),
            (None, Backend::Fs(_)) => unreachable!("the embedded store stored the thumbnail on the pool"),
        }
    };
    match tokio::time::timeout(THUMBNAIL_TIMEOUT, stored).await {
        Ok(Ok(((w, h), thumb))) => {
            m.metrics.thumbnails_made.fetch_add(1, Ordering::Relaxed);
            (media.width, media.height, media.thumbnail) = (Some(w), Some(h), Some(thumb));
        }
        Ok(Err(e)) => {
            m.metrics.thumbnails_failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(error = %e, "media: no thumbnail for an image");
        }
        _ => {
            m.metrics.thumbnails_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("media: a thumbnail took too long; the image is stored without one");
        }
    }
}

#[utoipa::path(get, path = "/v1/conversations/{conv}/messages/{seq}/media", tag = "media",
    params(crate::openapi::ConvPath, ("seq" = i64, Path, minimum = 1)),
    responses((status = 200, description = "signed download URLs for the file message `seq` shares (and its thumbnail), until `expires_at`", body = crate::openapi::MediaLinks)),
    security(("bearer" = [])))]
pub(crate) async fn links(State(ctx): State<Ctx>, Caller(me): Caller, Path((conv, seq)): Path<(String, u64)>) -> ApiResult<Json<Value>> {
    crate::rest::check_conv(&conv)?;
    let user = me.user;
    let record = ctx
        .read(move |store| {
            // A former member is given what they could read: messages up to where they left.
            let upto = readable_upto(store, &conv, &user)?;
            if seq == 0 || seq > upto {
                return Err(FrameError::new(ErrorCode::NotFound, "no such message for this caller"));
            }
            store
                .messages_after(&conv, seq - 1, 1)
                .map_err(unavailable)?
                .pop()
                .filter(|m| m.seq == seq)
                .ok_or_else(|| FrameError::new(ErrorCode::NotFound, "no such message"))
        })
        .await?;
    let Some(media) = record.media else {
        return Err(FrameError::new(ErrorCode::NotFound, "this message shares no file").into());
    };
    let exp = now_s() + ctx.cfg.media_url_ttl_s;
    let sign = |id: &str, ct: &str, name: &str| match &ctx.media.backend {
        Backend::Fs(_) => {
            format!("/v1/media/{}", ctx.media.signer.sign(&Grant::Get { id: id.into(), ct: ct.into(), name: name.into(), exp }))
        }
        // The object store serves it, as this server would: type and disposition are signed.
        Backend::S3 { s3, .. } => s3.get(id, ct, &disposition(ct, name), Duration::from_secs(ctx.cfg.media_url_ttl_s)),
    };
    let url = sign(&media.id, &media.content_type, &media.name);
    let thumbnail_url = media.thumbnail.as_deref().map(|t| sign(t, "image/jpeg", "thumbnail.jpg"));
    Ok(Json(json!({ "url": url, "thumbnail_url": thumbnail_url, "expires_at": exp, "media": media })))
}

#[utoipa::path(get, path = "/v1/media/{token}", tag = "media",
    params(("token" = String, Path, max_length = 2048, description = "a signed download link")),
    responses((status = 200, description = "the file's bytes, with the content type it was uploaded as", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 400, description = "bad_request: not a link", body = crate::openapi::ErrorBody),
              (status = 403, description = "forbidden: a link that is not this server's, or has expired", body = crate::openapi::ErrorBody),
              (status = 404, description = "not_found: the file is not stored here", body = crate::openapi::ErrorBody),
              (status = 503, description = "unavailable: media storage failed", body = crate::openapi::ErrorBody)))]
pub(crate) async fn download(State(ctx): State<Ctx>, Path(token): Path<String>) -> Response {
    let m = &ctx.media;
    let Ok(Grant::Get { id, ct, name, .. }) = m.signer.check(&token, now_s()) else {
        m.metrics.refused_link.fetch_add(1, Ordering::Relaxed);
        return crate::ApiError(FrameError::new(ErrorCode::Forbidden, "not a valid download link (expired, or not this server's)"))
            .into_response();
    };
    let store = match &m.backend {
        Backend::Fs(store) => store.clone(),
        Backend::S3 { s3, .. } => {
            // A link signed here for a file S3 holds: S3 serves it.
            let url = s3.get(&id, &ct, &disposition(&ct, &name), Duration::from_secs(ctx.cfg.media_url_ttl_s));
            return (StatusCode::FOUND, [(header::LOCATION, url)]).into_response();
        }
    };
    let file = match tokio::task::spawn_blocking(move || store.open(&id)).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return crate::ApiError(FrameError::new(ErrorCode::NotFound, "no such file here")).into_response(),
        _ => return crate::ApiError(failed("reading a file")).into_response(),
    };
    let len = file.metadata().map(|md| md.len()).unwrap_or(0);
    m.metrics.downloads.fetch_add(1, Ordering::Relaxed);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)));
    let disposition = disposition(&ct, &name);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ct),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
            (header::CACHE_CONTROL, "private, max-age=3600".into()),
        ],
        body,
    )
        .into_response()
}

/// How a file is served: images show in the page; anything else downloads (never rendered as a
/// page of this site).
fn disposition(content_type: &str, name: &str) -> String {
    let inline = matches!(content_type, "image/png" | "image/jpeg" | "image/gif" | "image/webp");
    let encoded: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
    format!("{}; filename*=UTF-8''{encoded}", if inline { "inline" } else { "attachment" })
}
