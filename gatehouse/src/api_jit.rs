//! Admin API routes for just-in-time access: policies, access requests and
//! approvals, webhooks. Merged into the admin router (behind the admin
//! token) by `api::router`. Admin approvals count as one approver
//! ("admin"), who is never the requester.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use gatehouse_broker::access::{NewAccessRequest, Requester};
use gatehouse_broker::policy::{Approver, parse_instant};
use gatehouse_broker::{Actor, Broker, BrokerError, parse_duration};
use gatehouse_mcp::client_ip::ClientIp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::ApiError;

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub fn routes() -> Router<Broker> {
    Router::new()
        .route("/api/v1/policies", get(list_policies))
        .route("/api/v1/policies/{group}", get(show_policy).post(set_policy))
        .route("/api/v1/policies/{group}/remove", post(remove_policy))
        .route("/api/v1/policy-test", post(test_policy))
        .route("/api/v1/access", get(list_access).post(file_access))
        .route("/api/v1/access/{id}", get(show_access))
        .route("/api/v1/access/{id}/approve", post(approve))
        .route("/api/v1/access/{id}/deny", post(deny))
        .route("/api/v1/access/{id}/cancel", post(cancel))
        .route("/api/v1/webhooks", get(list_webhooks).post(add_webhook))
        .route("/api/v1/webhooks/{id}/remove", post(remove_webhook))
        .route("/api/v1/webhooks/{id}/deliveries", get(deliveries))
}

async fn list_policies(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!(b.list_policies().await?)))
}

async fn show_policy(State(b): State<Broker>, Path(group): Path<String>) -> ApiResult {
    Ok(Json(json!(b.policy(&group).await?)))
}

#[derive(Deserialize)]
struct SetPolicy {
    source: String,
}

async fn set_policy(State(b): State<Broker>, Path(group): Path<String>, Json(req): Json<SetPolicy>) -> ApiResult {
    Ok(Json(json!(b.set_policy(&Actor::admin(), &group, &req.source).await?)))
}

async fn remove_policy(State(b): State<Broker>, Path(group): Path<String>) -> ApiResult {
    b.remove_policy(&Actor::admin(), &group).await?;
    Ok(Json(json!({"removed": group})))
}

#[derive(Deserialize)]
struct TestPolicy {
    user: Option<String>,
    agent: Option<String>,
    host: String,
    login: String,
    ttl: Option<String>,
    #[serde(default)]
    reason: String,
    at: Option<String>,
    from: Option<String>,
}

async fn requester(b: &Broker, user: Option<String>, agent: Option<String>) -> ApiResult<Requester> {
    match (user, agent) {
        (Some(u), None) => {
            let u =
                b.user_by_name(&u).await?.ok_or_else(|| ApiError::from(BrokerError::NotFound(format!("user {u}"))))?;
            Ok(Requester::User(u))
        }
        (None, Some(a)) => {
            let a = b
                .agent_ref(&a)
                .await?
                .ok_or_else(|| ApiError::from(BrokerError::NotFound(format!("active agent {a}"))))?;
            Ok(Requester::Agent(a))
        }
        _ => Err(bad("name exactly one of user or agent")),
    }
}

/// What policy would decide, and why; nothing is filed or audited.
async fn test_policy(State(b): State<Broker>, Json(req): Json<TestPolicy>) -> ApiResult {
    let who = requester(&b, req.user, req.agent).await?;
    if let Some(f) = &req.from
        && gatehouse_broker::access::client_ip(f).is_none()
    {
        return Err(bad(format!("from: {f:?} is not an IP address")));
    }
    let at = req.at.as_deref().map(parse_instant).transpose().map_err(bad)?;
    let ttl = req.ttl.as_deref().map(parse_duration).transpose()?;
    let host = b.host_by_name(&req.host).await?;
    let canary = match &host {
        Some(h) => b.is_canary(h).await?,
        None => false,
    };
    let eval = b
        .evaluate_access(
            &who,
            &NewAccessRequest {
                host: req.host.clone(),
                login: req.login.clone(),
                ttl,
                reason: req.reason.clone(),
                client_addr: req.from.clone().unwrap_or_default(),
                ..Default::default()
            },
            at,
        )
        .await?;
    Ok(Json(json!({
        "requester": format!("{}:{}", who.kind(), who.name()),
        "host": req.host,
        "host_groups": host.map(|h| h.groups).unwrap_or_default(),
        "canary": canary,
        "at": at.unwrap_or_else(gatehouse_broker::now_ms),
        "decision": eval.decision,
        "trace": eval.trace,
    })))
}

#[derive(Deserialize)]
struct AccessFilter {
    status: Option<String>,
    limit: Option<i64>,
}

async fn list_access(State(b): State<Broker>, Query(f): Query<AccessFilter>) -> ApiResult {
    Ok(Json(json!(b.list_access_requests(f.status.as_deref(), None, f.limit.unwrap_or(500)).await?)))
}

async fn show_access(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(b.access_request(&id).await?)))
}

#[derive(Deserialize)]
struct FileAccess {
    user: String,
    host: String,
    login: String,
    ttl: Option<String>,
    #[serde(default)]
    reason: String,
}

/// File a request on a user's behalf (policy decides as for the user; the
/// source-address rule sees the admin client's address).
async fn file_access(
    State(b): State<Broker>,
    ClientIp(peer): ClientIp,
    Json(req): Json<FileAccess>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = requester(&b, Some(req.user), None).await?;
    let ttl = req.ttl.as_deref().map(parse_duration).transpose()?;
    let r = b
        .request_access(
            &who,
            &Actor::admin(),
            NewAccessRequest {
                host: req.host,
                login: req.login,
                ttl,
                reason: req.reason,
                client_addr: peer.to_string(),
                ..Default::default()
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!(r))))
}

#[derive(Deserialize, Default)]
struct Decide {
    #[serde(default)]
    reason: String,
}

async fn approve(
    State(b): State<Broker>,
    ClientIp(peer): ClientIp,
    Path(id): Path<String>,
    Json(req): Json<Decide>,
) -> ApiResult {
    Ok(Json(json!(b.decide_request(&Approver::Admin, &id, true, &req.reason, &peer.to_string()).await?)))
}

async fn deny(
    State(b): State<Broker>,
    ClientIp(peer): ClientIp,
    Path(id): Path<String>,
    Json(req): Json<Decide>,
) -> ApiResult {
    Ok(Json(json!(b.decide_request(&Approver::Admin, &id, false, &req.reason, &peer.to_string()).await?)))
}

async fn cancel(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(b.cancel_request(&Actor::admin(), None, &id).await?)))
}

async fn list_webhooks(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!(b.list_webhooks().await?)))
}

#[derive(Deserialize)]
struct AddWebhook {
    url: String,
    events: Vec<String>,
    /// Never logged, never returned.
    secret: Option<String>,
}

async fn add_webhook(State(b): State<Broker>, Json(req): Json<AddWebhook>) -> ApiResult<(StatusCode, Json<Value>)> {
    let secret = req.secret.map(zeroize::Zeroizing::new);
    let h = b.add_webhook(&Actor::admin(), &req.url, &req.events, secret.as_ref().map(|s| s.as_bytes())).await?;
    Ok((StatusCode::CREATED, Json(json!(h))))
}

async fn remove_webhook(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(b.remove_webhook(&Actor::admin(), &id).await?)))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn deliveries(State(b): State<Broker>, Path(id): Path<String>, Query(l): Query<Limit>) -> ApiResult {
    Ok(Json(json!(b.webhook_deliveries(&id, l.limit.unwrap_or(200)).await?)))
}
