//! The REST API (`/v1`), health endpoints. Every handler authenticates the caller and sees only
//! conversations the caller belongs to (or belonged to, up to where they left).

use super::{ApiError, ApiResult, Caller, Ctx};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use shardchat_bridge::BridgeOp;
use shardchat_codec::{
    valid_conv_id, valid_user_id, ClientFrame, ErrorCode, FrameError, Limits, MsgKind, MsgRecord, ReceiptKind, ServerFrame,
    HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX,
};
use shardchat_shard::ops::GroupChange;
use shardchat_shard::read::{readable_last_seq, readable_upto, unavailable};

pub fn router(ctx: Ctx) -> Router {
    // A JSON body carries at most one message body, escaped: the WebSocket message bound.
    let body_max = ctx.cfg.ws_message_bytes_max();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(page))
        .route("/js/{file}", get(library))
        .route("/v1/client-config", get(client_config))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/conversations", get(conversations))
        .route("/v1/conversations/{conv}", get(conversation).patch(rename))
        .route("/v1/conversations/{conv}/messages", get(messages).post(send))
        .route("/v1/conversations/{conv}/messages/{seq}", axum::routing::patch(edit_message).delete(delete_message))
        .route("/v1/conversations/{conv}/messages/{seq}/reaction", axum::routing::put(react))
        .route("/v1/conversations/{conv}/messages/{seq}/media", get(crate::media::links))
        .route("/v1/conversations/{conv}/files", post(send_file))
        .route("/v1/uploads", post(crate::media::new_upload))
        .route("/v1/uploads/{token}", axum::routing::put(crate::media::put_upload))
        .route("/v1/uploads/{token}/complete", post(crate::media::complete_upload))
        .route("/v1/media/{token}", get(crate::media::download))
        // Between the nodes of a cluster (node tokens; not in the OpenAPI document).
        .route("/internal/search/stats", get(crate::cluster_search::stats))
        .route("/internal/search/hits", post(crate::cluster_search::hits))
        .route("/v1/conversations/{conv}/messages/{seq}/receipts", get(receipts))
        .route("/v1/conversations/{conv}/members", post(add_members))
        .route("/v1/conversations/{conv}/members/{user}", delete(remove_member))
        .route("/v1/conversations/{conv}/leave", post(leave))
        .route("/v1/groups", post(create_group))
        .route("/v1/presence", get(presence))
        .route("/v1/search", get(search))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/poll", get(super::poll::get_poll).post(super::poll::post_poll))
        .layer(DefaultBodyLimit::max(body_max))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(ctx)
}

/// Every error answer is the contract's JSON `{code, msg}`: the framework's own refusals (an
/// unparsable query or body, a missing content type, a wrong or missing field, a body over the
/// limit, an unknown path or method) come as plain text, and are rewritten here with their text
/// as `msg`. Answers that are JSON already, and successes, pass untouched.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::CONFLICT => "group_full",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        // 400, 405, 411, 415, 422: the request is not one this API takes.
        _ => "bad_request",
    };
    let (parts, body) = resp.into_parts();
    // Framework refusals are a line of text; anything longer is cut rather than buffered whole.
    let text = axum::body::to_bytes(body, 4096).await.map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default();
    let msg = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let mut out = (status, Json(json!({ "code": code, "msg": msg }))).into_response();
    for (k, v) in parts.headers.iter() {
        if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "the process is up", content_type = "text/plain", body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// The browser client: one static page, no build step (`control/web/index.html`).
#[utoipa::path(get, path = "/", tag = "ops", responses((status = 200, description = "the web client", content_type = "text/html", body = String)))]
pub(crate) async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("web/index.html"))
}

/// The client library the page is built on: `clients/js/dist`, compiled from its TypeScript and
/// committed (the e2e test `js_client` fails when it is not what `tsc` makes of the source), served
/// as ES modules so that the binary needs no Node at run time.
const LIBRARY: &[(&str, &str)] = &[
    ("index.js", include_str!("../../../clients/js/dist/index.js")),
    ("client.js", include_str!("../../../clients/js/dist/client.js")),
    ("frames.js", include_str!("../../../clients/js/dist/frames.js")),
    ("order.js", include_str!("../../../clients/js/dist/order.js")),
    ("backoff.js", include_str!("../../../clients/js/dist/backoff.js")),
    ("storage.js", include_str!("../../../clients/js/dist/storage.js")),
    ("rest.js", include_str!("../../../clients/js/dist/rest.js")),
    ("revise.js", include_str!("../../../clients/js/dist/revise.js")),
];

