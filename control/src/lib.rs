//! Wharf's control plane: the platform API operators and Heroku/Akkeris clients drive, the store
//! it keeps (SQLite or PostgreSQL through sqlx), and the loop that turns stored state into the
//! next [`wharf_config::Snapshot`] for the router and the log shuttle and into the
//! [`DesiredState`] for the dyno [`Runtime`].
//!
//! This crate owns:
//! - [`api`]: the HTTP API (Heroku Platform API v3 shapes, Akkeris' spaces/sites/routes/filters),
//!   one module per resource, mounted by [`ControlPlane::router`];
//! - [`store`]: sqlx over SQLite or PostgreSQL, migrations, serialised write transactions;
//! - [`auth`]: hashed bearer tokens with admin / space / app scopes;
//! - [`error`]: the one mapping from errors to `{"id","message"}` responses;
//! - [`snapshot`]: store → `Snapshot` → `validate_update` → publish, inside the write transaction;
//! - [`logs`]: the [`LogSource`] seam log sessions read from (the shuttle implements it);
//! - [`openapi`]: the OpenAPI 3 document at `/openapi.json`, generated from the handlers;
//! - [`api::pipelines`]: pipelines, status-checked promotions (atomic, resumed after a restart);
//! - [`canary`]: canary releases that promote or abort themselves (router events, a timer kept
//!   in the store);
//! - [`audit`]: the trail of every change, also published as [`ControlEvent`]s;
//! - [`redact`]: secret-looking config values blanked (always in audit and events, in API
//!   answers for `socs` apps);
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//!
//! It does not depend on the router or the log shuttle: they follow
//! [`ControlPlane::snapshots`] in-process, or `GET /v1/snapshot?after=REVISION` over HTTP.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use wharf_control::{ControlPlane, NoRuntime, Settings, logs::MemoryLogs, store::Store};
//! let store = Store::open("sqlite:///tmp/wharf.db").await?;
//! let cp = ControlPlane::new(store, Arc::new(NoRuntime::default()), Arc::new(MemoryLogs::default()),
//!     Settings::default()).await?;
//! let admin = cp.create_token(wharf_control::auth::Scope::admin(), "ops", "ops@example.com").await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let _ = admin;
//! axum::serve(listener, cp.router()).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod audit;
pub mod auth;
pub mod canary;
pub mod error;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod redact;
pub mod rendezvous;
pub mod snapshot;
pub mod store;

use std::sync::{Arc, Weak};

use tokio::sync::watch;
use wharf_config::{Snapshot, Validated};
use wharf_runtime::{
    DesiredState, DynoStatus, RunHandle, RunRequest, Runtime, RuntimeError, RuntimeEvent,
};

pub use error::{ApiError, ApiResult};
pub use logs::{LogQuery, LogSource};

use crate::store::{Store, Write};

/// Platform-wide settings of one control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Apps are served at `{app}-{space}.{domain}`.
    pub domain: String,
    /// Router and log settings copied into every snapshot.
    pub router: wharf_config::RouterSettings,
    pub logs: wharf_config::LogSettings,
    /// The space `POST /apps` uses when the body names none (Heroku clients); created at start.
    pub default_space: String,
    /// Base URL clients reach this API at, for log-session URLs; else taken from `Host`.
    pub public_url: Option<String>,
    /// How long a log-session URL may be opened after it was created.
    pub log_session_ttl_secs: u64,
    /// Longest `GET /v1/snapshot` long-poll.
    pub max_poll_secs: u64,
    /// The TLS rendezvous socket for attached one-off dynos (`heroku run`); none: no attach.
    pub rendezvous: Option<rendezvous::RendezvousConfig>,
    /// Words that make a config var name secret-looking (matched within the name, any case).
    pub secret_words: Vec<String>,
    /// How often running canaries are checked against their period and minimum of requests.
    pub canary_tick_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            domain: "wharf.localhost".into(),
            router: Default::default(),
            logs: Default::default(),
            default_space: "default".into(),
            public_url: None,
            log_session_ttl_secs: 600,
            max_poll_secs: 60,
            rendezvous: None,
            secret_words: redact::DEFAULT_SECRET_WORDS
                .iter()
                .map(|w| (*w).to_owned())
                .collect(),
            canary_tick_ms: 1000,
        }
    }
}

/// What the control plane publishes as it happens ([`ControlPlane::events`]). Secrets are
/// already redacted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlEvent {
    /// A change, as recorded in the audit trail.
    Audit(audit::AuditEntry),
}

