//! Admin CLI for just-in-time access: `policy`, `access`, `webhook`. Each
//! command is a call to the admin API and a printout.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{ArgGroup, Subcommand};
use serde_json::{Value, json};

use crate::Global;
use crate::client::{Api, enc};
use crate::fmt::{self, list, s, table, time};

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Bind a policy (TOML) to a host group, replacing any there was.
    Set {
        group: String,
        #[arg(long, value_name = "policy.toml")]
        file: PathBuf,
    },
    /// Print a group's policy and what it means.
    Show {
        group: String,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Unbind a group's policy.
    Remove { group: String },
    /// What policy would decide for a request, and why (nothing is filed).
    #[command(group(ArgGroup::new("who").required(true).args(["user", "agent"])))]
    Test {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        host: String,
        #[arg(long)]
        login: String,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        /// When: RFC 3339 (2026-06-05T09:30:00+02:00) or 2026-06-05T09:30[Europe/Oslo]; default now.
        #[arg(long)]
        at: Option<String>,
        /// The client address the request would come from.
        #[arg(long, value_name = "IP")]
        from: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AccessCmd {
    /// File a request on a user's behalf (policy decides as for the user).
    Request {
        #[arg(long)]
        user: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        login: String,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Requests, newest first.
    List {
        #[arg(long, value_parser = ["pending", "approved", "denied", "expired", "cancelled"])]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve as the admin (counts as one approver, never the requester).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny (a reason is required).
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Withdraw a pending request.
    Cancel { id: String },
}

#[derive(Subcommand, Debug)]
pub enum WebhookCmd {
    /// Send events to URL (Slack and Teams incoming webhooks display `text`).
    Add {
        /// The endpoint (http or https).
        #[arg(value_name = "URL")]
        endpoint: String,
        /// Comma-separated: access.requested, access.approved, access.denied, access.expired,
        /// session.started, session.ended, canary.tripped, agent.policy_denied, or *.
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// A file holding the HMAC-SHA256 signing secret (16+ bytes).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop delivering to a webhook.
    Remove { id: String },
    /// Every delivery of a webhook and each of its attempts.
    Deliveries {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn policy(g: &Global, cmd: PolicyCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        PolicyCmd::Set { group, file } => {
            let source = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let v = api.post(&format!("/api/v1/policies/{}", enc(&group)), &json!({"source": source})).await?;
            println!("policy for group {} set:", s(&v, "group"));
            for line in list(&v["summary"]) {
                println!("  {}", line.as_str().unwrap_or(""));
            }
        }
        PolicyCmd::Show { group, json } => {
            let v = api.get(&format!("/api/v1/policies/{}", enc(&group))).await?;
            if json {
                return fmt::json(&v);
            }
            println!(
                "# policy for group {} (set {} by {})",
                s(&v, "group"),
                time(&v["updated_at"]),
                s(&v, "updated_by")
            );
            for line in list(&v["summary"]) {
                println!("#   {}", line.as_str().unwrap_or(""));
            }
            print!("{}", s(&v, "source"));
            if !s(&v, "source").ends_with('\n') {
                println!();
            }
        }
        PolicyCmd::List { json } => {
            let v = api.get("/api/v1/policies").await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["GROUP", "UPDATED", "BY", "RULES"],
                list(&v)
                    .iter()
                    .map(|p| {
                        let rules: Vec<&str> = list(&p["summary"]).iter().filter_map(Value::as_str).collect();
                        vec![s(p, "group"), time(&p["updated_at"]), s(p, "updated_by"), rules.join("; ")]
                    })
                    .collect(),
            );
        }
        PolicyCmd::Remove { group } => {
            api.post(&format!("/api/v1/policies/{}/remove", enc(&group)), &json!({})).await?;
            println!("policy for group {group} removed");
        }
        PolicyCmd::Test { user, agent, host, login, ttl, reason, at, from, json } => {
            let v = api
                .post(
                    "/api/v1/policy-test",
                    &json!({"user": user, "agent": agent, "host": host, "login": login, "ttl": ttl,
                            "reason": reason, "at": at, "from": from}),
                )
                .await?;
            if json {
                return fmt::json(&v);
            }
            let d = &v["decision"];
            let ttl = d["ttl_seconds"].as_u64().map(|t| humantime::format_duration(std::time::Duration::from_secs(t)));
            let line = match d["decision"].as_str() {
                Some("allow") => format!("allow for {}", ttl.map(|t| t.to_string()).unwrap_or_default()),
                Some("needs_approval") => format!(
                    "needs approval: {} approval(s) for {}",
                    d["rule"]["approvals"],
                    ttl.map(|t| t.to_string()).unwrap_or_default()
                ),
                _ => format!("deny: {}", s(d, "reason")),
            };
            println!("decision: {line}");
            println!(
                "{} → {login}@{host} at {}{}",
                s(&v, "requester"),
                time(&v["at"]),
                if v["canary"] == true { " (canary host)" } else { "" }
            );
            println!("why:");
            for t in list(&v["trace"]) {
                println!("  - {}", t.as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}

fn request_row(r: &Value) -> Vec<String> {
    vec![
        s(r, "id"),
        s(r, "status"),
        format!("{}:{}", s(r, "requester_kind"), s(r, "requester_name")),
        format!("{}@{}", s(r, "login"), s(r, "host_name")),
        humantime::format_duration(std::time::Duration::from_secs(r["ttl_seconds"].as_u64().unwrap_or(0))).to_string(),
        format!("{}/{}", s(r, "approvals_given"), s(r, "approvals_required")),
        time(&r["created_at"]),
        s(r, "reason"),
        match (r["decided_by"].as_str(), r["decision_reason"].as_str()) {
            (Some(by), Some(why)) => format!("{by}: {why}"),
            (Some(by), None) => by.to_string(),
            _ => "-".into(),
        },
    ]
}

fn print_request(v: &Value) {
    println!("{} {}", s(v, "id"), s(v, "status"));
    println!("  requester: {}:{}", s(v, "requester_kind"), s(v, "requester_name"));
    println!("  target:    {}@{} for {}s", s(v, "login"), s(v, "host_name"), s(v, "ttl_seconds"));
    println!("  reason:    {}", s(v, "reason"));
    println!("  approvals: {} of {} ({})", s(v, "approvals_given"), s(v, "approvals_required"), s(v, "needs"));
    for vote in list(&v["votes"]) {
        println!("    {} {} at {}: {}", s(vote, "approver"), s(vote, "decision"), time(&vote["at"]), s(vote, "reason"));
    }
    if let Some(g) = v["grant_id"].as_str() {
        println!("  grant:     {g} until {}", time(&v["grant_expires_at"]));
    }
    if let Some(by) = v["decided_by"].as_str() {
        println!("  decided:   by {by} at {}: {}", time(&v["decided_at"]), s(v, "decision_reason"));
    }
}

pub async fn access(g: &Global, cmd: AccessCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        AccessCmd::Request { user, host, login, ttl, reason } => {
            let v = api
                .post(
                    "/api/v1/access",
                    &json!({"user": user, "host": host, "login": login, "ttl": ttl, "reason": reason}),
                )
                .await?;
            println!("{}", s(&v, "id"));
            print_request(&v);
        }
        AccessCmd::List { status, json } => {
            let path = match status {
                Some(st) => format!("/api/v1/access?status={}", enc(&st)),
                None => "/api/v1/access".into(),
            };
            let v = api.get(&path).await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["ID", "STATUS", "REQUESTER", "TARGET", "TTL", "APPROVALS", "CREATED", "REASON", "DECISION"],
                list(&v).iter().map(request_row).collect(),
            );
        }
        AccessCmd::Show { id, json } => {
            let v = api.get(&format!("/api/v1/access/{}", enc(&id))).await?;
            if json {
                return fmt::json(&v);
            }
            print_request(&v);
        }
        AccessCmd::Approve { id, reason } => {
            let v = api.post(&format!("/api/v1/access/{}/approve", enc(&id)), &json!({"reason": reason})).await?;
            print_request(&v);
        }
        AccessCmd::Deny { id, reason } => {
            let v = api.post(&format!("/api/v1/access/{}/deny", enc(&id)), &json!({"reason": reason})).await?;
            print_request(&v);
        }
        AccessCmd::Cancel { id } => {
            let v = api.post(&format!("/api/v1/access/{}/cancel", enc(&id)), &json!({})).await?;
            print_request(&v);
        }
    }
    Ok(())
}

pub async fn webhook(g: &Global, cmd: WebhookCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        WebhookCmd::Add { endpoint, events, secret_file } => {
            let secret = match &secret_file {
                Some(p) => {
                    let text = zeroize::Zeroizing::new(
                        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
                    );
                    if text.trim().is_empty() {
                        bail!("{} is empty", p.display());
                    }
                    Some(text)
                }
                None => None,
            };
            let body = json!({"url": endpoint, "events": events, "secret": secret.as_ref().map(|s| s.trim())});
            let v = api.post("/api/v1/webhooks", &body).await?;
            drop(body);
            println!(
                "{} : {} gets {}{}",
                s(&v, "id"),
                s(&v, "url"),
                list(&v["events"]).iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                if v["secret_set"] == true { " (signed)" } else { " (unsigned)" }
            );
        }
        WebhookCmd::List { json } => {
            let v = api.get("/api/v1/webhooks").await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["ID", "URL", "EVENTS", "SIGNED", "PENDING", "DELIVERED", "FAILED", "REMOVED"],
                list(&v)
                    .iter()
                    .map(|h| {
                        vec![
                            s(h, "id"),
                            s(h, "url"),
                            list(&h["events"]).iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                            if h["secret_set"] == true { "yes".into() } else { "no".into() },
                            s(h, "pending"),
                            s(h, "delivered"),
                            s(h, "failed"),
                            time(&h["removed_at"]),
                        ]
                    })
                    .collect(),
            );
        }
        WebhookCmd::Remove { id } => {
            let v = api.post(&format!("/api/v1/webhooks/{}/remove", enc(&id)), &json!({})).await?;
            println!("removed {}", s(&v, "id"));
        }
        WebhookCmd::Deliveries { id, json } => {
            let v = api.get(&format!("/api/v1/webhooks/{}/deliveries", enc(&id))).await?;
            if json {
                return fmt::json(&v);
            }
            let mut rows = Vec::new();
            for d in list(&v) {
                let attempts = list(&d["attempt_log"]);
                if attempts.is_empty() {
                    rows.push(vec![
                        s(d, "id"),
                        s(d, "event"),
                        s(d, "status"),
                        "-".into(),
                        time(&d["created_at"]),
                        "-".into(),
                        "-".into(),
                        time(&d["next_attempt_at"]),
                    ]);
                }
                for a in attempts {
                    rows.push(vec![
                        s(d, "id"),
                        s(d, "event"),
                        s(d, "status"),
                        s(a, "attempt"),
                        time(&a["at"]),
                        s(a, "http_status"),
                        s(a, "error"),
                        time(&d["next_attempt_at"]),
                    ]);
                }
            }
            table(&["DELIVERY", "EVENT", "STATUS", "ATTEMPT", "AT", "HTTP", "ERROR", "NEXT"], rows);
        }
    }
    Ok(())
}
