//! The local process runtime: dynos are child processes of this one, each in its own process
//! group so a whole dyno (shell, app, anything it forked) is signalled and reaped as one.
//!
//! - **Converge** computes a [`Spec`] per process type (command from the formation or the slug's
//!   Procfile, working directory, config vars, health check) and hands the app to its own
//!   reconciler task, so rollouts of one app are serialised and different apps never wait on
//!   each other.
//! - **Web deploys roll**: per index, start the new dyno, wait until its health check passes
//!   (HTTP path or TCP connect; the boot timeout kills it, Heroku's R10), publish it `up`, then
//!   report the old one `down` (router and service proxy stop sending to it), let it drain,
//!   SIGTERM its group, SIGKILL after the grace period. A release that never becomes healthy is
//!   rolled back: dynos already replaced are replaced again by the previous spec, the failure is
//!   an [`RuntimeEvent::ReleaseFailed`] and the spec is not retried until it changes.
//! - **Crashes** restart at once, then after a growing back-off capped at 20 minutes; a dyno that
//!   ran longer than `stable_after` starts counting from zero again.
//! - **Discovery**: every app with a web process gets a stable *service port* on which a small
//!   TCP proxy forwards to its up web dynos; other apps of the space get
//!   `{APPNAME}_SERVICE_HOST`/`_SERVICE_PORT` pointing there.
//! - **Schedules**: a per-process-type task checks the cron expression at each minute boundary
//!   of the (injectable) clock and starts a one-shot dyno.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wharf_config::{Artifact, DynoState, HealthCheck, LogLine, Source};

use crate::cron::Cron;
use crate::{
    DesiredApp, DesiredState, DynoStatus, RunHandle, RunRequest, Runtime, RuntimeError,
    RuntimeEvent, Sink, discovery_prefix, now_us,
};

/// Unix seconds now, for schedules; tests inject a shifted clock.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Settings of the local runtime. Every duration has Heroku's value as its default.
#[derive(Clone)]
pub struct LocalConfig {
    /// Ports handed to dynos (`PORT`) and service proxies; each is checked free before use.
    pub ports: Range<u16>,
    /// Address dynos are reached on.
    pub host: IpAddr,
    /// A web dyno must pass its health check within this (R10 boot timeout).
    pub boot_timeout: Duration,
    /// Between SIGTERM and SIGKILL.
    pub grace_period: Duration,
    /// How long a dyno taken out of the router keeps running before SIGTERM.
    pub drain_period: Duration,
    /// Delay of the second crash restart in a row (the first is immediate); doubles each time.
    pub backoff_initial: Duration,
    /// Back-off cap (Heroku: 20 minutes).
    pub backoff_max: Duration,
    /// A dyno that ran this long before crashing restarts at once again.
    pub stable_after: Duration,
    /// Between health check attempts.
    pub health_interval: Duration,
    /// Shell that runs commands (`sh -c`).
    pub shell: String,
    /// Run a service proxy per web app for discovery (`{APP}_SERVICE_PORT`).
    pub service_proxies: bool,
    /// Clock for schedules (Unix seconds).
    pub clock: Clock,
    /// How often schedules look at the clock.
    pub schedule_tick: Duration,
}

impl fmt::Debug for LocalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalConfig")
            .field("ports", &self.ports)
            .field("host", &self.host)
            .field("boot_timeout", &self.boot_timeout)
            .field("grace_period", &self.grace_period)
            .field("drain_period", &self.drain_period)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("shell", &self.shell)
            .finish_non_exhaustive()
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            ports: 20000..21000,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            boot_timeout: Duration::from_secs(60),
            grace_period: Duration::from_secs(30),
            drain_period: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(20 * 60),
            stable_after: Duration::from_secs(10 * 60),
            health_interval: Duration::from_millis(250),
            shell: "sh".to_owned(),
            service_proxies: true,
            clock: Arc::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0)
            }),
            schedule_tick: Duration::from_secs(1),
        }
    }
}

/// Back-off before restart number `n` (1-based) of a crashing dyno: 0, then `initial`, doubling,
/// capped at `max`.
pub fn backoff(n: u32, initial: Duration, max: Duration) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(n - 2).unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

/// How one process type of one release runs. Two dynos with equal specs are interchangeable;
/// a deploy is a change of spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub app: String,
    pub app_name: String,
    pub space: String,
    pub release: u32,
    pub process_type: String,
    pub command: String,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// Web dynos always have one (TCP on `PORT` by default).
    pub health: Option<HealthCheck>,
}

impl Spec {
    fn is_web(&self) -> bool {
        self.process_type == "web"
    }
}

