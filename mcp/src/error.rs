use thiserror::Error;

/// What can go wrong on the agent side of the MCP front door (the bridge,
/// enrolment, client configuration).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum McpError {
    /// The broker refused the credential.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The broker could not be reached or answered nonsense.
    #[error("cannot reach Gatehouse at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The broker answered with an error.
    #[error("{0}")]
    Refused(String),
    /// Local files (signing key, bridge config) are missing or unreadable.
    #[error("{0}")]
    Local(String),
}
