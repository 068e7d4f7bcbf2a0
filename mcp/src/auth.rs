//! Authentication of every MCP request (POST, GET, DELETE): Origin check,
//! no credentials in query strings, then a bearer token or an Ed25519-signed
//! request. The authenticated agent goes into the request extensions.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gatehouse_broker::agents::{AgentPrincipal, SignedRequest};
use gatehouse_broker::audit::cap;
use gatehouse_broker::{Actor, AuditRecord, Outcome};

use crate::McpState;
use crate::client_ip::ClientIp;

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

/// Refuse credentials passed in the query string (they end up in proxy and
/// access logs). Used by the MCP endpoint and the admin API alike.
pub fn query_has_credential(req: &Request) -> bool {
    req.uri().query().is_some_and(|q| {
        q.split('&').any(|kv| {
            let k = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
            matches!(k.as_str(), "token" | "access_token" | "bearer" | "api_key" | "apikey" | "auth" | "signature")
        })
    })
}

/// Audit a request refused before anyone was authenticated. Never the
/// query string or a header value: they may hold a credential.
async fn audit_anonymous(st: &McpState, client: ClientIp, path: &str, reason: &str) {
    let rec = AuditRecord::new(Actor::unknown("mcp client"), "mcp.auth", cap(path, 100), Outcome::Deny)
        .reason(reason.to_string())
        .client(client.to_string());
    st.broker.audit_refusal(rec).await;
}

/// Audit an authenticated agent's request refused at the HTTP layer.
async fn audit_refused_request(st: &McpState, p: &AgentPrincipal, path: &str, reason: &str, sid: Option<String>) {
    let rec = AuditRecord::new(p.agent.actor(), "mcp.request", cap(path, 100), Outcome::Deny)
        .reason(reason.to_string())
        .client(p.client_addr())
        .mcp_session(sid)
        .details(serde_json::json!({"auth": p.auth, "token": p.token_id}));
    st.broker.audit_refusal(rec).await;
}

fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": msg}))).into_response()
}

/// A JSON-RPC parse error (-32700) as an HTTP 400.
fn parse_error(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": -32700, "message": msg},
        })),
    )
        .into_response()
}

fn too_large(limit: usize) -> String {
    format!("request body too large (the limit is {limit} bytes); nothing was done")
}

pub(crate) async fn authenticate(
    State(st): State<McpState>,
    client_ip: ClientIp,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    if let Some(origin) = header_str(req.headers(), "origin")
        && !origin_allowed(origin, &st.cfg.allowed_origins)
    {
        audit_anonymous(&st, client_ip, &path, "origin not allowed").await;
        return json_error(StatusCode::FORBIDDEN, "origin not allowed");
    }
    if query_has_credential(&req) {
        audit_anonymous(&st, client_ip, &path, "credentials in the query string").await;
        return json_error(
            StatusCode::BAD_REQUEST,
            "credentials are not accepted in the query string; use the Authorization header",
        );
    }
    let client = Some(client_ip.0);
    let limit = st.cfg.max_arguments_bytes + 64 * 1024;
    let bearer =
        header_str(req.headers(), "authorization").map(|v| v.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
    let (principal, req, buffered) = if let Some(token) = bearer {
        if token.is_empty() {
            return unauthorized("the Authorization header must be `Bearer TOKEN`", true);
        }
        match st.broker.authenticate_agent_token(&token, client).await {
            Ok(p) => (p, req, None),
            Err(gatehouse_broker::BrokerError::Unauthorized(_)) => return unauthorized("invalid token", true),
            Err(e) => return unavailable(e),
        }
    } else if req.headers().contains_key(H_SIGNATURE) {
        let (parts, body) = req.into_parts();
        let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(_) => {
                audit_anonymous(&st, client_ip, &path, "signed request body too large").await;
                return json_error(StatusCode::PAYLOAD_TOO_LARGE, &too_large(limit));
            }
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
            Ok(p) => (p, Request::from_parts(parts, Body::from(bytes.clone())), Some(bytes)),
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
    // POST bodies: bounded, and well-formed JSON within serde_json's depth
    // limit, before any of it reaches the MCP layer or a tool.
    let req = if req.method() == Method::POST {
        let declared = header_str(req.headers(), "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            audit_refused_request(&st, &principal, &path, "request body too large", session.clone()).await;
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, &too_large(limit));
        }
        let (parts, body) = req.into_parts();
        let bytes = match buffered {
            Some(b) => {
                drop(body);
                b
            }
            None => match axum::body::to_bytes(body, limit).await {
                Ok(b) => b,
                Err(_) => {
                    audit_refused_request(&st, &principal, &path, "request body too large", session.clone()).await;
                    return json_error(StatusCode::PAYLOAD_TOO_LARGE, &too_large(limit));
                }
            },
        };
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let msg = format!("Parse error: the body is not acceptable JSON ({e})");
            audit_refused_request(&st, &principal, &path, &msg, session.clone()).await;
            return parse_error(&msg);
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        req
    };
    let agent_id = principal.agent.id.clone();
    let is_delete = req.method() == Method::DELETE;
    let mut req = req;
    req.extensions_mut().insert(principal.clone());
    let mut resp = next.run(req).await;
    // Session termination: rmcp answers 202; clients expect 200 or 204.
    if is_delete && resp.status() == StatusCode::ACCEPTED {
        *resp.status_mut() = StatusCode::NO_CONTENT;
    }
    // Requests the MCP layer or the bridge routes refused as malformed.
    let status = resp.status();
    if matches!(status.as_u16(), 400 | 413 | 415 | 422) {
        let why = format!("request refused: {status}");
        audit_refused_request(&st, &principal, &path, &why, session.clone()).await;
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
