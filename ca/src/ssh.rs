//! OpenSSH user and host certificates signed by an Ed25519 CA key.

use std::time::Duration;

use ssh_key::certificate::{Builder, CertType};
use ssh_key::private::{Ed25519Keypair, PrivateKey};
use ssh_key::{Certificate, HashAlg, LineEnding, PublicKey};

use crate::CaError;

/// Backdating applied to every certificate so that small clock differences
/// between the broker and a target never make a fresh certificate "not yet valid".
pub const BACKDATE: Duration = Duration::from_secs(30);

/// Longest lifetime of a per-session user certificate: it only has to outlive
/// the upstream handshake.
pub const MAX_SESSION_CERT_TTL: Duration = Duration::from_secs(120);

/// Generate a fresh Ed25519 private key (for a CA, a bastion host key or a
/// per-session upstream key).
pub fn generate_ed25519() -> PrivateKey {
    let mut rng = rand::rng();
    let signing = ed25519_dalek::SigningKey::generate(&mut rng);
    PrivateKey::from(Ed25519Keypair::from(signing))
}

/// Parse one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
pub fn parse_public_key(line: &str) -> Result<PublicKey, CaError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(CaError::InvalidKey("empty public key".into()));
    }
    PublicKey::from_openssh(line).map_err(|e| CaError::InvalidKey(e.to_string()))
}

/// The `ssh-ed25519 AAAA… comment` line of a public key.
pub fn public_key_line(key: &PublicKey, comment: &str) -> String {
    let mut key = key.clone();
    key.set_comment(comment);
    // Encoding a key we already hold cannot fail for the key types we accept;
    // fall back to the bare algorithm name rather than panicking.
    key.to_openssh().unwrap_or_else(|_| key.algorithm().as_str().to_string())
}

/// SHA-256 fingerprint as OpenSSH prints it (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Is `s` acceptable as a certificate principal? Letters, digits, `_`, `-`,
/// `.`; no commas, spaces, wildcards, newlines or leading `-`.
fn check_principal(s: &str) -> Result<(), CaError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok { Ok(()) } else { Err(CaError::InvalidRequest(format!("principal {s:?} is not a valid login or host name"))) }
}

/// What the session behind a user certificate may do upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertPurpose {
    /// A human's session: may ask for a pty.
    Interactive,
    /// Commands only (an agent's exec): no pty.
    ExecOnly,
}

/// A request for a per-session user certificate.
#[derive(Debug, Clone)]
pub struct UserCertRequest<'a> {
    /// The ephemeral public key the bastion will authenticate upstream with.
    pub public_key: &'a PublicKey,
    /// The login on the target (the only principal).
    pub principal: &'a str,
    /// Free text naming session, user and host (shows up in sshd's log).
    pub key_id: &'a str,
    pub serial: u64,
    pub ttl: Duration,
    pub purpose: CertPurpose,
}

/// A request for a host certificate for an enrolled target or the bastion.
#[derive(Debug, Clone)]
pub struct HostCertRequest<'a> {
    pub public_key: &'a PublicKey,
    /// Host names the certificate is valid for.
    pub principals: &'a [String],
    pub key_id: &'a str,
    pub serial: u64,
    pub ttl: Duration,
}

/// An Ed25519 SSH certificate authority.
#[derive(Clone)]
pub struct SshCa {
    key: PrivateKey,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshCa")
            .field("public", &fingerprint(self.key.public_key()))
            .field("private", &"<redacted>")
            .finish()
    }
}

impl SshCa {
    /// A brand new CA with a fresh key.
    pub fn generate() -> Self {
        Self { key: generate_ed25519() }
    }

    /// Load a CA from its OpenSSH private key encoding.
    pub fn from_openssh(pem: &[u8]) -> Result<Self, CaError> {
        let key = PrivateKey::from_openssh(pem).map_err(|e| CaError::InvalidKey(e.to_string()))?;
        if key.algorithm() != ssh_key::Algorithm::Ed25519 {
            return Err(CaError::InvalidKey("CA keys must be Ed25519".into()));
        }
        if key.is_encrypted() {
            return Err(CaError::InvalidKey("CA key is passphrase-protected".into()));
        }
        Ok(Self { key })
    }

    /// The private key in OpenSSH encoding, for the broker to store. The
    /// returned buffer is zeroized on drop.
    pub fn to_openssh(&self) -> Result<zeroize::Zeroizing<String>, CaError> {
        self.key.to_openssh(LineEnding::LF).map_err(|e| CaError::InvalidKey(e.to_string()))
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(self.key.public_key())
    }

    /// The private key, for a server that presents it as its own host key.
    pub fn private_key(&self) -> &PrivateKey {
        &self.key
    }

