//! The admin HTTP API (JSON under `/api/v1`): a thin adapter from HTTP to
//! broker calls. Every route but `/healthz` needs the admin bearer token in
//! the `Authorization` header; tokens in query strings are refused.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gatehouse_broker::audit::cap;
use gatehouse_broker::hosts::NewHost;
use gatehouse_broker::users::Role;
use gatehouse_broker::{Actor, AuditQuery, AuditRecord, Broker, BrokerError, Outcome, parse_duration};
use gatehouse_mcp::client_ip::ClientIp;
pub use gatehouse_mcp::query_has_credential;
use serde::Deserialize;
use serde_json::{Value, json};

/// An error as the API answers it: a status and one line of text.
pub struct ApiError(pub StatusCode, pub String);

/// The message of an [`ApiError`], kept on the response so the admin
/// middleware can audit refusals in the words the caller saw.
#[derive(Clone)]
struct Refusal(String);

/// Largest request body the admin API reads.
const MAX_BODY: usize = 1024 * 1024;

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let status = match &e {
            BrokerError::Denied(_) => StatusCode::FORBIDDEN,
            BrokerError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            BrokerError::NotFound(_) => StatusCode::NOT_FOUND,
            BrokerError::Invalid(_) | BrokerError::Ca(_) => StatusCode::BAD_REQUEST,
            BrokerError::Conflict(_) => StatusCode::CONFLICT,
            BrokerError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let msg = match &e {
            BrokerError::Storage(_) => "storage unavailable; nothing was changed".to_string(),
            BrokerError::Unauthorized(_) => "unauthorized".to_string(),
            other => other.to_string(),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %e, "api error");
        }
        ApiError(status, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1.clone() }))).into_response();
        r.extensions_mut().insert(Refusal(self.1));
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gatehouse\""));
        }
        r
    }
}

pub type ApiResult<T = Json<Value>> = Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub fn router(broker: Broker) -> Router {
    let admin = Router::new()
        .route("/api/v1/ca", get(ca))
        .route("/api/v1/ca/rotate", post(rotate_ca))
        .route("/api/v1/users", get(list_users).post(add_user))
        .route("/api/v1/users/{name}/keys", post(add_user_key))
        .route("/api/v1/users/{name}/role", post(set_role))
        .route("/api/v1/hosts", get(list_hosts).post(add_host))
        .route("/api/v1/grants", get(list_grants).post(add_grant))
        .route("/api/v1/grants/{id}/revoke", post(revoke_grant))
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{id}/kill", post(kill_session))
        .route("/api/v1/recordings", get(list_recordings))
        .route("/api/v1/recordings/{id}", get(recording))
        .route("/api/v1/recordings/{id}/cast", get(recording_cast))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit/verify", get(audit_verify))
        .route("/api/v1/audit/export", get(audit_export))
        .merge(crate::api_agents::routes())
        .merge(crate::api_jit::routes())
        .route_layer(middleware::from_fn_with_state(broker.clone(), require_admin));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(admin)
        .merge(crate::api_pki::routes(broker.clone()))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(broker)
}

/// The bearer token from `Authorization`, if present and well-formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Audit a request refused because it carried a credential in its query
/// string. Neither the query nor the credential is recorded.
pub(crate) async fn audit_query_credential(broker: &Broker, client: ClientIp, resource: &str) {
    let rec = AuditRecord::new(Actor::unknown("api client"), "api.auth", resource, Outcome::Deny)
        .reason("credentials in the query string")
        .client(client.to_string());
    broker.audit_refusal(rec).await;
}

pub(crate) async fn require_admin(
    State(broker): State<Broker>,
    client: ClientIp,
    req: Request,
    next: Next,
) -> Response {
    if query_has_credential(&req) {
        audit_query_credential(&broker, client, "admin api").await;
        return bad("credentials are not accepted in the query string; use the Authorization header").into_response();
    }
    let Some(token) = bearer(req.headers()) else {
        return ApiError(StatusCode::UNAUTHORIZED, "missing bearer token".into()).into_response();
    };
    if let Err(e) = broker.authenticate_admin(token, Some(client.0)).await {
        return ApiError::from(e).into_response();
    }
    let what = format!("{} {}", req.method(), cap(req.uri().path(), 200));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body too large (the limit is {MAX_BODY} bytes); nothing was changed"),
        )
        .into_response()
    };
    let resp = if declared.is_some_and(|n| n > MAX_BODY as u64) {
        too_large()
    } else if req.method() == axum::http::Method::POST {
        // Bodies are JSON within serde_json's nesting limit, whatever the
        // route's own type would have skipped over.
        let (parts, body) = req.into_parts();
        match axum::body::to_bytes(body, MAX_BODY).await {
            Err(_) => too_large(),
            Ok(bytes) => match (bytes.is_empty(), serde_json::from_slice::<Value>(&bytes)) {
                (false, Err(e)) => {
                    bad(format!("the body is not acceptable JSON ({e}); nothing was changed")).into_response()
                }
                _ => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
            },
        }
    } else {
        next.run(req).await
    };
    if !matches!(resp.status().as_u16(), 400 | 413 | 415 | 422) {
        return resp;
    }
    // Refused input: audited, and answered as JSON like every other error
    // (axum's own extractor rejections are plain text).
    let (resp, why) = match resp.extensions().get::<Refusal>().map(|r| r.0.clone()) {
        Some(why) => (resp, why),
        None => {
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&body).trim().to_string();
            let why = if text.is_empty() { status.to_string() } else { cap(&text, 300) };
            (ApiError(status, why.clone()).into_response(), why)
        }
    };
    let rec =
        AuditRecord::new(Actor::admin(), "api.request", what, Outcome::Deny).reason(why).client(client.to_string());
    broker.audit_refusal(rec).await;
    resp
}

