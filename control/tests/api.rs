//! The API end to end through `Router::oneshot`, each test on SQLite and on PostgreSQL.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::{Method, StatusCode};
use serde_json::json;
use tokio::sync::{broadcast, watch};
use wharf_config::{DynoState, LineSink, LogLine, Source};
use wharf_control::auth::Scope;
use wharf_control::logs::MemoryLogs;
use wharf_control::store::Store;
use wharf_control::{ControlPlane, Settings};

use support::{Db, PgSchema, call, call_raw, fresh_store, ok};
use wharf_runtime::{
    DesiredState, DynoStatus, RunHandle, RunRequest, Runtime, RuntimeError, RuntimeEvent,
};

/// A runtime that records what it is told and reports the dynos a test sets.
#[derive(Debug)]
struct FakeRuntime {
    desired: Mutex<DesiredState>,
    dynos: Mutex<Vec<DynoStatus>>,
    restarts: Mutex<Vec<(String, Option<String>)>>,
    changes: watch::Sender<u64>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl FakeRuntime {
    fn new() -> Self {
        FakeRuntime {
            desired: Mutex::default(),
            dynos: Mutex::default(),
            restarts: Mutex::default(),
            changes: watch::channel(0).0,
            events: broadcast::channel(4).0,
        }
    }
    fn set_dynos(&self, d: Vec<DynoStatus>) {
        *self.dynos.lock().unwrap() = d;
        self.changes.send_modify(|n| *n += 1);
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn converge(&self, desired: DesiredState) -> Result<(), RuntimeError> {
        *self.desired.lock().unwrap() = desired;
        Ok(())
    }
    fn dynos(&self) -> Vec<DynoStatus> {
        self.dynos.lock().unwrap().clone()
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
    async fn restart(&self, app: &str, which: Option<&str>) -> Result<(), RuntimeError> {
        self.restarts
            .lock()
            .unwrap()
            .push((app.into(), which.map(str::to_owned)));
        Ok(())
    }
    async fn shutdown(&self) {}
}

struct Env {
    cp: ControlPlane,
    admin: String,
    runtime: Arc<FakeRuntime>,
    logs: Arc<MemoryLogs>,
    _dir: tempfile::TempDir,
    _schema: Option<PgSchema>,
}

async fn env(db: Db) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (store, schema) = fresh_store(db, &dir).await;
    let runtime = Arc::new(FakeRuntime::new());
    let logs = Arc::new(MemoryLogs::default());
    let settings = Settings {
        public_url: Some("http://control.test".into()),
        ..Settings::default()
    };
    let cp = ControlPlane::new(store, runtime.clone(), logs.clone(), settings)
        .await
        .unwrap();
    let admin = cp
        .create_token(Scope::admin(), "test admin", "admin@example.com")
        .await
        .unwrap();
    Env {
        cp,
        admin,
        runtime,
        logs,
        _dir: dir,
        _schema: schema,
    }
}

fn both(name: &str) {
    let _ = name;
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

on_both!(apps_config_releases_rollback);
async fn apps_config_releases_rollback(db: Db) {
    both("apps");
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    let r = call(
        cp,
        Method::POST,
        "/spaces",
        t,
        Some(json!({"name": "prod", "compliance": ["prod", "socs"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["compliance"], json!(["prod", "socs"]));
    let r = call(
        cp,
        Method::POST,
        "/spaces",
        t,
        Some(json!({"name": "prod"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["id"], "conflict");
    let r = call(
        cp,
        Method::POST,
        "/spaces",
        t,
        Some(json!({"name": "x", "compliance": ["pci"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    let r = call(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "api", "space": "prod"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["name"], "api-prod");
    assert_eq!(r.body["owner"]["email"], "admin@example.com");
    let r = call(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "api", "space": "prod"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = call(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "Bad_Name"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["id"], "invalid_params");
    let r = call(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "web", "space": "nope"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call_raw(
        cp,
        Method::POST,
        "/apps",
        Some(t),
        Some("{not json".into()),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["id"], "bad_request");
    let r = call(cp, Method::GET, "/apps/nope", t, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["id"], "not_found");
    // Heroku clients omit the space: the default space.
    let r = call(cp, Method::POST, "/apps", t, Some(json!({"name": "web"}))).await;
    assert_eq!(r.body["name"], "web-default");
    // Bare name, key and id all find it.
    for ident in ["api", "api-prod"] {
        let r = call(cp, Method::GET, &format!("/apps/{ident}"), t, None).await;
        assert_eq!(r.status, StatusCode::OK);
    }

    let r = call(
        cp,
        Method::PATCH,
        "/apps/api-prod/config-vars",
        t,
        Some(json!({"A": "1", "B": "2"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"A": "1", "B": "2"}));
    let r = call(
        cp,
        Method::PATCH,
        "/apps/api-prod/config-vars",
        t,
        Some(json!({"A": null, "C": "3"})),
    )
    .await;
    assert_eq!(r.body, json!({"B": "2", "C": "3"}));
    let r = call(
        cp,
        Method::PATCH,
        "/apps/api-prod/config-vars",
        t,
        Some(json!({"1BAD": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = call(
        cp,
        Method::PATCH,
        "/apps/api-prod/config-vars",
        t,
        Some(json!({"X": {"a": 1}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = call(cp, Method::GET, "/apps/api-prod/config-vars", t, None).await;
    assert_eq!(r.body, json!({"B": "2", "C": "3"}));

    let r = call_raw(
        cp,
        Method::GET,
        "/apps/api-prod/releases",
        Some(t),
        None,
        &[("range", "version ..; max=1, order=desc")],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body[0]["version"], 3);
    assert_eq!(r.body[0]["current"], true);
    assert!(r.headers.contains_key("next-range"));

    // Rollback to v2 is a new release v4 with v2's config.
    let v2 = call(cp, Method::GET, "/apps/api-prod/releases/2", t, None).await;
    let r = call(
        cp,
        Method::POST,
        "/apps/api-prod/releases",
        t,
        Some(json!({"release": v2.body["id"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["version"], 4);
    assert_eq!(r.body["description"], "Rollback to v2");
    let r = call(cp, Method::GET, "/apps/api-prod/config-vars", t, None).await;
    assert_eq!(r.body, json!({"A": "1", "B": "2"}));
    let r = call(
        cp,
        Method::POST,
        "/apps/api-prod/releases",
        t,
        Some(json!({"release": "v99"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        cp,
        Method::POST,
        "/apps/api-prod/releases",
        t,
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Formation: the Heroku CLI sends quantity as a string; scaling makes no release.
    let r = call(
        cp,
        Method::PATCH,
        "/apps/api-prod/formation",
        t,
        Some(json!({"updates": [{"type": "web", "quantity": "2"}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body[0]["quantity"], 2);
    let r = call(
        cp,
        Method::PATCH,
        "/apps/api-prod/formation/worker",
        t,
        Some(json!({"quantity": 3, "command": "work", "size": "standard-2x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(
        cp,
        Method::PATCH,
        "/apps/api-prod/formation/web",
        t,
        Some(json!({"quantity": -1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = call(
        cp,
        Method::PATCH,
        "/apps/api-prod/formation/web",
        t,
        Some(json!({"size": "huge"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = call(cp, Method::GET, "/apps/api-prod/formation", t, None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 2);
    let r = call(cp, Method::GET, "/apps/api-prod/releases", t, None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 4);

    // The snapshot follows, with the app, its formation and its space's compliance.
    let s = cp.snapshot();
    assert!(s.apps.iter().any(|a| a.key() == "api-prod"));
    assert!(
        s.formation
            .iter()
            .any(|f| f.app == "api-prod" && f.process_type == "worker" && f.quantity == 3)
    );
    let space = s.spaces.iter().find(|x| x.name == "prod").unwrap();
    assert_eq!(space.compliance.len(), 2);

    // Destroy.
    let r = call(cp, Method::DELETE, "/apps/api-prod", t, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(cp, Method::GET, "/apps/api-prod", t, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!cp.snapshot().apps.iter().any(|a| a.key() == "api-prod"));
    let r = call(cp, Method::DELETE, "/spaces/prod", t, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(cp, Method::DELETE, "/spaces/default", t, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

on_both!(auth_and_scopes);
async fn auth_and_scopes(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    let r = call_raw(cp, Method::GET, "/apps", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["id"], "unauthorized");
    let r = call_raw(cp, Method::GET, "/apps", Some("wharf_nope"), None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    call(
        cp,
        Method::POST,
        "/spaces",
        t,
        Some(json!({"name": "team"})),
    )
    .await;
    call(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "mine", "space": "team"})),
    )
    .await;
    call(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "theirs"})),
    )
    .await;

    let r = call(cp, Method::POST, "/tokens", t, Some(json!({"description": "team", "email": "dev@example.com", "scope": {"spaces": ["team"]}}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let team = r.body["token"].as_str().unwrap().to_owned();
    let r = call(cp, Method::POST, "/tokens", t, Some(json!({"scope": {}}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    let r = call(cp, Method::GET, "/apps", &team, None).await;
    let names: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine-team"]);
    assert_eq!(
        call(cp, Method::GET, "/apps/mine-team", &team, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(cp, Method::GET, "/apps/theirs", &team, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = call(
        cp,
        Method::PATCH,
        "/apps/theirs/config-vars",
        &team,
        Some(json!({"A": "1"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["id"], "forbidden");
    ok(
        cp,
        Method::POST,
        "/apps",
        &team,
        Some(json!({"name": "new"})),
        StatusCode::FORBIDDEN,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/apps",
        &team,
        Some(json!({"name": "new", "space": "team"})),
        StatusCode::CREATED,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/spaces",
        &team,
        Some(json!({"name": "other"})),
        StatusCode::FORBIDDEN,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/tokens",
        &team,
        Some(json!({"scope": {"admin": true}})),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        call(cp, Method::GET, "/v1/snapshot", &team, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = call(cp, Method::GET, "/account", &team, None).await;
    assert_eq!(r.body["email"], "dev@example.com");

    // App-scoped token.
    let r = call(
        cp,
        Method::POST,
        "/tokens",
        t,
        Some(json!({"scope": {"apps": ["theirs-default"]}})),
    )
    .await;
    let one = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        call(cp, Method::GET, "/apps/theirs", &one, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(cp, Method::GET, "/apps/mine-team", &one, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // Tokens are stored hashed; deleting one revokes it.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE hash = $1")
        .bind(&one)
        .fetch_one(cp.store().pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
    let r = call(cp, Method::GET, "/tokens", t, None).await;
    let id = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["scope"]["apps"] == json!(["theirs-default"]))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        call(cp, Method::DELETE, &format!("/tokens/{id}"), t, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(cp, Method::GET, "/apps/theirs", &one, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

on_both!(pagination);
async fn pagination(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    for i in 0..5 {
        call(
            cp,
            Method::POST,
            "/apps",
            t,
            Some(json!({"name": format!("app{i}")})),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut range = "name ..; max=2".to_owned();
    for _ in 0..10 {
        let r = call_raw(
            cp,
            Method::GET,
            "/apps",
            Some(t),
            None,
            &[("range", &range)],
        )
        .await;
        for a in r.body.as_array().unwrap() {
            seen.push(a["simple_name"].as_str().unwrap().to_owned());
        }
        match r.headers.get("next-range") {
            Some(n) => {
                assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
                range = n.to_str().unwrap().to_owned();
            }
            None => {
                assert_eq!(r.status, StatusCode::OK);
                break;
            }
        }
    }
    assert_eq!(seen, ["app0", "app1", "app2", "app3", "app4"]);
    let r = call_raw(
        cp,
        Method::GET,
        "/apps",
        Some(t),
        None,
        &[("range", "name ..; max=2, order=desc")],
    )
    .await;
    assert_eq!(r.body[0]["simple_name"], "app4");
    let r = call_raw(
        cp,
        Method::GET,
        "/apps",
        Some(t),
        None,
        &[("range", "bogus ..")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

on_both!(sites_routes_filters_drains_certs);
async fn sites_routes_filters_drains_certs(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    call(
        cp,
        Method::POST,
        "/spaces",
        t,
        Some(json!({"name": "priv", "compliance": ["internal"]})),
    )
    .await;
    call(cp, Method::POST, "/apps", t, Some(json!({"name": "api"}))).await;
    call(
        cp,
        Method::POST,
        "/apps",
        t,
        Some(json!({"name": "secret", "space": "priv"})),
    )
    .await;
    let r = call(
        cp,
        Method::POST,
        "/sites",
        t,
        Some(json!({"domain": "www.example.com"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    ok(
        cp,
        Method::POST,
        "/sites",
        t,
        Some(json!({"domain": "www.example.com"})),
        StatusCode::CONFLICT,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/sites",
        t,
        Some(json!({"domain": "not a host"})),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    let r = call(cp, Method::POST, "/routes", t, Some(json!({"site": "www.example.com", "app": "api-default", "source_path": "/api", "target_path": "/"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let route_id = r.body["id"].as_str().unwrap().to_owned();
    ok(
        cp,
        Method::POST,
        "/routes",
        t,
        Some(json!({"site": "www.example.com", "app": "api", "source_path": "/api/"})),
        StatusCode::CONFLICT,
    )
    .await;
    // A public site routing to an internal app: the snapshot would be invalid → 422 with problems.
    let r = call(
        cp,
        Method::POST,
        "/routes",
        t,
        Some(json!({"site": "www.example.com", "app": "secret-priv", "source_path": "/secret"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body["problems"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("routes[")
    );
    assert!(!cp.snapshot().routes.iter().any(|x| x.app == "secret-priv"));
    let s = cp.snapshot();
    let route = s
        .routes
        .iter()
        .find(|x| x.site == "www.example.com")
        .unwrap();
    assert_eq!(
        (route.app.as_str(), route.source_path.as_str()),
        ("api-default", "/api")
    );
    assert_eq!(
        call(cp, Method::GET, "/sites/www.example.com/routes", t, None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(cp, Method::GET, "/apps/api/routes", t, None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Filters.
    let r = call(cp, Method::POST, "/filters", t, Some(json!({"name": "auth", "type": "jwt", "options": {"jwks_uri": "https://id.example.com/jwks", "issuer": "https://id.example.com/", "audiences": "a,b"}}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["options"]["audiences"], json!(["a", "b"]));
    let r = call(cp, Method::POST, "/filters", t, Some(json!({"name": "cors", "type": "cors", "options": {"allow_origin": ["https://a.example.com"], "max_age": 600}}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    ok(
        cp,
        Method::POST,
        "/filters",
        t,
        Some(json!({"name": "x", "type": "csp"})),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/filters",
        t,
        Some(json!({"name": "y", "type": "jwt", "options": {"bogus": 1}})),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    // Invalid per the config crate (http JWKS on a public host) → 422 from snapshot validation.
    let r = call(cp, Method::POST, "/filters", t, Some(json!({"name": "z", "type": "jwt", "options": {"jwks_uri": "http://id.example.com/jwks", "issuer": "i"}}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = call(
        cp,
        Method::POST,
        "/apps/api/filters",
        t,
        Some(json!({"filter": {"id": "auth"}, "options": {"excludes": ["/health"]}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let att = r.body["id"].as_str().unwrap().to_owned();
    ok(
        cp,
        Method::POST,
        "/apps/api/filters",
        t,
        Some(json!({"filter": "auth"})),
        StatusCode::CONFLICT,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/apps/api/filters",
        t,
        Some(json!({"filter": "nope"})),
        StatusCode::NOT_FOUND,
    )
    .await;
    let s = cp.snapshot();
    assert_eq!(s.attachments.len(), 1);
    assert_eq!(s.attachments[0].excludes, ["/health"]);
    let r = call(
        cp,
        Method::PUT,
        &format!("/apps/api/filters/{att}"),
        t,
        Some(json!({"options": {"includes": ["/api"]}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(cp.snapshot().attachments[0].includes, ["/api"]);
    assert_eq!(
        call(cp, Method::DELETE, "/filters/auth", t, None)
            .await
            .status,
        StatusCode::OK
    );
    assert!(cp.snapshot().attachments.is_empty());

    // Drains.
    let r = call(
        cp,
        Method::POST,
        "/apps/api/log-drains",
        t,
        Some(json!({"url": "syslog+tls://logs.example.com:6514"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body["token"].as_str().unwrap().starts_with("d."));
    ok(
        cp,
        Method::POST,
        "/apps/api/log-drains",
        t,
        Some(json!({"url": "syslog+tls://logs.example.com:6514"})),
        StatusCode::CONFLICT,
    )
    .await;
    ok(
        cp,
        Method::POST,
        "/apps/api/log-drains",
        t,
        Some(json!({"url": "ftp://x"})),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        call(cp, Method::POST, "/apps/api/log-drains", t, Some(json!({})))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(cp.snapshot().drains.len(), 1);
    // What the planes load from it: the router serves the site and the app, the shuttle drains.
    let compiled = wharf_config::compile(&cp.snapshot());
    assert_eq!(compiled.router.revision, cp.snapshot().revision);
    assert!(compiled.router.hosts.contains_key("www.example.com"));
    assert!(
        compiled
            .router
            .hosts
            .contains_key("api-default.wharf.localhost")
    );
    assert!(compiled.shuttle.apps.contains_key("api-default"));
    let r = call(cp, Method::GET, "/apps/api/log-drains", t, None).await;
    let drain = r.body[0]["id"].as_str().unwrap().to_owned();
    ok(
        cp,
        Method::DELETE,
        &format!("/apps/api/log-drains/{drain}"),
        t,
        None,
        StatusCode::OK,
    )
    .await;
    assert!(cp.snapshot().drains.is_empty());

    // Custom domains.
    let r = call(
        cp,
        Method::POST,
        "/apps/api/domains",
        t,
        Some(json!({"hostname": "api.example.com"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    ok(
        cp,
        Method::POST,
        "/apps/api/domains",
        t,
        Some(json!({"hostname": "api.example.com"})),
        StatusCode::CONFLICT,
    )
    .await;
    let r = call(cp, Method::GET, "/apps/api/domains", t, None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 2);
    assert_eq!(
        cp.snapshot()
            .apps
            .iter()
            .find(|a| a.name == "api")
            .unwrap()
            .domains,
        ["api.example.com"]
    );

    // Certificates: an invalid PEM is refused by validation, keys never come back.
    let r = call(cp, Method::POST, "/certificates", t, Some(json!({"name": "bad", "names": ["api.example.com"], "certificate_chain": "nope", "private_key": "nope"}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!r.body.to_string().contains("private_key\":\"nope"));

    assert_eq!(
        call(cp, Method::DELETE, &format!("/routes/{route_id}"), t, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(cp, Method::DELETE, "/sites/www.example.com", t, None)
            .await
            .status,
        StatusCode::OK
    );
    assert!(cp.snapshot().sites.is_empty());
}

on_both!(builds_runtime_and_endpoints);
async fn builds_runtime_and_endpoints(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    call(cp, Method::POST, "/apps", t, Some(json!({"name": "api"}))).await;
    call(
        cp,
        Method::PATCH,
        "/apps/api/config-vars",
        t,
        Some(json!({"GREETING": "hi"})),
    )
    .await;
    assert!(
        e.runtime.desired.lock().unwrap().apps.is_empty(),
        "no artifact yet, nothing runs"
    );
    ok(
        cp,
        Method::POST,
        "/apps/api/builds",
        t,
        Some(json!({"source_blob": {"url": "docker://registry/api"}})),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let r = call(
        cp,
        Method::POST,
        "/apps/api/builds",
        t,
        Some(json!({"source_blob": {"url": "docker://registry/api:1"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["release"]["version"], 3);
    let desired = e.runtime.desired.lock().unwrap().clone();
    assert_eq!(desired.apps.len(), 1);
    assert_eq!(desired.apps[0].release, 3);
    assert_eq!(
        desired.apps[0]
            .config_vars
            .get("GREETING")
            .map(String::as_str),
        Some("hi")
    );
    let s = cp.snapshot();
    assert_eq!(s.apps[0].release, Some(3));
    let rev = s.revision;

    // Dynos the runtime reports become endpoints, in a new revision.
    let mut rx = cp.snapshots();
    let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    e.runtime.set_dynos(vec![DynoStatus {
        id: "d1".into(),
        restarts: 0,
        app: "api-default".into(),
        name: "web.1".into(),
        process_type: "web".into(),
        release: 3,
        state: DynoState::Up,
        address: Some(addr),
        updated_at_us: 1,
    }]);
    for _ in 0..50 {
        if !rx.borrow_and_update().endpoints.is_empty() {
            break;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), rx.changed()).await;
    }
    let s = cp.snapshot();
    assert!(s.revision > rev);
    assert_eq!(s.endpoints[0].address, addr);
    let r = call(cp, Method::GET, "/apps/api/dynos", t, None).await;
    assert_eq!(r.body[0]["name"], "web.1");
    assert_eq!(r.body[0]["state"], "up");
    assert_eq!(
        call(cp, Method::DELETE, "/apps/api/dynos/web.1", t, None)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        call(cp, Method::DELETE, "/apps/api/dynos", t, None)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(e.runtime.restarts.lock().unwrap().len(), 2);

    // Release statuses.
    let r = call(
        cp,
        Method::POST,
        "/apps/api/releases/3/statuses",
        t,
        Some(json!({"context": "ci/tests", "state": "pending"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = call(
        cp,
        Method::POST,
        "/apps/api/releases/3/statuses",
        t,
        Some(json!({"context": "ci/tests", "state": "success"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    ok(
        cp,
        Method::POST,
        "/apps/api/releases/3/statuses",
        t,
        Some(json!({"context": "ci", "state": "maybe"})),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let r = call(cp, Method::GET, "/apps/api/releases/3/statuses", t, None).await;
    assert_eq!(r.body[0]["state"], "success");

    // Rollback to a release without a build when one is deployed: refused.
    ok(
        cp,
        Method::POST,
        "/apps/api/releases",
        t,
        Some(json!({"release": "1"})),
        StatusCode::CONFLICT,
    )
    .await;
    // Deploy a build again by slug id.
    let builds = call(cp, Method::GET, "/apps/api/builds", t, None).await;
    let r = call(
        cp,
        Method::POST,
        "/apps/api/releases",
        t,
        Some(json!({"slug": builds.body[0]["id"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(e.runtime.desired.lock().unwrap().apps[0].release, 4);
}

on_both!(log_sessions);
async fn log_sessions(db: Db) {
    let e = env(db).await;
    let (cp, t) = (&e.cp, e.admin.as_str());
    call(cp, Method::POST, "/apps", t, Some(json!({"name": "api"}))).await;
    for i in 0..3 {
        e.logs.send(LogLine {
            app: "api-default".into(),
            space: "default".into(),
            source: Source::App,
            process: "web.1".into(),
            timestamp_us: 1_700_000_000_000_000 + i,
            line: format!("line {i}"),
        });
    }
    let r = call(
        cp,
        Method::POST,
        "/apps/api/log-sessions",
        t,
        Some(json!({"lines": 2, "tail": false})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let url = r.body["logplex_url"].as_str().unwrap().to_owned();
    let path = url.strip_prefix("http://control.test").unwrap();
    let r = call_raw(cp, Method::GET, path, None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body.as_str().unwrap().to_owned();
    assert!(
        !text.contains("line 0") && text.contains("line 1") && text.contains("line 2"),
        "{text}"
    );
    assert!(text.contains("app[web.1]: line 2"));
    // Without its credential, or with a wrong one, the URL opens nothing.
    let bare = path.split('?').next().unwrap();
    assert_eq!(
        call_raw(cp, Method::GET, bare, None, None, &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call_raw(cp, Method::GET, &format!("{bare}?token=x"), None, None, &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    ok(
        cp,
        Method::POST,
        "/apps/api/log-sessions",
        t,
        Some(json!({"lines": 99999})),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
}

/// Once for real over a socket: the long-poll snapshot feed wakes on a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_long_poll_over_a_socket() {
    let e = env(Db::Sqlite).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = e.cp.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let rev = e.cp.snapshot().revision;
    let admin = e.admin.clone();
    let poll = tokio::spawn(async move {
        get(addr, &format!("/v1/snapshot?after={rev}&wait=30"), &admin).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = call(
        &e.cp,
        Method::POST,
        "/apps",
        &e.admin,
        Some(json!({"name": "late"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let text = poll.await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"late\""));
    let now = e.cp.snapshot().revision;
    let text = get(addr, &format!("/v1/snapshot?after={now}&wait=0"), &e.admin).await;
    assert!(text.starts_with("HTTP/1.1 204"), "{text}");
    let text = get(addr, "/openapi.json", "").await;
    assert!(text.starts_with("HTTP/1.1 200"));
    let _ = BTreeMap::<String, String>::new();
}

async fn get(addr: SocketAddr, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The router and the generated OpenAPI document agree both ways: every documented operation is
/// mounted (none answers the router's own "No such endpoint." or 405), every other method on a
/// documented path is the router's 405, `/openapi.json` serves exactly that document, and
/// nothing in the control plane's source mounts a route outside `utoipa_axum::routes!` (the
/// only way a route could be mounted without being documented).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_and_router_agree() {
    let e = env(Db::Sqlite).await;
    let doc = wharf_control::openapi::document();
    assert_eq!(doc["openapi"], "3.1.0");
    let ops = wharf_control::openapi::operations(&doc);
    eprintln!("the document has {} operations", ops.len());
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let paths: BTreeSet<&str> = ops.iter().map(|(_, p)| p.as_str()).collect();
    for path in &paths {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "zz-missing" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for m in methods {
            let documented = ops.iter().any(|(om, op)| om == m && op == path);
            let body = (m != "GET" && m != "DELETE").then(|| "{}".to_owned());
            let r = call_raw(
                &e.cp,
                Method::from_bytes(m.as_bytes()).unwrap(),
                &format!("{concrete}?wait=0"),
                Some(&e.admin),
                body,
                &[],
            )
            .await;
            assert_ne!(r.body["message"], "No such endpoint.", "{m} {path}");
            if documented {
                assert_ne!(
                    r.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} documented, not mounted"
                );
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} mounted, not documented"
                );
            }
        }
    }
    // Every resource module's paths are there (the document is not silently short).
    for p in [
        "/account",
        "/tokens/{token}",
        "/spaces/{space}",
        "/users/{user}/apps",
        "/apps/{app}",
        "/apps/{app}/config-vars",
        "/apps/{app}/releases/{release}/statuses",
        "/apps/{app}/formation/{ptype}",
        "/apps/{app}/dynos/{dyno}",
        "/apps/{app}/builds/{build}",
        "/apps/{app}/build-output",
        "/apps/{app}/domains/{domain}",
        "/apps/{app}/log-drains/{drain}",
        "/log-sessions/{session}",
        "/apps/{app}/filters/{attachment}",
        "/sites/{site}/routes",
        "/routes/{route}",
        "/filters/{filter}",
        "/certificates/{cert}",
        "/pipeline-couplings/{coupling}",
        "/pipeline-promotions/{promotion}",
        "/apps/{app}/canary-settings",
        "/apps/{app}/canary/abort",
        "/audit",
        "/v1/snapshot",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains(p), "{p} missing from the document");
    }
    let r = call_raw(&e.cp, Method::GET, "/openapi.json", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, doc);
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bare = unrouted_mounts(&src);
    assert!(
        bare.is_empty(),
        "routes mounted outside routes!(): {bare:?}"
    );
    let r = call_raw(&e.cp, Method::GET, "/apps/a%00b", Some(&e.admin), None, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(
        &e.cp,
        Method::POST,
        "/apps",
        &e.admin,
        Some(json!({"name": "a\u{0}b"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// Lines under `dir` that mount a route with axum's own calls instead of `routes!`.
fn unrouted_mounts(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(unrouted_mounts(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                let l = line.replace("OpenApiRouter::new()", "");
                if [
                    ".route(",
                    ".route_service(",
                    ".nest(",
                    ".nest_service(",
                    "Router::new()",
                    "routing::",
                ]
                .iter()
                .any(|m| l.contains(m))
                {
                    out.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
    }
    out
}

/// After a restart the stored state is published again and the runtime converges to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/wharf.db", dir.path().display());
    let rev = {
        let store = Store::open(&url).await.unwrap();
        let cp = ControlPlane::new(
            store,
            Arc::new(FakeRuntime::new()),
            Arc::new(MemoryLogs::default()),
            Settings::default(),
        )
        .await
        .unwrap();
        let t = cp
            .create_token(Scope::admin(), "a", "a@example.com")
            .await
            .unwrap();
        call(&cp, Method::POST, "/apps", &t, Some(json!({"name": "api"}))).await;
        let r = call(
            &cp,
            Method::POST,
            "/apps/api/builds",
            &t,
            Some(json!({"source_blob": {"url": "command:sleep 1000"}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let rev = cp.snapshot().revision;
        cp.store().close().await;
        rev
    };
    let store = Store::open(&url).await.unwrap();
    let runtime = Arc::new(FakeRuntime::new());
    let cp = ControlPlane::new(
        store,
        runtime.clone(),
        Arc::new(MemoryLogs::default()),
        Settings::default(),
    )
    .await
    .unwrap();
    assert_eq!(cp.snapshot().revision, rev);
    assert_eq!(cp.snapshot().apps[0].release, Some(2));
    let desired = runtime.desired.lock().unwrap().clone();
    assert_eq!(desired.apps.len(), 1);
    assert_eq!(
        desired.apps[0].artifact,
        wharf_config::Artifact::Command("sleep 1000".into())
    );
}
