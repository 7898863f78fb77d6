//! Limits that protect the platform from one client or one app: open connections in total and
//! per client IP, request rates per IP and per app (token buckets), requests in flight per app.
//! The settings are read from the live table on every check, so a swap changes them at once;
//! the counters live here, across swaps. Every refusal is counted in
//! `wharf_router_limited_total{limit}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use wharf_config::{ClientLimits, Rate};

/// Buckets kept at most per map; past it, buckets that refilled completely are forgotten (they
/// hold no state a new bucket would not).
const MAX_BUCKETS: usize = 100_000;

/// Which limit refused something (the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    ConnectionsPerIp,
    RatePerIp,
    AppRate,
    AppConcurrency,
    /// A TLS handshake or a request head not done within `client_header_timeout_ms`.
    HeaderTimeout,
    /// A request body slower than `client_body_timeout_ms` and `client_body_min_rate` allow.
    BodyTimeout,
    /// An h2 connection closed for resetting streams or sending SETTINGS/PING too fast.
    H2Flood,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::RatePerIp => "rate_per_ip",
            Limit::AppRate => "app_rate",
            Limit::AppConcurrency => "app_concurrency",
            Limit::HeaderTimeout => "header_timeout",
            Limit::BodyTimeout => "body_timeout",
            Limit::H2Flood => "h2_flood",
        }
    }
}

/// A token bucket (its rate is passed to each call).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * f64::from(rate.per_sec)).min(f64::from(rate.burst));
        self.at = now;
    }

    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token buckets by key, bounded in number.
#[derive(Debug)]
struct Buckets<K>(Mutex<HashMap<K, Bucket>>);

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new() -> Self {
        Buckets(Mutex::new(HashMap::new()))
    }

    fn take(&self, key: &K, rate: Rate) -> bool {
        let now = Instant::now();
        let mut map = self.0.lock();
        if let Some(b) = map.get_mut(key) {
            return b.take(rate, now);
        }
        if map.len() >= MAX_BUCKETS {
            map.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < f64::from(rate.burst)
            });
        }
        let mut b = Bucket::full(rate, now);
        let ok = b.take(rate, now);
        map.insert(key.clone(), b);
        ok
    }
}

/// The router's limit state, shared by every listener.
#[derive(Debug)]
pub struct Limiter {
    open: AtomicU64,
    /// Connections whose slot was given back (every one of their counts undone).
    closed: AtomicU64,
    by_ip: Mutex<HashMap<IpAddr, u32>>,
    ip_rates: Buckets<IpAddr>,
    app_rates: Buckets<String>,
    app_in_flight: Mutex<HashMap<String, u32>>,
    limited: IntCounterVec,
    connections: IntGauge,
    accepted: IntCounter,
}

impl Limiter {
    pub fn new(registry: &Registry) -> Arc<Limiter> {
        let limited = IntCounterVec::new(
            Opts::new(
                "limited_total",
                "Connections closed and requests refused by a limit",
            ),
            &["limit"],
        )
        .expect("metric");
        let connections =
            IntGauge::new("client_connections", "Client connections open").expect("metric");
        let accepted = IntCounter::new(
            "client_connections_total",
            "Client connections accepted (those then refused by a limit included)",
        )
        .expect("metric");
        let _ = registry.register(Box::new(limited.clone()));
        let _ = registry.register(Box::new(connections.clone()));
        let _ = registry.register(Box::new(accepted.clone()));
        Arc::new(Limiter {
            open: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            by_ip: Mutex::new(HashMap::new()),
            ip_rates: Buckets::new(),
            app_rates: Buckets::new(),
            app_in_flight: Mutex::new(HashMap::new()),
            limited,
            connections,
            accepted,
        })
    }

    /// Count a refusal by `limit`.
    pub fn refused(&self, limit: Limit) -> Limit {
        self.limited.with_label_values(&[limit.as_str()]).inc();
        limit
    }