/// Build the spec of every process type of `app` (reads the slug's Procfile).
pub fn specs_for(app: &DesiredApp) -> Result<Vec<(wharf_config::Formation, Arc<Spec>)>, String> {
    let procfile = match &app.artifact {
        Artifact::Slug(dir) => {
            let path = PathBuf::from(dir).join("Procfile");
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(crate::procfile::parse(&text)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        _ => None,
    };
    let cwd = match &app.artifact {
        Artifact::Slug(dir) => Some(PathBuf::from(dir)),
        _ => None,
    };
    let mut out = Vec::new();
    for f in app.formation.iter().filter(|f| f.app == app.key) {
        let command = match (&f.command, &app.artifact, &procfile) {
            (Some(c), _, _) => c.clone(),
            (None, _, Some(p)) if p.contains_key(&f.process_type) => p[&f.process_type].clone(),
            (None, Artifact::Command(c), _) if f.process_type == "web" => c.clone(),
            (None, Artifact::Image(i), _) => {
                return Err(format!(
                    "the local runtime cannot run image {i:?}; give the {} process a command",
                    f.process_type
                ));
            }
            _ => {
                return Err(format!(
                    "no command for process type {:?} (no formation command, no Procfile entry)",
                    f.process_type
                ));
            }
        };
        let health = if f.process_type == "web" {
            Some(f.health_check.clone().unwrap_or(HealthCheck::Tcp))
        } else {
            None
        };
        out.push((
            f.clone(),
            Arc::new(Spec {
                app: app.key.clone(),
                app_name: app.name.clone(),
                space: app.space.clone(),
                release: app.release,
                process_type: f.process_type.clone(),
                command,
                cwd: cwd.clone(),
                env: app.config_vars.clone(),
                health,
            }),
        ));
    }
    Ok(out)
}

struct Metrics {
    registry: Registry,
    starts: IntCounterVec,
    crashes: IntCounterVec,
    deploys: IntCounterVec,
    dynos: IntGaugeVec,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let starts = IntCounterVec::new(
            Opts::new("wharf_runtime_dyno_starts_total", "Dyno processes started"),
            &["process_type"],
        )
        .expect("static metric");
        let crashes = IntCounterVec::new(
            Opts::new(
                "wharf_runtime_dyno_crashes_total",
                "Dynos that exited on their own or failed to boot",
            ),
            &["process_type"],
        )
        .expect("static metric");
        let deploys = IntCounterVec::new(
            Opts::new("wharf_runtime_deploys_total", "Web rollouts by outcome"),
            &["outcome"],
        )
        .expect("static metric");
        let dynos = IntGaugeVec::new(
            Opts::new("wharf_runtime_dynos", "Dynos known to the runtime by state"),
            &["state"],
        )
        .expect("static metric");
        for c in [&starts, &crashes, &deploys] {
            let _ = registry.register(Box::new(c.clone()));
        }
        let _ = registry.register(Box::new(dynos.clone()));
        Metrics {
            registry,
            starts,
            crashes,
            deploys,
            dynos,
        }
    }
}

fn state_str(s: DynoState) -> &'static str {
    match s {
        DynoState::Starting => "starting",
        DynoState::Up => "up",
        DynoState::Crashed => "crashed",
        DynoState::Idle => "idle",
        DynoState::Down => "down",
    }
}

struct DynoRec {
    id: u64,
    spec: Arc<Spec>,
    name: String,
    index: u32,
    state: DynoState,
    port: Option<u16>,
    pgid: Option<i32>,
    updated_at_us: i64,
    restarts: u32,
    /// Taken out of service: draining or being stopped.
    stopping: bool,
    /// One-off or scheduled: never restarted, not part of the formation.
    oneshot: bool,
    token: CancellationToken,
    restart: Arc<Notify>,
}

struct AppRt {
    desired: DesiredApp,
    specs: Vec<(wharf_config::Formation, Arc<Spec>)>,
    /// Per process type, the spec last proven healthy.
    good: BTreeMap<String, Arc<Spec>>,
    /// Specs that failed to become healthy: not retried until the desired spec changes.
    failed: Vec<Arc<Spec>>,
    kick: Arc<Notify>,
    token: CancellationToken,
    service: Option<u16>,
    schedules: BTreeMap<String, (String, CancellationToken)>,
    run_counter: u32,
    /// A restart of the web process was asked: replace every web dyno, rolling.
    roll_restart: bool,
}

#[derive(Default)]
struct State {
    apps: BTreeMap<String, AppRt>,
    dynos: BTreeMap<u64, DynoRec>,
    ports: BTreeSet<u16>,
    next_port: u16,
    next_id: u64,
    shut: bool,
}

struct Shared {
    cfg: LocalConfig,
    sink: Sink,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    events: broadcast::Sender<RuntimeEvent>,
    metrics: Metrics,
    root: CancellationToken,
    tasks: TaskTracker,
}

/// The local process runtime. Cheap to share: wrap it in an `Arc<dyn Runtime>`.
pub struct LocalRuntime {
    sh: Arc<Shared>,
}

impl fmt::Debug for LocalRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRuntime")
            .field("config", &self.sh.cfg)
            .finish_non_exhaustive()
    }
}

