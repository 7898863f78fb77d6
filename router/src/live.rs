//! The live table: the compiled [`RouterTable`] plus what the request path needs beside it
//! (parsed certificates, round-robin cursors, passive health cells, canary counters). Built
//! whole off the request path and swapped in with one pointer store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use prometheus::{Histogram, IntCounter};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use wharf_config::RouterTable;
use wharf_config::router_table::Backend;

use crate::canary::CanaryStats;
use crate::tls::CertStore;

/// A config the router refused; the previous one keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config rejected: {}", .reasons.join("; "))]
pub struct Rejected {
    pub reasons: Vec<String>,
}

#[derive(Debug)]
pub struct Live {
    pub table: RouterTable,
    /// Swap counter of this router (1 for the first table).
    pub version: u64,
    pub apps: Vec<AppLive>,
    pub certs: CertStore,
    /// Passive health by dyno address, shared with the tables before and after this one.
    health: HashMap<SocketAddr, Arc<AtomicU64>>,
}

#[derive(Debug)]
pub struct AppLive {
    pub stable: Pool,
    pub canary: Option<CanaryLive>,
    /// Metric handles, resolved on first use so the request path skips the label lookup.
    pub requests: [OnceLock<IntCounter>; 6],
    pub duration: OnceLock<Histogram>,
}

impl AppLive {
    /// The pool serving `side` (stable when the app has no canary).
    pub fn pool(&self, side: Option<crate::canary::Side>) -> &Pool {
        match (side, &self.canary) {
            (Some(crate::canary::Side::Canary), Some(c)) => &c.pool,
            _ => &self.stable,
        }
    }
}

#[derive(Debug)]
pub struct CanaryLive {
    pub pool: Pool,
    /// Current weight (0–100); the abort check drops it to 0 at once.
    pub weight: AtomicU32,
    pub counter: AtomicU64,
    pub stats: Arc<CanaryStats>,
}

/// Web dynos of one side of one app, picked round-robin.
#[derive(Debug)]
pub struct Pool {
    pub backends: Vec<BackendLive>,
    next: AtomicUsize,
}

#[derive(Debug)]
pub struct BackendLive {
    pub address: SocketAddr,
    pub process: String,
    pub release: u32,
    /// Unix ms until which this dyno is skipped (0: healthy).
    down_until: Arc<AtomicU64>,
}

impl BackendLive {
    pub fn is_up(&self, now_ms: u64) -> bool {
        self.down_until.load(Ordering::Relaxed) <= now_ms
    }

    /// Skip this dyno until `until_ms` (a refused or timed-out connect).
    pub fn mark_down(&self, until_ms: u64) {
        self.down_until.store(until_ms, Ordering::Relaxed);
    }

    pub fn mark_up(&self) {
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Relaxed);
        }
    }
}

impl Pool {
    fn new(
        backends: &[Backend],
        health: &mut HashMap<SocketAddr, Arc<AtomicU64>>,
        prev: Option<&Live>,
    ) -> Pool {
        Pool {
            backends: backends
                .iter()
                .map(|b| {
                    let cell = prev
                        .and_then(|p| p.health.get(&b.address).cloned())
                        .unwrap_or_default();
                    health.insert(b.address, cell.clone());
                    BackendLive {
                        address: b.address,
                        process: b.process.clone(),
                        release: b.release,
                        down_until: cell,
                    }
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The next dyno round-robin, skipping those marked down and those in `tried`. When every
    /// untried dyno is marked down, the next untried one is returned anyway: the mark is a hint,
    /// and trying beats refusing.
    pub fn pick(&self, now_ms: u64, tried: &[SocketAddr]) -> Option<&BackendLive> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for i in 0..n {
            let b = &self.backends[(start + i) % n];
            if tried.contains(&b.address) {
                continue;
            }
            if b.is_up(now_ms) {
                return Some(b);
            }
            fallback.get_or_insert(b);
        }
        fallback
    }
}

impl Live {
    /// Build the live table for `table`; carry passive health over from `prev`.
    pub fn build(table: RouterTable, version: u64, prev: Option<&Live>) -> Result<Live, Rejected> {
        let certs =
            CertStore::build(&table.certificates).map_err(|reasons| Rejected { reasons })?;
        let mut health = HashMap::new();
        let apps = table
            .apps
            .iter()
            .map(|a| AppLive {
                stable: Pool::new(&a.web, &mut health, prev),
                canary: a.canary.as_ref().map(|c| {
                    // Keep the canary's counters and verdict while it is the same release.
                    let old = prev.and_then(|p| {
                        let i = p.table.apps.iter().position(|o| o.key == a.key)?;
                        let oc = p.apps[i].canary.as_ref()?;
                        (p.table.apps[i].canary.as_ref()?.release == c.release).then_some(oc)
                    });
                    let aborted = old.is_some_and(|o| o.stats.aborted());
                    CanaryLive {
                        pool: Pool::new(&c.backends, &mut health, prev),
                        weight: AtomicU32::new(if aborted { 0 } else { c.weight }),
                        counter: AtomicU64::new(
                            old.map_or(0, |o| o.counter.load(Ordering::Relaxed)),
                        ),
                        stats: old.map_or_else(
                            || Arc::new(CanaryStats::new(c.abort.clone())),
                            |o| o.stats.clone(),
                        ),
                    }
                }),
                requests: Default::default(),
                duration: OnceLock::new(),
            })
            .collect();
        Ok(Live {
            table,
            version,
            apps,
            certs,
            health,
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
