//! Presence by interest. A user's presence lives on their home shard with the list of
//! connections subscribed to it; subscribers get the current state at once and every change
//! after, coalesced (at most one update per `presence_coalesce_ms`, none if the user is back to
//! the published state). Nothing is broadcast to contacts who did not ask.

use super::*;
use crate::route::home_shard;
use shardchat_codec::{ErrorCode, PresenceStatus};

fn frame(user: &str, online: bool, last_seen: Option<u64>) -> Payload {
    let status = if online { PresenceStatus::Online } else { PresenceStatus::Offline };
    ServerFrame::Presence { user: user.to_string(), status, last_seen: if online { None } else { last_seen } }.into()
}

impl Shard {
    /// Whether `user` has a connection here or (cluster mode) on another node.
    fn online(&self, user: &str) -> bool {
        self.by_user.contains_key(user) || self.presence.get(user).is_some_and(|p| !p.elsewhere.is_empty())
    }

    /// Whether a first answer about `p` can be given: its last-seen time is loaded and, in
    /// cluster mode, the other nodes are known.
    fn answerable(&self, p: &Presence) -> bool {
        p.loaded && (!self.cfg.cluster || p.elsewhere_known)
    }

    /// A presence entry for `target` is created: in cluster mode the link starts watching it
    /// on the other nodes.
    fn presence_entry(&mut self, target: &str) -> &mut Presence {
        if !self.presence.contains_key(target) {
            if self.cfg.cluster {
                self.actions.push(Action::PresenceWatch { user: target.to_string(), watch: true });
            }
            self.presence.insert(target.to_string(), Presence::default());
        }
        self.presence.get_mut(target).expect("inserted")
    }

    fn presence_drop(&mut self, target: &str) {
        if self.presence.remove(target).is_some() && self.cfg.cluster {
            self.actions.push(Action::PresenceWatch { user: target.to_string(), watch: false });
        }
        self.presence_dirty.remove(target);
    }