    /// Admit a new client connection, or say which limit it is over (close it then). The
    /// guard gives the slot back when dropped.
    pub fn connection(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        limits: &ClientLimits,
    ) -> Result<ConnectionGuard, Limit> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let mut guard = ConnectionGuard {
            limiter: self.clone(),
            ip: None,
        };
        self.connections.inc();
        self.accepted.inc();
        if limits.max_connections > 0 && open > u64::from(limits.max_connections) {
            return Err(self.refused(Limit::Connections));
        }
        if let (Some(ip), true) = (ip, limits.max_connections_per_ip > 0) {
            let mut by_ip = self.by_ip.lock();
            let n = by_ip.entry(ip).or_insert(0);
            if *n >= limits.max_connections_per_ip {
                drop(by_ip);
                return Err(self.refused(Limit::ConnectionsPerIp));
            }
            *n += 1;
            guard.ip = Some(ip);
        }
        Ok(guard)
    }

    /// One request from `ip`: within the per-IP rate?
    pub fn request_from(&self, ip: IpAddr, limits: &ClientLimits) -> Result<(), Limit> {
        match Rate::new(limits.requests_per_sec_per_ip, limits.burst_per_ip) {
            Some(rate) if !self.ip_rates.take(&ip, rate) => Err(self.refused(Limit::RatePerIp)),
            _ => Ok(()),
        }
    }

    /// One request to app `key`: within its rate and its requests in flight? The guard ends
    /// the request's slot when dropped.
    pub fn request_to(
        self: &Arc<Self>,
        key: &str,
        limits: &wharf_config::router_table::AppRouterLimits,
    ) -> Result<Option<InFlightGuard>, Limit> {
        if let Some(rate) = limits.rate
            && !self.app_rates.take(&key.to_owned(), rate)
        {
            return Err(self.refused(Limit::AppRate));
        }
        if limits.max_concurrent_requests == 0 {
            return Ok(None);
        }
        let mut map = self.app_in_flight.lock();
        let n = map.entry(key.to_owned()).or_insert(0);
        if *n >= limits.max_concurrent_requests {
            drop(map);
            return Err(self.refused(Limit::AppConcurrency));
        }
        *n += 1;
        Ok(Some(InFlightGuard {
            limiter: self.clone(),
            app: key.to_owned(),
        }))
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Client connections closed so far, each with its slot given back.
    pub fn closed_connections(&self) -> u64 {
        self.closed.load(Ordering::Acquire)
    }
}

/// A client connection's slot.
#[derive(Debug)]
pub struct ConnectionGuard {
    limiter: Arc<Limiter>,
    ip: Option<IpAddr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.limiter.open.fetch_sub(1, Ordering::AcqRel);
        self.limiter.connections.dec();
        if let Some(ip) = self.ip {
            let mut by_ip = self.limiter.by_ip.lock();
            if let Some(n) = by_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
        self.limiter.closed.fetch_add(1, Ordering::AcqRel);
    }
}

/// A request's slot among its app's requests in flight.
#[derive(Debug)]
pub struct InFlightGuard {
    limiter: Arc<Limiter>,
    app: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut map = self.limiter.app_in_flight.lock();
        if let Some(n) = map.get_mut(&self.app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.app);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let rate = Rate::new(2, 5).unwrap();
        let b = Buckets::new();
        let ok = (0..8).filter(|_| b.take(&1u8, rate)).count();
        // The burst, plus at most what refilled while the loop ran.
        assert!((5..=6).contains(&ok), "{ok}");
    }

    #[test]
    fn connection_slots_come_back() {
        let l = Limiter::new(&Registry::new());
        let limits = ClientLimits {
            max_connections: 2,
            max_connections_per_ip: 1,
            ..ClientLimits::default()
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.connection(Some(ip), &limits).unwrap();
        assert_eq!(
            l.connection(Some(ip), &limits).unwrap_err(),
            Limit::ConnectionsPerIp
        );
        let b = l.connection(None, &limits).unwrap();
        assert_eq!(l.connection(None, &limits).unwrap_err(), Limit::Connections);
        drop((a, b));
        assert_eq!(l.open_connections(), 0);
        assert!(l.connection(Some(ip), &limits).is_ok());
    }
}
