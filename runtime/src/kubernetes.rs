//! The Kubernetes runtime (kube-rs), after Akkeris' region-api.
//!
//! - A namespace per space; per app and process type a Deployment named `{app}` for web and
//!   `{app}--{type}` otherwise, labelled with app, space, release and type; replicas = quantity;
//!   the release's image; env from a Secret `{app}-config` holding the config vars, plus `PORT`
//!   and `DYNO` (the pod name); a readiness probe (HTTP path or TCP) on the port; memory from the
//!   dyno size; `RollingUpdate` with `maxUnavailable: 0`, `maxSurge: 1`; a termination grace
//!   period. Kubernetes itself injects `{APPNAME}_SERVICE_HOST/PORT` for every Service of the
//!   namespace (service links), which are exactly Akkeris' discovery variables.
//! - A Service `{app}` per web process; router backends come from its EndpointSlices (watched),
//!   so the router follows pod readiness.
//! - One-off dynos are Jobs (logs streamed back), scheduled process types `batch/v1` CronJobs.
//! - Everything is server-side applied with one field manager; reconciling again is idempotent and
//!   repairs drift; objects Wharf manages that are no longer desired are deleted (pruned by label).
//! - A rollout that exceeds its progress deadline is rolled back by applying the previous good
//!   release again, and reported as [`RuntimeEvent::ReleaseFailed`].
//! - Dyno states come from a pod watch (crash loops are `crashed`, restarts counted), changes
//!   are announced as Heroku lines and [`RuntimeEvent::DynoState`]; each running dyno's log is
//!   followed into the sink (`follow_logs`). Kubernetes restarts crashed containers itself
//!   (CrashLoopBackOff: 10 s doubling to 5 min), so the 20-minute cap is the local runtime's.
//! - [`Runtime::shutdown`] stops watching and leaves the cluster's dynos running.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wharf_config::{Artifact, DynoState, HealthCheck, LogLine, Source};

use crate::{
    DesiredApp, DesiredState, DynoStatus, RunHandle, RunRequest, Runtime, RuntimeError,
    RuntimeEvent, Sink, now_us, size_memory_mib,
};

pub const LABEL_APP: &str = "wharf.io/app";
pub const LABEL_SPACE: &str = "wharf.io/space";
pub const LABEL_RELEASE: &str = "wharf.io/release";
pub const LABEL_TYPE: &str = "wharf.io/type";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "wharf";

/// Settings of the Kubernetes runtime.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// Server-side apply field manager.
    pub field_manager: String,
    /// The port a web process listens on when its formation names none (`PORT`).
    pub default_port: u16,
    /// Between SIGTERM and SIGKILL.
    pub grace_period_secs: i64,
    /// A rollout that makes no progress this long failed (then Wharf rolls back).
    pub progress_deadline_secs: i32,
    /// How often the background loop re-applies everything (drift repair) and checks rollouts.
    pub reconcile_interval: Duration,
    /// Finished one-off Jobs are deleted after this.
    pub job_ttl_secs: i32,
    /// How often a one-off run polls its pod.
    pub poll_interval: Duration,
    /// Follow the log of every running dyno pod into the log shuttle's sink (through the API
    /// server). Turn off where a node-level collector ships container logs instead.
    pub follow_logs: bool,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            field_manager: "wharf".to_owned(),
            default_port: 5000,
            grace_period_secs: 30,
            progress_deadline_secs: 120,
            reconcile_interval: Duration::from_secs(30),
            job_ttl_secs: 3600,
            poll_interval: Duration::from_secs(1),
            follow_logs: true,
        }
    }
}

/// `{app}` for web, `{app}--{type}` otherwise.
pub fn workload_name(app_name: &str, process_type: &str) -> String {
    if process_type == "web" {
        app_name.to_owned()
    } else {
        format!("{app_name}--{process_type}")
    }
}

/// The Secret holding an app's config vars.
pub fn secret_name(app_name: &str) -> String {
    format!("{app_name}-config")
}

/// Everything one app owns in its space's namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct AppObjects {
    pub namespace: Namespace,
    pub secret: Secret,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub cron_jobs: Vec<CronJob>,
}

fn typed<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("building a Kubernetes object: {e}"))
}

fn labels(app: &DesiredApp, process_type: Option<&str>) -> serde_json::Value {
    let mut l = serde_json::Map::new();
    l.insert(LABEL_APP.into(), json!(app.name));
    l.insert(LABEL_SPACE.into(), json!(app.space));
    l.insert(LABEL_RELEASE.into(), json!(app.release.to_string()));
    l.insert(LABEL_MANAGED_BY.into(), json!(MANAGED_BY));
    if let Some(t) = process_type {
        l.insert(LABEL_TYPE.into(), json!(t));
    }
    serde_json::Value::Object(l)
}

