//! The owner role: ordering a conversation's ops, running commit jobs one at a time, acking and
//! fanning out what they stored, relaying typing, and coalescing group receipt counts.

use super::*;
use crate::conv::typing_members;
use crate::route::home_shard;
use shardchat_codec::{ErrorCode, Member, SeqCounts};
use std::collections::BTreeMap;

/// After the live nodes change, how long a node refuses ops for conversations it gained, so the
/// previous owner (which may learn of the change up to one cluster refresh later, and may have a
/// commit in flight) has stopped sequencing them before this node loads their `seq` from the
/// store: one refresh (1 s) plus a commit's worst case. Refused sends are `unavailable`; clients
/// retry with the same cmid.
pub const HANDOVER_MS: u64 = 3_000;
// A write the fence allowed must land before the new owner's first: the fence is re-read when
// older than FENCE_FRESH_MS, well inside the handover.
const _: () = assert!(crate::commit::FENCE_FRESH_MS * 2 <= HANDOVER_MS);

impl Shard {
    /// In cluster mode an op reaches the owner shard of its conversation on the node where it
    /// arrived; only the owner node's owner shard sequences it, so it is forwarded there, once.
    pub(super) fn route_op(&mut self, op: Op, forwarded: bool) {
        if !self.cfg.cluster {
            return self.accept_op(op);
        }
        let Some(conv) = op.conv() else { return self.accept_op(op) };
        let me = self.node();
        let why = match self.view.as_deref().map(|v| crate::route::owner_node(conv, v)) {
            Some(Some(owner)) if owner == me => match &self.handover {
                Some((before, until)) if self.now.mono_ms() < *until && crate::route::owner_node(conv, before) != Some(me) => {
                    "conversation is moving to this node; retry shortly"
                }
                _ => return self.accept_op(op),
            },
            Some(Some(owner)) if !forwarded => {
                let op = op.into_remote().expect("an op about a conversation may cross nodes");
                self.actions.push(Action::Remote { node: owner, msg: Box::new(crate::remote::RemoteMsg::Op(op)) });
                return;
            }
            Some(Some(_)) => "conversation is changing nodes; retry shortly",
            Some(None) | None => "cluster membership not known yet; retry shortly",
        };
        if let Some((to, frame)) = op.refusal(FrameError::new(ErrorCode::Unavailable, why)) {
            self.reply(to, frame.into());
        }
    }

    /// The cluster link says the live nodes changed: conversations this node no longer owns
    /// leave its cache, and their waiting ops go to the new owner.
    pub(super) fn view_changed(&mut self, live: Vec<crate::route::NodeId>, incarnation: u64) {
        if incarnation <= self.fenced {
            // Said before the link learned of the fence: wait for the new incarnation.
            return;
        }
        let fresh = incarnation != self.incarnation;
        if fresh {
            // A new incarnation (the first, or one after this node was taken for dead): others
            // may have sequenced any conversation meanwhile, so nothing cached is kept and
            // every conversation is gained afresh (handover).
            self.incarnation = incarnation;
            self.convs.clear();
            self.view = None;
        } else if self.view.as_ref() == Some(&live) {
            return;
        }
        self.presence_view(&live);
        let me = self.node();
        let owned = |conv: &str| crate::route::owner_node(conv, &live) == Some(me);
        self.convs.retain(|c, _| owned(c));
        self.receipts_dirty.retain(|c| owned(c));
        self.receipts_last_ms.retain(|c, _| owned(c));
        self.receipts_sent.retain(|c, _| owned(c));
        // Ops waiting for a conversation that moved go to its new owner; after a new
        // incarnation every conversation op is routed again, so the handover applies to it.
        let (stay, moved): (Vec<Op>, Vec<Op>) =
            std::mem::take(&mut self.pending).into_iter().partition(|op| op.conv().is_none_or(|c| !fresh && owned(c)));
        self.pending = stay;
        // The first view of an incarnation is a handover too: a node back from a crash or a
        // pause takes back conversations the others sequenced meanwhile.
        let before = self.view.replace(live).unwrap_or_default();
        self.handover = Some((before, self.now.mono_ms() + HANDOVER_MS));
        for op in moved {
            self.route_op(op, false);
        }
    }