/// Faults a test injects to stop work half-way (as a crash or a failure would).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The promotion fails at this target (0-based): nothing may change.
    PromotionFailAt(usize),
    /// The process "dies" at this target: the promotion stays pending until a restart.
    PromotionCrashAt(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("store: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("the stored state is invalid: {0}")]
    Invalid(wharf_config::Problems),
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error(transparent)]
    Rendezvous(#[from] rendezvous::RendezvousError),
}

/// The control plane: cheap to clone; the axum state of every handler.
#[derive(Clone)]
pub struct ControlPlane(Arc<Inner>);

struct Inner {
    store: Store,
    runtime: Arc<dyn Runtime>,
    logs: Arc<dyn LogSource>,
    settings: Settings,
    snapshot: watch::Sender<Arc<Validated>>,
    rendezvous: Option<rendezvous::Rendezvous>,
    secrets: redact::Secrets,
    metrics: metrics::Metrics,
    events: tokio::sync::broadcast::Sender<ControlEvent>,
    figures: std::sync::RwLock<canary::FiguresSource>,
    fault: std::sync::Mutex<Option<Fault>>,
}

/// A reference that does not keep the control plane alive (its own background tasks).
#[derive(Clone)]
pub struct WeakControlPlane(Weak<Inner>);

impl std::fmt::Debug for WeakControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakControlPlane")
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("backend", &self.0.store.backend())
            .field("revision", &self.0.snapshot.borrow().revision)
            .finish()
    }
}

impl ControlPlane {
    /// Build from an opened store: make sure the default space exists, publish the snapshot of
    /// the stored state, converge the runtime to it (resuming after a restart), and follow the
    /// runtime's dyno changes into `Snapshot.endpoints`.
    pub async fn new(
        store: Store,
        runtime: Arc<dyn Runtime>,
        logs: Arc<dyn LogSource>,
        settings: Settings,
    ) -> Result<ControlPlane, ControlError> {
        let mut conn = store.pool().acquire().await?;
        let revision = store.revision().await?;
        let dynos = runtime.dynos();
        let current = snapshot::build(&mut conn, &settings, revision, &dynos).await?;
        let valid = wharf_config::validate(current).map_err(ControlError::Invalid)?;
        let desired = snapshot::desired(&mut conn).await?;
        drop(conn);
        let rendezvous = match &settings.rendezvous {
            Some(cfg) => Some(rendezvous::Rendezvous::start(cfg).await?),
            None => None,
        };
        let (tx, _) = watch::channel(Arc::new(valid));
        let secrets = redact::Secrets::new(&settings.secret_words);
        let cp = ControlPlane(Arc::new(Inner {
            store,
            runtime,
            logs,
            settings,
            snapshot: tx,
            rendezvous,
            secrets,
            metrics: metrics::Metrics::new(),
            events: tokio::sync::broadcast::channel(1024).0,
            figures: std::sync::RwLock::new(Arc::new(canary::NoFigures)),
            fault: std::sync::Mutex::new(None),
        }));
        let default_space = cp.0.settings.default_space.clone();
        api::spaces::ensure_space(&cp, &default_space).await?;
        if let Err(e) = cp.0.runtime.converge(desired).await {
            tracing::warn!(error = %e, "runtime did not accept the stored desired state");
        }
        cp.follow_runtime();
        let resumed = api::pipelines::resume_pending(&cp).await?;
        if resumed > 0 {
            tracing::info!(resumed, "promotions interrupted half-way were run again");
        }
        cp.tick_canaries();
        Ok(cp)
    }

    /// The secret-name matcher of this control plane.
    pub fn secrets(&self) -> &redact::Secrets {
        &self.0.secrets
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.0.metrics
    }

