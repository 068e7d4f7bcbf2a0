//! X.509 PKI: the root and issuing CA (sealed at rest like the SSH CAs),
//! which domains each group may get certificates for, signing from CSRs,
//! listing, revocation and the CRL.
//!
//! Private keys of certificate holders never reach the broker (it only ever
//! sees CSRs), and the CA's private keys never leave it.
//!
//! Who may sign what: a certificate belongs to exactly one group, the one
//! whose allowed domain patterns cover *all* its names. An agent passes its
//! groups and may only use theirs; the admin (`groups = None`) may sign
//! anything some group allows, and nothing no group allows.

use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use gatehouse_ca::DomainPattern;
use gatehouse_ca::x509::{self, RevokeReason, RevokedEntry, X509Ca};
use serde::Serialize;
use sqlx::Row;

use crate::audit::{Actor, AuditRecord, Outcome};
use crate::error::{BrokerError, Result};
use crate::keys::{MasterKey, keys_dir, write_private};
use crate::{Broker, ids, now_ms};

/// Default and ceiling for a group's certificate lifetime.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

const ROOT_KEY_FILE: &str = "x509_root_ca.sealed";
const ISSUING_FILE: &str = "x509_issuing_ca.sealed";
/// Public root certificate, for operators.
pub const ROOT_PEM_FILE: &str = "x509_root_ca.pem";
const ROOT_LABEL: &str = "x509 root CA";
const ISSUING_LABEL: &str = "x509 issuing CA";
const CERT_MARK: &str = "-----BEGIN CERTIFICATE-----";

/// The X.509 CA in memory and the cached CRL.
pub struct PkiState {
    ca: X509Ca,
    crl: Mutex<Option<CachedCrl>>,
}

impl std::fmt::Debug for PkiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PkiState").field("ca", &self.ca).finish()
    }
}

struct CachedCrl {
    key: String,
    made_at: i64,
    pem: String,
}

/// Load the sealed X.509 CA, creating root and intermediate on first start.
/// The root key is sealed in a file of its own and is not loaded: it is
/// only needed to issue a new intermediate. The issuing key is sealed
/// together with both certificates, so the certificates cannot be swapped
/// on disk either. Returns whether it was created.
pub(crate) fn load_or_create(data_dir: &Path, master: &MasterKey) -> Result<(PkiState, bool)> {
    let dir = keys_dir(data_dir);
    let issuing_path = dir.join(ISSUING_FILE);
    if issuing_path.exists() {
        let sealed = fs::read_to_string(&issuing_path)?;
        let plain = master.open(ISSUING_LABEL, &sealed)?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| BrokerError::Invalid(format!("{ISSUING_LABEL} is not a sealed key file")))?;
        // key PEM, then the issuing certificate, then the root certificate
        let mut parts = text.split(CERT_MARK);
        let key = parts.next().unwrap_or("");
        let issuing = parts.next().map(|b| format!("{CERT_MARK}{b}")).unwrap_or_default();
        let root = parts.next().map(|b| format!("{CERT_MARK}{b}")).unwrap_or_default();
        let ca = X509Ca::from_pem(&root, &issuing, key)?;
        return Ok((PkiState { ca, crl: Mutex::new(None) }, false));
    }
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let (ca, root) = X509Ca::generate(now)?;
    write_private(&dir.join(ROOT_KEY_FILE), master.seal(ROOT_LABEL, root.root_key_pem.as_bytes())?.as_bytes())?;
    let bundle = zeroize::Zeroizing::new(format!("{}{}{}", *ca.issuing_key_pem(), ca.chain_pem(), ca.root_pem()));
    write_private(&issuing_path, master.seal(ISSUING_LABEL, bundle.as_bytes())?.as_bytes())?;
    fs::write(dir.join(ROOT_PEM_FILE), ca.root_pem())?;
    Ok((PkiState { ca, crl: Mutex::new(None) }, true))
}

/// One allowed domain pattern of a group.
#[derive(Debug, Clone, Serialize)]
pub struct DomainRule {
    pub id: String,
    pub group: String,
    pub pattern: String,
    pub max_ttl_secs: i64,
    pub created_at: i64,
    pub created_by: String,
}