    /// Sign a user certificate valid from `now - 30 s` for at most
    /// [`MAX_SESSION_CERT_TTL`].
    pub fn sign_user(&self, req: &UserCertRequest<'_>, now_unix: u64) -> Result<Certificate, CaError> {
        check_principal(req.principal)?;
        if req.ttl.is_zero() || req.ttl > MAX_SESSION_CERT_TTL {
            return Err(CaError::InvalidRequest(format!(
                "user certificate lifetime must be between 1 s and {} s",
                MAX_SESSION_CERT_TTL.as_secs()
            )));
        }
        let mut rng = rand::rng();
        let mut b = Builder::new_with_random_nonce(
            &mut rng,
            req.public_key.key_data().clone(),
            now_unix.saturating_sub(BACKDATE.as_secs()),
            now_unix.saturating_add(req.ttl.as_secs()),
        )
        .map_err(sign_err)?;
        b.serial(req.serial).map_err(sign_err)?;
        b.cert_type(CertType::User).map_err(sign_err)?;
        b.key_id(req.key_id).map_err(sign_err)?;
        b.valid_principal(req.principal).map_err(sign_err)?;
        if req.purpose == CertPurpose::Interactive {
            b.extension("permit-pty", "").map_err(sign_err)?;
        }
        b.sign(&self.key).map_err(sign_err)
    }

    /// Sign a host certificate for the given host names.
    pub fn sign_host(&self, req: &HostCertRequest<'_>, now_unix: u64) -> Result<Certificate, CaError> {
        if req.principals.is_empty() {
            return Err(CaError::InvalidRequest("a host certificate needs a host name".into()));
        }
        for p in req.principals {
            check_principal(p)?;
        }
        if req.ttl.is_zero() {
            return Err(CaError::InvalidRequest("host certificate lifetime must be positive".into()));
        }
        let mut rng = rand::rng();
        let mut b = Builder::new_with_random_nonce(
            &mut rng,
            req.public_key.key_data().clone(),
            now_unix.saturating_sub(BACKDATE.as_secs()),
            now_unix.saturating_add(req.ttl.as_secs()),
        )
        .map_err(sign_err)?;
        b.serial(req.serial).map_err(sign_err)?;
        b.cert_type(CertType::Host).map_err(sign_err)?;
        b.key_id(req.key_id).map_err(sign_err)?;
        for p in req.principals {
            b.valid_principal(p.as_str()).map_err(sign_err)?;
        }
        b.sign(&self.key).map_err(sign_err)
    }

    /// Check that `cert` is a host certificate from this CA, valid now, for `host`.
    pub fn verify_host_cert(&self, cert: &Certificate, host: &str, now_unix: u64) -> Result<(), CaError> {
        let fp = self.key.public_key().fingerprint(HashAlg::Sha256);
        cert.validate_at(now_unix, [&fp])
            .map_err(|e| CaError::InvalidKey(format!("host certificate not valid: {e}")))?;
        if cert.cert_type() != CertType::Host {
            return Err(CaError::InvalidKey("certificate is not a host certificate".into()));
        }
        if !cert.valid_principals().iter().any(|p| p == host) {
            return Err(CaError::InvalidKey(format!("host certificate is not valid for {host:?}")));
        }
        Ok(())
    }
}

fn sign_err(e: ssh_key::Error) -> CaError {
    CaError::Signing(e.to_string())
}

/// Namespace of the SSH signature (`SSHSIG`) a host makes with its host key
/// to renew its certificate; a signature for another purpose never fits.
pub const HOST_RENEW_NAMESPACE: &str = "host-renew@gatehouse";

/// What a host signs to renew certificate `serial`: its name, the serial
/// and the time, so a signature is useless for another host, another
/// certificate or later.
pub fn host_renewal_message(host: &str, serial: u64, unix_time: u64) -> Vec<u8> {
    format!("gatehouse host certificate renewal\nhost={host}\nserial={serial}\ntime={unix_time}\n").into_bytes()
}

/// Sign a renewal request with the host's private key (on the host).
pub fn sign_host_renewal(key: &PrivateKey, host: &str, serial: u64, unix_time: u64) -> Result<String, CaError> {
    let msg = host_renewal_message(host, serial, unix_time);
    let sig = key.sign(HOST_RENEW_NAMESPACE, HashAlg::Sha512, &msg).map_err(sign_err)?;
    sig.to_pem(LineEnding::LF).map_err(sign_err)
}

