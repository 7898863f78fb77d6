//! The Kubernetes runtime against a mock API server (tower-test): the exact requests it sends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};
use wharf_config::{Artifact, DynoState, Formation, HealthCheck, LineSink, LogLine};
use wharf_runtime::kubernetes::{KubeConfig, KubeRuntime};
use wharf_runtime::{DesiredApp, DesiredState, RunRequest, Runtime, RuntimeEvent};

#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Option<Value>,
}

type Responder = dyn Fn(&Call) -> Option<(u16, String)> + Send + Sync;

#[derive(Default)]
struct Api {
    calls: Mutex<Vec<Call>>,
    /// Items returned by LIST requests, by path.
    lists: Mutex<BTreeMap<String, Vec<Value>>>,
    /// Overrides, tried first.
    responders: Mutex<Vec<Arc<Responder>>>,
}

impl Api {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }
    fn applied(&self, path: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "PATCH" && c.path == path)
            .filter_map(|c| c.body)
            .collect()
    }
    fn last_applied(&self, path: &str) -> Value {
        self.applied(path)
            .pop()
            .unwrap_or_else(|| panic!("nothing applied at {path}: {:#?}", self.paths()))
    }
    fn deleted(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "DELETE")
            .map(|c| c.path)
            .collect()
    }
    fn paths(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .map(|c| format!("{} {}?{}", c.method, c.path, c.query))
            .collect()
    }
    fn clear(&self) {
        self.calls.lock().clear();
    }
    fn respond(&self, f: impl Fn(&Call) -> Option<(u16, String)> + Send + Sync + 'static) {
        self.responders.lock().push(Arc::new(f));
    }
}

fn start_mock() -> (kube::Client, Arc<Api>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api = Arc::new(Api::default());
    let a = api.clone();
    tokio::spawn(async move {
        let mut parked = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or("").to_owned(),
                body: serde_json::from_slice(&bytes).ok(),
            };
            a.calls.lock().push(call.clone());
            let responders = a.responders.lock().clone();
            let over = responders.iter().find_map(|r| r(&call));
            let (status, text) = match over {
                Some(r) => r,
                None if call.query.contains("watch=true") => {
                    // Hold watches open: never answered.
                    parked.push(send);
                    continue;
                }
                None if call.method == "PATCH" => (200, bytes_to_string(&bytes)),
                None if call.method == "DELETE" => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
                        .to_string(),
                ),
                None if call.method == "GET" => {
                    let items = a.lists.lock().get(&call.path).cloned();
                    match items {
                        Some(items) => (200, list(items)),
                        None if is_collection(&call.path) => (200, list(Vec::new())),
                        None => (
                            404,
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
                                .to_string(),
                        ),
                    }
                }
                None => (405, "{}".to_owned()),
            };
            let resp = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(text.into_bytes()))
                .unwrap();
            send.send_response(resp);
        }
    });
    (kube::Client::new(service, "default"), api)
}

fn bytes_to_string(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "7"}, "items": items})
        .to_string()
}

/// `/apis/apps/v1/deployments` or `/apis/apps/v1/namespaces/x/deployments` (no name).
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.iter().position(|p| *p == "namespaces") {
        Some(i) => parts.len() == i + 3,
        None => true,
    }
}

#[derive(Default)]
struct Collect(Mutex<Vec<LogLine>>);
impl LineSink for Collect {
    fn send(&self, line: LogLine) {
        self.0.lock().push(line);
    }
}

fn formation(t: &str, quantity: u32) -> Formation {
    Formation {
        app: "api-prod".into(),
        process_type: t.into(),
        quantity,
        size: "standard-2x".into(),
        command: None,
        port: None,
        health_check: None,
        schedule: None,
    }
}

fn api_app(release: u32, web: u32, extra: Vec<Formation>) -> DesiredApp {
    let mut f = formation("web", web);
    f.port = Some(8080);
    f.health_check = Some(HealthCheck::Http {
        path: "/health".into(),
    });
    let mut formation = vec![f];
    formation.extend(extra);
    DesiredApp {
        key: "api-prod".into(),
        name: "api".into(),
        space: "prod".into(),
        release,
        artifact: Artifact::Image(format!("registry.example/api:v{release}")),
        config_vars: BTreeMap::from([("DATABASE_URL".to_owned(), "postgres://db/api".to_owned())]),
        formation,
    }
}