/// An issued certificate as listed (no PEMs).
#[derive(Debug, Clone, Serialize)]
pub struct CertificateInfo {
    pub serial: String,
    pub name: String,
    pub group: String,
    pub dns_names: Vec<String>,
    pub subject: String,
    pub key_type: String,
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint_sha256: String,
    pub requested_by: String,
    pub issued_at: i64,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
    /// `valid`, `expired` or `revoked`.
    pub status: String,
}

/// Everything a TLS server needs besides its own private key.
#[derive(Debug, Clone, Serialize)]
pub struct Bundle {
    #[serde(flatten)]
    pub info: CertificateInfo,
    pub leaf_pem: String,
    /// The intermediate (send it after the leaf).
    pub chain_pem: String,
    /// Leaf followed by the chain.
    pub fullchain_pem: String,
    /// The root to trust (not sent by servers).
    pub root_pem: String,
    /// True when the lifetime asked for was longer than the group allows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ttl_capped: bool,
}

const CERT_COLUMNS: &str = "serial, name, group_name, dns_names, subject, key_type, not_before, not_after, \
     fingerprint_sha256, requested_by, issued_at, revoked_at, revoke_reason";

fn row_to_info(r: &sqlx::any::AnyRow, now: i64) -> Result<CertificateInfo> {
    let dns: String = r.try_get("dns_names")?;
    let revoked_at: Option<i64> = r.try_get("revoked_at")?;
    let not_after: i64 = r.try_get("not_after")?;
    Ok(CertificateInfo {
        serial: r.try_get("serial")?,
        name: r.try_get("name")?,
        group: r.try_get("group_name")?,
        dns_names: serde_json::from_str(&dns).unwrap_or_default(),
        subject: r.try_get("subject")?,
        key_type: r.try_get("key_type")?,
        not_before: r.try_get("not_before")?,
        not_after,
        fingerprint_sha256: r.try_get("fingerprint_sha256")?,
        requested_by: r.try_get("requested_by")?,
        issued_at: r.try_get("issued_at")?,
        revoked_at,
        revoke_reason: r.try_get("revoke_reason")?,
        status: if revoked_at.is_some() {
            "revoked".into()
        } else if not_after <= now {
            "expired".into()
        } else {
            "valid".into()
        },
    })
}

/// A certificate name: what bots ask for by (`gatehouse_get_certificate
/// {name}`). Lowercase letters, digits, `.`, `-`, `_`; at most 253.
pub fn check_certificate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::Invalid(format!(
            "certificate name {:?} is not valid (lowercase letters, digits, '.', '-', '_')",
            crate::audit::cap(name, 60)
        )))
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn fmt_days(secs: i64) -> String {
    if secs % 86400 == 0 { format!("{}d", secs / 86400) } else { format!("{secs}s") }
}

/// The group a set of names may be issued under, and the longest lifetime
/// it allows for them. Pure, for unit tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub group: String,
    pub max_ttl: Duration,
}

/// Which single group's rules cover every name (`prefer` first, then by
/// name), with the lifetime cap: for each name the longest `max_ttl` of the
/// rules matching it, and the shortest of those over all names.
pub fn cover(rules: &[DomainRule], names: &[String], prefer: Option<&str>) -> std::result::Result<Coverage, String> {
    let mut groups: Vec<&str> = rules.iter().map(|r| r.group.as_str()).collect();
    groups.sort();
    groups.dedup();
    if let Some(p) = prefer {
        groups.retain(|g| *g == p);
    }
    let patterns: Vec<(&DomainRule, Option<DomainPattern>)> =
        rules.iter().map(|r| (r, DomainPattern::parse(&r.pattern).ok())).collect();
    for name in names {
        if !patterns.iter().any(|(_, p)| p.as_ref().is_some_and(|p| p.matches(name))) {
            return Err(format!("{name} is not under any domain allowed for your groups"));
        }
    }
    for g in groups {
        let mut cap: Option<i64> = None;
        let mut all = true;
        for name in names {
            let best = patterns
                .iter()
                .filter(|(r, p)| r.group == g && p.as_ref().is_some_and(|p| p.matches(name)))
                .map(|(r, _)| r.max_ttl_secs)
                .max();
            match best {
                Some(t) => cap = Some(cap.map_or(t, |c| c.min(t))),
                None => {
                    all = false;
                    break;
                }
            }
        }
        if all && let Some(c) = cap {
            return Ok(Coverage { group: g.to_string(), max_ttl: Duration::from_secs(u64::try_from(c).unwrap_or(0)) });
        }
    }
    match prefer {
        Some(p) => Err(format!("the names are not all under the domains allowed for group {p}")),
        None => Err("no single group's allowed domains cover all these names; request them separately".into()),
    }
}

