//! Wharf's dyno runtimes: make what should run (releases × formation) run, and report what
//! runs.
//!
//! This crate owns the [`Runtime`] seam the control plane drives (`Arc<dyn Runtime>`) and its
//! two implementations:
//!
//! - [`local::LocalRuntime`], the embedded default of `wharf up`: dynos are child processes in
//!   their own process group, output line-split into the log shuttle, ports from a range, health
//!   checks, rolling deploys with rollback, crash restarts with back-off, one-off and scheduled
//!   dynos, and no orphans on shutdown.
//! - [`kubernetes::KubeRuntime`]: a namespace per space, a Deployment per process type, a Service
//!   per web process, Jobs for one-off dynos and `batch/v1` CronJobs for schedules, all applied
//!   server-side with a field manager; router backends follow EndpointSlices.
//!
//! Which one runs is configuration: [`settings::RuntimeSettings`] and [`settings::build`].
//!
//! ```no_run
//! # async fn demo(sink: wharf_runtime::Sink) {
//! use std::sync::Arc;
//! use wharf_runtime::{Runtime, local::{LocalConfig, LocalRuntime}};
//! let runtime: Arc<dyn Runtime> = Arc::new(LocalRuntime::new(LocalConfig::default(), sink));
//! runtime.converge(wharf_runtime::DesiredState::default()).await.unwrap();
//! runtime.shutdown().await;
//! # }
//! ```

pub mod cron;
pub mod kubernetes;
pub mod local;
pub mod procfile;
pub mod settings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
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
    /// This app's process types (entries of other apps are ignored).
    pub formation: Vec<Formation>,
}

/// Everything that should run. Converging is idempotent: the same state twice changes nothing.
/// An app missing from `apps` is stopped and everything it owned removed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredState {
    pub apps: Vec<DesiredApp>,
}

/// One dyno as the runtime sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DynoStatus {
    /// Unique for the runtime's life: during a rolling deploy two dynos named `web.1` exist.
    pub id: String,
    /// App key.
    pub app: String,
    /// `web.1`.
    pub name: String,
    pub process_type: String,
    pub release: u32,
    /// Only `up` dynos take traffic; a draining dyno is reported `down` while it finishes.
    pub state: DynoState,
    /// Where it listens (web dynos).
    pub address: Option<SocketAddr>,
    /// Microseconds since the epoch of the last state change.
    pub updated_at_us: i64,
    /// Crash restarts since the dyno last ran stably.
    pub restarts: u32,
}

impl DynoStatus {
    /// Add `{type}.1` as `idle` (no process behind it) for a scheduled process type waiting
    /// for its next firing, unless a dyno of that type is running now.
    pub(crate) fn add_idle(
        dynos: &mut Vec<DynoStatus>,
        app: &str,
        process_type: &str,
        release: u32,
    ) {
        if dynos
            .iter()
            .any(|d| d.app == app && d.process_type == process_type)
        {
            return;
        }
        dynos.push(DynoStatus {
            id: format!("idle:{app}:{process_type}"),
            app: app.to_owned(),
            name: format!("{process_type}.1"),
            process_type: process_type.to_owned(),
            release,
            state: wharf_config::DynoState::Idle,
            address: None,
            updated_at_us: 0,
            restarts: 0,
        });
    }
}

/// Something that happened, for the control plane to record (release status, dyno history).
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeEvent {
    /// A dyno changed state (`web.1` v3: starting → up).
    DynoState {
        app: String,
        dyno: String,
        release: u32,
        from: DynoState,
        to: DynoState,
    },
    /// A dyno exited on its own; it restarts after `restart_in_ms`.
    DynoCrashed {
        app: String,
        dyno: String,
        release: u32,
        exit_code: Option<i32>,
        restart_in_ms: u64,
    },
    /// Every process type of the release runs and is healthy.
    ReleaseUp { app: String, release: u32 },
    /// The release never became healthy: the runtime kept (or put back) the previous release's
    /// dynos. The control plane records `reason` on the release and marks it failed.
    ReleaseFailed {
        app: String,
        release: u32,
        rolled_back_to: Option<u32>,
        reason: String,
    },
    /// A scheduled process type fired a dyno.
    Scheduled {
        app: String,
        process_type: String,
        dyno: String,
    },
    /// A one-off or scheduled dyno exited.
    Exited {
        app: String,
        dyno: String,
        exit_code: Option<i32>,
    },
}

/// A one-off dyno (`wharf run`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunRequest {
    /// The command line, run by `sh -c` (local) or as the container's command (Kubernetes).
    pub command: String,
    /// Extra environment on top of the release's config vars.
    pub env: BTreeMap<String, String>,
    /// Dyno size; the process type's default when `None`.
    pub size: Option<String>,
}

/// A running one-off dyno: its output as it comes, then its exit code.
#[derive(Debug)]
pub struct RunHandle {
    /// `run.1`.
    pub dyno: String,
    /// stdout and stderr lines, in the order read; closed when the dyno ends.
    pub output: mpsc::Receiver<String>,
    /// The exit code (`None` if killed by a signal or the runtime could not tell).
    pub exit: oneshot::Receiver<Option<i32>>,
}

