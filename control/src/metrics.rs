//! The control plane's Prometheus metrics (registry prefix `wharf_control`), served at
//! `GET /metrics` in the text exposition format.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Audit entries recorded.
    pub audit_entries: IntCounter,
    /// Changes made whose audit entry could not be stored.
    pub audit_failures: IntCounter,
    /// Promotions by outcome: `succeeded`, `failed`, `refused` (a check not passing), `resumed`.
    pub promotions: IntCounterVec,
    /// Canaries by outcome: `started`, `promoted`, `aborted`.
    pub canaries: IntCounterVec,
    /// Canaries running now.
    pub canaries_running: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("wharf_control".into()), None).expect("a valid prefix");
        let m = Metrics {
            audit_entries: IntCounter::new("audit_entries_total", "Audit entries recorded")
                .expect("metric"),
            audit_failures: IntCounter::new(
                "audit_failures_total",
                "Changes whose audit entry could not be stored",
            )
            .expect("metric"),
            promotions: IntCounterVec::new(
                Opts::new("promotions_total", "Pipeline promotions by outcome"),
                &["outcome"],
            )
            .expect("metric"),
            canaries: IntCounterVec::new(
                Opts::new("canaries_total", "Canary releases by outcome"),
                &["outcome"],
            )
            .expect("metric"),
            canaries_running: IntGauge::new("canaries_running", "Canary releases running")
                .expect("metric"),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.audit_entries.clone()))
            .expect("register");
        r.register(Box::new(m.audit_failures.clone()))
            .expect("register");
        r.register(Box::new(m.promotions.clone()))
            .expect("register");
        r.register(Box::new(m.canaries.clone())).expect("register");
        r.register(Box::new(m.canaries_running.clone()))
            .expect("register");
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
