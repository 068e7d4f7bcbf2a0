//! Outbound webhooks: events (access requested/approved/denied, sessions,
//! canary trips, agent policy denials) are written to an outbox table in the
//! same transaction as the state change they announce, and a background
//! worker delivers them: JSON with a `text` field Slack and Teams display,
//! signed with HMAC-SHA256 over `t.body` (`X-Gatehouse-Signature:
//! t=UNIX,v1=HEX`), short timeouts, retries with backoff (1 s, 5 s, 30 s,
//! 2 min, 10 min), every attempt recorded. Nothing on the request or session
//! path ever waits for an endpoint; the outbox survives restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use tokio::sync::{Notify, Semaphore};

use crate::audit::{Actor, AuditRecord, Outcome};
use crate::error::{BrokerError, Result};
use crate::keys::MasterKey;
use crate::{Broker, ids, now_ms};

/// What a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    #[serde(rename = "access.requested")]
    AccessRequested,
    #[serde(rename = "access.approved")]
    AccessApproved,
    #[serde(rename = "access.denied")]
    AccessDenied,
    #[serde(rename = "access.expired")]
    AccessExpired,
    #[serde(rename = "session.started")]
    SessionStarted,
    #[serde(rename = "session.ended")]
    SessionEnded,
    #[serde(rename = "canary.tripped")]
    CanaryTripped,
    #[serde(rename = "agent.policy_denied")]
    AgentPolicyDenied,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::AccessRequested,
        EventKind::AccessApproved,
        EventKind::AccessDenied,
        EventKind::AccessExpired,
        EventKind::SessionStarted,
        EventKind::SessionEnded,
        EventKind::CanaryTripped,
        EventKind::AgentPolicyDenied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AccessRequested => "access.requested",
            EventKind::AccessApproved => "access.approved",
            EventKind::AccessDenied => "access.denied",
            EventKind::AccessExpired => "access.expired",
            EventKind::SessionStarted => "session.started",
            EventKind::SessionEnded => "session.ended",
            EventKind::CanaryTripped => "canary.tripped",
            EventKind::AgentPolicyDenied => "agent.policy_denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event to announce.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    /// One line for humans (Slack's and Teams' `text`).
    pub text: String,
    /// Structured fields.
    pub data: serde_json::Value,
}

impl Event {
    pub fn new(kind: EventKind, text: impl Into<String>, data: serde_json::Value) -> Self {
        Self { kind, text: text.into(), data }
    }

    /// For the MCP server: an agent was refused by policy or scope.
    pub fn agent_policy_denied(agent: &str, resource: &str, reason: &str) -> Self {
        Self::new(
            EventKind::AgentPolicyDenied,
            format!("Gatehouse: agent {agent} was denied {resource}: {reason}"),
            serde_json::json!({"agent": agent, "resource": resource, "reason": reason}),
        )
    }
}

/// Free text a requester typed, made harmless in a chat `text`: no Slack
/// `<!channel>`/`<url|label>` markup, no line breaks. (`data` keeps it raw.)
pub fn chat_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => '\u{2039}',
            '>' => '\u{203a}',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// Delays before the 2nd, 3rd, … attempt; after the last, the delivery
/// is given up (status `failed`).
pub const BACKOFF: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];
/// The first attempt plus one per backoff step.
pub const MAX_ATTEMPTS: i64 = BACKOFF.len() as i64 + 1;
/// Per-attempt time limit (connect + request + response).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const CONCURRENT_DELIVERIES: usize = 8;
/// How long a claimed delivery is ours before another worker may retry it.
const LEASE_MS: i64 = 20_000;

/// Webhook state shared by the broker: the worker's wake-up call and the
/// key secrets are sealed under (derived from the master key).
pub(crate) struct WebhookState {
    notify: Notify,
    seal: MasterKey,
}

impl WebhookState {
    pub(crate) fn new(master: &MasterKey) -> Self {
        Self { notify: Notify::new(), seal: master.derive("gatehouse webhook secrets v1") }
    }
}

/// A webhook as listed: whether a secret is set, never its value.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub secret_set: bool,
    pub created_at: i64,
    pub created_by: String,
    pub removed_at: Option<i64>,
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryAttempt {
    pub attempt: i64,
    pub at: i64,
    pub duration_ms: i64,
    pub http_status: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event: String,
    /// `pending`, `delivered`, `failed` (gave up) or `cancelled` (webhook removed).
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    pub last_error: Option<String>,
    pub attempt_log: Vec<DeliveryAttempt>,
}

