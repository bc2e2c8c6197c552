//! The long-polling fallback: the same events as the WebSocket, for clients that cannot hold one.
//!
//! `GET /v1/poll` (no cursor) starts a session: a connection of the caller on their home shard,
//! held by the bridge, whose frames are kept in order for the client. `GET /v1/poll?cursor=C`
//! returns the events after C (waiting up to `timeout` seconds for some) and the next cursor;
//! the events up to C are forgotten. `POST /v1/poll?cursor=C` takes any client frame (`send`,
//! `read`, `delivered`, `typing`, `presence_sub`, `sync`, ...); its answers arrive as events.
//! A session not polled within the heartbeat timeout expires (410): start a new one and `sync`,
//! exactly as a WebSocket client does after a disconnect, so nothing is missed.

use super::{ApiError, ApiResult, Caller, Ctx};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shardchat_bridge::{BridgeOp, SessionBuf, SESSION_CONN_BASE};
use shardchat_codec::{decode_text, ErrorCode, FrameError, Limits};
use std::sync::Arc;
use std::time::Duration;

/// How long a poll waits for events when the client names no timeout, and the most it may ask.
const POLL_TIMEOUT_DEFAULT_S: u64 = 25;
const POLL_TIMEOUT_MAX_S: u64 = 60;
/// Events one poll returns at most.
const POLL_EVENTS_MAX: usize = 500;

pub struct PollSession {
    user: String,
    buf: Arc<SessionBuf>,
}

#[derive(Deserialize)]
pub struct PollQuery {
    cursor: Option<String>,
    timeout: Option<i32>,
    device: Option<String>,
}

fn parse_cursor(c: &str) -> Result<(u64, u64), ApiError> {
    let bad = || ApiError(FrameError::bad_request("malformed cursor"));
    let (sid, n) = c.split_once('.').ok_or_else(bad)?;
    // Digits only, as the document's pattern says (`parse` would also take a leading `+`).
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(sid) || !digits(n) {
        return Err(bad());
    }
    Ok((sid.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?))
}

fn gone(why: &str) -> Response {
    (StatusCode::GONE, Json(json!({ "code": "not_found", "msg": why }))).into_response()
}

impl Ctx {
    /// The caller's session named by a cursor.
    fn session(&self, user: &str, sid: u64) -> Result<Arc<SessionBuf>, Box<Response>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&sid) {
            Some(s) if s.user == user => Ok(s.buf.clone()),
            Some(_) => Err(Box::new(ApiError(FrameError::new(ErrorCode::Forbidden, "not your session")).into_response())),
            None => Err(Box::new(gone("no such poll session: start a new one (GET /v1/poll) and sync"))),
        }
    }
}

#[utoipa::path(get, path = "/v1/poll", tag = "poll", params(("cursor" = Option<String>, Query, pattern = r"^[0-9]{1,19}\.[0-9]{1,19}$", description = "none: start a session"), ("timeout" = Option<i32>, Query, minimum = 0, description = "seconds to wait for events; more than 60 waits 60"), ("device" = Option<String>, Query, pattern = r"^[A-Za-z0-9_.:@-]{1,64}$", description = "names the session's device (default `poll`)")), responses((status = 200, description = "events after the cursor and the next cursor (a new session: its first cursor)", body = crate::openapi::PollEvents), (status = 410, description = "no such session, or it ended: start a new one and sync", body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub async fn get_poll(State(ctx): State<Ctx>, Caller(me): Caller, Query(q): Query<PollQuery>) -> Response {
    if q.timeout.is_some_and(|t| t < 0) {
        return ApiError(FrameError::bad_request("timeout: 0 or more seconds")).into_response();
    }
    let Some(cursor) = q.cursor else {
        return match start(&ctx, me.user, q.device.unwrap_or_else(|| "poll".into())).await {
            Ok(v) => Json(v).into_response(),
            Err(e) => e.into_response(),
        };
    };
    let (sid, upto) = match parse_cursor(&cursor) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let buf = match ctx.session(&me.user, sid) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    ctx.submit_quiet(&me.user, BridgeOp::PollTouch { conn: sid });
    let wait = Duration::from_secs(q.timeout.map_or(POLL_TIMEOUT_DEFAULT_S, |t| t as u64).min(POLL_TIMEOUT_MAX_S));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Register for a wake-up before looking, so an event pushed in between is not missed.
        let notified = buf.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match buf.take_after(upto, POLL_EVENTS_MAX) {
            Err(why) => {
                ctx.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&sid);
                return gone(why);
            }
            Ok((next, events)) if !events.is_empty() || tokio::time::Instant::now() >= deadline => {
                return Json(json!({ "cursor": format!("{sid}.{next}"), "events": events })).into_response();
            }
            Ok(_) => {}
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            // Timed out: the next turn of the loop answers with whatever is there (maybe nothing).
        }
    }
}

