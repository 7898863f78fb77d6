//! The shuttle: a sink and ingest paths feed the publisher, which puts lines on the [`Bus`]; the
//! dispatcher takes them off in order per app and hands each to the app's drains (bounded
//! buffers, one task each) and to the app's stream (history and tails). Reload is a diff: only
//! drains whose target changed are restarted.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wharf_config::shuttle_plan::DrainTarget;
use wharf_config::{DrainKind, LineSink, LogLine, ShuttlePlan};

use crate::bus::{Bus, InProcessBus};
use crate::drain::{self, DrainCtx, DrainQueue};
use crate::kafka::{KafkaBus, KafkaOptions};
use crate::metrics::Metrics;
use crate::stream::{AppStream, Filter, Tail};
use crate::{Error, wire};

/// Which bus carries lines from ingest to drains.
#[derive(Debug, Clone, Default)]
pub enum BusChoice {
    /// Bounded channels in this process (the embedded default): no durability.
    #[default]
    InProcess,
    /// Kafka: durable, at-least-once across restarts.
    Kafka(KafkaOptions),
}

/// Process-level settings (platform-wide log settings come with the [`ShuttlePlan`]).
#[derive(Debug, Clone)]
pub struct Options {
    pub bus: BusChoice,
    /// Lines the sink queues before it sheds (counted, then an L10 notice in the app's stream).
    pub ingest_queue: usize,
    /// Lines a tail reader may fall behind before it is cut loose (L11).
    pub tail_buffer: usize,
    /// Largest UDP datagram a drain sends; longer lines are cut and marked ` [truncated]`.
    pub udp_max_bytes: usize,
    /// CA bundle (PEM) for TLS drains instead of the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// A ready TLS client config; wins over `ca_file`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Reconnect and retry back-off: first delay, doubling to the cap, jittered.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    /// A drain whose buffer is full holds the bus back (it is only slow) until it has made no
    /// progress for this long; then it is declared stalled and sheds its oldest lines (L10)
    /// until it catches up, so that it slows nobody else.
    pub drain_stall_timeout: Duration,
    pub http_timeout: Duration,
    /// HTTPS batches: at most this many lines, this many bytes, after waiting this long.
    pub http_batch_lines: usize,
    pub http_batch_bytes: usize,
    pub http_linger: Duration,
    /// `POST /logs` waits this long for the bus to acknowledge a request's lines (Kafka: the
    /// broker), then answers 503 so the client sends them again (they may still arrive: at
    /// least once). A broker that is away never holds a client longer than this.
    pub ingest_ack_timeout: Duration,
    /// Bytes of frames a syslog TCP connection may have on their way into the bus, not yet
    /// durable, before it stops reading until the oldest are (see `ingest::syslog`). Syslog has
    /// no acknowledgement of its own: a crash of the shuttle loses what is in this window, as it
    /// loses what the kernel's receive buffer holds. On Kafka the window must cover the lines
    /// that arrive while a produce request is on its way and the next one fills (one request in
    /// flight); 8 MiB held a busy connection back 5–11 % (BENCHMARKS.md).
    pub syslog_window_bytes: usize,
    /// Register metrics here instead of in a registry of our own.
    pub registry: Option<Registry>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bus: BusChoice::InProcess,
            ingest_queue: 65_536,
            tail_buffer: 1_000,
            udp_max_bytes: 2_048,
            ca_file: None,
            tls: None,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            drain_stall_timeout: Duration::from_secs(5),
            http_timeout: Duration::from_secs(30),
            http_batch_lines: 500,
            http_batch_bytes: 1024 * 1024,
            http_linger: Duration::from_millis(200),
            ingest_ack_timeout: Duration::from_secs(10),
            syslog_window_bytes: 32 * 1024 * 1024,
            registry: None,
        }
    }
}

/// What [`Handle::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

struct AppRoute {
    /// Compliance `socs`: redact secret-looking values before anything sees the line.
    socs: bool,
    drains: Vec<Arc<DrainQueue>>,
    stream: Arc<AppStream>,
    /// `ingest_lines` of this app, resolved once.
    ingested: prometheus::IntCounter,
}

struct Running {
    target: DrainTarget,
    queue: Arc<DrainQueue>,
    task: JoinHandle<()>,
}