/// Only http(s) URLs with a host; no credentials in the URL.
pub fn check_url(url: &str) -> Result<reqwest::Url> {
    let bad = |why: &str| BrokerError::Invalid(format!("webhook URL {:?}: {why}", crate::audit::cap(url, 80)));
    if url.len() > 2000 {
        return Err(bad("too long"));
    }
    let u = reqwest::Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(bad("only http and https URLs are allowed"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("credentials in the URL are not allowed; use --secret-file for signing"));
    }
    Ok(u)
}

/// `scheme://host[:port]`, for logs (paths of chat webhooks are secrets).
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "<invalid url>".into(),
    }
}

/// The signature header value for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = Vec::with_capacity(body.len() + 24);
    msg.extend_from_slice(t.to_string().as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    format!("t={t},v1={}", hex::encode(ring::hmac::sign(&key, &msg).as_ref()))
}

/// Queue `ev` for every live webhook subscribed to it, inside the caller's
/// write transaction. Returns how many deliveries were queued. Call
/// [`Broker::kick_webhooks`] after the commit.
pub async fn enqueue(conn: &mut AnyConnection, ev: &Event) -> Result<usize> {
    let hooks = sqlx::query("SELECT id, events FROM webhooks WHERE removed_at IS NULL").fetch_all(&mut *conn).await?;
    let mut targets = Vec::new();
    for h in &hooks {
        let events: String = h.try_get("events")?;
        let events: Vec<String> = serde_json::from_str(&events).unwrap_or_default();
        if events.iter().any(|e| e == "*" || e == ev.kind.as_str()) {
            targets.push(h.try_get::<String, _>("id")?);
        }
    }
    if targets.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let event_id = ids::new("evt");
    let payload = serde_json::json!({
        "text": crate::audit::cap(&ev.text, 3000),
        "event": ev.kind.as_str(),
        "event_id": event_id,
        "at": now,
        "data": ev.data,
    })
    .to_string();
    for hook in &targets {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event, payload, status, attempts, next_attempt_at, created_at) \
             VALUES ($1,$2,$3,$4,$5,'pending',0,$6,$7)",
        )
        .bind(ids::new("whd"))
        .bind(hook)
        .bind(&event_id)
        .bind(ev.kind.as_str())
        .bind(&payload)
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(targets.len())
}

fn row_to_webhook(r: &sqlx::any::AnyRow) -> Result<Webhook> {
    let events: String = r.try_get("events")?;
    let secret: Option<String> = r.try_get("secret_sealed")?;
    Ok(Webhook {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        secret_set: secret.is_some(),
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        removed_at: r.try_get("removed_at")?,
        pending: r.try_get("pending")?,
        delivered: r.try_get("delivered")?,
        failed: r.try_get("failed")?,
    })
}

const WEBHOOK_SELECT: &str = "SELECT h.id, h.url, h.events, h.secret_sealed, h.created_at, h.created_by, h.removed_at, \
     (SELECT COUNT(*) FROM webhook_deliveries d WHERE d.webhook_id = h.id AND d.status = 'pending') AS pending, \
     (SELECT COUNT(*) FROM webhook_deliveries d WHERE d.webhook_id = h.id AND d.status = 'delivered') AS delivered, \
     (SELECT COUNT(*) FROM webhook_deliveries d WHERE d.webhook_id = h.id AND d.status = 'failed') AS failed \
     FROM webhooks h";

impl Broker {
    fn inner_hooks(&self) -> &WebhookState {
        &self.inner.hooks
    }