    pub(super) fn accept_op(&mut self, mut op: Op) {
        if let Op::Typing { reply_to, user, conv } = &op {
            // Typing is never stored: relay at once when the members are cached; otherwise
            // the next commit job loads them.
            if let Some(st) = self.convs.get(conv.as_str()) {
                match typing_members(st, conv, user) {
                    Ok(members) => {
                        let (conv, user) = (conv.clone(), user.clone());
                        self.relay_typing(conv, user, members);
                    }
                    Err(e) => {
                        let to = *reply_to;
                        self.reply(to, ServerFrame::from(e).into());
                    }
                }
                return;
            }
        }
        // One commit runs at a time, so a slow disk backs ops up here. Past the bound they are
        // refused with their cmid or ref (the client retries that request), never queued without
        // end. What the engine owes itself (last seen, push bookkeeping) is always taken: it is
        // small and bounded by the connections.
        if self.pending.len() >= self.cfg.owner_pending_ops_max && !matches!(op, Op::LastSeen { .. } | Op::PushDelivered(_)) {
            self.counters.overloaded += 1;
            if let Some((to, frame)) = op.refusal(FrameError::new(ErrorCode::Unavailable, "server overloaded, retry later")) {
                self.reply(to, frame.into());
            }
            return;
        }
        match &mut op {
            Op::Send(s) => {
                debug_assert_eq!(s.id, UNASSIGNED, "an op is accepted once");
                s.id = self.ids.next(self.now.unix_ms);
                s.ts = self.now.unix_ms;
            }
            Op::Group(g) => {
                debug_assert_eq!(g.id, UNASSIGNED, "an op is accepted once");
                g.id = self.ids.next(self.now.unix_ms);
                g.ts = self.now.unix_ms;
            }
            _ => {}
        }
        self.pending.push(op);
    }

    pub(super) fn maybe_commit(&mut self) {
        if self.committing || self.pending.is_empty() {
            return;
        }
        // Paced: within the interval of the last job's start, the ops wait here (and whatever
        // comes meanwhile joins them) until a wake-up at its end. Every return with ops pending
        // and no job out leaves a wake-up outstanding: nothing else is sure to come.
        let interval = self.cfg.commit_interval_us;
        if let Some(due) = self.last_commit_us.filter(|_| interval > 0).map(|t| t + interval).filter(|&due| self.now.mono_us < due) {
            if !self.wake_pending {
                self.wake_pending = true;
                self.actions.push(Action::WakeAt { mono_us: due });
            }
            return;
        }
        self.last_commit_us = Some(self.now.mono_us);
        let ops = std::mem::take(&mut self.pending);
        let mut convs = crate::commit::Convs::new();
        for op in &ops {
            if let Some(conv) = op.conv() {
                if let Some(st) = self.convs.remove(conv) {
                    convs.insert(conv.to_string(), st);
                }
            }
        }
        self.committing = true;
        let fence = self.cfg.cluster.then_some((self.node(), self.incarnation));
        self.commit_incarnation = self.incarnation;
        let push = self.cfg.push_enabled;
        self.actions.push(Action::Commit(Box::new(CommitJob { ops, convs, fence, push })));
    }

