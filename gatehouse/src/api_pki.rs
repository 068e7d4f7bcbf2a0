//! HTTP routes for certificates, host enrolment and probes.
//!
//! Admin routes (bearer admin token) under `/api/v1/pki`, `/api/v1/probes`
//! and `/api/v1/hosts/{name}/…`; public routes: the CRL and the root at
//! `/pki/crl.pem` and `/pki/root.pem`, and the enrolment endpoints a target
//! calls with its one-time token or its current certificate.

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gatehouse_bastion::BastionError;
use gatehouse_bastion::probe::{self, ProbeRequest};
use gatehouse_broker::probes::ProbeKind;
use gatehouse_broker::{Actor, Broker, BrokerError, parse_duration};
use gatehouse_mcp::client_ip::ClientIp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiError, bearer, query_has_credential, require_admin};

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn bastion_err(e: BastionError) -> ApiError {
    match e {
        BastionError::Broker(b) => ApiError::from(b),
        other => ApiError(StatusCode::BAD_GATEWAY, other.to_string()),
    }
}

/// The routes, to merge into the main router.
pub fn routes(broker: Broker) -> Router<Broker> {
    let admin = Router::new()
        .route("/api/v1/pki/ca", get(ca))
        .route("/api/v1/pki/domains", get(domains).post(allow))
        .route("/api/v1/pki/domains/remove", post(disallow))
        .route("/api/v1/pki/sign", post(sign))
        .route("/api/v1/pki/certificates", get(list))
        .route("/api/v1/pki/certificates/{name}", get(latest))
        .route("/api/v1/pki/certificates/{name}/revoke", post(revoke))
        .route("/api/v1/hosts/{name}/enroll-token", post(enroll_token))
        .route("/api/v1/hosts/{name}/certificates", get(host_certificates))
        .route("/api/v1/probes", get(list_probes).post(create_probe))
        .route("/api/v1/probes/{id}", get(get_probe))
        .route("/api/v1/probes/{id}/run", post(run_probe))
        .route("/api/v1/probes/{id}/delete", post(delete_probe))
        .route_layer(middleware::from_fn_with_state(broker, require_admin));
    Router::new()
        .route("/pki/crl.pem", get(crl))
        .route("/pki/root.pem", get(root))
        .route("/api/v1/enroll/host", post(enroll))
        .route("/api/v1/enroll/host/renew", post(renew))
        .merge(admin)
}

fn pem_response(body: String, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

async fn crl(State(b): State<Broker>) -> Result<Response, ApiError> {
    Ok(pem_response(b.crl_pem().await?, "application/x-pem-file"))
}

async fn root(State(b): State<Broker>) -> Response {
    pem_response(b.pki_root_pem().to_string(), "application/x-pem-file")
}

async fn ca(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!({"root_pem": b.pki_root_pem(), "chain_pem": b.pki_chain_pem()})))
}

async fn domains(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!(b.pki_domains(None).await?)))
}

#[derive(Deserialize)]
struct Allow {
    group: String,
    domain: String,
    #[serde(default)]
    max_ttl: Option<String>,
}

async fn allow(State(b): State<Broker>, Json(req): Json<Allow>) -> ApiResult<(StatusCode, Json<Value>)> {
    let ttl = req.max_ttl.as_deref().map(parse_duration).transpose()?;
    let rule = b.pki_allow(&Actor::admin(), &req.group, &req.domain, ttl).await?;
    Ok((StatusCode::CREATED, Json(json!(rule))))
}

#[derive(Deserialize)]
struct Disallow {
    group: String,
    domain: String,
}

async fn disallow(State(b): State<Broker>, Json(req): Json<Disallow>) -> ApiResult {
    b.pki_disallow(&Actor::admin(), &req.group, &req.domain).await?;
    Ok(Json(json!({"removed": true})))
}

#[derive(Deserialize)]
struct Sign {
    csr_pem: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
}

async fn sign(State(b): State<Broker>, Json(req): Json<Sign>) -> ApiResult<(StatusCode, Json<Value>)> {
    let ttl = req.ttl.as_deref().map(parse_duration).transpose()?;
    let bundle = b.sign_csr(&Actor::admin(), None, req.name.as_deref(), &req.csr_pem, ttl).await?;
    Ok((StatusCode::CREATED, Json(json!(bundle))))
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(default)]
    expiring_within: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn list(State(b): State<Broker>, Query(p): Query<ListParams>) -> ApiResult {
    let within = p.expiring_within.as_deref().map(parse_duration).transpose()?;
    Ok(Json(json!(b.list_certificates(None, within, p.all).await?)))
}