    /// Register a webhook. `secret`, when given, signs every delivery; it is
    /// stored sealed and never returned.
    pub async fn add_webhook(
        &self,
        actor: &Actor,
        url: &str,
        events: &[String],
        secret: Option<&[u8]>,
    ) -> Result<Webhook> {
        let u = check_url(url)?;
        if events.is_empty() {
            return Err(BrokerError::Invalid(format!(
                "name at least one event ({} or *)",
                EventKind::ALL.map(EventKind::as_str).join(", ")
            )));
        }
        let mut evs: Vec<String> = Vec::new();
        for e in events {
            let e = e.trim();
            if e != "*" && EventKind::parse(e).is_none() {
                return Err(BrokerError::Invalid(format!(
                    "unknown event {:?}; known: {} (or * for all)",
                    crate::audit::cap(e, 40),
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                )));
            }
            if !evs.iter().any(|x| x == e) {
                evs.push(e.to_string());
            }
        }
        let id = ids::new("wh");
        let sealed = match secret {
            Some(s) => {
                let s = trim_secret(s);
                if s.len() < 16 || s.len() > 1024 {
                    return Err(BrokerError::Invalid("the webhook secret must be 16 to 1024 bytes".into()));
                }
                Some(self.inner_hooks().seal.seal(&format!("webhook {id}"), s)?)
            }
            None => None,
        };
        let mut w = self.db().write().await?;
        sqlx::query(
            "INSERT INTO webhooks (id, url, events, secret_sealed, created_at, created_by) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(&id)
        .bind(u.as_str())
        .bind(serde_json::to_string(&evs).unwrap_or_else(|_| "[]".into()))
        .bind(&sealed)
        .bind(now_ms())
        .bind(format!("{}:{}", actor.kind, actor.name))
        .execute(w.conn())
        .await?;
        w.audit(
            AuditRecord::new(actor.clone(), "webhook.create", format!("webhook:{id}"), Outcome::Allow)
                .details(serde_json::json!({"url": redacted(u.as_str()), "events": evs, "signed": sealed.is_some()})),
        )
        .await?;
        w.commit().await?;
        self.webhook(&id).await
    }

    pub async fn webhook(&self, id: &str) -> Result<Webhook> {
        ids::check("wh", id)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{WEBHOOK_SELECT} WHERE h.id = $1")))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("webhook {id}")))?;
        row_to_webhook(&row)
    }

    /// Webhooks, removed ones included (their deliveries stay listable).
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{WEBHOOK_SELECT} ORDER BY h.created_at")))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(row_to_webhook).collect()
    }