/// One module of the client library (`@shardchat/client`), for the page.
#[utoipa::path(get, path = "/js/{file}", tag = "ops",
    params(("file" = String, Path, description = "a module of the client library", pattern = r"^[a-z]+\.js$", max_length = 32)),
    responses((status = 200, description = "the module", content_type = "text/javascript", body = String),
              (status = 404, description = "not_found: no such module", body = crate::openapi::ErrorBody)))]
pub(crate) async fn library(Path(file): Path<String>) -> Response {
    match LIBRARY.iter().find(|(name, _)| *name == file) {
        Some((_, text)) => ([(axum::http::header::CONTENT_TYPE, "text/javascript; charset=utf-8")], *text).into_response(),
        None => ApiError(FrameError::new(ErrorCode::NotFound, "no such module of the client library")).into_response(),
    }
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops", responses((status = 200, description = "this document", body = Object)))]
pub(crate) async fn openapi_json(State(ctx): State<Ctx>) -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document(ctx.cfg.body_bytes_max, ctx.cfg.media_bytes_max))
}

/// What the browser client needs to find the WebSocket: its port (the host is the page's).
#[utoipa::path(get, path = "/v1/client-config", tag = "ops", responses((status = 200, description = "where the WebSocket is", body = crate::openapi::ClientConfig)))]
pub(crate) async fn client_config(State(ctx): State<Ctx>) -> Json<Value> {
    Json(json!({ "ws_port": ctx.cfg.listen.port(), "ws_path": "/ws" }))
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "every shard accepts connections and runs, and the control plane reaches them", content_type = "text/plain", body = String), (status = 503, description = "starting, or a shard has stalled", content_type = "text/plain", body = String)))]
pub(crate) async fn readyz(State(ctx): State<Ctx>) -> impl IntoResponse {
    let stalled = ctx.health.stalled();
    if !stalled.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("shards not serving: {stalled:?}\n"));
    }
    if !ctx.bridge.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting: the control plane does not reach the shards yet\n".into());
    }
    (StatusCode::OK, "ready\n".to_string())
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    let mut text = shardchat_bridge::metrics::render(&ctx.metrics);
    if let Some(c) = &ctx.cluster {
        c.render(&mut text);
    }
    ctx.media.metrics.render(&mut text);
    ([("content-type", "text/plain; version=0.0.4")], text)
}

/// A conversation id in a path or query: well formed, or `bad_request`. A direct id whose two
/// user ids are not in byte-wise order is shaped right but names no conversation that can
/// exist: `not_found` (the OpenAPI pattern cannot say the order; what it admits is never a 400).
pub(crate) fn check_conv(conv: &str) -> ApiResult<()> {
    if valid_conv_id(conv) {
        return Ok(());
    }
    if shardchat_codec::direct_splits(conv).next().is_some() {
        Err(FrameError::new(ErrorCode::NotFound, "no such conversation (a direct id names its two users in byte-wise order)").into())
    } else {
        Err(FrameError::bad_request("invalid conversation id").into())
    }
}

/// A seq in a query or path: the document gives them as `int64` (what JSON tools agree on), so
/// larger ones are refused rather than read as u64 (no conversation comes near either bound).
fn seq_param(seq: Option<u64>) -> ApiResult<()> {
    match seq {
        Some(s) if s > i64::MAX as u64 => Err(FrameError::bad_request("seq out of range").into()),
        _ => Ok(()),
    }
}

/// The one frame the shards answered with: the expected one, or the error it carries.
fn answer(frames: Vec<ServerFrame>) -> ApiResult<ServerFrame> {
    match frames.into_iter().next() {
        Some(ServerFrame::Error { code, msg, .. }) => Err(FrameError::new(code, msg).into()),
        Some(f) => Ok(f),
        None => Err(FrameError::new(ErrorCode::Internal, "no answer").into()),
    }
}

