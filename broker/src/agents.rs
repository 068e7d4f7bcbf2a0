//! AI agents: a separate identity class with an owner, narrow scopes and
//! host groups. An agent never holds a key to a target; it holds a scoped,
//! expiring, revocable right to ask (a bearer token or an enrolled Ed25519
//! signing key on its own machine).

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ipnet::IpNet;
use serde::Serialize;
use sqlx::Row;

use crate::audit::{Actor, AuditRecord, Outcome, Severity};
use crate::error::{BrokerError, Result};
use crate::tokens::{self, NewToken, Secret, TokenInfo, TokenKind};
use crate::{Broker, ids, now_ms};

/// Every scope an agent may hold. Nothing an agent says can widen them.
pub const SCOPES: &[&str] = &[
    "host:read",
    "ssh_session:request",
    "approval:request",
    "audit:read",
    "audit:write",
    "certificate:read",
    "certificate:request",
    "probe:create",
    "probe:read",
];

pub const RISKS: &[&str] = &["low", "medium", "high"];

/// Longest an agent token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// How far a signed request's timestamp may be from the broker's clock.
pub const SIGNATURE_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub groups: Vec<String>,
    pub risk: String,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    /// Fingerprint of the enrolled signing key, if the agent runs the bridge.
    pub signing_key: Option<String>,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: Option<i64>,
}

impl Agent {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
    pub fn actor(&self) -> Actor {
        Actor::agent(&self.name)
    }
}

#[derive(Debug, Clone)]
pub struct NewAgent {
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub groups: Vec<String>,
    pub risk: String,
}

/// How an agent's request was authenticated.
#[derive(Debug, Clone, Serialize)]
pub struct AgentPrincipal {
    pub agent: Agent,
    /// `bearer` or `signed`
    pub auth: &'static str,
    pub token_id: Option<String>,
    pub token_expires_at: Option<i64>,
    pub client: Option<IpAddr>,
}

impl AgentPrincipal {
    pub fn client_addr(&self) -> String {
        self.client.map(|c| c.to_string()).unwrap_or_default()
    }
}

const AGENT_SELECT: &str = "SELECT a.id, a.name, u.name AS owner, a.scopes, a.groups_json, a.risk, a.status, a.public_key, \
     a.created_at, a.created_by, a.updated_at FROM agents a JOIN users u ON u.id = a.owner_id";

