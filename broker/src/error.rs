use thiserror::Error;

/// Everything the control plane can answer with other than success. Edges
/// (HTTP API, SSH, MCP) map these to status codes and messages; nothing in
/// a variant's text may contain a secret.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A rule said no. The text is safe to show to the caller.
    #[error("{0}")]
    Denied(String),
    /// The credential is missing, unknown, expired, revoked or out of scope.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The thing named does not exist (or the caller may not know it does).
    #[error("{0} not found")]
    NotFound(String),
    /// The input is malformed.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The thing already exists or the state does not allow the change.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached or refused the statement.
    #[error("storage unavailable: {0}")]
    Storage(String),
    /// Files in the data dir (keys, recordings) could not be read or written.
    #[error("data directory error: {0}")]
    Io(String),
    #[error(transparent)]
    Ca(#[from] gatehouse_ca::CaError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for BrokerError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => BrokerError::NotFound("record".into()),
            sqlx::Error::Database(db) if db.is_unique_violation() => BrokerError::Conflict("already exists".into()),
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                BrokerError::Conflict("still referenced".into())
            }
            _ => BrokerError::Storage(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for BrokerError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        BrokerError::Storage(format!("migration failed: {e}"))
    }
}

impl From<std::io::Error> for BrokerError {
    fn from(e: std::io::Error) -> Self {
        BrokerError::Io(e.to_string())
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
