//! The audit log: append-only events, each carrying the SHA-256 of its
//! predecessor, so editing, deleting or reordering any row is detectable.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use crate::error::Result;
use crate::ids;
use crate::now_ms;

/// The hash the first event chains from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// `admin`, `user`, `agent`, `host` (an enrolling target), `system` or `unknown`.
    pub kind: &'static str,
    pub name: String,
}

impl Actor {
    pub fn admin() -> Self {
        Self { kind: "admin", name: "admin".into() }
    }
    pub fn system() -> Self {
        Self { kind: "system", name: "gatehouse".into() }
    }
    pub fn user(name: impl Into<String>) -> Self {
        Self { kind: "user", name: name.into() }
    }
    pub fn agent(name: impl Into<String>) -> Self {
        Self { kind: "agent", name: name.into() }
    }
    pub fn unknown(what: impl Into<String>) -> Self {
        Self { kind: "unknown", name: what.into() }
    }
}

/// An event about to be written.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub actor: Actor,
    pub action: String,
    pub resource: String,
    pub outcome: Outcome,
    pub severity: Severity,
    pub reason: String,
    pub session_id: Option<String>,
    pub client_addr: String,
    pub mcp_session_id: Option<String>,
    pub details: serde_json::Value,
}

impl AuditRecord {
    pub fn new(actor: Actor, action: impl Into<String>, resource: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            actor,
            action: action.into(),
            resource: resource.into(),
            severity: match outcome {
                Outcome::Allow => Severity::Info,
                Outcome::Deny | Outcome::Error => Severity::Warning,
            },
            outcome,
            reason: String::new(),
            session_id: None,
            client_addr: String::new(),
            mcp_session_id: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = r.into();
        self
    }
    pub fn session(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }
    pub fn client(mut self, addr: impl Into<String>) -> Self {
        self.client_addr = addr.into();
        self
    }
    pub fn mcp_session(mut self, id: Option<String>) -> Self {
        self.mcp_session_id = id;
        self
    }
    pub fn severity(mut self, s: Severity) -> Self {
        self.severity = s;
        self
    }
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }
}

/// A stored event.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub actor_kind: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub severity: String,
    pub reason: String,
    pub session_id: Option<String>,
    pub client_addr: String,
    pub mcp_session_id: Option<String>,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The canonical encoding a link's hash covers: a JSON array of every field
/// in a fixed order, then the predecessor's hash.
pub fn link_hash(prev_hash: &str, e: &AuditEvent) -> String {
    let canonical = serde_json::json!([
        e.id,
        e.at,
        e.actor,
        e.actor_kind,
        e.action,
        e.resource,
        e.outcome,
        e.severity,
        e.reason,
        e.session_id,
        e.client_addr,
        e.mcp_session_id,
        e.details.to_string(),
    ]);
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical.to_string().as_bytes());
    hex::encode(h.finalize())
}