/// A frame as a JSON object without its `t`.
fn body_of(frame: &ServerFrame) -> Value {
    let mut v = serde_json::to_value(frame).expect("frames serialize");
    if let Some(o) = v.as_object_mut() {
        o.remove("t");
    }
    v
}

/// Records read back from a conversation's newest to find its newest message proper for the
/// list's preview (past this many events, the newest record is shown).
const PREVIEW_SCAN_MAX: usize = 20;

/// Messages proper after the caller's read watermark that others sent, counted up to this cap.
const UNREAD_COUNT_MAX: usize = 1000;

#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", responses((status = 200, description = "the caller's conversations, newest first, with last message, last seq and unread count", body = crate::openapi::ConversationList)), security(("bearer" = [])))]
pub(crate) async fn conversations(State(ctx): State<Ctx>, Caller(me): Caller) -> ApiResult<Json<Value>> {
    let user = me.user;
    let list = ctx
        .read(move |store| {
            let mut out = Vec::new();
            for conv in store.user_convs(&user).map_err(unavailable)? {
                let upto = match readable_upto(store, &conv, &user) {
                    Ok(u) => u,
                    Err(e) if e.code == ErrorCode::Unavailable => return Err(e),
                    Err(_) => continue,
                };
                // The newest message proper is the preview; events after it (a reaction, an
                // edit) still make the conversation recent and count in `last_seq`.
                let newest = store.messages_before(&conv, Some(upto.saturating_add(1)), PREVIEW_SCAN_MAX).map_err(unavailable)?;
                let last_seq = newest.first().map_or(0, |m| m.seq);
                let last = newest.iter().find(|m| m.kind.is_content()).or(newest.first()).cloned();
                let read = store.watermark(&conv, &user, ReceiptKind::Read).map_err(unavailable)?;
                let unread = store
                    .messages_after(&conv, read, UNREAD_COUNT_MAX)
                    .map_err(unavailable)?
                    .iter()
                    // Edits, deletes and reactions are not news, nor is a deleted message
                    // (docs/protocol.md).
                    .filter(|m| m.seq <= last_seq && m.from != user && m.kind.is_content() && !m.deleted)
                    .count();
                let name = store.conv_name(&conv).map_err(unavailable)?;
                let key = newest.first().map(|m| (m.ts, m.id)).unwrap_or((0, 0));
                out.push((
                    key,
                    json!({ "conv": conv, "name": name, "last_seq": last_seq, "unread": unread, "member": upto == u64::MAX, "last": last }),
                ));
            }
            out.sort_by_key(|(key, _)| std::cmp::Reverse(*key));
            Ok(out.into_iter().map(|(_, v)| v).collect::<Vec<_>>())
        })
        .await?;
    Ok(Json(json!({ "conversations": list })))
}

#[utoipa::path(get, path = "/v1/conversations/{conv}", tag = "conversations", params(crate::openapi::ConvPath), responses((status = 200, description = "name, members and roles, last seq", body = crate::openapi::Conversation)), security(("bearer" = [])))]
pub(crate) async fn conversation(State(ctx): State<Ctx>, Caller(me): Caller, Path(conv): Path<String>) -> ApiResult<Json<Value>> {
    check_conv(&conv)?;
    let v = ctx
        .read(move |store| {
            let upto = readable_upto(store, &conv, &me.user)?;
            if upto != u64::MAX {
                return Err(FrameError::new(ErrorCode::Forbidden, "not a member of this conversation"));
            }
            let members = store.members(&conv).map_err(unavailable)?;
            let name = store.conv_name(&conv).map_err(unavailable)?;
            let last_seq = readable_last_seq(store, &conv).map_err(unavailable)?;
            let members: Vec<Value> = members.into_iter().map(|m| json!({"user": m.user, "role": m.role})).collect();
            Ok(json!({ "conv": conv, "name": name, "members": members, "last_seq": last_seq }))
        })
        .await?;
    Ok(Json(v))
}