fn runtime(client: kube::Client) -> KubeRuntime {
    let cfg = KubeConfig {
        poll_interval: Duration::from_millis(20),
        ..KubeConfig::default()
    };
    KubeRuntime::new(client, cfg, Arc::new(Collect::default()))
}

fn labels(release: u32, t: &str) -> Value {
    json!({
        "wharf.io/app": "api",
        "wharf.io/space": "prod",
        "wharf.io/release": release.to_string(),
        "wharf.io/type": t,
        "app.kubernetes.io/managed-by": "wharf",
    })
}

const DEPLOY_API: &str = "/apis/apps/v1/namespaces/prod/deployments/api";

#[tokio::test]
async fn formation_applies_exact_objects_server_side() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    rt.converge(DesiredState {
        apps: vec![api_app(1, 2, vec![formation("worker", 1)])],
    })
    .await
    .unwrap();

    // Every write is a server-side apply with Wharf's field manager.
    for c in api.calls().iter().filter(|c| c.method == "PATCH") {
        assert!(
            c.query.contains("fieldManager=wharf") && c.query.contains("force=true"),
            "{c:?}"
        );
    }
    let ns = api.last_applied("/api/v1/namespaces/prod");
    assert_eq!(ns["kind"], "Namespace");
    let secret = api.last_applied("/api/v1/namespaces/prod/secrets/api-config");
    assert_eq!(
        secret["data"]["DATABASE_URL"],
        serde_json::to_value(k8s_openapi::ByteString(b"postgres://db/api".to_vec())).unwrap()
    );
    assert!(secret.get("stringData").is_none());
    assert_eq!(secret["metadata"]["labels"]["wharf.io/app"], "api");

    let expected_web = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "prod", "labels": labels(1, "web")},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"wharf.io/app": "api", "wharf.io/type": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "progressDeadlineSeconds": 120,
            "revisionHistoryLimit": 10,
            "template": {
                "metadata": {"labels": labels(1, "web")},
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "registry.example/api:v1",
                        "env": [
                            {"name": "DYNO", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "PORT", "value": "8080"},
                        ],
                        "envFrom": [{"secretRef": {"name": "api-config"}}],
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                        "readinessProbe": {
                            "httpGet": {"path": "/health", "port": 8080},
                            "periodSeconds": 5,
                            "timeoutSeconds": 3,
                            "failureThreshold": 3,
                        },
                        "resources": {"requests": {"memory": "1024Mi"}, "limits": {"memory": "1024Mi"}},
                    }],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "enableServiceLinks": true,
                },
            },
        },
    });
    assert_eq!(api.last_applied(DEPLOY_API), expected_web);

    let worker = api.last_applied("/apis/apps/v1/namespaces/prod/deployments/api--worker");
    assert_eq!(worker["spec"]["replicas"], 1);
    assert_eq!(worker["metadata"]["labels"], labels(1, "worker"));
    assert!(worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].is_null());

    let svc = api.last_applied("/api/v1/namespaces/prod/services/api");
    assert_eq!(
        svc["spec"],
        json!({
            "type": "ClusterIP",
            "selector": {"wharf.io/app": "api", "wharf.io/type": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        })
    );
    // No Service for the worker.
    assert!(
        api.applied("/api/v1/namespaces/prod/services/api--worker")
            .is_empty()
    );

    // Converging the same state again applies the same objects (idempotent, repairs drift).
    let first: Vec<Value> = api.calls().into_iter().filter_map(|c| c.body).collect();
    api.clear();
    rt.converge(DesiredState {
        apps: vec![api_app(1, 2, vec![formation("worker", 1)])],
    })
    .await
    .unwrap();
    let second: Vec<Value> = api.calls().into_iter().filter_map(|c| c.body).collect();
    assert_eq!(first, second);
    assert!(api.deleted().is_empty());
}