fn pod_spec(
    app: &DesiredApp,
    f: &wharf_config::Formation,
    command: Option<&str>,
    cfg: &KubeConfig,
    restart_policy: &str,
) -> Result<serde_json::Value, String> {
    let Artifact::Image(image) = &app.artifact else {
        return Err("the Kubernetes runtime runs container images only".to_owned());
    };
    let web = f.process_type == "web";
    let port = f.port.unwrap_or(cfg.default_port);
    let mem = format!("{}Mi", size_memory_mib(&f.size));
    let mut env =
        vec![json!({"name": "DYNO", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})];
    if web {
        env.push(json!({"name": "PORT", "value": port.to_string()}));
    }
    let mut container = json!({
        "name": f.process_type,
        "image": image,
        "env": env,
        "envFrom": [{"secretRef": {"name": secret_name(&app.name)}}],
        "resources": {"requests": {"memory": mem}, "limits": {"memory": mem}},
    });
    if let Some(c) = command.or(f.command.as_deref()) {
        container["command"] = json!(["/bin/sh", "-c", c]);
    }
    if web {
        container["ports"] = json!([{"name": "http", "containerPort": port, "protocol": "TCP"}]);
        let probe = match f.health_check.as_ref().unwrap_or(&HealthCheck::Tcp) {
            HealthCheck::Http { path } => json!({"httpGet": {"path": path, "port": port}}),
            HealthCheck::Tcp => json!({"tcpSocket": {"port": port}}),
        };
        let mut probe = probe;
        probe["periodSeconds"] = json!(5);
        probe["timeoutSeconds"] = json!(3);
        probe["failureThreshold"] = json!(3);
        container["readinessProbe"] = probe;
    }
    Ok(json!({
        "containers": [container],
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": cfg.grace_period_secs,
        "enableServiceLinks": true,
    }))
}

/// The objects `app` needs, pure: what converging applies.
pub fn objects_for(app: &DesiredApp, cfg: &KubeConfig) -> Result<AppObjects, String> {
    let ns = &app.space;
    let namespace = typed(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_SPACE: ns}},
    }))?;
    // `data`, not `stringData`: with server-side apply a key dropped from `stringData` would
    // linger in `data`; owning `data` means a removed config var is removed.
    let mut secret: Secret = typed(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret_name(&app.name), "namespace": ns, "labels": labels(app, None)},
        "type": "Opaque",
    }))?;
    secret.data = Some(
        app.config_vars
            .iter()
            .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    let mut deployments = Vec::new();
    let mut services = Vec::new();
    let mut cron_jobs = Vec::new();
    for f in app.formation.iter().filter(|f| f.app == app.key) {
        let name = workload_name(&app.name, &f.process_type);
        let selector = json!({LABEL_APP: app.name, LABEL_TYPE: f.process_type});
        if let Some(schedule) = &f.schedule {
            let pod = pod_spec(app, f, None, cfg, "Never")?;
            cron_jobs.push(typed(json!({
                "apiVersion": "batch/v1", "kind": "CronJob",
                "metadata": {"name": name, "namespace": ns, "labels": labels(app, Some(&f.process_type))},
                "spec": {
                    "schedule": schedule,
                    "timeZone": "Etc/UTC",
                    "concurrencyPolicy": "Forbid",
                    "successfulJobsHistoryLimit": 3,
                    "failedJobsHistoryLimit": 3,
                    "jobTemplate": {
                        "metadata": {"labels": labels(app, Some(&f.process_type))},
                        "spec": {
                            "backoffLimit": 0,
                            "ttlSecondsAfterFinished": cfg.job_ttl_secs,
                            "template": {
                                "metadata": {"labels": labels(app, Some(&f.process_type))},
                                "spec": pod,
                            },
                        },
                    },
                },
            }))?);
            continue;
        }
        let pod = pod_spec(app, f, None, cfg, "Always")?;
        deployments.push(typed(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": labels(app, Some(&f.process_type))},
            "spec": {
                "replicas": f.quantity,
                "selector": {"matchLabels": selector},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "progressDeadlineSeconds": cfg.progress_deadline_secs,
                "revisionHistoryLimit": 10,
                "template": {
                    "metadata": {"labels": labels(app, Some(&f.process_type))},
                    "spec": pod,
                },
            },
        }))?);
        if f.process_type == "web" {
            let port = f.port.unwrap_or(cfg.default_port);
            services.push(typed(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "labels": labels(app, Some("web"))},
                "spec": {
                    "type": "ClusterIP",
                    "selector": selector,
                    "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}],
                },
            }))?);
        }
    }
    Ok(AppObjects {
        namespace,
        secret,
        deployments,
        services,
        cron_jobs,
    })
}

