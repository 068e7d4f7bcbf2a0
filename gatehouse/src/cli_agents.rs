//! CLI for agents, their tokens, and the MCP bridge.

use anyhow::{Context, bail};
use clap::Subcommand;
use gatehouse_mcp::clients::{self, Client};
use serde_json::json;

use crate::Global;
use crate::client::{Api, enc};
use crate::fmt::{self, list, s, table, time};

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Register an AI agent: an identity with an owner, scopes and host groups.
    Create {
        name: String,
        #[arg(long)]
        owner: String,
        /// Comma-separated: host:read, ssh_session:request, approval:request, audit:read,
        /// audit:write, certificate:read, certificate:request, probe:create, probe:read
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Comma-separated host groups.
        #[arg(long, value_delimiter = ',', required = true)]
        groups: Vec<String>,
        #[arg(long, value_parser = ["low", "medium", "high"], default_value = "medium")]
        risk: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    Rename {
        name: String,
        new_name: String,
    },
    /// Refuse every token of the agent and end its sessions (reversible).
    Suspend {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Permanently disable the agent and kill its tokens.
    Revoke {
        name: String,
    },
    /// Issue a one-time bootstrap token for `gatehouse agent enroll`.
    Bootstrap {
        name: String,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// On the agent's machine: make a signing key (never sent anywhere) and
    /// register its public half with a bootstrap token.
    /// (The Gatehouse address comes from --url, e.g. --url https://gatehouse.example.com.)
    Enroll {
        bootstrap_token: String,
        /// Where the key and agent.json go (default ~/.config/gatehouse).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an MCP bearer token for an agent (shown once, with client configuration).
    Create {
        #[arg(long)]
        agent: String,
        #[arg(long, default_value = "48h")]
        ttl: String,
        /// Only accept the token from these networks. Repeatable.
        #[arg(long = "cidr")]
        cidrs: Vec<String>,
        #[arg(long)]
        single_use: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Revoke {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCmd {
    /// Pending approvals: agents' action approvals and access requests.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Approve ap_… (an agent's action) or a_… (an access request).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny, with a reason the requester sees.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

pub async fn approvals(g: &Global, cmd: ApprovalsCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        ApprovalsCmd::List { json } => {
            let v = api.get("/api/v1/approvals").await?;
            if json {
                return fmt::json(&v);
            }
            let mut rows: Vec<Vec<String>> = list(&v["actions"])
                .iter()
                .map(|a| {
                    vec![
                        s(a, "id"),
                        format!("agent:{}", s(a, "agent")),
                        format!("{} on {}", s(a, "action"), s(a, "resource")),
                        s(a, "reason"),
                        time(&a["expires_at"]),
                    ]
                })
                .collect();
            rows.extend(list(&v["access_requests"]).iter().map(|r| {
                vec![
                    s(r, "id"),
                    format!("{}:{}", s(r, "requester_kind"), s(r, "requester_name")),
                    format!(
                        "ssh {}@{} for {}s ({})",
                        s(r, "login"),
                        s(r, "host_name"),
                        s(r, "ttl_seconds"),
                        s(r, "needs")
                    ),
                    s(r, "reason"),
                    time(&r["expires_at"]),
                ]
            }));
            table(&["ID", "REQUESTER", "WHAT", "REASON", "EXPIRES"], rows);
        }
        ApprovalsCmd::Approve { id, reason } => {
            let v = api.post(&format!("/api/v1/approvals/{}/approve", enc(&id)), &json!({"reason": reason})).await?;
            println!("{} is {}", s(&v, "id"), s(&v, "status"));
        }
        ApprovalsCmd::Deny { id, reason } => {
            let v = api.post(&format!("/api/v1/approvals/{}/deny", enc(&id)), &json!({"reason": reason})).await?;
            println!("{} is {}", s(&v, "id"), s(&v, "status"));
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum McpCmd {
    /// Run as a child process of an AI client: MCP over stdio, each call
    /// forwarded to Gatehouse signed with the enrolled key (or with
    /// $GATEHOUSE_MCP_TOKEN when set).
    /// (Token mode uses --url; signed mode reads the address from agent.json.)
    Stdio {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Print the configuration block for a client.
    Config {
        #[arg(value_parser = ["claude-code", "cursor", "codex", "claude-desktop"])]
        client: String,
        /// http: bearer token over streamable HTTP; stdio: the signing bridge.
        #[arg(long, value_parser = ["http", "stdio"], default_value = "stdio")]
        mode: String,
    },
}

fn mcp_url(g: &Global) -> String {
    format!("{}/mcp", g.url.trim_end_matches('/'))
}

pub async fn agent(g: &Global, cmd: AgentCmd) -> anyhow::Result<()> {
    if let AgentCmd::Enroll { bootstrap_token, dir } = &cmd {
        let dir = dir.clone().unwrap_or_else(gatehouse_mcp::bridge::default_dir);
        let cfg = gatehouse_mcp::bridge::enroll(&g.url, bootstrap_token, &dir).await?;
        println!("enrolled as agent {}; signing key {} (0600, never sent anywhere)", cfg.agent, cfg.key_file.display());
        println!("configure your AI client with: gatehouse mcp config claude-code|cursor|codex|claude-desktop");
        return Ok(());
    }
    let api = Api::new(g)?;
    match cmd {
        AgentCmd::Create { name, owner, scopes, groups, risk } => {
            let a = api
                .post(
                    "/api/v1/agents",
                    &json!({"name": name, "owner": owner, "scopes": scopes, "groups": groups, "risk": risk}),
                )
                .await?;
            println!(
                "created agent {} (owner {}, scopes {}, groups {})",
                s(&a, "name"),
                s(&a, "owner"),
                join(&a["scopes"]),
                join(&a["groups"])
            );
        }
        AgentCmd::List { json } => {
            let v = api.get("/api/v1/agents").await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["NAME", "OWNER", "STATUS", "RISK", "SCOPES", "GROUPS", "SIGNING KEY"],
                list(&v)
                    .iter()
                    .map(|a| {
                        vec![
                            s(a, "name"),
                            s(a, "owner"),
                            s(a, "status"),
                            s(a, "risk"),
                            join(&a["scopes"]),
                            join(&a["groups"]),
                            s(a, "signing_key"),
                        ]
                    })
                    .collect(),
            );
        }
        AgentCmd::Show { name, json } => {
            let v = api.get(&format!("/api/v1/agents/{}", enc(&name))).await?;
            if json {
                return fmt::json(&v);
            }
            let a = &v["agent"];
            println!("agent:       {}", s(a, "name"));
            println!("owner:       {}", s(a, "owner"));
            println!("status:      {}", s(a, "status"));
            println!("risk:        {}", s(a, "risk"));
            println!("scopes:      {}", join(&a["scopes"]));
            println!("groups:      {}", join(&a["groups"]));
            println!("signing key: {}", s(a, "signing_key"));
            println!("created:     {} by {}", time(&a["created_at"]), s(a, "created_by"));
            println!("tokens:");
            for t in list(&v["tokens"]) {
                println!(
                    "  {}  expires {}  {}",
                    s(t, "id"),
                    time(&t["expires_at"]),
                    if t["revoked_at"].is_null() { "" } else { "revoked" }
                );
            }
            println!("recent sessions:");
            for x in list(&v["recent_sessions"]) {
                println!(
                    "  {}  {}@{}  from {}  mcp {}  {} → {}  {}",
                    s(x, "id"),
                    s(x, "login"),
                    s(x, "host_name"),
                    s(x, "client_addr"),
                    s(x, "mcp_session_id"),
                    time(&x["started_at"]),
                    time(&x["ended_at"]),
                    s(x, "end_reason")
                );
            }
        }
        AgentCmd::Rename { name, new_name } => {
            api.post(&format!("/api/v1/agents/{}/rename", enc(&name)), &json!({"new_name": new_name})).await?;
            println!("renamed {name} to {new_name}");
        }
        AgentCmd::Suspend { name } => status(&api, &name, "suspended").await?,
        AgentCmd::Resume { name } => status(&api, &name, "active").await?,
        AgentCmd::Revoke { name } => status(&api, &name, "revoked").await?,
        AgentCmd::Bootstrap { name, ttl } => {
            let v = api.post(&format!("/api/v1/agents/{}/bootstrap", enc(&name)), &json!({"ttl": ttl})).await?;
            println!(
                "Bootstrap token for {name} (single use, expires {}; shown once):",
                time(&v["info"]["expires_at"])
            );
            println!("{}", s(&v, "token"));
            println!("\nOn the agent's machine:\n  gatehouse agent enroll --url {} {}", g.url, s(&v, "token"));
        }
        AgentCmd::Enroll { .. } => {}
    }
    Ok(())
}

async fn status(api: &Api, name: &str, status: &str) -> anyhow::Result<()> {
    let a = api.post(&format!("/api/v1/agents/{}/status", enc(name)), &json!({"status": status})).await?;
    println!("agent {} is now {}", s(&a, "name"), s(&a, "status"));
    Ok(())
}

fn join(v: &serde_json::Value) -> String {
    let items: Vec<String> = list(v).iter().filter_map(|x| x.as_str().map(str::to_string)).collect();
    if items.is_empty() { "-".into() } else { items.join(",") }
}

pub async fn token(g: &Global, cmd: TokenCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        TokenCmd::Create { agent, ttl, cidrs, single_use } => {
            let v = api
                .post("/api/v1/tokens", &json!({"agent": agent, "ttl": ttl, "cidrs": cidrs, "single_use": single_use}))
                .await?;
            let token = s(&v, "token");
            println!(
                "MCP token for agent {agent} ({}, expires {}). It is shown once; store it now.",
                s(&v["info"], "id"),
                time(&v["info"]["expires_at"])
            );
            println!("{token}\n");
            println!("{}", clients::all_http(&mcp_url(g), &token));
        }
        TokenCmd::List { json } => {
            let v = api.get("/api/v1/tokens").await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["ID", "AGENT", "EXPIRES", "CIDRS", "SINGLE USE", "LAST USE", "FROM", "STATUS"],
                list(&v)
                    .iter()
                    .map(|t| {
                        let status = if !t["revoked_at"].is_null() {
                            "revoked"
                        } else if t["expires_at"].as_i64().is_some_and(|e| e < now_ms()) {
                            "expired"
                        } else if !t["used_at"].is_null() {
                            "used"
                        } else {
                            "active"
                        };
                        vec![
                            s(t, "id"),
                            s(t, "agent"),
                            time(&t["expires_at"]),
                            join(&t["cidrs"]),
                            s(t, "single_use"),
                            time(&t["last_used_at"]),
                            s(t, "last_used_addr"),
                            status.into(),
                        ]
                    })
                    .collect(),
            );
        }
        TokenCmd::Revoke { id } => {
            let v = api.post(&format!("/api/v1/tokens/{}/revoke", enc(&id)), &json!({})).await?;
            println!("revoked {}", s(&v, "id"));
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub async fn mcp(g: &Global, cmd: McpCmd) -> anyhow::Result<()> {
    match cmd {
        McpCmd::Stdio { dir } => {
            let bridge = match std::env::var(clients::TOKEN_ENV) {
                Ok(t) if !t.trim().is_empty() => gatehouse_mcp::bridge::Bridge::new(
                    &g.url,
                    gatehouse_mcp::bridge::BridgeAuth::Bearer(zeroize::Zeroizing::new(t.trim().to_string())),
                )?,
                _ => {
                    let dir = dir.unwrap_or_else(gatehouse_mcp::bridge::default_dir);
                    gatehouse_mcp::bridge::Bridge::from_dir(&dir)?
                }
            };
            gatehouse_mcp::bridge::run_stdio(bridge).await.context("the MCP bridge stopped")?;
        }
        McpCmd::Config { client, mode } => {
            let Some(c) = Client::parse(&client) else { bail!("unknown client {client}") };
            if mode == "http" {
                println!("{}", clients::http_config(c, &mcp_url(g), None));
                println!("\n# <TOKEN> comes from `gatehouse token create --agent NAME`");
            } else {
                println!("{}", clients::stdio_config(c));
                println!("\n# requires `gatehouse agent enroll --url {} BOOTSTRAP_TOKEN` on this machine first", g.url);
            }
        }
    }
    Ok(())
}
