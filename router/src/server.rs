//! Starting, reconfiguring and stopping a router. The pingora `Server` builds its own runtimes,
//! so it runs on an OS thread of its own with a shutdown signal we control; the config swap
//! needs no restart at all: every request reads the live table from one `ArcSwap`.

use std::any::Any;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use parking_lot::Mutex;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::TlsAccept;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_config::{LineSink, RouterEvent, RouterTable, Snapshot};

use crate::admin::Admin;
use crate::client;
use crate::filters::jwks::JwksCache;
use crate::live::{Live, Rejected};
use crate::metrics::Metrics;
use crate::overflow::{self, Head};
use crate::proxy::{ConnInfo, Edge, Kind, Outcome};
use crate::shared::Shared;
use crate::tls::{Sni, SniResolver};

/// Request heads are read ahead up to this size; a longer one is left to pingora's own limits.
const HEAD_READ_AHEAD: usize = 64 * 1024;
/// How long a connection may sit between requests (pingora's keep-alive default).
const KEEPALIVE_SECS: u64 = 60;

/// The proxy behind each listener. HTTP/1 request heads are read here first (the same read
/// pingora would do) and handed to pingora as the session's first bytes; a head with more
/// headers than pingora parses (256) and at most 1000 is split (`overflow`), more → 431.
struct HeadGuard {
    proxy: Arc<HttpProxy<Edge>>,
    /// The same proxy's own HTTP/1 path for the common request (`proxy::direct`).
    edge: Edge,
    /// Whether that path is on: HTTPS and internal listeners (the HTTP one only redirects),
    /// unless turned off.
    direct: bool,
    metrics: Metrics,
    shared: Arc<Shared>,
    /// HTTPS: the TLS handshake is done here, once the connection holds its slot.
    tls: Option<Acceptor>,
}