#[tokio::test]
async fn scaling_changes_replicas_only() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    rt.converge(DesiredState {
        apps: vec![api_app(1, 2, vec![])],
    })
    .await
    .unwrap();
    let before = api.last_applied(DEPLOY_API);
    rt.converge(DesiredState {
        apps: vec![api_app(1, 5, vec![])],
    })
    .await
    .unwrap();
    let mut after = api.last_applied(DEPLOY_API);
    assert_eq!(after["spec"]["replicas"], 5);
    after["spec"]["replicas"] = json!(2);
    assert_eq!(before, after);
}

fn deployment_status(release: u32, failed: bool) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "prod", "generation": 2},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"wharf.io/app": "api", "wharf.io/type": "web"}},
            "template": {"metadata": {"labels": labels(release, "web")}, "spec": {"containers": [{"name": "web", "image": "x"}]}},
        },
        "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2, "readyReplicas": 2},
    });
    if failed {
        d["status"] = json!({
            "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
        });
    }
    d
}

#[tokio::test]
async fn deploy_rolls_the_deployment_and_reports_the_release() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    let mut events = rt.events();
    rt.converge(DesiredState {
        apps: vec![api_app(1, 2, vec![])],
    })
    .await
    .unwrap();
    let v1 = api.last_applied(DEPLOY_API);
    api.respond(|c| {
        (c.method == "GET" && c.path == DEPLOY_API)
            .then(|| (200, deployment_status(1, false).to_string()))
    });
    rt.check_rollouts().await.unwrap();
    assert_eq!(
        events.recv().await.unwrap(),
        RuntimeEvent::ReleaseUp {
            app: "api-prod".into(),
            release: 1
        }
    );

    rt.converge(DesiredState {
        apps: vec![api_app(2, 2, vec![])],
    })
    .await
    .unwrap();
    let v2 = api.last_applied(DEPLOY_API);
    // Same selector (immutable), new image and release label: Kubernetes rolls pods one at a
    // time with maxUnavailable 0.
    assert_eq!(v2["spec"]["selector"], v1["spec"]["selector"]);
    assert_eq!(
        v2["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/api:v2"
    );
    assert_eq!(
        v2["spec"]["template"]["metadata"]["labels"]["wharf.io/release"],
        "2"
    );
    assert_eq!(v2["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
}

#[tokio::test]
async fn failed_rollout_is_rolled_back() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    let mut events = rt.events();
    rt.converge(DesiredState {
        apps: vec![api_app(1, 2, vec![])],
    })
    .await
    .unwrap();
    let phase = Arc::new(Mutex::new(1u32));
    let p = phase.clone();
    api.respond(move |c| {
        (c.method == "GET" && c.path == DEPLOY_API).then(|| {
            let release = *p.lock();
            (200, deployment_status(release, release == 2).to_string())
        })
    });
    rt.check_rollouts().await.unwrap();
    assert!(matches!(
        events.recv().await.unwrap(),
        RuntimeEvent::ReleaseUp { release: 1, .. }
    ));
    *phase.lock() = 2;
    rt.converge(DesiredState {
        apps: vec![api_app(2, 2, vec![])],
    })
    .await
    .unwrap();
    assert_eq!(
        api.last_applied(DEPLOY_API)["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/api:v2"
    );
    api.clear();
    rt.check_rollouts().await.unwrap();
    match events.recv().await.unwrap() {
        RuntimeEvent::ReleaseFailed {
            app,
            release,
            rolled_back_to,
            reason,
        } => {
            assert_eq!(app, "api-prod");
            assert_eq!(release, 2);
            assert_eq!(rolled_back_to, Some(1));
            assert!(reason.contains("progress deadline"), "{reason}");
        }
        e => panic!("unexpected {e:?}"),
    }
    // v1 applied again.
    let back = api.last_applied(DEPLOY_API);
    assert_eq!(
        back["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/api:v1"
    );
    // Converging the failed release again keeps v1 (not retried until the release changes).
    api.clear();
    rt.converge(DesiredState {
        apps: vec![api_app(2, 2, vec![])],
    })
    .await
    .unwrap();
    assert_eq!(
        api.last_applied(DEPLOY_API)["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/api:v1"
    );
}

#[tokio::test]
async fn one_off_run_is_a_job_with_streamed_logs_and_exit_code() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    rt.converge(DesiredState {
        apps: vec![api_app(3, 1, vec![])],
    })
    .await
    .unwrap();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api--run-1-abcde", "namespace": "prod"},
        "status": {"phase": "Running"},
    });
    api.lists
        .lock()
        .insert("/api/v1/namespaces/prod/pods".into(), vec![pod]);
    api.respond(|c| {
        (c.method == "GET" && c.path == "/api/v1/namespaces/prod/pods/api--run-1-abcde/log")
            .then(|| (200, "migrating\ndone\n".to_owned()))
    });
    api.respond(|c| {
        (c.method == "GET" && c.path == "/api/v1/namespaces/prod/pods/api--run-1-abcde").then(|| {
            (
                200,
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "api--run-1-abcde", "namespace": "prod"},
                    "status": {"phase": "Failed", "containerStatuses": [{
                        "name": "run", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 3}},
                    }]},
                })
                .to_string(),
            )
        })
    });
    let handle = rt
        .run(
            "api-prod",
            RunRequest {
                command: "rake db:migrate".into(),
                env: BTreeMap::from([("VERBOSE".to_owned(), "1".to_owned())]),
                size: None,
            },
        )
        .await
        .unwrap();
    let n: u64 = handle.dyno.trim_start_matches("run.").parse().unwrap();
    let job_path = format!("/apis/batch/v1/namespaces/prod/jobs/api--run-{n}");
    let (lines, code) = tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .unwrap();
    assert_eq!(lines, vec!["migrating", "done"]);
    assert_eq!(code, Some(3));
    let job = api.last_applied(&job_path);
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    let pod_spec = &job["spec"]["template"]["spec"];
    assert_eq!(pod_spec["restartPolicy"], "Never");
    let c = &pod_spec["containers"][0];
    assert_eq!(c["image"], "registry.example/api:v3");
    assert_eq!(c["command"], json!(["/bin/sh", "-c", "rake db:migrate"]));
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "VERBOSE", "value": "1"}))
    );
    // The log was followed and the pod looked up by the Job's label.
    let calls = api.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.path.ends_with("/log") && c.query.contains("follow=true"))
    );
    assert!(
        calls
            .iter()
            .any(|c| c.path == "/api/v1/namespaces/prod/pods"
                && c.query.contains(&format!("job-name%3Dapi--run-{n}")))
    );
}

