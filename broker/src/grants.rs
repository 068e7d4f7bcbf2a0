//! Grants: a subject (user or agent) may log in to a host as a login until
//! a time. The SSH authorization decision for admin-made grants lives here.

use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use crate::audit::{Actor, AuditRecord, Outcome};
use crate::error::{BrokerError, Result};
use crate::hosts::Host;
use crate::users::User;
use crate::{Broker, ids, now_ms};

#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub id: String,
    pub subject_kind: String,
    pub subject_id: String,
    pub subject_name: String,
    pub host_id: String,
    pub host_name: String,
    pub login: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub reason: String,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: String,
}

impl Grant {
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// Longest grant an admin may make by hand.
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// A new grant.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub subject_kind: &'static str,
    pub subject_id: String,
    pub subject_name: String,
    pub host: Host,
    pub login: String,
    pub ttl: Duration,
    pub reason: String,
}

pub(crate) const GRANT_SELECT: &str = "SELECT g.id, g.subject_kind, g.subject_id, g.host_id, h.name AS host_name, g.login, \
     g.created_at, g.expires_at, g.reason, g.created_by, g.revoked_at, g.revoked_by, \
     COALESCE(u.name, a.name, g.subject_id) AS subject_name \
     FROM grants g JOIN hosts h ON h.id = g.host_id \
     LEFT JOIN users u ON g.subject_kind = 'user' AND u.id = g.subject_id \
     LEFT JOIN agents a ON g.subject_kind = 'agent' AND a.id = g.subject_id";

fn row_to_grant(r: &sqlx::any::AnyRow, now: i64) -> Result<Grant> {
    let revoked_at: Option<i64> = r.try_get("revoked_at")?;
    let expires_at: i64 = r.try_get("expires_at")?;
    Ok(Grant {
        id: r.try_get("id")?,
        subject_kind: r.try_get("subject_kind")?,
        subject_id: r.try_get("subject_id")?,
        subject_name: r.try_get("subject_name")?,
        host_id: r.try_get("host_id")?,
        host_name: r.try_get("host_name")?,
        login: r.try_get("login")?,
        created_at: r.try_get("created_at")?,
        expires_at,
        reason: r.try_get("reason")?,
        created_by: r.try_get("created_by")?,
        revoked_at,
        revoked_by: r.try_get("revoked_by")?,
        status: if revoked_at.is_some() {
            "revoked".into()
        } else if expires_at <= now {
            "expired".into()
        } else {
            "active".into()
        },
    })
}

/// Insert a grant and its `grant.create` audit row inside the caller's write
/// transaction (so an approval and the grant it makes commit together).
/// `extra` is merged into the audit details (e.g. the access request id).
pub(crate) async fn insert_grant(
    w: &mut crate::db::WriteTx,
    actor: &Actor,
    g: &NewGrant,
    extra: serde_json::Value,
) -> Result<String> {
    ids::check_login(&g.login)?;
    if g.ttl.is_zero() || g.ttl > MAX_GRANT_TTL {
        return Err(BrokerError::Invalid("grant TTL must be between 1 s and 90 days".into()));
    }
    let reason = crate::audit::cap(g.reason.trim(), 1000);
    let id = ids::new("g");
    let now = now_ms();
    let expires = now.saturating_add(i64::try_from(g.ttl.as_millis()).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO grants (id, subject_kind, subject_id, host_id, login, created_at, expires_at, reason, created_by) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
    )
    .bind(&id)
    .bind(g.subject_kind)
    .bind(&g.subject_id)
    .bind(&g.host.id)
    .bind(&g.login)
    .bind(now)
    .bind(expires)
    .bind(&reason)
    .bind(format!("{}:{}", actor.kind, actor.name))
    .execute(w.conn())
    .await?;
    let mut details = serde_json::json!({
        "subject": format!("{}:{}", g.subject_kind, g.subject_name),
        "host": g.host.name,
        "login": g.login,
        "expires_at": expires,
    });
    if let (Some(d), serde_json::Value::Object(more)) = (details.as_object_mut(), extra) {
        d.extend(more);
    }
    w.audit(
        AuditRecord::new(actor.clone(), "grant.create", format!("grant:{id}"), Outcome::Allow)
            .reason(reason)
            .details(details),
    )
    .await?;
    Ok(id)
}

/// What the bastion may do for an allowed connection.
#[derive(Debug, Clone)]
pub struct SshAccess {
    pub user: User,
    pub host: Host,
    pub login: String,
    pub grant: Grant,
}

impl Broker {
    /// Create a grant (and its audit row) in one transaction.
    pub async fn create_grant(&self, actor: &Actor, g: NewGrant) -> Result<Grant> {
        let mut w = self.db().write().await?;
        let id = insert_grant(&mut w, actor, &g, serde_json::Value::Null).await?;
        w.commit().await?;
        self.grant(&id).await
    }

    /// Admin convenience: grant a named user access.
    pub async fn grant_user(
        &self,
        actor: &Actor,
        user: &str,
        host: &str,
        login: &str,
        ttl: Duration,
        reason: &str,
    ) -> Result<Grant> {
        let u = self.user_by_name(user).await?.ok_or_else(|| BrokerError::NotFound(format!("user {user}")))?;
        let h = self.host_by_name(host).await?.ok_or_else(|| BrokerError::NotFound(format!("host {host}")))?;
        self.create_grant(
            actor,
            NewGrant {
                subject_kind: "user",
                subject_id: u.id,
                subject_name: u.name,
                host: h,
                login: login.to_string(),
                ttl,
                reason: reason.to_string(),
            },
        )
        .await
    }

