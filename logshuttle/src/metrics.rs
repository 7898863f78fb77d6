//! Prometheus metrics of the shuttle, registered in a registry the caller gives or one of ours.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric the shuttle keeps. Cheap to clone (each field is a handle).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Lines accepted per app, from any ingest path.
    pub ingest_lines: IntCounterVec,
    /// Ingest rejects by path (`http`, `syslog-tcp`, `syslog-udp`, `kafka`) and reason.
    pub ingest_errors: IntCounterVec,
    /// Lines shed at the sink because the ingest queue was full, per app.
    pub sink_dropped: IntCounterVec,
    /// Lines for apps the plan does not know.
    pub unrouted: IntCounter,
    pub drain_delivered: IntCounterVec,
    pub drain_retried: IntCounterVec,
    pub drain_dropped: IntCounterVec,
    pub drain_buffer: IntGaugeVec,
    pub drain_connected: IntGaugeVec,
    /// 1 while a drain is declared stalled (no progress with a full buffer) and sheds.
    pub drain_stalled: IntGaugeVec,
    /// Connections a stream drain lost or could not open (refused, TLS handshake failed, reset
    /// or closed by the receiver, write failed); each is followed by a reconnect.
    pub drain_reconnects: IntCounterVec,
    /// Lines accepted by network ingest that the bus did not take (produce failed), per path.
    pub ingest_lost: IntCounterVec,
    /// Bytes of frames syslog TCP connections have handed to the bus that it has not yet made
    /// durable: what a crash of the shuttle would lose (each connection keeps at most
    /// `Options::syslog_window_bytes` of it, plus one hand-over).
    pub syslog_inflight_bytes: IntGauge,
    /// Tail sessions cut loose because their reader fell behind.
    pub tail_cut: IntCounter,
    pub tail_sessions: IntGauge,
    pub kafka_lag: IntGaugeVec,
    /// Kafka operations the broker (or the client) failed, per `op`: produce, consume, commit.
    pub kafka_errors: IntCounterVec,
}