fn row_to_agent(r: &sqlx::any::AnyRow) -> Result<Agent> {
    let scopes: String = r.try_get("scopes")?;
    let groups: String = r.try_get("groups_json")?;
    let key: Option<String> = r.try_get("public_key")?;
    Ok(Agent {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        owner: r.try_get("owner")?,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        risk: r.try_get("risk")?,
        status: r.try_get("status")?,
        signing_key: key
            .as_deref()
            .and_then(|k| gatehouse_ca::parse_public_key(k).ok())
            .map(|k| gatehouse_ca::fingerprint(&k)),
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn check_scopes(scopes: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in scopes {
        let s = s.trim();
        if !SCOPES.contains(&s) {
            return Err(BrokerError::Invalid(format!(
                "unknown scope {:?}; scopes are {}",
                crate::audit::cap(s, 40),
                SCOPES.join(", ")
            )));
        }
        if !out.iter().any(|o: &String| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

fn check_groups(groups: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for g in groups {
        ids::check_name("group", g.trim())?;
        if !out.iter().any(|o| o == g.trim()) {
            out.push(g.trim().to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// What a signed request covers: method, path, timestamp, nonce and body hash.
pub fn signing_string(method: &str, path: &str, timestamp: i64, nonce: &str, body_sha256_hex: &str) -> String {
    format!("GATEHOUSE-SIG-V1\n{}\n{path}\n{timestamp}\n{nonce}\n{body_sha256_hex}", method.to_ascii_uppercase())
}

/// The parts of a signed request, as received.
#[derive(Debug, Clone)]
pub struct SignedRequest<'a> {
    pub agent: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub signature_b64: &'a str,
    pub body: &'a [u8],
}

/// Check a signed request against an enrolled key, without touching the
/// nonce store: timestamp within the skew window, well-formed nonce, valid
/// Ed25519 signature over method, path, timestamp, nonce and body hash.
pub fn verify_signature(key_line: &str, req: &SignedRequest<'_>, now_s: i64) -> std::result::Result<(), String> {
    let ts: i64 = req.timestamp.parse().map_err(|_| "malformed timestamp")?;
    let skew = i64::try_from(SIGNATURE_SKEW.as_secs()).unwrap_or(60);
    if now_s.saturating_sub(ts).abs() > skew {
        return Err("timestamp outside the allowed clock skew".into());
    }
    if req.nonce.len() < 16 || req.nonce.len() > 64 || !req.nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("malformed nonce".into());
    }
    if req.signature_b64.len() > 200 {
        return Err("malformed signature".into());
    }
    let sig_bytes = B64.decode(req.signature_b64).map_err(|_| "malformed signature")?;
    let sig = ed25519_dalek::Signature::from_slice(&sig_bytes).map_err(|_| "malformed signature")?;
    let key = gatehouse_ca::parse_public_key(key_line).map_err(|_| "enrolled key unreadable")?;
    let raw = key.key_data().ed25519().ok_or("enrolled key is not Ed25519")?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw.0).map_err(|_| "enrolled key unreadable")?;
    let body_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(req.body));
    let msg = signing_string(req.method, req.path, ts, req.nonce, &body_hash);
    vk.verify_strict(msg.as_bytes(), &sig).map_err(|_| "bad signature".to_string())
}

impl Broker {
    pub async fn create_agent(&self, actor: &Actor, a: &NewAgent) -> Result<Agent> {
        ids::check_name("agent", &a.name)?;
        let scopes = check_scopes(&a.scopes)?;
        let groups = check_groups(&a.groups)?;
        if !RISKS.contains(&a.risk.as_str()) {
            return Err(BrokerError::Invalid("risk must be low, medium or high".into()));
        }
        let owner = self
            .user_by_name(&a.owner)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("owner user {}", a.owner)))?;
        let id = ids::new("ag");
        let mut w = self.db().write().await?;
        sqlx::query(
            "INSERT INTO agents (id, name, owner_id, scopes, groups_json, risk, status, created_at, created_by) \
             VALUES ($1,$2,$3,$4,$5,$6,'active',$7,$8)",
        )
        .bind(&id)
        .bind(&a.name)
        .bind(&owner.id)
        .bind(serde_json::to_string(&scopes).unwrap_or_default())
        .bind(serde_json::to_string(&groups).unwrap_or_default())
        .bind(&a.risk)
        .bind(now_ms())
        .bind(format!("{}:{}", actor.kind, actor.name))
        .execute(w.conn())
        .await
        .map_err(|e| match BrokerError::from(e) {
            BrokerError::Conflict(_) => BrokerError::Conflict(format!("agent {} already exists", a.name)),
            other => other,
        })?;
        w.audit(
            AuditRecord::new(actor.clone(), "agent.create", format!("agent:{}", a.name), Outcome::Allow)
                .details(serde_json::json!({"owner": a.owner, "scopes": scopes, "groups": groups, "risk": a.risk})),
        )
        .await?;
        w.commit().await?;
        self.agent(&a.name).await
    }

    pub async fn list_agents(&self) -> Result<Vec<Agent>> {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(format!("{AGENT_SELECT} ORDER BY a.name"))).fetch_all(self.pool()).await?;
        rows.iter().map(row_to_agent).collect()
    }

    /// An agent by name.
    pub async fn agent(&self, name: &str) -> Result<Agent> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{AGENT_SELECT} WHERE a.name = $1")))
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("agent {}", crate::audit::cap(name, 63))))?;
        row_to_agent(&row)
    }

    pub async fn agent_by_id(&self, id: &str) -> Result<Agent> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{AGENT_SELECT} WHERE a.id = $1")))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| BrokerError::NotFound("agent".into()))?;
        row_to_agent(&row)
    }

    pub async fn rename_agent(&self, actor: &Actor, name: &str, new_name: &str) -> Result<Agent> {
        ids::check_name("agent", new_name)?;
        let mut w = self.db().write().await?;
        let n = sqlx::query("UPDATE agents SET name = $1, updated_at = $2 WHERE name = $3")
            .bind(new_name)
            .bind(now_ms())
            .bind(name)
            .execute(w.conn())
            .await
            .map_err(|e| match BrokerError::from(e) {
                BrokerError::Conflict(_) => BrokerError::Conflict(format!("agent {new_name} already exists")),
                other => other,
            })?
            .rows_affected();
        if n == 0 {
            return Err(BrokerError::NotFound(format!("agent {name}")));
        }
        w.audit(
            AuditRecord::new(actor.clone(), "agent.rename", format!("agent:{new_name}"), Outcome::Allow)
                .details(serde_json::json!({"old_name": name, "new_name": new_name})),
        )
        .await?;
        w.commit().await?;
        self.agent(new_name).await
    }

    /// Suspend (reversible), resume, or revoke (permanent; kills its tokens).
    /// Suspension and revocation end the agent's live sessions within a second.
    pub async fn set_agent_status(&self, actor: &Actor, name: &str, status: &str) -> Result<Agent> {
        let agent = self.agent(name).await?;
        let (action, allowed_from): (&str, &[&str]) = match status {
            "suspended" => ("agent.suspend", &["active"]),
            "active" => ("agent.resume", &["suspended"]),
            "revoked" => ("agent.revoke", &["active", "suspended"]),
            _ => return Err(BrokerError::Invalid("status must be active, suspended or revoked".into())),
        };
        if !allowed_from.contains(&agent.status.as_str()) {
            return Err(BrokerError::Conflict(format!("agent {name} is {}", agent.status)));
        }
        let now = now_ms();
        let mut w = self.db().write().await?;
        sqlx::query("UPDATE agents SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status)
            .bind(now)
            .bind(&agent.id)
            .execute(w.conn())
            .await?;
        let mut revoked_tokens = 0;
        if status == "revoked" {
            revoked_tokens = sqlx::query(
                "UPDATE tokens SET revoked_at = $1 WHERE subject_id = $2 AND kind IN ('agent', 'bootstrap') AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(&agent.id)
            .execute(w.conn())
            .await?
            .rows_affected();
            sqlx::query("UPDATE agents SET public_key = NULL WHERE id = $1").bind(&agent.id).execute(w.conn()).await?;
        }
        w.audit(
            AuditRecord::new(actor.clone(), action, format!("agent:{name}"), Outcome::Allow)
                .details(serde_json::json!({"revoked_tokens": revoked_tokens})),
        )
        .await?;
        w.commit().await?;
        if status != "active" {
            let why = if status == "revoked" { "agent revoked" } else { "agent suspended" };
            self.live().end_where(|s| s.subject_kind == "agent" && s.subject_id == agent.id, why);
        }
        self.agent(name).await
    }

    /// Make a bearer token for an agent; its value is returned once.
    pub async fn create_agent_token(
        &self,
        actor: &Actor,
        agent_name: &str,
        ttl: Duration,
        cidrs: &[String],
        single_use: bool,
    ) -> Result<(TokenInfo, Secret)> {
        let agent = self.agent(agent_name).await?;
        if agent.status == "revoked" {
            return Err(BrokerError::Conflict(format!("agent {agent_name} is revoked")));
        }
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(BrokerError::Invalid("token TTL must be between 1 s and 90 days".into()));
        }
        let nets = cidrs
            .iter()
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .map_err(|_| BrokerError::Invalid(format!("{:?} is not a CIDR", crate::audit::cap(c, 60))))
            })
            .collect::<Result<Vec<_>>>()?;
        let expires = now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let mut w = self.db().write().await?;
        let (id, secret) = tokens::insert(
            w.conn(),
            TokenKind::Agent,
            &NewToken {
                subject_id: agent.id.clone(),
                created_by: format!("{}:{}", actor.kind, actor.name),
                expires_at: Some(expires),
                single_use,
                cidrs: nets.clone(),
            },
        )
        .await?;
        w.audit(
            AuditRecord::new(actor.clone(), "token.create", format!("agent:{agent_name}"), Outcome::Allow).details(
                serde_json::json!({"token": id, "expires_at": expires, "cidrs": cidrs, "single_use": single_use}),
            ),
        )
        .await?;
        w.commit().await?;
        let info = self.token(&id).await?;
        Ok((info, secret))
    }

    pub async fn token(&self, id: &str) -> Result<TokenInfo> {
        ids::check("tok", id)?;
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {} FROM tokens WHERE id = $1", tokens::TOKEN_COLUMNS)))
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .ok_or_else(|| BrokerError::NotFound(format!("token {id}")))?;
        Ok(tokens::row_to_info(&row)?.0)
    }

    /// Agent tokens with their agent names (never values).
    pub async fn list_agent_tokens(&self) -> Result<Vec<(TokenInfo, String)>> {
        let agents = self.list_agents().await?;
        let toks = tokens::list(self.pool(), TokenKind::Agent).await?;
        Ok(toks
            .into_iter()
            .map(|t| {
                let name = agents.iter().find(|a| a.id == t.subject_id).map(|a| a.name.clone()).unwrap_or_default();
                (t, name)
            })
            .collect())
    }

    pub async fn revoke_token(&self, actor: &Actor, id: &str) -> Result<TokenInfo> {
        ids::check("tok", id)?;
        let mut w = self.db().write().await?;
        let n =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND kind <> 'admin'")
                .bind(now_ms())
                .bind(id)
                .execute(w.conn())
                .await?
                .rows_affected();
        if n == 0 {
            drop(w);
            let t = self.token(id).await?;
            return Err(BrokerError::Conflict(format!(
                "token {} cannot be revoked (already revoked or an admin token)",
                t.id
            )));
        }
        w.audit(AuditRecord::new(actor.clone(), "token.revoke", format!("token:{id}"), Outcome::Allow)).await?;
        w.commit().await?;
        self.token(id).await
    }

    /// Authenticate an agent's bearer token: the token must be live and the
    /// agent active. Every refusal is audited; the caller only says 401.
    pub async fn authenticate_agent_token(&self, secret: &str, client: Option<IpAddr>) -> Result<AgentPrincipal> {
        let client_s = client.map(|c| c.to_string()).unwrap_or_default();
        let refuse = |agent: Option<&Agent>, why: &str| {
            let actor = agent.map(Agent::actor).unwrap_or_else(|| Actor::unknown("mcp client"));
            AuditRecord::new(actor, "mcp.auth", "mcp", Outcome::Deny).reason(why.to_string()).client(client_s.clone())
        };
        match tokens::authenticate(self.pool(), secret, TokenKind::Agent, client).await? {
            Ok(info) => {
                let agent = self.agent_by_id(&info.subject_id).await?;
                if agent.status != "active" {
                    self.audit(refuse(Some(&agent), &format!("agent is {}", agent.status))).await?;
                    return Err(BrokerError::Unauthorized(format!("agent is {}", agent.status)));
                }
                Ok(AgentPrincipal {
                    agent,
                    auth: "bearer",
                    token_id: Some(info.id),
                    token_expires_at: info.expires_at,
                    client,
                })
            }
            Err((info, why)) => {
                let agent = match &info {
                    Some(i) => self.agent_by_id(&i.subject_id).await.ok(),
                    None => None,
                };
                let mut rec = refuse(agent.as_ref(), why.as_str());
                if let Some(i) = &info {
                    rec = rec.details(serde_json::json!({"token": i.id}));
                }
                self.audit(rec).await?;
                Err(BrokerError::Unauthorized(why.as_str().into()))
            }
        }
    }

    /// A one-time token with which an agent's machine enrols its signing key.
    pub async fn agent_bootstrap_token(
        &self,
        actor: &Actor,
        agent_name: &str,
        ttl: Duration,
    ) -> Result<(TokenInfo, Secret)> {
        let agent = self.agent(agent_name).await?;
        if agent.status != "active" {
            return Err(BrokerError::Conflict(format!("agent {agent_name} is {}", agent.status)));
        }
        let expires = now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let mut w = self.db().write().await?;
        let (id, secret) = tokens::insert(
            w.conn(),
            TokenKind::Bootstrap,
            &NewToken {
                subject_id: agent.id.clone(),
                created_by: format!("{}:{}", actor.kind, actor.name),
                expires_at: Some(expires),
                single_use: true,
                cidrs: vec![],
            },
        )
        .await?;
        w.audit(
            AuditRecord::new(actor.clone(), "agent.bootstrap", format!("agent:{agent_name}"), Outcome::Allow)
                .details(serde_json::json!({"token": id, "expires_at": expires})),
        )
        .await?;
        w.commit().await?;
        Ok((self.token(&id).await?, secret))
    }

    /// Register an agent's signing public key, consuming its bootstrap token.
    pub async fn enroll_agent_key(&self, bootstrap: &str, public_key: &str, client: Option<IpAddr>) -> Result<Agent> {
        let client_s = client.map(|c| c.to_string()).unwrap_or_default();
        let info = match tokens::authenticate(self.pool(), bootstrap, TokenKind::Bootstrap, client).await? {
            Ok(i) => i,
            Err((_, why)) => {
                self.audit(
                    AuditRecord::new(Actor::unknown("agent machine"), "agent.enroll", "agent", Outcome::Deny)
                        .reason(why.as_str())
                        .client(client_s),
                )
                .await?;
                return Err(BrokerError::Unauthorized(why.as_str().into()));
            }
        };
        let key =
            gatehouse_ca::parse_public_key(public_key).map_err(|e| BrokerError::Invalid(format!("public key: {e}")))?;
        if key.algorithm() != gatehouse_ca::ssh_key::Algorithm::Ed25519 {
            return Err(BrokerError::Invalid("agent signing keys must be Ed25519".into()));
        }
        let agent = self.agent_by_id(&info.subject_id).await?;
        if agent.status != "active" {
            return Err(BrokerError::Unauthorized(format!("agent is {}", agent.status)));
        }
        let fp = gatehouse_ca::fingerprint(&key);
        let mut w = self.db().write().await?;
        sqlx::query("UPDATE agents SET public_key = $1, updated_at = $2 WHERE id = $3")
            .bind(gatehouse_ca::public_key_line(&key, "").trim())
            .bind(now_ms())
            .bind(&agent.id)
            .execute(w.conn())
            .await?;
        w.audit(
            AuditRecord::new(agent.actor(), "agent.enroll", format!("agent:{}", agent.name), Outcome::Allow)
                .client(client_s)
                .details(serde_json::json!({"signing_key": fp, "bootstrap_token": info.id})),
        )
        .await?;
        w.commit().await?;
        self.agent_by_id(&agent.id).await
    }

    /// Verify a request signed by an agent's enrolled key: fresh timestamp,
    /// unused nonce, valid Ed25519 signature over method, path, timestamp,
    /// nonce and body hash. Refusals are audited.
    pub async fn verify_signed_request(
        &self,
        req: &SignedRequest<'_>,
        client: Option<IpAddr>,
    ) -> Result<AgentPrincipal> {
        let client_s = client.map(|c| c.to_string()).unwrap_or_default();
        let agent = self.agent(req.agent).await.ok();
        let outcome = self.check_signature(agent.as_ref(), req).await;
        match outcome {
            Ok(()) => {
                let Some(agent) = agent else { return Err(BrokerError::Unauthorized("unknown agent".into())) };
                Ok(AgentPrincipal { agent, auth: "signed", token_id: None, token_expires_at: None, client })
            }
            Err(why) => {
                let actor = agent.as_ref().map(Agent::actor).unwrap_or_else(|| Actor::unknown("mcp bridge"));
                self.audit(
                    AuditRecord::new(actor, "mcp.auth", "mcp", Outcome::Deny)
                        .reason(why.clone())
                        .severity(if why.contains("replayed") { Severity::Critical } else { Severity::Warning })
                        .client(client_s),
                )
                .await?;
                Err(BrokerError::Unauthorized(why))
            }
        }
    }

    async fn check_signature(&self, agent: Option<&Agent>, req: &SignedRequest<'_>) -> std::result::Result<(), String> {
        let agent = agent.ok_or("unknown agent")?;
        if agent.status != "active" {
            return Err(format!("agent is {}", agent.status));
        }
        let key_line = sqlx::query_scalar::<_, Option<String>>("SELECT public_key FROM agents WHERE id = $1")
            .bind(&agent.id)
            .fetch_one(self.pool())
            .await
            .map_err(|e| format!("storage: {e}"))?
            .ok_or("agent has no enrolled signing key")?;
        verify_signature(&key_line, req, now_ms() / 1000)?;
        // Only a correctly signed request may consume a nonce.
        let inserted = sqlx::query("INSERT INTO agent_nonces (agent_id, nonce, seen_at) VALUES ($1,$2,$3)")
            .bind(&agent.id)
            .bind(req.nonce)
            .bind(now_ms())
            .execute(self.pool())
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) => match BrokerError::from(e) {
                BrokerError::Conflict(_) => Err("replayed request (nonce already used)".into()),
                other => Err(other.to_string()),
            },
        }
    }

    /// Forget nonces older than twice the skew window (they can no longer be replayed).
    pub async fn prune_nonces(&self) -> Result<u64> {
        let cutoff = now_ms() - 2 * i64::try_from(SIGNATURE_SKEW.as_millis()).unwrap_or(60_000);
        Ok(sqlx::query("DELETE FROM agent_nonces WHERE seen_at < $1")
            .bind(cutoff)
            .execute(self.pool())
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    fn signed(key: &ed25519_dalek::SigningKey, ts: i64, nonce: &str, body: &[u8]) -> String {
        let msg = signing_string(
            "POST",
            "/api/agent/v1/tools/call",
            ts,
            nonce,
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)),
        );
        B64.encode(key.sign(msg.as_bytes()).to_bytes())
    }

    #[test]
    fn signatures_cover_method_path_time_nonce_and_body() {
        let k = gatehouse_ca::generate_ed25519();
        let line = gatehouse_ca::public_key_line(k.public_key(), "");
        let sk = ed25519_dalek::SigningKey::from_bytes(k.key_data().ed25519().unwrap().private.as_ref());
        let nonce = "0123456789abcdef0123";
        let sig = signed(&sk, 1000, nonce, b"{}");
        let req = SignedRequest {
            agent: "a",
            method: "POST",
            path: "/api/agent/v1/tools/call",
            timestamp: "1000",
            nonce,
            signature_b64: &sig,
            body: b"{}",
        };
        assert_eq!(verify_signature(&line, &req, 1010), Ok(()));
        assert!(verify_signature(&line, &req, 1000 + 61).unwrap_err().contains("skew"));
        let other_body = SignedRequest { body: b"{\"x\":1}", ..req.clone() };
        assert_eq!(verify_signature(&line, &other_body, 1000).unwrap_err(), "bad signature");
        let other_path = SignedRequest { path: "/api/agent/v1/tools/list", ..req.clone() };
        assert_eq!(verify_signature(&line, &other_path, 1000).unwrap_err(), "bad signature");
        let other_nonce = SignedRequest { nonce: "0123456789abcdef0124", ..req.clone() };
        assert_eq!(verify_signature(&line, &other_nonce, 1000).unwrap_err(), "bad signature");
        let get = SignedRequest { method: "GET", ..req.clone() };
        assert_eq!(verify_signature(&line, &get, 1000).unwrap_err(), "bad signature");
        let bad = SignedRequest { signature_b64: "!!", ..req };
        assert_eq!(verify_signature(&line, &bad, 1000).unwrap_err(), "malformed signature");
    }
}
