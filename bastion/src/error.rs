use thiserror::Error;

/// What can end or refuse a bastion session.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BastionError {
    /// The target's identity did not check out.
    #[error("{0}")]
    HostKey(String),
    /// The target could not be reached or refused us.
    #[error("{0}")]
    Upstream(String),
    /// The recording could not be written; the session may not go on.
    #[error("recording failed: {0}")]
    Recording(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Broker(#[from] gatehouse_broker::BrokerError),
    #[error("ssh: {0}")]
    Ssh(String),
}

impl From<russh::Error> for BastionError {
    fn from(e: russh::Error) -> Self {
        BastionError::Ssh(e.to_string())
    }
}

impl From<std::io::Error> for BastionError {
    fn from(e: std::io::Error) -> Self {
        BastionError::Ssh(e.to_string())
    }
}
