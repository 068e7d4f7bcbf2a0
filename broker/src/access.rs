//! Just-in-time access around the pure decision in [`crate::policy`]:
//! policies stored per host group, access requests and their approvals,
//! canary trips, temporary agent elevation, and the SSH gate the bastion
//! asks. Each function gathers the decision's inputs, writes the outcome and
//! its audit rows (and any webhook deliveries) in one transaction, and
//! returns what the caller may show.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::audit::{Actor, AuditRecord, Outcome, Severity, cap};
use crate::error::{BrokerError, Result};
use crate::grants::{NewGrant, SshAccess, insert_grant};
use crate::hosts::Host;
use crate::policy::{
    self, AccessAsk, ApprovalRule, Approver, BoundPolicy, Decision, Evaluation, HostFacts, Identity, Policy, Risk,
    Tally, Vote, fmt_duration,
};
use crate::users::{Role, User};
use crate::webhooks::{Event, EventKind, chat_safe, enqueue};
use crate::{Broker, db::WriteTx, ids, now_ms};

/// How long a request waits for its approvals before it lapses.
pub const PENDING_TTL: Duration = Duration::from_secs(3600);
/// Longest rate-limit period (how far back earlier requests are read).
const RATE_LOOKBACK_MS: i64 = 31 * 86_400_000;

/// An agent as policy sees it (the MCP side builds it from its agent row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    pub id: String,
    pub name: String,
    /// Its groups, including live elevations ([`Broker::agent_elevated_groups`]).
    pub groups: Vec<String>,
    pub risk: Risk,
}

/// Who asks for access.
#[derive(Debug, Clone)]
pub enum Requester {
    User(User),
    Agent(AgentRef),
}

impl Requester {
    pub fn kind(&self) -> &'static str {
        match self {
            Requester::User(_) => "user",
            Requester::Agent(_) => "agent",
        }
    }
    pub fn id(&self) -> &str {
        match self {
            Requester::User(u) => &u.id,
            Requester::Agent(a) => &a.id,
        }
    }
    pub fn name(&self) -> &str {
        match self {
            Requester::User(u) => &u.name,
            Requester::Agent(a) => &a.name,
        }
    }
    pub fn actor(&self) -> Actor {
        match self {
            Requester::User(u) => Actor::user(&u.name),
            Requester::Agent(a) => Actor::agent(&a.name),
        }
    }
    pub fn identity(&self) -> Identity {
        match self {
            Requester::User(u) => Identity::Human { name: u.name.clone(), role: u.role },
            Requester::Agent(a) => Identity::Agent { name: a.name.clone(), groups: a.groups.clone(), risk: a.risk },
        }
    }
}

/// A request about to be filed.
#[derive(Debug, Clone, Default)]
pub struct NewAccessRequest {
    pub host: String,
    pub login: String,
    /// `None`: the default (1 h, capped by policy).
    pub ttl: Option<Duration>,
    pub reason: String,
    /// Agents only: groups to add for the grant's lifetime.
    pub elevate_groups: Vec<String>,
    /// `ip:port` or `ip` of the requester's client (source CIDR rules).
    pub client_addr: String,
    pub mcp_session_id: Option<String>,
}

/// A policy as stored.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInfo {
    pub group: String,
    pub source: String,
    pub updated_at: i64,
    pub updated_by: String,
    /// One line per rule.
    pub summary: Vec<String>,
}

/// One approver's decision on a request.
#[derive(Debug, Clone, Serialize)]
pub struct VoteInfo {
    pub approver: String,
    /// `approve` or `deny`.
    pub decision: String,
    pub reason: String,
    pub at: i64,
}

/// An access request and where it stands.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRequest {
    pub id: String,
    pub requester_kind: String,
    pub requester_name: String,
    pub host_name: String,
    pub login: String,
    pub ttl_seconds: i64,
    pub reason: String,
    /// `pending`, `approved`, `denied`, `expired` or `cancelled`.
    pub status: String,
    pub approvals_required: i64,
    pub approvals_given: i64,
    /// Who must approve, in words ("1 approval from roles [approver, admin]").
    pub needs: String,
    pub rule: Option<ApprovalRule>,
    pub elevate_groups: Vec<String>,
    pub client_addr: String,
    pub filed_by: String,
    pub created_at: i64,
    /// When a pending request lapses.
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub grant_id: Option<String>,
    pub grant_expires_at: Option<i64>,
    pub votes: Vec<VoteInfo>,
}

impl AccessRequest {
    /// One line on where the request stands, for terminals.
    pub fn status_line(&self) -> String {
        match self.status.as_str() {
            "pending" => format!(
                "{} is pending: {} of {} approval(s) ({})",
                self.id, self.approvals_given, self.approvals_required, self.needs
            ),
            "approved" => format!(
                "{} is approved: {}@{} until {}{}",
                self.id,
                self.login,
                self.host_name,
                fmt_time(self.grant_expires_at.unwrap_or(0)),
                self.decided_by.as_deref().map(|b| format!(" (approved by {b})")).unwrap_or_default()
            ),
            "denied" => format!(
                "{} was denied{}: {}",
                self.id,
                self.decided_by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default(),
                self.decision_reason.as_deref().unwrap_or("no reason given")
            ),
            other => format!("{} is {other}", self.id),
        }
    }

    pub fn is_final(&self) -> bool {
        self.status != "pending"
    }
}

/// What the bastion does with a connection to `LOGIN@HOST`.
#[derive(Debug, Clone)]
pub enum SshGate {
    /// A live grant covers it.
    Allowed(Box<SshAccess>),
    /// No grant, but policy lets the user ask (interactive sessions offer it).
    Requestable { denial: String, offer: RequestOffer },
    /// Refused; the text is what the user sees.
    Denied(String),
}

/// A request the bastion may offer in the terminal.
#[derive(Debug, Clone)]
pub struct RequestOffer {
    pub host: String,
    pub login: String,
    pub ttl: Duration,
    /// "no approval" or "1 approval from roles [approver, admin]".
    pub needs: String,
    /// The user's request for this already waiting, if any.
    pub pending: Option<String>,
}