#[tokio::test]
async fn schedule_is_a_batch_v1_cron_job() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    let mut report = formation("report", 1);
    report.command = Some("bin/report".into());
    report.schedule = Some("*/15 * * * *".into());
    rt.converge(DesiredState {
        apps: vec![api_app(1, 1, vec![report])],
    })
    .await
    .unwrap();
    let cj = api.last_applied("/apis/batch/v1/namespaces/prod/cronjobs/api--report");
    assert_eq!(cj["apiVersion"], "batch/v1");
    assert_eq!(cj["kind"], "CronJob");
    assert_eq!(cj["spec"]["schedule"], "*/15 * * * *");
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(
        pod["containers"][0]["command"],
        json!(["/bin/sh", "-c", "bin/report"])
    );
    assert_eq!(cj["metadata"]["labels"], labels(1, "report"));
    // A scheduled type is not also a Deployment.
    assert!(
        api.applied("/apis/apps/v1/namespaces/prod/deployments/api--report")
            .is_empty()
    );
    // With no Job pod running, the type is reported idle.
    let idle: Vec<_> = rt
        .dynos()
        .into_iter()
        .filter(|d| d.process_type == "report")
        .map(|d| (d.name, d.state, d.address))
        .collect();
    assert_eq!(idle, vec![("report.1".to_owned(), DynoState::Idle, None)]);
}

fn managed(kind: &str, api_version: &str, name: &str, app: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": "prod", "labels": {"wharf.io/app": app, "app.kubernetes.io/managed-by": "wharf"}},
    })
}