/// The sink handed to the router and the runtime: never blocks.
struct QueueSink {
    tx: mpsc::Sender<LogLine>,
    /// Per app: (space, dropped, since).
    drops: Mutex<HashMap<String, (String, u64, i64)>>,
    any_drop: AtomicBool,
    metrics: Metrics,
    /// Per-app ingest rates (`[[limits]] log_lines_per_sec`), from the plan.
    rates: RwLock<Arc<HashMap<String, wharf_config::Rate>>>,
    /// Per app: (tokens, last refill) of its rate's bucket.
    buckets: Mutex<HashMap<String, (f64, std::time::Instant)>>,
    /// Per app: (space, refused by its rate, since).
    limited: Mutex<HashMap<String, (String, u64, i64)>>,
}

impl QueueSink {
    /// Within the app's ingest rate? Lines over it are counted for a notice.
    fn within_rate(&self, line: &LogLine) -> bool {
        self.within_rate_of(&self.rates.read().clone(), &line.app, &line.space)
    }

    /// [`QueueSink::within_rate`] for a line of `app` in `space`, with the rates already in
    /// hand (once per batch).
    fn within_rate_of(
        &self,
        rates: &HashMap<String, wharf_config::Rate>,
        app: &str,
        space: &str,
    ) -> bool {
        let Some(rate) = rates.get(app) else {
            return true;
        };
        let now = std::time::Instant::now();
        let ok = {
            let mut b = self.buckets.lock();
            let e = b
                .entry(app.to_owned())
                .or_insert((f64::from(rate.burst), now));
            let dt = now.saturating_duration_since(e.1).as_secs_f64();
            e.0 = (e.0 + dt * f64::from(rate.per_sec)).min(f64::from(rate.burst));
            e.1 = now;
            if e.0 >= 1.0 {
                e.0 -= 1.0;
                true
            } else {
                false
            }
        };
        if !ok {
            self.metrics
                .ingest_errors
                .with_label_values(&["any", "rate_limit"])
                .inc();
            let mut l = self.limited.lock();
            let e = l
                .entry(app.to_owned())
                .or_insert_with(|| (space.to_owned(), 0, wire::now_us()));
            e.1 += 1;
            self.any_drop.store(true, Ordering::Release);
        }
        ok
    }
}

impl LineSink for QueueSink {
    fn send(&self, line: LogLine) {
        if !self.within_rate(&line) {
            return;
        }
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(line)) => {
                self.metrics
                    .sink_dropped
                    .with_label_values(&[&line.app])
                    .inc();
                let mut d = self.drops.lock();
                let e = d
                    .entry(line.app.into_string())
                    .or_insert_with(|| (line.space.into_string(), 0, wire::now_us()));
                e.1 += 1;
                self.any_drop.store(true, Ordering::Release);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl QueueSink {
    fn take_drop_notices(&self) -> Vec<LogLine> {
        if !self.any_drop.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let drops: Vec<_> = self.drops.lock().drain().collect();
        let limited: Vec<_> = self.limited.lock().drain().collect();
        let rates = self.rates.read().clone();
        drops
            .into_iter()
            .map(|(app, (space, n, since))| wire::notice(&app, &space, wire::l10_text(n, since)))
            .chain(limited.into_iter().map(|(app, (space, n, since))| {
                let per_sec = rates.get(&app).map_or(0, |r| r.per_sec);
                let text = format!(
                    "Log rate limit of {per_sec} lines/s applied: {n} messages dropped since {}.",
                    wire::format_timestamp(since)
                );
                wire::notice(&app, &space, text)
            }))
            .collect()
    }
}

struct Inner {
    opts: Arc<Options>,
    metrics: Metrics,
    bus: Arc<dyn Bus>,
    tls: Arc<rustls::ClientConfig>,
    routes: RwLock<Arc<HashMap<String, AppRoute>>>,
    streams: RwLock<HashMap<String, Arc<AppStream>>>,
    tokens: RwLock<Arc<HashMap<String, (String, String)>>>,
    drains: Mutex<HashMap<String, Running>>,
    plan: Mutex<Option<ShuttlePlan>>,
    sink: Arc<QueueSink>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    reaper: drain::Reaper,
}

/// The running shuttle. Cheap to clone; every clone is the same shuttle.
#[derive(Clone)]
pub struct Handle(Arc<Inner>);

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("bus", &self.0.bus.kind())
            .finish()
    }
}

