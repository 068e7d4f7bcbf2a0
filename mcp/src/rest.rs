//! The small REST surface the local stdio bridge forwards to: `tools/list`
//! and `tools/call`, each request signed by the agent's enrolled key (or
//! carrying its bearer token), plus key enrolment with a bootstrap token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use gatehouse_broker::agents::AgentPrincipal;
use rmcp::model::JsonObject;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::McpState;
use crate::client_ip::ClientIp;
use crate::tools::{self, CallCtx};

pub(crate) async fn list_tools(Extension(p): Extension<AgentPrincipal>, Json(_req): Json<Value>) -> Json<Value> {
    Json(json!({ "tools": tools::list(&p) }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallReq {
    name: String,
    #[serde(default)]
    arguments: Option<JsonObject>,
    /// The bridge's session id (one per bridge process), for the audit log.
    #[serde(default)]
    mcp_session: Option<String>,
}

/// A JSON-RPC error as the bridge relays it.
#[derive(Serialize)]
struct RpcError {
    code: i32,
    message: String,
}

pub(crate) async fn call_tool(
    State(st): State<McpState>,
    Extension(p): Extension<AgentPrincipal>,
    Json(req): Json<CallReq>,
) -> (StatusCode, Json<Value>) {
    let session = req
        .mcp_session
        .filter(|s| s.len() <= 80 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let ctx = CallCtx { st: &st, p: &p, mcp_session: session };
    match tools::call(&ctx, &req.name, req.arguments).await {
        Ok(result) => (StatusCode::OK, Json(json!({ "result": result }))),
        Err(e) => {
            (StatusCode::OK, Json(json!({ "error": RpcError { code: e.code.0, message: e.message.to_string() } })))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollReq {
    public_key: String,
}

/// Register an agent's signing key with its one-time bootstrap token
/// (`Authorization: Bearer ghboot_…`).
pub(crate) async fn enroll(
    State(st): State<McpState>,
    ClientIp(client): ClientIp,
    headers: axum::http::HeaderMap,
    Json(req): Json<EnrollReq>,
) -> (StatusCode, Json<Value>) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "missing bootstrap token"})));
    }
    match st.broker.enroll_agent_key(token, &req.public_key, Some(client)).await {
        Ok(agent) => (StatusCode::OK, Json(json!({ "agent": agent.name, "signing_key": agent.signing_key }))),
        Err(gatehouse_broker::BrokerError::Unauthorized(_)) => {
            (StatusCode::UNAUTHORIZED, Json(json!({"error": "the bootstrap token was refused"})))
        }
        Err(gatehouse_broker::BrokerError::Invalid(m)) => (StatusCode::BAD_REQUEST, Json(json!({"error": m}))),
        Err(e) => {
            tracing::error!(error = %e, "enrolment failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "enrolment failed; nothing was changed"})))
        }
    }
}
