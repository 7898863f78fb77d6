//! `wharf control`: the control plane on its own (API, store, snapshot feed for the planes,
//! and the dyno runtime: local processes, Kubernetes, or none).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use wharf_control::auth::Scope;
use wharf_control::logs::MemoryLogs;
use wharf_control::store::Store;
use wharf_control::{ControlPlane, NoRuntime, Settings};

use super::up_cmd::RuntimeKind;

/// Where `wharf control` runs dynos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlRuntime {
    /// Dynos are child processes of this one (their lines are kept for `wharf logs`).
    Local,
    /// Dynos are Deployments on the cluster of the current kubeconfig or service account.
    Kubernetes,
    /// No dynos: the API and the snapshot feed only.
    None,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Address the API listens on (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    /// Directory for the SQLite store and the bootstrap admin token.
    #[arg(long, env = "WHARF_DATA_DIR", default_value = "./wharf-data")]
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; SQLite in the data directory by default.
    #[arg(long, env = "WHARF_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Apps are served at `{app}-{space}.DOMAIN`.
    #[arg(long, default_value = "wharf.localhost")]
    pub domain: String,
    /// An admin token to accept (stored hashed). Without one, a fresh store gets a generated
    /// token written to DATA_DIR/admin-token (mode 0600).
    #[arg(long, env = "WHARF_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Base URL clients reach the API at (for log-session URLs); else the request's Host.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Allow plain http:// log drains (tests, private networks).
    #[arg(long)]
    pub allow_http_drains: bool,
    /// TLS rendezvous socket for attached one-off dynos (`heroku run`), e.g. 0.0.0.0:5001.
    #[arg(long, requires_all = ["rendezvous_cert", "rendezvous_key"])]
    pub rendezvous_listen: Option<SocketAddr>,
    /// PEM certificate (chain) of the rendezvous socket; clients must trust it.
    #[arg(long)]
    pub rendezvous_cert: Option<PathBuf>,
    /// PEM private key of the rendezvous socket.
    #[arg(long)]
    pub rendezvous_key: Option<PathBuf>,
    /// Host name clients reach the rendezvous socket at (the certificate must name it).
    #[arg(long, default_value = "127.0.0.1")]
    pub rendezvous_host: String,
    /// Where dynos run.
    #[arg(long, value_enum, default_value_t = ControlRuntime::Local, env = "WHARF_RUNTIME")]
    pub runtime: ControlRuntime,
    /// Ports local dynos listen on: START-END.
    #[arg(long, default_value = "20000-29999", value_parser = super::up_cmd::port_range)]
    pub dyno_ports: (u16, u16),
}

pub fn run(a: ControlArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(a))
}

async fn serve(a: ControlArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let url = match &a.database_url {
        Some(u) => u.clone(),
        None => format!("sqlite://{}", a.data_dir.join("control.db").display()),
    };
    let store = Store::open(&url).await.context("cannot open the store")?;
    let mut settings = Settings {
        domain: a.domain.clone(),
        public_url: a.public_url.clone(),
        ..Settings::default()
    };
    settings.logs.allow_http_drains = a.allow_http_drains;
    if let (Some(listen), Some(cert), Some(key)) =
        (a.rendezvous_listen, &a.rendezvous_cert, &a.rendezvous_key)
    {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        settings.rendezvous = Some(wharf_control::rendezvous::RendezvousConfig {
            listen,
            public_host: a.rendezvous_host.clone(),
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        });
    }
    let logs = Arc::new(MemoryLogs::default());
    let runtime: Arc<dyn wharf_runtime::Runtime> = match a.runtime {
        ControlRuntime::None => Arc::new(NoRuntime::default()),
        ControlRuntime::Local => start_runtime(RuntimeKind::Local, &a, &logs).await?,
        ControlRuntime::Kubernetes => start_runtime(RuntimeKind::Kubernetes, &a, &logs).await?,
    };
    let cp = ControlPlane::new(store, runtime.clone(), logs, settings)
        .await
        .context("cannot start the control plane")?;
    if let Some(t) = &a.admin_token {
        cp.ensure_token(t, Scope::admin(), "admin (--admin-token)")
            .await?;
    } else if !cp.has_tokens().await? {
        let secret = cp
            .create_token(Scope::admin(), "bootstrap admin", "admin@wharf.localhost")
            .await?;
        let path = a.data_dir.join("admin-token");
        write_private(&path, &secret)?;
        tracing::info!(path = %path.display(), "bootstrap admin token written");
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    eprintln!("wharf control listening on http://{addr}");
    tracing::info!(%addr, "control plane listening");
    axum::serve(listener, cp.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopping dynos");
    runtime.shutdown().await;
    cp.store().close().await;
    Ok(ExitCode::SUCCESS)
}

async fn start_runtime(
    kind: RuntimeKind,
    a: &ControlArgs,
    logs: &Arc<MemoryLogs>,
) -> anyhow::Result<Arc<dyn wharf_runtime::Runtime>> {
    wharf_runtime::settings::build(&kind.settings(a.dyno_ports), logs.clone())
        .await
        .context("cannot start the dyno runtime")
}

/// Create (or truncate) `path` readable by its owner only (0600): tokens, keys, snapshots.
pub(super) fn create_private(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn write_private(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    writeln!(create_private(path)?, "{secret}")?;
    Ok(())
}

pub(super) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