    pub(super) fn commit_done(&mut self, out: CommitOutcome) {
        // One commit at a time is what keeps seqs in order across batches.
        assert!(self.committing, "a commit finished that this shard never started");
        self.committing = false;
        if out.fenced {
            // The others took the job's incarnation for dead: sequence nothing until the link
            // rejoins with a newer one (it may already have: then the view it sent stands).
            let inc = self.commit_incarnation;
            tracing::warn!(node = self.cfg.node, incarnation = inc, "fenced: this node was taken for dead; waiting to rejoin");
            self.fenced = self.fenced.max(inc);
            if self.incarnation <= inc {
                self.view = None;
                self.convs.clear();
            }
        }
        if self.convs.len() + out.convs.len() > self.cfg.conv_cache_max {
            // Trimming is cheap and rare; evicted conversations reload from the store.
            self.convs.clear();
        }
        match &self.view {
            // Conversations that moved away while their commit ran are not kept.
            Some(live) if self.cfg.cluster => {
                let me = self.node();
                self.convs.extend(out.convs.into_iter().filter(|(c, _)| crate::route::owner_node(c, live) == Some(me)));
            }
            _ => self.convs.extend(out.convs),
        }
        for outcome in out.outcomes {
            match outcome {
                OpOutcome::Rejected { reply_to, err } => self.reply(reply_to, ServerFrame::from(err).into()),
                OpOutcome::Answer { reply_to, frame } => self.reply(reply_to, frame.into()),
                OpOutcome::Stored { reply_to, record, members, fresh } => {
                    let ack = ServerFrame::Ack {
                        cmid: record.cmid.clone(),
                        conv: record.conv.clone(),
                        id: record.id,
                        seq: record.seq,
                        ts: record.ts,
                    };
                    self.reply(reply_to, ack.into());
                    if fresh {
                        let msg = Some((record.conv.clone(), record.seq));
                        self.fanout(&members, ServerFrame::Msg(record).into(), Some(reply_to), msg, Class::Durable);
                    }
                }
                OpOutcome::Marked { conv, user, kind, seq, members, changed } => {
                    if !changed {
                        continue;
                    }
                    if ConvState::is_group(&conv) {
                        // Groups get coalesced counts, not one receipt per reader per member.
                        self.receipts_dirty.insert(conv);
                    } else {
                        let others: Vec<String> = members.into_iter().filter(|m| *m != user).collect();
                        let frame = ServerFrame::Receipt { conv, user, kind, seq };
                        self.fanout(&others, frame.into(), None, None, Class::Durable);
                    }
                }
                OpOutcome::Typed { conv, user, members } => self.relay_typing(conv, user, members),
                OpOutcome::Grouped { reply_to, r#ref, conv, name, members, notify, system } => {
                    let listed: Vec<Member> = members.iter().map(|m| Member { user: m.user.clone(), role: m.role }).collect();
                    let names: Vec<String> = members.iter().map(|m| m.user.clone()).collect();
                    let answer = ServerFrame::Group { conv: conv.clone(), name: name.clone(), members: listed.clone(), r#ref };
                    self.reply(reply_to, answer.into());
                    if let Some(record) = system {
                        let state = ServerFrame::Group { conv: conv.clone(), name, members: listed, r#ref: None };
                        self.fanout(&names, state.into(), Some(reply_to), None, Class::Durable);
                        let mut to = names;
                        to.extend(notify);
                        let msg = Some((conv, record.seq));
                        self.fanout(&to, ServerFrame::Msg(record).into(), None, msg, Class::Durable);
                    }
                }
            }
        }
    }

    fn relay_typing(&mut self, conv: String, user: String, members: Vec<String>) {
        let others: Vec<String> = members.into_iter().filter(|m| *m != user).collect();
        self.fanout(&others, ServerFrame::Typing { conv, user }.into(), None, None, Class::Ephemeral);
    }

    /// One message per destination home shard, carrying the users that live there and the
    /// payload encoded once; in cluster mode one more for the link, which sends it once to each
    /// other node holding some of them.
    pub(super) fn fanout(&mut self, users: &[String], payload: Payload, except: Option<ConnRef>, msg: Option<(String, u64)>, class: Class) {
        if self.cfg.cluster && !users.is_empty() {
            let (users, payload, msg) = (users.to_vec(), payload.clone(), msg.clone());
            self.actions.push(Action::RemoteFanout(Box::new(super::RemoteFanout { users, payload, except, msg, class })));
        }
        let mut by_shard: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
        for u in users {
            by_shard.entry(home_shard(u, self.cfg.shards)).or_default().push(u.clone());
        }
        for (shard, users) in by_shard {
            let m = PeerMsg::Fanout { users, payload: payload.clone(), except, msg: msg.clone(), class };
            self.send_to(shard, m);
        }
    }

    /// Sends each author the delivered/read counts of their recent messages in groups whose
    /// watermarks moved, at most once per `receipts_coalesce_ms` per conversation, and only the
    /// counts that changed since the last time.
    pub(super) fn emit_receipt_counts(&mut self) {
        let now = self.now.mono_ms();
        let interval = self.cfg.receipts_coalesce_ms;
        // Due: sent long enough ago, and its state is here (not inside a running commit job).
        let due: Vec<String> = self
            .receipts_dirty
            .iter()
            .filter(|conv| self.receipts_last_ms.get(conv.as_str()).is_none_or(|t| now >= t + interval))
            .filter(|conv| self.convs.contains_key(conv.as_str()))
            .cloned()
            .collect();
        for conv in due {
            self.receipts_dirty.remove(&conv);
            self.receipts_last_ms.insert(conv.clone(), now);
            let st = &self.convs[&conv];
            let sent = self.receipts_sent.entry(conv.clone()).or_default();
            sent.retain(|seq, _| st.recent.iter().any(|(s, _)| s == seq));
            let mut by_author: BTreeMap<String, (u32, Vec<SeqCounts>)> = BTreeMap::new();
            for (seq, from) in &st.recent {
                // Former members see no receipts of the conversation, their old messages included.
                if !st.is_member(from) {
                    continue;
                }
                let (of, delivered, read) = st.counts(*seq, from);
                if (delivered, read) == (0, 0) || sent.get(seq) == Some(&(delivered, read)) {
                    continue;
                }
                sent.insert(*seq, (delivered, read));
                by_author.entry(from.clone()).or_insert((of, Vec::new())).1.push(SeqCounts { seq: *seq, delivered, read });
            }
            for (author, (of, counts)) in by_author {
                let frame = ServerFrame::ReceiptCounts { conv: conv.clone(), of, counts };
                self.fanout(&[author], frame.into(), None, None, Class::Durable);
            }
        }
    }

    /// Queues the last-seen times of users who went offline for the next commit.
    pub(super) fn flush_last_seen(&mut self) {
        for (user, ms) in std::mem::take(&mut self.last_seen_dirty) {
            self.pending.push(Op::LastSeen { user, ms });
        }
    }
}
