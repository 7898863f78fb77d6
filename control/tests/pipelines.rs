//! Pipelines and promotions with status checks, canary releases, the audit trail, and the
//! socs/prod rules — through the API (`Router::oneshot`), each test on SQLite and PostgreSQL.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use wharf_config::{RouterEvent, SideFigures};
use wharf_control::auth::Scope;
use wharf_control::canary::FnFigures;
use wharf_control::logs::MemoryLogs;
use wharf_control::store::Store;
use wharf_control::{ControlEvent, ControlPlane, Fault, Settings};

use support::{Db, PgSchema, call, fresh_url, ok};
use wharf_runtime::{
    DesiredState, DynoStatus, RunHandle, RunRequest, Runtime, RuntimeError, RuntimeEvent,
};

#[derive(Debug)]
struct FakeRuntime {
    desired: Mutex<DesiredState>,
    changes: watch::Sender<u64>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl FakeRuntime {
    fn new() -> Self {
        FakeRuntime {
            desired: Mutex::default(),
            changes: watch::channel(0).0,
            events: broadcast::channel(4).0,
        }
    }
    fn desired_keys(&self) -> Vec<(String, u32)> {
        let d = self.desired.lock().unwrap();
        d.apps.iter().map(|a| (a.key.clone(), a.release)).collect()
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn converge(&self, desired: DesiredState) -> Result<(), RuntimeError> {
        *self.desired.lock().unwrap() = desired;
        Ok(())
    }
    fn dynos(&self) -> Vec<DynoStatus> {
        Vec::new()
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
    async fn run(&self, app: &str, _r: RunRequest) -> Result<RunHandle, RuntimeError> {
        Err(RuntimeError::UnknownApp(app.into()))
    }
    async fn restart(&self, _app: &str, _which: Option<&str>) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn shutdown(&self) {}
}

struct Env {
    cp: ControlPlane,
    admin: String,
    runtime: Arc<FakeRuntime>,
    url: String,
    _dir: tempfile::TempDir,
    _schema: Option<PgSchema>,
}

fn settings() -> Settings {
    Settings {
        canary_tick_ms: 50,
        ..Settings::default()
    }
}

async fn env(db: Db) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (url, schema) = fresh_url(db, &dir).await;
    let runtime = Arc::new(FakeRuntime::new());
    let cp = open(&url, runtime.clone()).await;
    let admin = cp
        .create_token(Scope::admin(), "test admin", "admin@example.com")
        .await
        .unwrap();
    Env {
        cp,
        admin,
        runtime,
        url,
        _dir: dir,
        _schema: schema,
    }
}

async fn open(url: &str, runtime: Arc<FakeRuntime>) -> ControlPlane {
    let store = Store::open(url).await.unwrap();
    ControlPlane::new(store, runtime, Arc::new(MemoryLogs::default()), settings())
        .await
        .unwrap()
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Db::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Db::Postgres).await;
            }
        }
    };
}