/// The Job of a one-off dyno.
pub fn one_off_job(
    app: &DesiredApp,
    job_name: &str,
    request: &RunRequest,
    cfg: &KubeConfig,
) -> Result<Job, String> {
    let f = wharf_config::Formation {
        app: app.key.clone(),
        process_type: "run".to_owned(),
        quantity: 1,
        size: request
            .size
            .clone()
            .unwrap_or_else(|| "standard-1x".to_owned()),
        command: None,
        port: None,
        health_check: None,
        schedule: None,
    };
    let mut pod = pod_spec(app, &f, Some(&request.command), cfg, "Never")?;
    if !request.env.is_empty()
        && let Some(env) = pod["containers"][0]["env"].as_array_mut()
    {
        for (k, v) in &request.env {
            env.push(json!({"name": k, "value": v}));
        }
    }
    typed(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name, "namespace": app.space, "labels": labels(app, Some("run"))},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": cfg.job_ttl_secs,
            "template": {"metadata": {"labels": labels(app, Some("run"))}, "spec": pod},
        },
    }))
}

/// Router backends from EndpointSlices: one `up` dyno per ready endpoint address of a web
/// Service Wharf manages. `release` maps app key → the release being served.
pub fn dynos_from_slices(
    slices: &[EndpointSlice],
    release: &BTreeMap<String, u32>,
) -> Vec<DynoStatus> {
    let mut out = Vec::new();
    for s in slices {
        let labels = s.metadata.labels.clone().unwrap_or_default();
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let Some(app) = labels
            .get(LABEL_APP)
            .or_else(|| labels.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let key = format!("{app}-{ns}");
        let port = s
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        for e in &s.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
            let terminating = e
                .conditions
                .as_ref()
                .and_then(|c| c.terminating)
                .unwrap_or(false);
            let pod = e
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| e.addresses.first().cloned().unwrap_or_default());
            let suffix = pod
                .strip_prefix(&format!("{app}-"))
                .unwrap_or(&pod)
                .to_owned();
            for a in &e.addresses {
                let address = match (a.parse::<IpAddr>(), port) {
                    (Ok(ip), Some(p)) => Some(SocketAddr::new(ip, p)),
                    _ => None,
                };
                out.push(DynoStatus {
                    id: format!("{ns}/{pod}"),
                    app: key.clone(),
                    name: format!("web.{suffix}"),
                    process_type: "web".to_owned(),
                    release: release.get(&key).copied().unwrap_or(0),
                    state: if ready && !terminating {
                        DynoState::Up
                    } else if terminating {
                        DynoState::Down
                    } else {
                        DynoState::Starting
                    },
                    address,
                    updated_at_us: now_us(),
                    restarts: 0,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.app, &a.id).cmp(&(&b.app, &b.id)));
    out
}

/// A dyno's name from its pod: `web.7d9f-x1` for pod `api-7d9f-x1` of Deployment `api`.
pub fn dyno_name(app_name: &str, process_type: &str, pod: &str) -> String {
    let suffix = pod
        .strip_prefix(&format!("{}-", workload_name(app_name, process_type)))
        .or_else(|| pod.strip_prefix(&format!("{app_name}--")))
        .unwrap_or(pod);
    format!("{process_type}.{suffix}")
}

fn state_name(s: DynoState) -> &'static str {
    match s {
        DynoState::Starting => "starting",
        DynoState::Up => "up",
        DynoState::Crashed => "crashed",
        DynoState::Idle => "idle",
        DynoState::Down => "down",
    }
}

/// The state of a dyno from its pod: crash loops and image errors are `crashed`.
pub fn pod_state(p: &Pod) -> DynoState {
    if p.metadata.deletion_timestamp.is_some() {
        return DynoState::Down;
    }
    let Some(status) = &p.status else {
        return DynoState::Starting;
    };
    let crashing = status.container_statuses.iter().flatten().any(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .is_some_and(|r| {
                matches!(
                    r,
                    "CrashLoopBackOff"
                        | "Error"
                        | "ImagePullBackOff"
                        | "ErrImagePull"
                        | "CreateContainerConfigError"
                        | "RunContainerError"
                )
            })
    });
    if crashing {
        return DynoState::Crashed;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match status.phase.as_deref() {
        Some("Running") if ready => DynoState::Up,
        Some("Succeeded") => DynoState::Down,
        Some("Failed") => DynoState::Crashed,
        _ => DynoState::Starting,
    }
}

/// Every dyno: web dynos from EndpointSlices (what the router uses), enriched by their pods
/// (release, restarts, crash loops); every other managed pod from its own status.
pub fn dynos_from_cluster(
    slices: &[EndpointSlice],
    pods: &[Pod],
    release: &BTreeMap<String, u32>,
) -> Vec<DynoStatus> {
    let by_id: BTreeMap<String, &Pod> = pods
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                p,
            )
        })
        .collect();
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c.iter().map(|c| c.restart_count.max(0) as u32).sum())
            .unwrap_or(0)
    };
    let label = |p: &Pod, k: &str| p.labels().get(k).cloned();
    let mut out = dynos_from_slices(slices, release);
    let mut seen = BTreeSet::new();
    for d in &mut out {
        seen.insert(d.id.clone());
        if let Some(p) = by_id.get(&d.id) {
            if let Some(r) = label(p, LABEL_RELEASE).and_then(|r| r.parse().ok()) {
                d.release = r;
            }
            d.restarts = restarts(p);
            if pod_state(p) == DynoState::Crashed {
                d.state = DynoState::Crashed;
            }
        }
    }
    for (id, p) in by_id {
        if seen.contains(&id) {
            continue;
        }
        let (Some(app), Some(t)) = (label(p, LABEL_APP), label(p, LABEL_TYPE)) else {
            continue;
        };
        let ns = p.namespace().unwrap_or_default();
        let key = format!("{app}-{ns}");
        let pod = p.name_any();
        out.push(DynoStatus {
            id,
            app: key.clone(),
            name: dyno_name(&app, &t, &pod),
            process_type: t,
            release: label(p, LABEL_RELEASE)
                .and_then(|r| r.parse().ok())
                .or_else(|| release.get(&key).copied())
                .unwrap_or(0),
            // Web pods not (yet) in an EndpointSlice take no traffic.
            state: match pod_state(p) {
                DynoState::Up if label(p, LABEL_TYPE).as_deref() == Some("web") => {
                    DynoState::Starting
                }
                s => s,
            },
            address: None,
            updated_at_us: now_us(),
            restarts: restarts(p),
        });
    }
    out.sort_by(|a, b| (&a.app, &a.process_type, &a.id).cmp(&(&b.app, &b.process_type, &b.id)));
    out
}