    /// Stop delivering to a webhook; queued deliveries are cancelled.
    pub async fn remove_webhook(&self, actor: &Actor, id: &str) -> Result<Webhook> {
        ids::check("wh", id)?;
        let now = now_ms();
        let mut w = self.db().write().await?;
        let n = sqlx::query(
            "UPDATE webhooks SET removed_at = $1, secret_sealed = NULL WHERE id = $2 AND removed_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(w.conn())
        .await?
        .rows_affected();
        if n == 0 {
            drop(w);
            let h = self.webhook(id).await?;
            return Err(BrokerError::Conflict(format!("webhook {} is already removed", h.id)));
        }
        sqlx::query("UPDATE webhook_deliveries SET status = 'cancelled' WHERE webhook_id = $1 AND status = 'pending'")
            .bind(id)
            .execute(w.conn())
            .await?;
        w.audit(AuditRecord::new(actor.clone(), "webhook.remove", format!("webhook:{id}"), Outcome::Allow)).await?;
        w.commit().await?;
        self.webhook(id).await
    }

    /// Deliveries of a webhook, newest first, each with its attempts.
    pub async fn webhook_deliveries(&self, id: &str, limit: i64) -> Result<Vec<Delivery>> {
        self.webhook(id).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, webhook_id, event_id, event, status, attempts, next_attempt_at, created_at, delivered_at, last_error \
             FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY created_at DESC, id LIMIT {}",
            limit.clamp(1, 10_000)
        )))
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let did: String = r.try_get("id")?;
            let status: String = r.try_get("status")?;
            let attempts = sqlx::query(
                "SELECT attempt, at, duration_ms, http_status, error FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind(&did)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|a| {
                Ok(DeliveryAttempt {
                    attempt: a.try_get("attempt")?,
                    at: a.try_get("at")?,
                    duration_ms: a.try_get("duration_ms")?,
                    http_status: a.try_get("http_status")?,
                    error: a.try_get("error")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
            let next: i64 = r.try_get("next_attempt_at")?;
            out.push(Delivery {
                id: did,
                webhook_id: r.try_get("webhook_id")?,
                event_id: r.try_get("event_id")?,
                event: r.try_get("event")?,
                next_attempt_at: (status == "pending").then_some(next),
                status,
                attempts: r.try_get("attempts")?,
                created_at: r.try_get("created_at")?,
                delivered_at: r.try_get("delivered_at")?,
                last_error: r.try_get("last_error")?,
                attempt_log: attempts,
            });
        }
        Ok(out)
    }

    /// Announce an event on its own (for events with no other state change,
    /// e.g. the MCP server's `agent.policy_denied`). Returns at once; the
    /// worker delivers.
    pub async fn emit_event(&self, ev: Event) -> Result<()> {
        let mut w = self.db().write().await?;
        enqueue(w.conn(), &ev).await?;
        w.commit().await?;
        self.kick_webhooks();
        Ok(())
    }

    /// Write an audit event and announce a webhook event in one transaction.
    pub async fn audit_and_emit(&self, rec: AuditRecord, ev: Event) -> Result<String> {
        let mut w = self.db().write().await?;
        let id = w.audit(rec).await?;
        enqueue(w.conn(), &ev).await?;
        w.commit().await?;
        self.kick_webhooks();
        Ok(id)
    }

    /// Wake the delivery worker (after committing queued deliveries).
    pub fn kick_webhooks(&self) {
        self.inner_hooks().notify.notify_one();
    }

    /// The background worker: delivers due webhook deliveries and lapses
    /// pending access requests and elevations whose time is up.
    pub(crate) fn spawn_webhook_worker(&self) {
        let b = self.clone();
        let stop = self.shutdown_token();
        tokio::spawn(async move {
            let http = match reqwest::Client::builder()
                .timeout(ATTEMPT_TIMEOUT)
                .connect_timeout(Duration::from_secs(3))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("Gatehouse-Webhook/", env!("CARGO_PKG_VERSION")))
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are not delivered");
                    return;
                }
            };
            let slots = Arc::new(Semaphore::new(CONCURRENT_DELIVERIES));
            let mut last_sweep = Instant::now() - Duration::from_secs(60);
            loop {
                if last_sweep.elapsed() >= Duration::from_secs(2) {
                    last_sweep = Instant::now();
                    if let Err(e) = b.sweep_expired().await {
                        tracing::warn!(error = %e, "could not lapse expired requests");
                    }
                }
                match b.claim_due(CONCURRENT_DELIVERIES as i64).await {
                    Ok(due) => {
                        for d in due {
                            let Ok(permit) = slots.clone().acquire_owned().await else { break };
                            let b2 = b.clone();
                            let http = http.clone();
                            tokio::spawn(async move {
                                if let Err(e) = b2.attempt(&http, d).await {
                                    tracing::warn!(error = %e, "webhook delivery bookkeeping failed");
                                }
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhook worker could not read the outbox"),
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = b.inner_hooks().notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }

    /// Claim up to `n` due deliveries (a lease, so several nodes sharing a
    /// database never deliver the same one at once).
    async fn claim_due(&self, n: i64) -> Result<Vec<Due>> {
        let now = now_ms();
        // Through the writer lock: on SQLite a concurrent plain write could
        // make another writer's transaction fail to upgrade.
        let mut w = self.db().write().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT d.id, d.webhook_id, d.event, d.payload, d.attempts, h.url, h.secret_sealed, h.removed_at \
             FROM webhook_deliveries d JOIN webhooks h ON h.id = d.webhook_id \
             WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND (d.locked_until IS NULL OR d.locked_until < $1) \
             ORDER BY d.next_attempt_at LIMIT {}",
            n.clamp(1, 100)
        )))
        .bind(now)
        .fetch_all(w.conn())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let id: String = r.try_get("id")?;
            let claimed = sqlx::query(
                "UPDATE webhook_deliveries SET locked_until = $1 WHERE id = $2 AND status = 'pending' \
                 AND (locked_until IS NULL OR locked_until < $3)",
            )
            .bind(now + LEASE_MS)
            .bind(&id)
            .bind(now)
            .execute(w.conn())
            .await?
            .rows_affected();
            if claimed == 1 {
                out.push(Due {
                    id,
                    webhook_id: r.try_get("webhook_id")?,
                    event: r.try_get("event")?,
                    payload: r.try_get("payload")?,
                    attempts: r.try_get("attempts")?,
                    url: r.try_get("url")?,
                    secret_sealed: r.try_get("secret_sealed")?,
                    removed: r.try_get::<Option<i64>, _>("removed_at")?.is_some(),
                });
            }
        }
        w.commit().await?;
        Ok(out)
    }

    /// One delivery attempt, recorded whatever happens.
    async fn attempt(&self, http: &reqwest::Client, d: Due) -> Result<()> {
        if d.removed {
            sqlx::query("UPDATE webhook_deliveries SET status = 'cancelled', locked_until = NULL WHERE id = $1")
                .bind(&d.id)
                .execute(self.pool())
                .await?;
            return Ok(());
        }
        let secret = match &d.secret_sealed {
            Some(s) => Some(self.inner_hooks().seal.open(&format!("webhook {}", d.webhook_id), s)?),
            None => None,
        };
        let started = Instant::now();
        let at = now_ms();
        let t = at / 1000;
        let mut req = http
            .post(&d.url)
            .header("content-type", "application/json")
            .header("x-gatehouse-event", &d.event)
            .header("x-gatehouse-delivery", &d.id)
            .body(d.payload.clone());
        if let Some(s) = &secret {
            req = req.header("x-gatehouse-signature", signature(s, t, d.payload.as_bytes()));
        }
        let (status, error) = match req.send().await {
            Ok(resp) => {
                let code = resp.status();
                // Read (a little of) the body so the connection can be reused.
                let _ = tokio::time::timeout(Duration::from_secs(1), resp.bytes()).await;
                if code.is_success() {
                    (Some(i64::from(code.as_u16())), None)
                } else {
                    (Some(i64::from(code.as_u16())), Some(format!("HTTP {code}")))
                }
            }
            Err(e) => {
                let why = if e.is_timeout() {
                    format!("timed out after {}s", ATTEMPT_TIMEOUT.as_secs())
                } else if e.is_connect() {
                    "could not connect".to_string()
                } else {
                    e.without_url().to_string()
                };
                (None, Some(why))
            }
        };
        let took = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let attempt_no = d.attempts + 1;
        let now = now_ms();
        let mut w = self.db().write().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, at, duration_ms, http_status, error) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(&d.id)
        .bind(attempt_no)
        .bind(at)
        .bind(took)
        .bind(status)
        .bind(&error)
        .execute(w.conn())
        .await?;
        match &error {
            None => {
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = 'delivered', attempts = $1, delivered_at = $2, locked_until = NULL, \
                     last_error = NULL WHERE id = $3",
                )
                .bind(attempt_no)
                .bind(now)
                .bind(&d.id)
                .execute(w.conn())
                .await?;
                w.commit().await?;
                tracing::debug!(webhook = %d.webhook_id, event = %d.event, "webhook delivered");
            }
            Some(err) => {
                let backoff = usize::try_from(d.attempts).ok().and_then(|i| BACKOFF.get(i));
                match backoff {
                    Some(delay) if attempt_no < MAX_ATTEMPTS => {
                        let next = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                        sqlx::query(
                            "UPDATE webhook_deliveries SET attempts = $1, next_attempt_at = $2, locked_until = NULL, \
                             last_error = $3 WHERE id = $4",
                        )
                        .bind(attempt_no)
                        .bind(next)
                        .bind(err)
                        .bind(&d.id)
                        .execute(w.conn())
                        .await?;
                        w.commit().await?;
                        tracing::info!(webhook = %d.webhook_id, endpoint = %redacted(&d.url), error = %err, attempt = attempt_no, "webhook delivery failed; will retry");
                    }
                    _ => {
                        sqlx::query(
                            "UPDATE webhook_deliveries SET status = 'failed', attempts = $1, locked_until = NULL, \
                             last_error = $2 WHERE id = $3",
                        )
                        .bind(attempt_no)
                        .bind(err)
                        .bind(&d.id)
                        .execute(w.conn())
                        .await?;
                        w.audit(
                            AuditRecord::new(
                                Actor::system(),
                                "webhook.failed",
                                format!("webhook:{}", d.webhook_id),
                                Outcome::Error,
                            )
                            .reason(format!("{} not delivered after {attempt_no} attempts: {err}", d.event))
                            .details(serde_json::json!({"delivery": d.id, "event": d.event})),
                        )
                        .await?;
                        w.commit().await?;
                        tracing::warn!(webhook = %d.webhook_id, endpoint = %redacted(&d.url), error = %err, "webhook delivery gave up");
                    }
                }
            }
        }
        Ok(())
    }
}