#[derive(Deserialize)]
pub(crate) struct Page {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/conversations/{conv}/messages", tag = "messages", params(crate::openapi::ConvPath, ("before" = Option<i64>, Query, minimum = 0, description = "below this seq; alone: the newest first"), ("after" = Option<i64>, Query, minimum = 0, description = "above this seq, the oldest first (with `before`: between the two)"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "default 50")), responses((status = 200, description = "a page of messages", body = crate::openapi::MessagePage)), security(("bearer" = [])))]
pub(crate) async fn messages(
    State(ctx): State<Ctx>,
    Caller(me): Caller,
    Path(conv): Path<String>,
    Query(page): Query<Page>,
) -> ApiResult<Json<Value>> {
    check_conv(&conv)?;
    seq_param(page.before)?;
    seq_param(page.after)?;
    let limit = page.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
    if limit == 0 || limit > HISTORY_LIMIT_MAX {
        return Err(FrameError::bad_request(format!("limit must be 1 to {HISTORY_LIMIT_MAX}")).into());
    }
    let v = ctx
        .read(move |store| {
            let upto = readable_upto(store, &conv, &me.user)?;
            let msgs: Vec<MsgRecord> = match page.after {
                // Oldest first, forwards from `after` (and below `before` when both are given).
                Some(after) => {
                    let below = page.before.unwrap_or(u64::MAX).min(upto.saturating_add(1));
                    store.messages_after(&conv, after, limit as usize).map_err(unavailable)?.into_iter().filter(|m| m.seq < below).collect()
                }
                // Newest first, backwards from `before`.
                None => {
                    let before = page.before.unwrap_or(u64::MAX).min(upto.saturating_add(1));
                    store.messages_before(&conv, Some(before), limit as usize).map_err(unavailable)?
                }
            };
            let order = if page.after.is_some() { "asc" } else { "desc" };
            Ok(json!({ "conv": conv, "order": order, "messages": msgs }))
        })
        .await?;
    Ok(Json(v))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct NewMessage {
    /// The client's id for this message, unique per sender: a retry with the same one gets the
    /// same ack and stores nothing twice.
    #[schema(min_length = 1, max_length = 64)]
    cmid: String,
    /// At most the server's body limit in bytes (`maxLength`: set per server, see
    /// `openapi::document`).
    body: String,
    /// `text` (default), `image` or `file`. Edits, deletes and reactions have their own
    /// operations on `/messages/{seq}`.
    #[serde(default)]
    #[schema(value_type = crate::openapi::MessageKind, example = "text")]
    kind: MsgKind,
    /// The seq of the earlier message this one answers.
    #[serde(default, deserialize_with = "present_int")]
    #[schema(minimum = 1, nullable = false)]
    reply_to: Option<u64>,
}

/// A message sharing an upload: `image` when its content type is an image's, else `file`.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct NewFileMessage {
    #[schema(min_length = 1, max_length = 64)]
    cmid: String,
    /// The caption (may be empty); at most the server's body limit in bytes.
    body: String,
    /// What the upload's PUT answered.
    media: MediaIn,
    #[serde(default, deserialize_with = "present_int")]
    #[schema(minimum = 1, nullable = false)]
    reply_to: Option<u64>,
}

/// The media object as a request carries it (numbers as JSON Schema reads them: `5.0` is 5).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = MediaIn)]
pub(crate) struct MediaIn {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    id: String,
    #[schema(pattern = "^[a-z0-9+.-]+/[a-z0-9+.-]+$", max_length = 127)]
    content_type: String,
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 1)]
    size: u64,
    #[schema(max_length = 255)]
    name: String,
    #[serde(default, deserialize_with = "present_int")]
    #[schema(nullable = false, minimum = 1, maximum = 100000)]
    width: Option<u32>,
    #[serde(default, deserialize_with = "present_int")]
    #[schema(nullable = false, minimum = 1, maximum = 100000)]
    height: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, pattern = "^[0-9a-f]{64}$")]
    thumbnail: Option<String>,
}

/// An optional field that, when given, is a value: `null` is refused (the document says the
/// field is not nullable).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An integer as JSON Schema reads one: `5` or `5.0`.
pub(crate) fn integral<'de, D: serde::Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(u64),
        Float(f64),
    }
    let n = match Number::deserialize(d)? {
        Number::Int(n) => n,
        Number::Float(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => f as u64,
        Number::Float(f) => return Err(serde::de::Error::custom(format!("{f} is not an integer"))),
    };
    T::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is out of range")))
}

