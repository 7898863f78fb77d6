//! A fresh store per test on either backend: SQLite in a temporary directory, or PostgreSQL on
//! 127.0.0.1:5432 in a schema of its own, dropped when the test ends; and a control plane
//! served on a real socket with an admin token.

// Each test crate uses part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use wharf_control::auth::Scope;
use wharf_control::logs::MemoryLogs;
use wharf_control::store::Store;
use wharf_control::{ControlPlane, NoRuntime, Settings};

/// A control plane on `store`: no runtime, logs in memory, default settings.
pub async fn control_plane(store: Store) -> ControlPlane {
    ControlPlane::new(
        store,
        Arc::new(NoRuntime::default()),
        Arc::new(MemoryLogs::default()),
        Settings::default(),
    )
    .await
    .unwrap()
}

/// Serve `cp` on a free port of 127.0.0.1 with a new admin token: (address, token).
pub async fn serve(cp: &ControlPlane, name: &str, email: &str) -> (SocketAddr, String) {
    let token = cp.create_token(Scope::admin(), name, email).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = cp.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, token)
}

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A PostgreSQL schema dropped when the test ends.
pub struct PgSchema(String);

impl Drop for PgSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(pool) = sqlx::AnyPool::connect(PG).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&pool)
                        .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// A fresh, empty store; keep the `PgSchema` alive as long as the store is used.
pub async fn fresh_store(db: Db, dir: &tempfile::TempDir) -> (Store, Option<PgSchema>) {
    let (url, schema) = fresh_url(db, dir).await;
    (Store::open(&url).await.unwrap(), schema)
}

/// The URL of a fresh, empty database (SQLite in `dir`, or a PostgreSQL schema of its own),
/// for a test that opens it more than once.
pub async fn fresh_url(db: Db, dir: &tempfile::TempDir) -> (String, Option<PgSchema>) {
    match db {
        Db::Sqlite => (format!("sqlite://{}/wharf.db", dir.path().display()), None),
        Db::Postgres => {
            let schema = format!("wharf_{}", uuid::Uuid::new_v4().simple());
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(PG)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432");
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            (
                format!("{PG}?options=-c%20search_path%3D{schema}"),
                Some(PgSchema(schema)),
            )
        }
    }
}

/// An answer of the API, its body parsed as JSON (a string when it is not; null when empty).
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// One request to the control plane's router, in process; a 500 fails the test.
pub async fn call_raw(
    cp: &ControlPlane,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
    extra: &[(&str, &str)],
) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "application/vnd.heroku+json; version=3")
        .header("host", "control.test");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = cp.router().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {body}");
    Resp {
        status,
        headers,
        body,
    }
}

/// `call_raw` with a bearer token and a JSON body.
pub async fn call(
    cp: &ControlPlane,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Resp {
    call_raw(
        cp,
        method,
        path,
        Some(token),
        body.map(|b| b.to_string()),
        &[],
    )
    .await
}

/// Call and assert the answer's status (a mismatch names the request and shows the body);
/// the answer's body.
pub async fn ok(
    cp: &ControlPlane,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
    want: StatusCode,
) -> Value {
    let r = call(cp, method.clone(), path, token, body).await;
    assert_eq!(r.status, want, "{method} {path}: {}", r.body);
    r.body
}
