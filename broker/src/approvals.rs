//! Action approvals: an agent pauses before something privileged ("reload
//! nginx on web-1") and asks humans. Humans decide through the admin API;
//! an agent can never approve anything, its own request least of all.
//! (Access requests for SSH sessions are `access`; both share the
//! `gatehouse approvals` verbs.)

use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use crate::agents::AgentPrincipal;
use crate::audit::{Actor, AuditRecord, Outcome, cap};
use crate::error::{BrokerError, Result};
use crate::webhooks::{self, Event, EventKind};
use crate::{Broker, ids, now_ms};

/// How long an action approval waits for a human.
pub const ACTION_PENDING_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize)]
pub struct ActionApproval {
    pub id: String,
    pub agent: String,
    pub action: String,
    pub resource: String,
    pub reason: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub status: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
}

const SELECT: &str = "SELECT id, agent_name, action, resource, reason, status, created_at, expires_at, decided_at, \
     decided_by, decision_reason FROM action_approvals";

fn row(r: &sqlx::any::AnyRow, now: i64) -> Result<ActionApproval> {
    let mut status: String = r.try_get("status")?;
    let expires_at: i64 = r.try_get("expires_at")?;
    if status == "pending" && expires_at <= now {
        status = "expired".into();
    }
    Ok(ActionApproval {
        id: r.try_get("id")?,
        agent: r.try_get("agent_name")?,
        action: r.try_get("action")?,
        resource: r.try_get("resource")?,
        reason: r.try_get("reason")?,
        status,
        created_at: r.try_get("created_at")?,
        expires_at,
        decided_at: r.try_get("decided_at")?,
        decided_by: r.try_get("decided_by")?,
        decision_reason: r.try_get("decision_reason")?,
    })
}

fn check_text(field: &str, v: &str, max: usize) -> Result<()> {
    if v.trim().is_empty() {
        return Err(BrokerError::Invalid(format!("{field} must not be empty")));
    }
    if v.chars().count() > max {
        return Err(BrokerError::Invalid(format!("{field} is too long (the limit is {max} characters)")));
    }
    Ok(())
}

impl Broker {
    /// File an action approval for an agent (audited, announced).
    pub async fn request_action_approval(
        &self,
        p: &AgentPrincipal,
        action: &str,
        resource: &str,
        reason: &str,
        mcp: Option<String>,
    ) -> Result<ActionApproval> {
        check_text("action", action, 200)?;
        check_text("resource", resource, 500)?;
        check_text("reason", reason, 1000)?;
        let id = ids::new("ap");
        let now = now_ms();
        let expires = now + i64::try_from(ACTION_PENDING_TTL.as_millis()).unwrap_or(3_600_000);
        let mut w = self.db().write().await?;
        sqlx::query(
            "INSERT INTO action_approvals (id, agent_id, agent_name, action, resource, reason, status, client_addr, \
             mcp_session_id, created_at, expires_at) VALUES ($1,$2,$3,$4,$5,$6,'pending',$7,$8,$9,$10)",
        )
        .bind(&id)
        .bind(&p.agent.id)
        .bind(&p.agent.name)
        .bind(action.trim())
        .bind(resource.trim())
        .bind(reason.trim())
        .bind(p.client_addr())
        .bind(&mcp)
        .bind(now)
        .bind(expires)
        .execute(w.conn())
        .await?;
        w.audit(
            AuditRecord::new(p.agent.actor(), "approval.request", cap(resource.trim(), 500), Outcome::Allow)
                .reason(reason.trim().to_string())
                .client(p.client_addr())
                .mcp_session(mcp)
                .details(serde_json::json!({"approval": id, "action": action.trim()})),
        )
        .await?;
        let text = format!(
            "Gatehouse: agent {} asks to {} on {}: {} (approve with `gatehouse approvals approve {id}`)",
            p.agent.name,
            webhooks::chat_safe(action.trim()),
            webhooks::chat_safe(resource.trim()),
            webhooks::chat_safe(reason.trim())
        );
        let ev = Event::new(
            EventKind::AccessRequested,
            text,
            serde_json::json!({"kind": "action", "approval": id, "agent": p.agent.name, "action": action.trim(),
                "resource": resource.trim(), "reason": reason.trim()}),
        );
        webhooks::enqueue(w.conn(), &ev).await?;
        w.commit().await?;
        self.kick_webhooks();
        self.action_approval(&id).await
    }

    pub async fn action_approval(&self, id: &str) -> Result<ActionApproval> {
        ids::check("ap", id)?;
        let r = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("approval {id}")))?;
        row(&r, now_ms())
    }

    pub async fn list_action_approvals(&self, pending_only: bool) -> Result<Vec<ActionApproval>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY created_at DESC LIMIT 1000")))
            .fetch_all(self.pool())
            .await?;
        let now = now_ms();
        let all = rows.iter().map(|r| row(r, now)).collect::<Result<Vec<_>>>()?;
        Ok(all.into_iter().filter(|a| !pending_only || a.status == "pending").collect())
    }

    /// A human decides. Denials need a reason.
    pub async fn decide_action_approval(
        &self,
        actor: &Actor,
        id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<ActionApproval> {
        if actor.kind == "agent" {
            return Err(BrokerError::Denied("an agent can never approve anything".into()));
        }
        if !approve && reason.trim().is_empty() {
            return Err(BrokerError::Invalid("a denial needs a reason".into()));
        }
        let current = self.action_approval(id).await?;
        if current.status != "pending" {
            return Err(BrokerError::Conflict(format!("approval {id} is already {}", current.status)));
        }
        let status = if approve { "approved" } else { "denied" };
        let now = now_ms();
        let by = format!("{}:{}", actor.kind, actor.name);
        let mut w = self.db().write().await?;
        let n = sqlx::query(
            "UPDATE action_approvals SET status = $1, decided_at = $2, decided_by = $3, decision_reason = $4 \
             WHERE id = $5 AND status = 'pending' AND expires_at > $2",
        )
        .bind(status)
        .bind(now)
        .bind(&by)
        .bind(reason.trim())
        .bind(id)
        .execute(w.conn())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(BrokerError::Conflict(format!("approval {id} is no longer pending")));
        }
        w.audit(
            AuditRecord::new(
                actor.clone(),
                if approve { "approval.approve" } else { "approval.deny" },
                format!("approval:{id}"),
                Outcome::Allow,
            )
            .reason(reason.trim().to_string())
            .details(
                serde_json::json!({"agent": current.agent, "action": current.action, "resource": current.resource}),
            ),
        )
        .await?;
        let kind = if approve { EventKind::AccessApproved } else { EventKind::AccessDenied };
        let text = format!(
            "Gatehouse: {by} {status} agent {}'s request to {} on {}",
            current.agent,
            webhooks::chat_safe(&current.action),
            webhooks::chat_safe(&current.resource)
        );
        let ev = Event::new(
            kind,
            text,
            serde_json::json!({"kind": "action", "approval": id, "decided_by": by, "reason": reason.trim()}),
        );
        webhooks::enqueue(w.conn(), &ev).await?;
        w.commit().await?;
        self.kick_webhooks();
        self.action_approval(id).await
    }
}