impl LocalRuntime {
    /// A runtime with nothing running yet. Must be created inside a tokio runtime.
    pub fn new(cfg: LocalConfig, sink: Sink) -> LocalRuntime {
        let (changes, _) = watch::channel(0);
        let (events, _) = broadcast::channel(1024);
        let state = State {
            next_port: cfg.ports.start,
            next_id: 1,
            ..State::default()
        };
        LocalRuntime {
            sh: Arc::new(Shared {
                cfg,
                sink,
                state: Mutex::new(state),
                changes,
                events,
                metrics: Metrics::new(),
                root: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// This runtime's Prometheus metrics.
    pub fn registry(&self) -> &Registry {
        &self.sh.metrics.registry
    }

    /// The stable service address of an app's web process (what `{APP}_SERVICE_PORT` points to).
    pub fn service_address(&self, app: &str) -> Option<SocketAddr> {
        let st = self.sh.state.lock();
        let port = st.apps.get(app)?.service?;
        Some(SocketAddr::new(self.sh.cfg.host, port))
    }

    /// Process group ids of every live dyno (for operators and the no-orphans test).
    pub fn process_groups(&self) -> Vec<i32> {
        self.sh
            .state
            .lock()
            .dynos
            .values()
            .filter_map(|d| d.pgid)
            .collect()
    }
}

impl Drop for LocalRuntime {
    /// A safety net for a runtime dropped without [`Runtime::shutdown`]: kill every group.
    fn drop(&mut self) {
        self.sh.root.cancel();
        for pgid in self.process_groups() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Shared {
    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        let st = self.state.lock();
        for s in [
            DynoState::Starting,
            DynoState::Up,
            DynoState::Crashed,
            DynoState::Down,
        ] {
            let n = st.dynos.values().filter(|d| d.state == s).count();
            self.metrics
                .dynos
                .with_label_values(&[state_str(s)])
                .set(n as i64);
        }
    }

    fn emit(&self, e: RuntimeEvent) {
        debug!(event = ?e, "runtime event");
        let _ = self.events.send(e);
    }

    fn platform_line(&self, spec: &Spec, dyno: &str, line: String) {
        self.sink.send(LogLine {
            app: spec.app.as_str().into(),
            space: spec.space.as_str().into(),
            source: Source::Heroku,
            process: dyno.into(),
            timestamp_us: now_us(),
            line,
        });
    }

    fn set_state(&self, id: u64, to: DynoState) {
        let change = {
            let mut st = self.state.lock();
            let Some(d) = st.dynos.get_mut(&id) else {
                return;
            };
            let from = d.state;
            if from == to {
                return;
            }
            d.state = to;
            d.updated_at_us = now_us();
            (d.spec.clone(), d.name.clone(), from)
        };
        let (spec, name, from) = change;
        self.platform_line(
            &spec,
            &name,
            format!(
                "State changed from {} to {}",
                state_str(from),
                state_str(to)
            ),
        );
        self.emit(RuntimeEvent::DynoState {
            app: spec.app.clone(),
            dyno: name,
            release: spec.release,
            from,
            to,
        });
        self.bump();
    }

    /// A free port from the range, checked by binding it.
    fn alloc_port(st: &mut State, cfg: &LocalConfig) -> Option<(u16, std::net::TcpListener)> {
        let len = cfg.ports.end.saturating_sub(cfg.ports.start);
        for _ in 0..len {
            let p = st.next_port;
            st.next_port = if p + 1 >= cfg.ports.end {
                cfg.ports.start
            } else {
                p + 1
            };
            if st.ports.contains(&p) {
                continue;
            }
            if let Ok(l) = std::net::TcpListener::bind((cfg.host, p)) {
                st.ports.insert(p);
                return Some((p, l));
            }
        }
        None
    }

    /// `{APP}_SERVICE_HOST/PORT` of every other app in `spec`'s space.
    fn discovery(&self, spec: &Spec) -> BTreeMap<String, String> {
        let st = self.state.lock();
        let mut env = BTreeMap::new();
        for a in st.apps.values() {
            if a.desired.space != spec.space || a.desired.key == spec.app {
                continue;
            }
            if let Some(port) = a.service {
                let p = discovery_prefix(&a.desired.name);
                env.insert(format!("{p}_SERVICE_HOST"), self.cfg.host.to_string());
                env.insert(format!("{p}_SERVICE_PORT"), port.to_string());
            }
        }
        env
    }

    /// Register and start a dyno; returns its id.
    fn start_dyno(
        self: &Arc<Self>,
        spec: Arc<Spec>,
        index: u32,
        oneshot: Option<OneShot>,
    ) -> Result<u64, RuntimeError> {
        let (id, name) = {
            let mut st = self.state.lock();
            if st.shut {
                return Err(RuntimeError::ShutDown);
            }
            // A rollout still running for an app that was just removed starts nothing.
            if !st.apps.contains_key(&spec.app) {
                return Err(RuntimeError::UnknownApp(spec.app.clone()));
            }
            let port = if spec.is_web() && oneshot.is_none() {
                match Self::alloc_port(&mut st, &self.cfg) {
                    Some((p, _listener)) => Some(p),
                    None => return Err(RuntimeError::Failed("no free port in the range".into())),
                }
            } else {
                None
            };
            let id = st.next_id;
            st.next_id += 1;
            let name = format!("{}.{index}", spec.process_type);
            st.dynos.insert(
                id,
                DynoRec {
                    id,
                    spec: spec.clone(),
                    name: name.clone(),
                    index,
                    state: DynoState::Starting,
                    port,
                    pgid: None,
                    updated_at_us: now_us(),
                    restarts: 0,
                    stopping: false,
                    oneshot: oneshot.is_some(),
                    token: self.root.child_token(),
                    restart: Arc::new(Notify::new()),
                },
            );
            (id, name)
        };
        debug!(app = %spec.app, dyno = %name, release = spec.release, "starting dyno");
        self.bump();
        let sh = self.clone();
        self.tasks
            .spawn(async move { supervise(sh, id, oneshot).await });
        Ok(id)
    }

    /// Take a dyno out of service: report it `down` now, stop it after the drain period.
    fn stop_dyno(self: &Arc<Self>, id: u64, drain: bool) {
        let token = {
            let mut st = self.state.lock();
            let Some(d) = st.dynos.get_mut(&id) else {
                return;
            };
            if d.stopping {
                return;
            }
            d.stopping = true;
            d.token.clone()
        };
        self.set_state(id, DynoState::Down);
        let delay = if drain {
            self.cfg.drain_period
        } else {
            Duration::ZERO
        };
        let root = self.root.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = root.cancelled() => {}
            }
            token.cancel();
        });
    }

    /// Wait until dyno `id` is up; an error if it crashes, fails to boot or vanishes first.
    async fn wait_up(&self, id: u64) -> Result<(), String> {
        let mut rx = self.changes.subscribe();
        let deadline = self.cfg.boot_timeout + Duration::from_secs(10);
        let wait = async {
            loop {
                {
                    let st = self.state.lock();
                    match st.dynos.get(&id) {
                        None => return Err("the dyno was stopped while booting".to_owned()),
                        Some(d) if d.restarts > 0 || d.state == DynoState::Crashed => {
                            return Err(format!(
                                "{} crashed or failed its health check within the boot timeout",
                                d.name
                            ));
                        }
                        Some(d) if d.state == DynoState::Up => return Ok(()),
                        Some(_) => {}
                    }
                }
                if rx.changed().await.is_err() {
                    return Err("runtime stopped".to_owned());
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(deadline, wait) => r.unwrap_or_else(|_| Err("boot timeout".to_owned())),
            _ = self.root.cancelled() => Err("runtime stopped".to_owned()),
        }
    }

    fn live(&self, app: &str, process_type: &str) -> Vec<(u64, u32, Arc<Spec>)> {
        let st = self.state.lock();
        let mut v: Vec<_> = st
            .dynos
            .values()
            .filter(|d| {
                d.spec.app == app
                    && d.spec.process_type == process_type
                    && !d.stopping
                    && !d.oneshot
            })
            .map(|d| (d.id, d.index, d.spec.clone()))
            .collect();
        v.sort_by_key(|(id, index, _)| (*index, *id));
        v
    }
}

/// Output plumbing of a one-shot dyno.
struct OneShot {
    output: Option<mpsc::Sender<String>>,
    exit: Option<oneshot::Sender<Option<i32>>>,
}

enum Outcome {
    Exited(Option<i32>),
    BootTimeout,
    Stop,
    Restart,
}

fn spawn_child(
    sh: &Shared,
    spec: &Spec,
    name: &str,
    port: Option<u16>,
    extra: &BTreeMap<String, String>,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(&sh.cfg.shell);
    cmd.arg("-c").arg(&spec.command);
    cmd.env_clear();
    for k in ["PATH", "HOME", "LANG", "TMPDIR", "TZ"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    cmd.envs(&spec.env);
    cmd.envs(sh.discovery(spec));
    cmd.envs(extra);
    if let Some(p) = port {
        cmd.env("PORT", p.to_string());
    }
    cmd.env("DYNO", name);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

fn pump<R>(
    sh: &Arc<Shared>,
    reader: R,
    spec: Arc<Spec>,
    name: String,
    out: Option<mpsc::Sender<String>>,
) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let sink = sh.sink.clone();
    sh.tasks.spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        let mut stalled = false;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    // The caller gets every line while it keeps reading; one that stops
                    // reading for a second only gets what fits, so the dyno never blocks.
                    if let Some(o) = &out {
                        if stalled {
                            let _ = o.try_send(line.clone());
                        } else if tokio::time::timeout(Duration::from_secs(1), o.send(line.clone()))
                            .await
                            .is_err()
                        {
                            stalled = true;
                        }
                    }
                    sink.send(LogLine {
                        app: spec.app.as_str().into(),
                        space: spec.space.as_str().into(),
                        source: Source::App,
                        process: name.as_str().into(),
                        timestamp_us: now_us(),
                        line,
                    });
                }
            }
        }
    })
}

