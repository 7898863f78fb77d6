//! `wharf up`: the whole platform in one process on embedded defaults — control plane (SQLite),
//! log shuttle (in-process bus), local dyno runtime and router — wired with function calls and
//! channels. `--database-url`, `--kafka` and `--runtime kubernetes` switch to the real engines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use futures::stream::BoxStream;
use wharf_config::{Certificate, LogLine, Snapshot, Source};
use wharf_control::auth::Scope;
use wharf_control::store::Store;
use wharf_control::{ControlPlane, LogQuery, LogSource, Settings};
use wharf_logshuttle::{BusChoice, Filter, KafkaOptions};
use wharf_runtime::settings::RuntimeSettings;

use super::control_cmd::{shutdown_signal, write_private};
use super::router_cmd::Listen;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// Dynos are child processes of this one.
    Local,
    /// Dynos are Deployments on the cluster of the current kubeconfig.
    Kubernetes,
}

impl RuntimeKind {
    /// The runtime's settings; local dynos listen on `dyno_ports` (START, END).
    pub(super) fn settings(self, dyno_ports: (u16, u16)) -> RuntimeSettings {
        match self {
            RuntimeKind::Local => RuntimeSettings::Local(wharf_runtime::settings::LocalSettings {
                port_start: dyno_ports.0,
                port_end: dyno_ports.1,
                ..Default::default()
            }),
            RuntimeKind::Kubernetes => RuntimeSettings::Kubernetes(Default::default()),
        }
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the store, the local CA, certificates and slugs live.
    #[arg(long, env = "WHARF_DATA_DIR", default_value = "./wharf-data")]
    pub data_dir: PathBuf,
    /// Apps are served at https://{app}-{space}.{domain}; names under .localhost resolve to
    /// 127.0.0.1 without editing /etc/hosts.
    #[arg(long, default_value = "wharf.localhost")]
    pub domain: String,
    /// The platform API.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub api: SocketAddr,
    /// Public HTTPS listener of the router.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub https: SocketAddr,
    /// Public HTTP listener (redirects to HTTPS); `none` to disable.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: Listen,
    /// Internal listener (internal spaces and sites); `none` to disable.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub internal: Listen,
    /// Router metrics and health; `none` to disable.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: Listen,
    /// PostgreSQL instead of the embedded SQLite store: postgres://…
    #[arg(long, env = "WHARF_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Kafka brokers instead of the in-process log bus: host:port[,host:port]
    #[arg(long, env = "WHARF_KAFKA")]
    pub kafka: Option<String>,
    /// Where dynos run.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Local)]
    pub runtime: RuntimeKind,
    /// Allow plain http:// log drains (local testing).
    #[arg(long)]
    pub allow_http_drains: bool,
    /// Ports local dynos listen on: START-END.
    #[arg(long, default_value = "20000-29999", value_parser = port_range)]
    pub dyno_ports: (u16, u16),
    /// TLS rendezvous socket for attached one-off dynos (`wharf run`, `heroku run`); its
    /// certificate for 127.0.0.1 is signed by the local CA. `none` to disable.
    #[arg(long, default_value = "127.0.0.1:5001")]
    pub rendezvous: Listen,
}

pub(super) fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: use START-END"))?;
    let (a, b): (u16, u16) = (
        a.parse().map_err(|e| format!("{a:?}: {e}"))?,
        b.parse().map_err(|e| format!("{b:?}: {e}"))?,
    );
    if a == 0 || a > b {
        return Err(format!("{s:?}: START must be 1..=END"));
    }
    Ok((a, b))
}

/// Log sessions read from the shuttle's history and live tail.
struct ShuttleLogs(wharf_logshuttle::Handle);

fn filter_of(q: &LogQuery) -> Filter {
    Filter {
        dyno: q.dyno.clone(),
        source: match q.source.as_deref() {
            Some("app") => Some(Source::App),
            Some("heroku") => Some(Source::Heroku),
            _ => None,
        },
    }
}

#[async_trait]
impl LogSource for ShuttleLogs {
    fn publish(&self, line: LogLine) {
        self.0.sink().send(line);
    }

    async fn history(&self, app: &str, query: &LogQuery) -> Vec<LogLine> {
        self.0.history(app, query.lines, &filter_of(query))
    }

    fn tail(&self, app: &str, query: &LogQuery) -> BoxStream<'static, LogLine> {
        match self.0.tail(app, filter_of(query)) {
            Ok(tail) => {
                futures::stream::unfold(tail, |mut t| async move { t.recv().await.map(|l| (l, t)) })
                    .boxed()
            }
            Err(e) => {
                tracing::warn!(app, error = %e, "tail refused");
                futures::stream::empty().boxed()
            }
        }
    }
}

fn step(n: usize, total: usize, what: &str) {
    eprintln!("[{n}/{total}] {what}");
}

pub fn run(a: UpArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(up(a))
}

async fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    const STEPS: usize = 6;
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let data_dir = a.data_dir.canonicalize()?;

    step(
        1,
        STEPS,
        "local certificate authority and *.domain certificate",
    );
    let tls = local_tls(&data_dir, &a.domain)?;

    step(
        2,
        STEPS,
        if a.kafka.is_some() {
            "log shuttle (Kafka bus)"
        } else {
            "log shuttle (in-process bus)"
        },
    );
    let bus = match &a.kafka {
        Some(brokers) => BusChoice::Kafka(KafkaOptions::new(brokers.clone())),
        None => BusChoice::InProcess,
    };
    let empty = wharf_config::compile(
        &wharf_config::validate(Snapshot::empty(&a.domain)).map_err(|p| anyhow::anyhow!("{p}"))?,
    );
    let shuttle = wharf_logshuttle::Shuttle::start(
        wharf_logshuttle::Options {
            bus,
            ..Default::default()
        },
        empty.shuttle,
    )
    .await
    .context("cannot start the log shuttle")?;

    step(
        3,
        STEPS,
        match a.runtime {
            RuntimeKind::Local => "local dyno runtime",
            RuntimeKind::Kubernetes => "Kubernetes dyno runtime",
        },
    );
    let runtime = wharf_runtime::settings::build(&a.runtime.settings(a.dyno_ports), shuttle.sink())
        .await
        .context("cannot start the dyno runtime")?;

    step(
        4,
        STEPS,
        if a.database_url.is_some() {
            "control plane (PostgreSQL)"
        } else {
            "control plane (SQLite)"
        },
    );
    let url = match &a.database_url {
        Some(u) => u.clone(),
        None => format!("sqlite://{}", data_dir.join("control.db").display()),
    };
    let store = Store::open(&url).await.context("cannot open the store")?;
    let mut settings = Settings {
        domain: a.domain.clone(),
        public_url: Some(format!("http://{}", a.api)),
        ..Settings::default()
    };
    settings.logs.allow_http_drains = a.allow_http_drains;
    if let Some(listen) = a.rendezvous.0 {
        let (cert_pem, key_pem) = tls.leaf(&data_dir, "rendezvous", &["127.0.0.1", "localhost"])?;
        settings.rendezvous = Some(wharf_control::rendezvous::RendezvousConfig {
            listen,
            public_host: listen.ip().to_string(),
            cert_pem,
            key_pem,
        });
    }
    let cp = ControlPlane::new(
        store,
        runtime.clone(),
        Arc::new(ShuttleLogs(shuttle.clone())),
        settings,
    )
    .await
    .context("cannot start the control plane")?;
    let token_file = data_dir.join("admin-token");
    let new_token = if !cp.has_tokens().await? {
        let secret = cp
            .create_token(Scope::admin(), "wharf up admin", "admin@wharf.localhost")
            .await?;
        write_private(&token_file, &secret)?;
        Some(secret)
    } else {
        None
    };

    step(5, STEPS, "router");
    let first = with_local_cert(&cp.snapshot(), &tls)?;
    let router = Arc::new(
        wharf_router::Handle::start(
            wharf_router::Options {
                https: Some(a.https),
                http: a.http.0,
                internal: a.internal.0,
                admin: a.admin.0,
                threads: 0,
                ..wharf_router::Options::default()
            },
            first.router,
            shuttle.sink(),
        )
        .context("cannot start the router")?,
    );
    shuttle.apply(first.shuttle).context("log plan refused")?;
    // Canary verdicts: the router's abort events and per-side figures reach the control plane.
    cp.follow_router_events(router.events());
    let figures = Arc::downgrade(&router);
    cp.set_canary_figures(Arc::new(wharf_control::canary::FnFigures(
        move |app: &str| figures.upgrade()?.canary_figures(app),
    )));

    step(6, STEPS, "platform API");
    let listener = tokio::net::TcpListener::bind(a.api)
        .await
        .with_context(|| format!("cannot listen on {}", a.api))?;
    let api_addr = listener.local_addr()?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let api_router = cp.router();
    let mut stop_api = stop_rx.clone();
    let api = tokio::spawn(async move {
        axum::serve(listener, api_router)
            .with_graceful_shutdown(async move {
                let _ = stop_api.wait_for(|s| *s).await;
            })
            .await
    });

    // Every new snapshot goes to both planes; an invalid one never leaves the control plane.
    let follow = {
        let (cp, router, shuttle, tls) = (cp.clone(), router.clone(), shuttle.clone(), tls.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut snapshots = cp.snapshots();
            loop {
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { break },
                    _ = stop.wait_for(|s| *s) => break,
                }
                let current = snapshots.borrow_and_update().clone();
                match with_local_cert(&current, &tls) {
                    Ok(c) => {
                        let r = c.router.revision;
                        if let Err(e) = router.apply(c.router) {
                            tracing::error!(revision = r, error = %e, "router refused the snapshot");
                        }
                        if let Err(e) = shuttle.apply(c.shuttle) {
                            tracing::error!(revision = r, error = %e, "log shuttle refused the snapshot");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "snapshot with the local certificate did not validate")
                    }
                }
            }
        })
    };

    let https_port = a.https.port();
    eprintln!();
    eprintln!("Wharf is up.");
    eprintln!("  API          http://{api_addr}   (WHARF_API_URL)");
    eprintln!(
        "  apps         https://{{app}}-{{space}}.{}:{https_port}",
        a.domain
    );
    if let Some(h) = router.addrs().http {
        eprintln!("  http         http://{h} (redirects to HTTPS)");
    }
    if let Some(i) = router.addrs().internal {
        eprintln!("  internal     http://{i}");
    }
    if let Some(m) = router.addrs().admin {
        eprintln!("  metrics      http://{m}/metrics");
    }
    if let Some(r) = a.rendezvous.0 {
        eprintln!("  run          rendezvous://{r} (wharf run -a APP CMD; trusts WHARF_CA)");
    }
    eprintln!(
        "  local CA     {} (trust it: curl --cacert, NODE_EXTRA_CA_CERTS, WHARF_CA)",
        tls.ca_path.display()
    );
    match &new_token {
        Some(t) => {
            eprintln!("  admin token  {t}");
            eprintln!(
                "               (shown once; also in {}, mode 0600)",
                token_file.display()
            );
        }
        None => eprintln!("  admin token  in {}", token_file.display()),
    }
    eprintln!("  data         {}", data_dir.display());
    eprintln!("Ctrl-C stops everything; the data stays.");

    shutdown_signal().await;
    eprintln!("stopping: dynos, router, log shuttle …");
    let _ = stop_tx.send(true);
    let _ = stop_rx.wait_for(|s| *s).await;
    runtime.shutdown().await;
    router.shutdown();
    let _ = follow.await;
    let _ = api.await;
    shuttle.shutdown(Duration::from_secs(5)).await;
    cp.store().close().await;
    eprintln!("stopped.");
    Ok(ExitCode::SUCCESS)
}