#[async_trait]
impl ServerApp for HeadGuard {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Held for the connection's life; over a limit, the connection is closed unanswered.
        let peer = pingora::protocols::GetSocketDigest::get_socket_digest(&*stream)
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let (limits, header, h2_idle) = {
            let live = self.shared.live.load();
            let s = &live.table.settings;
            (
                s.limits.clone(),
                Duration::from_millis(s.client_header_timeout_ms),
                Duration::from_millis(s.client_h2_idle_timeout_ms),
            )
        };
        let _slot = self.shared.limits.connection(peer, &limits).ok()?;
        let mut first_byte_by = Instant::now() + header;
        if let Some(tls) = &self.tls {
            stream = client::tls_handshake(tls, stream, first_byte_by, &self.shared.limits).await?;
        }
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let limiter = &self.shared.limits;
            let by = first_byte_by;
            crate::h2_guard::serve(&self.proxy, stream, shutdown, limiter, by, h2_idle).await;
            return None;
        }
        // The connection's key for headers parked past pingora's parser limit.
        let conn = pingora::protocols::GetSocketDigest::get_socket_digest(&*stream)
            .map(|d| Arc::as_ptr(&d) as usize);
        let mut settings = None;
        let mut fresh = true;
        let conn_info = self.direct.then(|| ConnInfo::of(&stream));
        let mut ahead = BytesMut::new();
        loop {
            let limiter = &self.shared.limits;
            let (s, mut head, end) = read_head(
                stream,
                ahead,
                shutdown,
                fresh,
                first_byte_by,
                header,
                limiter,
            )
            .await?;
            stream = s;
            ahead = BytesMut::new();
            if let (Some(info), Some(end)) = (&conn_info, end) {
                let closing = *shutdown.borrow();
                match self
                    .edge
                    .serve_direct(stream, head, end, info, closing)
                    .await
                {
                    Outcome::Served(s, rest) => {
                        stream = s;
                        ahead = rest;
                        fresh = false;
                        first_byte_by = Instant::now() + Duration::from_secs(KEEPALIVE_SECS);
                        continue;
                    }
                    Outcome::Closed => return None,
                    Outcome::Pingora(s, h) => (stream, head) = (s, h),
                }
            }
            let mut parked = None;
            let split = end.map_or(Head::AsIs, |end| overflow::split(&head, end));
            match (split, conn) {
                (Head::AsIs, _) => {}
                (Head::Split(cut, headers), Some(conn)) => {
                    self.shared.parked.park(conn, headers);
                    parked = Some(conn);
                    head = cut;
                }
                (Head::TooMany | Head::Split(..), _) => {
                    self.metrics.requests.with_label_values(&["", "4xx"]).inc();
                    let _ = stream.write_all(TOO_MANY_HEADERS).await;
                    let _ = stream.flush().await;
                    let _ = stream.shutdown().await;
                    return None;
                }
            }
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(settings) => HttpPersistentSettings::apply_to_session(settings, &mut session),
                None => session.set_keepalive(Some(KEEPALIVE_SECS)),
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            session.set_pipelined_prefix(head);
            let reused = self.proxy.process_new_http(session, shutdown).await;
            if let Some(conn) = parked {
                // Normally taken by the proxy already; never left for a later request.
                self.shared.parked.take(conn);
            }
            let reused = reused?;
            (stream, settings) = reused.consume();
            fresh = false;
            first_byte_by = Instant::now() + Duration::from_secs(KEEPALIVE_SECS);
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

const TOO_MANY_HEADERS: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 32\r\nconnection: close\r\n\r\n\
Request Header Fields Too Large\n";

/// Read until a whole request head is buffered (or [`HEAD_READ_AHEAD`] bytes, or the client
/// closed after sending something), with where the head ends when it is whole: its first byte
/// by `first_byte_by`, the whole head by [`client::head_deadline`]. `None`: the client went away or was late (closed, 408 when part
/// of a head came), or the server is shutting down. `fresh`: the connection's first request.
async fn read_head(
    mut stream: Stream,
    ahead: BytesMut,
    shutdown: &ShutdownWatch,
    fresh: bool,
    first_byte_by: Instant,
    header: Duration,
    limiter: &crate::limits::Limiter,
) -> Option<(Stream, BytesMut, Option<usize>)> {
    let mut stop = shutdown.clone();
    let read = async move {
        let mut buf = ahead;
        let mut by = first_byte_by;
        if !buf.is_empty() {
            // Sent ahead while the previous request was served (pipelined).
            if let Some(end) = head_end(&buf) {
                return Some((stream, buf, Some(end)));
            }
            by = client::head_deadline(first_byte_by, Instant::now(), header);
        }
        buf.reserve(4096);
        loop {
            let n = match tokio::time::timeout_at(by.into(), stream.read_buf(&mut buf)).await {
                Ok(n) => n.ok()?,
                // A kept-alive connection that sent nothing more: closed quietly.
                Err(_) if buf.is_empty() && !fresh => return None,
                Err(_) => {
                    client::head_timed_out(stream, buf.len(), limiter).await;
                    return None;
                }
            };
            if n == 0 {
                // Every earlier read was checked: no whole head in what came.
                return (!buf.is_empty()).then_some((stream, buf, None));
            }
            let end = head_end(&buf);
            if end.is_some() || buf.len() >= HEAD_READ_AHEAD {
                return Some((stream, buf, end));
            }
            if buf.len() == n {
                by = client::head_deadline(first_byte_by, Instant::now(), header);
            }
        }
    };
    tokio::select! {
        biased;
        r = read => r,
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// The end of the head: just past the blank line (CRLF or bare LF endings).
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|b| *b == b'\n') {
        let at = from + i;
        let rest = &buf[at + 1..];
        if rest.starts_with(b"\n") {
            return Some(at + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(at + 3);
        }
        from = at + 1;
    }
    None
}

/// Where to listen. Port 0 picks a free port; [`Handle::addrs`] tells which.
#[derive(Debug, Clone)]
pub struct Options {
    /// Public HTTPS (apps and public sites).
    pub https: Option<SocketAddr>,
    /// Public plain HTTP (redirects to HTTPS).
    pub http: Option<SocketAddr>,
    /// Internal plain HTTP (internal spaces and internal sites).
    pub internal: Option<SocketAddr>,
    /// `/metrics` and `/healthz`.
    pub admin: Option<SocketAddr>,
    /// Worker threads of the HTTPS listener (0: one per core).
    pub threads: usize,
    /// Serve the common HTTP/1 request on the router's own path (`proxy::direct`) rather
    /// than pingora's. On in [`Options::default`]; off only to compare the two.
    pub direct: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            https: None,
            http: None,
            internal: None,
            admin: None,
            threads: 0,
            direct: true,
        }
    }
}

/// The addresses actually bound.
#[derive(Debug, Clone, Default)]
pub struct Addrs {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub internal: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("the router did not start listening on {0} within 20 s")]
    NotListening(SocketAddr),
    #[error("an HTTPS listener needs at least one certificate")]
    NoCertificate,
}

/// A running router.
pub struct Handle {
    shared: Arc<Shared>,
    batched: Arc<BatchedSink>,
    addrs: Addrs,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serialises swaps so versions increase with the order tables were applied in.
    swap: Mutex<()>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("addrs", &self.addrs)
            .finish()
    }
}

struct StopWatch(tokio::sync::watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::GracefulTerminate
    }
}

