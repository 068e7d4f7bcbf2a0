//! Gatehouse's MCP front door: the agents' way in. Streamable HTTP at `/mcp`
//! (bearer tokens or signed requests, checked on every request), a small
//! signed REST surface for the local stdio bridge, and the bridge itself.
//! Every tool call is scope-checked at call time and audited, allowed or not.
#![forbid(unsafe_code)]

mod auth;
pub use auth::query_has_credential;
pub mod bridge;
pub mod client_ip;
pub mod clients;
mod error;
mod rest;
mod server;
mod tools;
mod tools_approvals;
mod tools_pki;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use gatehouse_bastion::exec::ExecSessions;
use gatehouse_broker::Broker;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

pub use error::McpError;
pub use tools::{TOOL_NAMES, check_arguments, tool_scope};

/// MCP settings.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Browser origins allowed to call `/mcp` (empty: any request carrying an
    /// `Origin` header is refused with 403).
    pub allowed_origins: Vec<String>,
    /// `Host` header values accepted (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// Cap on `ttl_seconds` of agent SSH sessions.
    pub max_session_ttl: Duration,
    /// Per-stream cap on `gatehouse_ssh_exec` output returned to the agent.
    pub max_exec_output: usize,
    /// Longest `timeout_seconds` an exec may ask for.
    pub max_exec_timeout: Duration,
    /// Largest tool-call arguments accepted, in bytes of JSON.
    pub max_arguments_bytes: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            max_session_ttl: Duration::from_secs(3600),
            max_exec_output: 64 * 1024,
            max_exec_timeout: Duration::from_secs(600),
            max_arguments_bytes: 256 * 1024,
        }
    }
}

/// Shared state of the MCP endpoints.
#[derive(Clone)]
pub struct McpState {
    pub broker: Broker,
    pub exec: ExecSessions,
    pub cfg: Arc<McpConfig>,
    /// Which agent opened which MCP session: a session id is only good for
    /// the agent it was issued to.
    session_owners: Arc<Mutex<HashMap<String, String>>>,
}

impl McpState {
    pub fn new(broker: Broker, exec: ExecSessions, cfg: McpConfig) -> Self {
        Self { broker, exec, cfg: Arc::new(cfg), session_owners: Arc::default() }
    }
}

/// The routes to merge into the HTTP listener: `/mcp`, the bridge's
/// `/api/agent/v1/*`, and real 404s on the OAuth discovery paths so clients
/// such as Claude Code accept a static `Authorization` header.
pub fn router(state: McpState) -> Router {
    let mcp_state = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(server::GatehouseMcp::new(mcp_state.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_allowed_hosts(state.cfg.allowed_hosts.clone())
            .with_max_request_body_bytes(state.cfg.max_arguments_bytes + 64 * 1024)
            .with_cancellation_token(state.broker.shutdown_token().child_token()),
    );
    let authed = Router::new()
        .nest_service("/mcp", service)
        .route("/api/agent/v1/tools/list", post(rest::list_tools))
        .route("/api/agent/v1/tools/call", post(rest::call_tool))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate));
    let well_known = Router::new()
        .route("/.well-known/oauth-protected-resource", any(not_found))
        .route("/.well-known/oauth-protected-resource/{*rest}", any(not_found))
        .route("/.well-known/oauth-authorization-server", any(not_found))
        .route("/.well-known/oauth-authorization-server/{*rest}", any(not_found))
        .route("/.well-known/openid-configuration", any(not_found))
        .route("/.well-known/openid-configuration/{*rest}", any(not_found));
    Router::new()
        .merge(authed)
        .merge(well_known)
        .route("/api/agent/v1/enroll", post(rest::enroll))
        .route("/api/agent/v1/health", get(|| async { "ok" }))
        .with_state(state)
}

async fn not_found() -> (axum::http::StatusCode, &'static str) {
    (axum::http::StatusCode::NOT_FOUND, "Not Found")
}
