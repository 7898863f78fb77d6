//! Canary traffic: an exact weighted split and the statistics that abort a bad canary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wharf_config::{AbortPolicy, SideFigures};

/// Whether request number `n` of an app goes to the canary at `weight` percent. Exact: any
/// 100 consecutive requests send exactly `weight` to the canary, spread evenly.
pub fn goes_to_canary(n: u64, weight: u32) -> bool {
    let w = u64::from(weight.min(100));
    (n + 1) * w / 100 > n * w / 100
}

/// Which side served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Stable = 0,
    Canary = 1,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Stable => "stable",
            Side::Canary => "canary",
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: [AtomicU64; 2],
    e4: [AtomicU64; 2],
    e5: [AtomicU64; 2],
}

/// Per-side figures over a sliding window of one-second buckets (lock-free), and the verdict.
#[derive(Debug)]
pub struct CanaryStats {
    policy: AbortPolicy,
    buckets: Vec<Bucket>,
    aborted: AtomicBool,
}

/// The result of an abort check that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub stable: SideFigures,
    pub canary: SideFigures,
    pub z: f64,
}

impl CanaryStats {
    pub fn new(policy: AbortPolicy) -> Self {
        let n = policy.window_secs.clamp(1, 3600) as usize;
        CanaryStats {
            policy,
            buckets: (0..n).map(|_| Bucket::default()).collect(),
            aborted: AtomicBool::new(false),
        }
    }

    pub fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }

    /// Count one finished request of `side` with `status` at `now_s` (seconds).
    pub fn record(&self, side: Side, status: u16, now_s: u64) {
        let b = &self.buckets[(now_s % self.buckets.len() as u64) as usize];
        let seen = b.second.load(Ordering::Relaxed);
        if seen != now_s
            && b.second
                .compare_exchange(seen, now_s, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            for c in b.requests.iter().chain(&b.e4).chain(&b.e5) {
                c.store(0, Ordering::Relaxed);
            }
        }
        let s = side as usize;
        b.requests[s].fetch_add(1, Ordering::Relaxed);
        if (400..500).contains(&status) {
            b.e4[s].fetch_add(1, Ordering::Relaxed);
        } else if status >= 500 {
            b.e5[s].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Figures of both sides over the window ending at `now_s`.
    pub fn figures(&self, now_s: u64) -> [SideFigures; 2] {
        let mut out = [SideFigures::default(); 2];
        let window = self.buckets.len() as u64;
        for b in &self.buckets {
            let sec = b.second.load(Ordering::Relaxed);
            if sec + window <= now_s || sec > now_s {
                continue;
            }
            for (s, f) in out.iter_mut().enumerate() {
                f.requests += b.requests[s].load(Ordering::Relaxed);
                f.errors_4xx += b.e4[s].load(Ordering::Relaxed);
                f.errors_5xx += b.e5[s].load(Ordering::Relaxed);
            }
        }
        out
    }

    /// Decide whether the canary is significantly worse; fires at most once.
    pub fn check(&self, now_s: u64) -> Option<Verdict> {
        if !self.policy.enabled || self.aborted() {
            return None;
        }
        let [stable, canary] = self.figures(now_s);
        let z = worse_z(&self.policy, stable, canary)?;
        if self
            .aborted
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            Some(Verdict { stable, canary, z })
        } else {
            None
        }
    }
}

/// One-sided two-proportion z-test of the canary's 5xx rate against stable's. `Some(z)` when
/// both sides have enough requests, z is above the threshold and the rates differ by at least
/// the minimum delta.
pub fn worse_z(policy: &AbortPolicy, stable: SideFigures, canary: SideFigures) -> Option<f64> {
    if stable.requests < policy.min_requests || canary.requests < policy.min_requests {
        return None;
    }
    let (n1, n2) = (canary.requests as f64, stable.requests as f64);
    let (x1, x2) = (canary.errors_5xx as f64, stable.errors_5xx as f64);
    let (p1, p2) = (x1 / n1, x2 / n2);
    if p1 - p2 < policy.min_rate_delta {
        return None;
    }
    let p = (x1 + x2) / (n1 + n2);
    let se = (p * (1.0 - p) * (1.0 / n1 + 1.0 / n2)).sqrt();
    let z = if se > 0.0 {
        (p1 - p2) / se
    } else {
        f64::INFINITY
    };
    (z > policy.z_threshold).then_some(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_exact() {
        for w in [0u32, 1, 10, 33, 50, 99, 100] {
            let hits = (0..10_000u64).filter(|n| goes_to_canary(*n, w)).count() as u32;
            assert_eq!(hits, w * 100, "weight {w}");
            // Any window of 100 consecutive requests holds exactly w.
            let start = 1234u64;
            let hits = (start..start + 100)
                .filter(|n| goes_to_canary(*n, w))
                .count() as u32;
            assert_eq!(hits, w, "weight {w} window");
        }
    }

    #[test]
    fn z_test() {
        let p = AbortPolicy::default();
        let f = |r, e| SideFigures {
            requests: r,
            errors_4xx: 0,
            errors_5xx: e,
        };
        assert!(worse_z(&p, f(1000, 5), f(100, 50)).is_some());
        assert!(worse_z(&p, f(1000, 5), f(100, 1)).is_none());
        // Not enough requests: no verdict however bad.
        assert!(worse_z(&p, f(1000, 5), f(10, 10)).is_none());
        // Healthy canary, similar rates.
        assert!(worse_z(&p, f(1000, 10), f(100, 1)).is_none());
    }

    #[test]
    fn window_and_single_fire() {
        let s = CanaryStats::new(AbortPolicy {
            min_requests: 10,
            ..AbortPolicy::default()
        });
        for i in 0..100 {
            s.record(Side::Stable, 200, 1000 + i % 5);
            s.record(
                Side::Canary,
                if i % 2 == 0 { 500 } else { 200 },
                1000 + i % 5,
            );
        }
        let [st, ca] = s.figures(1004);
        assert_eq!((st.requests, ca.requests, ca.errors_5xx), (100, 100, 50));
        assert!(s.check(1004).is_some());
        assert!(s.check(1004).is_none(), "fires once");
        // Long after, the window is empty.
        assert_eq!(s.figures(5000)[1].requests, 0);
    }
}
