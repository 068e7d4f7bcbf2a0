use thiserror::Error;

/// What can go wrong inside the certificate authority.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaError {
    /// A key or certificate could not be parsed.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The request itself is not acceptable (bad principal, TTL, name…).
    #[error("invalid certificate request: {0}")]
    InvalidRequest(String),
    /// A certificate signing request is unreadable, unverifiable or asks for
    /// something that is never issued. The text never echoes the input.
    #[error("certificate signing request refused: {0}")]
    InvalidCsr(String),
    /// Signing failed inside the crypto library.
    #[error("signing failed: {0}")]
    Signing(String),
}