async fn start(ctx: &Ctx, user: String, device: String) -> ApiResult<Value> {
    if !shardchat_codec::valid_user_id(&device) {
        return Err(FrameError::bad_request("invalid device id").into());
    }
    let sid = SESSION_CONN_BASE + ctx.next_session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let buf = Arc::new(SessionBuf::new(ctx.cfg.outbound_queue_bytes_max));
    let evicted = {
        let mut sessions = ctx.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // At the user's bound, their oldest session ends (the lowest id: ids only grow), so a
        // client that lost its cursors can always start again, and no user holds more than
        // `poll_sessions_per_user_max` buffers.
        let mut mine: Vec<u64> = sessions.iter().filter(|(_, s)| s.user == user && !s.buf.is_ended()).map(|(id, _)| *id).collect();
        mine.sort_unstable();
        let excess = (mine.len() + 1).saturating_sub(ctx.cfg.poll_sessions_per_user_max);
        let evicted: Vec<u64> = mine.into_iter().take(excess).collect();
        for id in &evicted {
            // Ended, its events dropped; the entry stays until the reaper takes it, so that a
            // poll in between learns why.
            sessions[id].buf.end("replaced: this user started more poll sessions than allowed; start a new one and sync");
        }
        sessions.insert(sid, PollSession { user: user.clone(), buf: buf.clone() });
        evicted
    };
    for id in evicted {
        ctx.submit_quiet(&user, BridgeOp::Detach { conn: id });
    }
    ctx.ask(&user, BridgeOp::Attach { conn: sid, device, buf }).await?;
    Ok(json!({ "cursor": format!("{sid}.0"), "events": [] }))
}

#[utoipa::path(post, path = "/v1/poll", tag = "poll", params(("cursor" = String, Query, pattern = r"^[0-9]{1,19}\.[0-9]{1,19}$")), request_body(content = crate::openapi::ClientFrame, description = "one client frame, as on the WebSocket", content_type = "application/json"), responses((status = 202, description = "accepted; answers arrive as events", body = crate::openapi::Accepted), (status = 410, description = "no such session, or it ended: start a new one and sync", body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub async fn post_poll(State(ctx): State<Ctx>, Caller(me): Caller, Query(q): Query<PollQuery>, body: String) -> Response {
    let Some(cursor) = q.cursor else {
        return ApiError(FrameError::bad_request("cursor required")).into_response();
    };
    let (sid, _) = match parse_cursor(&cursor) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(r) = ctx.session(&me.user, sid) {
        return *r;
    }
    // The same decoding and checks as a WebSocket text frame.
    let frame = match decode_text(&body, &Limits { body_bytes_max: ctx.cfg.body_bytes_max }) {
        Ok(f) => f,
        Err(e) => return ApiError(e).into_response(),
    };
    match ctx.ask(&me.user, BridgeOp::PollFrame { conn: sid, frame }).await {
        Ok(_) => (StatusCode::ACCEPTED, Json(json!({ "accepted": true }))).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Drops sessions that ended (expired on their home shard, or fell behind) and were not polled
/// since: their buffers are empty, this only frees the map entries.
pub async fn reap(ctx: Ctx) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        ctx.sessions.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, s| s.buf.take_after(0, 0).is_ok());
    }
}
