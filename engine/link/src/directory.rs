//! This node's part of the user → nodes directory, as the link keeps it: the users connected
//! here (the truth, as the home shards report arrivals and departures), the changes not yet
//! written, the presence watches held, and whether the whole must be rewritten.
//!
//! The rule that keeps the directory exact: after anything that may have lost writes (a Redis
//! reconnect, a Redis that lost its data, our liveness key found missing, so a repairer may have
//! removed us), the next write is a whole rewrite from `here`, never the changes queued before;
//! while a rewrite is owed no changes are queued, so nothing grows while Redis is away.

use std::collections::BTreeSet;

#[derive(Clone, Debug)]
pub struct Directory {
    here: BTreeSet<String>,
    pending: Vec<(String, bool)>,
    watching: BTreeSet<String>,
    rewrite: bool,
}

/// A whole rewrite of this node's part: what to remove of what Redis lists for us, and what to
/// write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// Users Redis lists on this node who are not here.
    pub gone: Vec<String>,
    /// Every user here.
    pub here: Vec<String>,
    /// Every user whose presence someone here watches.
    pub watching: Vec<String>,
}

impl Default for Directory {
    fn default() -> Self {
        // A node starts by writing its part whole.
        Directory { here: BTreeSet::new(), pending: Vec::new(), watching: BTreeSet::new(), rewrite: true }
    }
}

impl Directory {
    /// A home shard: `user`'s first connection here arrived (`here`), or the last one left.
    pub fn note(&mut self, user: String, here: bool) {
        let changed = if here { self.here.insert(user.clone()) } else { self.here.remove(&user) };
        if changed && !self.rewrite {
            self.pending.push((user, here));
        }
    }

    /// Someone here watches `user`'s presence (or no longer does).
    pub fn watch(&mut self, user: &str, on: bool) {
        if on {
            self.watching.insert(user.to_string());
        } else {
            self.watching.remove(user);
        }
    }

    /// Users connected here.
    pub fn users_here(&self) -> usize {
        self.here.len()
    }

    /// Whether the next write must be a whole rewrite.
    pub fn rewrite_owed(&self) -> bool {
        self.rewrite
    }

    /// Whether anything waits to be written.
    pub fn dirty(&self) -> bool {
        self.rewrite || !self.pending.is_empty()
    }

    /// Writes may have been lost (Redis unreachable, or our key missing): rewrite whole next.
    pub fn lost(&mut self) {
        self.rewrite = true;
        self.pending.clear();
    }

    /// The changes to write incrementally (none while a rewrite is owed).
    pub fn pending(&self) -> &[(String, bool)] {
        &self.pending
    }

    /// The pending changes reached Redis.
    pub fn written(&mut self) -> Vec<(String, bool)> {
        std::mem::take(&mut self.pending)
    }

    /// The rewrite to make, given what Redis lists on this node now.
    pub fn rewrite(&self, listed: &[String]) -> Rewrite {
        Rewrite {
            gone: listed.iter().filter(|u| !self.here.contains(*u)).cloned().collect(),
            here: self.here.iter().cloned().collect(),
            watching: self.watching.iter().cloned().collect(),
        }
    }

    /// The rewrite reached Redis.
    pub fn rewritten(&mut self) {
        self.pending.clear();
        self.rewrite = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_queue_only_between_rewrites_and_a_rewrite_makes_the_part_exact() {
        let mut d = Directory::default();
        d.note("a".into(), true);
        assert!(d.rewrite_owed() && d.pending().is_empty(), "a start owes a rewrite; nothing queues meanwhile");
        let r = d.rewrite(&["stale".to_string(), "a".to_string()]);
        assert_eq!((r.gone, r.here), (vec!["stale".to_string()], vec!["a".to_string()]));
        d.rewritten();
        d.note("b".into(), true);
        d.note("b".into(), true);
        d.note("a".into(), false);
        assert_eq!(d.pending(), &[("b".to_string(), true), ("a".to_string(), false)], "each change once, in order");
        d.lost();
        assert!(d.pending().is_empty() && d.rewrite_owed());
        d.watch("w", true);
        let r = d.rewrite(&[]);
        assert_eq!((r.here, r.watching), (vec!["b".to_string()], vec!["w".to_string()]));
        d.rewritten();
        assert!(!d.dirty());
    }
}