    /// Subscriber side: remember the targets and ask their home shards.
    pub(super) fn subscribe(&mut self, conn: ConnId, users: Vec<String>) {
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

    pub(super) fn unsubscribe(&mut self, conn: ConnId, users: Vec<String>) {
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
    pub(super) fn resubscribe(&mut self, conn: ConnId) {
        let me = self.me(conn);
        let Some(c) = self.conns.get(&conn) else { return };
        for target in c.presence_targets.clone() {
            let home = home_shard(&target, self.cfg.shards);
            self.send_to(home, PeerMsg::PresenceSub { target, sub: me });
        }
    }

    /// Target side: register the subscriber and answer with the current state.
    pub(super) fn presence_sub(&mut self, target: String, sub: ConnRef) {
        let p = self.presence_entry(&target);
        if !p.subs.contains(&sub) {
            p.subs.push(sub);
        }
        let online = self.online(&target);
        let p = &self.presence[&target];
        if online || self.answerable(p) {
            let payload = frame(&target, online, p.last_seen);
            self.told(&target, &[sub], online);
            self.send_to(sub.shard, PeerMsg::Deliver { conns: vec![sub.conn], payload, class: Class::Ephemeral });
            return;
        }
        self.presence_wait(target, sub);
    }

    /// Queues `who` for the first answer about `target`, reading its last-seen time once.
    fn presence_wait(&mut self, target: String, who: ConnRef) {
        let p = self.presence.get_mut(&target).expect("entry exists");
        match &mut p.waiting {
            Some(w) => w.push(who),
            None => {
                p.waiting = Some(vec![who]);
                if !p.loaded {
                    self.actions.push(Action::Lookup(Box::new(ReadJob::LastSeen { user: target })));
                }
            }
        }
    }

    /// A one-off question (the REST API's batch presence): answered like a subscription's first
    /// frame, without subscribing.
    pub(super) fn presence_query(&mut self, target: String, reply_to: ConnRef) {
        let online = self.online(&target);
        let known = self.presence.get(&target).filter(|p| self.answerable(p)).map(|p| p.last_seen);
        if online || known.is_some() {
            let payload = frame(&target, online, known.flatten());
            self.send_to(reply_to.shard, PeerMsg::Deliver { conns: vec![reply_to.conn], payload, class: Class::Durable });
            return;
        }
        self.presence_entry(&target);
        self.presence_wait(target, reply_to);
    }

    pub(super) fn presence_unsub(&mut self, target: &str, sub: ConnRef) {
        let Some(p) = self.presence.get_mut(target) else { return };
        p.subs.retain(|s| *s != sub);
        if p.subs.is_empty() && p.waiting.is_none() {
            self.presence_drop(target);
        }
    }

    pub(super) fn lookup_done(&mut self, outcome: ReadOutcome) {
        let ReadOutcome::LastSeen { user, ms } = outcome else { unreachable!("only last-seen lookups exist") };
        let Some(p) = self.presence.get_mut(&user) else { return };
        // If the store failed, answer without a last-seen time rather than not at all.
        if let Ok(ms) = ms {
            p.last_seen = p.last_seen.max(ms);
        }
        p.loaded = true;
        self.answer_waiting(&user);
    }

    /// Gives the first answer to everyone waiting for `user`, once it can be given.
    fn answer_waiting(&mut self, user: &str) {
        let online = self.online(user);
        let Some(p) = self.presence.get(user) else { return };
        if p.waiting.is_none() || !(online || self.answerable(p)) {
            return;
        }
        let p = self.presence.get_mut(user).expect("present");
        let waiting = p.waiting.take().unwrap_or_default();
        let payload = frame(user, online, p.last_seen);
        if p.subs.is_empty() {
            // Only one-off queries asked: keep nothing.
            self.presence_drop(user);
        } else {
            self.told(user, &waiting, online);
        }
        self.deliver_to_subs(&waiting, payload);
    }

    /// `answered` (new subscribers, or one asking again) are told `online` as a first answer.
    /// If every other subscriber last heard the same, that status now counts as published, so
    /// the change that made it answerable (the other nodes' answer, a connection arriving while
    /// the last-seen read ran) is not published again to those who were just told. If they
    /// heard otherwise, the subscribers disagree and the next publication goes to all.
    fn told(&mut self, user: &str, answered: &[ConnRef], online: bool) {
        let Some(p) = self.presence.get_mut(user) else { return };
        let waiting = p.waiting.as_deref().unwrap_or_default();
        let others = p.subs.iter().any(|s| !answered.contains(s) && !waiting.contains(s));
        if !others || p.published == Some(online) {
            p.published = Some(online);
        } else {
            p.published = None;
        }
    }

    /// Cluster link: the other nodes holding `user` now (its answer to a watch).
    pub(super) fn presence_nodes(&mut self, user: String, nodes: Vec<NodeId>) {
        let Some(p) = self.presence.get_mut(&user) else { return };
        p.elsewhere = nodes;
        p.elsewhere_known = true;
        self.presence_changed(&user);
        self.answer_waiting(&user);
    }

    /// Cluster link: `user` arrived on or left another node.
    pub(super) fn presence_elsewhere(&mut self, user: String, node: NodeId, here: bool, at_ms: u64) {
        let Some(p) = self.presence.get_mut(&user) else { return };
        p.elsewhere.retain(|n| *n != node);
        if here {
            p.elsewhere.push(node);
        } else {
            p.last_seen = p.last_seen.max(Some(at_ms));
        }
        self.presence_changed(&user);
    }

    /// Cluster mode: nodes no longer live hold no one.
    pub(super) fn presence_view(&mut self, live: &[NodeId]) {
        let mut changed = Vec::new();
        for (user, p) in &mut self.presence {
            let before = p.elsewhere.len();
            p.elsewhere.retain(|n| live.contains(n));
            if p.elsewhere.len() != before {
                changed.push(user.clone());
            }
        }
        for user in changed {
            self.presence_changed(&user);
        }
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
        let now = self.now.mono_ms();
        let interval = self.cfg.presence_coalesce_ms;
        let due: Vec<String> = self
            .presence_dirty
            .iter()
            .filter(|u| {
                self.presence
                    .get(u.as_str())
                    .is_some_and(|p| p.published.is_none() || p.last_publish_ms.is_none_or(|t| now >= t + interval))
            })
            .cloned()
            .collect();
        for user in due {
            self.presence_dirty.remove(&user);
            let online = self.online(&user);
            let Some(p) = self.presence.get_mut(&user) else { continue };
            if p.published == Some(online) {
                continue;
            }
            p.published = Some(online);
            p.last_publish_ms = Some(now);
            let subs = p.subs.clone();
            let payload = frame(&user, online, p.last_seen);
            self.deliver_to_subs(&subs, payload);
        }
    }

    /// One `Deliver` per subscriber shard.
    fn deliver_to_subs(&mut self, subs: &[ConnRef], payload: Payload) {
        let mut by_shard: std::collections::BTreeMap<ShardId, Vec<ConnId>> = Default::default();
        for s in subs {
            by_shard.entry(s.shard).or_default().push(s.conn);
        }
        for (shard, conns) in by_shard {
            self.send_to(shard, PeerMsg::Deliver { conns, payload: payload.clone(), class: Class::Ephemeral });
        }
    }
}
