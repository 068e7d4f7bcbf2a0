//! SSH host certificates for targets, so the bastion trusts them by our host
//! CA instead of a pinned key.
//!
//! Enrolment: an admin issues a one-time token for a registered host
//! (`enroll` kind, single use, one hour); the target sends only its public
//! host key with it and gets a certificate for the host's name.
//!
//! Renewal needs no stored secret on the target: the host sends its current
//! certificate (still valid, issued by us, not yet renewed) and an SSH
//! signature made with the certified host key over the host name, the
//! certificate serial and the current time. The private key never leaves
//! the host. A certificate can be renewed once; the time must be within five
//! minutes of the broker's clock. An expired certificate needs a new token.

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_ca::HostCertRequest;
use gatehouse_ca::ssh_key::{Certificate, PublicKey};
use rand::RngExt;
use serde::Serialize;
use sqlx::Row;

use crate::audit::{Actor, AuditRecord, Outcome};
use crate::error::{BrokerError, Result};
use crate::hosts::Host;
use crate::tokens::{self, TokenKind};
use crate::{Broker, ids, now_ms};

/// Lifetime of a target's host certificate.
pub const HOST_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of an enrolment token.
pub const ENROLL_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How far a renewal request's time may be from the broker's.
pub const RENEW_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A fresh enrolment token (value shown once).
#[derive(Debug)]
pub struct EnrollToken {
    pub token_id: String,
    pub host: String,
    pub expires_at: i64,
    pub secret: tokens::Secret,
}

/// What a target receives: its certificate and the lines for sshd_config.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedHostCert {
    pub host: String,
    /// `ssh-ed25519-cert-v01@openssh.com AAAA…`
    pub certificate: String,
    pub serial: String,
    pub principals: Vec<String>,
    pub key_fingerprint: String,
    pub not_after: i64,
    /// For `TrustedUserCAKeys` on the target.
    pub user_ca: String,
    pub host_ca: String,
}

/// An enrolled host certificate as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct HostCertInfo {
    pub serial: String,
    pub host_name: String,
    pub key_fingerprint: String,
    pub principals: Vec<String>,
    pub issued_at: i64,
    pub not_after: i64,
    pub via: String,
    pub superseded_at: Option<i64>,
}

/// The names a host's certificate is valid for: its registered name, and
/// the host part of its address when that is a different valid principal
/// (so `ssh` straight to the address with `@cert-authority` works too).
pub fn host_principals(host: &Host) -> Vec<String> {
    let mut out = vec![host.name.clone()];
    let part = match host.address.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(h, _)| h.to_string()),
        None => host.address.rsplit_once(':').map(|(h, _)| h.to_string()),
    };
    if let Some(p) = part
        && p != host.name
        && !p.is_empty()
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !p.starts_with('-')
    {
        out.push(p);
    }
    out
}

impl Broker {
    /// Issue a one-time enrolment token for a registered host.
    pub async fn create_enroll_token(&self, actor: &Actor, host_name: &str) -> Result<EnrollToken> {
        let host =
            self.host_by_name(host_name).await?.ok_or_else(|| BrokerError::NotFound(format!("host {host_name}")))?;
        let expires_at = now_ms().saturating_add(i64::try_from(ENROLL_TOKEN_TTL.as_millis()).unwrap_or(0));
        let mut w = self.db().write().await?;
        let (id, secret) = tokens::insert(
            w.conn(),
            TokenKind::Enroll,
            &tokens::NewToken {
                subject_id: host.id.clone(),
                created_by: format!("{}:{}", actor.kind, actor.name),
                expires_at: Some(expires_at),
                single_use: true,
                cidrs: Vec::new(),
            },
        )
        .await?;
        w.audit(
            AuditRecord::new(actor.clone(), "host.enroll_token", format!("host:{}", host.name), Outcome::Allow)
                .details(serde_json::json!({"token_id": id, "expires_at": expires_at})),
        )
        .await?;
        w.commit().await?;
        Ok(EnrollToken { token_id: id, host: host.name, expires_at, secret })
    }

    async fn sign_for_host(&self, host: &Host, key: &PublicKey, via: &str) -> Result<(Certificate, String, i64)> {
        let principals = host_principals(host);
        let serial: u64 = rand::rng().random();
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let cert = self.keys().host_ca.sign_host(
            &HostCertRequest {
                public_key: key,
                principals: &principals,
                key_id: &format!("gatehouse host {} ({via})", host.name),
                serial,
                ttl: HOST_CERT_TTL,
            },
            now,
        )?;
        let not_after = i64::try_from(cert.valid_before()).unwrap_or(0).saturating_mul(1000);
        Ok((cert, serial.to_string(), not_after))
    }

