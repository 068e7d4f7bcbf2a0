//! Gatehouse certificate authority: pure functions from keys and requests to
//! certificates: OpenSSH user and host certificates (`ssh`) and X.509 TLS
//! certificates from CSRs (`x509`). This crate does no IO: no files, no network, no clock of its
//! own (callers pass `now`), no database. The broker loads and stores the keys.
#![forbid(unsafe_code)]

mod error;
mod ssh;
pub mod x509;

pub use error::CaError;
pub use ssh::{
    BACKDATE, CertPurpose, HOST_RENEW_NAMESPACE, HostCertRequest, MAX_SESSION_CERT_TTL, SshCa, UserCertRequest,
    fingerprint, generate_ed25519, host_renewal_message, parse_public_key, public_key_line, sign_host_renewal,
    verify_host_renewal,
};
pub use x509::{DomainPattern, IssuedCertificate, VerifiedCsr, X509Ca};

/// The ssh-key crate, re-exported so callers use the exact version we sign with.
pub use ssh_key;