async fn ca(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!({
        "user_ca": b.user_ca_line(),
        "host_ca": b.host_ca_line(),
        "bastion_host_key": b.bastion_host_key_line(),
    })))
}

#[derive(Deserialize)]
struct RotateReq {
    #[serde(default = "default_grace")]
    grace: String,
}

fn default_grace() -> String {
    "24h".into()
}

async fn rotate_ca(State(b): State<Broker>, Json(req): Json<RotateReq>) -> ApiResult {
    let grace = parse_duration(&req.grace)?;
    let r = b.rotate_user_ca(&Actor::admin(), grace).await?;
    Ok(Json(json!({
        "user_ca": b.user_ca_line(),
        "new_fingerprint": r.new_fingerprint,
        "previous_fingerprint": r.previous_fingerprint,
        "previous_trusted_until": gatehouse_broker::access::fmt_time(r.previous_until),
    })))
}

async fn list_users(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!(b.list_users().await?)))
}

#[derive(Deserialize)]
struct AddUser {
    name: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    ssh_keys: Vec<String>,
}

async fn add_user(State(b): State<Broker>, Json(req): Json<AddUser>) -> ApiResult<(StatusCode, Json<Value>)> {
    let role = Role::parse(req.role.as_deref().unwrap_or("user"))?;
    if req.ssh_keys.len() > 32 {
        return Err(bad("at most 32 keys per request"));
    }
    let u = b.add_user(&Actor::admin(), &req.name, role, &req.ssh_keys).await?;
    Ok((StatusCode::CREATED, Json(json!(u))))
}

#[derive(Deserialize)]
struct AddKey {
    ssh_key: String,
}

async fn add_user_key(State(b): State<Broker>, Path(name): Path<String>, Json(req): Json<AddKey>) -> ApiResult {
    Ok(Json(json!(b.add_user_key(&Actor::admin(), &name, &req.ssh_key).await?)))
}

#[derive(Deserialize)]
struct SetRole {
    role: String,
}

async fn set_role(State(b): State<Broker>, Path(name): Path<String>, Json(req): Json<SetRole>) -> ApiResult {
    let role = Role::parse(&req.role)?;
    Ok(Json(json!(b.set_user_role(&Actor::admin(), &name, role).await?)))
}

async fn list_hosts(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!(b.list_hosts().await?)))
}

#[derive(Deserialize)]
struct AddHost {
    name: String,
    address: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    host_key: Option<String>,
    #[serde(default)]
    scan: bool,
    /// No pinned key: the target proves itself with a host certificate
    /// from Gatehouse's host CA (see `host enroll`).
    #[serde(default)]
    trust_host_ca: bool,
}

async fn add_host(State(b): State<Broker>, Json(req): Json<AddHost>) -> ApiResult<(StatusCode, Json<Value>)> {
    gatehouse_broker::hosts::check_address(&req.address)?;
    if req.trust_host_ca && (req.host_key.is_some() || req.scan) {
        return Err(bad("trust_host_ca is for hosts without a pinned key; drop host_key or scan"));
    }
    let (host_key, scanned) = match (req.host_key, req.scan) {
        (Some(_), true) => return Err(bad("give either host_key or scan, not both")),
        (Some(k), false) => (Some(k), None),
        (None, true) => {
            let key = gatehouse_bastion::upstream::scan_host_key(&req.address)
                .await
                .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
            let fp = gatehouse_ca::fingerprint(&key);
            (Some(gatehouse_ca::public_key_line(&key, "")), Some(fp))
        }
        (None, false) if req.trust_host_ca => (None, None),
        (None, false) => {
            return Err(bad(
                "give host_key, scan, or trust_host_ca: Gatehouse never trusts a target's key on first use silently",
            ));
        }
    };
    let host = b
        .add_host(&Actor::admin(), &NewHost { name: req.name, address: req.address, groups: req.groups, host_key })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "host": host, "scanned_fingerprint": scanned }))))
}