/// Unix ms as RFC 3339 (seconds).
pub fn fmt_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The IP of `ip:port`, `[v6]:port` or a bare IP.
pub fn client_ip(addr: &str) -> Option<IpAddr> {
    addr.parse::<SocketAddr>().map(|s| s.ip()).ok().or_else(|| addr.parse::<IpAddr>().ok())
}

fn ts(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn approver_actor(a: &Approver) -> Actor {
    match a {
        Approver::User { name, .. } => Actor::user(name),
        Approver::Admin => Actor::admin(),
    }
}

/// Policies bound to any of `groups`. A stored policy that no longer parses
/// (e.g. its time zone vanished) is an error: decisions fail closed.
pub(crate) async fn bound_policies(conn: &mut AnyConnection, groups: &[String]) -> Result<Vec<BoundPolicy>> {
    let rows = sqlx::query("SELECT group_name, source FROM policies ORDER BY group_name").fetch_all(&mut *conn).await?;
    let mut out = Vec::new();
    for r in &rows {
        let group: String = r.try_get("group_name")?;
        if !groups.contains(&group) {
            continue;
        }
        let source: String = r.try_get("source")?;
        let policy = Policy::parse(&source)
            .map_err(|e| BrokerError::Internal(format!("the policy of group {group} no longer parses: {e}")))?;
        out.push(BoundPolicy { group, policy });
    }
    Ok(out)
}

async fn recent_requests(conn: &mut AnyConnection, kind: &str, id: &str, now: i64) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT created_at FROM access_requests WHERE requester_kind = $1 AND requester_id = $2 AND created_at > $3",
    )
    .bind(kind)
    .bind(id)
    .bind(now - RATE_LOOKBACK_MS)
    .fetch_all(&mut *conn)
    .await?)
}

/// Write the critical canary audit row and queue `canary.tripped`.
async fn trip_canary_in(
    w: &mut WriteTx,
    actor: &Actor,
    host: &str,
    login: &str,
    via: &str,
    client_addr: &str,
    mcp_session_id: Option<String>,
) -> Result<()> {
    w.audit(
        AuditRecord::new(actor.clone(), "canary.tripped", format!("{login}@{host}"), Outcome::Deny)
            .severity(Severity::Critical)
            .reason(format!("{via} named canary host {host}"))
            .client(client_addr)
            .mcp_session(mcp_session_id.clone())
            .details(serde_json::json!({"via": via, "host": host, "login": login})),
    )
    .await?;
    enqueue(
        w.conn(),
        &Event::new(
            EventKind::CanaryTripped,
            format!(
                "CANARY TRIPPED: {} {} tried {via} on canary host {host} (login {login}) from {}",
                actor.kind,
                actor.name,
                if client_addr.is_empty() { "an unknown address" } else { client_addr }
            ),
            serde_json::json!({
                "actor_kind": actor.kind,
                "actor": actor.name,
                "via": via,
                "host": host,
                "login": login,
                "client_addr": client_addr,
                "mcp_session_id": mcp_session_id,
            }),
        ),
    )
    .await?;
    Ok(())
}

const REQUEST_SELECT: &str = "SELECT r.id, r.requester_kind, r.requester_id, r.requester_name, r.host_id, r.host_name, \
     r.login, r.ttl_ms, r.reason, r.status, r.approvals_required, r.rule, r.elevate_groups, r.client_addr, r.filed_by, \
     r.created_at, r.expires_at, r.decided_at, r.decided_by, r.decision_reason, r.grant_id, g.expires_at AS grant_expires_at \
     FROM access_requests r LEFT JOIN grants g ON g.id = r.grant_id";

/// A request row plus what the decision logic needs that is not shown.
struct RequestRow {
    shown: AccessRequest,
    requester_id: String,
    host_id: String,
}

fn row_to_request(r: &sqlx::any::AnyRow) -> Result<RequestRow> {
    let rule: String = r.try_get("rule")?;
    let rule: Option<ApprovalRule> = serde_json::from_str(&rule).ok();
    let elevate: String = r.try_get("elevate_groups")?;
    let ttl_ms: i64 = r.try_get("ttl_ms")?;
    let status: String = r.try_get("status")?;
    Ok(RequestRow {
        requester_id: r.try_get("requester_id")?,
        host_id: r.try_get("host_id")?,
        shown: AccessRequest {
            id: r.try_get("id")?,
            requester_kind: r.try_get("requester_kind")?,
            requester_name: r.try_get("requester_name")?,
            host_name: r.try_get("host_name")?,
            login: r.try_get("login")?,
            ttl_seconds: ttl_ms / 1000,
            reason: r.try_get("reason")?,
            approvals_required: r.try_get("approvals_required")?,
            approvals_given: 0,
            needs: match &rule {
                Some(rule) if rule.approvals > 0 => rule.describe(),
                _ => "no approval".into(),
            },
            rule,
            elevate_groups: serde_json::from_str(&elevate).unwrap_or_default(),
            client_addr: r.try_get("client_addr")?,
            filed_by: r.try_get("filed_by")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            decided_at: r.try_get("decided_at")?,
            decided_by: r.try_get("decided_by")?,
            decision_reason: r.try_get("decision_reason")?,
            grant_id: r.try_get("grant_id")?,
            grant_expires_at: r.try_get("grant_expires_at")?,
            status,
            votes: Vec::new(),
        },
    })
}

async fn load_votes(conn: &mut AnyConnection, id: &str) -> Result<Vec<(String, VoteInfo)>> {
    let rows = sqlx::query(
        "SELECT approver_key, approver_name, decision, reason, at FROM approvals WHERE request_id = $1 ORDER BY at, approver_key",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("approver_key")?,
                VoteInfo {
                    approver: r.try_get("approver_name")?,
                    decision: r.try_get("decision")?,
                    reason: r.try_get("reason")?,
                    at: r.try_get("at")?,
                },
            ))
        })
        .collect()
}

