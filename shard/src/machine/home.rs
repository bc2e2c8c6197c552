//! The home role: a user's connections, their requests, delivery to them, sync streaming,
//! heartbeats and typing rate limits.

use super::*;
use crate::route::{home_shard, owner_shard};
use shardchat_codec::{ClientFrame, ErrorCode, MsgRecord, ReceiptKind, SYNC_FRAME_MESSAGES_MAX, SYNC_LIMIT_DEFAULT};

impl Shard {
    pub(super) fn connected(&mut self, conn: ConnId, user: String, expires_unix_ms: Option<u64>) {
        let first = !self.by_user.contains_key(&user);
        self.by_user.entry(user.clone()).or_default().conns.push(conn);
        if first {
            self.presence_changed(&user);
            if self.cfg.cluster {
                self.actions.push(Action::Directory { user: user.clone(), here: true });
            }
        }
        // Expiry is given on the wall clock and kept on the monotonic one, like every timeout here.
        let expires_mono_ms = expires_unix_ms.map_or(u64::MAX, |e| self.now.mono_ms().saturating_add(e.saturating_sub(self.now.unix_ms)));
        let c = Conn {
            user,
            last_active_ms: self.now.mono_ms(),
            live_first: ThinVec::new(),
            sync: None,
            presence_targets: ThinVec::new(),
            remote: None,
            expires_mono_ms,
            limits: Default::default(),
        };
        self.conns.insert(conn, c);
        self.wheel.insert(conn, (self.now.mono_ms() + self.cfg.heartbeat_timeout_ms).min(expires_mono_ms));
    }

    pub(super) fn disconnected(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        if let Some(remote) = c.remote {
            self.remote_conns.remove(&remote);
        }
        let me = self.me(conn);
        for target in c.presence_targets {
            let home = home_shard(&target, self.cfg.shards);
            self.send_to(home, PeerMsg::PresenceUnsub { target, sub: me });
        }
        if let Some(list) = self.by_user.get_mut(&c.user).map(|u| &mut u.conns) {
            list.retain(|x| *x != conn);
            if list.is_empty() {
                self.by_user.remove(&c.user);
                self.went_offline(&c.user);
                if self.cfg.cluster {
                    self.actions.push(Action::Directory { user: c.user.clone(), here: false });
                }
            }
        }
    }