/// The local CA and the wildcard certificate it signed for `*.{domain}`.
#[derive(Debug, Clone)]
struct LocalTls {
    ca_path: PathBuf,
    cert_pem: String,
    key_pem: String,
    domain: String,
}

fn ca_params() -> anyhow::Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Wharf local CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}

/// Made once in the data directory, reused after (so a trusted CA stays trusted).
fn local_tls(dir: &Path, domain: &str) -> anyhow::Result<LocalTls> {
    let (ca_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if !(ca_path.exists() && ca_key_path.exists()) {
        let key = rcgen::KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        std::fs::write(&ca_path, cert.pem())?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        // Leaves of an earlier CA are signed by nobody this CA's users trust.
        let _ = std::fs::remove_file(dir.join(format!("{domain}.pem")));
        let _ = std::fs::remove_file(dir.join("rendezvous.pem"));
    }
    let mut tls = LocalTls {
        ca_path,
        cert_pem: String::new(),
        key_pem: String::new(),
        domain: domain.to_owned(),
    };
    let (cert_pem, key_pem) = tls.leaf(dir, domain, &[&format!("*.{domain}"), domain])?;
    (tls.cert_pem, tls.key_pem) = (cert_pem, key_pem);
    Ok(tls)
}

impl LocalTls {
    /// A certificate for `names` (DNS names or IP addresses) signed by the local CA, kept in
    /// `dir` as `{stem}.pem` and `{stem}-key.pem`: (certificate, key) as PEM.
    fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> anyhow::Result<(String, String)> {
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}-key.pem")),
        );
        if !(cert_path.exists() && key_path.exists()) {
            let ca_key_path = self.ca_path.with_file_name("ca-key.pem");
            let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path)?)?;
            // The same subject and key as the stored CA certificate: what a leaf's issuer must match.
            let issuer = rcgen::Issuer::new(ca_params()?, ca_key);
            let key = rcgen::KeyPair::generate()?;
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let cert = rcgen::CertificateParams::new(names)?.signed_by(&key, &issuer)?;
            std::fs::write(&cert_path, cert.pem())?;
            write_private(&key_path, &key.serialize_pem())?;
        }
        Ok((
            std::fs::read_to_string(&cert_path)?,
            std::fs::read_to_string(&key_path)?,
        ))
    }
}

/// The control plane's snapshot plus the local wildcard certificate (the default when the
/// store has none), validated and compiled.
fn with_local_cert(
    v: &wharf_config::Validated,
    tls: &LocalTls,
) -> anyhow::Result<wharf_config::Compiled> {
    let mut s: Snapshot = (**v).clone();
    let has_default = s.certificates.iter().any(|c| c.default);
    s.certificates.push(Certificate {
        name: "wharf-up-local".into(),
        names: vec![format!("*.{}", tls.domain), tls.domain.clone()],
        cert_pem: Some(tls.cert_pem.clone()),
        key_pem: Some(tls.key_pem.clone()),
        cert_file: None,
        key_file: None,
        default: !has_default,
    });
    let valid = wharf_config::validate(s).map_err(|p| anyhow::anyhow!("{p}"))?;
    Ok(wharf_config::compile(&valid))
}