/// Outcome of a web Deployment's rollout, from its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    InProgress,
    Complete,
    Failed,
}

pub fn rollout_state(d: &Deployment) -> Rollout {
    let Some(status) = &d.status else {
        return Rollout::InProgress;
    };
    let failed = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if failed {
        return Rollout::Failed;
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let observed = status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if observed && updated >= want && available >= want && total <= want {
        Rollout::Complete
    } else {
        Rollout::InProgress
    }
}

/// Objects by (namespace, name).
type ObjMap<K> = BTreeMap<(String, String), K>;

#[derive(Default)]
struct KState {
    desired: BTreeMap<String, DesiredApp>,
    /// Per app, the last release whose rollout completed.
    good: BTreeMap<String, DesiredApp>,
    /// Per app, a release that failed: not applied again until the desired release changes.
    failed: BTreeMap<String, u32>,
    /// Per app, the release last reported up or failed (events are sent once).
    reported: BTreeMap<String, u32>,
    slices: ObjMap<EndpointSlice>,
    pods: ObjMap<Pod>,
    dynos: Vec<DynoStatus>,
}

struct KInner {
    client: Client,
    cfg: KubeConfig,
    sink: Sink,
    state: Mutex<KState>,
    changes: watch::Sender<u64>,
    events: broadcast::Sender<RuntimeEvent>,
    token: CancellationToken,
    tasks: TaskTracker,
    runs: AtomicU64,
    /// Container instances whose log is followed: (namespace, pod, restart count).
    following: Mutex<BTreeSet<(String, String, u32)>>,
}

/// The Kubernetes runtime. [`KubeRuntime::start`] runs the EndpointSlice watch and the
/// drift-repair loop; without it, only explicit calls talk to the API server.
#[derive(Clone)]
pub struct KubeRuntime {
    inner: Arc<KInner>,
}

impl fmt::Debug for KubeRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeRuntime")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl KubeRuntime {
    pub fn new(client: Client, cfg: KubeConfig, sink: Sink) -> KubeRuntime {
        let (changes, _) = watch::channel(0);
        let (events, _) = broadcast::channel(1024);
        let runs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        KubeRuntime {
            inner: Arc::new(KInner {
                client,
                cfg,
                sink,
                state: Mutex::new(KState::default()),
                changes,
                events,
                token: CancellationToken::new(),
                tasks: TaskTracker::new(),
                runs: AtomicU64::new(runs),
                following: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// Start the EndpointSlice watch (router backends), the pod watch (dyno states) and the
    /// periodic reconcile loop (drift repair, rollout checks).
    pub fn start(&self) {
        let me = self.clone();
        self.inner.tasks.spawn(async move {
            me.watch_store::<EndpointSlice>("endpointslices", |st| &mut st.slices, |_| {})
                .await
        });
        let me = self.clone();
        self.inner.tasks.spawn(async move {
            me.watch_store::<Pod>("pods", |st| &mut st.pods, KubeRuntime::sync_log_followers)
                .await
        });
        let me = self.clone();
        self.inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(me.inner.cfg.reconcile_interval) => {}
                    _ = me.inner.token.cancelled() => return,
                }
                if let Err(e) = me.reconcile_once().await {
                    warn!(error = %e, "kubernetes reconcile failed");
                }
                if let Err(e) = me.check_rollouts().await {
                    warn!(error = %e, "kubernetes rollout check failed");
                }
            }
        });
    }

    fn bump(&self) {
        self.inner.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    async fn apply<K>(&self, obj: &K) -> Result<(), RuntimeError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.name_any();
        let api: Api<K> = Api::namespaced(self.inner.client.clone(), &ns);
        let pp = PatchParams::apply(&self.inner.cfg.field_manager).force();
        api.patch(&name, &pp, &Patch::Apply(obj)).await?;
        debug!(kind = %K::kind(&Default::default()), %ns, %name, "applied");
        Ok(())
    }

    /// What is applied for each app: the desired release, or the last good one when the
    /// desired release failed.
    fn effective(&self) -> Vec<DesiredApp> {
        let st = self.inner.state.lock();
        st.desired
            .values()
            .map(|a| match (st.failed.get(&a.key), st.good.get(&a.key)) {
                (Some(r), Some(good)) if *r == a.release => good.clone(),
                _ => a.clone(),
            })
            .collect()
    }

    /// Apply everything desired and delete what Wharf manages but no longer wants. Idempotent;
    /// run periodically it repairs drift.
    pub async fn reconcile_once(&self) -> Result<(), RuntimeError> {
        let apps = self.effective();
        let mut wanted: BTreeSet<(String, String, String)> = BTreeSet::new();
        let mut namespaces = BTreeSet::new();
        for app in &apps {
            let objs =
                objects_for(app, &self.inner.cfg).map_err(|message| RuntimeError::Invalid {
                    app: app.key.clone(),
                    message,
                })?;
            if namespaces.insert(app.space.clone()) {
                let api: Api<Namespace> = Api::all(self.inner.client.clone());
                let pp = PatchParams::apply(&self.inner.cfg.field_manager).force();
                api.patch(&app.space, &pp, &Patch::Apply(&objs.namespace))
                    .await?;
            }
            self.apply(&objs.secret).await?;
            wanted.insert(("Secret".into(), app.space.clone(), objs.secret.name_any()));
            for d in &objs.deployments {
                self.apply(d).await?;
                wanted.insert(("Deployment".into(), app.space.clone(), d.name_any()));
            }
            for s in &objs.services {
                self.apply(s).await?;
                wanted.insert(("Service".into(), app.space.clone(), s.name_any()));
            }
            for c in &objs.cron_jobs {
                self.apply(c).await?;
                wanted.insert(("CronJob".into(), app.space.clone(), c.name_any()));
            }
        }
        self.prune::<Deployment>("Deployment", &wanted).await?;
        self.prune::<Service>("Service", &wanted).await?;
        self.prune::<CronJob>("CronJob", &wanted).await?;
        self.prune::<Secret>("Secret", &wanted).await?;
        // Apps without a web process are up once applied.
        let mut st = self.inner.state.lock();
        for app in apps {
            let has_web = app
                .formation
                .iter()
                .any(|f| f.app == app.key && f.process_type == "web" && f.schedule.is_none());
            if !has_web && st.reported.get(&app.key) != Some(&app.release) {
                st.reported.insert(app.key.clone(), app.release);
                st.good.insert(app.key.clone(), app.clone());
                let _ = self.inner.events.send(RuntimeEvent::ReleaseUp {
                    app: app.key.clone(),
                    release: app.release,
                });
            }
        }
        Ok(())
    }

    async fn prune<K>(
        &self,
        kind: &str,
        wanted: &BTreeSet<(String, String, String)>,
    ) -> Result<(), RuntimeError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let all: Api<K> = Api::all(self.inner.client.clone());
        let lp = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
        for obj in all.list(&lp).await? {
            let ns = obj.namespace().unwrap_or_default();
            let name = obj.name_any();
            if !wanted.contains(&(kind.to_owned(), ns.clone(), name.clone())) {
                info!(%kind, %ns, %name, "deleting what is no longer desired");
                let api: Api<K> = Api::namespaced(self.inner.client.clone(), &ns);
                let dp = DeleteParams::background();
                match api.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Look at each web rollout not yet reported: complete → release up, past its progress
    /// deadline → roll back to the last good release and report the failure.
    pub async fn check_rollouts(&self) -> Result<(), RuntimeError> {
        let pending: Vec<DesiredApp> = {
            let st = self.inner.state.lock();
            st.desired
                .values()
                .filter(|a| st.reported.get(&a.key) != Some(&a.release))
                .cloned()
                .collect()
        };
        let mut rolled_back = false;
        for app in pending {
            if !app
                .formation
                .iter()
                .any(|f| f.app == app.key && f.process_type == "web" && f.schedule.is_none())
            {
                continue;
            }
            let api: Api<Deployment> = Api::namespaced(self.inner.client.clone(), &app.space);
            let d = match api.get_opt(&workload_name(&app.name, "web")).await? {
                Some(d) => d,
                None => continue,
            };
            let release_label = d
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.as_ref())
                .and_then(|l| l.get(LABEL_RELEASE).cloned());
            if release_label.as_deref() != Some(&app.release.to_string()) {
                continue;
            }
            match rollout_state(&d) {
                Rollout::InProgress => {}
                Rollout::Complete => {
                    let mut st = self.inner.state.lock();
                    st.reported.insert(app.key.clone(), app.release);
                    st.good.insert(app.key.clone(), app.clone());
                    info!(app = %app.key, release = app.release, "release up");
                    let _ = self.inner.events.send(RuntimeEvent::ReleaseUp {
                        app: app.key.clone(),
                        release: app.release,
                    });
                }
                Rollout::Failed => {
                    let back = {
                        let mut st = self.inner.state.lock();
                        st.reported.insert(app.key.clone(), app.release);
                        st.failed.insert(app.key.clone(), app.release);
                        st.good.get(&app.key).map(|g| g.release)
                    };
                    warn!(app = %app.key, release = app.release, rolled_back_to = ?back, "release failed its rollout");
                    let _ = self.inner.events.send(RuntimeEvent::ReleaseFailed {
                        app: app.key.clone(),
                        release: app.release,
                        rolled_back_to: back,
                        reason: format!(
                            "web pods did not become ready within {} s (progress deadline exceeded)",
                            self.inner.cfg.progress_deadline_secs
                        ),
                    });
                    rolled_back = true;
                }
            }
        }
        if rolled_back {
            self.reconcile_once().await?;
        }
        Ok(())
    }

    /// Replace the EndpointSlices seen (router backends) and recompute the dynos.
    pub fn set_slices(&self, slices: Vec<EndpointSlice>) {
        {
            let mut st = self.inner.state.lock();
            st.slices = slices
                .into_iter()
                .map(|s| {
                    (
                        (
                            s.metadata.namespace.clone().unwrap_or_default(),
                            s.metadata.name.clone().unwrap_or_default(),
                        ),
                        s,
                    )
                })
                .collect();
            let _ = Self::recompute(&mut st);
        }
        self.bump();
    }

    /// Recompute the dynos; returns those whose state changed (with the state before).
    fn recompute(st: &mut KState) -> Vec<(DynoStatus, Option<DynoState>)> {
        let releases: BTreeMap<String, u32> = st
            .desired
            .values()
            .map(|a| {
                let r = match st.failed.get(&a.key) {
                    Some(f) if *f == a.release => st.good.get(&a.key).map(|g| g.release),
                    _ => None,
                };
                (a.key.clone(), r.unwrap_or(a.release))
            })
            .collect();
        let slices: Vec<EndpointSlice> = st.slices.values().cloned().collect();
        let pods: Vec<Pod> = st.pods.values().cloned().collect();
        let before: BTreeMap<(String, String), DynoState> = st
            .dynos
            .iter()
            .map(|d| ((d.app.clone(), d.id.clone()), d.state))
            .collect();
        st.dynos = dynos_from_cluster(&slices, &pods, &releases);
        st.dynos
            .iter()
            .filter_map(|d| {
                let was = before.get(&(d.app.clone(), d.id.clone())).copied();
                (was != Some(d.state)).then(|| (d.clone(), was))
            })
            .collect()
    }

    /// Platform lines and events for dyno state changes, as the local runtime writes them.
    fn announce(&self, changes: Vec<(DynoStatus, Option<DynoState>)>) {
        let spaces: BTreeMap<String, String> = {
            let st = self.inner.state.lock();
            st.desired
                .values()
                .map(|a| (a.key.clone(), a.space.clone()))
                .collect()
        };
        for (d, was) in changes {
            let from = was.unwrap_or(DynoState::Starting);
            if was.is_some() || d.state != DynoState::Starting {
                self.inner.sink.send(LogLine {
                    app: d.app.as_str().into(),
                    space: spaces.get(&d.app).cloned().unwrap_or_default().into(),
                    source: Source::Heroku,
                    process: d.name.as_str().into(),
                    timestamp_us: now_us(),
                    line: format!(
                        "State changed from {} to {}",
                        state_name(from),
                        state_name(d.state)
                    ),
                });
            }
            let _ = self.inner.events.send(RuntimeEvent::DynoState {
                app: d.app.clone(),
                dyno: d.name.clone(),
                release: d.release,
                from,
                to: d.state,
            });
        }
    }

    /// List-and-watch one kind of object Wharf manages into the state; dynos follow.
    async fn watch_store<K>(
        &self,
        what: &'static str,
        slot: fn(&mut KState) -> &mut ObjMap<K>,
        after: fn(&KubeRuntime),
    ) where
        K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
        <K as Resource>::DynamicType: Default,
    {
        let api: Api<K> = Api::all(self.inner.client.clone());
        let cfg = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
        let mut stream = watcher(api, cfg).boxed();
        let mut init: Vec<K> = Vec::new();
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        loop {
            let next = tokio::select! {
                n = stream.try_next() => n,
                _ = self.inner.token.cancelled() => return,
            };
            match next {
                Ok(Some(ev)) => {
                    let mut st = self.inner.state.lock();
                    let changed = match ev {
                        watcher::Event::Init => {
                            init.clear();
                            false
                        }
                        watcher::Event::InitApply(o) => {
                            init.push(o);
                            false
                        }
                        watcher::Event::InitDone => {
                            *slot(&mut st) = init.drain(..).map(|o| (key(&o), o)).collect();
                            true
                        }
                        watcher::Event::Apply(o) => {
                            slot(&mut st).insert(key(&o), o);
                            true
                        }
                        watcher::Event::Delete(o) => {
                            slot(&mut st).remove(&key(&o));
                            true
                        }
                    };
                    if changed {
                        let changes = Self::recompute(&mut st);
                        drop(st);
                        self.announce(changes);
                        after(self);
                        self.bump();
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, what, "watch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.inner.token.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Start following the log of every running dyno container not yet followed (one-offs
    /// are followed by their caller); forget pods that are gone.
    fn sync_log_followers(&self) {
        if !self.inner.cfg.follow_logs {
            return;
        }
        let pods: Vec<Pod> = self.inner.state.lock().pods.values().cloned().collect();
        let mut start = Vec::new();
        {
            let mut following = self.inner.following.lock();
            let alive: BTreeSet<(String, String)> = pods
                .iter()
                .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            following.retain(|(ns, pod, _)| alive.contains(&(ns.clone(), pod.clone())));
            for p in pods {
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                let t = p.labels().get(LABEL_TYPE).cloned();
                if !running || t.is_none() || t.as_deref() == Some("run") {
                    continue;
                }
                let restarts: u32 = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|c| c.iter().map(|c| c.restart_count.max(0) as u32).sum())
                    .unwrap_or(0);
                if following.insert((p.namespace().unwrap_or_default(), p.name_any(), restarts)) {
                    start.push(p);
                }
            }
        }
        for p in start {
            let me = self.clone();
            self.inner
                .tasks
                .spawn(async move { me.follow_pod(p).await });
        }
    }

    /// Copy one dyno container's log into the sink until it ends.
    async fn follow_pod(&self, p: Pod) {
        let ns = p.namespace().unwrap_or_default();
        let pod = p.name_any();
        let labels = p.labels();
        let (Some(app), Some(t)) = (labels.get(LABEL_APP), labels.get(LABEL_TYPE)) else {
            return;
        };
        let key = format!("{app}-{ns}");
        let dyno = dyno_name(app, t, &pod);
        // A container seen long after it started (the control plane restarted) is followed
        // from a few seconds back, not replayed whole.
        let started = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.as_ref())
            .map(|t| t.0.as_second());
        let now = now_us() / 1_000_000;
        let lp = LogParams {
            follow: true,
            since_seconds: started.filter(|s| now - s > 60).map(|_| 10),
            ..LogParams::default()
        };
        let api: Api<Pod> = Api::namespaced(self.inner.client.clone(), &ns);
        let reader = tokio::select! {
            r = api.log_stream(&pod, &lp) => r,
            _ = self.inner.token.cancelled() => return,
        };
        let Ok(reader) = reader else {
            debug!(%ns, %pod, "cannot follow the pod's log");
            return;
        };
        let mut lines = reader.lines();
        loop {
            let next = tokio::select! {
                l = lines.next() => l,
                _ = self.inner.token.cancelled() => return,
            };
            let Some(Ok(line)) = next else { return };
            self.inner.sink.send(LogLine {
                app: key.as_str().into(),
                space: ns.as_str().into(),
                source: Source::App,
                process: dyno.as_str().into(),
                timestamp_us: now_us(),
                line,
            });
        }
    }

    /// Follow a one-off Job's pod: stream its log, then report its exit code.
    async fn follow_job(
        &self,
        app: DesiredApp,
        job: String,
        dyno: String,
        out: mpsc::Sender<String>,
        exit: oneshot::Sender<Option<i32>>,
    ) {
        let pods: Api<Pod> = Api::namespaced(self.inner.client.clone(), &app.space);
        let lp = ListParams::default().labels(&format!("job-name={job}"));
        let terminated = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code)
        };
        let started = |p: &Pod| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Running" | "Succeeded" | "Failed")
            )
        };
        // Wait (bounded) for the pod to start.
        let mut pod_name = None;
        for _ in 0..600 {
            if self.inner.token.is_cancelled() {
                break;
            }
            if let Ok(list) = pods.list(&lp).await
                && let Some(p) = list.items.iter().find(|p| started(p))
            {
                pod_name = Some(p.name_any());
                break;
            }
            tokio::time::sleep(self.inner.cfg.poll_interval).await;
        }
        let Some(pod) = pod_name else {
            let _ = exit.send(None);
            return;
        };
        let lp = LogParams {
            follow: true,
            ..LogParams::default()
        };
        if let Ok(reader) = pods.log_stream(&pod, &lp).await {
            let mut lines = reader.lines();
            while let Some(Ok(line)) = lines.next().await {
                let _ = out.send(line.clone()).await;
                self.inner.sink.send(LogLine {
                    app: app.key.as_str().into(),
                    space: app.space.as_str().into(),
                    source: Source::App,
                    process: dyno.as_str().into(),
                    timestamp_us: now_us(),
                    line,
                });
            }
        }
        let mut code = None;
        for _ in 0..600 {
            if let Ok(p) = pods.get(&pod).await
                && let Some(c) = terminated(&p)
            {
                code = Some(c);
                break;
            }
            if self.inner.token.is_cancelled() {
                break;
            }
            tokio::time::sleep(self.inner.cfg.poll_interval).await;
        }
        self.inner.sink.send(LogLine {
            app: app.key.as_str().into(),
            space: app.space.as_str().into(),
            source: Source::Heroku,
            process: dyno.as_str().into(),
            timestamp_us: now_us(),
            line: match code {
                Some(c) => format!("Process exited with status {c}"),
                None => "Process exit status unknown".to_owned(),
            },
        });
        let _ = self.inner.events.send(RuntimeEvent::Exited {
            app: app.key.clone(),
            dyno,
            exit_code: code,
        });
        drop(out);
        let _ = exit.send(code);
    }
}