async fn latest(State(b): State<Broker>, Path(name): Path<String>) -> ApiResult {
    Ok(Json(json!(b.get_certificate(&Actor::admin(), None, &name).await?)))
}

#[derive(Deserialize)]
struct Revoke {
    reason: String,
}

async fn revoke(State(b): State<Broker>, Path(serial): Path<String>, Json(req): Json<Revoke>) -> ApiResult {
    Ok(Json(json!(b.revoke_certificate(&Actor::admin(), None, &serial, &req.reason).await?)))
}

async fn enroll_token(State(b): State<Broker>, Path(name): Path<String>) -> ApiResult<(StatusCode, Json<Value>)> {
    let t = b.create_enroll_token(&Actor::admin(), &name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": t.secret.expose(),
            "token_id": t.token_id,
            "host": t.host,
            "expires_at": t.expires_at,
        })),
    ))
}

async fn host_certificates(State(b): State<Broker>, Path(name): Path<String>) -> ApiResult {
    Ok(Json(json!(b.host_certificates(&name).await?)))
}

#[derive(Deserialize)]
struct Enroll {
    public_key: String,
}

async fn enroll(
    State(b): State<Broker>,
    ClientIp(peer): ClientIp,
    req: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if query_has_credential(&req) {
        crate::api::audit_query_credential(&b, ClientIp(peer), "host enrolment").await;
        return Err(bad("credentials are not accepted in the query string; use the Authorization header"));
    }
    let Some(token) = bearer(req.headers()).map(str::to_string) else {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "missing enrolment token".into()));
    };
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024).await.map_err(|_| bad("request body too large"))?;
    let body: Enroll =
        serde_json::from_slice(&body).map_err(|_| bad("expected JSON {\"public_key\": \"ssh-ed25519 …\"}"))?;
    let issued = b.enroll_host(&token, &body.public_key, Some(peer)).await.map_err(|e| match e {
        BrokerError::Unauthorized(_) => ApiError(
            StatusCode::UNAUTHORIZED,
            "enrolment token refused (unknown, expired or already used): ask for a new one with \
             `gatehouse host enroll-token HOST`"
                .into(),
        ),
        other => ApiError::from(other),
    })?;
    Ok((StatusCode::CREATED, Json(json!(issued))))
}

#[derive(Deserialize)]
struct Renew {
    certificate: String,
    time: u64,
    signature: String,
}

async fn renew(
    State(b): State<Broker>,
    ClientIp(peer): ClientIp,
    Json(req): Json<Renew>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // The reasons name no secret and tell the operator what to do.
    let issued = b.renew_host_certificate(&req.certificate, req.time, &req.signature, Some(peer)).await.map_err(
        |e| match e {
            BrokerError::Unauthorized(why) => ApiError(StatusCode::UNAUTHORIZED, format!("renewal refused: {why}")),
            other => ApiError::from(other),
        },
    )?;
    Ok((StatusCode::CREATED, Json(json!(issued))))
}

#[derive(Deserialize)]
struct CreateProbe {
    target: String,
    kind: String,
    #[serde(default)]
    expect_certificate_name: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    /// Limit the probe to these groups, as an agent with them would be.
    #[serde(default)]
    groups: Vec<String>,
}

async fn create_probe(State(b): State<Broker>, Json(req): Json<CreateProbe>) -> ApiResult<(StatusCode, Json<Value>)> {
    let kind = ProbeKind::parse(&req.kind)?;
    let interval = req.interval.as_deref().map(parse_duration).transpose()?;
    let groups = (!req.groups.is_empty()).then_some(req.groups);
    let p = probe::create_probe(
        &b,
        &Actor::admin(),
        groups.as_deref(),
        &ProbeRequest {
            target: req.target,
            kind,
            expect_certificate_name: req.expect_certificate_name.filter(|n| !n.is_empty()),
            interval,
        },
    )
    .await
    .map_err(bastion_err)?;
    Ok((StatusCode::CREATED, Json(json!(p))))
}

async fn list_probes(State(b): State<Broker>) -> ApiResult {
    Ok(Json(json!(b.list_probes(None).await?)))
}

async fn get_probe(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(probe::get_probe(&b, &Actor::admin(), None, &id).await.map_err(bastion_err)?)))
}

async fn run_probe(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(probe::run_probe_now(&b, &Actor::admin(), None, &id).await.map_err(bastion_err)?)))
}

async fn delete_probe(State(b): State<Broker>, Path(id): Path<String>) -> ApiResult {
    let p = b.delete_probe(&Actor::admin(), &id).await.map_err(|e: BrokerError| ApiError::from(e))?;
    Ok(Json(json!(p)))
}