/// An optional integer that, when given, is a value: `null` is refused like any wrong type (the
/// document says the field is not nullable); `5.0` is 5, as JSON Schema reads it.
fn present_int<'de, D: serde::Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
    integral(d).map(Some)
}

#[utoipa::path(post, path = "/v1/conversations/{conv}/files", tag = "media", params(crate::openapi::ConvPath), request_body = NewFileMessage, responses((status = 200, description = "the ack: the message sharing the file is durably stored", body = crate::openapi::Ack)), security(("bearer" = [])))]
pub(crate) async fn send_file(
    State(ctx): State<Ctx>,
    Caller(me): Caller,
    Path(conv): Path<String>,
    Json(f): Json<NewFileMessage>,
) -> ApiResult<Json<Value>> {
    check_conv(&conv)?;
    let m = f.media;
    let kind = if m.content_type.starts_with("image/") { MsgKind::Image } else { MsgKind::File };
    let media = shardchat_codec::Media {
        id: m.id,
        content_type: m.content_type,
        size: m.size,
        name: m.name,
        width: m.width,
        height: m.height,
        thumbnail: m.thumbnail,
    };
    sent(
        &ctx,
        &me.user,
        conv,
        Sending { cmid: f.cmid, body: f.body, kind, target: None, reply_to: f.reply_to, media: Some(Box::new(media)) },
    )
    .await
}

/// An edit: the message's new text.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct EditMessage {
    /// The client's id for this edit (an event with a seq of its own), as for a message.
    #[schema(min_length = 1, max_length = 64)]
    cmid: String,
    /// The new text, not empty; at most the server's body limit in bytes.
    #[schema(min_length = 1)]
    body: String,
}

/// A reaction: one emoji, replacing the caller's earlier one; empty takes it back.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct React {
    #[schema(min_length = 1, max_length = 64)]
    cmid: String,
    /// One emoji of Unicode's list (skin tones included), or "" to take the reaction back.
    #[schema(max_length = 64, example = "👍")]
    emoji: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CmidQuery {
    /// The client's id for this delete (an event with a seq of its own), as for a message.
    #[param(min_length = 1, max_length = 64)]
    cmid: String,
}

#[utoipa::path(post, path = "/v1/conversations/{conv}/messages", tag = "messages", params(crate::openapi::ConvPath), request_body = NewMessage, responses((status = 200, description = "the ack: the message is durably stored", body = crate::openapi::Ack)), security(("bearer" = [])))]
pub(crate) async fn send(
    State(ctx): State<Ctx>,
    Caller(me): Caller,
    Path(conv): Path<String>,
    Json(m): Json<NewMessage>,
) -> ApiResult<Json<Value>> {
    check_conv(&conv)?;
    // The same checks as a WebSocket `send`.
    if m.kind.is_event() {
        return Err(
            FrameError::bad_request("kind is text, image or file here; edits, deletes and reactions have their own operations").into()
        );
    }
    sent(&ctx, &me.user, conv, Sending { cmid: m.cmid, body: m.body, kind: m.kind, target: None, reply_to: m.reply_to, media: None }).await
}

/// One send over REST, as the WebSocket's `send` frame carries it.
struct Sending {
    cmid: String,
    body: String,
    kind: MsgKind,
    target: Option<u64>,
    reply_to: Option<u64>,
    media: Option<Box<shardchat_codec::Media>>,
}

/// Checks a send as the WebSocket does, hands it to its owner and answers its ack.
async fn sent(ctx: &Ctx, user: &str, conv: String, s: Sending) -> ApiResult<Json<Value>> {
    let Sending { cmid, body, kind, target, reply_to, media } = s;
    let frame = ClientFrame::Send {
        cmid: cmid.clone(),
        to: None,
        conv: Some(conv.clone()),
        body: body.clone(),
        kind,
        target,
        reply_to,
        media: media.as_deref().cloned(),
    };
    frame.validate(&Limits { body_bytes_max: ctx.cfg.body_bytes_max })?;
    let op = BridgeOp::Send { conv, cmid, body, kind, target, reply_to, media };
    let ack = answer(ctx.ask(user, op).await?)?;
    Ok(Json(body_of(&ack)))
}

