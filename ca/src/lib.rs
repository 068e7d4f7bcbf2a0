//! Gatehouse certificate authority: pure functions from keys and requests to
//! certificates. This crate does no IO: no files, no network, no clock of its
//! own (callers pass `now`), no database. The broker loads and stores the keys.
#![forbid(unsafe_code)]

mod error;
mod ssh;

pub use error::CaError;
pub use ssh::{
    BACKDATE, CertPurpose, HostCertRequest, MAX_SESSION_CERT_TTL, SshCa, UserCertRequest, fingerprint,
    generate_ed25519, parse_public_key, public_key_line,
};

/// The ssh-key crate, re-exported so callers use the exact version we sign with.
pub use ssh_key;