    pub(super) fn touch(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_active_ms = self.now.mono_ms();
        }
    }

    pub(super) fn expire_connections(&mut self) {
        for conn in self.wheel.advance(self.now.mono_ms()) {
            let Some(c) = self.conns.get(&conn) else { continue };
            let deadline = c.last_active_ms + self.cfg.heartbeat_timeout_ms;
            if c.expires_mono_ms <= self.now.mono_ms() {
                // The client reconnects with a fresh token and syncs; nothing is lost.
                self.actions.push(Action::Close { conn, code: 1008, reason: "token expired" });
                self.disconnected(conn);
            } else if deadline <= self.now.mono_ms() {
                match c.remote {
                    // A session nobody polled: tell its holder it is gone.
                    Some(remote) => self.send_to(remote.shard, PeerMsg::Detach { remote }),
                    None => self.actions.push(Action::Close { conn, code: 1000, reason: "heartbeat timeout" }),
                }
                // The runtime reports Disconnected once the socket is gone; until then it is
                // closing and gets nothing more.
                self.disconnected(conn);
            } else {
                self.wheel.insert(conn, deadline.min(c.expires_mono_ms));
            }
        }
    }

    pub(super) fn frame(&mut self, conn: ConnId, frame: ClientFrame) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        // Writes, history reads and presence subscription changes pass their connection's limit,
        // then the user's, shared by all of their connections (more connections do not multiply
        // it), before they cost anything.
        let limit = match &frame {
            ClientFrame::Send { .. }
            | ClientFrame::GroupCreate { .. }
            | ClientFrame::GroupAdd { .. }
            | ClientFrame::GroupRemove { .. }
            | ClientFrame::GroupLeave { .. }
            | ClientFrame::GroupRename { .. } => Some(Limit::Sends),
            ClientFrame::History { .. } => Some(Limit::Histories),
            ClientFrame::PresenceSub { .. } | ClientFrame::PresenceUnsub { .. } => Some(Limit::PresenceChanges),
            _ => None,
        };
        let mut limited = None;
        if let Some(l) = limit {
            let (now, (per_conn, per_user, what)) = (self.now.mono_ms(), self.cfg.rates(l));
            if !c.limits.get(l).allow(now, per_conn) {
                limited = Some(format!("{what} on this connection"));
            } else if let Some(u) = self.by_user.get_mut(&c.user) {
                if !u.limits.get(l).allow(now, per_user) {
                    limited = Some(format!("{what} from your connections together"));
                }
            }
        }
        if let Some(what) = limited {
            let (cmid, r#ref) = frame.correlation();
            let err = FrameError::new(ErrorCode::RateLimited, format!("too many {what}; retry later")).with_cmid(cmid).with_ref(r#ref);
            self.error(conn, err);
            return;
        }
        let c = &self.conns[&conn];
        let user = c.user.clone();
        let me = self.me(conn);
        let op = match frame {
            ClientFrame::Send { cmid, to, conv, body, kind, target: target_seq, reply_to, media } => {
                let target = match (to, conv) {
                    (Some(to), _) => Target::To(to),
                    (None, Some(conv)) => Target::Conv(conv),
                    (None, None) => unreachable!("validated by the codec"),
                };
                Op::Send(SendOp::new(me, user, cmid, target, body, kind).refers(target_seq, reply_to).with_media(media.map(Box::new)))
            }
            ClientFrame::Delivered { conv, seq } => Op::Mark(MarkOp { reply_to: me, user, conv, kind: ReceiptKind::Delivered, seq }),
            ClientFrame::Read { conv, seq } => Op::Mark(MarkOp { reply_to: me, user, conv, kind: ReceiptKind::Read, seq }),
            ClientFrame::ReceiptQuery { conv, seq, r#ref } => Op::ReceiptQuery { reply_to: me, user, conv, seq, r#ref },
            ClientFrame::GroupCreate { name, members, r#ref } => {
                let conv = format!("g:{}", self.ids.next(self.now.unix_ms));
                self.group_op(me, user, conv, GroupChange::Create { name, members }, r#ref)
            }
            ClientFrame::GroupAdd { conv, users, r#ref } => self.group_op(me, user, conv, GroupChange::Add { users }, r#ref),
            ClientFrame::GroupRemove { conv, users, r#ref } => self.group_op(me, user, conv, GroupChange::Remove { users }, r#ref),
            ClientFrame::GroupLeave { conv, r#ref } => self.group_op(me, user, conv, GroupChange::Leave, r#ref),
            ClientFrame::GroupRename { conv, name, r#ref } => self.group_op(me, user, conv, GroupChange::Rename { name }, r#ref),
            ClientFrame::Typing { conv } => {
                // At most one relayed per user and conversation per interval: the rest are
                // dropped here, before they cost a hop.
                let key = (user.clone(), conv.clone());
                if self.typing_last.get(&key).is_some_and(|t| self.now.mono_ms() < t + self.cfg.typing_interval_ms) {
                    self.counters.typing_dropped += 1;
                    return;
                }
                self.typing_last.insert(key, self.now.mono_ms());
                Op::Typing { reply_to: me, user, conv }
            }
            ClientFrame::Sync { cursors, limit } => {
                let c = self.conns.get_mut(&conn).expect("checked above");
                if c.sync.is_some() {
                    self.error(conn, FrameError::new(ErrorCode::RateLimited, "a sync is already running on this connection"));
                    return;
                }
                let limit = u64::from(limit.unwrap_or(SYNC_LIMIT_DEFAULT));
                c.sync = Some(Box::new(SyncRun { todo: VecDeque::new(), convs: Default::default(), limit }));
                self.actions.push(Action::Read { conn, job: Box::new(ReadJob::SyncPlan { user, cursors }) });
                return;
            }
            ClientFrame::History { conv, before, limit, r#ref } => {
                let limit = limit.unwrap_or(shardchat_codec::HISTORY_LIMIT_DEFAULT) as usize;
                let bytes_max = self.cfg.read_frame_bytes_max;
                self.actions.push(Action::Read { conn, job: Box::new(ReadJob::History { user, conv, before, limit, bytes_max, r#ref }) });
                return;
            }
            ClientFrame::Ping { r#ref } => {
                self.send(conn, ServerFrame::Pong { r#ref }.into());
                return;
            }
            ClientFrame::PresenceSub { users } => {
                self.subscribe(conn, users);
                return;
            }
            ClientFrame::PresenceUnsub { users } => {
                self.unsubscribe(conn, users);
                return;
            }
        };
        let owner = owner_shard(op.conv().expect("client ops name a conversation"), self.cfg.shards);
        self.send_to(owner, PeerMsg::Op(op));
    }

    fn group_op(&mut self, reply_to: ConnRef, user: String, conv: String, change: GroupChange, r#ref: Option<shardchat_codec::Ref>) -> Op {
        Op::Group(GroupOp::new(reply_to, user, conv, change, r#ref))
    }

    /// Delivers a frame to every local connection of `users` (but `except`).
    pub(super) fn deliver_to_users(
        &mut self,
        users: &[String],
        payload: Payload,
        except: Option<ConnRef>,
        msg: Option<(String, u64)>,
        class: Class,
    ) {
        for user in users {
            // One lookup of the user a delivery (a copy of their few ids, inline): user ids are a
            // client's choice, so `by_user` hashes with SipHash, and this path runs per delivery.
            let Some(conns) = self.by_user.get(user).map(|u| u.conns.iter().copied().collect::<smallvec::SmallVec<[ConnId; 4]>>()) else {
                continue;
            };
            // The owner wrote this user's push in the message's batch; it is withdrawn for a user
            // who gets the message live (on whichever node: the store is shared in a cluster).
            if !conns.is_empty() && msg.is_some() && self.cfg.push_enabled {
                self.push_delivered(user, &payload);
            }
            for conn in conns {
                if except == Some(self.me(conn)) {
                    continue;
                }
                if let (Some((conv, seq)), Some(c)) = (&msg, self.conns.get_mut(&conn)) {
                    if !c.live_first.iter().any(|(c, _)| c == conv) && c.live_first.len() < self.cfg.live_first_convs_max {
                        c.live_first.push((conv.clone(), *seq));
                    }
                }
                self.push(conn, payload.clone(), class);
            }
        }
    }

    /// A user with a connection got a message live: the push the owner wrote for it is withdrawn
    /// with this shard's next commit.
    fn push_delivered(&mut self, user: &str, payload: &Payload) {
        if let ServerFrame::Msg(m) = payload.frame() {
            // Only messages proper owe a push (see `sequence`).
            if m.from != user && m.kind.is_content() {
                self.pending.push(Op::PushDelivered(crate::commit::sequence::push_entry(user, m)));
            }
        }
    }

    pub(super) fn read_done(&mut self, conn: ConnId, outcome: ReadOutcome) {
        match outcome {
            ReadOutcome::History(Ok(frame)) => self.send(conn, frame.into()),
            ReadOutcome::History(Err(e)) => self.error(conn, e),
            ReadOutcome::SyncPlan(plan) => {
                let Some(run) = self.conns.get_mut(&conn).and_then(|c| c.sync.as_mut()) else { return };
                match plan {
                    Ok(plan) => {
                        for sc in plan {
                            run.convs.insert(sc.conv.clone(), sc.last);
                            if sc.cursor < sc.last {
                                run.todo.push_back(SyncTodo { conv: sc.conv, after: sc.cursor, last: sc.last, left: run.limit });
                            }
                        }
                        self.next_sync_chunk(conn);
                    }
                    Err(e) => {
                        self.conns.get_mut(&conn).expect("checked").sync = None;
                        self.error(conn, e);
                    }
                }
            }
            ReadOutcome::SyncChunk { conv, messages } => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                let live_first = c.live_first.iter().find(|(c, _)| *c == conv).map_or(u64::MAX, |(_, s)| *s);
                let Some(run) = c.sync.as_mut() else { return };
                let messages = match messages {
                    Ok(m) => m,
                    Err(e) => {
                        c.sync = None;
                        self.error(conn, e);
                        return;
                    }
                };
                let SyncTodo { last, left, .. } = run.todo.pop_front().expect("a chunk answers the head of the plan");
                // A former member's plan ends where they left: never send past it.
                let messages: Vec<MsgRecord> = messages.into_iter().filter(|m| m.seq <= last).collect();
                let fetched = messages.len() as u64;
                let frame_last = messages.last().map(|m| m.seq);
                // Messages from the first live one on were delivered live: do not send them twice.
                let replay: Vec<MsgRecord> = messages.into_iter().filter(|m| m.seq < live_first).collect();
                let reached_live = frame_last.is_some_and(|s| s + 1 >= live_first) || replay.len() as u64 != fetched;
                let left = left - fetched.min(left);
                let more = match frame_last {
                    Some(s) => s < last && !reached_live,
                    None => false,
                };
                if let (Some(s), true, true) = (frame_last, more, left > 0) {
                    run.todo.push_front(SyncTodo { conv: conv.clone(), after: s, last, left });
                }
                if !replay.is_empty() {
                    self.send(conn, ServerFrame::Sync { conv, messages: replay, more }.into());
                }
                self.next_sync_chunk(conn);
            }
            ReadOutcome::LastSeen { .. } => unreachable!("last-seen reads are shard lookups"),
        }
    }

    /// Asks for the next chunk of the running sync, or ends it with `synced`.
    fn next_sync_chunk(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let Some(run) = c.sync.as_mut() else { return };
        match run.todo.front() {
            Some(todo) => {
                let limit = (todo.left as usize).min(SYNC_FRAME_MESSAGES_MAX);
                let job =
                    ReadJob::SyncChunk { conv: todo.conv.clone(), after: todo.after, limit, bytes_max: self.cfg.read_frame_bytes_max };
                self.actions.push(Action::Read { conn, job: Box::new(job) });
            }
            None => {
                let run = c.sync.take().expect("checked");
                self.send(conn, ServerFrame::Synced { convs: run.convs }.into());
            }
        }
    }
}