    fn issued(&self, host: &Host, cert: &Certificate, serial: String, not_after: i64) -> Result<IssuedHostCert> {
        let key = PublicKey::from(cert.public_key().clone());
        Ok(IssuedHostCert {
            host: host.name.clone(),
            certificate: cert.to_openssh().map_err(|e| BrokerError::Internal(format!("encoding certificate: {e}")))?,
            serial,
            principals: cert.valid_principals().to_vec(),
            key_fingerprint: gatehouse_ca::fingerprint(&key),
            not_after,
            user_ca: self.user_ca_line(),
            host_ca: self.host_ca_line(),
        })
    }

    async fn record_host_cert(
        &self,
        actor: Actor,
        action: &str,
        host: &Host,
        issued: &IssuedHostCert,
        supersedes: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<()> {
        let now = now_ms();
        let mut w = self.db().write().await?;
        if let Some(old) = supersedes {
            let n = sqlx::query(
                "UPDATE host_certificates SET superseded_at = $1 WHERE serial = $2 AND superseded_at IS NULL",
            )
            .bind(now)
            .bind(old)
            .execute(w.conn())
            .await?
            .rows_affected();
            if n != 1 {
                // Lost a race with another renewal of the same certificate.
                return Err(BrokerError::Unauthorized("this certificate was already renewed".into()));
            }
        }
        sqlx::query(
            "INSERT INTO host_certificates (serial, host_id, host_name, key_fingerprint, principals, issued_at, \
             not_after, via) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        )
        .bind(&issued.serial)
        .bind(&host.id)
        .bind(&host.name)
        .bind(&issued.key_fingerprint)
        .bind(serde_json::to_string(&issued.principals).unwrap_or_else(|_| "[]".into()))
        .bind(now)
        .bind(issued.not_after)
        .bind(if supersedes.is_some() { "renew" } else { "enroll" })
        .execute(w.conn())
        .await?;
        w.audit(
            AuditRecord::new(actor, action, format!("host:{}", host.name), Outcome::Allow)
                .client(client.map(|c| c.to_string()).unwrap_or_default())
                .details(serde_json::json!({
                    "serial": issued.serial,
                    "host_key": issued.key_fingerprint,
                    "principals": issued.principals,
                    "not_after": issued.not_after,
                    "renews": supersedes,
                })),
        )
        .await?;
        w.commit().await
    }

    /// A target enrols its host key with a one-time token.
    pub async fn enroll_host(&self, token: &str, public_key: &str, client: Option<IpAddr>) -> Result<IssuedHostCert> {
        let deny = |reason: String| async move {
            self.audit(
                AuditRecord::new(Actor::unknown("enrolling host"), "host.enroll", "", Outcome::Deny)
                    .reason(reason.clone())
                    .client(client.map(|c| c.to_string()).unwrap_or_default()),
            )
            .await?;
            Ok::<_, BrokerError>(())
        };
        let info = match tokens::authenticate(self.pool(), token, TokenKind::Enroll, client).await? {
            Ok(info) => info,
            Err((_, why)) => {
                deny(why.as_str().to_string()).await?;
                return Err(BrokerError::Unauthorized(why.as_str().into()));
            }
        };
        let host = self.host_by_id(&info.subject_id).await?;
        let Some(host) = host else {
            deny("the token's host no longer exists".into()).await?;
            return Err(BrokerError::Unauthorized("the token's host no longer exists".into()));
        };
        let key = match gatehouse_ca::parse_public_key(public_key) {
            Ok(k) => k,
            Err(e) => {
                deny(format!("host key for {}: {e}", host.name)).await?;
                return Err(BrokerError::Invalid(format!("host public key: {e}")));
            }
        };
        if public_key.contains("PRIVATE KEY") || key.algorithm().is_dsa() {
            deny(format!("unacceptable host key for {}", host.name)).await?;
            return Err(BrokerError::Invalid("send the host's public key (Ed25519, ECDSA or RSA)".into()));
        }
        let (cert, serial, not_after) = self.sign_for_host(&host, &key, "enrolled").await?;
        let issued = self.issued(&host, &cert, serial, not_after)?;
        self.record_host_cert(
            Actor { kind: "host", name: host.name.clone() },
            "host.enroll",
            &host,
            &issued,
            None,
            client,
        )
        .await?;
        Ok(issued)
    }

    /// Renew a host certificate: `certificate` is the host's current one,
    /// `signature` an SSH signature (PEM) by its key over
    /// [`gatehouse_ca::host_renewal_message`] at `unix_time`.
    pub async fn renew_host_certificate(
        &self,
        certificate: &str,
        unix_time: u64,
        signature: &str,
        client: Option<IpAddr>,
    ) -> Result<IssuedHostCert> {
        let deny = |resource: String, reason: String| async move {
            self.audit(
                AuditRecord::new(Actor::unknown("renewing host"), "host.renew", resource, Outcome::Deny)
                    .reason(reason.clone())
                    .client(client.map(|c| c.to_string()).unwrap_or_default()),
            )
            .await?;
            Ok::<_, BrokerError>(BrokerError::Unauthorized(reason))
        };
        let Ok(cert) = Certificate::from_openssh(certificate.trim()) else {
            return Err(deny(String::new(), "not an OpenSSH certificate".into()).await?);
        };
        let serial = cert.serial().to_string();
        let row =
            sqlx::query("SELECT host_id, key_fingerprint, superseded_at FROM host_certificates WHERE serial = $1")
                .bind(&serial)
                .fetch_optional(self.pool())
                .await?;
        let Some(row) = row else {
            return Err(
                deny(String::new(), format!("certificate serial {serial} was not issued to an enrolled host")).await?
            );
        };
        let host_id: String = row.try_get("host_id")?;
        let recorded_fp: String = row.try_get("key_fingerprint")?;
        let superseded: Option<i64> = row.try_get("superseded_at")?;
        let Some(host) = self.host_by_id(&host_id).await? else {
            return Err(deny(String::new(), "the host no longer exists".into()).await?);
        };
        let resource = format!("host:{}", host.name);
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        if let Err(e) = self.keys().host_ca.verify_host_cert(&cert, &host.name, now) {
            return Err(deny(resource, format!("{e}; enroll again with a new token")).await?);
        }
        let key = PublicKey::from(cert.public_key().clone());
        if gatehouse_ca::fingerprint(&key) != recorded_fp {
            return Err(deny(resource, "certificate key does not match the enrolled key".into()).await?);
        }
        if superseded.is_some() {
            return Err(deny(resource, "this certificate was already renewed; use the newest one".into()).await?);
        }
        if unix_time.abs_diff(now) > RENEW_CLOCK_SKEW.as_secs() {
            return Err(
                deny(resource, "the request's time is more than 5 minutes from the broker's clock".into()).await?
            );
        }
        if let Err(e) = gatehouse_ca::verify_host_renewal(&cert, &host.name, unix_time, signature) {
            return Err(deny(resource, e.to_string()).await?);
        }
        let (new_cert, new_serial, not_after) = self.sign_for_host(&host, &key, "renewed").await?;
        let issued = self.issued(&host, &new_cert, new_serial, not_after)?;
        self.record_host_cert(
            Actor { kind: "host", name: host.name.clone() },
            "host.renew",
            &host,
            &issued,
            Some(&serial),
            client,
        )
        .await?;
        Ok(issued)
    }

    /// Host certificates issued to `host`, newest first.
    pub async fn host_certificates(&self, host_name: &str) -> Result<Vec<HostCertInfo>> {
        let rows = sqlx::query(
            "SELECT serial, host_name, key_fingerprint, principals, issued_at, not_after, via, superseded_at \
             FROM host_certificates WHERE host_name = $1 ORDER BY issued_at DESC",
        )
        .bind(host_name)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let p: String = r.try_get("principals")?;
                Ok(HostCertInfo {
                    serial: r.try_get("serial")?,
                    host_name: r.try_get("host_name")?,
                    key_fingerprint: r.try_get("key_fingerprint")?,
                    principals: serde_json::from_str(&p).unwrap_or_default(),
                    issued_at: r.try_get("issued_at")?,
                    not_after: r.try_get("not_after")?,
                    via: r.try_get("via")?,
                    superseded_at: r.try_get("superseded_at")?,
                })
            })
            .collect()
    }

    pub async fn host_by_id(&self, id: &str) -> Result<Option<Host>> {
        ids::check("h", id)?;
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM hosts WHERE id = $1").bind(id).fetch_optional(self.pool()).await?;
        match name {
            Some(n) => self.host_by_name(&n).await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, address: &str) -> Host {
        Host {
            id: String::new(),
            name: name.into(),
            address: address.into(),
            groups: vec![],
            host_key: None,
            host_key_fingerprint: None,
            created_at: 0,
        }
    }

    #[test]
    fn principals_are_the_name_and_the_address_host() {
        assert_eq!(host_principals(&host("web-1", "10.0.0.5:22")), ["web-1", "10.0.0.5"]);
        assert_eq!(host_principals(&host("web-1", "web-1:22")), ["web-1"]);
        assert_eq!(host_principals(&host("web-1", "[::1]:22")), ["web-1"]);
        assert_eq!(host_principals(&host("db", "db.internal.example:2222")), ["db", "db.internal.example"]);
    }
}
