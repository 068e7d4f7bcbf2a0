//! Probes as stored: what to check, where it resolved to, and the results.
//! Running them is network IO and lives in the bastion crate
//! (`gatehouse_bastion::probe`); this module only keeps the records and the
//! schedule.

use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use crate::audit::{Actor, AuditRecord, Outcome};
use crate::error::{BrokerError, Result};
use crate::{Broker, ids, now_ms};

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A TCP connection opens.
    Tcp,
    /// A TLS handshake completes; reports the served certificate.
    Tls,
    /// An SSH server answers; reports its host key and certificate.
    Ssh,
    /// TLS plus an HTTP GET; reports the status code.
    Https,
}

impl ProbeKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "tls" => Ok(Self::Tls),
            "ssh" => Ok(Self::Ssh),
            "https" => Ok(Self::Https),
            _ => Err(BrokerError::Invalid(format!(
                "probe kind must be tcp, tls, ssh or https, not {:?}",
                crate::audit::cap(s, 20)
            ))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ssh => "ssh",
            Self::Https => "https",
        }
    }
}

/// Shortest interval between scheduled runs.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// Results kept per probe.
pub const KEEP_RESULTS: i64 = 50;

/// One run's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub at: i64,
    /// `ok`, `failed` or `refused` (the target is no longer allowed).
    pub status: String,
    pub latency_ms: Option<i64>,
    pub error: Option<String>,
    /// What was seen: certificate, host key, HTTP status, address.
    pub observed: serde_json::Value,
}

/// A probe with its latest result and recent history.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub id: String,
    pub target: String,
    pub kind: ProbeKind,
    pub host_name: String,
    pub expect_certificate_name: Option<String>,
    pub interval_secs: Option<i64>,
    /// The groups it was created within (`None`: by the admin, unrestricted).
    pub groups: Option<Vec<String>>,
    pub created_by: String,
    pub created_at: i64,
    pub next_run_at: Option<i64>,
    pub deleted_at: Option<i64>,
    /// Convenience copies of the latest result.
    pub status: Option<String>,
    pub latency_ms: Option<i64>,
    pub last_result: Option<ProbeResult>,
    pub recent_results: Vec<ProbeResult>,
}

/// A probe about to be stored, already resolved and scope-checked.
#[derive(Debug, Clone)]
pub struct NewProbe {
    pub target: String,
    pub kind: ProbeKind,
    pub host_id: String,
    pub host_name: String,
    pub expect_certificate_name: Option<String>,
    pub interval: Option<Duration>,
    pub groups: Option<Vec<String>>,
}

/// A probe the scheduler has claimed to run now.
#[derive(Debug, Clone)]
pub struct DueProbe {
    pub id: String,
    pub target: String,
    pub kind: ProbeKind,
    pub expect_certificate_name: Option<String>,
    pub groups: Option<Vec<String>>,
    pub created_by: String,
}

const PROBE_COLUMNS: &str = "id, target, kind, host_id, host_name, expect_certificate_name, interval_ms, groups_json, \
     created_by, created_at, next_run_at, deleted_at";

fn row_to_probe(r: &sqlx::any::AnyRow) -> Result<Probe> {
    let kind: String = r.try_get("kind")?;
    let groups: Option<String> = r.try_get("groups_json")?;
    let interval: Option<i64> = r.try_get("interval_ms")?;
    Ok(Probe {
        id: r.try_get("id")?,
        target: r.try_get("target")?,
        kind: ProbeKind::parse(&kind)?,
        host_name: r.try_get("host_name")?,
        expect_certificate_name: r.try_get("expect_certificate_name")?,
        interval_secs: interval.map(|i| i / 1000),
        groups: groups.and_then(|g| serde_json::from_str(&g).ok()),
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        next_run_at: r.try_get("next_run_at")?,
        deleted_at: r.try_get("deleted_at")?,
        status: None,
        latency_ms: None,
        last_result: None,
        recent_results: Vec::new(),
    })
}

fn row_to_result(r: &sqlx::any::AnyRow) -> Result<ProbeResult> {
    let observed: String = r.try_get("observed")?;
    Ok(ProbeResult {
        at: r.try_get("at")?,
        status: r.try_get("status")?,
        latency_ms: r.try_get("latency_ms")?,
        error: r.try_get("error")?,
        observed: serde_json::from_str(&observed).unwrap_or(serde_json::Value::Null),
    })
}

fn actor_label(actor: &Actor) -> String {
    format!("{}:{}", actor.kind, actor.name)
}

/// Parse `kind:name` back into an actor (for scheduled runs).
pub fn actor_from_label(label: &str) -> Actor {
    let (kind, name) = label.split_once(':').unwrap_or(("unknown", label));
    let kind = match kind {
        "admin" => "admin",
        "agent" => "agent",
        "user" => "user",
        "system" => "system",
        _ => "unknown",
    };
    Actor { kind, name: name.to_string() }
}