/// Starts shuttles.
#[derive(Debug)]
pub struct Shuttle;

impl Shuttle {
    /// Start with `plan` (a diff from nothing). Must run inside a tokio runtime.
    pub async fn start(opts: Options, plan: ShuttlePlan) -> Result<Handle, Error> {
        let metrics = Metrics::new(opts.registry.clone().unwrap_or_default())?;
        let tls = match &opts.tls {
            Some(t) => t.clone(),
            None => crate::tls::client_config(opts.ca_file.as_deref())?,
        };
        let bus: Arc<dyn Bus> = match &opts.bus {
            BusChoice::InProcess => Arc::new(InProcessBus::new(64)),
            BusChoice::Kafka(k) => Arc::new(KafkaBus::connect(k.clone(), metrics.clone()).await?),
        };
        let (tx, rx) = mpsc::channel(opts.ingest_queue.max(1));
        let sink = Arc::new(QueueSink {
            tx,
            drops: Mutex::new(HashMap::new()),
            any_drop: AtomicBool::new(false),
            metrics: metrics.clone(),
            rates: RwLock::new(Arc::new(HashMap::new())),
            buckets: Mutex::new(HashMap::new()),
            limited: Mutex::new(HashMap::new()),
        });
        let (reaper, reaping) = drain::Reaper::start();
        let handle = Handle(Arc::new(Inner {
            opts: Arc::new(opts),
            metrics,
            bus,
            tls,
            routes: RwLock::new(Arc::new(HashMap::new())),
            streams: RwLock::new(HashMap::new()),
            tokens: RwLock::new(Arc::new(HashMap::new())),
            drains: Mutex::new(HashMap::new()),
            plan: Mutex::new(None),
            sink,
            tasks: Mutex::new(vec![reaping]),
            reaper,
        }));
        handle.apply(plan)?;
        let consumer = handle.0.bus.subscribe().await?;
        let publisher = tokio::spawn(publisher(handle.0.bus.clone(), handle.0.sink.clone(), rx));
        let dispatcher = tokio::spawn(dispatcher(Arc::downgrade(&handle.0), consumer));
        handle.0.tasks.lock().extend([publisher, dispatcher]);
        Ok(handle)
    }
}

async fn publisher(bus: Arc<dyn Bus>, sink: Arc<QueueSink>, mut rx: mpsc::Receiver<LogLine>) {
    let mut buf: Vec<LogLine> = Vec::with_capacity(1024);
    let mut backoff = drain::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let mut notices = sink.take_drop_notices();
        if buf.is_empty() {
            let mut more = Vec::with_capacity(1024);
            // Wake now and then even when no line comes: a drop recorded after the last line
            // still owes the app its notice. (`recv_many` is cancel safe.)
            let got = tokio::select! {
                n = rx.recv_many(&mut more, 1024) => Some(n),
                () = tokio::time::sleep(Duration::from_millis(250)) => None,
            };
            if got == Some(0) && notices.is_empty() {
                return;
            }
            notices.append(&mut more);
            buf = notices;
            if buf.is_empty() {
                continue;
            }
        } else if !notices.is_empty() {
            buf.append(&mut notices);
        }
        match bus.publish(&mut buf).await {
            Ok(()) => {
                buf.clear();
                backoff.reset();
            }
            Err(Error::Closed) => return,
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, lines = buf.len(), retry_in = ?d, "publishing to the bus failed; will retry");
                tokio::time::sleep(d).await;
            }
        }
    }
}

async fn dispatcher(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::Receiver<Vec<crate::bus::Consumed>>,
) {
    // The run being gathered: consecutive lines of one app, and one share of each
    // acknowledgement its lines came with.
    let mut run: Vec<LogLine> = Vec::new();
    let mut acks: Vec<crate::bus::Ack> = Vec::new();
    while let Some(batch) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let routes = inner.routes.read().clone();
        // Runs of one app's lines, across the batch's records: one route lookup, one buffer
        // append per drain, one counter update — not one of each per line.
        for crate::bus::Consumed { lines, ack } in batch {
            for line in lines {
                if run.first().is_some_and(|f| f.app != line.app) {
                    route_run(&inner, &routes, &mut run, &mut acks).await;
                }
                if acks.last().is_none_or(|a| !a.same(&ack)) {
                    acks.push(ack.share());
                }
                run.push(line);
            }
            ack.done();
        }
        route_run(&inner, &routes, &mut run, &mut acks).await;
    }
}

