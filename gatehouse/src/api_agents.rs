//! Admin API for agents and their tokens.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use gatehouse_broker::agents::NewAgent;
use gatehouse_broker::{Actor, Broker, parse_duration};
use gatehouse_mcp::client_ip::ClientIp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::ApiResult;

pub fn routes() -> Router<Broker> {
    Router::new()
        .route("/api/v1/agents", get(list).post(create))
        .route("/api/v1/agents/{name}", get(show))
        .route("/api/v1/agents/{name}/rename", post(rename))
        .route("/api/v1/agents/{name}/status", post(set_status))
        .route("/api/v1/agents/{name}/bootstrap", post(bootstrap))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}/revoke", post(revoke_token))
        .merge(approval_routes())
}

async fn list(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!(b.list_agents().await?)))
}

#[derive(Deserialize)]
struct Create {
    name: String,
    owner: String,
    scopes: Vec<String>,
    groups: Vec<String>,
    #[serde(default)]
    risk: Option<String>,
}

async fn create(State(b): State<Broker>, Json(r): Json<Create>) -> ApiResult<(StatusCode, Json<Value>)> {
    let a = b
        .create_agent(
            &Actor::admin(),
            &NewAgent {
                name: r.name,
                owner: r.owner,
                scopes: r.scopes,
                groups: r.groups,
                risk: r.risk.unwrap_or_else(|| "medium".into()),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!(a))))
}

async fn show(State(b): State<Broker>, Path(name): Path<String>) -> ApiResult {
    let agent = b.agent(&name).await?;
    let tokens: Vec<Value> = b
        .list_agent_tokens()
        .await?
        .into_iter()
        .filter(|(t, _)| t.subject_id == agent.id)
        .map(|(t, _)| json!(t))
        .collect();
    let sessions: Vec<Value> = b
        .list_sessions(false, 10_000)
        .await?
        .into_iter()
        .filter(|s| s.subject_kind == "agent" && s.subject_name == agent.name)
        .take(20)
        .map(|s| json!(s))
        .collect();
    Ok(Json(json!({ "agent": agent, "tokens": tokens, "recent_sessions": sessions })))
}

#[derive(Deserialize)]
struct Rename {
    new_name: String,
}

async fn rename(State(b): State<Broker>, Path(name): Path<String>, Json(r): Json<Rename>) -> ApiResult {
    Ok(Json(json!(b.rename_agent(&Actor::admin(), &name, &r.new_name).await?)))
}

#[derive(Deserialize)]
struct Status {
    status: String,
}

async fn set_status(State(b): State<Broker>, Path(name): Path<String>, Json(r): Json<Status>) -> ApiResult {
    Ok(Json(json!(b.set_agent_status(&Actor::admin(), &name, &r.status).await?)))
}

#[derive(Deserialize)]
struct Bootstrap {
    #[serde(default)]
    ttl: Option<String>,
}

async fn bootstrap(
    State(b): State<Broker>,
    Path(name): Path<String>,
    Json(r): Json<Bootstrap>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ttl = parse_duration(r.ttl.as_deref().unwrap_or("1h"))?;
    let (info, secret) = b.agent_bootstrap_token(&Actor::admin(), &name, ttl).await?;
    Ok((StatusCode::CREATED, Json(json!({ "token": secret.expose(), "info": info }))))
}

async fn list_tokens(State(b): State<Broker>) -> ApiResult {
    let v: Vec<Value> = b
        .list_agent_tokens()
        .await?
        .into_iter()
        .map(|(t, agent)| {
            let mut v = json!(t);
            if let Some(o) = v.as_object_mut() {
                o.insert("agent".into(), json!(agent));
            }
            v
        })
        .collect();
    Ok(Json(json!(v)))
}

#[derive(Deserialize)]
struct CreateToken {
    agent: String,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    cidrs: Vec<String>,
    #[serde(default)]
    single_use: bool,
}

async fn create_token(State(b): State<Broker>, Json(r): Json<CreateToken>) -> ApiResult<(StatusCode, Json<Value>)> {
    let ttl = parse_duration(r.ttl.as_deref().unwrap_or("48h"))?;
    let (info, secret) = b.create_agent_token(&Actor::admin(), &r.agent, ttl, &r.cidrs, r.single_use).await?;
    Ok((StatusCode::CREATED, Json(json!({ "token": secret.expose(), "info": info }))))
}

async fn revoke_token(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(b.revoke_token(&Actor::admin(), &id).await?)))
}

/// `gatehouse approvals …`: agents' action approvals and pending access
/// requests, decided by the admin (an agent can never approve).
pub fn approval_routes() -> Router<Broker> {
    Router::new()
        .route("/api/v1/approvals", get(list_approvals))
        .route("/api/v1/approvals/{id}/approve", post(approve_any))
        .route("/api/v1/approvals/{id}/deny", post(deny_any))
}

async fn list_approvals(State(b): State<Broker>) -> ApiResult {
    let actions = b.list_action_approvals(true).await?;
    let access = b.list_access_requests(Some("pending"), None, 1000).await?;
    Ok(Json(json!({ "actions": actions, "access_requests": access })))
}

#[derive(Deserialize, Default)]
struct Decision {
    #[serde(default)]
    reason: String,
}

async fn decide_any(b: &Broker, peer: std::net::IpAddr, id: &str, approve: bool, reason: &str) -> ApiResult {
    if id.starts_with("ap_") {
        Ok(Json(json!(b.decide_action_approval(&Actor::admin(), id, approve, reason).await?)))
    } else {
        let approver = gatehouse_broker::policy::Approver::Admin;
        Ok(Json(json!(b.decide_request(&approver, id, approve, reason, &peer.to_string()).await?)))
    }
}

async fn approve_any(
    State(b): State<Broker>,
    ClientIp(peer): ClientIp,
    Path(id): Path<String>,
    Json(r): Json<Decision>,
) -> ApiResult {
    decide_any(&b, peer, &id, true, &r.reason).await
}

async fn deny_any(
    State(b): State<Broker>,
    ClientIp(peer): ClientIp,
    Path(id): Path<String>,
    Json(r): Json<Decision>,
) -> ApiResult {
    decide_any(&b, peer, &id, false, &r.reason).await
}
