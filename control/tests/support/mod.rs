//! A fresh store per test on either backend: SQLite in a temporary directory, or PostgreSQL on
//! 127.0.0.1:5432 in a schema of its own, dropped when the test ends.

use wharf_control::store::Store;

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