/// Hand a gathered run to its app's drains, or count it unrouted; `run` and `acks` are left
/// empty.
async fn route_run(
    inner: &Inner,
    routes: &HashMap<String, AppRoute>,
    run: &mut Vec<LogLine>,
    acks: &mut Vec<crate::bus::Ack>,
) {
    let Some(first) = run.first() else { return };
    match routes.get(first.app.as_str()) {
        None => {
            inner.metrics.unrouted.inc_by(run.len() as u64);
            run.clear();
            for a in acks.drain(..) {
                a.done();
            }
        }
        Some(r) => dispatch_run(r, run, acks).await,
    }
}

async fn dispatch_run(r: &AppRoute, run: &mut Vec<LogLine>, acks: &mut Vec<crate::bus::Ack>) {
    let n = run.len();
    r.ingested.inc_by(n as u64);
    if r.socs {
        for line in run.iter_mut() {
            if let Some(red) = wire::redact_secrets(&line.line) {
                line.line = red;
            }
        }
    }
    // One shared run for the history, the tails and every drain.
    let lines = Arc::new(std::mem::replace(run, Vec::with_capacity(n)));
    // History and tails first: they never wait.
    r.stream.push_run(&lines);
    // One run for every drain of the app; its acknowledgements are done when the last drain
    // lets go of it.
    let run = Arc::new(drain::Run::new(lines, std::mem::take(acks)));
    for q in &r.drains {
        q.push_run(&run).await;
    }
}

