//! Starting, reconfiguring and stopping a router. The pingora `Server` builds its own runtimes,
//! so it runs on an OS thread of its own with a shutdown signal we control; the config swap
//! needs no restart at all: every request reads the live table from one `ArcSwap`.

use std::any::Any;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::listeners::TlsAccept;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::tls::TlsRef;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use wharf_config::{LineSink, RouterEvent, RouterTable, Snapshot};

use crate::admin::Admin;
use crate::filters::jwks::JwksCache;
use crate::live::{Live, Rejected};
use crate::metrics::Metrics;
use crate::proxy::{Edge, Kind};
use crate::shared::Shared;
use crate::tls::{Sni, SniResolver};

/// Where to listen. Port 0 picks a free port; [`Handle::addrs`] tells which.
#[derive(Debug, Clone, Default)]
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
        let shared = Arc::new(Shared {
            jwks: JwksCache::new(metrics.clone()),
            live: live.clone(),
            metrics: metrics.clone(),
            sink,
            events,
            limits: crate::limits::Limiter::new(&metrics.registry),
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
            let mut svc = pingora::proxy::http_proxy_service_with_name(
                &sc,
                Edge {
                    kind: Kind::PublicHttps,
                    shared: shared.clone(),
                },
                "wharf-https",
            );
            svc.add_tls_with_settings(&a.to_string(), None, tls);
            svc.threads = Some(threads);
            server.add_service(svc);
        }
        if let Some(a) = addrs.http {
            let mut svc = pingora::proxy::http_proxy_service_with_name(
                &sc,
                Edge {
                    kind: Kind::PublicHttp,
                    shared: shared.clone(),
                },
                "wharf-http",
            );
            svc.add_tcp(&a.to_string());
            svc.threads = Some(1);
            server.add_service(svc);
        }
        if let Some(a) = addrs.internal {
            let mut svc = pingora::proxy::http_proxy_service_with_name(
                &sc,
                Edge {
                    kind: Kind::Internal,
                    shared: shared.clone(),
                },
                "wharf-internal",
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
            addrs: addrs.clone(),
            stop,
            thread: Mutex::new(Some(thread)),
            swap: Mutex::new(()),
        };
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
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
