//! A coarse timer wheel for heartbeat timeouts: one slot per `slot_ms`, a connection sits in the
//! slot of its deadline. Activity does not touch the wheel (it only moves the connection's
//! `last_active`); when a slot comes due its entries are re-checked and either expire or move to
//! the slot of their new deadline. So a busy connection costs nothing per message and an idle one
//! costs one re-check per timeout period: no timer per connection.

use std::collections::VecDeque;

pub struct TimerWheel<K> {
    slots: VecDeque<Vec<K>>,
    slot_ms: u64,
    /// The time the front slot stands for, in ms (a multiple of `slot_ms`).
    front_ms: u64,
}

impl<K: Copy> TimerWheel<K> {
    /// A wheel that can hold deadlines up to `span_ms` ahead with `slot_ms` resolution.
    pub fn new(now_ms: u64, slot_ms: u64, span_ms: u64) -> Self {
        assert!(slot_ms > 0);
        let n = (span_ms / slot_ms + 2) as usize;
        TimerWheel { slots: (0..n).map(|_| Vec::new()).collect(), slot_ms, front_ms: now_ms - now_ms % slot_ms }
    }

    /// Files `key` under `deadline_ms`. A deadline beyond the wheel's span goes in the last slot and
    /// is re-filed when that slot comes due; one in the past goes in the front slot.
    pub fn insert(&mut self, key: K, deadline_ms: u64) {
        let idx = (deadline_ms.saturating_sub(self.front_ms) / self.slot_ms) as usize;
        let idx = idx.min(self.slots.len() - 1);
        self.slots[idx].push(key);
    }

    /// Moves time to `now_ms` and returns the keys whose slots came due. The caller checks each
    /// against its real deadline and re-inserts the ones that are still alive.
    pub fn advance(&mut self, now_ms: u64) -> Vec<K> {
        let mut due = Vec::new();
        while self.front_ms + self.slot_ms <= now_ms {
            let mut slot = self.slots.pop_front().expect("wheel has slots");
            due.append(&mut slot);
            self.slots.push_back(slot);
            self.front_ms += self.slot_ms;
        }
        due
    }

    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn fires_after_the_deadline_not_before() {
        let mut w = TimerWheel::new(0, 100, 1000);
        w.insert(1u32, 350);
        assert!(w.advance(300).is_empty());
        assert_eq!(w.advance(400), vec![1]);
        assert!(w.is_empty());
    }

    proptest! {
        /// Driving the wheel as the shard does (re-insert while alive) expires every key within
        /// one slot after its last deadline, and never before it.
        #[test]
        fn expiry_matches_a_naive_model(
            ops in proptest::collection::vec((0u32..20, 0u64..300), 1..200),
            timeout in 100u64..2000,
        ) {
            let slot = 50;
            let mut w = TimerWheel::new(0, slot, timeout);
            let mut last_active: HashMap<u32, u64> = HashMap::new();
            let mut now = 0;
            for (key, dt) in ops {
                now += dt;
                for k in w.advance(now) {
                    let deadline = last_active[&k] + timeout;
                    if deadline <= now {
                        prop_assert!(now < deadline + 2 * slot + 300, "expired late");
                        last_active.remove(&k);
                    } else {
                        w.insert(k, deadline);
                    }
                }
                // Nobody past its deadline by more than the slot and the step is still alive.
                for (k, t) in &last_active {
                    prop_assert!(now < t + timeout + 2 * slot + 300, "key {k} missed");
                }
                if last_active.insert(key, now).is_none() {
                    w.insert(key, now + timeout);
                }
            }
        }
    }
}