/// A claimed delivery.
struct Due {
    id: String,
    webhook_id: String,
    event: String,
    payload: String,
    attempts: i64,
    url: String,
    secret_sealed: Option<String>,
    removed: bool,
}

fn trim_secret(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map(|i| i + 1).unwrap_or(start);
    s.get(start..end).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn signature_matches_rfc4231_and_covers_the_timestamp() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            hex::encode(ring::hmac::sign(&key, b"what do ya want for nothing?").as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let a = signature(b"0123456789abcdef", 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_ne!(a, signature(b"0123456789abcdef", 1_700_000_001, b"{}"));
        assert_ne!(a, signature(b"0123456789abcdeX", 1_700_000_000, b"{}"));
    }

    #[test]
    fn urls() {
        for ok in ["https://hooks.slack.com/services/T/B/X", "http://127.0.0.1:8080/hook"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in
            ["ftp://x/y", "file:///etc/passwd", "javascript:alert(1)", "https://user:pw@x/", "not a url", "http://"]
        {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert_eq!(redacted("https://hooks.slack.com/services/T/B/SECRET"), "https://hooks.slack.com");
        assert_eq!(redacted("http://127.0.0.1:9/x"), "http://127.0.0.1:9");
    }

    #[test]
    fn event_names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(trim_secret(b"  abc \n"), b"abc");
        assert_eq!(chat_safe("hi <!channel>\nnow"), "hi \u{2039}!channel\u{203a} now");
    }
}