impl Handle {
    /// Take a new plan: check it, then start, stop or keep drains by id.
    pub fn apply(&self, plan: ShuttlePlan) -> Result<ApplyReport, Error> {
        let s = &plan.settings;
        for app in plan.apps.values() {
            if app.drains.len() > s.max_drains_per_app {
                return Err(Error::TooManyDrains {
                    app: format!("{}-{}", app.name, app.space),
                    count: app.drains.len(),
                    max: s.max_drains_per_app,
                });
            }
            if !s.allow_http_drains
                && let Some(d) = app.drains.iter().find(|d| d.url.kind == DrainKind::Http)
            {
                return Err(Error::HttpDrainsOff {
                    app: d.app.clone(),
                    drain: d.url.redacted(),
                });
            }
        }
        let inner = &self.0;
        let mut drains = inner.drains.lock();
        let mut report = ApplyReport::default();

        // Streams: one per app of the plan; history bound from the settings.
        {
            let mut streams = inner.streams.write();
            streams.retain(|k, _| plan.apps.contains_key(k));
            for (key, app) in &plan.apps {
                let st = streams.entry(key.clone()).or_insert_with(|| {
                    Arc::new(AppStream::new(
                        key,
                        &app.space,
                        s.history_lines,
                        inner.opts.tail_buffer,
                        inner.metrics.clone(),
                    ))
                });
                st.set_cap(s.history_lines);
            }
        }
        let streams = inner.streams.read().clone();

        let desired: HashMap<&str, (&str, &DrainTarget)> = plan
            .apps
            .iter()
            .flat_map(|(key, a)| {
                a.drains
                    .iter()
                    .map(move |d| (d.id.as_str(), (key.as_str(), d)))
            })
            .collect();
        let ids: BTreeSet<String> = drains.keys().cloned().collect();
        for id in ids {
            let keep = desired
                .get(id.as_str())
                .is_some_and(|(_, t)| drains[&id].target == **t);
            if keep {
                report.kept.push(id);
            } else if let Some(r) = drains.remove(&id) {
                r.queue.close();
                r.task.abort();
                inner.metrics.forget_drain(&r.target.app, &r.target.id);
                tracing::info!(drain = %id, app = %r.target.app, "drain stopped");
                report.removed.push(id);
            }
        }
        for (id, (key, target)) in &desired {
            if drains.contains_key(*id) {
                continue;
            }
            let Some(stream) = streams.get(*key) else {
                continue;
            };
            let space = plan
                .apps
                .get(*key)
                .map(|a| a.space.clone())
                .unwrap_or_default();
            let metrics = inner.metrics.for_drain(key, id);
            let told: drain::Notice = {
                let (stream, app, space) = (stream.clone(), (*key).to_owned(), space.clone());
                Box::new(move |n, since| {
                    let text = wire::l10_text(n, since);
                    stream.push(wire::notice(&app, &space, text));
                })
            };
            let queue = Arc::new(
                DrainQueue::new(
                    s.drain_buffer_lines,
                    inner.opts.drain_stall_timeout,
                    metrics.clone(),
                    *id,
                )
                .with_notice(told)
                .with_reaper(inner.reaper.clone()),
            );
            let task = drain::spawn(DrainCtx {
                target: (*target).clone(),
                queue: queue.clone(),
                metrics,
                space,
                opts: inner.opts.clone(),
                tls: inner.tls.clone(),
            });
            tracing::info!(drain = %id, app = %key, url = %target.url, "drain started");
            drains.insert(
                (*id).to_owned(),
                Running {
                    target: (*target).clone(),
                    queue,
                    task,
                },
            );
            report.added.push((*id).to_owned());
        }
        report.removed.sort();
        report.added.sort();

        let mut routes = HashMap::new();
        let mut tokens = HashMap::new();
        for (key, app) in &plan.apps {
            let Some(stream) = streams.get(key) else {
                continue;
            };
            let qs = app
                .drains
                .iter()
                .filter_map(|d| drains.get(&d.id).map(|r| r.queue.clone()))
                .collect();
            routes.insert(
                key.clone(),
                AppRoute {
                    socs: app.socs,
                    drains: qs,
                    stream: stream.clone(),
                    ingested: inner.metrics.ingest_lines.with_label_values(&[key]),
                },
            );
            if let Some(t) = &app.log_token {
                tokens.insert(t.clone(), (key.clone(), app.space.clone()));
            }
        }
        *inner.routes.write() = Arc::new(routes);
        *inner.tokens.write() = Arc::new(tokens);
        *inner.sink.rates.write() = Arc::new(
            plan.apps
                .iter()
                .filter_map(|(k, a)| Some((k.clone(), a.log_rate?)))
                .collect(),
        );
        *inner.plan.lock() = Some(plan);
        Ok(report)
    }

    /// The non-blocking sink for the router, the runtime and builds.
    pub fn sink(&self) -> Arc<dyn LineSink> {
        self.0.sink.clone()
    }

    /// An empty hand-over for network ingest to gather lines into ([`Bus::gather`]).
    pub(crate) fn gather(&self) -> crate::bus::Gathered {
        self.0.bus.gather()
    }

    /// Hand gathered lines straight to the bus (network ingest), waiting while it is full:
    /// see [`Bus::send`]. The receipt resolves once they are durable. The lines' rates were
    /// checked as they were gathered ([`Handle::within_rate`]).
    pub(crate) async fn send_gathered(
        &self,
        gathered: &mut crate::bus::Gathered,
    ) -> Result<crate::bus::Receipt, Error> {
        self.0.bus.send_gathered(gathered).await
    }

    /// The apps' ingest rates now, for [`Handle::within_rate`].
    pub(crate) fn rates(&self) -> Arc<HashMap<String, wharf_config::Rate>> {
        self.0.sink.rates.read().clone()
    }

    /// Whether a line of `app` is within its ingest rate. One that is not is counted where
    /// the sink counts its own, and the sink's publisher (which wakes every 250 ms) writes
    /// the notice.
    pub(crate) fn within_rate(
        &self,
        rates: &HashMap<String, wharf_config::Rate>,
        app: &str,
        space: &str,
    ) -> bool {
        rates.is_empty() || self.0.sink.within_rate_of(rates, app, space)
    }

    /// Drop the lines over their app's ingest rate (see [`Handle::within_rate`]).
    fn within_rates(&self, lines: &mut Vec<LogLine>) {
        let rates = self.rates();
        if rates.is_empty() {
            return;
        }
        lines.retain(|l| self.within_rate(&rates, &l.app, &l.space));
    }

