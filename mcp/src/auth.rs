//! Authentication of every MCP request (POST, GET, DELETE): Origin check,
//! no credentials in query strings, then a bearer token or an Ed25519-signed
//! request. The authenticated agent goes into the request extensions.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gatehouse_broker::agents::SignedRequest;

use crate::McpState;

/// Headers of a signed request.
pub const H_AGENT: &str = "x-gatehouse-agent";
pub const H_TIMESTAMP: &str = "x-gatehouse-timestamp";
pub const H_NONCE: &str = "x-gatehouse-nonce";
pub const H_SIGNATURE: &str = "x-gatehouse-signature";

fn unauthorized(detail: &str, token_given: bool) -> Response {
    let challenge = if token_given {
        "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"the credential was refused\""
    } else {
        "Bearer realm=\"gatehouse\""
    };
    let mut r = (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"error": detail}))).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| a == origin || a == "*")
}

fn query_has_credential(req: &Request) -> bool {
    req.uri().query().is_some_and(|q| {
        q.split('&').any(|kv| {
            let k = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
            matches!(k.as_str(), "token" | "access_token" | "bearer" | "api_key" | "apikey" | "auth" | "signature")
        })
    })
}

pub(crate) async fn authenticate(
    State(st): State<McpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(origin) = header_str(req.headers(), "origin")
        && !origin_allowed(origin, &st.cfg.allowed_origins)
    {
        return (StatusCode::FORBIDDEN, axum::Json(serde_json::json!({"error": "origin not allowed"}))).into_response();
    }
    if query_has_credential(&req) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "credentials are not accepted in the query string"})),
        )
            .into_response();
    }
    let client = Some(peer.ip());
    let bearer =
        header_str(req.headers(), "authorization").map(|v| v.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
    let (principal, req) = if let Some(token) = bearer {
        if token.is_empty() {
            return unauthorized("the Authorization header must be `Bearer TOKEN`", true);
        }
        match st.broker.authenticate_agent_token(&token, client).await {
            Ok(p) => (p, req),
            Err(gatehouse_broker::BrokerError::Unauthorized(_)) => return unauthorized("invalid token", true),
            Err(e) => return unavailable(e),
        }
    } else if req.headers().contains_key(H_SIGNATURE) {
        let (parts, body) = req.into_parts();
        let limit = st.cfg.max_arguments_bytes + 64 * 1024;
        let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
        };
        let h = &parts.headers;
        let (Some(agent), Some(ts), Some(nonce), Some(sig)) =
            (header_str(h, H_AGENT), header_str(h, H_TIMESTAMP), header_str(h, H_NONCE), header_str(h, H_SIGNATURE))
        else {
            return unauthorized("incomplete signed request", true);
        };
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let signed = SignedRequest {
            agent,
            method: parts.method.as_str(),
            path,
            timestamp: ts,
            nonce,
            signature_b64: sig,
            body: &bytes,
        };
        match st.broker.verify_signed_request(&signed, client).await {
            Ok(p) => (p, Request::from_parts(parts, Body::from(bytes))),
            Err(gatehouse_broker::BrokerError::Unauthorized(why)) => return unauthorized(&why, true),
            Err(e) => return unavailable(e),
        }
    } else {
        return unauthorized("missing bearer token", false);
    };
    // An MCP session id is only good for the agent that opened it.
    let session = header_str(req.headers(), "mcp-session-id").map(str::to_string);
    if let Some(sid) = &session {
        let owner = st.session_owners.lock().ok().and_then(|m| m.get(sid).cloned());
        if owner.is_some_and(|o| o != principal.agent.id) {
            let _ = st
                .broker
                .audit_agent_denial(
                    &principal,
                    "mcp",
                    "mcp session",
                    "Access denied. That MCP session belongs to another agent",
                    Some(sid.clone()),
                )
                .await;
            return (StatusCode::NOT_FOUND, "Not Found").into_response();
        }
    }
    let agent_id = principal.agent.id.clone();
    let is_delete = req.method() == axum::http::Method::DELETE;
    let mut req = req;
    req.extensions_mut().insert(principal);
    let mut resp = next.run(req).await;
    // Session termination: rmcp answers 202; clients expect 200 or 204.
    if is_delete && resp.status() == StatusCode::ACCEPTED {
        *resp.status_mut() = StatusCode::NO_CONTENT;
    }
    if let Some(sid) = header_str(resp.headers(), "mcp-session-id")
        && let Ok(mut m) = st.session_owners.lock()
    {
        m.insert(sid.to_string(), agent_id);
    }
    resp
}

fn unavailable(e: gatehouse_broker::BrokerError) -> Response {
    tracing::error!(error = %e, "authentication could not be checked");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({"error": "Gatehouse cannot check credentials right now: storage unavailable"})),
    )
        .into_response()
}
