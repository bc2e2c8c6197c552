//! Presence by interest. A user's presence lives on their home shard with the list of
//! connections subscribed to it; subscribers get the current state at once and every change
//! after, coalesced (at most one update per `presence_coalesce_ms`, none if the user is back to
//! the published state). Nothing is broadcast to contacts who did not ask.

use super::*;
use crate::route::home_shard;
use shardchat_codec::ErrorCode;

fn frame(user: &str, online: bool, last_seen: Option<u64>) -> Payload {
    let status = if online { "online" } else { "offline" };
    ServerFrame::Presence { user: user.to_string(), status: status.into(), last_seen: if online { None } else { last_seen } }.into()
}

impl Shard {
    /// Subscriber side: remember the targets and ask their home shards.
    pub(super) fn subscribe(&mut self, conn: u64, users: Vec<String>) {
        let me = self.me(conn);
        let max = self.cfg.presence_subs_per_conn_max;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let mut asked = Vec::new();
        let mut refused = false;
        for u in users {
            if c.presence_targets.contains(&u) {
                continue;
            }
            if c.presence_targets.len() >= max {
                refused = true;
                break;
            }
            c.presence_targets.push(u.clone());
            asked.push(u);
        }
        for target in asked {
            let home = home_shard(&target, self.cfg.shards);
            self.send_to(home, PeerMsg::PresenceSub { target, sub: me });
        }
        if refused {
            self.error(conn, FrameError::new(ErrorCode::RateLimited, format!("at most {max} presence subscriptions per connection")));
        }
    }

    pub(super) fn unsubscribe(&mut self, conn: u64, users: Vec<String>) {
        let me = self.me(conn);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let gone: Vec<String> = users.into_iter().filter(|u| c.presence_targets.contains(u)).collect();
        c.presence_targets.retain(|t| !gone.contains(t));
        for target in gone {
            let home = home_shard(&target, self.cfg.shards);
            self.send_to(home, PeerMsg::PresenceUnsub { target, sub: me });
        }
    }

    /// After dropped presence frames: ask again for everything this connection watches; the
    /// answers are the current states.
    pub(super) fn resubscribe(&mut self, conn: u64) {
        let me = self.me(conn);
        let Some(c) = self.conns.get(&conn) else { return };
        for target in c.presence_targets.clone() {
            let home = home_shard(&target, self.cfg.shards);
            self.send_to(home, PeerMsg::PresenceSub { target, sub: me });
        }
    }

    /// Target side: register the subscriber and answer with the current state.
    pub(super) fn presence_sub(&mut self, target: String, sub: ConnRef) {
        let online = self.by_user.contains_key(&target);
        let p = self.presence.entry(target.clone()).or_default();
        if !p.subs.contains(&sub) {
            p.subs.push(sub);
        }
        if online || p.loaded {
            let payload = frame(&target, online, p.last_seen);
            self.send_to(sub.shard, PeerMsg::Deliver { conns: vec![sub.conn], payload, class: Class::Ephemeral });
            return;
        }
        match &mut p.waiting {
            Some(w) => w.push(sub),
            None => {
                p.waiting = Some(vec![sub]);
                self.actions.push(Action::Lookup(ReadJob::LastSeen { user: target }));
            }
        }
    }

    /// A one-off question (the REST API's batch presence): answered like a subscription's first
    /// frame, without subscribing.
    pub(super) fn presence_query(&mut self, target: String, reply_to: ConnRef) {
        let online = self.by_user.contains_key(&target);
        let known = self.presence.get(&target).filter(|p| p.loaded).map(|p| p.last_seen);
        if online || known.is_some() {
            let payload = frame(&target, online, known.flatten());
            self.send_to(reply_to.shard, PeerMsg::Deliver { conns: vec![reply_to.conn], payload, class: Class::Durable });
            return;
        }
        let p = self.presence.entry(target.clone()).or_default();
        match &mut p.waiting {
            Some(w) => w.push(reply_to),
            None => {
                p.waiting = Some(vec![reply_to]);
                self.actions.push(Action::Lookup(ReadJob::LastSeen { user: target }));
            }
        }
    }

    pub(super) fn presence_unsub(&mut self, target: &str, sub: ConnRef) {
        let Some(p) = self.presence.get_mut(target) else { return };
        p.subs.retain(|s| *s != sub);
        if p.subs.is_empty() && p.waiting.is_none() {
            self.presence.remove(target);
            self.presence_dirty.remove(target);
        }
    }

    pub(super) fn lookup_done(&mut self, outcome: ReadOutcome) {
        let ReadOutcome::LastSeen { user, ms } = outcome else { unreachable!("only last-seen lookups exist") };
        let online = self.by_user.contains_key(&user);
        let Some(p) = self.presence.get_mut(&user) else { return };
        let waiting = p.waiting.take().unwrap_or_default();
        // If the store failed, answer without a last-seen time rather than not at all.
        if let Ok(ms) = ms {
            p.loaded = true;
            p.last_seen = p.last_seen.max(ms);
        }
        let payload = frame(&user, online, p.last_seen);
        if p.subs.is_empty() {
            // Only one-off queries asked: keep nothing.
            self.presence.remove(&user);
        }
        self.deliver_to_subs(&waiting, payload);
    }

    /// The user's first connection arrived or the last one left.
    pub(super) fn presence_changed(&mut self, user: &str) {
        if self.presence.contains_key(user) {
            self.presence_dirty.insert(user.to_string());
        }
    }

    pub(super) fn went_offline(&mut self, user: &str) {
        let now = self.now.unix_ms;
        self.last_seen_dirty.push((user.to_string(), now));
        if let Some(p) = self.presence.get_mut(user) {
            p.last_seen = Some(now);
            p.loaded = true;
        }
        self.presence_changed(user);
    }

    /// Publishes coalesced changes: a user whose status differs from the last published one,
    /// and who was not published within the coalescing interval.
    pub(super) fn publish_presence(&mut self) {
        let now = self.now.mono_ms;
        let interval = self.cfg.presence_coalesce_ms;
        let due: Vec<String> = self
            .presence_dirty
            .iter()
            .filter(|u| self.presence.get(u.as_str()).is_some_and(|p| p.published.is_none() || now >= p.last_publish_ms + interval))
            .cloned()
            .collect();
        for user in due {
            self.presence_dirty.remove(&user);
            let online = self.by_user.contains_key(&user);
            let Some(p) = self.presence.get_mut(&user) else { continue };
            if p.published == Some(online) {
                continue;
            }
            p.published = Some(online);
            p.last_publish_ms = now;
            let subs = p.subs.clone();
            let payload = frame(&user, online, p.last_seen);
            self.deliver_to_subs(&subs, payload);
        }
    }

    /// One `Deliver` per subscriber shard.
    fn deliver_to_subs(&mut self, subs: &[ConnRef], payload: Payload) {
        let mut by_shard: std::collections::BTreeMap<ShardId, Vec<u64>> = Default::default();
        for s in subs {
            by_shard.entry(s.shard).or_default().push(s.conn);
        }
        for (shard, conns) in by_shard {
            self.send_to(shard, PeerMsg::Deliver { conns, payload: payload.clone(), class: Class::Ephemeral });
        }
    }
}