async fn load_request(conn: &mut AnyConnection, id: &str) -> Result<RequestRow> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{REQUEST_SELECT} WHERE r.id = $1")))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| BrokerError::NotFound(format!("request {id}")))?;
    let mut req = row_to_request(&row)?;
    let votes = load_votes(conn, id).await?;
    req.shown.approvals_given =
        i64::try_from(votes.iter().filter(|(_, v)| v.decision == "approve").count()).unwrap_or(0);
    req.shown.votes = votes.into_iter().map(|(_, v)| v).collect();
    Ok(req)
}

impl Broker {
    // -------------------------------------------------------------------
    // Policies

    /// Bind a policy (TOML) to a group, replacing any there was.
    pub async fn set_policy(&self, actor: &Actor, group: &str, source: &str) -> Result<PolicyInfo> {
        ids::check_name("group", group)?;
        if source.len() > 64 * 1024 {
            return Err(BrokerError::Invalid("the policy is larger than 64 KiB".into()));
        }
        let policy = Policy::parse(source).map_err(|e| BrokerError::Invalid(format!("policy for {group}: {e}")))?;
        let by = format!("{}:{}", actor.kind, actor.name);
        let mut w = self.db().write().await?;
        sqlx::query(
            "INSERT INTO policies (group_name, source, updated_at, updated_by) VALUES ($1,$2,$3,$4) \
             ON CONFLICT (group_name) DO UPDATE SET source = excluded.source, updated_at = excluded.updated_at, \
             updated_by = excluded.updated_by",
        )
        .bind(group)
        .bind(source)
        .bind(now_ms())
        .bind(&by)
        .execute(w.conn())
        .await?;
        w.audit(
            AuditRecord::new(actor.clone(), "policy.set", format!("group:{group}"), Outcome::Allow)
                .details(serde_json::json!({"summary": policy.describe(), "source": source})),
        )
        .await?;
        w.commit().await?;
        self.policy(group).await
    }

    /// Unbind a group's policy (its hosts fall back to the strictest of their
    /// other groups' policies, or the default).
    pub async fn remove_policy(&self, actor: &Actor, group: &str) -> Result<()> {
        ids::check_name("group", group)?;
        let mut w = self.db().write().await?;
        let n = sqlx::query("DELETE FROM policies WHERE group_name = $1")
            .bind(group)
            .execute(w.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(BrokerError::NotFound(format!("policy for group {group}")));
        }
        w.audit(AuditRecord::new(actor.clone(), "policy.remove", format!("group:{group}"), Outcome::Allow)).await?;
        w.commit().await?;
        Ok(())
    }