    /// Publish lines and wait until the bus holds them durably (Kafka: acknowledged). Lines
    /// over their app's ingest rate are dropped and counted first, as at the sink.
    pub async fn publish(&self, lines: &mut Vec<LogLine>) -> Result<(), Error> {
        self.within_rates(lines);
        self.0.bus.publish(lines).await
    }

    /// The last `lines` lines of app `app` (key `{app}-{space}`) that pass `filter`.
    pub fn history(&self, app: &str, lines: usize, filter: &Filter) -> Vec<LogLine> {
        match self.0.streams.read().get(app) {
            Some(s) => s.history(lines, filter),
            None => Vec::new(),
        }
    }

    /// Follow app `app` live from now.
    pub fn tail(&self, app: &str, filter: Filter) -> Result<Tail, Error> {
        Ok(self.session(app, 0, filter)?.1)
    }

    /// A Heroku log session: the last `lines` lines, then (with the [`Tail`]) what follows,
    /// with no gap between them.
    pub fn session(
        &self,
        app: &str,
        lines: usize,
        filter: Filter,
    ) -> Result<(Vec<LogLine>, Tail), Error> {
        let s = self.0.streams.read().get(app).cloned();
        match s {
            Some(s) => Ok(s.session(lines, filter)),
            None => Err(Error::UnknownApp(app.to_owned())),
        }
    }

    /// The Logplex `POST /logs` router.
    pub fn http_router(&self) -> axum::Router {
        crate::ingest::http::router(self.clone())
    }

    /// `GET /metrics` in Prometheus' text format.
    pub fn metrics_router(&self) -> axum::Router {
        let m = self.0.metrics.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move { m.render() }
            }),
        )
    }

    /// Serve `router` (from [`Handle::http_router`] or [`Handle::metrics_router`]) on
    /// `listener` until the task is dropped.
    pub async fn serve(
        listener: tokio::net::TcpListener,
        router: axum::Router,
    ) -> std::io::Result<()> {
        axum::serve(listener, router).await
    }

    /// Syslog over TCP on `addr`; `token` binds the listener to one app.
    pub async fn bind_syslog_tcp(
        &self,
        addr: std::net::SocketAddr,
        token: Option<String>,
    ) -> Result<crate::SyslogListener, Error> {
        crate::ingest::syslog::bind_tcp(self.clone(), addr, token).await
    }

    /// Syslog over UDP on `addr`; `token` binds the listener to one app.
    pub async fn bind_syslog_udp(
        &self,
        addr: std::net::SocketAddr,
        token: Option<String>,
    ) -> Result<crate::SyslogListener, Error> {
        crate::ingest::syslog::bind_udp(self.clone(), addr, token).await
    }

    /// `(app key, space)` of a log token.
    pub fn app_for_token(&self, token: &str) -> Option<(String, String)> {
        self.0.tokens.read().get(token).cloned()
    }

    /// Every log token of the current plan: `token → (app key, space)`.
    pub(crate) fn tokens(&self) -> Arc<HashMap<String, (String, String)>> {
        self.0.tokens.read().clone()
    }

    pub(crate) fn options(&self) -> &Options {
        &self.0.opts
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn registry(&self) -> &Registry {
        &self.0.metrics.registry
    }

    /// `in-process` or `kafka`.
    pub fn bus_kind(&self) -> &'static str {
        self.0.bus.kind()
    }

    /// Lines waiting in drain buffers, all drains together.
    pub fn buffered(&self) -> usize {
        let drains = self.0.drains.lock();
        drains.values().map(|r| r.queue.len()).sum()
    }

    /// Stop: wait up to `grace` for drains to empty their buffers, then stop them, commit
    /// what was delivered and close the bus.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.buffered() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for t in self.0.tasks.lock().drain(..) {
            t.abort();
        }
        let running: Vec<Running> = self.0.drains.lock().drain().map(|(_, r)| r).collect();
        for r in running {
            r.task.abort();
            r.queue.close();
        }
        // What stalled drains shed is accounted for: acknowledged before the bus commits.
        self.0.reaper.flush();
        self.0.bus.shutdown().await;
    }
}