impl DesiredState {
    /// What a snapshot asks to run: every app with a current release, that release's artifact
    /// and config vars, and the app's formation entries. Apps without a release run nothing.
    pub fn from_snapshot(s: &wharf_config::Snapshot) -> DesiredState {
        let apps = s
            .apps
            .iter()
            .filter_map(|a| {
                let key = a.key();
                let version = a.release?;
                let release = s
                    .releases
                    .iter()
                    .find(|r| r.app == key && r.version == version)?;
                Some(DesiredApp {
                    name: a.name.clone(),
                    space: a.space.clone(),
                    release: version,
                    artifact: release.artifact.clone(),
                    config_vars: release.config_vars.clone(),
                    formation: s
                        .formation
                        .iter()
                        .filter(|f| f.app == key)
                        .cloned()
                        .collect(),
                    key,
                })
            })
            .collect();
        DesiredState { apps }
    }
}

impl RunHandle {
    /// Drain the output and wait for the exit code.
    pub async fn wait(mut self) -> (Vec<String>, Option<i32>) {
        let mut lines = Vec::new();
        while let Some(l) = self.output.recv().await {
            lines.push(l);
        }
        let code = self.exit.await.unwrap_or(None);
        (lines, code)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("app {0:?} is not running")]
    UnknownApp(String),
    #[error("app {app:?}: {message}")]
    Invalid { app: String, message: String },
    #[error("the runtime is shut down")]
    ShutDown,
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Failed(String),
}

/// The seam between the control plane and whatever runs dynos.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Move towards `desired`; returns once the change is under way (rollouts continue in the
    /// background, their outcome arrives as [`RuntimeEvent`]s).
    async fn converge(&self, desired: DesiredState) -> Result<(), RuntimeError>;
    /// Every dyno now, its state and address. Router backends are the `up` web dynos.
    fn dynos(&self) -> Vec<DynoStatus>;
    /// A receiver woken whenever any dyno changes state.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Release outcomes, crashes, schedules and exits as they happen.
    fn events(&self) -> broadcast::Receiver<RuntimeEvent>;
    /// Start a one-off dyno of `app` on its current release.
    async fn run(&self, app: &str, request: RunRequest) -> Result<RunHandle, RuntimeError>;
    /// Restart one dyno (`web.1`), a process type (`web`), or every dyno of the app (`None`).
    async fn restart(&self, app: &str, which: Option<&str>) -> Result<(), RuntimeError>;
    /// Stop everything, gracefully (SIGTERM, then SIGKILL after the grace period).
    async fn shutdown(&self);
}

/// Where runtimes send dyno output and platform lines (the log shuttle's sink).
pub type Sink = Arc<dyn LineSink>;

/// The up web dynos of every app, as the router's endpoint list.
pub fn router_endpoints(dynos: &[DynoStatus]) -> Vec<wharf_config::Endpoint> {
    dynos
        .iter()
        .filter(|d| d.process_type == "web" && d.state == DynoState::Up)
        .filter_map(|d| {
            Some(wharf_config::Endpoint {
                app: d.app.clone(),
                release: d.release,
                process: d.name.clone(),
                address: d.address?,
                state: DynoState::Up,
            })
        })
        .collect()
}

/// `{APPNAME}_SERVICE_HOST` / `_PORT` prefix for an app name (Kubernetes' own rule: upper case,
/// `-` becomes `_`).
pub fn discovery_prefix(app_name: &str) -> String {
    app_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Memory in MiB of a dyno size (the default size's when unknown).
pub fn size_memory_mib(size: &str) -> u32 {
    wharf_config::DYNO_SIZES
        .iter()
        .find(|(n, _)| *n == size)
        .map(|(_, m)| *m)
        .unwrap_or(512)
}

pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_state_from_a_snapshot() {
        let text = r#"
version = 1
[[spaces]]
name = "default"
[[apps]]
name = "api"
space = "default"
release = 2
[[apps]]
name = "idle"
space = "default"
[[releases]]
app = "api-default"
version = 1
artifact = { command = "old" }
[[releases]]
app = "api-default"
version = 2
artifact = { command = "python3 app.py" }
config_vars = { A = "1" }
[[formation]]
app = "api-default"
type = "web"
quantity = 2
"#;
        let snap = wharf_config::parse(text, wharf_config::Format::Toml).unwrap();
        let d = DesiredState::from_snapshot(&snap);
        assert_eq!(d.apps.len(), 1);
        let a = &d.apps[0];
        assert_eq!((a.key.as_str(), a.release), ("api-default", 2));
        assert_eq!(a.artifact, Artifact::Command("python3 app.py".into()));
        assert_eq!(a.config_vars["A"], "1");
        assert_eq!(a.formation.len(), 1);
        assert_eq!(a.formation[0].quantity, 2);
        assert_eq!(discovery_prefix("my-api"), "MY_API");
        assert_eq!(size_memory_mib("performance-l"), 14336);
    }
}