async fn healthy(addr: SocketAddr, check: &HealthCheck) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        match check {
            HealthCheck::Tcp => Some(true),
            HealthCheck::Http { path } => {
                let req = format!(
                    "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: wharf-health\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = [0u8; 64];
                let mut n = 0;
                while n < 12 {
                    let r = s.read(&mut buf[n..]).await.ok()?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
                Some((200..400).contains(&code))
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn wait_healthy(
    addr: SocketAddr,
    check: &HealthCheck,
    every: Duration,
    within: Duration,
) -> bool {
    let start = Instant::now();
    loop {
        if healthy(addr, check).await {
            return true;
        }
        if start.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

fn signal_group(pgid: Option<i32>, sig: Signal) {
    if let Some(p) = pgid {
        let _ = killpg(Pid::from_raw(p), sig);
    }
}

/// Run one dyno until it is stopped (or, for a one-shot, until it exits).
async fn supervise(sh: Arc<Shared>, id: u64, mut oneshot: Option<OneShot>) {
    let Some((spec, name, port, token, restart)) = ({
        let st = sh.state.lock();
        st.dynos.get(&id).map(|d| {
            (
                d.spec.clone(),
                d.name.clone(),
                d.port,
                d.token.clone(),
                d.restart.clone(),
            )
        })
    }) else {
        return;
    };
    let addr = port.map(|p| SocketAddr::new(sh.cfg.host, p));
    let mut restarts = 0u32;
    let extra = BTreeMap::new();
    let final_code: Option<i32> = loop {
        if token.is_cancelled() {
            break None;
        }
        sh.set_state(id, DynoState::Starting);
        sh.platform_line(
            &spec,
            &name,
            format!("Starting process with command `{}`", spec.command),
        );
        sh.metrics
            .starts
            .with_label_values(&[spec.process_type.as_str()])
            .inc();
        let started = Instant::now();
        let (outcome, pgid, readers) = match spawn_child(&sh, &spec, &name, port, &extra) {
            Err(e) => {
                sh.platform_line(&spec, &name, format!("Error: cannot start process: {e}"));
                (Outcome::Exited(None), None, Vec::new())
            }
            Ok(mut child) => {
                let pgid = child.id().map(|p| p as i32);
                if let Some(d) = sh.state.lock().dynos.get_mut(&id) {
                    d.pgid = pgid;
                }
                let out = oneshot.as_ref().and_then(|o| o.output.clone());
                let mut readers = Vec::new();
                if let Some(o) = child.stdout.take() {
                    readers.push(pump(&sh, o, spec.clone(), name.clone(), out.clone()));
                }
                if let Some(e) = child.stderr.take() {
                    readers.push(pump(&sh, e, spec.clone(), name.clone(), out));
                }
                let boot = async {
                    match (&spec.health, addr) {
                        (Some(check), Some(addr)) => {
                            if wait_healthy(
                                addr,
                                check,
                                sh.cfg.health_interval,
                                sh.cfg.boot_timeout,
                            )
                            .await
                            {
                                None
                            } else {
                                Some(Outcome::BootTimeout)
                            }
                        }
                        _ => None,
                    }
                };
                let booted = tokio::select! {
                    r = boot => r,
                    s = child.wait() => Some(Outcome::Exited(s.ok().and_then(|s| s.code()))),
                    _ = token.cancelled() => Some(Outcome::Stop),
                    _ = restart.notified() => Some(Outcome::Restart),
                };
                let outcome = match booted {
                    Some(o) => o,
                    None => {
                        if !token.is_cancelled() {
                            sh.set_state(id, DynoState::Up);
                        }
                        tokio::select! {
                            s = child.wait() => Outcome::Exited(s.ok().and_then(|s| s.code())),
                            _ = token.cancelled() => Outcome::Stop,
                            _ = restart.notified() => Outcome::Restart,
                        }
                    }
                };
                match outcome {
                    Outcome::Stop | Outcome::Restart => {
                        sh.platform_line(
                            &spec,
                            &name,
                            "Stopping all processes with SIGTERM".into(),
                        );
                        signal_group(pgid, Signal::SIGTERM);
                        let status = match tokio::time::timeout(sh.cfg.grace_period, child.wait())
                            .await
                        {
                            Ok(s) => s.ok().and_then(|s| s.code()),
                            Err(_) => {
                                sh.platform_line(&spec, &name, format!(
                                        "Error R12 (Exit timeout) -> At least one process failed to exit within {} seconds of SIGTERM",
                                        sh.cfg.grace_period.as_secs()
                                    ));
                                sh.platform_line(
                                    &spec,
                                    &name,
                                    "Stopping all processes with SIGKILL".into(),
                                );
                                signal_group(pgid, Signal::SIGKILL);
                                child.wait().await.ok().and_then(|s| s.code())
                            }
                        };
                        sh.platform_line(
                            &spec,
                            &name,
                            match status {
                                Some(c) => format!("Process exited with status {c}"),
                                None => "Process exited".to_owned(),
                            },
                        );
                    }
                    Outcome::BootTimeout => {
                        sh.platform_line(&spec, &name, format!(
                            "Error R10 (Boot timeout) -> Web process failed to pass its health check within {} seconds of launch",
                            sh.cfg.boot_timeout.as_secs()
                        ));
                        sh.platform_line(&spec, &name, "Stopping process with SIGKILL".into());
                        signal_group(pgid, Signal::SIGKILL);
                        let _ = child.wait().await;
                    }
                    Outcome::Exited(c) => {
                        sh.platform_line(
                            &spec,
                            &name,
                            match c {
                                Some(c) => format!("Process exited with status {c}"),
                                None => "Process exited (killed by a signal)".to_owned(),
                            },
                        );
                    }
                }
                // Whatever the dyno forked goes with it.
                signal_group(pgid, Signal::SIGKILL);
                (outcome, pgid, readers)
            }
        };
        let _ = pgid;
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
        }
        if let Some(d) = sh.state.lock().dynos.get_mut(&id) {
            d.pgid = None;
        }
        match outcome {
            Outcome::Stop => break None,
            Outcome::Restart => {
                restarts = 0;
                continue;
            }
            Outcome::Exited(c) if oneshot.is_some() => break c,
            Outcome::Exited(_) | Outcome::BootTimeout if oneshot.is_some() => break None,
            Outcome::Exited(_) | Outcome::BootTimeout => {}
        }
        // Exited while draining or being stopped: that is the end, not a crash.
        if sh.state.lock().dynos.get(&id).is_none_or(|d| d.stopping) {
            break None;
        }
        // A crash.
        let code = match outcome {
            Outcome::Exited(c) => c,
            _ => None,
        };
        if started.elapsed() >= sh.cfg.stable_after {
            restarts = 0;
        }
        restarts += 1;
        let delay = backoff(restarts, sh.cfg.backoff_initial, sh.cfg.backoff_max);
        if let Some(d) = sh.state.lock().dynos.get_mut(&id) {
            d.restarts = restarts;
        }
        sh.metrics
            .crashes
            .with_label_values(&[spec.process_type.as_str()])
            .inc();
        warn!(app = %spec.app, dyno = %name, exit_code = ?code, restart_in_ms = delay.as_millis() as u64, "dyno crashed");
        sh.set_state(id, DynoState::Crashed);
        sh.emit(RuntimeEvent::DynoCrashed {
            app: spec.app.clone(),
            dyno: name.clone(),
            release: spec.release,
            exit_code: code,
            restart_in_ms: delay.as_millis() as u64,
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = token.cancelled() => break None,
            _ = restart.notified() => restarts = 0,
        }
    };
    let port = {
        let mut st = sh.state.lock();
        let rec = st.dynos.remove(&id);
        let port = rec.and_then(|d| d.port);
        if let Some(p) = port {
            st.ports.remove(&p);
        }
        port
    };
    let _ = port;
    if let Some(o) = oneshot.as_mut() {
        o.output = None;
        if let Some(tx) = o.exit.take() {
            let _ = tx.send(final_code);
        }
        sh.emit(RuntimeEvent::Exited {
            app: spec.app.clone(),
            dyno: name.clone(),
            exit_code: final_code,
        });
    }
    sh.bump();
}

/// The per-app reconciler: serialises rollouts of one app.
async fn reconciler(sh: Arc<Shared>, key: String, kick: Arc<Notify>, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = kick.notified() => {}
            _ = token.cancelled() => return,
        }
        reconcile_app(&sh, &key, &token).await;
    }
}

async fn reconcile_app(sh: &Arc<Shared>, key: &str, token: &CancellationToken) {
    let Some((specs, good, failed, roll_restart)) = ({
        let mut st = sh.state.lock();
        st.apps.get_mut(key).map(|a| {
            (
                a.specs.clone(),
                a.good.clone(),
                a.failed.clone(),
                std::mem::take(&mut a.roll_restart),
            )
        })
    }) else {
        return;
    };
    let mut release_failed: Option<(u32, Option<u32>, String)> = None;
    let mut deployed = None;
    let types: BTreeSet<String> = specs.iter().map(|(f, _)| f.process_type.clone()).collect();
    for (f, spec) in &specs {
        if token.is_cancelled() {
            return;
        }
        if f.schedule.is_some() {
            // Scheduled types run only when their schedule fires.
            for (id, _, _) in sh.live(key, &f.process_type) {
                sh.stop_dyno(id, false);
            }
            continue;
        }
        let live = sh.live(key, &f.process_type);
        let target = if failed.iter().any(|s| s == spec) {
            match live.iter().find(|(_, _, s)| s != spec) {
                Some((_, _, s)) => s.clone(),
                None => continue,
            }
        } else {
            spec.clone()
        };
        let (mut same, mut other): (Vec<_>, Vec<_>) =
            live.into_iter().partition(|(_, _, s)| *s == target);
        let proven = good.get(&f.process_type).is_some_and(|g| *g == target);
        let forced = spec.is_web() && roll_restart;
        if forced {
            // A restart: every web dyno is replaced as in a deploy of the same spec.
            other.append(&mut same);
        }
        if spec.is_web() && (!other.is_empty() || !proven) {
            match roll_web(sh, &target, f.quantity, &same, &other).await {
                Ok(()) => {
                    sh.metrics.deploys.with_label_values(&["succeeded"]).inc();
                    if let Some(a) = sh.state.lock().apps.get_mut(key) {
                        a.good.insert(f.process_type.clone(), target.clone());
                    }
                    if !forced {
                        deployed = Some(target.release);
                    }
                }
                Err(reason) => {
                    sh.metrics.deploys.with_label_values(&["rolled_back"]).inc();
                    let back = other.first().map(|(_, _, s)| s.release);
                    warn!(app = %key, release = target.release, %reason, "release failed, rolled back");
                    if !forced && let Some(a) = sh.state.lock().apps.get_mut(key) {
                        a.failed.push(target.clone());
                    }
                    release_failed = Some((target.release, back, reason));
                }
            }
            continue;
        }
        // Not web, or web already proven: replace (non-web) and scale.
        for (id, _, _) in &other {
            sh.stop_dyno(*id, false);
        }
        let have: BTreeSet<u32> = same.iter().map(|(_, i, _)| *i).collect();
        for i in 1..=f.quantity {
            if !have.contains(&i) {
                let _ = sh.start_dyno(target.clone(), i, None);
            }
        }
        for (id, i, _) in &same {
            if *i > f.quantity {
                sh.stop_dyno(*id, spec.is_web());
            }
        }
        if !other.is_empty() {
            deployed = Some(target.release);
        }
    }
    // Process types no longer in the formation.
    let stale: Vec<u64> = {
        let st = sh.state.lock();
        st.dynos
            .values()
            .filter(|d| {
                d.spec.app == key
                    && !d.oneshot
                    && !d.stopping
                    && !types.contains(&d.spec.process_type)
            })
            .map(|d| d.id)
            .collect()
    };
    for id in stale {
        sh.stop_dyno(id, true);
    }
    if token.is_cancelled() {
        // Removed or shutting down mid-rollout: nothing to report.
        return;
    }
    if let Some((release, rolled_back_to, reason)) = release_failed {
        sh.emit(RuntimeEvent::ReleaseFailed {
            app: key.to_owned(),
            release,
            rolled_back_to,
            reason,
        });
    } else if let Some(release) = deployed {
        info!(app = %key, release, "release up");
        sh.emit(RuntimeEvent::ReleaseUp {
            app: key.to_owned(),
            release,
        });
    }
}

/// Roll web dynos to `target`, one index at a time, never fewer up than before.
async fn roll_web(
    sh: &Arc<Shared>,
    target: &Arc<Spec>,
    quantity: u32,
    same: &[(u64, u32, Arc<Spec>)],
    other: &[(u64, u32, Arc<Spec>)],
) -> Result<(), String> {
    let mut replaced: Vec<(u32, u64)> = Vec::new();
    for i in 1..=quantity {
        let existing_up = same.iter().find(|(id, idx, _)| {
            *idx == i
                && sh
                    .state
                    .lock()
                    .dynos
                    .get(id)
                    .is_some_and(|d| d.state == DynoState::Up)
        });
        let new_id = match existing_up {
            Some((id, _, _)) => *id,
            None => {
                for (id, idx, _) in same {
                    if *idx == i {
                        sh.stop_dyno(*id, false);
                    }
                }
                let new_id = sh
                    .start_dyno(target.clone(), i, None)
                    .map_err(|e| e.to_string())?;
                if let Err(e) = sh.wait_up(new_id).await {
                    sh.stop_dyno(new_id, false);
                    // Put back what was already replaced.
                    if let Some((_, _, old)) = other.first() {
                        for (idx, replacement) in &replaced {
                            if let Ok(back) = sh.start_dyno(old.clone(), *idx, None)
                                && sh.wait_up(back).await.is_ok()
                            {
                                sh.stop_dyno(*replacement, true);
                            }
                        }
                    }
                    return Err(e);
                }
                new_id
            }
        };
        replaced.push((i, new_id));
        for (id, idx, _) in other {
            if *idx == i {
                sh.stop_dyno(*id, true);
            }
        }
    }
    for (id, idx, _) in other.iter().chain(same) {
        if *idx > quantity {
            sh.stop_dyno(*id, true);
        }
    }
    Ok(())
}

/// A TCP forwarder on a stable port to the app's up web dynos, round-robin.
async fn service_proxy(
    sh: Arc<Shared>,
    app: String,
    listener: tokio::net::TcpListener,
    token: CancellationToken,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = token.cancelled() => return,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        let targets: Vec<SocketAddr> = {
            let st = sh.state.lock();
            st.dynos
                .values()
                .filter(|d| {
                    d.spec.app == app && d.spec.is_web() && d.state == DynoState::Up && !d.stopping
                })
                .filter_map(|d| d.port.map(|p| SocketAddr::new(sh.cfg.host, p)))
                .collect()
        };
        if targets.is_empty() {
            continue;
        }
        next = next.wrapping_add(1);
        let target = targets[next % targets.len()];
        let token = token.clone();
        sh.tasks.spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                    _ = token.cancelled() => {}
                }
            }
        });
    }
}