/// Check a renewal signature against the key the current certificate certifies.
pub fn verify_host_renewal(cert: &Certificate, host: &str, unix_time: u64, signature_pem: &str) -> Result<(), CaError> {
    let sig = ssh_key::SshSig::from_pem(signature_pem.trim())
        .map_err(|_| CaError::InvalidRequest("the renewal signature is not an SSH signature".into()))?;
    let key = PublicKey::from(cert.public_key().clone());
    key.verify(HOST_RENEW_NAMESPACE, &host_renewal_message(host, cert.serial(), unix_time), &sig).map_err(|_| {
        CaError::InvalidRequest("the renewal signature does not verify with the certified host key".into())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn user_certificate_has_principal_window_and_extensions() {
        let ca = SshCa::generate();
        let key = generate_ed25519();
        let cert = ca
            .sign_user(
                &UserCertRequest {
                    public_key: key.public_key(),
                    principal: "root",
                    key_id: "session=s_1 user=alice host=web-1",
                    serial: 42,
                    ttl: Duration::from_secs(120),
                    purpose: CertPurpose::Interactive,
                },
                NOW,
            )
            .unwrap();
        assert_eq!(cert.valid_principals(), ["root".to_string()]);
        assert_eq!(cert.valid_after(), NOW - 30);
        assert_eq!(cert.valid_before(), NOW + 120);
        assert_eq!(cert.serial(), 42);
        assert_eq!(cert.cert_type(), CertType::User);
        assert!(cert.extensions().contains_key("permit-pty"));
        assert!(!cert.extensions().contains_key("permit-agent-forwarding"));
        assert!(!cert.extensions().contains_key("permit-port-forwarding"));
        let fp = ca.public_key().fingerprint(HashAlg::Sha256);
        cert.validate_at(NOW, [&fp]).unwrap();
        // another CA does not validate it
        let other = SshCa::generate();
        let ofp = other.public_key().fingerprint(HashAlg::Sha256);
        assert!(cert.validate_at(NOW, [&ofp]).is_err());
    }

    #[test]
    fn exec_only_certificates_have_no_pty() {
        let ca = SshCa::generate();
        let key = generate_ed25519();
        let cert = ca
            .sign_user(
                &UserCertRequest {
                    public_key: key.public_key(),
                    principal: "deploy",
                    key_id: "k",
                    serial: 1,
                    ttl: Duration::from_secs(60),
                    purpose: CertPurpose::ExecOnly,
                },
                NOW,
            )
            .unwrap();
        assert!(cert.extensions().is_empty());
    }

    #[test]
    fn refuses_principal_injection_and_long_ttl() {
        let ca = SshCa::generate();
        let key = generate_ed25519();
        for bad in ["root,admin", "root admin", "*", "ro\not", "", "-oProxy", "a@b"] {
            let r = ca.sign_user(
                &UserCertRequest {
                    public_key: key.public_key(),
                    principal: bad,
                    key_id: "k",
                    serial: 1,
                    ttl: Duration::from_secs(60),
                    purpose: CertPurpose::Interactive,
                },
                NOW,
            );
            assert!(matches!(r, Err(CaError::InvalidRequest(_))), "{bad:?}");
        }
        let r = ca.sign_user(
            &UserCertRequest {
                public_key: key.public_key(),
                principal: "root",
                key_id: "k",
                serial: 1,
                ttl: Duration::from_secs(121),
                purpose: CertPurpose::Interactive,
            },
            NOW,
        );
        assert!(r.is_err());
    }

    #[test]
    fn ca_round_trips_through_openssh_encoding() {
        let ca = SshCa::generate();
        let pem = ca.to_openssh().unwrap();
        let back = SshCa::from_openssh(pem.as_bytes()).unwrap();
        assert_eq!(ca.fingerprint(), back.fingerprint());
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn host_certificates_verify_for_their_names_only() {
        let ca = SshCa::generate();
        let key = generate_ed25519();
        let names = vec!["web-1".to_string()];
        let cert = ca
            .sign_host(
                &HostCertRequest {
                    public_key: key.public_key(),
                    principals: &names,
                    key_id: "host web-1",
                    serial: 7,
                    ttl: Duration::from_secs(3600),
                },
                NOW,
            )
            .unwrap();
        ca.verify_host_cert(&cert, "web-1", NOW).unwrap();
        assert!(ca.verify_host_cert(&cert, "web-2", NOW).is_err());
        assert!(ca.verify_host_cert(&cert, "web-1", NOW + 7200).is_err());
    }

    #[test]
    fn renewal_signatures_bind_host_serial_time_and_key() {
        let ca = SshCa::generate();
        let key = generate_ed25519();
        let names = vec!["web-1".to_string()];
        let req = HostCertRequest {
            public_key: key.public_key(),
            principals: &names,
            key_id: "k",
            serial: 9,
            ttl: Duration::from_secs(60),
        };
        let cert = ca.sign_host(&req, NOW).unwrap();
        let sig = sign_host_renewal(&key, "web-1", 9, NOW).unwrap();
        verify_host_renewal(&cert, "web-1", NOW, &sig).unwrap();
        assert!(verify_host_renewal(&cert, "web-2", NOW, &sig).is_err());
        assert!(verify_host_renewal(&cert, "web-1", NOW + 1, &sig).is_err());
        let other = generate_ed25519();
        let forged = sign_host_renewal(&other, "web-1", 9, NOW).unwrap();
        assert!(verify_host_renewal(&cert, "web-1", NOW, &forged).is_err());
        assert!(verify_host_renewal(&cert, "web-1", NOW, "garbage").is_err());
    }
}