#[derive(Deserialize)]
struct ActiveFilter {
    #[serde(default)]
    active: bool,
}

async fn list_grants(State(b): State<Broker>, Query(f): Query<ActiveFilter>) -> ApiResult {
    Ok(Json(json!(b.list_grants(f.active).await?)))
}

#[derive(Deserialize)]
struct AddGrant {
    user: String,
    host: String,
    login: String,
    ttl: String,
    #[serde(default)]
    reason: String,
}

async fn add_grant(State(b): State<Broker>, Json(req): Json<AddGrant>) -> ApiResult<(StatusCode, Json<Value>)> {
    let ttl = parse_duration(&req.ttl)?;
    let g = b.grant_user(&Actor::admin(), &req.user, &req.host, &req.login, ttl, &req.reason).await?;
    Ok((StatusCode::CREATED, Json(json!(g))))
}

async fn revoke_grant(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(b.revoke_grant(&Actor::admin(), &id).await?)))
}

#[derive(Deserialize)]
struct SessionFilter {
    #[serde(default)]
    active: bool,
    #[serde(default)]
    limit: Option<i64>,
}

async fn list_sessions(State(b): State<Broker>, Query(f): Query<SessionFilter>) -> ApiResult {
    Ok(Json(json!(b.list_sessions(f.active, f.limit.unwrap_or(500)).await?)))
}

async fn kill_session(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(b.kill_session(&Actor::admin(), &id, "killed by an administrator").await?)))
}

async fn list_recordings(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!(b.list_recordings(1000).await?)))
}

async fn recording(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(b.recording(&id).await?)))
}

async fn recording_cast(State(b): State<Broker>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let rec = b.recording(&id).await?;
    let bytes = tokio::fs::read(&rec.path)
        .await
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, format!("recording file of {} is unreadable: {e}", rec.id)))?;
    Ok(([(header::CONTENT_TYPE, "application/x-asciicast")], bytes).into_response())
}

#[derive(Deserialize)]
struct AuditParams {
    since: Option<String>,
    until: Option<String>,
    user: Option<String>,
    agent: Option<String>,
    outcome: Option<String>,
    severity: Option<String>,
    action: Option<String>,
    session: Option<String>,
    limit: Option<i64>,
}

/// `30m`/`24h` ago, or Unix milliseconds, or an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        let ms = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| bad("time before 1970"))?.as_millis();
        return i64::try_from(ms).map_err(|_| bad("time out of range"));
    }
    let d: Duration =
        parse_duration(s).map_err(|_| bad(format!("{s:?} is neither a duration (30m, 24h) nor a time")))?;
    Ok(gatehouse_broker::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
}

async fn audit(State(b): State<Broker>, Query(p): Query<AuditParams>) -> ApiResult {
    if let Some(o) = &p.outcome
        && !matches!(o.as_str(), "allow" | "deny" | "error")
    {
        return Err(bad("outcome must be allow, deny or error"));
    }
    let (actor, actor_kind) = match (p.user, p.agent) {
        (Some(_), Some(_)) => return Err(bad("filter by user or by agent, not both")),
        (Some(u), None) => (Some(u), Some("user".to_string())),
        (None, Some(a)) => (Some(a), Some("agent".to_string())),
        (None, None) => (None, None),
    };
    let q = AuditQuery {
        since_ms: p.since.as_deref().map(parse_time).transpose()?,
        until_ms: p.until.as_deref().map(parse_time).transpose()?,
        actor,
        actor_kind,
        outcome: p.outcome,
        severity: p.severity,
        action: p.action,
        session_id: p.session,
        limit: p.limit,
    };
    Ok(Json(json!(b.audit_query(&q).await?)))
}

async fn audit_verify(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!(b.audit_verify().await?)))
}

#[derive(Deserialize)]
struct ExportParams {
    since: Option<String>,
    until: Option<String>,
}

/// Evidence: the events in a window with their hashes, and the chain as
/// verified at export time (its head covers every earlier event).
async fn audit_export(State(b): State<Broker>, Query(p): Query<ExportParams>) -> ApiResult {
    let chain = b.audit_verify().await?;
    let q = AuditQuery {
        since_ms: p.since.as_deref().map(parse_time).transpose()?,
        until_ms: p.until.as_deref().map(parse_time).transpose()?,
        limit: Some(100_000),
        ..Default::default()
    };
    let events = b.audit_query(&q).await?;
    Ok(Json(json!({ "events": events, "chain": chain, "exported_at": gatehouse_broker::now_ms() })))
}