impl Metrics {
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        let drain = ["app", "drain"];
        let m = Metrics {
            ingest_lines: IntCounterVec::new(
                Opts::new(
                    "wharf_logshuttle_ingest_lines_total",
                    "Log lines accepted, per app",
                ),
                &["app"],
            )?,
            ingest_errors: IntCounterVec::new(
                Opts::new(
                    "wharf_logshuttle_ingest_errors_total",
                    "Ingest rejects by path and reason",
                ),
                &["path", "reason"],
            )?,
            sink_dropped: IntCounterVec::new(
                Opts::new(
                    "wharf_logshuttle_sink_dropped_total",
                    "Lines shed at the in-process sink (queue full), per app",
                ),
                &["app"],
            )?,
            unrouted: IntCounter::new("wharf_logshuttle_unrouted_total", "Lines for unknown apps")?,
            drain_delivered: IntCounterVec::new(
                Opts::new(
                    "wharf_logshuttle_drain_delivered_total",
                    "Lines delivered, per drain",
                ),
                &drain,
            )?,
            drain_retried: IntCounterVec::new(
                Opts::new(
                    "wharf_logshuttle_drain_retried_total",
                    "Lines sent again after a failure, per drain",
                ),
                &drain,
            )?,
            drain_dropped: IntCounterVec::new(
                Opts::new(
                    "wharf_logshuttle_drain_dropped_total",
                    "Lines dropped, per drain",
                ),
                &drain,
            )?,
            drain_buffer: IntGaugeVec::new(
                Opts::new(
                    "wharf_logshuttle_drain_buffer_lines",
                    "Lines waiting, per drain",
                ),
                &drain,
            )?,
            drain_connected: IntGaugeVec::new(
                Opts::new(
                    "wharf_logshuttle_drain_connected",
                    "1 when the drain's connection is up",
                ),
                &drain,
            )?,
            drain_stalled: IntGaugeVec::new(
                Opts::new(
                    "wharf_logshuttle_drain_stalled",
                    "1 while the drain is declared stalled and sheds its oldest lines",
                ),
                &drain,
            )?,
            drain_reconnects: IntCounterVec::new(
                Opts::new(
                    "wharf_logshuttle_drain_reconnects_total",
                    "Drain connections lost or not opened (a reconnect follows), per drain",
                ),
                &drain,
            )?,
            ingest_lost: IntCounterVec::new(
                Opts::new(
                    "wharf_logshuttle_ingest_lost_total",
                    "Lines taken by syslog ingest that the bus then failed to store, per path",
                ),
                &["path"],
            )?,
            syslog_inflight_bytes: IntGauge::new(
                "wharf_logshuttle_syslog_inflight_bytes",
                "Bytes of syslog TCP frames handed to the bus and not yet durable",
            )?,
            tail_cut: IntCounter::new(
                "wharf_logshuttle_tail_cut_total",
                "Tail sessions cut loose (L11)",
            )?,
            tail_sessions: IntGauge::new("wharf_logshuttle_tail_sessions", "Open tail sessions")?,
            kafka_lag: IntGaugeVec::new(
                Opts::new(
                    "wharf_logshuttle_kafka_consumer_lag",
                    "Kafka consumer lag, per partition",
                ),
                &["partition"],
            )?,
            kafka_errors: IntCounterVec::new(
                Opts::new(
                    "wharf_logshuttle_kafka_errors_total",
                    "Kafka operations that failed, per operation (produce, consume, commit)",
                ),
                &["op"],
            )?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.ingest_lines.clone()))?;
        r.register(Box::new(m.ingest_errors.clone()))?;
        r.register(Box::new(m.sink_dropped.clone()))?;
        r.register(Box::new(m.unrouted.clone()))?;
        r.register(Box::new(m.drain_delivered.clone()))?;
        r.register(Box::new(m.drain_retried.clone()))?;
        r.register(Box::new(m.drain_dropped.clone()))?;
        r.register(Box::new(m.drain_buffer.clone()))?;
        r.register(Box::new(m.drain_connected.clone()))?;
        r.register(Box::new(m.drain_stalled.clone()))?;
        r.register(Box::new(m.drain_reconnects.clone()))?;
        r.register(Box::new(m.ingest_lost.clone()))?;
        r.register(Box::new(m.syslog_inflight_bytes.clone()))?;
        r.register(Box::new(m.tail_cut.clone()))?;
        r.register(Box::new(m.tail_sessions.clone()))?;
        r.register(Box::new(m.kafka_lag.clone()))?;
        r.register(Box::new(m.kafka_errors.clone()))?;
        Ok(m)
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    pub(crate) fn for_drain(&self, app: &str, drain: &str) -> DrainMetrics {
        let l = [app, drain];
        DrainMetrics {
            delivered: self.drain_delivered.with_label_values(&l),
            retried: self.drain_retried.with_label_values(&l),
            dropped: self.drain_dropped.with_label_values(&l),
            buffer: self.drain_buffer.with_label_values(&l),
            connected: self.drain_connected.with_label_values(&l),
            stalled: self.drain_stalled.with_label_values(&l),
            reconnects: self.drain_reconnects.with_label_values(&l),
        }
    }

    pub(crate) fn forget_drain(&self, app: &str, drain: &str) {
        let l = [app, drain];
        let _ = self.drain_buffer.remove_label_values(&l);
        let _ = self.drain_connected.remove_label_values(&l);
        let _ = self.drain_stalled.remove_label_values(&l);
    }
}

/// One drain's metric handles, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct DrainMetrics {
    pub delivered: IntCounter,
    pub retried: IntCounter,
    pub dropped: IntCounter,
    pub buffer: IntGauge,
    pub connected: IntGauge,
    pub stalled: IntGauge,
    pub reconnects: IntCounter,
}