#[tokio::test]
async fn deletion_removes_everything_the_app_owned() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    {
        let mut l = api.lists.lock();
        l.insert(
            "/apis/apps/v1/deployments".into(),
            vec![
                managed("Deployment", "apps/v1", "api", "api"),
                managed("Deployment", "apps/v1", "api--worker", "api"),
            ],
        );
        l.insert(
            "/api/v1/services".into(),
            vec![managed("Service", "v1", "api", "api")],
        );
        l.insert(
            "/api/v1/secrets".into(),
            vec![managed("Secret", "v1", "api-config", "api")],
        );
        l.insert(
            "/apis/batch/v1/cronjobs".into(),
            vec![managed("CronJob", "batch/v1", "api--report", "api")],
        );
    }
    // A process type dropped from the formation: its Deployment goes, the rest stays.
    rt.converge(DesiredState {
        apps: vec![api_app(1, 1, vec![])],
    })
    .await
    .unwrap();
    let mut deleted = api.deleted();
    deleted.sort();
    assert_eq!(
        deleted,
        vec![
            "/apis/apps/v1/namespaces/prod/deployments/api--worker",
            "/apis/batch/v1/namespaces/prod/cronjobs/api--report",
        ]
    );
    // Prune lists only what Wharf manages.
    assert!(api.calls().iter().any(|c| {
        c.path == "/apis/apps/v1/deployments"
            && c.query
                .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dwharf")
    }));
    // The app removed: everything it owned is deleted.
    api.clear();
    rt.converge(DesiredState::default()).await.unwrap();
    let mut deleted = api.deleted();
    deleted.sort();
    assert_eq!(
        deleted,
        vec![
            "/api/v1/namespaces/prod/secrets/api-config",
            "/api/v1/namespaces/prod/services/api",
            "/apis/apps/v1/namespaces/prod/deployments/api",
            "/apis/apps/v1/namespaces/prod/deployments/api--worker",
            "/apis/batch/v1/namespaces/prod/cronjobs/api--report",
        ]
    );
    assert!(api.calls().iter().all(|c| c.method != "PATCH"));
}

fn slice(name: &str, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "prod", "resourceVersion": "5", "labels": {
            "wharf.io/app": "api", "app.kubernetes.io/managed-by": "wharf", "kubernetes.io/service-name": "api",
        }},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

