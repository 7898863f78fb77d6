//! The store: sqlx over SQLite (default, a file in the data directory) or PostgreSQL, chosen by
//! URL at run time, with one set of migrations per backend. Every write of config runs in one
//! transaction that first bumps the store's revision, so writers are serialised (a row lock on
//! PostgreSQL, the write lock on SQLite taken at BEGIN, and an in-process mutex) and the
//! snapshot built inside the transaction sees exactly the state being committed. Writes outside
//! the config (pipelines, canary settings) take the same turn without the bump; single-statement
//! inserts (the audit trail, tokens) wait for the database's lock with its busy timeout.

pub mod rows;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use rows::*;

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?} (sqlite://… or postgres://…)")]
    Url(String),
    #[error("cannot open the store: {0}")]
    Open(#[from] sqlx::Error),
    #[error("cannot migrate the store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// How long a request waits for a database connection, and a write for its turn plus its
/// connection, before it fails (503, "the store is unavailable"). A request takes at most
/// three such steps (its token, what it reads, its write), so a database that is away or
/// restarting holds no request longer than about three times this.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection pool plus the write serialisation.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    write_lock: Arc<Mutex<()>>,
}

/// One write: a transaction whose first statement bumped the revision. Dropping it without
/// [`crate::ControlPlane`] committing it rolls everything back.
#[derive(Debug)]
pub struct Write {
    pub tx: Transaction<'static, Any>,
    pub revision: u64,
    pub(crate) _guard: OwnedMutexGuard<()>,
}

/// A write outside the published config (pipelines, canary settings): a transaction that holds
/// its turn among all writers, like [`Write`], but leaves the revision alone. On SQLite a
/// transaction that reads and then writes fails at once (a stale snapshot; the busy timeout does
/// not apply) when another writer committed in between, so no writer may skip the turn.
/// Derefs to the connection, for queries; dropping it without [`SideWrite::commit`] rolls back.
#[derive(Debug)]
pub struct SideWrite {
    tx: Transaction<'static, Any>,
    _guard: OwnedMutexGuard<()>,
}

impl SideWrite {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl Deref for SideWrite {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl DerefMut for SideWrite {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Open (creating a SQLite file when missing) and migrate.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let url = if backend == Backend::Sqlite && !url.contains("mode=") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        } else {
            url.to_owned()
        };
        let opts = AnyConnectOptions::from_str(&url)?;
        let max = if backend == Backend::Sqlite { 4 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Store {
            pool,
            backend,
            write_lock: Arc::new(Mutex::new(())),
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Start a write: serialised with every other write, revision bumped. Waiting for the turn
    /// and the connection together takes at most [`ACQUIRE_TIMEOUT`] (writers queued behind one
    /// that waits for a database that is away must not wait one timeout each).
    pub async fn begin_write(&self) -> Result<Write, sqlx::Error> {
        let SideWrite { mut tx, _guard } = self.begin_side_write().await?;
        sqlx::query("UPDATE meta SET revision = revision + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let revision: i64 = sqlx::query_scalar("SELECT revision FROM meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        Ok(Write {
            tx,
            revision: revision as u64,
            _guard,
        })
    }

    /// Start a write that changes no published config: serialised with every other write
    /// (the same turn and the same bound as [`Store::begin_write`]), revision unchanged.
    pub async fn begin_side_write(&self) -> Result<SideWrite, sqlx::Error> {
        let start = async {
            let guard = self.write_lock.clone().lock_owned().await;
            // SQLite: take the database's write lock at BEGIN (waiting out other writers, the
            // audit trail's inserts among them, with the busy timeout) rather than at the first
            // write, where it fails at once if anyone committed since this transaction read.
            let tx = match self.backend {
                Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
                Backend::Postgres => self.pool.begin().await?,
            };
            Ok::<_, sqlx::Error>((guard, tx))
        };
        let (_guard, tx) = tokio::time::timeout(ACQUIRE_TIMEOUT, start)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(SideWrite { tx, _guard })
    }

    /// The revision of the last committed write.
    pub async fn revision(&self) -> Result<u64, sqlx::Error> {
        let r: i64 = sqlx::query_scalar("SELECT revision FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(r as u64)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64
}

/// RFC 3339 (`2026-11-23T09:30:00Z`) from microseconds since the epoch.
pub fn rfc3339(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A random secret: 32 bytes, hex.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// How secrets are kept at rest.
pub fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(s.as_bytes()))
}
