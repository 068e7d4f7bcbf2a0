//! CLI for certificates (`pki`), host enrolment (`host enroll-token`,
//! `host enroll`) and probes (`probe`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use gatehouse_ca::ssh_key::{Certificate, PrivateKey, PublicKey};
use serde_json::{Value, json};

use crate::Global;
use crate::client::{Api, enc};
use crate::fmt::{self, list, s, table, time};

#[derive(Subcommand, Debug)]
pub enum PkiCmd {
    /// Print the X.509 root certificate (PEM) to trust.
    Ca {
        /// Also print the issuing intermediate.
        #[arg(long)]
        chain: bool,
    },
    /// Let GROUP get certificates for names matching a pattern.
    Allow {
        group: String,
        /// `*.edge.example.com` (one label) or an exact name.
        #[arg(long, value_name = "PATTERN")]
        domain: String,
        /// Longest certificate lifetime for these names (default 90d).
        #[arg(long, value_name = "DURATION")]
        max_ttl: Option<String>,
    },
    /// Stop allowing a pattern for a group.
    Disallow {
        group: String,
        #[arg(long, value_name = "PATTERN")]
        domain: String,
    },
    /// List allowed domains per group.
    Domains {
        #[arg(long)]
        json: bool,
    },
    /// Sign a CSR (the private key stays with you).
    Sign {
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// Lifetime (capped by the group's maximum; default: that maximum).
        #[arg(long)]
        ttl: Option<String>,
        /// Name to fetch the bundle by later (default: the first DNS name).
        #[arg(long)]
        name: Option<String>,
        /// Write leaf.pem, chain.pem, fullchain.pem and root.pem here instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The latest bundle issued under NAME.
    Get {
        name: String,
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Issued certificates (the latest per name unless --all).
    List {
        /// Only those expiring within this time (e.g. 30d), expired included.
        #[arg(long, value_name = "DURATION")]
        expiring_within: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a certificate; it appears in /pki/crl.pem.
    Revoke {
        serial: String,
        /// Free text; starting with key-compromise, superseded, cessation-of-operation,
        /// affiliation-changed or privilege-withdrawn sets that CRL reason code.
        #[arg(long)]
        reason: String,
    },
    /// Print the current CRL (PEM).
    Crl,
}

#[derive(Subcommand, Debug)]
pub enum HostEnrollCmd {
    /// Issue a one-time token (1 h) with which HOST enrols its host key.
    EnrollToken { host: String },
    /// On the target: send the host's public key, write its host certificate
    /// and print the sshd_config lines. With --renew-before, run it again from
    /// cron: it renews (proving possession of the host key) when due.
    Enroll {
        /// The one-time token from `host enroll-token` (not needed to renew).
        #[arg(env = "GATEHOUSE_ENROLL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The host's public key file.
        #[arg(long, value_name = "FILE", default_value = "/etc/ssh/ssh_host_ed25519_key.pub")]
        host_key: PathBuf,
        /// The host's private key, to sign renewals (default: --host-key without .pub).
        #[arg(long, value_name = "FILE")]
        host_private_key: Option<PathBuf>,
        /// Where to write the certificate.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Renew only when the certificate at --out expires within this time.
        #[arg(long, value_name = "DURATION")]
        renew_before: Option<String>,
    },
    /// Host certificates issued to HOST.
    Certificates {
        host: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProbeCmd {
    /// Probe a registered target now (and every --interval).
    Create {
        /// A registered host name, its IP, or a DNS name under allowed domains; `:PORT` optional.
        target: String,
        #[arg(long, value_parser = ["tcp", "tls", "ssh", "https"])]
        kind: String,
        /// Compare the served certificate with the latest bundle of this name.
        #[arg(long, value_name = "NAME")]
        expect_certificate_name: Option<String>,
        /// Run again every this long (at least 10s).
        #[arg(long)]
        interval: Option<String>,
        /// Probe as a caller limited to these groups would.
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// A probe and its latest results.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run a probe again now.
    Run {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a probe (its results stay).
    Delete { id: String },
}

fn write_bundle(dir: &Path, b: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, key) in [
        ("leaf.pem", "leaf_pem"),
        ("chain.pem", "chain_pem"),
        ("fullchain.pem", "fullchain_pem"),
        ("root.pem", "root_pem"),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, b[key].as_str().unwrap_or_default())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn print_bundle(b: &Value, out_dir: Option<&Path>, json: bool) -> anyhow::Result<()> {
    if json {
        return fmt::json(b);
    }
    let names: Vec<String> = list(&b["dns_names"]).iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
    let summary = format!(
        "{} serial {} for {} (group {}), valid until {}, sha256 {}",
        s(b, "name"),
        s(b, "serial"),
        names.join(","),
        s(b, "group"),
        time(&b["not_after"]),
        s(b, "fingerprint_sha256")
    );
    match out_dir {
        Some(dir) => {
            write_bundle(dir, b)?;
            println!("{summary}");
            println!("wrote leaf.pem, chain.pem, fullchain.pem and root.pem to {}", dir.display());
            if b["ttl_capped"] == true {
                println!("note: the lifetime was capped at the group's maximum");
            }
        }
        None => {
            eprintln!("{summary}");
            print!("{}", s(b, "fullchain_pem"));
        }
    }
    Ok(())
}

pub async fn pki(g: &Global, cmd: PkiCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        PkiCmd::Ca { chain } => {
            let v = api.get("/api/v1/pki/ca").await?;
            print!("{}", s(&v, "root_pem"));
            if chain {
                print!("{}", s(&v, "chain_pem"));
            }
        }
        PkiCmd::Allow { group, domain, max_ttl } => {
            let v =
                api.post("/api/v1/pki/domains", &json!({"group": group, "domain": domain, "max_ttl": max_ttl})).await?;
            let days = v["max_ttl_secs"].as_i64().unwrap_or(0) / 86400;
            println!("group {} may get certificates for {} (up to {days}d)", s(&v, "group"), s(&v, "pattern"));
        }
        PkiCmd::Disallow { group, domain } => {
            api.post("/api/v1/pki/domains/remove", &json!({"group": group, "domain": domain})).await?;
            println!("group {group} may no longer get certificates for {domain}");
        }
        PkiCmd::Domains { json } => {
            let v = api.get("/api/v1/pki/domains").await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["GROUP", "PATTERN", "MAX TTL", "CREATED"],
                list(&v)
                    .iter()
                    .map(|r| {
                        vec![
                            s(r, "group"),
                            s(r, "pattern"),
                            format!("{}d", r["max_ttl_secs"].as_i64().unwrap_or(0) / 86400),
                            time(&r["created_at"]),
                        ]
                    })
                    .collect(),
            );
        }
        PkiCmd::Sign { csr, ttl, name, out_dir, json } => {
            let pem = std::fs::read_to_string(&csr).with_context(|| format!("cannot read {}", csr.display()))?;
            if pem.contains("PRIVATE KEY") {
                bail!("{} holds a private key; pass the CSR (the key never leaves your machine)", csr.display());
            }
            let v = api.post("/api/v1/pki/sign", &json!({"csr_pem": pem, "ttl": ttl, "name": name})).await?;
            print_bundle(&v, out_dir.as_deref(), json)?;
        }
        PkiCmd::Get { name, out_dir, json } => {
            let v = api.get(&format!("/api/v1/pki/certificates/{}", enc(&name))).await?;
            print_bundle(&v, out_dir.as_deref(), json)?;
        }
        PkiCmd::List { expiring_within, all, json } => {
            let mut q = vec![format!("all={all}")];
            if let Some(w) = &expiring_within {
                q.push(format!("expiring_within={}", enc(w)));
            }
            let v = api.get(&format!("/api/v1/pki/certificates?{}", q.join("&"))).await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["NAME", "SERIAL", "GROUP", "DNS NAMES", "NOT AFTER", "STATUS", "REQUESTED BY"],
                list(&v)
                    .iter()
                    .map(|c| {
                        let names: Vec<String> =
                            list(&c["dns_names"]).iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
                        vec![
                            s(c, "name"),
                            s(c, "serial"),
                            s(c, "group"),
                            names.join(","),
                            time(&c["not_after"]),
                            s(c, "status"),
                            s(c, "requested_by"),
                        ]
                    })
                    .collect(),
            );
        }
        PkiCmd::Revoke { serial, reason } => {
            let v = api
                .post(&format!("/api/v1/pki/certificates/{}/revoke", enc(&serial)), &json!({"reason": reason}))
                .await?;
            println!("revoked {} ({}) at {}", s(&v, "serial"), s(&v, "name"), time(&v["revoked_at"]));
        }
        PkiCmd::Crl => {
            let bytes = api.get_bytes("/pki/crl.pem").await?;
            print!("{}", String::from_utf8_lossy(&bytes));
        }
    }
    Ok(())
}

/// `host enroll-token`, `host enroll`, `host certificates`.
pub async fn host(g: &Global, cmd: HostEnrollCmd) -> anyhow::Result<()> {
    match cmd {
        HostEnrollCmd::EnrollToken { host } => {
            let api = Api::new(g)?;
            let v = api.post(&format!("/api/v1/hosts/{}/enroll-token", enc(&host)), &json!({})).await?;
            println!(
                "One-time enrolment token for {} (shown once, valid until {}):",
                s(&v, "host"),
                time(&v["expires_at"])
            );
            println!("{}", s(&v, "token"));
            println!(
                "On the target, as root:\n  gatehouse host enroll --url {} TOKEN --host-key /etc/ssh/ssh_host_ed25519_key.pub \\\n    --out /etc/ssh/ssh_host_ed25519_key-cert.pub --renew-before 7d",
                g.url
            );
        }
        HostEnrollCmd::Certificates { host, json } => {
            let api = Api::new(g)?;
            let v = api.get(&format!("/api/v1/hosts/{}/certificates", enc(&host))).await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["SERIAL", "KEY", "PRINCIPALS", "ISSUED", "NOT AFTER", "VIA", "SUPERSEDED"],
                list(&v)
                    .iter()
                    .map(|c| {
                        let p: Vec<String> =
                            list(&c["principals"]).iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
                        vec![
                            s(c, "serial"),
                            s(c, "key_fingerprint"),
                            p.join(","),
                            time(&c["issued_at"]),
                            time(&c["not_after"]),
                            s(c, "via"),
                            time(&c["superseded_at"]),
                        ]
                    })
                    .collect(),
            );
        }
        HostEnrollCmd::Enroll { token, host_key, host_private_key, out, renew_before } => {
            enroll(g, token, &host_key, host_private_key, &out, renew_before.as_deref()).await?;
        }
    }
    Ok(())
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn fmt_unix(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// POST without the admin token (the target has none).
async fn post_public(url: &str, bearer: Option<&str>, body: &Value) -> anyhow::Result<Value> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let mut req = http.post(url).json(body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| anyhow!("cannot reach Gatehouse at {url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or("request refused");
        bail!("{msg}");
    }
    Ok(v)
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("--out must name a file"))?
    ));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

async fn enroll_with_token(base: &str, token: &str, key_line: &str) -> anyhow::Result<Value> {
    post_public(&format!("{base}/api/v1/enroll/host"), Some(token.trim()), &json!({"public_key": key_line})).await
}

/// Renew `cert` by signing the renewal request with the host's private key
/// (read here, never sent).
async fn renew(
    base: &str,
    cert: &Certificate,
    private_path: &Path,
    public: &PublicKey,
    now: u64,
) -> anyhow::Result<Value> {
    let private =
        zeroize::Zeroizing::new(std::fs::read_to_string(private_path).with_context(|| {
            format!("cannot read the host private key {} to sign the renewal", private_path.display())
        })?);
    let private = PrivateKey::from_openssh(private.as_bytes())
        .map_err(|_| anyhow!("{} is not an OpenSSH private key", private_path.display()))?;
    if private.public_key().key_data() != public.key_data() {
        bail!("{} does not belong to the host key", private_path.display());
    }
    let host = cert.valid_principals().first().cloned().unwrap_or_default();
    let signature = gatehouse_ca::sign_host_renewal(&private, &host, cert.serial(), now)
        .map_err(|e| anyhow!("cannot sign the renewal: {e}"))?;
    let certificate = cert.to_openssh().map_err(|e| anyhow!("cannot encode the certificate: {e}"))?;
    post_public(
        &format!("{base}/api/v1/enroll/host/renew"),
        None,
        &json!({"certificate": certificate, "time": now, "signature": signature}),
    )
    .await
}

async fn enroll(
    g: &Global,
    token: Option<String>,
    host_key: &Path,
    host_private_key: Option<PathBuf>,
    out: &Path,
    renew_before: Option<&str>,
) -> anyhow::Result<()> {
    let base = g.url.trim_end_matches('/');
    let key_text = std::fs::read_to_string(host_key).with_context(|| format!("cannot read {}", host_key.display()))?;
    if key_text.contains("PRIVATE KEY") {
        bail!("{} is a private key; pass the .pub file (only the public key is sent)", host_key.display());
    }
    let key_line = key_text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
    let public = gatehouse_ca::parse_public_key(key_line).map_err(|e| anyhow!("{}: {e}", host_key.display()))?;
    let renew_text = renew_before.unwrap_or("").trim().to_string();
    let renew_before =
        renew_before.map(|d| humantime::parse_duration(d.trim())).transpose().context("--renew-before")?;

    // The certificate already at --out, if it certifies this key.
    let existing = std::fs::read_to_string(out)
        .ok()
        .and_then(|t| Certificate::from_openssh(t.trim()).ok())
        .filter(|c| c.public_key() == public.key_data());
    let now = now_unix();
    let issued = match (&existing, renew_before) {
        (Some(cert), Some(before)) if cert.valid_before() > now => {
            let left = cert.valid_before() - now;
            if left > before.as_secs() {
                println!(
                    "{} is valid until {} (more than {renew_text} from now): nothing to do",
                    out.display(),
                    fmt_unix(cert.valid_before()),
                );
                return Ok(());
            }
            println!("{} expires {}: renewing", out.display(), fmt_unix(cert.valid_before()));
            let private_path = host_private_key.unwrap_or_else(|| host_key.with_extension(""));
            match renew(base, cert, &private_path, &public, now).await {
                Ok(v) => v,
                Err(e) => match token.filter(|t| !t.trim().is_empty()) {
                    Some(t) => {
                        eprintln!("renewal failed ({e:#}); enrolling with the token instead");
                        enroll_with_token(base, &t, key_line).await?
                    }
                    None => return Err(e),
                },
            }
        }
        _ => {
            let Some(token) = token.filter(|t| !t.trim().is_empty()) else {
                if existing.is_some() {
                    bail!(
                        "{} has expired: enrol again with a new token (gatehouse host enroll-token HOST)",
                        out.display()
                    );
                }
                bail!("give the one-time token from `gatehouse host enroll-token HOST`");
            };
            enroll_with_token(base, &token, key_line).await?
        }
    };
    let cert_line = s(&issued, "certificate");
    let cert = Certificate::from_openssh(&cert_line).map_err(|_| anyhow!("Gatehouse answered with no certificate"))?;
    if PublicKey::from(cert.public_key().clone()).key_data() != public.key_data() {
        bail!("the certificate Gatehouse returned is for another key; not writing it");
    }
    write_atomic(out, &format!("{cert_line}\n"))?;
    let ca_path =
        out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("gatehouse_user_ca.pub");
    write_atomic(&ca_path, &format!("{}\n", s(&issued, "user_ca")))?;
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let principals: Vec<String> =
        list(&issued["principals"]).iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
    println!(
        "wrote {} for {} (serial {}, valid until {})",
        out.display(),
        principals.join(","),
        s(&issued, "serial"),
        time(&issued["not_after"])
    );
    println!("Add to sshd_config and reload sshd:");
    println!("HostCertificate {}", abs(out).display());
    println!("TrustedUserCAKeys {}", abs(&ca_path).display());
    Ok(())
}

fn print_probe(p: &Value) {
    let last = &p["last_result"];
    let o = &last["observed"];
    println!("probe {} : {} {} (host {})", s(p, "id"), s(p, "kind"), s(p, "target"), s(p, "host_name"));
    println!(
        "  status {}  latency {} ms  at {}{}",
        s(last, "status"),
        s(last, "latency_ms"),
        time(&last["at"]),
        p["interval_secs"].as_i64().map(|i| format!("  every {i}s")).unwrap_or_default()
    );
    if let Some(e) = last["error"].as_str() {
        println!("  error: {e}");
    }
    if let Some(a) = o["address"].as_str() {
        println!("  address {a}");
    }
    let c = &o["certificate"];
    if c.is_object() {
        let names: Vec<String> = list(&c["dns_names"]).iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
        println!("  certificate subject {}  issuer {}", s(c, "subject"), s(c, "issuer"));
        println!("  SANs {}  not after {}", names.join(","), time(&c["not_after"]));
        println!(
            "  sha256 {}  chains to Gatehouse root: {}",
            s(c, "fingerprint_sha256"),
            s(c, "chains_to_gatehouse_root")
        );
    }
    if o.get("matches_latest_bundle").is_some() {
        println!("  matches latest bundle of {}: {}", s(o, "expect_certificate_name"), s(o, "matches_latest_bundle"));
    }
    if o.get("host_key_fingerprint").is_some() {
        println!(
            "  host key {}  host certificate valid: {}",
            s(o, "host_key_fingerprint"),
            s(o, "host_certificate_valid")
        );
    }
    if o.get("http_status").is_some() {
        println!("  HTTP status {}", s(o, "http_status"));
    }
}

pub async fn probe(g: &Global, cmd: ProbeCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match cmd {
        ProbeCmd::Create { target, kind, expect_certificate_name, interval, groups, json } => {
            let v = api
                .post(
                    "/api/v1/probes",
                    &json!({
                        "target": target,
                        "kind": kind,
                        "expect_certificate_name": expect_certificate_name,
                        "interval": interval,
                        "groups": groups,
                    }),
                )
                .await?;
            if json {
                return fmt::json(&v);
            }
            print_probe(&v);
        }
        ProbeCmd::Get { id, json } => {
            let v = api.get(&format!("/api/v1/probes/{}", enc(&id))).await?;
            if json {
                return fmt::json(&v);
            }
            print_probe(&v);
        }
        ProbeCmd::Run { id, json } => {
            let v = api.post(&format!("/api/v1/probes/{}/run", enc(&id)), &json!({})).await?;
            if json {
                return fmt::json(&v);
            }
            print_probe(&v);
        }
        ProbeCmd::List { json } => {
            let v = api.get("/api/v1/probes").await?;
            if json {
                return fmt::json(&v);
            }
            table(
                &["ID", "KIND", "TARGET", "HOST", "STATUS", "LATENCY", "LAST RUN", "EVERY"],
                list(&v)
                    .iter()
                    .map(|p| {
                        vec![
                            s(p, "id"),
                            s(p, "kind"),
                            s(p, "target"),
                            s(p, "host_name"),
                            s(p, "status"),
                            p["latency_ms"].as_i64().map(|l| format!("{l} ms")).unwrap_or_else(|| "-".into()),
                            time(&p["last_result"]["at"]),
                            p["interval_secs"].as_i64().map(|i| format!("{i}s")).unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect(),
            );
        }
        ProbeCmd::Delete { id } => {
            api.post(&format!("/api/v1/probes/{}/delete", enc(&id)), &json!({})).await?;
            println!("deleted probe {id}");
        }
    }
    Ok(())
}