pub(crate) async fn append(conn: &mut AnyConnection, rec: AuditRecord) -> Result<String> {
    let prev: Option<String> = sqlx::query_scalar("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let prev = prev.unwrap_or_else(|| GENESIS.to_string());
    let mut ev = AuditEvent {
        seq: 0,
        id: ids::new("ev"),
        at: now_ms(),
        actor: cap(&rec.actor.name, 200),
        actor_kind: rec.actor.kind.to_string(),
        action: cap(&rec.action, 100),
        resource: cap(&rec.resource, 500),
        outcome: rec.outcome.as_str().to_string(),
        severity: rec.severity.as_str().to_string(),
        reason: cap(&rec.reason, 2000),
        session_id: rec.session_id,
        client_addr: cap(&rec.client_addr, 100),
        mcp_session_id: rec.mcp_session_id,
        details: rec.details,
        prev_hash: prev.clone(),
        hash: String::new(),
    };
    ev.hash = link_hash(&prev, &ev);
    sqlx::query(
        "INSERT INTO audit_events (id, at, actor, actor_kind, action, resource, outcome, severity, reason, \
         session_id, client_addr, mcp_session_id, details, prev_hash, hash) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)",
    )
    .bind(&ev.id)
    .bind(ev.at)
    .bind(&ev.actor)
    .bind(&ev.actor_kind)
    .bind(&ev.action)
    .bind(&ev.resource)
    .bind(&ev.outcome)
    .bind(&ev.severity)
    .bind(&ev.reason)
    .bind(&ev.session_id)
    .bind(&ev.client_addr)
    .bind(&ev.mcp_session_id)
    .bind(ev.details.to_string())
    .bind(&ev.prev_hash)
    .bind(&ev.hash)
    .execute(&mut *conn)
    .await?;
    tracing::info!(
        target: "gatehouse::audit",
        actor = %ev.actor, kind = %ev.actor_kind, action = %ev.action,
        resource = %ev.resource, outcome = %ev.outcome, reason = %ev.reason,
        "audit"
    );
    Ok(ev.id)
}

/// Truncate free text on a character boundary.
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Filters for reading the log.
#[derive(Debug, Default, Clone)]
pub struct AuditQuery {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub actor: Option<String>,
    pub actor_kind: Option<String>,
    pub outcome: Option<String>,
    pub severity: Option<String>,
    pub action: Option<String>,
    pub session_id: Option<String>,
    pub limit: Option<i64>,
}

pub(crate) fn row_to_event(r: &sqlx::any::AnyRow) -> Result<AuditEvent> {
    let details: String = r.try_get("details")?;
    Ok(AuditEvent {
        seq: r.try_get("seq")?,
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        actor_kind: r.try_get("actor_kind")?,
        action: r.try_get("action")?,
        resource: r.try_get("resource")?,
        outcome: r.try_get("outcome")?,
        severity: r.try_get("severity")?,
        reason: r.try_get("reason")?,
        session_id: r.try_get("session_id")?,
        client_addr: r.try_get("client_addr")?,
        mcp_session_id: r.try_get("mcp_session_id")?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

pub(crate) const AUDIT_COLUMNS: &str = "seq, id, at, actor, actor_kind, action, resource, outcome, severity, reason, \
     session_id, client_addr, mcp_session_id, details, prev_hash, hash";

/// Read events matching `q`, newest last.
pub async fn query(pool: &sqlx::AnyPool, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE 1=1");
    let mut binds: Vec<Bind> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, b: Bind| {
        binds.push(b);
        sql.push_str(&clause.replace('?', &format!("${}", binds.len())));
    };
    if let Some(v) = q.since_ms {
        push(&mut sql, " AND at >= ?", Bind::I(v));
    }
    if let Some(v) = q.until_ms {
        push(&mut sql, " AND at <= ?", Bind::I(v));
    }
    if let Some(v) = &q.actor {
        push(&mut sql, " AND actor = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &q.actor_kind {
        push(&mut sql, " AND actor_kind = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &q.outcome {
        push(&mut sql, " AND outcome = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &q.severity {
        push(&mut sql, " AND severity = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &q.action {
        push(&mut sql, " AND action = ?", Bind::S(v.clone()));
    }
    if let Some(v) = &q.session_id {
        push(&mut sql, " AND session_id = ?", Bind::S(v.clone()));
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    // Newest `limit` events, returned oldest first.
    let sql = format!("SELECT * FROM ({sql} ORDER BY seq DESC LIMIT {limit}) recent ORDER BY seq ASC");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        query = match b {
            Bind::I(v) => query.bind(v),
            Bind::S(v) => query.bind(v),
        };
    }
    let rows = query.fetch_all(pool).await?;
    rows.iter().map(row_to_event).collect()
}

enum Bind {
    I(i64),
    S(String),
}

/// Result of walking the chain.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub events: u64,
    pub head: String,
    /// The first event whose link does not hold, and why.
    pub broken_at: Option<BrokenLink>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokenLink {
    pub seq: i64,
    pub id: String,
    pub problem: String,
}

/// Walk the whole chain in order and name the first broken link.
pub async fn verify_chain(pool: &sqlx::AnyPool) -> Result<ChainReport> {
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    let mut last_seq = 0i64;
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq ASC LIMIT 5000"
        )))
        .bind(last_seq)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let e = row_to_event(r)?;
            last_seq = e.seq;
            count += 1;
            let problem = if e.prev_hash != prev {
                Some(
                    "its predecessor hash does not match the previous event (a row was deleted, inserted or reordered)",
                )
            } else if link_hash(&prev, &e) != e.hash {
                Some("its content does not match its hash (the row was edited)")
            } else {
                None
            };
            if let Some(p) = problem {
                return Ok(ChainReport {
                    events: count,
                    head: prev,
                    broken_at: Some(BrokenLink { seq: e.seq, id: e.id, problem: p.into() }),
                });
            }
            prev = e.hash;
        }
    }
    Ok(ChainReport { events: count, head: prev, broken_at: None })
}
