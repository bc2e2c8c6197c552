//! Search across a cluster: every node indexes the messages it sequenced, so a search asks every
//! live node for its part, the way one index holding everything would answer.
//!
//! Two rounds, each one request to every other live node at once (its control plane, found in
//! its liveness key): first the query's statistics (documents, tokens, documents per term),
//! summed; then each node's best `offset + limit` readable hits, ranked by the summed statistics
//! so that scores compare across nodes, merged by score. So the ranking, the membership filter
//! (each node reads the caller's memberships from the shared store, and leaves out what a former
//! member may not read before it cuts its list) and the paging are those of one node.
//!
//! The rounds between nodes carry a node token (the JWT secret the nodes share: see
//! `Authenticator::node_token`); a node's answer holds no bodies (a page of 100 hits past an
//! offset of 10,000 would otherwise carry up to 10,100 bodies per node): the page's bodies are
//! read from the shared store at the end, as they are now. A node that does not answer within
//! [`PEER_SEARCH_TIMEOUT_MS`] makes the search `unavailable` rather than silently short.

use crate::{ApiResult, Ctx};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use shardchat_codec::{ErrorCode, FrameError};
use shardchat_search::{Hit, Stats};
use shardchat_shard::read::unavailable;

/// Longest wait for one node's answer in either round.
pub const PEER_SEARCH_TIMEOUT_MS: u64 = 2_000;
/// The header a node's token travels in.
const NODE_HEADER: &str = "x-shardchat-node";

/// The second round's request: the caller (authenticated by the asking node), what they asked.
#[derive(Serialize, Deserialize)]
pub(crate) struct HitsRequest {
    user: String,
    q: String,
    conv: Option<String>,
    want: usize,
    stats: Stats,
}

#[derive(Deserialize)]
pub(crate) struct StatsQuery {
    q: String,
}

/// The caller's readable conversations: (conversation, highest seq they may read).
pub(crate) async fn readable(ctx: &Ctx, user: String, only: Option<String>) -> ApiResult<Vec<(String, u64)>> {
    use shardchat_shard::read::readable_upto;
    ctx.read(move |store| match only {
        Some(conv) => Ok(vec![(conv.clone(), readable_upto(store, &conv, &user)?)]),
        None => {
            let mut out = Vec::new();
            for conv in store.user_convs(&user).map_err(unavailable)? {
                if let Ok(upto) = readable_upto(store, &conv, &user) {
                    out.push((conv, upto));
                }
            }
            Ok(out)
        }
    })
    .await
}

fn failed(e: impl std::fmt::Display) -> FrameError {
    FrameError::new(ErrorCode::Internal, format!("search failed: {e}"))
}

/// This node's statistics of `q`.
async fn local_stats(ctx: &Ctx, q: String) -> ApiResult<Stats> {
    let index = ctx.search.clone();
    Ok(tokio::task::spawn_blocking(move || index.stats(&q)).await.map_err(failed)?.map_err(failed)?)
}

/// This node's best `want` hits readable in `convs`, ranked by `stats`.
async fn local_hits(ctx: &Ctx, q: String, convs: Vec<(String, u64)>, want: usize, stats: Stats) -> ApiResult<Vec<Hit>> {
    let index = ctx.search.clone();
    Ok(tokio::task::spawn_blocking(move || index.ranked(&q, &convs, want, Some(&stats))).await.map_err(failed)?.map_err(failed)?)
}

fn node_token(ctx: &Ctx) -> Option<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    ctx.auth.node_token(ctx.cfg.node_id, now)
}

/// One round: the same request to every peer at once, every answer or `unavailable`.
async fn ask_all<T: serde::de::DeserializeOwned>(
    ctx: &Ctx,
    peers: &[(usize, String)],
    request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> ApiResult<Vec<T>> {
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_millis(PEER_SEARCH_TIMEOUT_MS)).build().map_err(failed)?;
    let token = node_token(ctx);
    let calls = peers.iter().map(|(node, http)| {
        let mut rb = request(&client, http);
        if let Some(t) = &token {
            rb = rb.header(NODE_HEADER, t);
        }
        async move {
            let answer = rb.send().await.and_then(|r| r.error_for_status());
            match answer {
                Ok(r) => r.json::<T>().await.map_err(|e| (node, e.to_string())),
                Err(e) => Err((node, e.to_string())),
            }
        }
    });
    let mut out = Vec::with_capacity(peers.len());
    for r in futures::future::join_all(calls).await {
        match r {
            Ok(v) => out.push(v),
            Err((node, e)) => {
                tracing::warn!(node, error = %e, "search: a node did not answer");
                return Err(FrameError::new(ErrorCode::Unavailable, format!("node {node} did not answer the search; retry")).into());
            }
        }
    }
    Ok(out)
}

