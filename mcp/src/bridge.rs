//! The local bridge an AI client spawns (`gatehouse mcp stdio`): MCP over
//! stdio on one side, the broker on the other, every call signed with the
//! agent's own Ed25519 key (method, path, timestamp, nonce, body hash). The
//! key is made on the agent's machine by `gatehouse agent enroll` and never
//! leaves it; only its public half was ever sent, once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer;
use gatehouse_broker::agents::signing_string;
use rand::RngExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorCode, ListToolsResult, PaginatedRequestParams,
    ProtocolVersion, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::McpError;
use crate::auth::{H_AGENT, H_NONCE, H_SIGNATURE, H_TIMESTAMP};

/// What `gatehouse agent enroll` leaves on the agent's machine (no secrets:
/// the key lives in its own 0600 file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    pub url: String,
    pub agent: String,
    pub key_file: PathBuf,
}

/// `$GATEHOUSE_AGENT_DIR`, else `$XDG_CONFIG_HOME/gatehouse`, else `~/.config/gatehouse`.
pub fn default_dir() -> PathBuf {
    if let Ok(d) = std::env::var("GATEHOUSE_AGENT_DIR")
        && !d.is_empty()
    {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("XDG_CONFIG_HOME")
        && !d.is_empty()
    {
        return PathBuf::from(d).join("gatehouse");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".config").join("gatehouse")
}

/// How the bridge proves who it is.
pub enum BridgeAuth {
    /// Signed requests with the enrolled key.
    Signed { agent: String, key: Box<ed25519_dalek::SigningKey> },
    /// A bearer token (from `GATEHOUSE_MCP_TOKEN`).
    Bearer(Zeroizing<String>),
}

impl std::fmt::Debug for BridgeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeAuth::Signed { agent, .. } => write!(f, "Signed({agent}, <key redacted>)"),
            BridgeAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

fn local(e: impl std::fmt::Display) -> McpError {
    McpError::Local(e.to_string())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), McpError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| McpError::Local(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes).map_err(local)?;
    f.sync_all().map_err(local)
}

fn load_signing_key(path: &Path) -> Result<ed25519_dalek::SigningKey, McpError> {
    let pem = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| McpError::Local(format!("cannot read the agent key {}: {e}", path.display())))?,
    );
    let key = gatehouse_ca::ssh_key::PrivateKey::from_openssh(pem.as_bytes()).map_err(local)?;
    let kp = key.key_data().ed25519().ok_or_else(|| McpError::Local("the agent key is not Ed25519".into()))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(kp.private.as_ref()))
}

/// Talks to the broker for the bridge.
pub struct Bridge {
    http: reqwest::Client,
    url: String,
    auth: BridgeAuth,
    /// One id per bridge process, so the audit log groups its calls.
    session_id: String,
}

impl Bridge {
    pub fn new(url: &str, auth: BridgeAuth) -> Result<Self, McpError> {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(700)).build().map_err(local)?;
        let n: u64 = rand::rng().random();
        Ok(Self { http, url: url.trim_end_matches('/').to_string(), auth, session_id: format!("bridge-{n:016x}") })
    }

    /// From an enrolled agent config directory.
    pub fn from_dir(dir: &Path) -> Result<Self, McpError> {
        let cfg_path = dir.join("agent.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            McpError::Local(format!(
                "{} is missing ({e}); run `gatehouse agent enroll --url URL TOKEN` first",
                cfg_path.display()
            ))
        })?;
        let cfg: AgentConfig =
            serde_json::from_str(&text).map_err(|e| McpError::Local(format!("{}: {e}", cfg_path.display())))?;
        let key = load_signing_key(&cfg.key_file)?;
        Self::new(&cfg.url, BridgeAuth::Signed { agent: cfg.agent, key: Box::new(key) })
    }

    /// POST a JSON body, signed or with the bearer token.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, McpError> {
        let bytes = serde_json::to_vec(body).map_err(local)?;
        let mut req = self.http.post(format!("{}{path}", self.url)).header("content-type", "application/json");
        match &self.auth {
            BridgeAuth::Bearer(t) => req = req.bearer_auth(t.as_str()),
            BridgeAuth::Signed { agent, key } => {
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let nonce: [u8; 16] = rand::rng().random();
                let nonce = hex::encode(nonce);
                let msg = signing_string("POST", path, ts, &nonce, &hex::encode(Sha256::digest(&bytes)));
                let sig = key.sign(msg.as_bytes());
                req = req
                    .header(H_AGENT, agent.as_str())
                    .header(H_TIMESTAMP, ts.to_string())
                    .header(H_NONCE, nonce)
                    .header(H_SIGNATURE, B64.encode(sig.to_bytes()));
            }
        }
        let resp = req
            .body(bytes)
            .send()
            .await
            .map_err(|e| McpError::Unreachable { url: self.url.clone(), reason: e.to_string() })?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(McpError::Unauthorized(v["error"].as_str().unwrap_or("refused").to_string()));
        }
        if !status.is_success() {
            return Err(McpError::Refused(
                v["error"].as_str().map(str::to_string).unwrap_or_else(|| format!("HTTP {status}")),
            ));
        }
        Ok(v)
    }

    pub async fn list_tools(&self) -> Result<Vec<Tool>, McpError> {
        let v = self.post("/api/agent/v1/tools/list", &json!({"mcp_session": self.session_id})).await?;
        serde_json::from_value(v["tools"].clone()).map_err(|e| McpError::Refused(format!("bad tool list: {e}")))
    }

    pub async fn call_tool(
        &self,
        name: &str,
        arguments: Option<Value>,
    ) -> Result<Result<CallToolResult, ErrorData>, McpError> {
        let v = self
            .post(
                "/api/agent/v1/tools/call",
                &json!({"name": name, "arguments": arguments, "mcp_session": self.session_id}),
            )
            .await?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let code = err["code"].as_i64().and_then(|c| i32::try_from(c).ok()).unwrap_or(-32603);
            let message = err["message"].as_str().unwrap_or("error").to_string();
            return Ok(Err(ErrorData::new(ErrorCode(code), message, None)));
        }
        serde_json::from_value(v["result"].clone())
            .map(Ok)
            .map_err(|e| McpError::Refused(format!("bad tool result: {e}")))
    }
}

