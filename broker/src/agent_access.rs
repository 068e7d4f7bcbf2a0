//! What an agent may touch and the decision on its session requests. Agents
//! are governed by the same host groups and policies as humans; their token
//! or key only narrows, never widens. Policy decides: allow (the session opens
//! at once), needs approval (a pending request humans decide), or deny.

use std::time::Duration;

use serde::Serialize;

use crate::access::{AccessRequest, NewAccessRequest, Requester};
use crate::agents::AgentPrincipal;
use crate::audit::{AuditRecord, Outcome, Severity};
use crate::error::{BrokerError, Result};
use crate::hosts::Host;
use crate::sessions::{NewSession, OpenedSession, Subject};
use crate::webhooks::Event;
use crate::{Broker, ids, now_ms};

/// The audit action every agent denial carries.
pub const POLICY_DENIED: &str = "AI_AGENT_POLICY_DENIED";

/// A host as an agent sees it.
#[derive(Debug, Clone, Serialize)]
pub struct VisibleHost {
    pub name: String,
    pub groups: Vec<String>,
    pub allowed_logins: Vec<String>,
}

/// An agent's session request.
#[derive(Debug, Clone)]
pub struct AgentSessionAsk {
    pub host: String,
    pub login: String,
    pub ttl: Duration,
    pub reason: String,
    /// Groups to be elevated into for the session's lifetime (needs a human).
    pub elevate_groups: Vec<String>,
    pub mcp_session: Option<String>,
}

