//! The bastion's SSH client towards targets: a fresh in-memory Ed25519 key per
//! session, a short-lived certificate from the user CA, and a host key that
//! must match the pinned key (or carry a host certificate from our host CA).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_broker::hosts::Host;
use gatehouse_ca::ssh_key::{Certificate, HashAlg, PrivateKey, PublicKey};
use russh::client;
use russh::keys::PublicKeyOrCertificate;

use crate::error::BastionError;

/// How a target's identity is checked.
#[derive(Clone, Debug)]
pub struct HostTrust {
    pub host_name: String,
    /// The pinned key, if the host has one.
    pub pinned: Option<PublicKey>,
    /// The host CA, accepted for host certificates naming `host_name`.
    pub host_ca: Option<PublicKey>,
}

impl HostTrust {
    pub fn for_host(host: &Host, host_ca: Option<PublicKey>) -> Result<Self, BastionError> {
        let pinned = match &host.host_key {
            Some(k) => Some(
                gatehouse_ca::parse_public_key(k)
                    .map_err(|e| BastionError::Config(format!("pinned key of {} is unreadable: {e}", host.name)))?,
            ),
            None => None,
        };
        Ok(Self { host_name: host.name.clone(), pinned, host_ca })
    }
}

/// What the target presented, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct SeenHostKey {
    pub fingerprint: Option<String>,
    pub certificate: bool,
    pub problem: Option<String>,
}

pub struct UpstreamHandler {
    trust: HostTrust,
    seen: Arc<Mutex<SeenHostKey>>,
}

impl client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = verify_host(&self.trust, key);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = verdict.clone();
        }
        Ok(verdict.problem.is_none())
    }
}

pub(crate) fn verify_host(trust: &HostTrust, key: &PublicKeyOrCertificate) -> SeenHostKey {
    match key {
        PublicKeyOrCertificate::PublicKey { key, .. } => {
            let fp = key.fingerprint(HashAlg::Sha256).to_string();
            let problem = match &trust.pinned {
                Some(p) if p.key_data() == key.key_data() => None,
                Some(p) => Some(format!(
                    "host key of {} changed: expected {}, got {fp}",
                    trust.host_name,
                    p.fingerprint(HashAlg::Sha256)
                )),
                None => Some(format!(
                    "{} has no pinned host key and presented no host certificate (got {fp})",
                    trust.host_name
                )),
            };
            SeenHostKey { fingerprint: Some(fp), certificate: false, problem }
        }
        PublicKeyOrCertificate::Certificate(cert) => {
            let fp = PublicKey::from(cert.public_key().clone()).fingerprint(HashAlg::Sha256).to_string();
            let problem = check_host_certificate(trust, cert).err();
            SeenHostKey { fingerprint: Some(fp), certificate: true, problem }
        }
    }
}

fn check_host_certificate(trust: &HostTrust, cert: &Certificate) -> Result<(), String> {
    // A pinned key matching the certified key is also fine.
    if let Some(p) = &trust.pinned
        && p.key_data() == cert.public_key()
    {
        return Ok(());
    }
    let Some(ca) = &trust.host_ca else {
        return Err(format!("{} presented a host certificate but host certificates are not trusted", trust.host_name));
    };
    let fp = ca.fingerprint(HashAlg::Sha256);
    cert.validate([&fp]).map_err(|e| format!("host certificate of {} is not valid: {e}", trust.host_name))?;
    if cert.cert_type() != gatehouse_ca::ssh_key::certificate::CertType::Host {
        return Err(format!("{} presented a user certificate as host certificate", trust.host_name));
    }
    if !cert.valid_principals().iter().any(|p| p == &trust.host_name) {
        return Err(format!("host certificate is not valid for {}", trust.host_name));
    }
    Ok(())
}

/// An authenticated connection to a target.
pub struct Upstream {
    pub handle: client::Handle<UpstreamHandler>,
    pub host_key: SeenHostKey,
}

fn client_config() -> Arc<client::Config> {
    // Ask for host certificates first so CA-enrolled targets prove themselves
    // with one; pinned plain keys still negotiate.
    let preferred = russh::Preferred {
        host_key_certificates: std::borrow::Cow::Owned(vec![gatehouse_ca::ssh_key::Algorithm::Ed25519]),
        ..Default::default()
    };
    Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        preferred,
        ..Default::default()
    })
}

/// Connect to `address`, verify the host, and authenticate as `login` with
/// `key` and one of its certificates, tried in order (during a user CA
/// rotation the target may trust only the new CA or only the previous one).
pub async fn connect(
    address: &str,
    trust: HostTrust,
    login: &str,
    key: PrivateKey,
    certs: Vec<Certificate>,
) -> Result<Upstream, BastionError> {
    let seen = Arc::new(Mutex::new(SeenHostKey::default()));
    let handler = UpstreamHandler { trust, seen: seen.clone() };
    let connect = client::connect(client_config(), address, handler);
    let result = tokio::time::timeout(Duration::from_secs(10), connect).await;
    let seen_now = || seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut handle = match result {
        Err(_) => return Err(BastionError::Upstream(format!("connecting to {address} timed out"))),
        Ok(Err(e)) => {
            let s = seen_now();
            if let Some(problem) = s.problem {
                return Err(BastionError::HostKey(problem));
            }
            return Err(BastionError::Upstream(format!("cannot connect to {address}: {e}")));
        }
        Ok(Ok(h)) => h,
    };
    let key = Arc::new(key);
    for (i, cert) in certs.into_iter().enumerate() {
        let auth = handle
            .authenticate_openssh_cert(login, key.clone(), cert)
            .await
            .map_err(|e| BastionError::Upstream(format!("authentication to {address} failed: {e}")))?;
        if auth.success() {
            if i > 0 {
                tracing::warn!(
                    target = address,
                    "target accepted only the previous user CA; put the new line from `gatehouse ca show` in its TrustedUserCAKeys before the grace period ends"
                );
            }
            return Ok(Upstream { handle, host_key: seen_now() });
        }
    }
    Err(BastionError::Upstream(format!(
        "{address} refused the session certificate for login {login} (is TrustedUserCAKeys set to gatehouse's user CA?)"
    )))
}

/// Fetch a target's host key without authenticating (for `host add --scan`).
pub async fn scan_host_key(address: &str) -> Result<PublicKey, BastionError> {
    struct Scan(Arc<Mutex<Option<PublicKey>>>);
    impl client::Handler for Scan {
        type Error = russh::Error;
        async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
            let k = match key {
                PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
                PublicKeyOrCertificate::Certificate(c) => PublicKey::from(c.public_key().clone()),
            };
            if let Ok(mut s) = self.0.lock() {
                *s = Some(k);
            }
            // Never continue past key exchange: this connection is only a scan.
            Ok(false)
        }
    }
    let slot = Arc::new(Mutex::new(None));
    let config = Arc::new(client::Config { nodelay: true, ..Default::default() });
    let r = tokio::time::timeout(Duration::from_secs(10), client::connect(config, address, Scan(slot.clone()))).await;
    if r.is_err() {
        return Err(BastionError::Upstream(format!("connecting to {address} timed out")));
    }
    let key = slot.lock().ok().and_then(|s| s.clone());
    match (key, r) {
        (Some(k), _) => Ok(k),
        (None, Ok(Err(e))) => Err(BastionError::Upstream(format!("cannot scan {address}: {e}"))),
        (None, _) => Err(BastionError::Upstream(format!("{address} presented no host key"))),
    }
}
