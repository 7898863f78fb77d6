//! The router's Prometheus metrics, in a registry of its own (several routers can live in one
//! process, as in tests).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub connect: Histogram,
    pub in_flight: IntGauge,
    pub tls_handshakes: IntCounterVec,
    pub errors: IntCounterVec,
    pub config_version: IntGauge,
    pub config_revision: IntGauge,
    pub swaps: IntCounter,
    pub rejected: IntCounter,
    pub compile_seconds: Histogram,
    pub canary_requests: IntCounterVec,
    pub canary_aborts: IntCounterVec,
    pub log_lines_dropped: IntCounter,
    pub dynos_marked_down: IntCounter,
    pub direct_requests: IntCounter,
    pub jwks_fetches: IntCounterVec,
    pub jwt_verdicts: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("wharf_router".into()), None).expect("registry");
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("requests_total", "Requests by app and status class"),
                &["app", "class"],
            )
            .unwrap(),
            duration: HistogramVec::new(
                HistogramOpts::new("request_duration_seconds", "Time to last byte, by app")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["app"],
            )
            .unwrap(),
            connect: Histogram::with_opts(
                HistogramOpts::new("upstream_connect_seconds", "Time to connect to a dyno")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap(),
            in_flight: IntGauge::new("requests_in_flight", "Requests being served").unwrap(),
            tls_handshakes: IntCounterVec::new(
                Opts::new(
                    "tls_handshakes_total",
                    "Completed TLS handshakes by version",
                ),
                &["version"],
            )
            .unwrap(),
            errors: IntCounterVec::new(
                Opts::new("errors_total", "Router errors by Heroku code"),
                &["code"],
            )
            .unwrap(),
            config_version: IntGauge::new("config_version", "Swap counter of the live table")
                .unwrap(),
            config_revision: IntGauge::new(
                "config_revision",
                "Control-plane revision of the live table",
            )
            .unwrap(),
            swaps: IntCounter::new("config_swaps_total", "Tables swapped in").unwrap(),
            rejected: IntCounter::new("config_rejected_total", "Tables refused").unwrap(),
            compile_seconds: Histogram::with_opts(
                HistogramOpts::new("config_compile_seconds", "Validate + compile + build time")
                    .buckets(vec![0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )
            .unwrap(),
            canary_requests: IntCounterVec::new(
                Opts::new(
                    "canary_requests_total",
                    "Requests of apps with a canary, by side and class",
                ),
                &["app", "side", "class"],
            )
            .unwrap(),
            canary_aborts: IntCounterVec::new(
                Opts::new("canary_aborts_total", "Canaries aborted by the router"),
                &["app"],
            )
            .unwrap(),
            log_lines_dropped: IntCounter::new(
                "log_lines_dropped_total",
                "Router log lines the sink could not take",
            )
            .unwrap(),
            dynos_marked_down: IntCounter::new(
                "dynos_marked_down_total",
                "Connect failures that took a dyno out for the back-off",
            )
            .unwrap(),
            direct_requests: IntCounter::new(
                "direct_requests_total",
                "Requests served by the router's own HTTP/1 path (the others by pingora's)",
            )
            .unwrap(),
            jwks_fetches: IntCounterVec::new(
                Opts::new("jwks_fetches_total", "JWKS document fetches by result"),
                &["result"],
            )
            .unwrap(),
            jwt_verdicts: IntCounterVec::new(
                Opts::new("jwt_verdicts_total", "JWT checks by verdict"),
                &["verdict"],
            )
            .unwrap(),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.requests.clone())).unwrap();
        r.register(Box::new(m.duration.clone())).unwrap();
        r.register(Box::new(m.connect.clone())).unwrap();
        r.register(Box::new(m.in_flight.clone())).unwrap();
        r.register(Box::new(m.tls_handshakes.clone())).unwrap();
        r.register(Box::new(m.errors.clone())).unwrap();
        r.register(Box::new(m.config_version.clone())).unwrap();
        r.register(Box::new(m.config_revision.clone())).unwrap();
        r.register(Box::new(m.swaps.clone())).unwrap();
        r.register(Box::new(m.rejected.clone())).unwrap();
        r.register(Box::new(m.compile_seconds.clone())).unwrap();
        r.register(Box::new(m.canary_requests.clone())).unwrap();
        r.register(Box::new(m.canary_aborts.clone())).unwrap();
        r.register(Box::new(m.log_lines_dropped.clone())).unwrap();
        r.register(Box::new(m.dynos_marked_down.clone())).unwrap();
        r.register(Box::new(m.direct_requests.clone())).unwrap();
        r.register(Box::new(m.jwks_fetches.clone())).unwrap();
        r.register(Box::new(m.jwt_verdicts.clone())).unwrap();
        m
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `2xx`, `4xx`, … for a status code.
pub fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Index of [`class`] in a per-app array of six counters.
pub fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}