#[utoipa::path(patch, path = "/v1/conversations/{conv}/messages/{seq}", tag = "messages", params(crate::openapi::ConvPath, ("seq" = i64, Path, minimum = 1)), request_body = EditMessage, responses((status = 200, description = "the edit's ack: it is durably stored, with a seq of its own", body = crate::openapi::Ack)), security(("bearer" = [])))]
pub(crate) async fn edit_message(
    State(ctx): State<Ctx>,
    Caller(me): Caller,
    Path((conv, seq)): Path<(String, u64)>,
    Json(e): Json<EditMessage>,
) -> ApiResult<Json<Value>> {
    check_conv(&conv)?;
    sent(&ctx, &me.user, conv, Sending { cmid: e.cmid, body: e.body, kind: MsgKind::Edit, target: Some(seq), reply_to: None, media: None })
        .await
}

#[utoipa::path(delete, path = "/v1/conversations/{conv}/messages/{seq}", tag = "messages", params(crate::openapi::ConvPath, ("seq" = i64, Path, minimum = 1), CmidQuery), responses((status = 200, description = "the delete's ack: it is durably stored, with a seq of its own", body = crate::openapi::Ack)), security(("bearer" = [])))]
pub(crate) async fn delete_message(
    State(ctx): State<Ctx>,
    Caller(me): Caller,
    Path((conv, seq)): Path<(String, u64)>,
    Query(q): Query<CmidQuery>,
) -> ApiResult<Json<Value>> {
    check_conv(&conv)?;
    let s = Sending { cmid: q.cmid, body: String::new(), kind: MsgKind::Delete, target: Some(seq), reply_to: None, media: None };
    sent(&ctx, &me.user, conv, s).await
}

#[utoipa::path(put, path = "/v1/conversations/{conv}/messages/{seq}/reaction", tag = "messages", params(crate::openapi::ConvPath, ("seq" = i64, Path, minimum = 1)), request_body = React, responses((status = 200, description = "the reaction's ack: it is durably stored, with a seq of its own", body = crate::openapi::Ack)), security(("bearer" = [])))]
pub(crate) async fn react(
    State(ctx): State<Ctx>,
    Caller(me): Caller,
    Path((conv, seq)): Path<(String, u64)>,
    Json(r): Json<React>,
) -> ApiResult<Json<Value>> {
    check_conv(&conv)?;
    let s = Sending { cmid: r.cmid, body: r.emoji, kind: MsgKind::Reaction, target: Some(seq), reply_to: None, media: None };
    sent(&ctx, &me.user, conv, s).await
}

