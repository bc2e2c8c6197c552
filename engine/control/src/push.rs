//! Push notifications for offline users, through a webhook (`--push-webhook URL`): the operator's
//! bridge to APNs/FCM.
//!
//! The owner shard writes an outbox entry for every recipient of a message in the batch that
//! stores the message, so a crash cannot lose one; a recipient's home shard withdraws the entry
//! when the message reaches one of their connections live. What is left is owed. This task folds a
//! user's outbox entries into
//! one notification per burst (sent once the user's newest entry is `PUSH_BURST_QUIET_MS` old, or
//! the oldest `PUSH_BURST_MAX_MS`), posts notifications in batches, and removes exactly the entries
//! a successful post covered. Failed posts are retried with exponential backoff; entries survive
//! restarts, so nothing owed is lost. Content is vague: counts and conversation names, never
//! bodies.
//!
//! In a cluster the outbox is partitioned by node (ScyllaDB `push_outbox`, partition key `node`):
//! an entry lives in the partition of the node that sequenced its message (the node in its id),
//! a home shard on any node withdraws it there, and each node's task sends only its own
//! partition, so no two nodes send the same entry. A node that is down sends its partition when
//! it comes back under the same `--node-id`.

use super::Ctx;
use serde_json::{json, Value};
use shardchat_shard::read::unavailable;
use shardchat_storage::PushEntry;
use std::collections::BTreeMap;
use std::time::Duration;

/// How often the outbox is scanned.
const PUSH_SCAN_MS: u64 = 250;
/// Outbox entries read per scan.
const PUSH_SCAN_ENTRIES_MAX: usize = 50_000;
/// A burst ends when a user got nothing new for this long...
const PUSH_BURST_QUIET_MS: u64 = 1_000;
/// ...or has been going on this long.
const PUSH_BURST_MAX_MS: u64 = 10_000;
/// Notifications per webhook request.
const PUSH_BATCH_MAX: usize = 100;
const PUSH_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const PUSH_BACKOFF_MIN_MS: u64 = 250;
const PUSH_BACKOFF_MAX_MS: u64 = 60_000;

use shardchat_bridge::clock::unix_ms as now_ms;

/// One user's notification from their outbox entries.
fn notification(user: &str, entries: &[PushEntry], names: &BTreeMap<String, String>) -> Value {
    let mut per_conv: BTreeMap<&str, u64> = BTreeMap::new();
    for e in entries {
        *per_conv.entry(&e.conv).or_default() += 1;
    }
    let count = entries.len();
    let label = |conv: &str| names.get(conv).cloned().unwrap_or_else(|| conv.to_string());
    let noun = if count == 1 { "message" } else { "messages" };
    let text = match per_conv.keys().next() {
        Some(conv) if per_conv.len() == 1 => format!("{count} new {noun} in {}", label(conv)),
        _ => format!("{count} new {noun} in {} conversations", per_conv.len()),
    };
    let convs: Vec<Value> = per_conv.iter().map(|(c, n)| json!({ "conv": c, "name": names.get(*c), "count": n })).collect();
    json!({ "user": user, "count": count, "convs": convs, "text": text })
}

pub async fn run(ctx: Ctx, url: String) {
    let client = match reqwest::Client::builder().timeout(PUSH_REQUEST_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "push webhook client; pushes disabled");
            return;
        }
    };
    let mut failures = 0u32;
    let mut next_attempt = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(PUSH_SCAN_MS)).await;
        let now = now_ms();
        if now < next_attempt {
            continue;
        }
        let entries = match ctx.read(|store| store.push_pending(PUSH_SCAN_ENTRIES_MAX).map_err(unavailable)).await {
            Ok(e) => e,
            Err(_) => continue,
        };
        let mut by_user: BTreeMap<String, Vec<PushEntry>> = BTreeMap::new();
        for e in entries {
            by_user.entry(e.user.clone()).or_default().push(e);
        }
        let due: Vec<(String, Vec<PushEntry>)> = by_user
            .into_iter()
            .filter(|(_, es)| {
                let newest = es.iter().map(|e| e.ts).max().unwrap_or(0);
                let oldest = es.iter().map(|e| e.ts).min().unwrap_or(0);
                now >= newest + PUSH_BURST_QUIET_MS || now >= oldest + PUSH_BURST_MAX_MS
            })
            .collect();
        for chunk in due.chunks(PUSH_BATCH_MAX) {
            let convs: Vec<String> = chunk.iter().flat_map(|(_, es)| es.iter().map(|e| e.conv.clone())).collect();
            let names: BTreeMap<String, String> = ctx
                .read(move |store| Ok(convs.into_iter().filter_map(|c| store.conv_name(&c).ok().flatten().map(|n| (c, n))).collect()))
                .await
                .unwrap_or_default();
            let body = json!({ "notifications": chunk.iter().map(|(u, es)| notification(u, es, &names)).collect::<Vec<_>>() });
            let ok = match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => true,
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "push webhook refused a batch; will retry");
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "push webhook unreachable; will retry");
                    false
                }
            };
            if !ok {
                failures += 1;
                let backoff = (PUSH_BACKOFF_MIN_MS << failures.min(16)).min(PUSH_BACKOFF_MAX_MS);
                next_attempt = now_ms() + backoff;
                break;
            }
            failures = 0;
            let sent: Vec<PushEntry> = chunk.iter().flat_map(|(_, es)| es.iter().cloned()).collect();
            let _ = ctx.read(move |store| store.push_done(&sent).map_err(unavailable)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_count_and_name_without_content() {
        let e = |conv: &str, id| PushEntry { user: "bob".into(), conv: conv.into(), from: "alice".into(), id, ts: 1 };
        let names: BTreeMap<String, String> = [("g:1".to_string(), "team".to_string())].into();
        let one = notification("bob", &[e("g:1", 1), e("g:1", 2), e("g:1", 3)], &names);
        assert_eq!(one["text"], "3 new messages in team");
        assert_eq!(one["count"], 3);
        let two = notification("bob", &[e("g:1", 1), e("d:alice:bob", 2)], &names);
        assert_eq!(two["text"], "2 new messages in 2 conversations");
        assert!(!two.to_string().contains("body"));
    }
}
