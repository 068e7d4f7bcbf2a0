//! Admin CLI commands: each one is a call to the HTTP API and a printout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::Global;
use crate::client::{Api, enc};
use crate::fmt::{self, list, s, table, time};

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Print the user CA public key line for targets' TrustedUserCAKeys.
    Show {
        /// Print the `@cert-authority PATTERN …` known_hosts line instead, so
        /// `ssh` trusts Gatehouse bastions without a first-use prompt.
        #[arg(long, value_name = "DOMAIN_PATTERN")]
        known_hosts: Option<String>,
        /// Print the host CA line instead of the user CA line.
        #[arg(long, conflicts_with = "known_hosts")]
        host_ca: bool,
    },
    /// Make a new user CA that signs from now on; the current one stays
    /// trusted for the grace period, and `ca show` prints both lines until
    /// it ends. The bastion offers targets the new certificate first and the
    /// old one second, so targets can be moved over one by one.
    Rotate {
        /// How long the replaced CA stays trusted (e.g. 24h, 7d; 0s ends it at once).
        #[arg(long, default_value = "24h")]
        grace: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Register a user, optionally with SSH public keys.
    Add {
        name: String,
        /// Public key file (one or more keys, one per line). Repeatable.
        #[arg(long = "ssh-key", value_name = "FILE")]
        ssh_keys: Vec<PathBuf>,
        #[arg(long, value_parser = ["user", "approver", "admin"], default_value = "user")]
        role: String,
    },
    /// Add an SSH public key to a user.
    AddKey {
        name: String,
        #[arg(long = "ssh-key", value_name = "FILE")]
        ssh_key: PathBuf,
    },
    /// Change a user's role.
    SetRole {
        name: String,
        #[arg(value_parser = ["user", "approver", "admin"])]
        role: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Register a target host with a pinned host key (or --scan to fetch it).
    Add {
        name: String,
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        /// A public key file or an OpenSSH key line.
        #[arg(long, value_name = "FILE_OR_KEYLINE", conflicts_with = "scan")]
        host_key: Option<String>,
        /// Fetch the host key from the target, print its fingerprint and pin it.
        #[arg(long)]
        scan: bool,
        /// Pin no key: trust the target by a host certificate from Gatehouse's
        /// host CA (`host enroll-token`, then `host enroll` on the target).
        #[arg(long, conflicts_with_all = ["host_key", "scan"])]
        trust_host_ca: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Enroll(crate::cli_pki::HostEnrollCmd),
}

#[derive(Subcommand, Debug)]
pub enum GrantCmd {
    /// Let USER log in to HOST as LOGIN for TTL.
    Add {
        user: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        login: String,
        /// e.g. 30m, 8h, 7d
        #[arg(long)]
        ttl: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    List {
        #[arg(long)]
        active: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant; its live sessions end within a second.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    List {
        #[arg(long)]
        active: bool,
        /// Newest N sessions.
        #[arg(long, default_value_t = 500)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// End a live session within a second.
    Kill { id: String },
}

#[derive(Subcommand, Debug)]
pub enum RecordingsCmd {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write the asciicast v2 file to stdout.
    Export { id: String },
    /// Replay a recording in this terminal.
    Play {
        id: String,
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause between events, in seconds.
        #[arg(long, default_value_t = 2.0)]
        idle_limit: f64,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub cmd: Option<AuditCmd>,
    /// Only events newer than this (30m, 24h, 7d) or after this time.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long, conflicts_with = "user")]
    pub agent: Option<String>,
    #[arg(long, value_parser = ["allow", "deny", "error"])]
    pub outcome: Option<String>,
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub session: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Same as --format json.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Walk the hash chain and name the first broken link (on the server, or
    /// offline in an exported JSONL file with --file).
    Verify {
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write evidence: every event with its hashes, and the chain head, so an
    /// auditor can check it offline (`gatehouse audit verify --file`).
    Export {
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_parser = ["jsonl", "csv"], default_value = "jsonl")]
        format: String,
    },
}

pub async fn ca(g: &Global, cmd: CaCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    let (known_hosts, host_ca) = match cmd {
        CaCmd::Show { known_hosts, host_ca } => (known_hosts, host_ca),
        CaCmd::Rotate { grace } => {
            let v = api.post("/api/v1/ca/rotate", &serde_json::json!({ "grace": grace })).await?;
            println!("New user CA {} signs from now on.", s(&v, "new_fingerprint"));
            println!(
                "The previous one ({}) stays trusted until {}.",
                s(&v, "previous_fingerprint"),
                s(&v, "previous_trusted_until")
            );
            println!("Put these lines in every target's TrustedUserCAKeys:");
            println!("{}", s(&v, "user_ca"));
            return Ok(());
        }
    };
    let v = api.get("/api/v1/ca").await?;
    match (known_hosts, host_ca) {
        (Some(pattern), _) => {
            if pattern.is_empty() || pattern.contains(char::is_whitespace) {
                bail!("the domain pattern must be one word, e.g. '*.example.com' or 'bastion.example.com'");
            }
            println!("@cert-authority {pattern} {}", s(&v, "host_ca"));
        }
        (None, true) => println!("{}", s(&v, "host_ca")),
        (None, false) => println!("{}", s(&v, "user_ca")),
    }
    Ok(())
}

fn read_keys(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let keys: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    if keys.is_empty() {
        bail!("{} holds no public key", path.display());
    }
    if keys.iter().any(|k| k.contains("PRIVATE KEY")) {
        bail!("{} is a private key; pass the .pub file", path.display());
    }
    Ok(keys)
}

pub async fn user(g: &Global, cmd: UserCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        UserCmd::Add { name, ssh_keys, role } => {
            let mut keys = Vec::new();
            for p in &ssh_keys {
                keys.extend(read_keys(p)?);
            }
            let u = api.post("/api/v1/users", &json!({"name": name, "role": role, "ssh_keys": keys})).await?;
            println!("added user {} ({}) with {} key(s)", s(&u, "name"), s(&u, "role"), list(&u["keys"]).len());
        }
        UserCmd::AddKey { name, ssh_key } => {
            for k in read_keys(&ssh_key)? {
                api.post(&format!("/api/v1/users/{}/keys", enc(&name)), &json!({"ssh_key": k})).await?;
            }
            println!("added key(s) to {name}");
        }
        UserCmd::SetRole { name, role } => {
            api.post(&format!("/api/v1/users/{}/role", enc(&name)), &json!({"role": role})).await?;
            println!("{name} is now {role}");
        }
        UserCmd::List { json } => {
            let v = api.get("/api/v1/users").await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["NAME", "ROLE", "KEYS", "CREATED"],
                list(&v)
                    .iter()
                    .map(|u| {
                        let keys: Vec<String> = list(&u["keys"]).iter().map(|k| s(k, "fingerprint")).collect();
                        vec![
                            s(u, "name"),
                            s(u, "role"),
                            if keys.is_empty() { "-".into() } else { keys.join(",") },
                            time(&u["created_at"]),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}

pub async fn host(g: &Global, cmd: HostCmd) -> anyhow::Result<()> {
    if let HostCmd::Enroll(cmd) = cmd {
        return crate::cli_pki::host(g, cmd).await;
    }
    let api = Api::new(g)?;
    match cmd {
        HostCmd::Enroll(_) => {}
        HostCmd::Add { name, address, groups, host_key, scan, trust_host_ca } => {
            if host_key.is_none() && !scan && !trust_host_ca {
                bail!(
                    "give --host-key FILE_OR_KEYLINE, --scan, or --trust-host-ca: Gatehouse never trusts a target's key on first use silently"
                );
            }
            let key = match host_key {
                Some(k) if std::path::Path::new(&k).is_file() => {
                    let keys = read_keys(&PathBuf::from(&k))?;
                    Some(keys.into_iter().next().unwrap_or_default())
                }
                other => other,
            };
            let v = api
                .post(
                    "/api/v1/hosts",
                    &json!({"name": name, "address": address, "groups": groups, "host_key": key, "scan": scan, "trust_host_ca": trust_host_ca}),
                )
                .await?;
            let h = &v["host"];
            if trust_host_ca {
                println!(
                    "added host {} at {} with no pinned key: it must present a host certificate from Gatehouse's host CA \
                     (gatehouse host enroll-token {})",
                    s(h, "name"),
                    s(h, "address"),
                    s(h, "name")
                );
            } else if scan {
                println!("scanned {} at {}: {}", s(h, "name"), s(h, "address"), s(&v, "scanned_fingerprint"));
                println!(
                    "pinned; verify this fingerprint with the host's owner (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)"
                );
            } else {
                println!(
                    "added host {} at {} with pinned key {}",
                    s(h, "name"),
                    s(h, "address"),
                    s(h, "host_key_fingerprint")
                );
            }
        }
        HostCmd::List { json } => {
            let v = api.get("/api/v1/hosts").await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["NAME", "ADDRESS", "GROUPS", "HOST KEY"],
                list(&v)
                    .iter()
                    .map(|h| {
                        let groups: Vec<String> =
                            list(&h["groups"]).iter().filter_map(|g| g.as_str().map(str::to_string)).collect();
                        vec![
                            s(h, "name"),
                            s(h, "address"),
                            if groups.is_empty() { "-".into() } else { groups.join(",") },
                            if h["host_key_fingerprint"].is_string() {
                                s(h, "host_key_fingerprint")
                            } else {
                                "(host CA)".into()
                            },
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}

pub async fn grant(g: &Global, cmd: GrantCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        GrantCmd::Add { user, host, login, ttl, reason } => {
            let v = api
                .post(
                    "/api/v1/grants",
                    &json!({"user": user, "host": host, "login": login, "ttl": ttl, "reason": reason}),
                )
                .await?;
            println!(
                "{} : {} may log in to {} as {} until {}",
                s(&v, "id"),
                s(&v, "subject_name"),
                s(&v, "host_name"),
                s(&v, "login"),
                time(&v["expires_at"])
            );
        }
        GrantCmd::List { active, json } => {
            let v = api.get(&format!("/api/v1/grants?active={active}")).await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["ID", "SUBJECT", "HOST", "LOGIN", "EXPIRES", "STATUS", "REASON"],
                list(&v)
                    .iter()
                    .map(|g| {
                        vec![
                            s(g, "id"),
                            format!("{}:{}", s(g, "subject_kind"), s(g, "subject_name")),
                            s(g, "host_name"),
                            s(g, "login"),
                            time(&g["expires_at"]),
                            s(g, "status"),
                            s(g, "reason"),
                        ]
                    })
                    .collect(),
            );
        }
        GrantCmd::Revoke { id } => {
            let v = api.post(&format!("/api/v1/grants/{}/revoke", enc(&id)), &json!({})).await?;
            println!("revoked {}", s(&v, "id"));
        }
    }
    Ok(())
}

pub async fn sessions(g: &Global, cmd: SessionsCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        SessionsCmd::List { active, limit, json } => {
            let v = api.get(&format!("/api/v1/sessions?active={active}&limit={limit}")).await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["ID", "KIND", "WHO", "TARGET", "CLIENT", "MCP SESSION", "STARTED", "ENDED", "END REASON", "EXIT"],
                list(&v)
                    .iter()
                    .map(|x| {
                        let exit = match (x["exit_status"].as_i64(), x["exit_signal"].as_str()) {
                            (_, Some(sig)) => format!("signal {sig}"),
                            (Some(c), None) => c.to_string(),
                            _ => "-".into(),
                        };
                        vec![
                            s(x, "id"),
                            s(x, "kind"),
                            format!("{}:{}", s(x, "subject_kind"), s(x, "subject_name")),
                            format!("{}@{}", s(x, "login"), s(x, "host_name")),
                            s(x, "client_addr"),
                            s(x, "mcp_session_id"),
                            time(&x["started_at"]),
                            time(&x["ended_at"]),
                            s(x, "end_reason"),
                            exit,
                        ]
                    })
                    .collect(),
            );
        }
        SessionsCmd::Kill { id } => {
            let v = api.post(&format!("/api/v1/sessions/{}/kill", enc(&id)), &json!({})).await?;
            println!("killed {}", s(&v, "id"));
        }
    }
    Ok(())
}

pub async fn recordings(g: &Global, cmd: RecordingsCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        RecordingsCmd::List { json } => {
            let v = api.get("/api/v1/recordings").await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["ID", "SESSION", "WHO", "TARGET", "KIND", "COMMAND", "STARTED", "IN", "OUT", "SHA-256"],
                list(&v)
                    .iter()
                    .map(|r| {
                        vec![
                            s(r, "id"),
                            s(r, "session_id"),
                            s(r, "subject_name"),
                            format!("{}@{}", s(r, "login"), s(r, "host_name")),
                            s(r, "kind"),
                            s(r, "command"),
                            time(&r["started_at"]),
                            s(r, "bytes_in"),
                            s(r, "bytes_out"),
                            s(r, "file_sha256"),
                        ]
                    })
                    .collect(),
            );
        }
        RecordingsCmd::Export { id } => {
            let bytes = api.get_bytes(&format!("/api/v1/recordings/{}/cast", enc(&id))).await?;
            std::io::stdout().write_all(&bytes)?;
        }
        RecordingsCmd::Play { id, speed, idle_limit } => {
            if !(speed > 0.0 && speed.is_finite()) {
                bail!("--speed must be a positive number");
            }
            let bytes = api.get_bytes(&format!("/api/v1/recordings/{}/cast", enc(&id))).await?;
            play(&bytes, speed, idle_limit).await?;
        }
    }
    Ok(())
}

/// Replay the "o" events of an asciicast v2 file with their timing.
async fn play(bytes: &[u8], speed: f64, idle_limit: f64) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap_or("")).context("not an asciicast file")?;
    if header["version"] != 2 {
        bail!("not an asciicast v2 recording");
    }
    let mut out = std::io::stdout();
    let mut last = 0.0f64;
    for line in lines {
        let Ok(ev) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(t), Some(code), Some(data)) = (ev[0].as_f64(), ev[1].as_str(), ev[2].as_str()) else { continue };
        if code != "o" {
            continue;
        }
        let wait = ((t - last).max(0.0)).min(idle_limit.max(0.0)) / speed;
        last = t;
        if wait > 0.0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
        }
        out.write_all(data.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

pub async fn audit(g: &Global, args: AuditArgs) -> anyhow::Result<()> {
    match args.cmd {
        Some(AuditCmd::Verify { file: Some(f) }) => return verify_file(&f),
        Some(AuditCmd::Verify { file: None }) => {
            let v = Api::new(g)?.get("/api/v1/audit/verify").await?;
            return match v.get("broken_at").filter(|b| !b.is_null()) {
                None => {
                    println!("audit chain intact: {} events, head {}", s(&v, "events"), s(&v, "head"));
                    Ok(())
                }
                Some(b) => bail!("audit chain broken at event #{} ({}): {}", s(b, "seq"), s(b, "id"), s(b, "problem")),
            };
        }
        Some(AuditCmd::Export { since, until, format }) => return export(g, since, until, &format).await,
        None => {}
    }
    let api = Api::new(g)?;
    let mut q = vec![format!("limit={}", args.limit)];
    for (k, v) in [
        ("since", &args.since),
        ("user", &args.user),
        ("agent", &args.agent),
        ("outcome", &args.outcome),
        ("action", &args.action),
        ("session", &args.session),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(v)));
        }
    }
    let v = api.get(&format!("/api/v1/audit?{}", q.join("&"))).await?;
    let format = if args.json { Format::Json } else { args.format };
    match format {
        Format::Json => fmt::json(&v)?,
        Format::Csv => {
            let mut w = String::from(
                "time,actor_kind,actor,action,resource,outcome,severity,reason,session_id,client_addr,mcp_session_id,id,hash\n",
            );
            for e in list(&v) {
                let cells = [
                    time(&e["at"]),
                    s(e, "actor_kind"),
                    s(e, "actor"),
                    s(e, "action"),
                    s(e, "resource"),
                    s(e, "outcome"),
                    s(e, "severity"),
                    s(e, "reason"),
                    s(e, "session_id"),
                    s(e, "client_addr"),
                    s(e, "mcp_session_id"),
                    s(e, "id"),
                    s(e, "hash"),
                ];
                w.push_str(&cells.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
                w.push('\n');
            }
            print!("{w}");
        }
        Format::Table => table(
            &["TIME", "ACTOR", "ACTION", "RESOURCE", "OUTCOME", "REASON", "SESSION"],
            list(&v)
                .iter()
                .map(|e| {
                    vec![
                        time(&e["at"]),
                        format!("{}:{}", s(e, "actor_kind"), s(e, "actor")),
                        s(e, "action"),
                        s(e, "resource"),
                        s(e, "outcome"),
                        s(e, "reason"),
                        s(e, "session_id"),
                    ]
                })
                .collect(),
        ),
    }
    Ok(())
}

fn csv_cell(c: &str) -> String {
    // Neutralise spreadsheet formulas and quote when needed.
    let c = if c.starts_with(['=', '+', '-', '@']) && c != "-" { format!("'{c}") } else { c.to_string() };
    if c.contains([',', '"', '\n', '\r']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c }
}

/// Every event (with hashes) since/until, then the chain head.
async fn export(g: &Global, since: Option<String>, until: Option<String>, format: &str) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    let mut q = Vec::new();
    if let Some(v) = since {
        q.push(format!("since={}", enc(&v)));
    }
    if let Some(v) = until {
        q.push(format!("until={}", enc(&v)));
    }
    let v = api.get(&format!("/api/v1/audit/export?{}", q.join("&"))).await?;
    let events = list(&v["events"]);
    let chain = &v["chain"];
    let mut out = std::io::stdout().lock();
    if format == "jsonl" {
        for e in events {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
        writeln!(out, "{}", serde_json::to_string(&json!({"chain": chain, "exported_at": v["exported_at"]}))?)?;
    } else {
        writeln!(
            out,
            "seq,id,at,actor_kind,actor,action,resource,outcome,severity,reason,session_id,client_addr,mcp_session_id,details,prev_hash,hash"
        )?;
        for e in events {
            let cells = [
                s(e, "seq"),
                s(e, "id"),
                s(e, "at"),
                s(e, "actor_kind"),
                s(e, "actor"),
                s(e, "action"),
                s(e, "resource"),
                s(e, "outcome"),
                s(e, "severity"),
                s(e, "reason"),
                s(e, "session_id"),
                s(e, "client_addr"),
                s(e, "mcp_session_id"),
                e["details"].to_string(),
                s(e, "prev_hash"),
                s(e, "hash"),
            ];
            writeln!(out, "{}", cells.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","))?;
        }
        writeln!(
            out,
            "# chain head {} over {} events; broken: {}",
            s(chain, "head"),
            s(chain, "events"),
            chain["broken_at"]
        )?;
    }
    Ok(())
}

/// Check an exported JSONL file offline: each event's hash covers its
/// content and its predecessor's hash, links are unbroken, and the last hash
/// is the chain head recorded at export time.
fn verify_file(path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut prev: Option<String> = None;
    let mut n = 0u64;
    let mut head = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("line {} is not JSON", i + 1))?;
        if let Some(chain) = v.get("chain") {
            head = chain.get("head").and_then(|h| h.as_str()).map(str::to_string);
            continue;
        }
        let e: gatehouse_broker::AuditEvent =
            serde_json::from_value(v).with_context(|| format!("line {} is not an audit event", i + 1))?;
        if let Some(p) = &prev
            && &e.prev_hash != p
        {
            bail!(
                "broken at line {} (event #{} {}): its predecessor hash does not match the previous event",
                i + 1,
                e.seq,
                e.id
            );
        }
        if gatehouse_broker::audit::link_hash(&e.prev_hash, &e) != e.hash {
            bail!("broken at line {} (event #{} {}): its content does not match its hash", i + 1, e.seq, e.id);
        }
        prev = Some(e.hash.clone());
        n += 1;
    }
    match (&prev, &head) {
        (Some(p), Some(h)) if p == h => {}
        (None, _) => bail!("no events in {}", path.display()),
        (_, None) => bail!("no chain head line in {} (was it cut short?)", path.display()),
        (Some(p), Some(h)) => {
            bail!("the last event's hash {p} is not the exported chain head {h} (events were removed from the end)")
        }
    }
    println!("export intact: {n} events, chain head {}", prev.unwrap_or_default());
    Ok(())
}
