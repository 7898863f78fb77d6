//! A fresh store per test on either backend: SQLite in a temporary directory, or PostgreSQL on
//! 127.0.0.1:5432 in a schema of its own, dropped when the test ends; and a control plane
//! served on a real socket with an admin token.

// Each test crate uses part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

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
    match db {
        Db::Sqlite => (
            Store::open(&format!("sqlite://{}/c.db", dir.path().display()))
                .await
                .unwrap(),
            None,
        ),
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
            let store = Store::open(&format!("{PG}?options=-c%20search_path%3D{schema}"))
                .await
                .unwrap();
            (store, Some(PgSchema(schema)))
        }
    }
}
