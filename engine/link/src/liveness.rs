//! Liveness, incarnations and fences: the part of the link that decides who is alive, and that
//! no two nodes sequence one conversation.
//!
//! Each refresh the link writes this node's liveness key (with its incarnation) and reads every
//! known node's. [`Liveness::wrote_key`] decides from what the key held before whether we were
//! taken for dead (it had expired after we had written it): then we rejoin as a new incarnation,
//! above any fence of ours, and rewrite our part of the directory. [`Liveness::refreshed`] turns
//! the nodes' keys into a [`Plan`]:
//! - the live nodes, and the dead ones (known, key absent);
//! - the fences owed: every node whose incarnation we knew and that is not live now, fenced once
//!   per incarnation. The shards get a view without a dead node only once every fence owed is
//!   written ([`Liveness::view_after`]), so none of them takes a conversation whose old owner
//!   might still commit (paused, or cut off from Redis alone): its next commit finds the fence;
//! - `repair`: the dead nodes to remove from the directory, when we are the repairer, the lowest
//!   live id (one repairer, and a new one as soon as it dies).

use std::collections::{BTreeMap, BTreeSet};

/// What writing our liveness key found (`SET … GET`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyWritten {
    /// We were taken for dead and rejoined as a new incarnation.
    pub rejoined: bool,
    /// Our part of the directory must be rewritten whole: our key was missing.
    pub rewrite: bool,
}

/// One refresh's read of the nodes: every node ever seen (our own id included) and its
/// liveness value now, None when absent.
#[derive(Clone, Debug, Default)]
pub struct Refreshed {
    pub nodes: Vec<(usize, Option<String>)>,
}

/// What to do after one refresh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The nodes whose liveness key is present, in id order.
    pub live: Vec<usize>,
    /// (node, incarnation) to fence in the store before any shard may take that node's
    /// conversations.
    pub fence: Vec<(usize, u64)>,
    /// Dead nodes to remove from the directory (we are the repairer).
    pub repair: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Liveness {
    me: usize,
    incarnation: u64,
    /// Whether our key was written once: a missing key after that means it expired.
    registered: bool,
    /// Other nodes' incarnations, as their keys last said.
    incs: BTreeMap<usize, u64>,
    /// Fences written (or found written): (node, incarnation).
    fenced: BTreeSet<(usize, u64)>,
    /// The live nodes last told to the shards.
    view: Option<Vec<usize>>,
}

/// The incarnation of a value written by [`value`].
pub fn incarnation_of(value: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(value).ok()?.get("inc")?.as_u64()
}

/// The liveness key's value: `base` (a JSON object's fields without the closing brace: where
/// clients connect, the process) and the incarnation.
pub fn value(base: &str, incarnation: u64) -> String {
    format!("{base},\"inc\":{incarnation}}}")
}

/// Whether `previous`, what our liveness key held before our write, was written by another
/// process: two nodes were given the same id.
pub fn written_by_another(base: &str, previous: Option<&str>) -> bool {
    previous.is_some_and(|v| !v.starts_with(base))
}

