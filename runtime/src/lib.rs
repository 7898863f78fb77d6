//! Wharf's dyno runtimes: make what should run (releases × formation) run, and report what
//! runs. [`Runtime`] is the seam the control plane drives; the local process runtime is the
//! embedded default, the Kubernetes runtime serves clusters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use wharf_config::{Artifact, DynoState, Formation, LineSink};

/// What one app should be running.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredApp {
    /// `{app}-{space}`.
    pub key: String,
    pub name: String,
    pub space: String,
    pub release: u32,
    pub artifact: Artifact,
    pub config_vars: BTreeMap<String, String>,
    pub formation: Vec<Formation>,
}

/// Everything that should run. Converging is idempotent: the same state twice changes nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredState {
    pub apps: Vec<DesiredApp>,
}

/// One dyno as the runtime sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DynoStatus {
    /// App key.
    pub app: String,
    /// `web.1`.
    pub name: String,
    pub process_type: String,
    pub release: u32,
    pub state: DynoState,
    /// Where it listens (web dynos).
    pub address: Option<SocketAddr>,
    /// Microseconds since the epoch of the last state change.
    pub updated_at_us: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("app {0:?} is not running")]
    UnknownApp(String),
    #[error("{0}")]
    Failed(String),
}

/// The seam between the control plane and whatever runs dynos.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Move towards `desired`; returns once the change is under way (rollouts continue).
    async fn converge(&self, desired: DesiredState) -> Result<(), RuntimeError>;
    /// Every dyno now, its state and address.
    fn dynos(&self) -> Vec<DynoStatus>;
    /// A receiver woken whenever any dyno changes state.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Restart one dyno (`web.1`), a process type (`web`), or every dyno of the app (`None`).
    async fn restart(&self, app: &str, which: Option<&str>) -> Result<(), RuntimeError>;
    /// Stop everything, gracefully (SIGTERM, then SIGKILL after the grace period).
    async fn shutdown(&self);
}

/// Where runtimes send dyno output and platform lines (the log shuttle's sink).
pub type Sink = Arc<dyn LineSink>;
