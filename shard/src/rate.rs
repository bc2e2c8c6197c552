//! Per-connection rate limits as GCRA (the generic cell rate algorithm): a token bucket kept in
//! one number, the theoretical arrival time of the next request. Eight bytes a limit, because
//! every connection pays for every field (see `Conn`).

/// A sustained rate with a burst: `burst` requests at once, then `per_sec` a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate { per_sec: 0, burst: 0 };

    fn interval_us(self) -> u64 {
        1_000_000 / u64::from(self.per_sec.max(1))
    }
}

/// The state of one limit: when, on the monotonic clock in µs, the bucket is full again.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gcra {
    tat_us: u64,
}

impl Gcra {
    /// Takes one request at `now_ms` if `rate` allows it.
    pub fn allow(&mut self, now_ms: u64, rate: Rate) -> bool {
        if rate.per_sec == 0 {
            return true;
        }
        let now = now_ms.saturating_mul(1000);
        let interval = rate.interval_us();
        let tat = self.tat_us.max(now);
        // Allowed while the bucket, after this request, holds at most `burst` requests' worth.
        if tat + interval - now > interval * u64::from(rate.burst.max(1)) {
            return false;
        }
        self.tat_us = tat + interval;
        true
    }

    /// Whether a full burst would be allowed at `now_ms` (the bucket is full): such a limit can be
    /// forgotten and recreated without changing anything.
    pub fn is_full(self, now_ms: u64) -> bool {
        self.tat_us <= now_ms.saturating_mul(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let rate = Rate { per_sec: 10, burst: 5 };
        let mut g = Gcra::default();
        let now = 1_000_000;
        assert_eq!((0..8).filter(|_| g.allow(now, rate)).count(), 5, "the burst");
        assert!(!g.allow(now + 50, rate), "nothing back after 50 ms at 10/s");
        assert!(g.allow(now + 100, rate), "one back every 100 ms");
        assert!(!g.allow(now + 100, rate));
        // A quiet second refills the burst, and no more.
        assert_eq!((0..8).filter(|_| g.allow(now + 10_000, rate)).count(), 5);
        assert!((0..1000).all(|_| Gcra::default().allow(now, Rate::UNLIMITED)));
        assert!(!g.is_full(now + 10_000) && g.is_full(now + 10_500), "full once the burst has refilled");
    }

    proptest! {
        /// Over any window, what is allowed never exceeds burst + rate × window.
        #[test]
        fn never_more_than_burst_plus_rate(per_sec in 1u32..2000, burst in 1u32..100, gaps in proptest::collection::vec(0u64..50, 1..500)) {
            let rate = Rate { per_sec, burst };
            let mut g = Gcra::default();
            let mut now = 10_000u64;
            let start = now;
            let mut allowed = 0u64;
            for gap in gaps {
                now += gap;
                if g.allow(now, rate) {
                    allowed += 1;
                }
            }
            let window_ms = now - start;
            prop_assert!(allowed <= u64::from(burst) + u64::from(per_sec) * window_ms / 1000 + 1, "{allowed} in {window_ms} ms");
        }
    }
}