#[tokio::test]
async fn endpoint_slices_become_router_backends() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    rt.converge(DesiredState {
        apps: vec![api_app(4, 2, vec![])],
    })
    .await
    .unwrap();
    api.lists.lock().insert(
        "/apis/discovery.k8s.io/v1/endpointslices".into(),
        vec![slice(
            "api-abc",
            json!([
                {"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "api-7d9f-x1"}},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "api-7d9f-x2"}},
            ]),
        )],
    );
    // The first watch reports the second pod ready; later watches are held open.
    let served = Arc::new(Mutex::new(false));
    let s = served.clone();
    api.respond(move |c| {
        if !(c.path == "/apis/discovery.k8s.io/v1/endpointslices" && c.query.contains("watch=true"))
        {
            return None;
        }
        let mut done = s.lock();
        if *done {
            return None;
        }
        *done = true;
        let obj = slice(
            "api-abc",
            json!([
                {"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "api-7d9f-x1"}},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "api-7d9f-x2"}},
            ]),
        );
        Some((200, format!("{}\n", json!({"type": "MODIFIED", "object": obj}))))
    });
    let mut changes = rt.changes();
    rt.start();
    for _ in 0..200 {
        let up = wharf_runtime::router_endpoints(&rt.dynos());
        if up.len() == 2 {
            let addrs: Vec<String> = up.iter().map(|e| e.address.to_string()).collect();
            assert_eq!(addrs, vec!["10.1.0.5:8080", "10.1.0.6:8080"]);
            assert!(up.iter().all(|e| e.app == "api-prod" && e.release == 4));
            assert_eq!(up[0].process, "web.7d9f-x1");
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
    let up = wharf_runtime::router_endpoints(&rt.dynos());
    assert_eq!(up.len(), 2, "{:#?}", rt.dynos());
    assert!(rt.dynos().iter().all(|d| d.state == DynoState::Up));
    rt.shutdown().await;
}

fn pod(name: &str, t: &str, release: u32, status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod", "resourceVersion": "9", "labels": labels(release, t)},
        "status": status,
    })
}

#[tokio::test]
async fn pods_report_dyno_states_and_crash_loops() {
    let (client, api) = start_mock();
    let sink = Arc::new(Collect::default());
    let rt = KubeRuntime::new(client, KubeConfig::default(), sink.clone());
    let mut events = rt.events();
    rt.converge(DesiredState {
        apps: vec![api_app(4, 1, vec![formation("worker", 2)])],
    })
    .await
    .unwrap();
    let cs = |restarts: u32, state: Value| json!([{"name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": restarts, "state": state}]);
    api.lists.lock().insert(
        "/api/v1/pods".into(),
        vec![
            pod(
                "api-7d9f-x1",
                "web",
                4,
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": cs(2, json!({"running": {}}))}),
            ),
            pod(
                "api--worker-5c6d-aa",
                "worker",
                4,
                json!({"phase": "Running", "containerStatuses": cs(5, json!({"waiting": {"reason": "CrashLoopBackOff"}}))}),
            ),
            pod(
                "api--worker-5c6d-bb",
                "worker",
                4,
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": cs(0, json!({"running": {}}))}),
            ),
            pod("api--worker-5c6d-cc", "worker", 4, json!({"phase": "Pending"})),
        ],
    );
    api.lists.lock().insert(
        "/apis/discovery.k8s.io/v1/endpointslices".into(),
        vec![slice(
            "api-abc",
            json!([{"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "api-7d9f-x1"}}]),
        )],
    );
    let mut changes = rt.changes();
    rt.start();
    for _ in 0..200 {
        if rt.dynos().len() == 4 && rt.dynos().iter().any(|d| d.restarts == 2) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
    let d = rt.dynos();
    let by_name: BTreeMap<&str, (DynoState, u32, u32)> = d
        .iter()
        .map(|d| (d.name.as_str(), (d.state, d.restarts, d.release)))
        .collect();
    assert_eq!(
        by_name,
        BTreeMap::from([
            ("web.7d9f-x1", (DynoState::Up, 2, 4)),
            ("worker.5c6d-aa", (DynoState::Crashed, 5, 4)),
            ("worker.5c6d-bb", (DynoState::Up, 0, 4)),
            ("worker.5c6d-cc", (DynoState::Starting, 0, 4)),
        ]),
        "{d:#?}"
    );
    // Changes are announced as on Heroku.
    let heroku: Vec<(String, String)> = sink
        .0
        .lock()
        .iter()
        .filter(|l| l.source == wharf_config::Source::Heroku)
        .map(|l| (l.process.to_string(), l.line.clone()))
        .collect();
    assert!(
        heroku.contains(&(
            "worker.5c6d-aa".into(),
            "State changed from starting to crashed".into()
        )),
        "{heroku:?}"
    );
    // Only the ready web endpoint is a router backend.
    let backends = wharf_runtime::router_endpoints(&d);
    assert_eq!(backends.len(), 1);
    assert_eq!(backends[0].address.to_string(), "10.1.0.5:8080");
    let mut crashed = false;
    while let Ok(e) = events.try_recv() {
        if let RuntimeEvent::DynoState {
            dyno,
            to: DynoState::Crashed,
            ..
        } = e
        {
            crashed |= dyno == "worker.5c6d-aa";
        }
    }
    assert!(crashed, "a DynoState event for the crash loop");
    rt.shutdown().await;
}

#[tokio::test]
async fn restart_rolls_a_type_or_deletes_one_pod() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    rt.converge(DesiredState {
        apps: vec![api_app(1, 2, vec![formation("worker", 1)])],
    })
    .await
    .unwrap();
    api.clear();
    rt.restart("api-prod", Some("worker")).await.unwrap();
    let calls = api.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, "PATCH");
    assert_eq!(
        calls[0].path,
        "/apis/apps/v1/namespaces/prod/deployments/api--worker"
    );
    assert!(
        calls[0].body.as_ref().unwrap()["spec"]["template"]["metadata"]["annotations"]
            ["wharf.io/restarted-at"]
            .is_string()
    );
    api.clear();
    rt.restart("api-prod", None).await.unwrap();
    let mut paths: Vec<String> = api.calls().into_iter().map(|c| c.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "/apis/apps/v1/namespaces/prod/deployments/api",
            "/apis/apps/v1/namespaces/prod/deployments/api--worker"
        ]
    );
    api.clear();
    rt.restart("api-prod", Some("web.7d9f-x1")).await.unwrap();
    assert_eq!(
        api.deleted(),
        vec!["/api/v1/namespaces/prod/pods/api-7d9f-x1"]
    );
    assert!(matches!(
        rt.restart("nope-prod", None).await,
        Err(wharf_runtime::RuntimeError::UnknownApp(_))
    ));
}

#[tokio::test]
async fn the_background_loop_reapplies_to_repair_drift() {
    let (client, api) = start_mock();
    let cfg = KubeConfig {
        reconcile_interval: Duration::from_millis(50),
        ..KubeConfig::default()
    };
    let rt = KubeRuntime::new(client, cfg, Arc::new(Collect::default()));
    rt.converge(DesiredState {
        apps: vec![api_app(1, 2, vec![])],
    })
    .await
    .unwrap();
    let first = api.last_applied(DEPLOY_API);
    api.clear();
    rt.start();
    for _ in 0..200 {
        if api.applied(DEPLOY_API).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = api.applied(DEPLOY_API);
    assert!(again.len() >= 2, "{:#?}", api.paths());
    assert!(again.iter().all(|d| *d == first));
    rt.shutdown().await;
}

#[tokio::test]
async fn only_images_run_on_kubernetes() {
    let (client, api) = start_mock();
    let rt = runtime(client);
    let mut a = api_app(1, 1, vec![]);
    a.artifact = Artifact::Slug("/srv/app".into());
    let err = rt
        .converge(DesiredState { apps: vec![a] })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("images"), "{err}");
    assert!(api.calls().is_empty(), "{:#?}", api.paths());
}

#[tokio::test]
async fn running_dyno_logs_reach_the_log_shuttle() {
    let (client, api) = start_mock();
    let sink = Arc::new(Collect::default());
    let rt = KubeRuntime::new(client, KubeConfig::default(), sink.clone());
    rt.converge(DesiredState {
        apps: vec![api_app(4, 1, vec![formation("worker", 1)])],
    })
    .await
    .unwrap();
    api.lists.lock().insert(
        "/api/v1/pods".into(),
        vec![
            pod(
                "api--worker-5c6d-aa",
                "worker",
                4,
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
            ),
            pod("api--run-17-xyz", "run", 4, json!({"phase": "Running"})),
        ],
    );
    api.respond(|c| {
        (c.method == "GET" && c.path == "/api/v1/namespaces/prod/pods/api--worker-5c6d-aa/log")
            .then(|| (200, "tick 1\ntick 2\n".to_owned()))
    });
    rt.start();
    let app_lines = || -> Vec<(String, String, String)> {
        sink.0
            .lock()
            .iter()
            .filter(|l| l.source == wharf_config::Source::App)
            .map(|l| (l.app.to_string(), l.process.to_string(), l.line.clone()))
            .collect()
    };
    for _ in 0..200 {
        if app_lines().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = app_lines();
    assert_eq!(
        lines,
        vec![
            ("api-prod".into(), "worker.5c6d-aa".into(), "tick 1".into()),
            ("api-prod".into(), "worker.5c6d-aa".into(), "tick 2".into()),
        ]
    );
    let log_calls: Vec<Call> = api
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/log"))
        .collect();
    assert_eq!(
        log_calls.len(),
        1,
        "one-off pods are followed by their caller: {log_calls:?}"
    );
    assert!(log_calls[0].query.contains("follow=true"));
    rt.shutdown().await;
}
