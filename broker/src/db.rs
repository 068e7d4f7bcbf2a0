//! The database handle: one sqlx `Any` pool over SQLite (embedded default) or
//! PostgreSQL, migrations per backend, and the write path that puts every state
//! change and its audit row in one transaction.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::audit::{self, AuditRecord};
use crate::error::{BrokerError, Result};

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Serialises writers inside this process so the audit chain is appended
    /// in order; PostgreSQL additionally takes an advisory lock so several
    /// nodes can share one database.
    write_lock: Arc<Mutex<()>>,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Advisory lock key that serialises audit-chain appends across nodes.
const AUDIT_LOCK_KEY: i64 = 0x6761_7465_6830;

impl Db {
    /// Open (creating if needed) the SQLite database at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::connect(&url).await
    }

    /// Connect to `url` (`sqlite://…` or `postgres://…`) and run migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(BrokerError::Invalid("database URL must start with sqlite:// or postgres://".into()));
        };
        let opts = AnyConnectOptions::from_str(url)
            .map_err(|e| BrokerError::Invalid(format!("database URL: {}", redact_url(&e.to_string()))))?;
        let mut pool = AnyPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(5))
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 });
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|conn: &mut AnyConnection, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode=WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA synchronous=NORMAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout=5000").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA foreign_keys=ON").execute(&mut *conn).await?;
                    Ok(())
                })
            });
        }
        let pool = pool
            .connect_with(opts)
            .await
            .map_err(|e| BrokerError::Storage(format!("cannot open database: {}", redact_url(&e.to_string()))))?;
        let db = Self { pool, backend, write_lock: Arc::new(Mutex::new(())) };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Start a write transaction. Everything done through it, including the
    /// audit rows it appends, commits or rolls back together.
    pub async fn write(&self) -> Result<WriteTx> {
        let guard = self.write_lock.clone().lock_owned().await;
        // SQLite: take the write lock up front. A deferred transaction that
        // reads first and writes later can fail to upgrade when another
        // connection wrote meanwhile; IMMEDIATE waits (busy_timeout) instead.
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(AUDIT_LOCK_KEY).execute(&mut *tx).await?;
        }
        Ok(WriteTx { tx, _guard: guard })
    }

    /// Append audit events with no other state change (denials, notes).
    pub async fn audit(&self, rec: AuditRecord) -> Result<String> {
        let mut w = self.write().await?;
        let id = w.audit(rec).await?;
        w.commit().await?;
        Ok(id)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// An open write transaction holding the writer lock.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _guard: OwnedMutexGuard<()>,
}

impl WriteTx {
    /// The connection, to run statements on.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Append one audit event to the hash chain inside this transaction.
    pub async fn audit(&mut self, rec: AuditRecord) -> Result<String> {
        audit::append(&mut self.tx, rec).await
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Remove any password from a connection string before it reaches a message.
pub fn redact_url(s: &str) -> String {
    // postgres://user:password@host → postgres://user:***@host
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest.find(['/', ' ', '"', '\'']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(c) => {
                    out.push_str(&userinfo[..c]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        } else {
            out.push_str(authority);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("error connecting to postgres://gh:s3cret@db:5432/gatehouse"),
            "error connecting to postgres://gh:***@db:5432/gatehouse"
        );
        assert_eq!(redact_url("postgres://gh@db/x"), "postgres://gh@db/x");
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
