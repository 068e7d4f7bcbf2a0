//! What an agent may touch and the decision on its session requests. Agents
//! are governed by the same host groups as humans; their token or key only
//! narrows, never widens.

use std::time::Duration;

use serde::Serialize;

use crate::agents::AgentPrincipal;
use crate::audit::{AuditRecord, Outcome, Severity};
use crate::error::{BrokerError, Result};
use crate::grants::NewGrant;
use crate::hosts::Host;
use crate::sessions::{NewSession, OpenedSession, Subject};
use crate::{Broker, ids};

/// The audit action every agent denial carries.
pub const POLICY_DENIED: &str = "AI_AGENT_POLICY_DENIED";

/// Default cap on an agent session's TTL.
pub const DEFAULT_MAX_AGENT_TTL: Duration = Duration::from_secs(3600);

/// A host as an agent sees it.
#[derive(Debug, Clone, Serialize)]
pub struct VisibleHost {
    pub name: String,
    pub groups: Vec<String>,
    pub allowed_logins: Vec<String>,
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

impl Broker {
    /// Hosts inside the agent's groups.
    pub async fn agent_hosts(&self, p: &AgentPrincipal) -> Result<Vec<Host>> {
        Ok(self
            .list_hosts()
            .await?
            .into_iter()
            .filter(|h| h.groups.iter().any(|g| p.agent.groups.contains(g)))
            .collect())
    }

    /// Logins the agent may request on a host it can see.
    pub async fn agent_allowed_logins(&self, _p: &AgentPrincipal, _host: &Host) -> Result<Vec<String>> {
        Ok(vec!["*".into()])
    }

    /// Hosts and logins for `gatehouse_list_allowed_hosts`.
    pub async fn agent_visible_hosts(&self, p: &AgentPrincipal) -> Result<Vec<VisibleHost>> {
        let mut out = Vec::new();
        for h in self.agent_hosts(p).await? {
            let allowed_logins = self.agent_allowed_logins(p, &h).await?;
            out.push(VisibleHost { name: h.name, groups: h.groups, allowed_logins });
        }
        Ok(out)
    }

    /// Write the `AI_AGENT_POLICY_DENIED` event for a refused agent call.
    pub async fn audit_agent_denial(
        &self,
        p: &AgentPrincipal,
        tool: &str,
        resource: &str,
        sentence: &str,
        mcp_session: Option<String>,
    ) -> Result<()> {
        self.audit(
            AuditRecord::new(p.agent.actor(), POLICY_DENIED, resource.to_string(), Outcome::Deny)
                .reason(sentence.to_string())
                .client(p.client_addr())
                .mcp_session(mcp_session)
                .details(serde_json::json!({"tool": tool, "agent": p.agent.name, "auth": p.auth})),
        )
        .await?;
        Ok(())
    }

    /// Check that the agent may reach `host_name`, returning the host or the
    /// plain sentence that explains the denial.
    pub async fn agent_host_in_scope(
        &self,
        p: &AgentPrincipal,
        host_name: &str,
    ) -> Result<std::result::Result<Host, String>> {
        let groups = list(&p.agent.groups);
        let Some(host) = self.host_by_name(host_name).await? else {
            return Ok(Err(format!(
                "Access denied. Token is scoped to groups {groups}, host {} is not in them",
                crate::audit::cap(host_name, 63)
            )));
        };
        if !host.groups.iter().any(|g| p.agent.groups.contains(g)) {
            return Ok(Err(format!(
                "Access denied. Token is scoped to groups {groups}, host {} is in {}",
                host.name,
                list(&host.groups)
            )));
        }
        Ok(Ok(host))
    }

    /// An agent asks for an SSH session. On success the session is open (a
    /// grant for the agent, a session row, live enforcement); on denial the
    /// error is `Denied(sentence)` and the denial is audited.
    pub async fn agent_request_session(
        &self,
        p: &AgentPrincipal,
        host_name: &str,
        login: &str,
        ttl: Duration,
        reason: &str,
        mcp_session: Option<String>,
    ) -> Result<OpenedSession> {
        let resource = format!("{}@{}", crate::audit::cap(login, 32), crate::audit::cap(host_name, 63));
        let mcp = mcp_session.clone();
        let denied = |sentence: String| {
            let (resource, mcp) = (resource.clone(), mcp.clone());
            async move {
                self.audit_agent_denial(p, "gatehouse_request_ssh_session", &resource, &sentence, mcp).await?;
                Err::<OpenedSession, _>(BrokerError::Denied(sentence))
            }
        };
        if ids::check_login(login).is_err() {
            return denied(format!("Access denied. {:?} is not a valid login", crate::audit::cap(login, 32))).await;
        }
        let host = match self.agent_host_in_scope(p, host_name).await? {
            Ok(h) => h,
            Err(sentence) => return denied(sentence).await,
        };
        let logins = self.agent_allowed_logins(p, &host).await?;
        if !logins.iter().any(|l| l == "*" || l == login) {
            return denied(format!(
                "Access denied. Login {login} is not allowed on {}; allowed: {}",
                host.name,
                list(&logins)
            ))
            .await;
        }
        let grant = self
            .create_grant(
                &p.agent.actor(),
                NewGrant {
                    subject_kind: "agent",
                    subject_id: p.agent.id.clone(),
                    subject_name: p.agent.name.clone(),
                    host: host.clone(),
                    login: login.to_string(),
                    ttl,
                    reason: reason.to_string(),
                },
            )
            .await?;
        self.open_session(NewSession {
            kind: "mcp",
            subject: Subject { kind: "agent", id: p.agent.id.clone(), name: p.agent.name.clone() },
            host,
            login: login.to_string(),
            grant_id: Some(grant.id),
            client_addr: p.client_addr(),
            mcp_session_id: mcp_session,
            expires_at: Some(grant.expires_at),
        })
        .await
    }

    /// An open agent session owned by `p`, or a plain-sentence denial.
    pub async fn agent_session_check(
        &self,
        p: &AgentPrincipal,
        session_id: &str,
    ) -> Result<std::result::Result<(), String>> {
        if ids::check("s", session_id).is_err() {
            return Ok(Err(format!("Access denied. {:?} is not a session id", crate::audit::cap(session_id, 40))));
        }
        let s = match self.session(session_id).await {
            Ok(s) => s,
            Err(BrokerError::NotFound(_)) => {
                return Ok(Err(format!("Access denied. Session {session_id} does not exist")));
            }
            Err(e) => return Err(e),
        };
        if s.subject_kind != "agent" || s.subject_name != p.agent.name {
            return Ok(Err(format!("Access denied. Session {session_id} does not belong to agent {}", p.agent.name)));
        }
        if s.ended_at.is_some() {
            return Ok(Err(format!(
                "Session {session_id} has ended ({})",
                s.end_reason.unwrap_or_else(|| "closed".into())
            )));
        }
        Ok(Ok(()))
    }

    /// An agent-authored audit note.
    pub async fn agent_note(
        &self,
        p: &AgentPrincipal,
        message: &str,
        severity: Severity,
        mcp: Option<String>,
    ) -> Result<String> {
        self.audit(
            AuditRecord::new(p.agent.actor(), "agent.note", format!("agent:{}", p.agent.name), Outcome::Allow)
                .severity(severity)
                .reason(message.to_string())
                .client(p.client_addr())
                .mcp_session(mcp)
                .details(serde_json::json!({"agent_authored": true})),
        )
        .await
    }
}