impl Liveness {
    /// A node starting with its highest fence so far (read from the store before joining) at
    /// `now_ms`: its incarnation is above the fence, and above every earlier incarnation as long
    /// as clocks move forward (a restart within the same millisecond is above the fence anyway).
    pub fn new(me: usize, fence: u64, now_ms: u64) -> Liveness {
        Liveness { me, incarnation: now_ms.max(fence + 1), registered: false, incs: BTreeMap::new(), fenced: BTreeSet::new(), view: None }
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether this node's liveness key was written at least once.
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// The live nodes last told to the shards.
    pub fn view(&self) -> Option<&[usize]> {
        self.view.as_deref()
    }

    /// What the store says of our own fence, read each refresh: fenced at or above our
    /// incarnation (we were taken for dead while Redis said nothing, say paused) means rejoin.
    pub fn own_fence(&mut self, fence: u64, now_ms: u64) -> bool {
        if fence < self.incarnation {
            return false;
        }
        self.rejoin(fence, now_ms);
        true
    }

    fn rejoin(&mut self, fence: u64, now_ms: u64) {
        let old = self.incarnation;
        self.incarnation = now_ms.max(fence + 1).max(old + 1);
        debug_assert!(self.incarnation > old && self.incarnation > fence);
    }

    /// Our liveness key was written, and held `previous` before (None: it had expired, Redis
    /// lost its data, or we never wrote it). Decided at once, before anything else of the
    /// refresh is read: a refresh cut short later must not lose a rejoin.
    pub fn wrote_key(&mut self, previous: Option<&str>, now_ms: u64) -> KeyWritten {
        let mut w = KeyWritten::default();
        if previous.is_none() {
            // The others may have taken us for dead.
            if self.registered {
                self.rejoin(0, now_ms);
                w.rejoined = true;
            }
            w.rewrite = true;
        }
        self.registered = true;
        w
    }

    /// Decides what one refresh's read of the nodes means.
    pub fn refreshed(&mut self, r: Refreshed) -> Plan {
        let mut plan = Plan { live: r.nodes.iter().filter(|(_, v)| v.is_some()).map(|(n, _)| *n).collect(), ..Plan::default() };
        plan.live.sort_unstable();
        plan.live.dedup();
        for (n, v) in &r.nodes {
            if let Some(inc) = v.as_deref().and_then(incarnation_of) {
                self.incs.insert(*n, inc);
            }
        }
        // Dead: every node we knew an incarnation of that is not live now, whether its key
        // expired or a repairer already removed it from the set of nodes.
        for (&n, &inc) in &self.incs {
            if n != self.me && !plan.live.contains(&n) && !self.fenced.contains(&(n, inc)) {
                plan.fence.push((n, inc));
            }
        }
        if plan.live.first() == Some(&self.me) {
            plan.repair = r.nodes.iter().filter(|(n, v)| v.is_none() && *n != self.me).map(|(n, _)| *n).collect();
        }
        plan
    }

    /// A fence of the plan is in the store.
    pub fn fence_written(&mut self, node: usize, incarnation: u64) {
        self.fenced.insert((node, incarnation));
    }

    /// The view to tell the shards after `plan`'s fences: its live nodes once every fence owed
    /// is written, else the last view (a dead node's conversations stay put until it is fenced).
    /// Told every refresh, not only on change: a shard that found itself fenced waits for the
    /// next incarnation, and a lost message must not leave a shard without a view.
    pub fn view_after(&self, plan: &Plan) -> Option<Vec<usize>> {
        let fenced_all = plan.fence.iter().all(|f| self.fenced.contains(f));
        if fenced_all {
            Some(plan.live.clone())
        } else {
            self.view.clone()
        }
    }

    /// The shards were told `view`.
    pub fn view_told(&mut self, view: Vec<usize>) {
        self.view = Some(view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: usize, inc: Option<u64>) -> (usize, Option<String>) {
        (n, inc.map(|i| value(&format!("{{\"listen\":\"n{n}\""), i)))
    }

    #[test]
    fn a_dead_node_leaves_the_view_only_once_its_incarnation_is_fenced() {
        let mut l = Liveness::new(1, 0, 1_000);
        assert_eq!(l.wrote_key(None, 1_000), KeyWritten { rejoined: false, rewrite: true });
        let first = l.refreshed(Refreshed { nodes: vec![node(1, Some(1_000)), node(2, Some(7))] });
        assert_eq!(first.live, vec![1, 2]);
        assert!(first.fence.is_empty());
        l.view_told(l.view_after(&first).unwrap());
        let dead = l.refreshed(Refreshed { nodes: vec![node(1, Some(1_000)), node(2, None)] });
        assert_eq!(dead.fence, vec![(2, 7)], "node 2's last incarnation is owed a fence");
        assert_eq!(dead.repair, vec![2], "the lowest live id repairs");
        assert_eq!(l.view_after(&dead).as_deref(), Some(&[1, 2][..]), "no view without node 2 before its fence");
        l.fence_written(2, 7);
        assert_eq!(l.view_after(&dead).as_deref(), Some(&[1][..]));
        // Fenced once per incarnation; node 2 back as a new one is live again, and fenced anew
        // when it dies again.
        let again = l.refreshed(Refreshed { nodes: vec![node(1, Some(1_000)), node(2, None)] });
        assert!(again.fence.is_empty());
        let back = l.refreshed(Refreshed { nodes: vec![node(1, Some(1_000)), node(2, Some(9))] });
        assert_eq!(back.live, vec![1, 2]);
        let gone = l.refreshed(Refreshed { nodes: vec![node(1, Some(1_000))] });
        assert_eq!(gone.fence, vec![(2, 9)], "a node removed from the set of nodes is dead too");
    }

    #[test]
    fn only_the_lowest_live_node_repairs() {
        let mut l = Liveness::new(2, 0, 1_000);
        let p = l.refreshed(Refreshed { nodes: vec![node(1, Some(5)), node(2, Some(1_000)), node(3, None)] });
        assert!(p.repair.is_empty(), "node 1 is live and repairs");
        let p = l.refreshed(Refreshed { nodes: vec![node(1, None), node(2, Some(1_000)), node(3, None)] });
        assert_eq!(p.repair, vec![1, 3]);
    }

    #[test]
    fn a_node_taken_for_dead_rejoins_above_its_fence_and_every_earlier_incarnation() {
        let mut l = Liveness::new(1, 50_000, 1_000);
        assert_eq!(l.incarnation(), 50_001, "a start is above the fence even with a clock behind it");
        assert!(!l.wrote_key(None, 1_000).rejoined, "the first write finds no key: that is no rejoin");
        assert_eq!(l.wrote_key(Some("ours"), 1_200), KeyWritten::default());
        // Our key expired (paused past its TTL): rejoin, rewrite.
        assert_eq!(l.wrote_key(None, 1_500), KeyWritten { rejoined: true, rewrite: true });
        assert!(l.incarnation() > 50_001);
        // The others fenced us meanwhile: the fence read says so.
        let inc = l.incarnation();
        assert!(!l.own_fence(inc - 1, 2_000));
        assert!(l.own_fence(inc, 2_000));
        assert!(l.incarnation() > inc);
    }

    #[test]
    fn a_value_written_by_another_process_is_told_apart() {
        let base = "{\"listen\":\"a\",\"pid\":1";
        assert_eq!(incarnation_of(&value(base, 42)), Some(42));
        assert!(!written_by_another(base, Some(&value(base, 42))));
        assert!(written_by_another(base, Some(&value("{\"listen\":\"a\",\"pid\":2", 42))));
        assert!(!written_by_another(base, None));
    }
}