/// Fire a one-shot dyno of `process_type` at every minute the cron expression matches.
async fn scheduler(
    sh: Arc<Shared>,
    key: String,
    process_type: String,
    cron: Cron,
    token: CancellationToken,
) {
    let mut last_minute = (sh.cfg.clock)().div_euclid(60);
    let mut n = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sh.cfg.schedule_tick) => {}
            _ = token.cancelled() => return,
        }
        let minute = (sh.cfg.clock)().div_euclid(60);
        if minute == last_minute {
            continue;
        }
        last_minute = minute;
        if !cron.matches_unix(minute * 60) {
            continue;
        }
        let spec = {
            let st = sh.state.lock();
            st.apps.get(&key).and_then(|a| {
                a.specs
                    .iter()
                    .find(|(f, _)| f.process_type == process_type)
                    .map(|(_, s)| s.clone())
            })
        };
        let Some(spec) = spec else { return };
        n += 1;
        let dyno = format!("{process_type}.{n}");
        info!(app = %key, %dyno, cron = cron.as_str(), "schedule fired");
        if sh
            .start_dyno(
                spec,
                n,
                Some(OneShot {
                    output: None,
                    exit: None,
                }),
            )
            .is_ok()
        {
            sh.emit(RuntimeEvent::Scheduled {
                app: key.clone(),
                process_type: process_type.clone(),
                dyno,
            });
        }
    }
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    async fn converge(&self, desired: DesiredState) -> Result<(), RuntimeError> {
        let sh = &self.sh;
        // Validate everything first: an invalid app changes nothing.
        let mut planned = Vec::new();
        for app in &desired.apps {
            let specs = specs_for(app).map_err(|message| RuntimeError::Invalid {
                app: app.key.clone(),
                message,
            })?;
            for (f, _) in &specs {
                if let Some(c) = &f.schedule {
                    Cron::parse(c).map_err(|message| RuntimeError::Invalid {
                        app: app.key.clone(),
                        message,
                    })?;
                }
            }
            planned.push((app.clone(), specs));
        }
        let keep: BTreeSet<String> = desired.apps.iter().map(|a| a.key.clone()).collect();
        let mut to_stop = Vec::new();
        {
            let mut st = sh.state.lock();
            if st.shut {
                return Err(RuntimeError::ShutDown);
            }
            // Apps that went away.
            let gone: Vec<String> = st
                .apps
                .keys()
                .filter(|k| !keep.contains(*k))
                .cloned()
                .collect();
            for k in gone {
                if let Some(a) = st.apps.remove(&k) {
                    a.token.cancel();
                    if let Some(p) = a.service {
                        st.ports.remove(&p);
                    }
                }
                to_stop.extend(st.dynos.values().filter(|d| d.spec.app == k).map(|d| d.id));
            }
            for (app, specs) in planned {
                let key = app.key.clone();
                let wants_service =
                    sh.cfg.service_proxies && specs.iter().any(|(f, _)| f.process_type == "web");
                if !st.apps.contains_key(&key) {
                    let token = sh.root.child_token();
                    let kick = Arc::new(Notify::new());
                    st.apps.insert(
                        key.clone(),
                        AppRt {
                            desired: app.clone(),
                            specs: Vec::new(),
                            good: BTreeMap::new(),
                            failed: Vec::new(),
                            kick: kick.clone(),
                            token: token.clone(),
                            service: None,
                            schedules: BTreeMap::new(),
                            run_counter: 0,
                            roll_restart: false,
                        },
                    );
                    let s2 = sh.clone();
                    let k2 = key.clone();
                    sh.tasks.spawn(reconciler(s2, k2, kick, token));
                }
                let need_proxy =
                    wants_service && st.apps.get(&key).is_some_and(|a| a.service.is_none());
                if need_proxy && let Some((port, listener)) = Shared::alloc_port(&mut st, &sh.cfg) {
                    let _ = listener.set_nonblocking(true);
                    if let (Some(a), Ok(l)) = (
                        st.apps.get_mut(&key),
                        tokio::net::TcpListener::from_std(listener),
                    ) {
                        a.service = Some(port);
                        sh.tasks.spawn(service_proxy(
                            sh.clone(),
                            key.clone(),
                            l,
                            a.token.child_token(),
                        ));
                    }
                }
                let Some(a) = st.apps.get_mut(&key) else {
                    continue;
                };
                // Schedules: start new ones, stop changed or removed ones.
                let wanted: BTreeMap<String, String> = specs
                    .iter()
                    .filter_map(|(f, _)| f.schedule.clone().map(|c| (f.process_type.clone(), c)))
                    .collect();
                a.schedules.retain(|t, (c, tok)| {
                    let keep = wanted.get(t) == Some(c);
                    if !keep {
                        tok.cancel();
                    }
                    keep
                });
                for (t, c) in wanted {
                    if a.schedules.contains_key(&t) {
                        continue;
                    }
                    let tok = a.token.child_token();
                    if let Ok(cron) = Cron::parse(&c) {
                        sh.tasks.spawn(scheduler(
                            sh.clone(),
                            key.clone(),
                            t.clone(),
                            cron,
                            tok.clone(),
                        ));
                    }
                    a.schedules.insert(t, (c, tok));
                }
                // Failed specs stay remembered: the same spec is not retried, a changed one is.
                a.desired = app;
                a.specs = specs;
                a.kick.notify_one();
            }
        }
        for id in to_stop {
            sh.stop_dyno(id, true);
        }
        sh.bump();
        Ok(())
    }

    /// Running dynos, plus one `idle` entry (`report.1`, no process) per scheduled process type
    /// that is waiting for its next firing.
    fn dynos(&self) -> Vec<DynoStatus> {
        let st = self.sh.state.lock();
        let mut out: Vec<DynoStatus> = st
            .dynos
            .values()
            .map(|d| DynoStatus {
                id: d.id.to_string(),
                app: d.spec.app.clone(),
                name: d.name.clone(),
                process_type: d.spec.process_type.clone(),
                release: d.spec.release,
                state: d.state,
                address: d.port.map(|p| SocketAddr::new(self.sh.cfg.host, p)),
                updated_at_us: d.updated_at_us,
                restarts: d.restarts,
            })
            .collect();
        for (key, a) in &st.apps {
            for ptype in a.schedules.keys() {
                DynoStatus::add_idle(&mut out, key, ptype, a.desired.release);
            }
        }
        out
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.sh.changes.subscribe()
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.sh.events.subscribe()
    }

    async fn run(&self, app: &str, request: RunRequest) -> Result<RunHandle, RuntimeError> {
        let sh = &self.sh;
        let (spec, n) = {
            let mut st = sh.state.lock();
            let a = st
                .apps
                .get_mut(app)
                .ok_or_else(|| RuntimeError::UnknownApp(app.to_owned()))?;
            a.run_counter += 1;
            let d = &a.desired;
            // One-offs run the release that serves: the last good one if the desired release
            // failed its rollout.
            let serving = a.good.values().find(|g| {
                a.failed.iter().any(|f| f.release == d.release) && g.release != d.release
            });
            let (release, mut env, cwd) = match serving {
                Some(g) => (g.release, g.env.clone(), g.cwd.clone()),
                None => (
                    d.release,
                    d.config_vars.clone(),
                    match &d.artifact {
                        Artifact::Slug(dir) => Some(PathBuf::from(dir)),
                        _ => None,
                    },
                ),
            };
            env.extend(request.env.clone());
            (
                Arc::new(Spec {
                    app: d.key.clone(),
                    app_name: d.name.clone(),
                    space: d.space.clone(),
                    release,
                    process_type: "run".to_owned(),
                    command: request.command.clone(),
                    cwd,
                    env,
                    health: None,
                }),
                a.run_counter,
            )
        };
        let (otx, orx) = mpsc::channel(1024);
        let (etx, erx) = oneshot::channel();
        sh.start_dyno(
            spec,
            n,
            Some(OneShot {
                output: Some(otx),
                exit: Some(etx),
            }),
        )?;
        Ok(RunHandle {
            dyno: format!("run.{n}"),
            output: orx,
            exit: erx,
        })
    }

    /// One dyno (`web.1`) restarts in place, as on Heroku. The web process as a whole (`web`,
    /// or every process with `None`) is replaced rolling, so it never has fewer up dynos.
    async fn restart(&self, app: &str, which: Option<&str>) -> Result<(), RuntimeError> {
        let mut st = self.sh.state.lock();
        let Some(a) = st.apps.get_mut(app) else {
            return Err(RuntimeError::UnknownApp(app.to_owned()));
        };
        let roll_web = matches!(which, None | Some("web"));
        if roll_web {
            a.roll_restart = true;
            a.kick.notify_one();
        }
        for d in st.dynos.values() {
            if d.spec.app != app || d.stopping || d.oneshot {
                continue;
            }
            let hit = match which {
                _ if roll_web && d.spec.is_web() => false,
                None => true,
                Some(w) if w.contains('.') => d.name == w,
                Some(w) => d.spec.process_type == w,
            };
            if hit {
                d.restart.notify_one();
            }
        }
        Ok(())
    }

    async fn shutdown(&self) {
        let sh = &self.sh;
        let ids: Vec<u64> = {
            let mut st = sh.state.lock();
            st.shut = true;
            for a in st.apps.values() {
                a.token.cancel();
            }
            st.dynos.keys().copied().collect()
        };
        info!(dynos = ids.len(), "local runtime shutting down");
        for id in ids {
            sh.stop_dyno(id, false);
        }
        sh.tasks.close();
        let limit = sh.cfg.grace_period + Duration::from_secs(10);
        if tokio::time::timeout(limit, sh.tasks.wait()).await.is_err() {
            warn!("dyno tasks did not finish in time; killing what is left");
        }
        sh.root.cancel();
        for pgid in self.process_groups() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        sh.state.lock().apps.clear();
        sh.bump();
    }
}