    /// Every change as it happens (audit entries, redacted).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<ControlEvent> {
        self.0.events.subscribe()
    }

    pub(crate) fn publish(&self, e: ControlEvent) {
        let _ = self.0.events.send(e);
    }

    /// Where canary figures come from (the router's handle in `wharf up`).
    pub fn set_canary_figures(&self, source: canary::FiguresSource) {
        if let Ok(mut f) = self.0.figures.write() {
            *f = source;
        }
    }

    /// The router's figures for an app's canary: `[stable, canary]` and whether it aborted.
    pub fn canary_figures(&self, app: &str) -> Option<([wharf_config::SideFigures; 2], bool)> {
        self.0.figures.read().ok()?.figures(app)
    }

    /// Act on the router's events (a canary aborted) for as long as this control plane lives.
    pub fn follow_router_events(
        &self,
        events: tokio::sync::broadcast::Receiver<wharf_config::RouterEvent>,
    ) {
        canary::follow_router(self, events);
    }

    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Option<Fault>) {
        if let Ok(mut f) = self.0.fault.lock() {
            *f = fault;
        }
    }

    pub(crate) fn fault(&self) -> Option<Fault> {
        self.0.fault.lock().ok().and_then(|f| *f)
    }

    pub fn downgrade(&self) -> WeakControlPlane {
        WeakControlPlane(Arc::downgrade(&self.0))
    }

    pub fn upgrade(weak: &WeakControlPlane) -> Option<ControlPlane> {
        weak.0.upgrade().map(ControlPlane)
    }

    /// Check running canaries every `canary_tick_ms` while this control plane lives.
    fn tick_canaries(&self) {
        let weak = self.downgrade();
        let every = std::time::Duration::from_millis(self.0.settings.canary_tick_ms.max(10));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(cp) = ControlPlane::upgrade(&weak) else {
                    break;
                };
                if let Err(e) = canary::tick(&cp).await {
                    tracing::warn!(error = %e, "canary check failed");
                }
            }
        });
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.0.runtime
    }

    pub fn rendezvous(&self) -> Option<&rendezvous::Rendezvous> {
        self.0.rendezvous.as_ref()
    }

    pub fn log_source(&self) -> &Arc<dyn LogSource> {
        &self.0.logs
    }

    /// The current snapshot, and every next one (in-process distribution).
    pub fn snapshots(&self) -> watch::Receiver<Arc<Validated>> {
        self.0.snapshot.subscribe()
    }

    /// The snapshot now.
    pub fn snapshot(&self) -> Arc<Validated> {
        self.0.snapshot.borrow().clone()
    }

    /// The whole API as an axum router (state applied).
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Create a token; returns the secret (shown once; only its hash is stored).
    pub async fn create_token(
        &self,
        scope: auth::Scope,
        description: &str,
        email: &str,
    ) -> Result<String, ControlError> {
        let (_, secret) = api::tokens::insert(self, &scope, description, email).await?;
        Ok(secret)
    }

    /// Store a token whose secret the operator chose (e.g. `--admin-token`), unless stored.
    pub async fn ensure_token(
        &self,
        secret: &str,
        scope: auth::Scope,
        description: &str,
    ) -> Result<(), ControlError> {
        api::tokens::ensure(self, secret, &scope, description).await?;
        Ok(())
    }

    /// Whether any token exists (a fresh store needs a bootstrap admin token).
    pub async fn has_tokens(&self) -> Result<bool, ControlError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
            .fetch_one(self.store().pool())
            .await?;
        Ok(n > 0)
    }

    /// Begin a write (serialised; revision bumped).
    pub(crate) async fn begin(&self) -> ApiResult<Write> {
        Ok(self.0.store.begin_write().await?)
    }

    /// Build the next snapshot inside the write, validate it against the published one, and
    /// only then commit and publish; when `converge`, hand the runtime its new desired state.
    /// An invalid result rolls the write back and answers 422 with every problem.
    pub(crate) async fn commit(&self, mut w: Write, converge: bool) -> ApiResult<()> {
        let dynos = self.0.runtime.dynos();
        let next = snapshot::build(&mut w.tx, &self.0.settings, w.revision, &dynos).await?;
        let prev = self.snapshot();
        let valid = wharf_config::validate_update(&prev, next).map_err(ApiError::Problems)?;
        let desired = if converge {
            Some(snapshot::desired(&mut w.tx).await?)
        } else {
            None
        };
        let Write {
            tx,
            revision,
            _guard,
        } = w;
        tx.commit().await?;
        tracing::debug!(revision, "snapshot published");
        self.0.snapshot.send_replace(Arc::new(valid));
        if let Some(d) = desired
            && let Err(e) = self.0.runtime.converge(d).await
        {
            tracing::warn!(error = %e, "runtime converge failed; the store keeps the change");
        }
        drop(_guard);
        Ok(())
    }

    /// Re-publish when dynos change (addresses become endpoints). Holds only a weak reference.
    fn follow_runtime(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.0);
        let mut changes = self.0.runtime.changes();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else { break };
                let cp = ControlPlane(inner);
                let result = async {
                    let w = cp.begin().await?;
                    cp.commit(w, false).await
                }
                .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not publish dyno changes");
                }
            }
        });
    }
}

/// A runtime that runs nothing: for a control plane whose dynos run elsewhere, and tests.
#[derive(Debug)]
pub struct NoRuntime {
    changes: watch::Sender<u64>,
    events: tokio::sync::broadcast::Sender<RuntimeEvent>,
    desired: std::sync::Mutex<DesiredState>,
}

impl Default for NoRuntime {
    fn default() -> Self {
        NoRuntime {
            changes: watch::channel(0).0,
            events: tokio::sync::broadcast::channel(16).0,
            desired: Default::default(),
        }
    }
}

impl NoRuntime {
    /// The last desired state handed over.
    pub fn desired(&self) -> DesiredState {
        self.desired.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Runtime for NoRuntime {
    async fn converge(&self, desired: DesiredState) -> Result<(), RuntimeError> {
        if let Ok(mut d) = self.desired.lock() {
            *d = desired;
        }
        Ok(())
    }
    fn dynos(&self) -> Vec<DynoStatus> {
        Vec::new()
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
    fn events(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
    async fn run(&self, app: &str, _request: RunRequest) -> Result<RunHandle, RuntimeError> {
        Err(RuntimeError::UnknownApp(app.to_owned()))
    }
    async fn restart(&self, _app: &str, _which: Option<&str>) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn shutdown(&self) {}
}

/// The desired state for `snapshot` without a store (tests, tooling).
pub fn empty_snapshot(settings: &Settings) -> Snapshot {
    let mut s = Snapshot::empty(&settings.domain);
    s.router = settings.router.clone();
    s.logs = settings.logs.clone();
    s
}