fn in_groups(groups: Option<&[String]>, g: &str) -> bool {
    groups.is_none_or(|gs| gs.iter().any(|x| x == g))
}

impl Broker {
    fn pki(&self) -> &PkiState {
        &self.inner.pki
    }

    /// The root certificate users and servers trust.
    pub fn pki_root_pem(&self) -> &str {
        self.pki().ca.root_pem()
    }

    /// The issuing intermediate (the chain).
    pub fn pki_chain_pem(&self) -> &str {
        self.pki().ca.chain_pem()
    }

    /// Let `group` get certificates for names matching `pattern`, for at
    /// most `max_ttl` (default 90 days). Allowing an existing pattern again
    /// updates its lifetime.
    pub async fn pki_allow(
        &self,
        actor: &Actor,
        group: &str,
        pattern: &str,
        max_ttl: Option<Duration>,
    ) -> Result<DomainRule> {
        ids::check_name("group", group)?;
        let pattern = DomainPattern::parse(pattern)?;
        let ttl = max_ttl.unwrap_or(DEFAULT_MAX_TTL);
        if ttl < Duration::from_secs(3600) || ttl > x509::MAX_LEAF_TTL {
            return Err(BrokerError::Invalid(format!(
                "max TTL must be between 1h and {}d",
                x509::MAX_LEAF_TTL.as_secs() / 86400
            )));
        }
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let mut w = self.db().write().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM pki_domains WHERE group_name = $1 AND pattern = $2")
                .bind(group)
                .bind(pattern.as_str())
                .fetch_optional(&mut *w.conn())
                .await?;
        let id = match existing {
            Some(id) => {
                sqlx::query("UPDATE pki_domains SET max_ttl_ms = $1 WHERE id = $2")
                    .bind(secs.saturating_mul(1000))
                    .bind(&id)
                    .execute(w.conn())
                    .await?;
                id
            }
            None => {
                let id = ids::new("dom");
                sqlx::query(
                    "INSERT INTO pki_domains (id, group_name, pattern, max_ttl_ms, created_at, created_by) \
                     VALUES ($1,$2,$3,$4,$5,$6)",
                )
                .bind(&id)
                .bind(group)
                .bind(pattern.as_str())
                .bind(secs.saturating_mul(1000))
                .bind(now_ms())
                .bind(format!("{}:{}", actor.kind, actor.name))
                .execute(w.conn())
                .await?;
                id
            }
        };
        w.audit(
            AuditRecord::new(actor.clone(), "pki.allow", format!("group:{group}"), Outcome::Allow)
                .details(serde_json::json!({"pattern": pattern.as_str(), "max_ttl": fmt_days(secs)})),
        )
        .await?;
        w.commit().await?;
        self.pki_domains(None)
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| BrokerError::NotFound("domain rule".into()))
    }

    /// Stop allowing `pattern` for `group`.
    pub async fn pki_disallow(&self, actor: &Actor, group: &str, pattern: &str) -> Result<()> {
        let pattern = DomainPattern::parse(pattern)?;
        let mut w = self.db().write().await?;
        let n = sqlx::query("DELETE FROM pki_domains WHERE group_name = $1 AND pattern = $2")
            .bind(group)
            .bind(pattern.as_str())
            .execute(w.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(BrokerError::NotFound(format!("domain {} for group {group}", pattern.as_str())));
        }
        w.audit(
            AuditRecord::new(actor.clone(), "pki.disallow", format!("group:{group}"), Outcome::Allow)
                .details(serde_json::json!({"pattern": pattern.as_str()})),
        )
        .await?;
        w.commit().await
    }

    /// Allowed domains, of `groups` only when given.
    pub async fn pki_domains(&self, groups: Option<&[String]>) -> Result<Vec<DomainRule>> {
        let rows = sqlx::query(
            "SELECT id, group_name, pattern, max_ttl_ms, created_at, created_by FROM pki_domains \
             ORDER BY group_name, pattern",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let rule = DomainRule {
                id: r.try_get("id")?,
                group: r.try_get("group_name")?,
                pattern: r.try_get("pattern")?,
                max_ttl_secs: r.try_get::<i64, _>("max_ttl_ms")? / 1000,
                created_at: r.try_get("created_at")?,
                created_by: r.try_get("created_by")?,
            };
            if in_groups(groups, &rule.group) {
                out.push(rule);
            }
        }
        Ok(out)
    }

    async fn pki_deny(&self, actor: &Actor, action: &str, resource: &str, why: &str) -> Result<()> {
        self.audit(AuditRecord::new(actor.clone(), action, resource, Outcome::Deny).reason(why)).await?;
        Ok(())
    }

    /// Sign a CSR. `groups`: the caller's groups (an agent's), or `None` for
    /// the admin, who may sign whatever any group allows. `name` defaults to
    /// the first DNS name; `ttl` defaults to, and is capped at, the group's
    /// maximum. Every refusal is audited.
    pub async fn sign_csr(
        &self,
        actor: &Actor,
        groups: Option<&[String]>,
        name: Option<&str>,
        csr_pem: &str,
        ttl: Option<Duration>,
    ) -> Result<Bundle> {
        let resource = |n: &str| format!("certificate:{}", crate::audit::cap(n, 200));
        if let Some(n) = name
            && let Err(e) = check_certificate_name(n)
        {
            self.pki_deny(actor, "pki.sign", &resource("-"), &e.to_string()).await?;
            return Err(e);
        }
        let csr = match x509::parse_csr(csr_pem) {
            Ok(c) => c,
            Err(e) => {
                self.pki_deny(actor, "pki.sign", &resource(name.unwrap_or("-")), &e.to_string()).await?;
                return Err(e.into());
            }
        };
        let name = name.map(str::to_string).unwrap_or_else(|| csr.dns_names.first().cloned().unwrap_or_default());
        if let Err(e) = check_certificate_name(&name) {
            self.pki_deny(actor, "pki.sign", &resource("-"), &e.to_string()).await?;
            return Err(e);
        }
        let rules = self.pki_domains(groups).await?;
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT group_name FROM pki_certificates WHERE name = $1 ORDER BY issued_at DESC LIMIT 1",
        )
        .bind(&name)
        .fetch_optional(self.pool())
        .await?;
        if let Some(g) = &owner
            && !in_groups(groups, g)
        {
            let why = format!("certificate name {name} belongs to a group you are not in");
            self.pki_deny(actor, "pki.sign", &resource(&name), &why).await?;
            return Err(BrokerError::Denied(why));
        }
        let coverage = match cover(&rules, &csr.dns_names, owner.as_deref()) {
            Ok(c) => c,
            Err(why) => {
                let why = match &owner {
                    Some(g) if !why.contains("not under any domain") => {
                        format!(
                            "certificate name {name} belongs to group {g}, whose allowed domains do not cover all these names"
                        )
                    }
                    _ => why,
                };
                self.audit(
                    AuditRecord::new(actor.clone(), "pki.sign", resource(&name), Outcome::Deny)
                        .reason(why.clone())
                        .details(serde_json::json!({"dns_names": csr.dns_names})),
                )
                .await?;
                return Err(BrokerError::Denied(why));
            }
        };
        let asked = ttl.unwrap_or(coverage.max_ttl);
        if asked.is_zero() {
            let e = BrokerError::Invalid("certificate TTL must be positive".into());
            self.pki_deny(actor, "pki.sign", &resource(&name), &e.to_string()).await?;
            return Err(e);
        }
        let effective = asked.min(coverage.max_ttl);
        let now = now_ms();
        let issued = self.pki().ca.issue(&csr, effective, u64::try_from(now / 1000).unwrap_or(0))?;
        let mut w = self.db().write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO pki_certificates ({CERT_COLUMNS}, leaf_pem, chain_pem) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,NULL,NULL,$12,$13)"
        )))
        .bind(&issued.serial)
        .bind(&name)
        .bind(&coverage.group)
        .bind(serde_json::to_string(&issued.dns_names).unwrap_or_else(|_| "[]".into()))
        .bind(format!("CN={}", issued.subject_cn))
        .bind(&csr.key_type)
        .bind(i64::try_from(issued.not_before).unwrap_or(0).saturating_mul(1000))
        .bind(i64::try_from(issued.not_after).unwrap_or(0).saturating_mul(1000))
        .bind(&issued.fingerprint_sha256)
        .bind(format!("{}:{}", actor.kind, actor.name))
        .bind(now)
        .bind(&issued.leaf_pem)
        .bind(&issued.chain_pem)
        .execute(w.conn())
        .await?;
        w.audit(AuditRecord::new(actor.clone(), "pki.sign", resource(&name), Outcome::Allow).details(
            serde_json::json!({
                "serial": issued.serial,
                "group": coverage.group,
                "dns_names": issued.dns_names,
                "key_type": csr.key_type,
                "not_after": i64::try_from(issued.not_after).unwrap_or(0).saturating_mul(1000),
                "fingerprint_sha256": issued.fingerprint_sha256,
                "ttl_capped": asked > effective,
            }),
        ))
        .await?;
        w.commit().await?;
        let mut b = self.bundle_by_serial(&issued.serial).await?;
        b.ttl_capped = asked > effective;
        Ok(b)
    }

    async fn bundle_by_serial(&self, serial: &str) -> Result<Bundle> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CERT_COLUMNS}, leaf_pem, chain_pem FROM pki_certificates WHERE serial = $1"
        )))
        .bind(serial)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| BrokerError::NotFound(format!("certificate {serial}")))?;
        self.row_to_bundle(&row)
    }

    fn row_to_bundle(&self, row: &sqlx::any::AnyRow) -> Result<Bundle> {
        let info = row_to_info(row, now_ms())?;
        let leaf_pem: String = row.try_get("leaf_pem")?;
        let chain_pem: String = row.try_get("chain_pem")?;
        Ok(Bundle {
            info,
            fullchain_pem: format!("{leaf_pem}{chain_pem}"),
            leaf_pem,
            chain_pem,
            root_pem: self.pki_root_pem().to_string(),
            ttl_capped: false,
        })
    }

    /// The newest unrevoked certificate issued under `name`, without audit
    /// (for probes and internal comparisons).
    pub async fn latest_bundle(&self, name: &str) -> Result<Option<Bundle>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CERT_COLUMNS}, leaf_pem, chain_pem FROM pki_certificates \
             WHERE name = $1 AND revoked_at IS NULL ORDER BY issued_at DESC LIMIT 1"
        )))
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| self.row_to_bundle(&r)).transpose()
    }

    /// The latest bundle for `name`, for a caller limited to `groups`
    /// (`None`: admin). A name outside the groups is an audited denial that
    /// reads the same as a name that does not exist.
    pub async fn get_certificate(&self, actor: &Actor, groups: Option<&[String]>, name: &str) -> Result<Bundle> {
        check_certificate_name(name)?;
        let found = self.latest_bundle(name).await?;
        match found {
            Some(b) if in_groups(groups, &b.info.group) => Ok(b),
            other => {
                let why = if groups.is_some() {
                    format!("no certificate named {name} within your groups")
                } else {
                    format!("no valid certificate named {name}")
                };
                let reason = if other.is_some() { "outside the caller's groups" } else { "no such certificate" };
                if groups.is_some() {
                    self.audit(
                        AuditRecord::new(actor.clone(), "pki.get", format!("certificate:{name}"), Outcome::Deny)
                            .reason(reason),
                    )
                    .await?;
                    Err(BrokerError::Denied(why))
                } else {
                    Err(BrokerError::NotFound(why))
                }
            }
        }
    }

    /// Certificates, newest first. By default only the latest of each name
    /// (what a renewal bot cares about); `all` lists every one issued.
    /// `expiring_within` keeps unrevoked certificates whose `not_after` is
    /// within that time from now (expired ones included).
    pub async fn list_certificates(
        &self,
        groups: Option<&[String]>,
        expiring_within: Option<Duration>,
        all: bool,
    ) -> Result<Vec<CertificateInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CERT_COLUMNS} FROM pki_certificates ORDER BY issued_at DESC, serial"
        )))
        .fetch_all(self.pool())
        .await?;
        let now = now_ms();
        let all_rows = rows.iter().map(|r| row_to_info(r, now)).collect::<Result<Vec<_>>>()?;
        let unrevoked: std::collections::HashSet<&str> =
            all_rows.iter().filter(|c| c.revoked_at.is_none()).map(|c| c.name.as_str()).collect();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for c in &all_rows {
            if !in_groups(groups, &c.group) {
                continue;
            }
            // The latest unrevoked one per name; a name whose every
            // certificate is revoked shows its newest.
            if !all && ((c.revoked_at.is_some() && unrevoked.contains(c.name.as_str())) || !seen.insert(c.name.clone()))
            {
                continue;
            }
            if let Some(d) = expiring_within
                && (c.revoked_at.is_some() || c.not_after > now.saturating_add(ms(d)))
            {
                continue;
            }
            out.push(c.clone());
        }
        Ok(out)
    }

    /// Revoke a certificate by serial (hex, any case, colons allowed).
    pub async fn revoke_certificate(
        &self,
        actor: &Actor,
        groups: Option<&[String]>,
        serial: &str,
        reason: &str,
    ) -> Result<CertificateInfo> {
        let serial = x509::normalise_serial(serial)?;
        let reason = crate::audit::cap(reason.trim(), 500);
        if reason.is_empty() {
            return Err(BrokerError::Invalid("give a reason for the revocation".into()));
        }
        let code = RevokeReason::from_text(&reason);
        let mut w = self.db().write().await?;
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {CERT_COLUMNS} FROM pki_certificates WHERE serial = $1")))
                .bind(&serial)
                .fetch_optional(&mut *w.conn())
                .await?;
        let Some(row) = row else {
            drop(w);
            return Err(BrokerError::NotFound(format!("certificate {serial}")));
        };
        let info = row_to_info(&row, now_ms())?;
        if !in_groups(groups, &info.group) {
            w.audit(
                AuditRecord::new(actor.clone(), "pki.revoke", format!("certificate:{}", info.name), Outcome::Deny)
                    .reason("outside the caller's groups"),
            )
            .await?;
            w.commit().await?;
            return Err(BrokerError::NotFound(format!("certificate {serial}")));
        }
        if info.revoked_at.is_some() {
            return Err(BrokerError::Conflict(format!("certificate {serial} is already revoked")));
        }
        let now = now_ms();
        sqlx::query("UPDATE pki_certificates SET revoked_at = $1, revoke_reason = $2 WHERE serial = $3")
            .bind(now)
            .bind(&reason)
            .bind(&serial)
            .execute(w.conn())
            .await?;
        w.audit(
            AuditRecord::new(actor.clone(), "pki.revoke", format!("certificate:{}", info.name), Outcome::Allow)
                .reason(reason.clone())
                .details(serde_json::json!({"serial": serial, "reason_code": code.as_str()})),
        )
        .await?;
        w.commit().await?;
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {CERT_COLUMNS} FROM pki_certificates WHERE serial = $1")))
                .bind(&serial)
                .fetch_one(self.pool())
                .await?;
        row_to_info(&row, now_ms())
    }

    /// The issued certificate with this SHA-256 fingerprint, if it is ours.
    pub async fn certificate_by_fingerprint(&self, fingerprint: &str) -> Result<Option<CertificateInfo>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CERT_COLUMNS} FROM pki_certificates WHERE fingerprint_sha256 = $1"
        )))
        .bind(fingerprint.to_ascii_lowercase())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| row_to_info(&r, now_ms())).transpose()
    }

    /// The current CRL (PEM), signed by the issuing CA, valid for a day.
    /// Re-signed when a revocation appears (on any node) or after an hour.
    pub async fn crl_pem(&self) -> Result<String> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, revoke_reason FROM pki_certificates WHERE revoked_at IS NOT NULL ORDER BY serial",
        )
        .fetch_all(self.pool())
        .await?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut key = String::new();
        for r in &rows {
            let serial: String = r.try_get("serial")?;
            let at: i64 = r.try_get("revoked_at")?;
            let reason: Option<String> = r.try_get("revoke_reason")?;
            key.push_str(&format!("{serial}:{at};"));
            entries.push(RevokedEntry {
                serial,
                revoked_at: u64::try_from(at / 1000).unwrap_or(0),
                reason: RevokeReason::from_text(reason.as_deref().unwrap_or("")),
            });
        }
        let now = now_ms();
        if let Ok(cache) = self.pki().crl.lock()
            && let Some(c) = cache.as_ref()
            && c.key == key
            && now - c.made_at < 3600 * 1000
        {
            return Ok(c.pem.clone());
        }
        let now_s = u64::try_from(now / 1000).unwrap_or(0);
        let pem = self.pki().ca.crl(&entries, u64::try_from(now).unwrap_or(0), now_s, now_s + 24 * 3600)?;
        if let Ok(mut cache) = self.pki().crl.lock() {
            *cache = Some(CachedCrl { key, made_at: now, pem: pem.clone() });
        }
        Ok(pem)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rule(group: &str, pattern: &str, days: i64) -> DomainRule {
        DomainRule {
            id: String::new(),
            group: group.into(),
            pattern: pattern.into(),
            max_ttl_secs: days * 86400,
            created_at: 0,
            created_by: String::new(),
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_group_must_cover_every_name() {
        let rules = vec![
            rule("edge", "*.edge.example.com", 90),
            rule("edge", "api.example.com", 30),
            rule("prod", "*.prod.example.com", 60),
            rule("wide", "*.edge.example.com", 10),
        ];
        let c = cover(&rules, &names(&["a.edge.example.com"]), None).unwrap();
        assert_eq!(c, Coverage { group: "edge".into(), max_ttl: Duration::from_secs(90 * 86400) });
        let c = cover(&rules, &names(&["a.edge.example.com", "api.example.com"]), None).unwrap();
        assert_eq!(c.max_ttl, Duration::from_secs(30 * 86400), "the shortest cap over the names");
        let c = cover(&rules, &names(&["a.edge.example.com"]), Some("wide")).unwrap();
        assert_eq!(c.group, "wide");
        let e = cover(&rules, &names(&["a.edge.example.com", "b.prod.example.com"]), None).unwrap_err();
        assert!(e.contains("no single group"), "{e}");
        let e = cover(&rules, &names(&["evil.example.org"]), None).unwrap_err();
        assert!(e.contains("evil.example.org is not under any domain"), "{e}");
        let e = cover(&rules, &names(&["x.y.edge.example.com"]), None).unwrap_err();
        assert!(e.contains("not under any domain"), "{e}");
        assert!(cover(&rules, &names(&["a.prod.example.com"]), Some("edge")).is_err());
        assert!(cover(&[], &names(&["a.edge.example.com"]), None).is_err());
    }

    fn csr(names: &[&str]) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[tokio::test]
    async fn sign_list_revoke_and_crl_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = Broker::open(crate::BrokerConfig::new(dir.path())).await.unwrap();
        let admin = Actor::admin();
        let bot = Actor::agent("renew-bot");
        b.pki_allow(&admin, "edge", "*.edge.example.com", Some(Duration::from_secs(30 * 86400))).await.unwrap();
        b.pki_allow(&admin, "prod", "*.prod.example.com", None).await.unwrap();
        let edge = vec!["edge".to_string()];
        // TTL capped at the group's maximum
        let one = b
            .sign_csr(
                &bot,
                Some(&edge),
                Some("web"),
                &csr(&["web.edge.example.com"]),
                Some(Duration::from_secs(365 * 86400)),
            )
            .await
            .unwrap();
        assert!(one.ttl_capped);
        assert_eq!(one.info.group, "edge");
        assert!((one.info.not_after - one.info.issued_at - 30 * 86400 * 1000).abs() < 5000);
        assert!(one.fullchain_pem.starts_with(&one.leaf_pem));
        // outside the agent's groups: denied and audited
        let e = b.sign_csr(&bot, Some(&edge), None, &csr(&["db.prod.example.com"]), None).await.unwrap_err();
        assert!(matches!(e, BrokerError::Denied(_)), "{e}");
        let e = b.get_certificate(&Actor::agent("other"), Some(&["prod".to_string()]), "web").await.unwrap_err();
        assert!(matches!(e, BrokerError::Denied(_)), "{e}");
        // the admin may sign for any group, not for names no group allows
        let two = b.sign_csr(&admin, None, None, &csr(&["db.prod.example.com"]), None).await.unwrap();
        assert_eq!(two.info.name, "db.prod.example.com");
        assert!(b.sign_csr(&admin, None, None, &csr(&["x.example.org"]), None).await.is_err());
        // a name belongs to its group
        let e = b.sign_csr(&admin, None, Some("web"), &csr(&["db.prod.example.com"]), None).await.unwrap_err();
        assert!(e.to_string().contains("belongs to group edge"), "{e}");
        // renewal: latest wins
        let three = b.sign_csr(&bot, Some(&edge), Some("web"), &csr(&["web.edge.example.com"]), None).await.unwrap();
        let latest = b.get_certificate(&bot, Some(&edge), "web").await.unwrap();
        assert_eq!(latest.info.serial, three.info.serial);
        let listed = b.list_certificates(Some(&edge), None, false).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(b.list_certificates(None, None, true).await.unwrap().len(), 3);
        assert_eq!(b.list_certificates(None, Some(Duration::from_secs(31 * 86400)), false).await.unwrap().len(), 1);
        // revoke: back to the previous one, listed in the CRL
        let r = b.revoke_certificate(&admin, None, &three.info.serial.to_uppercase(), "superseded").await.unwrap();
        assert_eq!(r.status, "revoked");
        assert!(b.revoke_certificate(&admin, None, &three.info.serial, "again").await.is_err());
        assert_eq!(b.get_certificate(&bot, Some(&edge), "web").await.unwrap().info.serial, one.info.serial);
        let crl = b.crl_pem().await.unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"));
        let denies =
            b.audit_query(&crate::AuditQuery { outcome: Some("deny".into()), ..Default::default() }).await.unwrap();
        assert!(denies.iter().any(|e| e.action == "pki.sign" && e.actor == "renew-bot"));
        assert!(denies.iter().any(|e| e.action == "pki.get"));
        // the CA survives a restart
        let root = b.pki_root_pem().to_string();
        b.shutdown().await;
        drop(b);
        let (b2, _) = Broker::open(crate::BrokerConfig::new(dir.path())).await.unwrap();
        assert_eq!(b2.pki_root_pem(), root);
        let sealed = std::fs::read_to_string(dir.path().join("keys").join(ISSUING_FILE)).unwrap();
        assert!(!sealed.contains("PRIVATE KEY"));
        b2.shutdown().await;
    }

    #[test]
    fn certificate_names() {
        for ok in ["web.edge.example.com", "edge-web", "a_b"] {
            assert!(check_certificate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "A", "a b", "-a", "a/b"] {
            assert!(check_certificate_name(bad).is_err(), "{bad}");
        }
    }
}