async fn insert_result(conn: &mut sqlx::AnyConnection, probe_id: &str, res: &ProbeResult) -> Result<()> {
    sqlx::query(
        "INSERT INTO probe_results (id, probe_id, at, status, latency_ms, error, observed) VALUES ($1,$2,$3,$4,$5,$6,$7)",
    )
    .bind(ids::new("prr"))
    .bind(probe_id)
    .bind(res.at)
    .bind(&res.status)
    .bind(res.latency_ms)
    .bind(&res.error)
    .bind(res.observed.to_string())
    .execute(&mut *conn)
    .await?;
    // Keep the newest results only.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM probe_results WHERE probe_id = $1 AND id NOT IN \
         (SELECT id FROM probe_results WHERE probe_id = $1 ORDER BY at DESC LIMIT {KEEP_RESULTS})"
    )))
    .bind(probe_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn result_details(res: &ProbeResult) -> serde_json::Value {
    serde_json::json!({
        "status": res.status,
        "latency_ms": res.latency_ms,
        "error": res.error,
        "fingerprint_sha256": res.observed.pointer("/certificate/fingerprint_sha256"),
        "matches_latest_bundle": res.observed.get("matches_latest_bundle"),
        "host_key_fingerprint": res.observed.get("host_key_fingerprint"),
        "http_status": res.observed.get("http_status"),
    })
}

impl Broker {
    /// Store a new probe with its first result, and the audit row, together.
    pub async fn insert_probe(&self, actor: &Actor, p: &NewProbe, first: &ProbeResult) -> Result<Probe> {
        let id = ids::new("pr");
        let now = now_ms();
        let interval_ms = p.interval.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut w = self.db().write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO probes ({PROBE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,NULL)"
        )))
        .bind(&id)
        .bind(&p.target)
        .bind(p.kind.as_str())
        .bind(&p.host_id)
        .bind(&p.host_name)
        .bind(&p.expect_certificate_name)
        .bind(interval_ms)
        .bind(p.groups.as_ref().map(|g| serde_json::to_string(g).unwrap_or_else(|_| "[]".into())))
        .bind(actor_label(actor))
        .bind(now)
        .bind(interval_ms.map(|i| now.saturating_add(i)))
        .execute(w.conn())
        .await?;
        insert_result(w.conn(), &id, first).await?;
        let mut details = result_details(first);
        if let Some(o) = details.as_object_mut() {
            o.insert("probe_id".into(), serde_json::json!(id));
            o.insert("kind".into(), serde_json::json!(p.kind.as_str()));
            o.insert("host".into(), serde_json::json!(p.host_name));
            o.insert("interval_secs".into(), serde_json::json!(interval_ms.map(|i| i / 1000)));
        }
        w.audit(
            AuditRecord::new(
                actor.clone(),
                "probe.create",
                format!("probe:{}", crate::audit::cap(&p.target, 200)),
                Outcome::Allow,
            )
            .details(details),
        )
        .await?;
        w.commit().await?;
        self.load_probe(&id).await
    }

    /// Store a later run's result, audited as `audit_as` when given (runs
    /// someone asked for, and refused scheduled runs; other scheduled runs
    /// are telemetry, not state changes).
    pub async fn record_probe_result(&self, id: &str, res: &ProbeResult, audit_as: Option<&Actor>) -> Result<()> {
        let mut w = self.db().write().await?;
        insert_result(w.conn(), id, res).await?;
        let refused = res.status == "refused";
        if let Some(actor) = audit_as {
            let mut d = result_details(res);
            if let Some(o) = d.as_object_mut() {
                o.insert("probe_id".into(), serde_json::json!(id));
            }
            w.audit(
                AuditRecord::new(
                    actor.clone(),
                    "probe.run",
                    format!("probe:{id}"),
                    if refused { Outcome::Deny } else { Outcome::Allow },
                )
                .reason(if refused { res.error.clone().unwrap_or_default() } else { String::new() })
                .details(d),
            )
            .await?;
        }
        w.commit().await
    }

    async fn load_probe(&self, id: &str) -> Result<Probe> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {PROBE_COLUMNS} FROM probes WHERE id = $1")))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("probe {id}")))?;
        let mut p = row_to_probe(&row)?;
        let results = sqlx::query(
            "SELECT at, status, latency_ms, error, observed FROM probe_results WHERE probe_id = $1 \
             ORDER BY at DESC LIMIT 10",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        p.recent_results = results.iter().map(row_to_result).collect::<Result<_>>()?;
        p.last_result = p.recent_results.first().cloned();
        p.status = p.last_result.as_ref().map(|r| r.status.clone());
        p.latency_ms = p.last_result.as_ref().and_then(|r| r.latency_ms);
        Ok(p)
    }

    /// Is the host a probe points at inside `groups` (its current groups)?
    async fn probe_in_groups(&self, id: &str, groups: Option<&[String]>) -> Result<bool> {
        let Some(gs) = groups else { return Ok(true) };
        let host_groups: Vec<String> = sqlx::query_scalar(
            "SELECT hg.group_name FROM probes p JOIN host_groups hg ON hg.host_id = p.host_id WHERE p.id = $1",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(host_groups.iter().any(|g| gs.contains(g)))
    }

    /// A probe and its results, for a caller limited to `groups` (`None`:
    /// admin). A probe whose host is outside the groups is an audited
    /// denial that reads like a probe that does not exist.
    pub async fn get_probe(&self, actor: &Actor, groups: Option<&[String]>, id: &str) -> Result<Probe> {
        ids::check("pr", id)?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM probes WHERE id = $1").bind(id).fetch_optional(self.pool()).await?;
        if exists.is_some() && self.probe_in_groups(id, groups).await? {
            return self.load_probe(id).await;
        }
        if groups.is_some() {
            self.audit(
                AuditRecord::new(actor.clone(), "probe.get", format!("probe:{id}"), Outcome::Deny)
                    .reason(if exists.is_some() { "outside the caller's groups" } else { "no such probe" }),
            )
            .await?;
        }
        Err(BrokerError::NotFound(format!("probe {id}")))
    }

    /// Probes (not deleted) whose hosts are inside `groups`, newest first.
    pub async fn list_probes(&self, groups: Option<&[String]>) -> Result<Vec<Probe>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM probes WHERE deleted_at IS NULL ORDER BY created_at DESC")
                .fetch_all(self.pool())
                .await?;
        let mut out = Vec::new();
        for id in ids {
            if self.probe_in_groups(&id, groups).await? {
                out.push(self.load_probe(&id).await?);
            }
        }
        Ok(out)
    }

    /// Stop a probe (its history stays).
    pub async fn delete_probe(&self, actor: &Actor, id: &str) -> Result<Probe> {
        ids::check("pr", id)?;
        let mut w = self.db().write().await?;
        let n =
            sqlx::query("UPDATE probes SET deleted_at = $1, next_run_at = NULL WHERE id = $2 AND deleted_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(w.conn())
                .await?
                .rows_affected();
        if n == 0 {
            return Err(BrokerError::NotFound(format!("probe {id}")));
        }
        w.audit(AuditRecord::new(actor.clone(), "probe.delete", format!("probe:{id}"), Outcome::Allow)).await?;
        w.commit().await?;
        self.load_probe(id).await
    }

    /// The probe's definition, for a run asked for by someone.
    pub async fn probe_definition(&self, id: &str) -> Result<DueProbe> {
        ids::check("pr", id)?;
        let p = self.load_probe(id).await?;
        if p.deleted_at.is_some() {
            return Err(BrokerError::Conflict(format!("probe {id} was deleted")));
        }
        Ok(DueProbe {
            id: p.id,
            target: p.target,
            kind: p.kind,
            expect_certificate_name: p.expect_certificate_name,
            groups: p.groups,
            created_by: p.created_by,
        })
    }

    /// Claim the probes due now: each is moved to its next slot with a
    /// compare-and-set, so with several nodes on one database exactly one
    /// runs it.
    pub async fn claim_due_probes(&self, limit: i64) -> Result<Vec<DueProbe>> {
        let now = now_ms();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PROBE_COLUMNS} FROM probes WHERE deleted_at IS NULL AND next_run_at IS NOT NULL \
             AND next_run_at <= $1 ORDER BY next_run_at LIMIT {}",
            limit.clamp(1, 1000)
        )))
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let p = row_to_probe(r)?;
            let (Some(slot), Some(every)) = (p.next_run_at, p.interval_secs) else { continue };
            let every_ms = every.saturating_mul(1000).max(1000);
            // The next slot after now, skipping any missed while nobody ran.
            let mut next = slot.saturating_add(every_ms);
            if next <= now {
                next = now.saturating_add(every_ms);
            }
            let claimed = sqlx::query("UPDATE probes SET next_run_at = $1 WHERE id = $2 AND next_run_at = $3")
                .bind(next)
                .bind(&p.id)
                .bind(slot)
                .execute(self.pool())
                .await?
                .rows_affected();
            if claimed == 1 {
                out.push(DueProbe {
                    id: p.id,
                    target: p.target,
                    kind: p.kind,
                    expect_certificate_name: p.expect_certificate_name,
                    groups: p.groups,
                    created_by: p.created_by,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_actor_labels_round_trip() {
        for k in ["tcp", "tls", "ssh", "https"] {
            assert_eq!(ProbeKind::parse(k).map(|k| k.as_str()).ok(), Some(k));
        }
        assert!(ProbeKind::parse("icmp").is_err());
        let a = actor_from_label("agent:renew-bot");
        assert_eq!((a.kind, a.name.as_str()), ("agent", "renew-bot"));
        assert_eq!(actor_from_label("weird:x").kind, "unknown");
        assert_eq!(actor_from_label("admin:admin"), Actor::admin());
    }
}