#[utoipa::path(get, path = "/v1/conversations/{conv}/messages/{seq}/receipts", tag = "messages", params(crate::openapi::ConvPath, ("seq" = i64, Path, minimum = 1)), responses((status = 200, description = "who delivered and read it", body = crate::openapi::ReceiptDetail)), security(("bearer" = [])))]
pub(crate) async fn receipts(State(ctx): State<Ctx>, Caller(me): Caller, Path((conv, seq)): Path<(String, u64)>) -> ApiResult<Json<Value>> {
    check_conv(&conv)?;
    seq_param(Some(seq))?;
    if seq == 0 {
        return Err(FrameError::bad_request("seq starts at 1").into());
    }
    let detail = answer(ctx.ask(&me.user, BridgeOp::ReceiptQuery { conv, seq }).await?)?;
    Ok(Json(body_of(&detail)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct NewGroup {
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// Besides the creator, who is its admin.
    #[schema(value_type = Vec<crate::openapi::UserId>)]
    members: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct Users {
    #[schema(value_type = Vec<crate::openapi::UserId>, min_items = 1)]
    users: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct Rename {
    #[schema(min_length = 1, max_length = 128)]
    name: String,
}

async fn group_change(ctx: &Ctx, user: &str, conv: Option<String>, change: GroupChange, frame: ClientFrame) -> ApiResult<Json<Value>> {
    frame.validate(&Limits { body_bytes_max: ctx.cfg.body_bytes_max })?;
    let g = answer(ctx.ask(user, BridgeOp::Group { conv, change }).await?)?;
    Ok(Json(body_of(&g)))
}

#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = NewGroup, responses((status = 201, description = "the group", body = crate::openapi::Group), (status = 409, description = "group_full: more than 500 members", body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn create_group(State(ctx): State<Ctx>, Caller(me): Caller, Json(g): Json<NewGroup>) -> ApiResult<impl IntoResponse> {
    let frame = ClientFrame::GroupCreate { name: g.name.clone(), members: g.members.clone(), r#ref: None };
    let out = group_change(&ctx, &me.user, None, GroupChange::Create { name: g.name, members: g.members }, frame).await?;
    Ok((StatusCode::CREATED, out))
}

#[utoipa::path(post, path = "/v1/conversations/{conv}/members", tag = "groups", params(crate::openapi::GroupPath), request_body = Users, responses((status = 200, description = "the group", body = crate::openapi::Group), (status = 409, description = "group_full: more than 500 members", body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn add_members(
    State(ctx): State<Ctx>,
    Caller(me): Caller,
    Path(conv): Path<String>,
    Json(u): Json<Users>,
) -> ApiResult<Json<Value>> {
    let frame = ClientFrame::GroupAdd { conv: conv.clone(), users: u.users.clone(), r#ref: None };
    group_change(&ctx, &me.user, Some(conv), GroupChange::Add { users: u.users }, frame).await
}

#[utoipa::path(delete, path = "/v1/conversations/{conv}/members/{user}", tag = "groups", params(crate::openapi::GroupPath, ("user" = String, Path, pattern = r"^[A-Za-z0-9_.:@-]{1,64}$")), responses((status = 200, description = "the group", body = crate::openapi::Group)), security(("bearer" = [])))]
pub(crate) async fn remove_member(
    State(ctx): State<Ctx>,
    Caller(me): Caller,
    Path((conv, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let frame = ClientFrame::GroupRemove { conv: conv.clone(), users: vec![user.clone()], r#ref: None };
    group_change(&ctx, &me.user, Some(conv), GroupChange::Remove { users: vec![user] }, frame).await
}

#[utoipa::path(post, path = "/v1/conversations/{conv}/leave", tag = "groups", params(crate::openapi::GroupPath), responses((status = 200, description = "the group as the caller left it", body = crate::openapi::Group)), security(("bearer" = [])))]
pub(crate) async fn leave(State(ctx): State<Ctx>, Caller(me): Caller, Path(conv): Path<String>) -> ApiResult<Json<Value>> {
    let frame = ClientFrame::GroupLeave { conv: conv.clone(), r#ref: None };
    group_change(&ctx, &me.user, Some(conv), GroupChange::Leave, frame).await
}

#[utoipa::path(patch, path = "/v1/conversations/{conv}", tag = "groups", params(crate::openapi::GroupPath), request_body = Rename, responses((status = 200, description = "the group", body = crate::openapi::Group)), security(("bearer" = [])))]
pub(crate) async fn rename(
    State(ctx): State<Ctx>,
    Caller(me): Caller,
    Path(conv): Path<String>,
    Json(r): Json<Rename>,
) -> ApiResult<Json<Value>> {
    let frame = ClientFrame::GroupRename { conv: conv.clone(), name: r.name.clone(), r#ref: None };
    group_change(&ctx, &me.user, Some(conv), GroupChange::Rename { name: r.name }, frame).await
}

#[derive(Deserialize)]
pub(crate) struct PresenceQuery {
    users: String,
}

/// Users one batch presence request may name.
const PRESENCE_BATCH_MAX: usize = 500;

#[utoipa::path(get, path = "/v1/presence", tag = "presence", params(("users" = String, Query, pattern = r"^[A-Za-z0-9_.:@-]{1,64}(,[A-Za-z0-9_.:@-]{1,64}){0,499}$", description = "comma-separated user ids, 1 to 500")), responses((status = 200, description = "presence of each user, in the order asked", body = crate::openapi::PresenceList)), security(("bearer" = [])))]
pub(crate) async fn presence(State(ctx): State<Ctx>, Caller(me): Caller, Query(q): Query<PresenceQuery>) -> ApiResult<Json<Value>> {
    // Strict, as the document's pattern: no empty entries (`a,,b`, a trailing comma).
    let users: Vec<String> = q.users.split(',').map(str::to_string).collect();
    if users.is_empty() || users.len() > PRESENCE_BATCH_MAX || !users.iter().all(|u| valid_user_id(u)) {
        return Err(ApiError(FrameError::bad_request(format!("users: 1 to {PRESENCE_BATCH_MAX} valid user ids, comma-separated"))));
    }
    let frames = ctx.ask(&me.user, BridgeOp::Presence { users: users.clone() }).await?;
    // Answers arrive in whatever order the home shards sent them: list them as asked.
    let mut list: Vec<Value> = frames.iter().map(body_of).collect();
    list.sort_by_key(|v| users.iter().position(|u| v["user"] == u.as_str()));
    Ok(Json(json!({ "presence": list })))
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    q: String,
    conv: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

/// Results per search page at most, and the deepest page.
const SEARCH_LIMIT_MAX: usize = 100;
const SEARCH_OFFSET_MAX: usize = 10_000;
/// The most hits one node is asked for in a cluster's search: the deepest page's end.
pub(crate) const SEARCH_WANT_MAX: usize = SEARCH_LIMIT_MAX + SEARCH_OFFSET_MAX;
/// The longest search query, in characters (the document's `maxLength` of `q`).
const SEARCH_QUERY_CHARS_MAX: usize = 1024;

#[utoipa::path(get, path = "/v1/search", tag = "search", params(("q" = String, Query, min_length = 1, max_length = 1024, pattern = r"\S", description = "words to find"), ("conv" = Option<String>, Query, pattern = r"^(g:[0-9]{1,19}|d:[A-Za-z0-9_.:@-]{1,64}:[A-Za-z0-9_.:@-]{1,64})$", description = "only this conversation"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "default 20"), ("offset" = Option<u32>, Query, minimum = 0, maximum = 10000)), responses((status = 200, description = "ranked hits in the caller's conversations", body = crate::openapi::SearchResults)), security(("bearer" = [])))]
pub(crate) async fn search(State(ctx): State<Ctx>, Caller(me): Caller, Query(q): Query<SearchQuery>) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(20);
    let offset = q.offset.unwrap_or(0);
    // In characters, as the document's maxLength counts (a bound of work for the query parser,
    // which a few more bytes of non-ASCII text do not change).
    if q.q.trim().is_empty()
        || q.q.chars().count() > SEARCH_QUERY_CHARS_MAX
        || limit == 0
        || limit > SEARCH_LIMIT_MAX
        || offset > SEARCH_OFFSET_MAX
    {
        return Err(FrameError::bad_request(format!(
            "q: 1 to {SEARCH_QUERY_CHARS_MAX} characters; limit 1 to {SEARCH_LIMIT_MAX}; offset at most {SEARCH_OFFSET_MAX}"
        ))
        .into());
    }
    if let Some(c) = &q.conv {
        check_conv(c)?;
    }
    // Where the caller may look: their conversations (former ones up to where they left).
    let convs = crate::cluster_search::readable(&ctx, me.user.clone(), q.conv.clone()).await?;
    // In a cluster every other live node holds part of the index.
    let peers = ctx.cluster.as_ref().map(|c| c.peers()).unwrap_or_default();
    let hits = if peers.is_empty() {
        let index = ctx.search.clone();
        let text = q.q.clone();
        tokio::task::spawn_blocking(move || index.search(&text, &convs, limit, offset))
            .await
            .map_err(|_| FrameError::new(ErrorCode::Internal, "search failed"))?
            .map_err(|e| FrameError::new(ErrorCode::Internal, e))?
    } else {
        let asked = crate::cluster_search::Asked { user: &me.user, q: &q.q, conv: q.conv.clone(), limit, offset };
        crate::cluster_search::gather(&ctx, &peers, asked, convs).await?
    };
    Ok(Json(json!({ "q": q.q, "offset": offset, "hits": hits })))
}