    pub async fn grant(&self, id: &str) -> Result<Grant> {
        ids::check("g", id)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{GRANT_SELECT} WHERE g.id = $1")))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("grant {id}")))?;
        row_to_grant(&row, now_ms())
    }

    pub async fn list_grants(&self, active_only: bool) -> Result<Vec<Grant>> {
        let now = now_ms();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{GRANT_SELECT} ORDER BY g.created_at DESC")))
            .fetch_all(self.pool())
            .await?;
        let all = rows.iter().map(|r| row_to_grant(r, now)).collect::<Result<Vec<_>>>()?;
        Ok(all.into_iter().filter(|g| !active_only || g.is_live(now)).collect())
    }

    /// Live grants of a subject on a host.
    pub async fn live_grants_for(&self, subject_kind: &str, subject_id: &str, host_id: &str) -> Result<Vec<Grant>> {
        let now = now_ms();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{GRANT_SELECT} WHERE g.subject_kind = $1 AND g.subject_id = $2 AND g.host_id = $3 \
             AND g.revoked_at IS NULL AND g.expires_at > $4 ORDER BY g.expires_at DESC"
        )))
        .bind(subject_kind)
        .bind(subject_id)
        .bind(host_id)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| row_to_grant(r, now)).collect()
    }

    /// Revoke a grant; live sessions using it end within a second.
    pub async fn revoke_grant(&self, actor: &Actor, id: &str) -> Result<Grant> {
        ids::check("g", id)?;
        let now = now_ms();
        let mut w = self.db().write().await?;
        let n = sqlx::query("UPDATE grants SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(format!("{}:{}", actor.kind, actor.name))
            .bind(id)
            .execute(w.conn())
            .await?
            .rows_affected();
        if n == 0 {
            // Distinguish unknown from already revoked.
            drop(w);
            let g = self.grant(id).await?;
            return Err(BrokerError::Conflict(format!("grant {} is already revoked", g.id)));
        }
        w.audit(AuditRecord::new(actor.clone(), "grant.revoke", format!("grant:{id}"), Outcome::Allow)).await?;
        w.commit().await?;
        self.live().end_where(|s| s.grant_id.as_deref() == Some(id), "grant revoked");
        self.grant(id).await
    }

    /// Decide whether `user` may open `login@host` now. Writes the allow or
    /// deny audit event. The denial text is what the user sees: it never
    /// tells whether a host the user has no grant for exists.
    pub async fn authorize_ssh(
        &self,
        user: &User,
        login: &str,
        host_name: &str,
        client_addr: &str,
    ) -> Result<SshAccess> {
        let resource = format!("{login}@{host_name}");
        let deny = |user_msg: String, audit_reason: &str| {
            (
                BrokerError::Denied(user_msg),
                AuditRecord::new(Actor::user(&user.name), "ssh.connect", resource.clone(), Outcome::Deny)
                    .reason(audit_reason.to_string())
                    .client(client_addr),
            )
        };
        let decision: std::result::Result<SshAccess, (BrokerError, AuditRecord)> = async {
            if ids::check_login(login).is_err() {
                return Err(deny(format!("access denied: {:?} is not a valid login", crate::audit::cap(login, 40)), "invalid login"));
            }
            let no_grant = format!("access denied: you have no grant for host {host_name}");
            let Some(host) = self.host_by_name(host_name).await.map_err(|e| (e, AuditRecord::new(Actor::user(&user.name), "ssh.connect", resource.clone(), Outcome::Error)))? else {
                return Err(deny(no_grant, "unknown host"));
            };
            let grants = self
                .live_grants_for("user", &user.id, &host.id)
                .await
                .map_err(|e| (e, AuditRecord::new(Actor::user(&user.name), "ssh.connect", resource.clone(), Outcome::Error)))?;
            if let Some(grant) = grants.iter().find(|g| g.login == login) {
                return Ok(SshAccess {
                    user: user.clone(),
                    host,
                    login: login.to_string(),
                    grant: grant.clone(),
                });
            }
            if !grants.is_empty() {
                let logins: Vec<&str> = grants.iter().map(|g| g.login.as_str()).collect();
                return Err(deny(
                    format!("access denied: your grant for {host_name} allows login {}, not {login}", logins.join(", ")),
                    "wrong login",
                ));
            }
            // Say "expired" only when the user had a grant here.
            let expired: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(expires_at) FROM grants WHERE subject_kind = 'user' AND subject_id = $1 AND host_id = $2 AND login = $3 AND revoked_at IS NULL",
            )
            .bind(&user.id)
            .bind(&host.id)
            .bind(login)
            .fetch_one(self.pool())
            .await
            .map_err(|e| (BrokerError::from(e), AuditRecord::new(Actor::user(&user.name), "ssh.connect", resource.clone(), Outcome::Error)))?;
            if expired.is_some() {
                return Err(deny(format!("access denied: your grant for {login}@{host_name} has expired"), "grant expired"));
            }
            Err(deny(no_grant, "no grant"))
        }
        .await;
        match decision {
            Ok(access) => {
                self.audit(
                    AuditRecord::new(Actor::user(&user.name), "ssh.connect", resource, Outcome::Allow)
                        .client(client_addr)
                        .details(serde_json::json!({"grant": access.grant.id})),
                )
                .await?;
                Ok(access)
            }
            Err((err, rec)) => {
                let rec = if let BrokerError::Denied(_) = &err { rec } else { rec.reason(err.to_string()) };
                self.audit(rec).await?;
                Err(err)
            }
        }
    }
}