/// Router lines reach the caller's sink in batches from one thread, every
/// [`BatchedSink::EVERY`]: the request path only appends to a vector under an uncontended
/// lock, instead of waking the sink's consumer once per request (measured: two futex calls
/// and a context switch per request with a channel to a writer thread).
struct BatchedSink {
    pending: Arc<Mutex<Vec<wharf_config::LogLine>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl BatchedSink {
    const EVERY: Duration = Duration::from_millis(5);

    fn start(inner: Arc<dyn LineSink>) -> BatchedSink {
        let pending = Arc::new(Mutex::new(Vec::with_capacity(1024)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (pending.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("wharf-router-log".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(1024);
                loop {
                    let stopping = s.load(std::sync::atomic::Ordering::Acquire);
                    std::mem::swap(&mut batch, &mut *p.lock());
                    if !batch.is_empty() {
                        inner.send_batch(&mut batch);
                    }
                    if stopping {
                        return;
                    }
                    std::thread::sleep(Self::EVERY);
                }
            })
            .expect("spawn router log thread");
        BatchedSink {
            pending,
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Hand over what is pending and end the thread.
    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl LineSink for BatchedSink {
    fn send(&self, line: wharf_config::LogLine) {
        self.pending.lock().push(line);
    }
}

/// Captures the SNI for the Host/SNI check and counts handshakes.
struct Handshakes {
    metrics: Metrics,
}

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        self.metrics
            .tls_handshakes
            .with_label_values(&[crate::tls::version_name(tls.version().unwrap_or("unknown"))])
            .inc();
        tls.server_name()
            .map(|n| Arc::new(Sni(n.to_ascii_lowercase())) as Arc<dyn Any + Send + Sync>)
    }
}

fn edge_service(
    conf: &Arc<ServerConf>,
    shared: &Arc<Shared>,
    kind: Kind,
    name: &str,
    tls: Option<Acceptor>,
    direct: bool,
) -> Service<HeadGuard> {
    let edge = Edge {
        kind,
        shared: shared.clone(),
    };
    Service::new(
        name.to_owned(),
        HeadGuard {
            direct: direct && kind != Kind::PublicHttp,
            edge: edge.clone(),
            proxy: Arc::new(pingora::proxy::http_proxy(conf, edge)),
            metrics: shared.metrics.clone(),
            shared: shared.clone(),
            tls,
        },
    )
}

fn pick_port(addr: Option<SocketAddr>) -> Result<Option<SocketAddr>, StartError> {
    match addr {
        Some(a) if a.port() == 0 => {
            let l = TcpListener::bind(a).map_err(|e| StartError::Bind(a, e))?;
            Ok(Some(l.local_addr().map_err(|e| StartError::Bind(a, e))?))
        }
        other => Ok(other),
    }
}

impl Handle {
    /// Start listening with `table`; returns once every listener accepts connections.
    pub fn start(
        opts: Options,
        table: RouterTable,
        sink: Arc<dyn LineSink>,
    ) -> Result<Handle, StartError> {
        let metrics = Metrics::new();
        let live = Live::build(table, 1, None)?;
        if opts.https.is_some() && live.certs.is_empty() {
            return Err(StartError::NoCertificate);
        }
        metrics.config_version.set(1);
        metrics.config_revision.set(live.table.revision as i64);
        metrics.swaps.inc();
        let live = Arc::new(ArcSwap::from_pointee(live));
        let (events, _) = tokio::sync::broadcast::channel(256);
        let batched = Arc::new(BatchedSink::start(sink));
        let sink: Arc<dyn LineSink> = batched.clone();
        let shared = Arc::new(Shared {
            jwks: JwksCache::new(metrics.clone()),
            live: live.clone(),
            metrics: metrics.clone(),
            sink,
            events,
            limits: crate::limits::Limiter::new(&metrics.registry),
            parked: Default::default(),
        });
        shared.jwks.sync(&shared.live.load().table);

        let addrs = Addrs {
            https: pick_port(opts.https)?,
            http: pick_port(opts.http)?,
            internal: pick_port(opts.internal)?,
            admin: pick_port(opts.admin)?,
        };
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.threads
        };

        let conf = ServerConf {
            threads,
            // One single-threaded runtime per worker thread: no work-stealing hand-offs or
            // cross-thread wake-ups on the request path (measured: fewer futex calls).
            work_stealing: false,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(2),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let sc = server.configuration.clone();

        if let Some(a) = addrs.https {
            let mut tls = TlsSettings::with_callbacks(Box::new(Handshakes {
                metrics: metrics.clone(),
            }))
            .expect("TLS settings");
            tls.set_cert_resolver(Arc::new(SniResolver { live: live.clone() }));
            tls.enable_h2();
            // A plain TCP listener: HeadGuard admits the connection, then does the handshake.
            let mut svc = edge_service(
                &sc,
                &shared,
                Kind::PublicHttps,
                "wharf-https",
                Some(tls.build()),
                opts.direct,
            );
            svc.add_tcp(&a.to_string());
            svc.threads = Some(threads);
            server.add_service(svc);
        }
        if let Some(a) = addrs.http {
            let mut svc = edge_service(
                &sc,
                &shared,
                Kind::PublicHttp,
                "wharf-http",
                None,
                opts.direct,
            );
            svc.add_tcp(&a.to_string());
            svc.threads = Some(1);
            server.add_service(svc);
        }
        if let Some(a) = addrs.internal {
            let mut svc = edge_service(
                &sc,
                &shared,
                Kind::Internal,
                "wharf-internal",
                None,
                opts.direct,
            );
            svc.add_tcp(&a.to_string());
            svc.threads = Some(threads.min(2));
            server.add_service(svc);
        }
        if let Some(a) = addrs.admin {
            let mut svc = Service::new(
                "wharf-admin".into(),
                Admin {
                    shared: shared.clone(),
                },
            );
            svc.add_tcp(&a.to_string());
            svc.threads = Some(1);
            server.add_service(svc);
        }

        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("wharf-router".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(StopWatch(stop_rx)),
                });
            })
            .expect("spawn router thread");

        let handle = Handle {
            shared,
            batched,
            addrs: addrs.clone(),
            stop,
            thread: Mutex::new(Some(thread)),
            swap: Mutex::new(()),
        };
        // Probe every listener. A probe of a client listener takes a connection slot (and one
        // of its address's) until the router has read its EOF: wait for that too, so that no
        // probe still counts against a client's limits once this returns.
        let closed_before = handle.shared.limits.closed_connections();
        let mut probes = 0;
        for a in [addrs.https, addrs.http, addrs.internal, addrs.admin]
            .into_iter()
            .flatten()
        {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    handle.shutdown();
                    return Err(StartError::NotListening(a));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if Some(a) != addrs.admin {
                probes += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while handle.shared.limits.closed_connections() < closed_before + probes
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        tracing::info!(https = ?addrs.https, http = ?addrs.http, internal = ?addrs.internal,
            admin = ?addrs.admin, threads, "router listening");
        Ok(handle)
    }

    /// Swap in a compiled table. Invalid (a certificate that does not parse) → rejected whole,
    /// the old table keeps serving. Returns the new version.
    pub fn apply(&self, table: RouterTable) -> Result<u64, Rejected> {
        let _g = self.swap.lock();
        let t = Instant::now();
        let prev = self.shared.live.load_full();
        let version = prev.version + 1;
        let next = match Live::build(table, version, Some(&prev)) {
            Ok(n) => n,
            Err(e) => {
                self.shared.metrics.rejected.inc();
                tracing::warn!(reasons = ?e.reasons, "config rejected; the previous one keeps serving");
                return Err(e);
            }
        };
        self.shared.jwks.sync(&next.table);
        let revision = next.table.revision;
        self.shared.live.store(Arc::new(next));
        let m = &self.shared.metrics;
        m.compile_seconds.observe(t.elapsed().as_secs_f64());
        m.swaps.inc();
        m.config_version.set(version as i64);
        m.config_revision.set(revision as i64);
        tracing::info!(version, revision, "config swapped");
        Ok(version)
    }

    /// Validate and compile a snapshot, then [`Handle::apply`] it; every problem is a reason.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<u64, Rejected> {
        let t = Instant::now();
        let valid = wharf_config::validate(snapshot).map_err(|p| {
            self.shared.metrics.rejected.inc();
            Rejected {
                reasons: p.iter().map(|p| p.to_string()).collect(),
            }
        })?;
        let compiled = wharf_config::compile(&valid);
        self.shared
            .metrics
            .compile_seconds
            .observe(t.elapsed().as_secs_f64());
        self.apply(compiled.router)
    }

    /// The current table's version (1 for the first).
    pub fn version(&self) -> u64 {
        self.shared.live.load().version
    }

    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Per-side figures of an app's canary over its abort window, `[stable, canary]`, and
    /// whether the router aborted it: the in-process view the control plane reads.
    pub fn canary_figures(&self, app: &str) -> Option<([wharf_config::SideFigures; 2], bool)> {
        let live = self.shared.live.load();
        let i = live.table.apps.iter().position(|a| a.key == app)?;
        let c = live.apps[i].canary.as_ref()?;
        let now_s = crate::live::now_ms() / 1000;
        Some((c.stats.figures(now_s), c.stats.aborted()))
    }

    /// Events the router raises on its own (a canary aborted).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<RouterEvent> {
        self.shared.events.subscribe()
    }

    /// Stop listening and wait for the server thread (in-flight requests get 2 s).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        self.batched.stop();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn heads_are_measured_in_lines() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }
}