    pub async fn policy(&self, group: &str) -> Result<PolicyInfo> {
        ids::check_name("group", group)?;
        let row = sqlx::query("SELECT group_name, source, updated_at, updated_by FROM policies WHERE group_name = $1")
            .bind(group)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("policy for group {group}")))?;
        row_to_policy(&row)
    }

    pub async fn list_policies(&self) -> Result<Vec<PolicyInfo>> {
        let rows = sqlx::query("SELECT group_name, source, updated_at, updated_by FROM policies ORDER BY group_name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(row_to_policy).collect()
    }

    /// What policy would decide, without acting or auditing (`policy test`,
    /// and the MCP side's dry runs). `at` defaults to now.
    pub async fn evaluate_access(
        &self,
        requester: &Requester,
        req: &NewAccessRequest,
        at: Option<i64>,
    ) -> Result<Evaluation> {
        let now = at.unwrap_or_else(now_ms);
        let Some(host) = self.host_by_name(&req.host).await? else {
            return Ok(Evaluation {
                decision: Decision::Deny { reason: policy::no_such_host(&req.host), canary: false },
                trace: vec![format!("there is no host {}", req.host)],
            });
        };
        let mut conn = self.pool().acquire().await?;
        let policies = bound_policies(&mut conn, &host.groups).await?;
        let recent = recent_requests(&mut conn, requester.kind(), requester.id(), now).await?;
        drop(conn);
        Ok(policy::evaluate(
            &requester.identity(),
            &ask_for(&host, req),
            &policies,
            ts(now),
            client_ip(&req.client_addr),
            &recent,
        ))
    }

    // -------------------------------------------------------------------
    // Canaries

    /// If `host_name` is a canary, trip it: a critical audit event and a
    /// `canary.tripped` webhook. Returns true when it was one; the caller
    /// then answers with its ordinary denial. `via` names what touched it
    /// (`ssh.connect`, `access.request`, `mcp.request_ssh_session`, …).
    pub async fn check_canary(
        &self,
        actor: &Actor,
        host_name: &str,
        login: &str,
        via: &str,
        client_addr: &str,
        mcp_session_id: Option<String>,
    ) -> Result<bool> {
        let Some(host) = self.host_by_name(host_name).await? else { return Ok(false) };
        if !self.is_canary(&host).await? {
            return Ok(false);
        }
        let mut w = self.db().write().await?;
        trip_canary_in(&mut w, actor, &host.name, login, via, client_addr, mcp_session_id).await?;
        w.commit().await?;
        self.kick_webhooks();
        Ok(true)
    }

    /// Is any of the host's groups' policies a canary policy?
    pub async fn is_canary(&self, host: &Host) -> Result<bool> {
        if host.groups.is_empty() {
            return Ok(false);
        }
        let mut conn = self.pool().acquire().await?;
        Ok(bound_policies(&mut conn, &host.groups).await?.iter().any(|p| p.policy.canary))
    }

    // -------------------------------------------------------------------
    // Requests

    /// File an access request. Policy decides: a denial is audited and
    /// returned as [`BrokerError::Denied`] (a canary is tripped and reads
    /// like any other denial); an allow makes the grant at once (status
    /// `approved`); otherwise the request waits for approvals (`pending`).
    pub async fn request_access(
        &self,
        requester: &Requester,
        filed_by: &Actor,
        req: NewAccessRequest,
    ) -> Result<AccessRequest> {
        let resource = format!("{}@{}", req.login, req.host);
        let reason = cap(req.reason.trim(), 1000);
        let host = self.host_by_name(&req.host).await?;
        let now = now_ms();
        let mut w = self.db().write().await?;
        let deny_rec = |why: &str| {
            AuditRecord::new(requester.actor(), "access.request", resource.clone(), Outcome::Deny)
                .reason(why.to_string())
                .client(&req.client_addr)
                .mcp_session(req.mcp_session_id.clone())
        };
        let Some(host) = host else {
            w.audit(deny_rec("unknown host")).await?;
            w.commit().await?;
            return Err(BrokerError::Denied(format!("access denied: {}", policy::no_such_host(&req.host))));
        };
        let dup: Option<String> = sqlx::query_scalar(
            "SELECT id FROM access_requests WHERE requester_kind = $1 AND requester_id = $2 AND host_id = $3 \
             AND login = $4 AND status = 'pending' AND expires_at > $5",
        )
        .bind(requester.kind())
        .bind(requester.id())
        .bind(&host.id)
        .bind(&req.login)
        .bind(now)
        .fetch_optional(w.conn())
        .await?;
        if let Some(id) = dup {
            return Err(BrokerError::Conflict(format!("request {id} for {resource} is already pending")));
        }
        let policies = bound_policies(w.conn(), &host.groups).await?;
        let recent = recent_requests(w.conn(), requester.kind(), requester.id(), now).await?;
        let ask = ask_for(&host, &req);
        let eval =
            policy::evaluate(&requester.identity(), &ask, &policies, ts(now), client_ip(&req.client_addr), &recent);
        let who = format!("{} {}", requester.kind(), requester.name());
        let (id, status) = match eval.decision {
            Decision::Deny { reason: why, canary: true } => {
                trip_canary_in(
                    &mut w,
                    &requester.actor(),
                    &host.name,
                    &req.login,
                    "access.request",
                    &req.client_addr,
                    req.mcp_session_id.clone(),
                )
                .await?;
                w.commit().await?;
                self.kick_webhooks();
                return Err(BrokerError::Denied(format!("access denied: {why}")));
            }
            Decision::Deny { reason: why, .. } => {
                w.audit(deny_rec(&why).details(serde_json::json!({
                    "ttl_seconds": req.ttl.map(|t| t.as_secs()),
                    "reason": reason,
                    "filed_by": format!("{}:{}", filed_by.kind, filed_by.name),
                    "trace": eval.trace,
                })))
                .await?;
                enqueue(
                    w.conn(),
                    &Event::new(
                        EventKind::AccessDenied,
                        format!("Gatehouse: {who} was refused {resource} by policy: {why}"),
                        serde_json::json!({
                            "request_id": null,
                            "requester_kind": requester.kind(),
                            "requester": requester.name(),
                            "host": host.name,
                            "login": req.login,
                            "decided_by": "policy",
                            "reason": why,
                        }),
                    ),
                )
                .await?;
                w.commit().await?;
                self.kick_webhooks();
                return Err(BrokerError::Denied(format!("access denied: {why}")));
            }
            Decision::Allow { ttl, policies } => {
                let rule = ApprovalRule { approvals: 0, approver_sets: Vec::new(), reason_required: false, policies };
                let id = insert_request(&mut w, requester, filed_by, &host, &req, &reason, ttl, &rule, "approved", now)
                    .await?;
                let grant = insert_grant(
                    &mut w,
                    &Actor { kind: "system", name: "policy".into() },
                    &NewGrant {
                        subject_kind: requester.kind(),
                        subject_id: requester.id().to_string(),
                        subject_name: requester.name().to_string(),
                        host: host.clone(),
                        login: req.login.clone(),
                        ttl,
                        reason: reason.clone(),
                    },
                    serde_json::json!({"request": id, "approved_by": "policy"}),
                )
                .await?;
                sqlx::query(
                    "UPDATE access_requests SET grant_id = $1, decided_at = $2, decided_by = 'policy', \
                     decision_reason = 'allowed by policy without approval' WHERE id = $3",
                )
                .bind(&grant)
                .bind(now)
                .bind(&id)
                .execute(w.conn())
                .await?;
                enqueue(
                    w.conn(),
                    &Event::new(
                        EventKind::AccessApproved,
                        format!(
                            "Gatehouse: {who} was granted {resource} for {} by policy: \u{201c}{}\u{201d} ({id})",
                            fmt_duration(ttl),
                            chat_safe(&reason)
                        ),
                        serde_json::json!({
                            "request_id": id,
                            "requester_kind": requester.kind(),
                            "requester": requester.name(),
                            "host": host.name,
                            "login": req.login,
                            "ttl_seconds": ttl.as_secs(),
                            "reason": reason,
                            "decided_by": "policy",
                            "grant_id": grant,
                        }),
                    ),
                )
                .await?;
                (id, "approved")
            }
            Decision::NeedsApproval { ttl, rule } => {
                let id = insert_request(&mut w, requester, filed_by, &host, &req, &reason, ttl, &rule, "pending", now)
                    .await?;
                let bastion = self.config().bastion_names.first().cloned().unwrap_or_else(|| "bastion".into());
                enqueue(
                    w.conn(),
                    &Event::new(
                        EventKind::AccessRequested,
                        format!(
                            "Gatehouse: {who} requests {resource} for {}: \u{201c}{}\u{201d} ({id}, needs {}). \
                             Approve with `ssh gatehouse@{bastion} approve {id}` or `gatehouse access approve {id}`.",
                            fmt_duration(ttl),
                            chat_safe(&reason),
                            rule.describe()
                        ),
                        serde_json::json!({
                            "request_id": id,
                            "requester_kind": requester.kind(),
                            "requester": requester.name(),
                            "host": host.name,
                            "login": req.login,
                            "ttl_seconds": ttl.as_secs(),
                            "reason": reason,
                            "approvals_required": rule.approvals,
                            "needs": rule.describe(),
                            "expires_at": now + ms(PENDING_TTL),
                        }),
                    ),
                )
                .await?;
                (id, "pending")
            }
        };
        w.audit(
            AuditRecord::new(requester.actor(), "access.request", resource, Outcome::Allow)
                .reason(reason.clone())
                .client(&req.client_addr)
                .mcp_session(req.mcp_session_id.clone())
                .details(serde_json::json!({
                    "request": id,
                    "status": status,
                    "filed_by": format!("{}:{}", filed_by.kind, filed_by.name),
                    "trace": eval.trace,
                })),
        )
        .await?;
        w.commit().await?;
        self.kick_webhooks();
        self.access_request(&id).await
    }

    pub async fn access_request(&self, id: &str) -> Result<AccessRequest> {
        ids::check("a", id)?;
        let mut conn = self.pool().acquire().await?;
        Ok(load_request(&mut conn, id).await?.shown)
    }

    /// Requests, newest first. `status` filters (`pending`, …); `requester`
    /// is `(kind, id)`.
    pub async fn list_access_requests(
        &self,
        status: Option<&str>,
        requester: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<AccessRequest>> {
        if let Some(s) = status
            && !matches!(s, "pending" | "approved" | "denied" | "expired" | "cancelled")
        {
            return Err(BrokerError::Invalid("status must be pending, approved, denied, expired or cancelled".into()));
        }
        let mut sql = format!("{REQUEST_SELECT} WHERE 1=1");
        let mut binds: Vec<String> = Vec::new();
        if let Some(s) = status {
            binds.push(s.to_string());
            sql.push_str(&format!(" AND r.status = ${}", binds.len()));
        }
        if let Some((kind, id)) = requester {
            binds.push(kind.to_string());
            sql.push_str(&format!(" AND r.requester_kind = ${}", binds.len()));
            binds.push(id.to_string());
            sql.push_str(&format!(" AND r.requester_id = ${}", binds.len()));
        }
        sql.push_str(&format!(" ORDER BY r.created_at DESC, r.id LIMIT {}", limit.clamp(1, 10_000)));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(self.pool()).await?;
        let mut conn = self.pool().acquire().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut req = row_to_request(r)?.shown;
            let votes = load_votes(&mut conn, &req.id).await?;
            req.approvals_given =
                i64::try_from(votes.iter().filter(|(_, v)| v.decision == "approve").count()).unwrap_or(0);
            req.votes = votes.into_iter().map(|(_, v)| v).collect();
            out.push(req);
        }
        Ok(out)
    }

    /// Pending requests `approver` may decide and has not decided yet.
    pub async fn approvals_for(&self, approver: &Approver) -> Result<Vec<AccessRequest>> {
        let now = now_ms();
        let key = approver.key();
        let pending = self.list_access_requests(Some("pending"), None, 1000).await?;
        let mut out = Vec::new();
        let mut conn = self.pool().acquire().await?;
        for r in pending {
            if r.expires_at <= now {
                continue;
            }
            let Some(rule) = &r.rule else { continue };
            if policy::may_decide(rule, &r.requester_kind, &r.requester_name, approver).is_err() {
                continue;
            }
            let votes = load_votes(&mut conn, &r.id).await?;
            if votes.iter().any(|(k, _)| *k == key) {
                continue;
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Approve or deny a pending request. Nobody decides their own request;
    /// a denial needs a reason; one denial ends the request; enough
    /// approvals make the grant (policy is checked once more first, so a
    /// window that closed meanwhile still refuses).
    pub async fn decide_request(
        &self,
        approver: &Approver,
        id: &str,
        approve: bool,
        reason: &str,
        client_addr: &str,
    ) -> Result<AccessRequest> {
        ids::check("a", id)?;
        let reason = cap(reason.trim(), 1000);
        if !approve && reason.is_empty() {
            return Err(BrokerError::Invalid("give a reason when you deny a request (--reason \"…\")".into()));
        }
        let actor = approver_actor(approver);
        let action = if approve { "access.approve" } else { "access.deny" };
        let resource = format!("request:{id}");
        let now = now_ms();
        let mut w = self.db().write().await?;
        let row = load_request(w.conn(), id).await?;
        let req = &row.shown;
        if req.status != "pending" {
            return Err(BrokerError::Conflict(format!("request {id} is already {}", req.status)));
        }
        if req.expires_at <= now {
            expire_in(&mut w, &row).await?;
            w.commit().await?;
            self.kick_webhooks();
            return Err(BrokerError::Conflict(format!("request {id} has expired")));
        }
        let rule = req.rule.clone().ok_or_else(|| BrokerError::Internal(format!("request {id} has no rule")))?;
        if let Err(why) = policy::may_decide(&rule, &req.requester_kind, &req.requester_name, approver) {
            w.audit(
                AuditRecord::new(actor.clone(), action, resource, Outcome::Deny)
                    .reason(why.clone())
                    .client(client_addr)
                    .details(serde_json::json!({
                        "requester": format!("{}:{}", req.requester_kind, req.requester_name),
                        "target": format!("{}@{}", req.login, req.host_name),
                    })),
            )
            .await?;
            w.commit().await?;
            return Err(BrokerError::Denied(why));
        }
        let key = approver.key();
        let mut votes = load_votes(w.conn(), id).await?;
        if votes.iter().any(|(k, _)| *k == key) {
            return Err(BrokerError::Conflict(format!("you have already decided on request {id}")));
        }
        sqlx::query(
            "INSERT INTO approvals (request_id, approver_key, approver_name, decision, reason, at) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(id)
        .bind(&key)
        .bind(&actor.name)
        .bind(if approve { "approve" } else { "deny" })
        .bind(&reason)
        .bind(now)
        .execute(w.conn())
        .await?;
        votes.push((
            key.clone(),
            VoteInfo {
                approver: actor.name.clone(),
                decision: if approve { "approve" } else { "deny" }.into(),
                reason: reason.clone(),
                at: now,
            },
        ));
        let tally_votes: Vec<Vote> =
            votes.iter().map(|(k, v)| Vote { approver_key: k.clone(), approve: v.decision == "approve" }).collect();
        let approvers: Vec<String> =
            votes.iter().filter(|(_, v)| v.decision == "approve").map(|(_, v)| v.approver.clone()).collect();
        let target = format!("{}@{}", req.login, req.host_name);
        let who = format!("{} {}", req.requester_kind, req.requester_name);
        let mut outcome_status = "pending".to_string();
        let mut grant_id: Option<String> = None;
        let mut final_reason: Option<String> = None;
        match policy::tally(&rule, &tally_votes) {
            Tally::Pending { .. } => {}
            Tally::Denied => {
                outcome_status = "denied".into();
                final_reason = Some(reason.clone());
            }
            Tally::Approved => {
                // Check policy again at the moment the grant would start.
                let recheck = self.recheck(&mut w, &row).await?;
                match recheck {
                    Err((why, canary)) => {
                        if canary {
                            let requester_actor = match req.requester_kind.as_str() {
                                "agent" => Actor::agent(&req.requester_name),
                                _ => Actor::user(&req.requester_name),
                            };
                            trip_canary_in(
                                &mut w,
                                &requester_actor,
                                &req.host_name,
                                &req.login,
                                "access.approve",
                                &req.client_addr,
                                None,
                            )
                            .await?;
                        }
                        outcome_status = "denied".into();
                        final_reason = Some(format!("policy no longer allows it: {why}"));
                    }
                    Ok((host, ttl)) => {
                        let g = insert_grant(
                            &mut w,
                            &actor,
                            &NewGrant {
                                subject_kind: if req.requester_kind == "agent" { "agent" } else { "user" },
                                subject_id: row.requester_id.clone(),
                                subject_name: req.requester_name.clone(),
                                host,
                                login: req.login.clone(),
                                ttl,
                                reason: req.reason.clone(),
                            },
                            serde_json::json!({"request": id, "approved_by": approvers}),
                        )
                        .await?;
                        if !req.elevate_groups.is_empty() && req.requester_kind == "agent" {
                            let until = now + ms(ttl);
                            sqlx::query(
                                "INSERT INTO elevations (id, agent_id, agent_name, groups_json, request_id, created_at, expires_at) \
                                 VALUES ($1,$2,$3,$4,$5,$6,$7)",
                            )
                            .bind(ids::new("el"))
                            .bind(&row.requester_id)
                            .bind(&req.requester_name)
                            .bind(serde_json::to_string(&req.elevate_groups).unwrap_or_else(|_| "[]".into()))
                            .bind(id)
                            .bind(now)
                            .bind(until)
                            .execute(w.conn())
                            .await?;
                            w.audit(
                                AuditRecord::new(
                                    actor.clone(),
                                    "agent.elevation.start",
                                    format!("agent:{}", req.requester_name),
                                    Outcome::Allow,
                                )
                                .reason(req.reason.clone())
                                .details(
                                    serde_json::json!({"groups": req.elevate_groups, "until": until, "request": id}),
                                ),
                            )
                            .await?;
                        }
                        outcome_status = "approved".into();
                        final_reason = Some(if reason.is_empty() { "approved".into() } else { reason.clone() });
                        grant_id = Some(g);
                    }
                }
            }
        }
        if outcome_status != "pending" {
            let decided_by = if outcome_status == "approved" { approvers.join(", ") } else { actor.name.clone() };
            sqlx::query(
                "UPDATE access_requests SET status = $1, decided_at = $2, decided_by = $3, decision_reason = $4, grant_id = $5 \
                 WHERE id = $6",
            )
            .bind(&outcome_status)
            .bind(now)
            .bind(&decided_by)
            .bind(&final_reason)
            .bind(&grant_id)
            .bind(id)
            .execute(w.conn())
            .await?;
            let (kind, text) = if outcome_status == "approved" {
                (
                    EventKind::AccessApproved,
                    format!(
                        "Gatehouse: {who}'s request {id} for {target} was approved by {decided_by} (grant {})",
                        grant_id.clone().unwrap_or_default()
                    ),
                )
            } else {
                (
                    EventKind::AccessDenied,
                    format!(
                        "Gatehouse: {who}'s request {id} for {target} was denied by {decided_by}: {}",
                        chat_safe(&final_reason.clone().unwrap_or_default())
                    ),
                )
            };
            enqueue(
                w.conn(),
                &Event::new(
                    kind,
                    text,
                    serde_json::json!({
                        "request_id": id,
                        "requester_kind": req.requester_kind,
                        "requester": req.requester_name,
                        "host": req.host_name,
                        "login": req.login,
                        "decided_by": decided_by,
                        "reason": final_reason,
                        "grant_id": grant_id,
                    }),
                ),
            )
            .await?;
        }
        let have = tally_votes.iter().filter(|v| v.approve).count();
        w.audit(
            AuditRecord::new(actor, action, resource, if approve { Outcome::Allow } else { Outcome::Deny })
                .reason(reason)
                .client(client_addr)
                .details(serde_json::json!({
                    "requester": format!("{}:{}", req.requester_kind, req.requester_name),
                    "target": target,
                    "status": outcome_status,
                    "approvals": format!("{have} of {}", rule.approvals),
                    "grant": grant_id,
                    "decision_reason": final_reason,
                })),
        )
        .await?;
        w.commit().await?;
        self.kick_webhooks();
        self.access_request(id).await
    }

    /// Policy once more, for a request about to become a grant: the host's
    /// current policies, at this moment, from the address it was filed from
    /// (rate limits were spent when it was filed). Ok((host, ttl)) or
    /// Err((reason, canary)).
    async fn recheck(
        &self,
        w: &mut WriteTx,
        row: &RequestRow,
    ) -> Result<std::result::Result<(Host, Duration), (String, bool)>> {
        let req = &row.shown;
        let Some(host) = self.host_by_id_in(w.conn(), &row.host_id).await? else {
            return Ok(Err((format!("host {} no longer exists", req.host_name), false)));
        };
        let identity = match req.requester_kind.as_str() {
            "agent" => match agent_ref_in(w.conn(), "id", &row.requester_id).await? {
                Some(a) => Identity::Agent { name: a.name, groups: a.groups, risk: a.risk },
                None => return Ok(Err((format!("agent {} is no longer active", req.requester_name), false))),
            },
            _ => {
                let r = sqlx::query("SELECT name, role FROM users WHERE id = $1")
                    .bind(&row.requester_id)
                    .fetch_optional(w.conn())
                    .await?;
                match r {
                    Some(r) => {
                        let role: String = r.try_get("role")?;
                        Identity::Human { name: r.try_get("name")?, role: Role::parse(&role).unwrap_or(Role::User) }
                    }
                    None => return Ok(Err((format!("user {} no longer exists", req.requester_name), false))),
                }
            }
        };
        let policies = bound_policies(w.conn(), &host.groups).await?;
        let ask = AccessAsk {
            host: HostFacts { name: host.name.clone(), groups: host.groups.clone() },
            login: req.login.clone(),
            ttl: Some(Duration::from_secs(u64::try_from(req.ttl_seconds).unwrap_or(0))),
            reason: req.reason.clone(),
            elevate_groups: req.elevate_groups.clone(),
        };
        let eval = policy::evaluate(&identity, &ask, &policies, ts(now_ms()), client_ip(&req.client_addr), &[]);
        Ok(match eval.decision {
            Decision::Deny { reason, canary } => Err((reason, canary)),
            Decision::Allow { ttl, .. } | Decision::NeedsApproval { ttl, .. } => Ok((host, ttl)),
        })
    }

    async fn host_by_id_in(&self, conn: &mut AnyConnection, host_id: &str) -> Result<Option<Host>> {
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM hosts WHERE id = $1").bind(host_id).fetch_optional(&mut *conn).await?;
        match name {
            Some(n) => self.host_by_name(&n).await,
            None => Ok(None),
        }
    }

    /// Withdraw a pending request. Its requester may; an admin may.
    /// `requester` is `Some((kind, id))` when the requester is acting.
    pub async fn cancel_request(
        &self,
        actor: &Actor,
        requester: Option<(&str, &str)>,
        id: &str,
    ) -> Result<AccessRequest> {
        ids::check("a", id)?;
        let mut w = self.db().write().await?;
        let row = load_request(w.conn(), id).await?;
        if let Some((kind, rid)) = requester
            && (row.shown.requester_kind != kind || row.requester_id != rid)
        {
            return Err(BrokerError::NotFound(format!("request {id}")));
        }
        if row.shown.status != "pending" {
            return Err(BrokerError::Conflict(format!("request {id} is already {}", row.shown.status)));
        }
        sqlx::query(
            "UPDATE access_requests SET status = 'cancelled', decided_at = $1, decided_by = $2, decision_reason = 'cancelled' \
             WHERE id = $3",
        )
        .bind(now_ms())
        .bind(&actor.name)
        .bind(id)
        .execute(w.conn())
        .await?;
        w.audit(
            AuditRecord::new(actor.clone(), "access.cancel", format!("request:{id}"), Outcome::Allow)
                .details(serde_json::json!({"target": format!("{}@{}", row.shown.login, row.shown.host_name)})),
        )
        .await?;
        w.commit().await?;
        self.access_request(id).await
    }

    /// Lapse pending requests and elevations whose time is up (run by the
    /// background worker every few seconds).
    pub(crate) async fn sweep_expired(&self) -> Result<()> {
        let now = now_ms();
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM access_requests WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT 100",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        for id in due {
            let mut w = self.db().write().await?;
            let row = load_request(w.conn(), &id).await?;
            if row.shown.status == "pending" {
                expire_in(&mut w, &row).await?;
            }
            w.commit().await?;
            self.kick_webhooks();
        }
        let ended = sqlx::query(
            "SELECT id, agent_name, groups_json, request_id FROM elevations WHERE ended_at IS NULL AND expires_at <= $1 LIMIT 100",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        for e in &ended {
            let id: String = e.try_get("id")?;
            let agent: String = e.try_get("agent_name")?;
            let groups: String = e.try_get("groups_json")?;
            let request: String = e.try_get("request_id")?;
            let mut w = self.db().write().await?;
            let n = sqlx::query("UPDATE elevations SET ended_at = $1 WHERE id = $2 AND ended_at IS NULL")
                .bind(now)
                .bind(&id)
                .execute(w.conn())
                .await?
                .rows_affected();
            if n == 1 {
                w.audit(
                    AuditRecord::new(Actor::system(), "agent.elevation.end", format!("agent:{agent}"), Outcome::Allow)
                        .reason("elevation expired")
                        .details(serde_json::json!({
                            "groups": serde_json::from_str::<serde_json::Value>(&groups).unwrap_or_default(),
                            "request": request,
                        })),
                )
                .await?;
            }
            w.commit().await?;
        }
        Ok(())
    }

    // -------------------------------------------------------------------
    // Agents (for the MCP side)

    /// Groups an agent holds through live elevations (approved requests with
    /// `elevate_groups`), to add to its own groups while they last.
    pub async fn agent_elevated_groups(&self, agent_id: &str) -> Result<Vec<String>> {
        let mut conn = self.pool().acquire().await?;
        elevated_groups_in(&mut conn, agent_id).await
    }

    /// An active agent by name, with its elevated groups folded in.
    pub async fn agent_ref(&self, name: &str) -> Result<Option<AgentRef>> {
        let mut conn = self.pool().acquire().await?;
        agent_ref_in(&mut conn, "name", name).await
    }

    // -------------------------------------------------------------------
    // The bastion's gate

    /// Decide a connection to `login@host_name`: a canary is tripped and
    /// refused with the ordinary words; a live grant admits; otherwise, if
    /// policy would let the user ask, the connection is requestable.
    /// Writes the audit events (via [`Broker::authorize_ssh`]).
    pub async fn gate_ssh(&self, user: &User, login: &str, host_name: &str, client_addr: &str) -> Result<SshGate> {
        let no_grant = format!("access denied: you have no grant for host {host_name}");
        if self.check_canary(&Actor::user(&user.name), host_name, login, "ssh.connect", client_addr, None).await? {
            return Ok(SshGate::Denied(no_grant));
        }
        let denial = match self.authorize_ssh(user, login, host_name, client_addr).await {
            Ok(access) => return Ok(SshGate::Allowed(Box::new(access))),
            Err(BrokerError::Denied(msg)) => msg,
            Err(e) => return Err(e),
        };
        let requester = Requester::User(user.clone());
        let probe = NewAccessRequest {
            host: host_name.to_string(),
            login: login.to_string(),
            ttl: None,
            // The reason is asked for in the terminal; any text satisfies a
            // reason rule here.
            reason: "(asked in the terminal)".into(),
            client_addr: client_addr.to_string(),
            ..Default::default()
        };
        let eval = self.evaluate_access(&requester, &probe, None).await?;
        let (ttl, needs) = match eval.decision {
            Decision::Deny { .. } => return Ok(SshGate::Denied(denial)),
            Decision::Allow { ttl, .. } => (ttl, "no approval".to_string()),
            Decision::NeedsApproval { ttl, rule } => (ttl, rule.describe()),
        };
        let pending = self
            .list_access_requests(Some("pending"), Some(("user", &user.id)), 100)
            .await?
            .into_iter()
            .find(|r| r.host_name == host_name && r.login == login && r.expires_at > now_ms())
            .map(|r| r.id);
        Ok(SshGate::Requestable {
            denial,
            offer: RequestOffer { host: host_name.to_string(), login: login.to_string(), ttl, needs, pending },
        })
    }
}

fn row_to_policy(r: &sqlx::any::AnyRow) -> Result<PolicyInfo> {
    let source: String = r.try_get("source")?;
    let summary = match Policy::parse(&source) {
        Ok(p) => p.describe(),
        Err(e) => vec![format!("INVALID (decisions for this group fail closed): {e}")],
    };
    Ok(PolicyInfo {
        group: r.try_get("group_name")?,
        source,
        updated_at: r.try_get("updated_at")?,
        updated_by: r.try_get("updated_by")?,
        summary,
    })
}

fn ask_for(host: &Host, req: &NewAccessRequest) -> AccessAsk {
    AccessAsk {
        host: HostFacts { name: host.name.clone(), groups: host.groups.clone() },
        login: req.login.clone(),
        ttl: req.ttl,
        reason: req.reason.clone(),
        elevate_groups: req.elevate_groups.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_request(
    w: &mut WriteTx,
    requester: &Requester,
    filed_by: &Actor,
    host: &Host,
    req: &NewAccessRequest,
    reason: &str,
    ttl: Duration,
    rule: &ApprovalRule,
    status: &str,
    now: i64,
) -> Result<String> {
    let id = ids::new("a");
    sqlx::query(
        "INSERT INTO access_requests (id, requester_kind, requester_id, requester_name, host_id, host_name, login, ttl_ms, \
         reason, status, approvals_required, rule, elevate_groups, client_addr, filed_by, created_at, expires_at) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)",
    )
    .bind(&id)
    .bind(requester.kind())
    .bind(requester.id())
    .bind(requester.name())
    .bind(&host.id)
    .bind(&host.name)
    .bind(&req.login)
    .bind(ms(ttl))
    .bind(reason)
    .bind(status)
    .bind(i64::from(rule.approvals))
    .bind(serde_json::to_string(rule).map_err(|e| BrokerError::Internal(e.to_string()))?)
    .bind(serde_json::to_string(&req.elevate_groups).unwrap_or_else(|_| "[]".into()))
    .bind(cap(&req.client_addr, 100))
    .bind(format!("{}:{}", filed_by.kind, filed_by.name))
    .bind(now)
    .bind(now + ms(PENDING_TTL))
    .execute(w.conn())
    .await?;
    Ok(id)
}

async fn expire_in(w: &mut WriteTx, row: &RequestRow) -> Result<()> {
    let req = &row.shown;
    sqlx::query(
        "UPDATE access_requests SET status = 'expired', decided_at = $1, decided_by = 'gatehouse', \
         decision_reason = 'no decision in time' WHERE id = $2 AND status = 'pending'",
    )
    .bind(now_ms())
    .bind(&req.id)
    .execute(w.conn())
    .await?;
    w.audit(
        AuditRecord::new(Actor::system(), "access.expired", format!("request:{}", req.id), Outcome::Deny)
            .reason("no decision in time")
            .details(serde_json::json!({
                "requester": format!("{}:{}", req.requester_kind, req.requester_name),
                "target": format!("{}@{}", req.login, req.host_name),
                "approvals": format!("{} of {}", req.approvals_given, req.approvals_required),
            })),
    )
    .await?;
    enqueue(
        w.conn(),
        &Event::new(
            EventKind::AccessExpired,
            format!(
                "Gatehouse: {} {}'s request {} for {}@{} expired without a decision",
                req.requester_kind, req.requester_name, req.id, req.login, req.host_name
            ),
            serde_json::json!({
                "request_id": req.id,
                "requester_kind": req.requester_kind,
                "requester": req.requester_name,
                "host": req.host_name,
                "login": req.login,
            }),
        ),
    )
    .await?;
    Ok(())
}

async fn elevated_groups_in(conn: &mut AnyConnection, agent_id: &str) -> Result<Vec<String>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT groups_json FROM elevations WHERE agent_id = $1 AND ended_at IS NULL AND expires_at > $2",
    )
    .bind(agent_id)
    .bind(now_ms())
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        for g in serde_json::from_str::<Vec<String>>(&r).unwrap_or_default() {
            if !out.contains(&g) {
                out.push(g);
            }
        }
    }
    Ok(out)
}

/// An active agent by `name` or `id` (the column to match).
async fn agent_ref_in(conn: &mut AnyConnection, by: &str, value: &str) -> Result<Option<AgentRef>> {
    let sql = if by == "id" {
        "SELECT id, name, groups_json, risk FROM agents WHERE id = $1 AND status = 'active'"
    } else {
        "SELECT id, name, groups_json, risk FROM agents WHERE name = $1 AND status = 'active'"
    };
    let Some(r) = sqlx::query(sql).bind(value).fetch_optional(&mut *conn).await? else { return Ok(None) };
    let id: String = r.try_get("id")?;
    let groups: String = r.try_get("groups_json")?;
    let risk: String = r.try_get("risk")?;
    let mut groups: Vec<String> = serde_json::from_str(&groups).unwrap_or_default();
    for g in elevated_groups_in(conn, &id).await? {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(Some(AgentRef { id, name: r.try_get("name")?, groups, risk: Risk::parse(&risk).unwrap_or(Risk::High) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses() {
        assert_eq!(client_ip("127.0.0.1:5555"), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(client_ip("10.1.2.3"), Some(IpAddr::from([10, 1, 2, 3])));
        assert!(client_ip("[::1]:22").is_some_and(|i| i.is_loopback()));
        assert_eq!(client_ip(""), None);
    }
}