/// What a caller asked of `/v1/search`.
pub(crate) struct Asked<'a> {
    pub user: &'a str,
    pub q: &'a str,
    pub conv: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

/// The search over every live node: the page `offset..offset + limit` of the merged ranking.
/// `convs`: what the caller may read.
pub(crate) async fn gather(ctx: &Ctx, peers: &[(usize, String)], asked: Asked<'_>, convs: Vec<(String, u64)>) -> ApiResult<Vec<Hit>> {
    let Asked { user, q, conv, limit, offset } = asked;
    let started = std::time::Instant::now();
    let want = offset + limit;
    // Round one: the statistics, summed.
    let mut stats = local_stats(ctx, q.to_string()).await?;
    let encoded: String = form_urlencoded::Serializer::new(String::new()).append_pair("q", q).finish();
    let theirs: Vec<Stats> = ask_all(ctx, peers, |c, http| c.get(format!("http://{http}/internal/search/stats?{encoded}"))).await?;
    theirs.iter().for_each(|s| stats.add(s));
    // Round two: every node's best `want`, ranked alike, merged.
    let req = HitsRequest { user: user.to_string(), q: q.to_string(), conv, want, stats: stats.clone() };
    let mut hits = local_hits(ctx, q.to_string(), convs, want, stats).await?;
    let theirs: Vec<Vec<Hit>> = ask_all(ctx, peers, |c, http| c.post(format!("http://{http}/internal/search/hits")).json(&req)).await?;
    hits.extend(theirs.into_iter().flatten());
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    let mut page: Vec<Hit> = hits.into_iter().skip(offset).take(limit).collect();
    // Bodies, as they are now, from the shared store (peers send none).
    let wanted: Vec<(String, u64)> = page.iter().filter(|h| h.body.is_empty()).map(|h| (h.conv.clone(), h.seq)).collect();
    let bodies = ctx
        .read(move |store| {
            let mut out = std::collections::HashMap::new();
            for (conv, seq) in wanted {
                if let Some(m) = store.messages_after(&conv, seq - 1, 1).map_err(unavailable)?.pop().filter(|m| m.seq == seq) {
                    out.insert((conv, seq), m.body);
                }
            }
            Ok(out)
        })
        .await?;
    for h in page.iter_mut().filter(|h| h.body.is_empty()) {
        if let Some(b) = bodies.get(&(h.conv.clone(), h.seq)) {
            h.body = b.clone();
        }
    }
    tracing::debug!(nodes = peers.len() + 1, ms = started.elapsed().as_secs_f64() * 1e3, "search across the cluster");
    Ok(page)
}

fn check_node(ctx: &Ctx, headers: &HeaderMap) -> ApiResult<()> {
    let token = headers.get(NODE_HEADER).and_then(|v| v.to_str().ok());
    if ctx.auth.is_node(token) {
        Ok(())
    } else {
        Err(FrameError::new(ErrorCode::Forbidden, "for the nodes of this cluster only").into())
    }
}

/// Round one, answered: this node's statistics of the query.
pub(crate) async fn stats(State(ctx): State<Ctx>, headers: HeaderMap, Query(q): Query<StatsQuery>) -> ApiResult<Json<Stats>> {
    check_node(&ctx, &headers)?;
    Ok(Json(local_stats(&ctx, q.q).await?))
}

/// Round two, answered: this node's best hits for the caller, ranked by the cluster's
/// statistics, without bodies.
pub(crate) async fn hits(State(ctx): State<Ctx>, headers: HeaderMap, Json(r): Json<HitsRequest>) -> ApiResult<Json<Vec<Hit>>> {
    check_node(&ctx, &headers)?;
    if !shardchat_codec::valid_user_id(&r.user) || r.want > crate::rest::SEARCH_WANT_MAX {
        return Err(FrameError::bad_request("user or want out of bounds").into());
    }
    let convs = readable(&ctx, r.user, r.conv).await?;
    let mut hits = local_hits(&ctx, r.q, convs, r.want, r.stats).await?;
    hits.iter_mut().for_each(|h| h.body.clear());
    Ok(Json(hits))
}