/// Spaces dev, stage-a and stage-b; `api` in each; a pipeline `api` requiring `ci/tests` with
/// api-dev in development and api-stage-a, api-stage-b in staging; api-dev built (v2).
async fn pipeline_setup(cp: &ControlPlane, t: &str) {
    for space in ["dev", "stage-a", "stage-b"] {
        ok(
            cp,
            Method::POST,
            "/spaces",
            t,
            Some(json!({"name": space})),
            StatusCode::CREATED,
        )
        .await;
        ok(
            cp,
            Method::POST,
            "/apps",
            t,
            Some(json!({"name": "api", "space": space})),
            StatusCode::CREATED,
        )
        .await;
    }
    ok(
        cp,
        Method::POST,
        "/pipelines",
        t,
        Some(json!({"name": "api", "required_checks": ["ci/tests"]})),
        StatusCode::CREATED,
    )
    .await;
    for (app, stage) in [
        ("api-dev", "development"),
        ("api-stage-a", "staging"),
        ("api-stage-b", "staging"),
    ] {
        let b = ok(
            cp,
            Method::POST,
            "/pipeline-couplings",
            t,
            Some(json!({"pipeline": "api", "app": app, "stage": stage})),
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(b["stage"], stage);
    }
    // Each target has its own config, which a promotion keeps.
    for app in ["api-stage-a", "api-stage-b"] {
        ok(
            cp,
            Method::PATCH,
            &format!("/apps/{app}/config-vars"),
            t,
            Some(json!({"WHERE": app})),
            StatusCode::OK,
        )
        .await;
    }
    ok(
        cp,
        Method::PATCH,
        "/apps/api-dev/config-vars",
        t,
        Some(json!({"WHERE": "dev", "DEV_ONLY": "1"})),
        StatusCode::OK,
    )
    .await;
    let b = ok(
        cp,
        Method::POST,
        "/apps/api-dev/builds",
        t,
        Some(json!({"source_blob": {"url": "command:serve v2"}})),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(b["release"]["version"], 3);
}

async fn current(cp: &ControlPlane, t: &str, app: &str) -> (i64, Value) {
    let list = ok(
        cp,
        Method::GET,
        &format!("/apps/{app}/releases"),
        t,
        None,
        StatusCode::OK,
    )
    .await;
    let cur = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["current"] == true)
        .cloned()
        .unwrap();
    (cur["version"].as_i64().unwrap(), cur["artifact"].clone())
}

on_both!(promotion_waits_for_required_checks);
async fn promotion_waits_for_required_checks(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    pipeline_setup(cp, t).await;
    let promote = json!({"pipeline": "api", "source": "api-dev"});

    let r = call(
        cp,
        Method::POST,
        "/pipeline-promotions",
        t,
        Some(promote.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let msg = r.body["message"].as_str().unwrap();
    assert!(msg.contains("ci/tests is missing"), "{msg}");

    ok(
        cp,
        Method::POST,
        "/apps/api-dev/releases/3/statuses",
        t,
        Some(json!({"context": "ci/tests", "state": "pending"})),
        StatusCode::CREATED,
    )
    .await;
    let r = call(
        cp,
        Method::POST,
        "/pipeline-promotions",
        t,
        Some(promote.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("ci/tests is pending"),
        "{}",
        r.body
    );
    for app in ["api-stage-a", "api-stage-b"] {
        assert_eq!(
            current(cp, t, app).await,
            (2, Value::Null),
            "{app} unchanged"
        );
    }

    ok(
        cp,
        Method::POST,
        "/apps/api-dev/releases/3/statuses",
        t,
        Some(json!({"context": "ci/tests", "state": "success"})),
        StatusCode::OK,
    )
    .await;
    let p = ok(
        cp,
        Method::POST,
        "/pipeline-promotions",
        t,
        Some(promote),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(p["state"], "succeeded");
    assert_eq!(p["from_stage"], "development");
    assert_eq!(p["to_stage"], "staging");
    assert_eq!(p["results"].as_array().unwrap().len(), 2);
    for app in ["api-stage-a", "api-stage-b"] {
        let (v, artifact) = current(cp, t, app).await;
        assert_eq!(v, 3, "{app}");
        assert_eq!(artifact, json!({"command": "serve v2"}), "{app}");
        let vars = ok(
            cp,
            Method::GET,
            &format!("/apps/{app}/config-vars"),
            t,
            None,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            vars,
            json!({"WHERE": app}),
            "the artifact moves, never the config"
        );
    }
    let desired = e.runtime.desired_keys();
    assert!(desired.contains(&("api-stage-a".into(), 3)), "{desired:?}");
    assert!(desired.contains(&("api-stage-b".into(), 3)), "{desired:?}");
    let id = p["id"].as_str().unwrap();
    let shown = ok(
        cp,
        Method::GET,
        &format!("/pipeline-promotions/{id}"),
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(shown["state"], "succeeded");
    let listed = ok(
        cp,
        Method::GET,
        "/pipelines/api/promotions",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Nothing after staging: a further promotion has no target.
    let r = call(
        cp,
        Method::POST,
        "/pipeline-promotions",
        t,
        Some(json!({"pipeline": "api", "source": "api-stage-a"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Bad input is a clear 4xx.
    let r = call(
        cp,
        Method::POST,
        "/pipeline-couplings",
        t,
        Some(json!({"pipeline": "api", "app": "api-dev", "stage": "qa"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("review, development")
    );
}

on_both!(promotion_is_all_or_nothing);
async fn promotion_is_all_or_nothing(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    pipeline_setup(cp, t).await;
    ok(
        cp,
        Method::POST,
        "/apps/api-dev/releases/3/statuses",
        t,
        Some(json!({"context": "ci/tests", "state": "success"})),
        StatusCode::CREATED,
    )
    .await;
    let revision = cp.snapshot().revision;
    // The second target fails after the first one's release was written: neither keeps one.
    cp.inject_fault(Some(Fault::PromotionFailAt(1)));
    let r = call(
        cp,
        Method::POST,
        "/pipeline-promotions",
        t,
        Some(json!({"pipeline": "api", "source": "api-dev"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("no target changed"),
        "{}",
        r.body
    );
    for app in ["api-stage-a", "api-stage-b"] {
        assert_eq!(current(cp, t, app).await.0, 2, "{app} unchanged");
        let list = ok(
            cp,
            Method::GET,
            &format!("/apps/{app}/releases"),
            t,
            None,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            list.as_array().unwrap().len(),
            2,
            "{app}: no release written"
        );
    }
    assert_eq!(cp.snapshot().revision, revision, "nothing published");
    let listed = ok(
        cp,
        Method::GET,
        "/pipelines/api/promotions",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed[0]["state"], "failed");
    assert!(
        listed[0]["error"].as_str().unwrap().contains("target 1"),
        "{listed}"
    );

    cp.inject_fault(None);
    let p = ok(
        cp,
        Method::POST,
        "/pipeline-promotions",
        t,
        Some(json!({"pipeline": "api", "source": "api-dev"})),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(p["state"], "succeeded");
    for app in ["api-stage-a", "api-stage-b"] {
        assert_eq!(current(cp, t, app).await.0, 3, "{app}");
    }
}

on_both!(promotion_interrupted_half_way_resumes_after_restart);
async fn promotion_interrupted_half_way_resumes_after_restart(db: Db) {
    let e = env(db).await;
    let t = e.admin.clone();
    pipeline_setup(&e.cp, &t).await;
    ok(
        &e.cp,
        Method::POST,
        "/apps/api-dev/releases/3/statuses",
        &t,
        Some(json!({"context": "ci/tests", "state": "success"})),
        StatusCode::CREATED,
    )
    .await;
    e.cp.inject_fault(Some(Fault::PromotionCrashAt(1)));
    let r = call(
        &e.cp,
        Method::POST,
        "/pipeline-promotions",
        &t,
        Some(json!({"pipeline": "api", "source": "api-dev"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let listed = ok(
        &e.cp,
        Method::GET,
        "/pipelines/api/promotions",
        &t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed[0]["state"], "pending");
    for app in ["api-stage-a", "api-stage-b"] {
        assert_eq!(
            current(&e.cp, &t, app).await.0,
            2,
            "{app}: not half-promoted"
        );
    }
    // The control plane stops and starts again on the same store.
    e.cp.store().close().await;
    let runtime = Arc::new(FakeRuntime::new());
    let cp = open(&e.url, runtime.clone()).await;
    let listed = ok(
        &cp,
        Method::GET,
        "/pipelines/api/promotions",
        &t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed[0]["state"], "succeeded", "{listed}");
    for app in ["api-stage-a", "api-stage-b"] {
        let (v, artifact) = current(&cp, &t, app).await;
        assert_eq!((v, artifact), (3, json!({"command": "serve v2"})), "{app}");
    }
    let desired = runtime.desired_keys();
    assert!(desired.contains(&("api-stage-b".into(), 3)), "{desired:?}");
    let audit = ok(
        &cp,
        Method::GET,
        "/audit?action=resume",
        &t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit[0]["actor"]["email"], "system");
    cp.store().close().await;
}

/// Every log line of this test binary, for the redaction check.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        #[derive(Clone)]
        struct W;
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                captured_logs().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| W)
            .with_ansi(false)
            .try_init();
        Mutex::new(Vec::new())
    })
}

on_both!(socs_redaction_everywhere_and_prod_rules);
async fn socs_redaction_everywhere_and_prod_rules(db: Db) {
    captured_logs();
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    let mut events = cp.events();
    ok(
        cp,
        Method::POST,
        "/spaces",
        t,
        Some(json!({"name": "vault", "compliance": ["socs", "prod"]})),
        StatusCode::CREATED,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/spaces",
        t,
        Some(json!({"name": "open"})),
        StatusCode::CREATED,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "pay", "space": "vault"})),
        StatusCode::CREATED,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "pay", "space": "open"})),
        StatusCode::CREATED,
    )
    .await;
    let secret = "hunter2-4f9a";
    let url_pw = "pw-77c1";
    let vars = json!({"DATABASE_PASSWORD": secret, "Stripe_Secret_Key": secret, "LOG_LEVEL": "debug",
        "DATABASE_URL": format!("postgres://u:{url_pw}@db/x")});
    let r = ok(
        cp,
        Method::PATCH,
        "/apps/pay-vault/config-vars",
        t,
        Some(vars.clone()),
        StatusCode::OK,
    )
    .await;
    let redacted = json!({"DATABASE_PASSWORD": "[REDACTED]", "Stripe_Secret_Key": "[REDACTED]",
        "LOG_LEVEL": "debug", "DATABASE_URL": "postgres://u:[REDACTED]@db/x"});
    assert_eq!(r, redacted);
    assert_eq!(
        ok(
            cp,
            Method::GET,
            "/apps/pay-vault/config-vars",
            t,
            None,
            StatusCode::OK
        )
        .await,
        redacted
    );
    // Outside socs the owner sees the values; the runtime always gets them.
    assert_eq!(
        ok(
            cp,
            Method::PATCH,
            "/apps/pay-open/config-vars",
            t,
            Some(vars.clone()),
            StatusCode::OK
        )
        .await,
        vars
    );
    let r = ok(
        cp,
        Method::POST,
        "/apps/pay-vault/builds",
        t,
        Some(json!({"source_blob": {"url": "command:pay"}})),
        StatusCode::CREATED,
    )
    .await;
    // socs: a build waits for passing checks before it runs.
    let v = r["release"]["version"].as_i64().unwrap();
    let rel = ok(
        cp,
        Method::GET,
        &format!("/apps/pay-vault/releases/{v}"),
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rel["status"], "pending");
    assert_eq!(rel["current"], false);
    assert!(
        e.runtime
            .desired_keys()
            .iter()
            .all(|(k, _)| k != "pay-vault")
    );
    ok(
        cp,
        Method::POST,
        &format!("/apps/pay-vault/releases/{v}/statuses"),
        t,
        Some(json!({"context": "security/scan", "state": "success"})),
        StatusCode::CREATED,
    )
    .await;
    let rel = ok(
        cp,
        Method::GET,
        &format!("/apps/pay-vault/releases/{v}"),
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rel["status"], "succeeded");
    assert_eq!(rel["current"], true);
    let desired = e.runtime.desired.lock().unwrap().clone();
    let pay = desired.apps.iter().find(|a| a.key == "pay-vault").unwrap();
    assert_eq!(
        pay.config_vars["DATABASE_PASSWORD"], secret,
        "the dynos get the real value"
    );
    // A failing check keeps a socs build from running.
    let r = ok(
        cp,
        Method::POST,
        "/apps/pay-vault/builds",
        t,
        Some(json!({"source_blob": {"url": "command:pay2"}})),
        StatusCode::CREATED,
    )
    .await;
    let v2 = r["release"]["version"].as_i64().unwrap();
    ok(
        cp,
        Method::POST,
        &format!("/apps/pay-vault/releases/{v2}/statuses"),
        t,
        Some(json!({"context": "security/scan", "state": "failure"})),
        StatusCode::CREATED,
    )
    .await;
    let rel = ok(
        cp,
        Method::GET,
        &format!("/apps/pay-vault/releases/{v2}"),
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rel["status"], "failed");
    assert_eq!(current(cp, t, "pay-vault").await.0, v);

    // Audit: before and after, redacted, with who and which token.
    let account = ok(cp, Method::GET, "/account", t, None, StatusCode::OK).await;
    let audit = ok(
        cp,
        Method::GET,
        "/audit?app=pay-vault",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    let cfg: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "PATCH /apps/{app}/config-vars")
        .collect();
    assert_eq!(cfg.len(), 1, "{audit}");
    assert_eq!(cfg[0]["actor"]["email"], "admin@example.com");
    assert_eq!(cfg[0]["token"]["id"], account["id"]);
    assert_eq!(cfg[0]["space"]["name"], "vault");
    assert_eq!(cfg[0]["before"], json!({}));
    assert_eq!(cfg[0]["after"], redacted);
    // The open app's audit entry is redacted too: audit always redacts.
    let audit_open = ok(
        cp,
        Method::GET,
        "/audit?app=pay-open",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    let all = format!("{audit}{audit_open}");
    assert!(!all.contains(secret) && !all.contains(url_pw), "{all}");
    assert!(all.contains("[REDACTED]"));

    // prod: a space token may not destroy the app or scale it to zero; an admin may.
    let tok = ok(
        cp,
        Method::POST,
        "/tokens",
        t,
        Some(json!({"email": "dev@example.com", "scope": {"spaces": ["vault"]}})),
        StatusCode::CREATED,
    )
    .await;
    let dev = tok["token"].as_str().unwrap().to_owned();
    let r = call(cp, Method::DELETE, "/apps/pay-vault", &dev, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("prod"));
    let r = call(
        cp,
        Method::PATCH,
        "/apps/pay-vault/formation/web",
        &dev,
        Some(json!({"quantity": 0})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        cp,
        Method::PATCH,
        "/apps/pay-vault/formation",
        &dev,
        Some(json!({"updates": [{"type": "web", "quantity": "0"}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        cp,
        Method::DELETE,
        "/apps/pay-vault/formation/web",
        &dev,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    ok(
        cp,
        Method::PATCH,
        "/apps/pay-vault/formation/web",
        &dev,
        Some(json!({"quantity": 2})),
        StatusCode::OK,
    )
    .await;
    ok(
        cp,
        Method::PATCH,
        "/apps/pay-vault/formation/web",
        t,
        Some(json!({"quantity": 0})),
        StatusCode::OK,
    )
    .await;
    // The token that made the space token shows no secret in the trail either.
    let tokens_audit = ok(
        cp,
        Method::GET,
        "/audit?action=POST%20/tokens",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        tokens_audit[0]["after"]["token"], "[REDACTED]",
        "{tokens_audit}"
    );
    assert!(!tokens_audit.to_string().contains(&dev));
    ok(
        cp,
        Method::DELETE,
        "/apps/pay-vault",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    // The trail of a destroyed app stays listable.
    let audit = ok(
        cp,
        Method::GET,
        "/audit?app=pay-vault",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "DELETE /apps/{app}")
    );

    // Events: every change, redacted.
    let mut seen = Vec::new();
    while let Ok(ControlEvent::Audit(entry)) = events.try_recv() {
        seen.push(entry);
    }
    assert!(seen.len() >= 10, "{seen:?}");
    let cfg = seen
        .iter()
        .find(|a| a.action == "PATCH /apps/{app}/config-vars")
        .unwrap();
    assert_eq!(cfg.after, redacted);
    let text = serde_json::to_string(&seen).unwrap();
    assert!(!text.contains(secret) && !text.contains(url_pw), "{text}");
    // Logs: the control plane never wrote a secret value.
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(logs.contains("config vars changed"), "the capture works");
    assert!(!logs.contains(secret) && !logs.contains(url_pw));
}

on_both!(audit_records_every_kind_of_change);
async fn audit_records_every_kind_of_change(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    let account = ok(cp, Method::GET, "/account", t, None, StatusCode::OK).await;
    let changes: Vec<(Method, &str, Option<Value>, StatusCode)> = vec![
        (
            Method::POST,
            "/spaces",
            Some(json!({"name": "web"})),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/apps",
            Some(json!({"name": "shop", "space": "web"})),
            StatusCode::CREATED,
        ),
        (
            Method::PATCH,
            "/apps/shop-web",
            Some(json!({"description": "the shop"})),
            StatusCode::OK,
        ),
        (
            Method::PATCH,
            "/apps/shop-web/config-vars",
            Some(json!({"A": "1"})),
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/apps/shop-web/builds",
            Some(json!({"source_blob": {"url": "command:shop"}})),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/apps/shop-web/releases",
            Some(json!({"release": "v3"})),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/apps/shop-web/releases/4/statuses",
            Some(json!({"context": "ci", "state": "success"})),
            StatusCode::CREATED,
        ),
        (
            Method::PATCH,
            "/apps/shop-web/formation/web",
            Some(json!({"quantity": 2})),
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/apps/shop-web/domains",
            Some(json!({"hostname": "shop.example.com"})),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/apps/shop-web/log-drains",
            Some(json!({"url": "syslog+tls://logs.example.com:6514"})),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/sites",
            Some(json!({"domain": "www.example.com"})),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/routes",
            Some(
                json!({"site": "www.example.com", "app": "shop-web", "source_path": "/shop", "target_path": "/"}),
            ),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/filters",
            Some(
                json!({"name": "cors", "type": "cors", "options": {"allow_origin": ["https://example.com"]}}),
            ),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/pipelines",
            Some(json!({"name": "shop"})),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/pipeline-couplings",
            Some(json!({"pipeline": "shop", "app": "shop-web", "stage": "production"})),
            StatusCode::CREATED,
        ),
        (
            Method::PUT,
            "/apps/shop-web/canary-settings",
            Some(json!({"enabled": true, "weight": 5})),
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/tokens",
            Some(json!({"email": "ci@example.com", "scope": {"apps": ["shop-web"]}})),
            StatusCode::CREATED,
        ),
        (
            Method::DELETE,
            "/apps/shop-web/domains/shop.example.com",
            None,
            StatusCode::OK,
        ),
    ];
    for (m, path, body, want) in &changes {
        ok(cp, m.clone(), path, t, body.clone(), *want).await;
    }
    let audit = ok(cp, Method::GET, "/audit", t, None, StatusCode::OK).await;
    let entries = audit.as_array().unwrap();
    for (m, path, _, _) in &changes {
        let hit = entries.iter().find(|a| {
            a["resource"] == *path && a["action"].as_str().unwrap().starts_with(m.as_str())
        });
        let hit = hit.unwrap_or_else(|| panic!("no audit entry for {m} {path}: {audit}"));
        assert_eq!(hit["actor"]["email"], "admin@example.com");
        assert_eq!(hit["token"]["id"], account["id"]);
        assert!(hit["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let desc = entries
        .iter()
        .find(|a| a["action"] == "PATCH /apps/{app}")
        .unwrap();
    assert_eq!(desc["before"]["description"], "");
    assert_eq!(desc["after"]["description"], "the shop");
    let deleted = entries
        .iter()
        .find(|a| a["action"] == "DELETE /apps/{app}/domains/{domain}")
        .unwrap();
    assert_eq!(deleted["before"]["hostname"], "shop.example.com");
    assert!(deleted["after"].is_null());
    // Filters: by app, by space, by action; failed calls leave no entry.
    let by_app = ok(
        cp,
        Method::GET,
        "/audit?app=shop-web",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert!(
        by_app
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["app"]["name"] == "shop-web")
    );
    assert!(by_app.as_array().unwrap().len() >= 10, "{by_app}");
    let by_space = ok(cp, Method::GET, "/audit?space=web", t, None, StatusCode::OK).await;
    assert!(
        by_space
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "POST /spaces")
    );
    assert!(
        by_space
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["space"]["name"] == "web")
    );
    let n = entries.len();
    let r = call(
        cp,
        Method::PATCH,
        "/apps/shop-web/config-vars",
        t,
        Some(json!({"1X": "y"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let again = ok(cp, Method::GET, "/audit", t, None, StatusCode::OK).await;
    assert_eq!(again.as_array().unwrap().len(), n);
    // A token scoped to one app sees that app's trail only.
    let tok = ok(
        cp,
        Method::POST,
        "/tokens",
        t,
        Some(json!({"email": "x@example.com", "scope": {"apps": ["shop-web"]}})),
        StatusCode::CREATED,
    )
    .await;
    let scoped = tok["token"].as_str().unwrap();
    let mine = ok(cp, Method::GET, "/audit", scoped, None, StatusCode::OK).await;
    assert!(!mine.as_array().unwrap().is_empty());
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|a| a["app"]["name"] == "shop-web")
    );
    assert_eq!(
        call(cp, Method::GET, "/audit?space=web", scoped, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(cp, Method::GET, "/audit?bogus=1", t, None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let metrics = call(cp, Method::GET, "/metrics", t, None).await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("wharf_control_audit_entries_total")
    );
}

/// An app `web-live` with canaries enabled, released v2 (its first artifact, at once).
async fn canary_setup(cp: &ControlPlane, t: &str, settings: Value) {
    ok(
        cp,
        Method::POST,
        "/spaces",
        t,
        Some(json!({"name": "live", "compliance": ["prod"]})),
        StatusCode::CREATED,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "web", "space": "live"})),
        StatusCode::CREATED,
    )
    .await;
    ok(
        cp,
        Method::PUT,
        "/apps/web-live/canary-settings",
        t,
        Some(settings),
        StatusCode::OK,
    )
    .await;
    let b = ok(
        cp,
        Method::POST,
        "/apps/web-live/builds",
        t,
        Some(json!({"source_blob": {"url": "command:serve v1"}})),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(b["release"]["version"], 2);
    assert_eq!(current(cp, t, "web-live").await.0, 2);
}

/// Build v3: it starts as a canary beside v2.
async fn start_canary(e: &Env, t: &str) {
    let cp = &e.cp;
    ok(
        cp,
        Method::POST,
        "/apps/web-live/builds",
        t,
        Some(json!({"source_blob": {"url": "command:serve v2"}})),
        StatusCode::CREATED,
    )
    .await;
    let rel = ok(
        cp,
        Method::GET,
        "/apps/web-live/releases/3",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rel["status"], "canary");
    assert_eq!(current(cp, t, "web-live").await.0, 2, "stable still serves");
    let snap = cp.snapshot();
    assert_eq!(snap.canaries.len(), 1);
    assert_eq!(
        (
            snap.canaries[0].stable_release,
            snap.canaries[0].canary_release,
            snap.canaries[0].weight
        ),
        (2, 3, 20)
    );
    let desired = e.runtime.desired.lock().unwrap().clone();
    let shadow = desired
        .apps
        .iter()
        .find(|a| a.key == "web-live--canary")
        .expect("canary dynos");
    assert_eq!(shadow.release, 3);
    assert_eq!(shadow.formation.len(), 1);
    assert_eq!(shadow.formation[0].quantity, 1);
    assert!(
        desired
            .apps
            .iter()
            .any(|a| a.key == "web-live" && a.release == 2)
    );
    // No other release while it runs.
    let r = call(
        cp,
        Method::PATCH,
        "/apps/web-live/config-vars",
        t,
        Some(json!({"X": "1"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

/// Poll (bounded) until the app's canary is no longer running; returns it.
async fn wait_ended(cp: &ControlPlane, t: &str) -> Value {
    for _ in 0..200 {
        let k = ok(
            cp,
            Method::GET,
            "/apps/web-live/canary",
            t,
            None,
            StatusCode::OK,
        )
        .await;
        if k["state"] != "running" {
            return k;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the canary never ended");
}

on_both!(canary_promoted_after_its_period_and_minimum_requests);
async fn canary_promoted_after_its_period_and_minimum_requests(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    let served = Arc::new(AtomicU64::new(0));
    let s = served.clone();
    cp.set_canary_figures(Arc::new(FnFigures(move |app: &str| {
        (app == "web-live").then(|| {
            let n = s.load(Ordering::SeqCst);
            (
                [
                    SideFigures {
                        requests: 4 * n,
                        ..Default::default()
                    },
                    SideFigures {
                        requests: n,
                        ..Default::default()
                    },
                ],
                false,
            )
        })
    })));
    canary_setup(
        cp,
        t,
        json!({"enabled": true, "weight": 20, "period_secs": 1, "min_requests": 30}),
    )
    .await;
    start_canary(&e, t).await;
    // The period passes, but too few requests reached the canary: it keeps running.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let k = ok(
        cp,
        Method::GET,
        "/apps/web-live/canary",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(k["state"], "running");
    assert_eq!(k["live_figures"]["canary"]["requests"], 0);
    served.store(30, Ordering::SeqCst);
    let k = wait_ended(cp, t).await;
    assert_eq!(k["state"], "promoted", "{k}");
    assert!(k["reason"].as_str().unwrap().contains("30 requests"), "{k}");
    assert_eq!(k["figures"]["canary"]["requests"], 30);
    assert_eq!(current(cp, t, "web-live").await.0, 3);
    assert!(cp.snapshot().canaries.is_empty());
    let keys = e.runtime.desired_keys();
    assert_eq!(
        keys,
        vec![("web-live".to_owned(), 3)],
        "rolled to v3, canary dynos gone"
    );
    // The control plane audits its own act right after the change commits: wait (bounded)
    // for the entry rather than read it the moment the promotion shows.
    let mut audit = Value::Null;
    for _ in 0..100 {
        audit = ok(
            cp,
            Method::GET,
            "/audit?action=canary%20promote",
            t,
            None,
            StatusCode::OK,
        )
        .await;
        if !audit[0].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(audit[0]["actor"]["email"], "system", "{audit}");
}

on_both!(canary_answering_500s_aborted_by_the_router_event);
async fn canary_answering_500s_aborted_by_the_router_event(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    let (tx, rx) = broadcast::channel(16);
    cp.follow_router_events(rx);
    canary_setup(
        cp,
        t,
        json!({"enabled": true, "weight": 20, "period_secs": 3600, "min_requests": 10}),
    )
    .await;
    start_canary(&e, t).await;
    let stable = SideFigures {
        requests: 400,
        errors_4xx: 3,
        errors_5xx: 1,
    };
    let canary = SideFigures {
        requests: 100,
        errors_4xx: 0,
        errors_5xx: 40,
    };
    tx.send(RouterEvent::CanaryAborted {
        app: "web-live".into(),
        canary_release: 3,
        stable,
        canary,
        z: 11.5,
        reason: "5xx rate 40.0% against 0.3%".into(),
    })
    .unwrap();
    let k = wait_ended(cp, t).await;
    assert_eq!(k["state"], "aborted", "{k}");
    assert!(k["reason"].as_str().unwrap().contains("5xx rate 40.0%"));
    let rel = ok(
        cp,
        Method::GET,
        "/apps/web-live/releases/3",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rel["status"], "aborted");
    assert_eq!(rel["outcome"]["figures"]["canary"]["errors_5xx"], 40);
    assert_eq!(rel["outcome"]["figures"]["stable"]["requests"], 400);
    assert_eq!(rel["outcome"]["figures"]["z"], 11.5);
    assert_eq!(current(cp, t, "web-live").await.0, 2);
    assert!(cp.snapshot().canaries.is_empty());
    assert_eq!(e.runtime.desired_keys(), vec![("web-live".to_owned(), 2)]);
    // A new release may go out again afterwards.
    ok(
        cp,
        Method::PATCH,
        "/apps/web-live/config-vars",
        t,
        Some(json!({"X": "1"})),
        StatusCode::OK,
    )
    .await;
}

on_both!(canary_manual_promote_abort_and_failed_check);
async fn canary_manual_promote_abort_and_failed_check(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    canary_setup(
        cp,
        t,
        json!({"enabled": true, "weight": 20, "period_secs": 3600, "min_requests": 0}),
    )
    .await;
    start_canary(&e, t).await;
    let k = ok(
        cp,
        Method::POST,
        "/apps/web-live/canary/abort",
        t,
        Some(json!({"reason": "looks wrong"})),
        StatusCode::OK,
    )
    .await;
    assert_eq!(k["state"], "aborted");
    assert_eq!(k["reason"], "looks wrong");
    assert_eq!(current(cp, t, "web-live").await.0, 2);
    let r = call(cp, Method::POST, "/apps/web-live/canary/abort", t, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "none running");

    ok(
        cp,
        Method::POST,
        "/apps/web-live/builds",
        t,
        Some(json!({"source_blob": {"url": "command:serve v3"}})),
        StatusCode::CREATED,
    )
    .await;
    let k = ok(
        cp,
        Method::POST,
        "/apps/web-live/canary/promote",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(k["state"], "promoted");
    assert_eq!(k["release"]["version"], 4);
    assert_eq!(current(cp, t, "web-live").await.0, 4);
    assert_eq!(e.runtime.desired_keys(), vec![("web-live".to_owned(), 4)]);

    // A failing status check on a canary release aborts it.
    ok(
        cp,
        Method::POST,
        "/apps/web-live/builds",
        t,
        Some(json!({"source_blob": {"url": "command:serve v4"}})),
        StatusCode::CREATED,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/apps/web-live/releases/5/statuses",
        t,
        Some(json!({"context": "smoke", "state": "failure"})),
        StatusCode::CREATED,
    )
    .await;
    let k = ok(
        cp,
        Method::GET,
        "/apps/web-live/canary",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(k["state"], "aborted");
    assert!(
        k["reason"].as_str().unwrap().contains("smoke is failure"),
        "{k}"
    );
    assert_eq!(current(cp, t, "web-live").await.0, 4);
    let audit = ok(
        cp,
        Method::GET,
        "/audit?app=web-live&action=POST%20/apps/{app}/canary",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(audit.as_array().unwrap().len(), 2, "{audit}");
}

on_both!(side_writes_beside_revision_writes_never_fail);
/// Pipelines and canary settings are not part of the router's config, but they are written
/// while config writes go on (in `wharf up`, every dyno that starts is a revision write). On
/// SQLite a transaction that reads and then writes fails at once when another writer committed
/// in between (its snapshot is stale; no busy timeout helps), so every writer must take its
/// turn: none of these may answer 503.
async fn side_writes_beside_revision_writes_never_fail(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    ok(
        cp,
        Method::POST,
        "/spaces",
        t,
        Some(json!({"name": "side"})),
        StatusCode::CREATED,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "web", "space": "side"})),
        StatusCode::CREATED,
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Revision writes, back to back: the runtime's dyno changes and config var changes.
    let dynos = {
        let (runtime, stop) = (e.runtime.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                runtime.changes.send_modify(|v| *v += 1);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let config = {
        let (cp, t, stop) = (cp.clone(), t.to_owned(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                ok(
                    &cp,
                    Method::PATCH,
                    "/apps/web-side/config-vars",
                    &t,
                    Some(json!({"N": n.to_string()})),
                    StatusCode::OK,
                )
                .await;
            }
            n
        })
    };
    for i in 0..25 {
        let name = format!("p{i}");
        ok(
            cp,
            Method::POST,
            "/pipelines",
            t,
            Some(json!({"name": name})),
            StatusCode::CREATED,
        )
        .await;
        ok(
            cp,
            Method::PATCH,
            &format!("/pipelines/{name}"),
            t,
            Some(json!({"required_checks": [format!("ci/{i}")]})),
            StatusCode::OK,
        )
        .await;
        let k = ok(
            cp,
            Method::POST,
            "/pipeline-couplings",
            t,
            Some(json!({"pipeline": name, "app": "web-side", "stage": "development"})),
            StatusCode::CREATED,
        )
        .await;
        ok(
            cp,
            Method::DELETE,
            &format!("/pipeline-couplings/{}", k["id"].as_str().unwrap()),
            t,
            None,
            StatusCode::OK,
        )
        .await;
        ok(
            cp,
            Method::PUT,
            "/apps/web-side/canary-settings",
            t,
            Some(json!({"weight": i + 1})),
            StatusCode::OK,
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    dynos.await.unwrap();
    let config_writes = config.await.unwrap();
    assert!(config_writes > 0);
    let list = ok(cp, Method::GET, "/pipelines", t, None, StatusCode::OK).await;
    assert_eq!(list.as_array().unwrap().len(), 25, "{list}");
    let s = ok(
        cp,
        Method::GET,
        "/apps/web-side/canary-settings",
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(s["weight"], 25, "{s}");
}