/// Make a key on this machine, register its public half with the bootstrap
/// token, and write `agent.json`. Returns the agent name.
pub async fn enroll(url: &str, bootstrap_token: &str, dir: &Path) -> Result<AgentConfig, McpError> {
    std::fs::create_dir_all(dir).map_err(|e| McpError::Local(format!("cannot create {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(local)?;
    }
    let key_file = dir.join("agent_ed25519");
    if key_file.exists() {
        return Err(McpError::Local(format!("{} already exists; remove it to enrol again", key_file.display())));
    }
    let key = gatehouse_ca::generate_ed25519();
    let public = gatehouse_ca::public_key_line(key.public_key(), "gatehouse-agent");
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().map_err(local)?;
    let base = url.trim_end_matches('/');
    let resp = http
        .post(format!("{base}/api/agent/v1/enroll"))
        .bearer_auth(bootstrap_token.trim())
        .json(&json!({ "public_key": public }))
        .send()
        .await
        .map_err(|e| McpError::Unreachable { url: base.to_string(), reason: e.to_string() })?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = v["error"].as_str().unwrap_or("refused").to_string();
        return Err(if status == reqwest::StatusCode::UNAUTHORIZED {
            McpError::Unauthorized(msg)
        } else {
            McpError::Refused(msg)
        });
    }
    let agent = v["agent"].as_str().ok_or_else(|| McpError::Refused("no agent name in the answer".into()))?.to_string();
    let pem = key.to_openssh(gatehouse_ca::ssh_key::LineEnding::LF).map_err(local)?;
    write_private(&key_file, pem.as_bytes())?;
    let cfg = AgentConfig { url: base.to_string(), agent, key_file };
    let cfg_path = dir.join("agent.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).map_err(local)?).map_err(local)?;
    Ok(cfg)
}

/// The MCP server the AI client talks to over stdio.
struct BridgeServer {
    bridge: Arc<Bridge>,
}

fn relay_error(e: McpError) -> ErrorData {
    ErrorData::internal_error(format!("gatehouse bridge: {e}"), None)
}

impl ServerHandler for BridgeServer {
    fn get_info(&self) -> ServerConfig {
        crate::server::server_info()
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self.bridge.list_tools().await.map_err(relay_error)?;
        Ok(ListToolsResult { tools, ..Default::default() })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.map(Value::Object);
        match self.bridge.call_tool(&request.name, args).await.map_err(relay_error)? {
            Ok(r) => Ok(r.into()),
            Err(e) => Err(e),
        }
    }
}

/// Serve MCP on stdin/stdout until the client goes away.
pub async fn run_stdio(bridge: Bridge) -> Result<(), McpError> {
    let server = BridgeServer { bridge: Arc::new(bridge) };
    let running = server.serve(rmcp::transport::stdio()).await.map_err(|e| McpError::Local(format!("stdio: {e}")))?;
    running.waiting().await.map_err(|e| McpError::Local(format!("stdio: {e}")))?;
    Ok(())
}
