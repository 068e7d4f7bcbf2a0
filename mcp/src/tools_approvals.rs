//! Approval tools: an agent asks humans and polls the decision. An approved
//! SSH session request opens its session the first time it is read.

use gatehouse_broker::BrokerError;
use gatehouse_broker::agent_access::OpenedOrExisting;
use gatehouse_broker::audit::cap;
use rmcp::ErrorData;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tools::{CallCtx, Outcome2, check_text, denied, failed, invalid, ok, rfc3339};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestApproval {
    /// What you want to do, e.g. "restart nginx".
    pub action: String,
    /// What it touches, e.g. "web-1" or "prod load balancer".
    pub resource: String,
    /// Why; shown to the approver.
    pub reason: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetApproval {
    /// ap_… (action approval) or a_… (SSH session request).
    pub approval_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ApprovalOut {
    pub approval_id: String,
    /// action or ssh_session
    pub kind: String,
    /// pending, approved, denied, expired or cancelled
    pub status: String,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    /// For pending session requests: who must approve.
    pub needs: Option<String>,
    /// For an approved session request: the open session to run commands on.
    pub session_id: Option<String>,
    pub expires_at: Option<String>,
}

pub(crate) async fn request_approval(ctx: &CallCtx<'_>, a: RequestApproval) -> Result<Outcome2, ErrorData> {
    check_text("action", &a.action, 200)?;
    check_text("resource", &a.resource, 500)?;
    check_text("reason", &a.reason, 1000)?;
    if a.action.trim().is_empty() || a.resource.trim().is_empty() || a.reason.trim().is_empty() {
        return Err(invalid("action, resource and reason are required and must not be empty"));
    }
    let resource = cap(a.resource.trim(), 200);
    Ok(
        match ctx
            .st
            .broker
            .request_action_approval(ctx.p, &a.action, &a.resource, &a.reason, ctx.mcp_session.clone())
            .await
        {
            Ok(ap) => ok(
                resource,
                ApprovalOut {
                    approval_id: ap.id,
                    kind: "action".into(),
                    status: ap.status,
                    decided_by: None,
                    decision_reason: None,
                    needs: Some("1 approval from an approver or admin".into()),
                    session_id: None,
                    expires_at: Some(rfc3339(ap.expires_at)),
                },
            ),
            Err(BrokerError::Invalid(m)) => Outcome2::Invalid { resource, message: m },
            Err(e) => failed(resource, e),
        },
    )
}

pub(crate) async fn get_approval(ctx: &CallCtx<'_>, a: GetApproval) -> Result<Outcome2, ErrorData> {
    check_text("approval_id", &a.approval_id, 40)?;
    let resource = format!("approval:{}", cap(&a.approval_id, 40));
    if a.approval_id.starts_with("ap_") {
        return Ok(match ctx.st.broker.action_approval(&a.approval_id).await {
            Ok(ap) if ap.agent == ctx.p.agent.name => ok(
                resource,
                ApprovalOut {
                    approval_id: ap.id,
                    kind: "action".into(),
                    status: ap.status,
                    decided_by: ap.decided_by,
                    decision_reason: ap.decision_reason,
                    needs: None,
                    session_id: None,
                    expires_at: Some(rfc3339(ap.expires_at)),
                },
            ),
            Ok(_) | Err(BrokerError::NotFound(_)) | Err(BrokerError::Invalid(_)) => denied(
                resource,
                format!(
                    "Access denied. Approval {} does not belong to agent {}",
                    cap(&a.approval_id, 40),
                    ctx.p.agent.name
                ),
            ),
            Err(e) => failed(resource, e),
        });
    }
    match ctx.st.broker.agent_request_status(ctx.p, &a.approval_id, ctx.mcp_session.clone()).await {
        Ok(Ok((req, session))) => {
            let (session_id, expires_at) = match session {
                Some(OpenedOrExisting::Opened(o)) => {
                    let exp = o.live.expires_at;
                    let id = o.id.clone();
                    ctx.st.exec.register(&ctx.st.broker, *o);
                    (Some(id), exp)
                }
                Some(OpenedOrExisting::Existing { id, expires_at }) => (Some(id), expires_at),
                None => (None, req.grant_expires_at),
            };
            Ok(ok(
                resource,
                ApprovalOut {
                    approval_id: req.id,
                    kind: "ssh_session".into(),
                    status: req.status,
                    decided_by: req.decided_by,
                    decision_reason: req.decision_reason,
                    needs: Some(req.needs),
                    session_id,
                    expires_at: expires_at.map(rfc3339),
                },
            ))
        }
        Ok(Err(sentence)) => Ok(denied(resource, sentence)),
        Err(e) => Ok(failed(resource, e)),
    }
}
