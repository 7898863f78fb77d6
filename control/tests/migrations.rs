//! The two migration sets (SQLite, PostgreSQL) must describe one schema: every table with the
//! same columns, each as nullable on both or on neither. A change made to one set only fails
//! here, not later as a query that works on one database and not the other.

use std::collections::BTreeMap;

use support::{Db, fresh_store};

mod support;

/// `table.column` → nullable, for every table the migrations made.
type Columns = BTreeMap<String, bool>;

async fn sqlite_columns() -> Columns {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = fresh_store(Db::Sqlite, &dir).await;
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT m.name, p.name, p.\"notnull\", p.pk FROM sqlite_master m \
         JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    store.close().await;
    rows.into_iter()
        // A primary key holds no NULL on PostgreSQL whatever it says; count it so here too.
        .map(|(t, c, notnull, pk)| (format!("{t}.{c}"), notnull == 0 && pk == 0))
        .collect()
}

async fn postgres_columns() -> Columns {
    let dir = tempfile::tempdir().unwrap();
    let (store, _schema) = fresh_store(Db::Postgres, &dir).await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, is_nullable::text \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name NOT LIKE '_sqlx%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    store.close().await;
    rows.into_iter()
        .map(|(t, c, nullable)| (format!("{t}.{c}"), nullable == "YES"))
        .collect()
}

#[tokio::test]
async fn sqlite_and_postgres_migrations_make_the_same_schema() {
    let (lite, pg) = (sqlite_columns().await, postgres_columns().await);
    assert!(
        lite.len() > 50 && lite.contains_key("apps.name"),
        "the SQLite schema read back: {lite:?}"
    );
    let only = |a: &Columns, b: &Columns| -> Vec<String> {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
    };
    assert!(
        only(&lite, &pg).is_empty() && only(&pg, &lite).is_empty(),
        "columns only on SQLite: {:?}; only on PostgreSQL: {:?}",
        only(&lite, &pg),
        only(&pg, &lite)
    );
    let nullability: Vec<_> = lite
        .iter()
        .filter(|(k, n)| pg.get(*k) != Some(n))
        .map(|(k, n)| format!("{k}: nullable on SQLite {n}, on PostgreSQL {}", !n))
        .collect();
    assert!(nullability.is_empty(), "{nullability:#?}");
}