#[async_trait::async_trait]
impl Runtime for KubeRuntime {
    async fn converge(&self, desired: DesiredState) -> Result<(), RuntimeError> {
        for app in &desired.apps {
            objects_for(app, &self.inner.cfg).map_err(|message| RuntimeError::Invalid {
                app: app.key.clone(),
                message,
            })?;
        }
        {
            let mut st = self.inner.state.lock();
            st.desired = desired
                .apps
                .into_iter()
                .map(|a| (a.key.clone(), a))
                .collect();
            let keep: BTreeSet<String> = st.desired.keys().cloned().collect();
            st.good.retain(|k, _| keep.contains(k));
            st.failed.retain(|k, _| keep.contains(k));
            st.reported.retain(|k, _| keep.contains(k));
            let _ = Self::recompute(&mut st);
        }
        self.reconcile_once().await?;
        self.bump();
        Ok(())
    }

    /// Pods as dynos, plus one `idle` entry per scheduled process type (a CronJob) with no Job
    /// pod running.
    fn dynos(&self) -> Vec<DynoStatus> {
        let st = self.inner.state.lock();
        let mut out = st.dynos.clone();
        for a in st.desired.values() {
            for f in a
                .formation
                .iter()
                .filter(|f| f.schedule.is_some() && f.quantity > 0)
            {
                DynoStatus::add_idle(&mut out, &a.key, &f.process_type, a.release);
            }
        }
        out
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    async fn run(&self, app: &str, request: RunRequest) -> Result<RunHandle, RuntimeError> {
        let desired = self
            .effective()
            .into_iter()
            .find(|a| a.key == app)
            .ok_or_else(|| RuntimeError::UnknownApp(app.to_owned()))?;
        let n = self.inner.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let job_name = format!("{}--run-{n}", desired.name);
        let job =
            one_off_job(&desired, &job_name, &request, &self.inner.cfg).map_err(|message| {
                RuntimeError::Invalid {
                    app: app.to_owned(),
                    message,
                }
            })?;
        self.apply(&job).await?;
        let dyno = format!("run.{n}");
        let (otx, orx) = mpsc::channel(1024);
        let (etx, erx) = oneshot::channel();
        let me = self.clone();
        let d = dyno.clone();
        self.inner
            .tasks
            .spawn(async move { me.follow_job(desired, job_name, d, otx, etx).await });
        Ok(RunHandle {
            dyno,
            output: orx,
            exit: erx,
        })
    }

    async fn restart(&self, app: &str, which: Option<&str>) -> Result<(), RuntimeError> {
        let desired = self
            .effective()
            .into_iter()
            .find(|a| a.key == app)
            .ok_or_else(|| RuntimeError::UnknownApp(app.to_owned()))?;
        // One dyno (`web.7d9f-x1`, as `dynos()` names it): delete its pod, the Deployment
        // replaces it.
        if let Some((t, suffix)) = which.and_then(|w| w.split_once('.')) {
            let pod = format!("{}-{suffix}", workload_name(&desired.name, t));
            let api: Api<Pod> = Api::namespaced(self.inner.client.clone(), &desired.space);
            return match api.delete(&pod, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Err(RuntimeError::Invalid {
                    app: app.to_owned(),
                    message: format!("no dyno {:?}", which.unwrap_or_default()),
                }),
                Err(e) => Err(e.into()),
            };
        }
        // A process type or every one: `kubectl rollout restart`, a new template annotation
        // rolls every pod (rolling, so web keeps serving).
        let types: Vec<String> = desired
            .formation
            .iter()
            .filter(|f| f.app == desired.key && f.schedule.is_none())
            .map(|f| f.process_type.clone())
            .filter(|t| which.is_none_or(|w| w == t))
            .collect();
        let stamp = now_us().to_string();
        for t in types {
            let api: Api<Deployment> = Api::namespaced(self.inner.client.clone(), &desired.space);
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {"wharf.io/restarted-at": stamp}}}}});
            api.patch(
                &workload_name(&desired.name, &t),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
        Ok(())
    }

    async fn shutdown(&self) {
        // Dynos on a cluster outlive the control plane: stop watching, leave them running.
        self.inner.token.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tasks.wait()).await;
    }
}
