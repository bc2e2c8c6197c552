//! What the shards hand the link, held until the link's next turn, within named bounds.
//!
//! The shards never wait on the link, and the link never lets what they hand it grow without
//! bound, whatever Redis, the store or the bridge do meanwhile:
//! - **Directory changes and presence watches** are coalesced to the last word per user: the
//!   link applies them to its own set of users here ([`crate::directory::Directory`]), where
//!   only the net change matters (a user who arrived and left before the link's turn changes
//!   nothing). So they hold at most one entry per user whose connections changed since the
//!   link's last turn, and none is ever refused.
//! - **Messages for other nodes** are held in order up to [`OUT_MSGS_MAX`] messages and
//!   [`OUT_BYTES_MAX`] bytes. Past either, [`Inbox::offer`] gives the message back: the caller
//!   answers an op `unavailable` at once (its client retries the same cmid), and a fan-out of a
//!   stored message is dropped and counted (its receivers on other nodes see the seq gap and
//!   fill it from history, or sync on reconnect; the same as a Redis publish that found nobody).

use crate::routing::Outgoing;
use std::collections::{BTreeMap, VecDeque};

/// Messages for other nodes held between two turns of the link. A turn takes them all; a turn
/// lasts at most a few Redis round trips, each bounded by the link's Redis timeout (2 s).
pub const OUT_MSGS_MAX: usize = 16_384;
/// Bytes of messages for other nodes held between two turns (each counted by
/// [`Outgoing::approx_bytes`]): bodies of up to `body_bytes_max` make the count alone a poor
/// bound on memory.
pub const OUT_BYTES_MAX: usize = 64 << 20;

#[derive(Debug)]
pub struct Inbox {
    directory: BTreeMap<String, bool>,
    watches: BTreeMap<String, bool>,
    out: VecDeque<Outgoing>,
    out_bytes: usize,
    msgs_max: usize,
    bytes_max: usize,
}

/// One turn's worth: everything the shards handed over since the last [`Inbox::take`].
#[derive(Debug, Default)]
pub struct Turn {
    /// The last word per user: first connection here (`true`) or last one gone.
    pub directory: Vec<(String, bool)>,
    /// The last word per user: watched from here (`true`) or no longer.
    pub watches: Vec<(String, bool)>,
    /// For other nodes, in the order the shards produced them.
    pub out: Vec<Outgoing>,
}

impl Turn {
    pub fn is_empty(&self) -> bool {
        self.directory.is_empty() && self.watches.is_empty() && self.out.is_empty()
    }
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox::with_bounds(OUT_MSGS_MAX, OUT_BYTES_MAX)
    }
}

impl Inbox {
    pub fn with_bounds(msgs_max: usize, bytes_max: usize) -> Inbox {
        assert!(msgs_max > 0 && bytes_max > 0, "an inbox that holds nothing would refuse every message");
        Inbox { directory: BTreeMap::new(), watches: BTreeMap::new(), out: VecDeque::new(), out_bytes: 0, msgs_max, bytes_max }
    }

    /// A home shard: `user`'s first connection here arrived (`here`), or the last one left.
    pub fn directory(&mut self, user: String, here: bool) {
        self.directory.insert(user, here);
    }

    /// A home shard: someone here watches `user`'s presence (`on`), or no longer does.
    pub fn watch(&mut self, user: String, on: bool) {
        self.watches.insert(user, on);
    }

    /// Holds `m` for the link's next turn, or gives it back when the inbox is at a bound (boxed:
    /// refusals are rare, and a message is large).
    pub fn offer(&mut self, m: Outgoing) -> Result<(), Box<Outgoing>> {
        let bytes = m.approx_bytes();
        if self.out.len() >= self.msgs_max || self.out_bytes + bytes > self.bytes_max {
            return Err(Box::new(m));
        }
        self.out_bytes += bytes;
        self.out.push_back(m);
        Ok(())
    }

    /// Everything held, for one turn of the link; the inbox is empty after.
    pub fn take(&mut self) -> Turn {
        self.out_bytes = 0;
        Turn {
            directory: std::mem::take(&mut self.directory).into_iter().collect(),
            watches: std::mem::take(&mut self.watches).into_iter().collect(),
            out: std::mem::take(&mut self.out).into(),
        }
    }

    /// Messages held for other nodes (and their counted bytes).
    pub fn held(&self) -> (usize, usize) {
        (self.out.len(), self.out_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::tests::{fanout, send};

    #[test]
    fn directory_changes_and_watches_keep_the_last_word_per_user() {
        let mut inbox = Inbox::default();
        inbox.directory("a".into(), true);
        inbox.directory("b".into(), true);
        inbox.directory("a".into(), false);
        inbox.watch("c".into(), true);
        inbox.watch("c".into(), false);
        inbox.watch("c".into(), true);
        let turn = inbox.take();
        assert_eq!(turn.directory, vec![("a".to_string(), false), ("b".to_string(), true)]);
        assert_eq!(turn.watches, vec![("c".to_string(), true)]);
        assert!(inbox.take().is_empty(), "a turn takes everything");
    }

    #[test]
    fn messages_past_either_bound_are_given_back_and_order_is_kept() {
        let mut inbox = Inbox::with_bounds(3, 1 << 20);
        for n in 0..3 {
            inbox.offer(Outgoing::Remote(n, send(1))).unwrap();
        }
        let back = inbox.offer(Outgoing::Remote(9, send(1))).unwrap_err();
        assert!(matches!(*back, Outgoing::Remote(9, _)), "the refused message comes back to its caller");
        assert_eq!(inbox.held().0, 3, "nothing of the refused message is held");
        let turn = inbox.take();
        let nodes: Vec<_> = turn.out.iter().map(|m| if let Outgoing::Remote(n, _) = m { *n } else { 99 }).collect();
        assert_eq!(nodes, vec![0, 1, 2], "in the order the shards handed them over");
        inbox.offer(Outgoing::Remote(4, send(1))).expect("a turn frees the room");

        // Bytes: a fan-out with a large body fills a small byte bound before the count does.
        let big = fanout("x".repeat(1000));
        let small = Outgoing::Remote(1, send(1));
        let mut inbox = Inbox::with_bounds(100, 2 * big.approx_bytes() + small.approx_bytes());
        inbox.offer(big.clone()).unwrap();
        inbox.offer(big.clone()).unwrap();
        assert!(inbox.offer(big).is_err());
        inbox.offer(small).expect("a small message still fits");
        assert_eq!(inbox.held().0, 3);
    }
}