/// What became of an agent's session request.
#[derive(Debug, Clone)]
pub enum AgentSessionAnswer {
    /// Policy allowed it: the session is open.
    Opened(OpenedSession),
    /// Humans must approve first; poll the request.
    Pending(AccessRequest),
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

impl Broker {
    /// The agent's groups now, including temporary elevations.
    pub async fn agent_groups(&self, p: &AgentPrincipal) -> Result<Vec<String>> {
        let mut groups = p.agent.groups.clone();
        for g in self.agent_elevated_groups(&p.agent.id).await? {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        groups.sort();
        Ok(groups)
    }

    /// Hosts inside the agent's groups (canaries never show).
    pub async fn agent_hosts(&self, p: &AgentPrincipal) -> Result<Vec<Host>> {
        let groups = self.agent_groups(p).await?;
        let mut out = Vec::new();
        for h in self.list_hosts().await? {
            if h.groups.iter().any(|g| groups.contains(g)) && !self.is_canary(&h).await? {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// Logins policy allows on a host (`*`: any valid login).
    pub async fn allowed_logins(&self, host: &Host) -> Result<Vec<String>> {
        let mut conn = self.pool().acquire().await?;
        let policies = crate::access::bound_policies(&mut conn, &host.groups).await?;
        let mut logins: Option<Vec<String>> = None;
        for p in &policies {
            if let Some(l) = &p.policy.logins {
                logins = Some(match logins {
                    None => l.clone(),
                    Some(cur) => cur.into_iter().filter(|x| l.contains(x)).collect(),
                });
            }
        }
        Ok(logins.unwrap_or_else(|| vec!["*".into()]))
    }

    /// Hosts and logins for `gatehouse_list_allowed_hosts`.
    pub async fn agent_visible_hosts(&self, p: &AgentPrincipal) -> Result<Vec<VisibleHost>> {
        let mut out = Vec::new();
        for h in self.agent_hosts(p).await? {
            let allowed_logins = self.allowed_logins(&h).await?;
            out.push(VisibleHost { name: h.name, groups: h.groups, allowed_logins });
        }
        Ok(out)
    }

    /// Write the `AI_AGENT_POLICY_DENIED` event for a refused agent call and
    /// announce it (`agent.policy_denied` webhook).
    pub async fn audit_agent_denial(
        &self,
        p: &AgentPrincipal,
        tool: &str,
        resource: &str,
        sentence: &str,
        mcp_session: Option<String>,
    ) -> Result<()> {
        let rec = AuditRecord::new(p.agent.actor(), POLICY_DENIED, resource.to_string(), Outcome::Deny)
            .reason(sentence.to_string())
            .client(p.client_addr())
            .mcp_session(mcp_session)
            .details(serde_json::json!({"tool": tool, "agent": p.agent.name, "auth": p.auth}));
        self.audit_and_emit(rec, Event::agent_policy_denied(&p.agent.name, resource, sentence)).await?;
        Ok(())
    }

    /// Check that the agent may reach `host_name`, returning the host or the
    /// plain sentence that explains the denial. A canary trips (critical
    /// event, webhook) and reads like a host outside the groups.
    pub async fn agent_host_in_scope(
        &self,
        p: &AgentPrincipal,
        host_name: &str,
        login: &str,
        via: &str,
        mcp_session: Option<String>,
    ) -> Result<std::result::Result<Host, String>> {
        self.agent_host_in_scope_with(p, host_name, login, via, mcp_session, &[]).await
    }

    /// As [`Broker::agent_host_in_scope`], counting groups the agent asks to
    /// be elevated into (policy then always wants a human's approval).
    pub async fn agent_host_in_scope_with(
        &self,
        p: &AgentPrincipal,
        host_name: &str,
        login: &str,
        via: &str,
        mcp_session: Option<String>,
        elevate: &[String],
    ) -> Result<std::result::Result<Host, String>> {
        let mut groups = self.agent_groups(p).await?;
        for g in elevate {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        let outside = format!(
            "Access denied. Token is scoped to groups {}, host {} is not in them",
            list(&groups),
            crate::audit::cap(host_name, 63)
        );
        if self.check_canary(&p.agent.actor(), host_name, login, via, &p.client_addr(), mcp_session).await? {
            return Ok(Err(outside));
        }
        let Some(host) = self.host_by_name(host_name).await? else {
            return Ok(Err(outside));
        };
        if !host.groups.iter().any(|g| groups.contains(g)) {
            return Ok(Err(format!(
                "Access denied. Token is scoped to groups {}, host {} is in {}",
                list(&groups),
                host.name,
                list(&host.groups)
            )));
        }
        Ok(Ok(host))
    }

    /// An agent asks for an SSH session. Policy decides: allowed, the grant
    /// and session are made at once; needing approval, a pending request is
    /// filed; denied, the error is `Denied(sentence)` and the denial audited.
    pub async fn agent_request_session(&self, p: &AgentPrincipal, ask: AgentSessionAsk) -> Result<AgentSessionAnswer> {
        let AgentSessionAsk { host: host_name, login, ttl, reason, elevate_groups, mcp_session } = ask;
        let (host_name, login, reason) = (host_name.as_str(), login.as_str(), reason.as_str());
        let tool = "gatehouse_request_ssh_session";
        let resource = format!("{}@{}", crate::audit::cap(login, 32), crate::audit::cap(host_name, 63));
        let deny = |sentence: String| {
            let (resource, mcp) = (resource.clone(), mcp_session.clone());
            async move {
                self.audit_agent_denial(p, tool, &resource, &sentence, mcp).await?;
                Err::<AgentSessionAnswer, _>(BrokerError::Denied(sentence))
            }
        };
        if ids::check_login(login).is_err() {
            return deny(format!("Access denied. {:?} is not a valid login", crate::audit::cap(login, 32))).await;
        }
        if let Err(sentence) = self
            .agent_host_in_scope_with(
                p,
                host_name,
                login,
                "mcp.request_ssh_session",
                mcp_session.clone(),
                &elevate_groups,
            )
            .await?
        {
            return deny(sentence).await;
        }
        let Some(agent) = self.agent_ref(&p.agent.name).await? else {
            return deny(format!("Access denied. Agent {} is not active", p.agent.name)).await;
        };
        let filed = self
            .request_access(
                &Requester::Agent(agent),
                &p.agent.actor(),
                NewAccessRequest {
                    host: host_name.to_string(),
                    login: login.to_string(),
                    ttl: Some(ttl),
                    reason: reason.to_string(),
                    elevate_groups,
                    client_addr: p.client_addr(),
                    mcp_session_id: mcp_session.clone(),
                },
            )
            .await;
        let req = match filed {
            Ok(r) => r,
            Err(BrokerError::Denied(why)) => {
                let why = why.strip_prefix("access denied: ").unwrap_or(&why).to_string();
                return deny(format!("Access denied. {why}")).await;
            }
            Err(e) => return Err(e),
        };
        match (req.status.as_str(), &req.grant_id) {
            ("approved", Some(_)) => {
                Ok(AgentSessionAnswer::Opened(self.open_agent_session(p, &req, mcp_session).await?))
            }
            ("pending", _) => Ok(AgentSessionAnswer::Pending(req)),
            (other, _) => deny(format!("Access denied. The request is {other}")).await,
        }
    }

    async fn open_agent_session(
        &self,
        p: &AgentPrincipal,
        req: &AccessRequest,
        mcp: Option<String>,
    ) -> Result<OpenedSession> {
        let grant_id =
            req.grant_id.clone().ok_or_else(|| BrokerError::Internal("approved request without grant".into()))?;
        let grant = self.grant(&grant_id).await?;
        if !grant.is_live(now_ms()) {
            return Err(BrokerError::Denied(format!(
                "Access denied. The grant for {} has ended ({})",
                req.id, grant.status
            )));
        }
        let host = self
            .host_by_name(&grant.host_name)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("host {}", grant.host_name)))?;
        self.open_session(NewSession {
            kind: "mcp",
            subject: Subject { kind: "agent", id: p.agent.id.clone(), name: p.agent.name.clone() },
            host,
            login: grant.login.clone(),
            grant_id: Some(grant.id.clone()),
            client_addr: p.client_addr(),
            mcp_session_id: mcp,
            expires_at: Some(grant.expires_at),
        })
        .await
    }

    /// An agent's own access request, with the session its approval opened:
    /// the first time an approved request is read, its session opens (later
    /// reads return the same session while it lives).
    pub async fn agent_request_status(
        &self,
        p: &AgentPrincipal,
        request_id: &str,
        mcp: Option<String>,
    ) -> Result<std::result::Result<(AccessRequest, Option<OpenedOrExisting>), String>> {
        if ids::check("a", request_id).is_err() {
            return Ok(Err(format!("Access denied. {:?} is not an approval id", crate::audit::cap(request_id, 40))));
        }
        let req = match self.access_request(request_id).await {
            Ok(r) => r,
            Err(BrokerError::NotFound(_)) => {
                return Ok(Err(format!("Access denied. There is no approval {request_id}")));
            }
            Err(e) => return Err(e),
        };
        if req.requester_kind != "agent" || req.requester_name != p.agent.name {
            return Ok(Err(format!("Access denied. Approval {request_id} does not belong to agent {}", p.agent.name)));
        }
        if req.status != "approved" {
            return Ok(Ok((req, None)));
        }
        let Some(grant_id) = &req.grant_id else { return Ok(Ok((req, None))) };
        let open = self
            .list_sessions(true, 10_000)
            .await?
            .into_iter()
            .find(|s| s.grant_id.as_deref() == Some(grant_id) && s.subject_kind == "agent");
        if let Some(s) = open {
            return Ok(Ok((req, Some(OpenedOrExisting::Existing { id: s.id, expires_at: s.expires_at }))));
        }
        match self.open_agent_session(p, &req, mcp).await {
            Ok(o) => Ok(Ok((req, Some(OpenedOrExisting::Opened(Box::new(o)))))),
            Err(BrokerError::Denied(why)) => Ok(Err(why)),
            Err(e) => Err(e),
        }
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

/// The session behind an approved request: just opened (register it with
/// the exec engine) or already open.
#[derive(Debug, Clone)]
pub enum OpenedOrExisting {
    Opened(Box<OpenedSession>),
    Existing { id: String, expires_at: Option<i64> },
}
