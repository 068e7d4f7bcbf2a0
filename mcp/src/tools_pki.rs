//! Certificate and probe tools: renewal bots send CSRs (their keys stay
//! theirs), fetch bundles, and probe the live endpoint — all within their
//! groups' allowed domains and registered hosts.

use std::time::Duration;

use gatehouse_bastion::BastionError;
use gatehouse_bastion::probe::{self, ProbeRequest};
use gatehouse_broker::BrokerError;
use gatehouse_broker::pki::{Bundle, CertificateInfo};
use gatehouse_broker::probes::{Probe, ProbeKind};
use rmcp::ErrorData;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tools::{CallCtx, Outcome2, check_text, denied, failed, invalid, ok, rfc3339};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestCertificate {
    /// The certificate's name (usually its first DNS name), e.g. web.edge.example.com.
    pub name: String,
    /// A PKCS#10 certificate signing request in PEM. Your private key never leaves you.
    pub csr_pem: String,
    /// Lifetime in days (capped by your group's maximum).
    #[serde(default)]
    pub ttl_days: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetCertificate {
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListCertificates {
    /// Only certificates expiring within this many days.
    #[serde(default)]
    pub expiring_within_days: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProbe {
    /// HOST[:PORT]: a registered host name or address in your groups, or a
    /// DNS name under your allowed domains that resolves to one.
    pub target: String,
    /// tcp, tls, ssh or https.
    pub kind: String,
    /// For tls/https: compare the served certificate with the latest bundle of this name.
    #[serde(default)]
    pub expect_certificate_name: Option<String>,
    /// Also run every this many seconds (at least 10).
    #[serde(default)]
    pub interval_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetProbe {
    pub probe_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CertSummary {
    pub serial: String,
    pub name: String,
    pub group: String,
    pub dns_names: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub fingerprint_sha256: String,
    /// valid, expired or revoked
    pub status: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CertBundle {
    #[serde(flatten)]
    pub summary: CertSummary,
    pub leaf_pem: String,
    pub chain_pem: String,
    pub fullchain_pem: String,
    pub root_pem: String,
    pub ttl_capped: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CertList {
    pub certificates: Vec<CertSummary>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProbeOut {
    pub probe_id: String,
    pub target: String,
    pub kind: String,
    pub host: String,
    pub expect_certificate_name: Option<String>,
    pub interval_seconds: Option<i64>,
    /// ok, failed or refused (null until the first run finishes).
    pub status: Option<String>,
    pub latency_ms: Option<i64>,
    pub checked_at: Option<String>,
    pub error: Option<String>,
    /// What was seen: for TLS the served certificate (subject, SANs, issuer,
    /// not_after, fingerprint, matches_latest_bundle); for SSH the host key
    /// fingerprint and host certificate validity; for HTTPS the status code.
    pub observed: serde_json::Value,
}

fn summary(c: &CertificateInfo) -> CertSummary {
    CertSummary {
        serial: c.serial.clone(),
        name: c.name.clone(),
        group: c.group.clone(),
        dns_names: c.dns_names.clone(),
        not_before: rfc3339(c.not_before),
        not_after: rfc3339(c.not_after),
        fingerprint_sha256: c.fingerprint_sha256.clone(),
        status: c.status.clone(),
    }
}

fn bundle(b: Bundle) -> CertBundle {
    CertBundle {
        summary: summary(&b.info),
        leaf_pem: b.leaf_pem,
        chain_pem: b.chain_pem,
        fullchain_pem: b.fullchain_pem,
        root_pem: b.root_pem,
        ttl_capped: b.ttl_capped,
    }
}

fn probe_out(p: Probe) -> ProbeOut {
    let last = p.last_result.clone();
    ProbeOut {
        probe_id: p.id,
        target: p.target,
        kind: p.kind.as_str().to_string(),
        host: p.host_name,
        expect_certificate_name: p.expect_certificate_name,
        interval_seconds: p.interval_secs,
        status: p.status,
        latency_ms: p.latency_ms,
        checked_at: last.as_ref().map(|r| rfc3339(r.at)),
        error: last.as_ref().and_then(|r| r.error.clone()),
        observed: last.map(|r| r.observed).unwrap_or(serde_json::Value::Null),
    }
}

/// A broker refusal as the agent reads it.
fn refusal(resource: String, e: BrokerError) -> Outcome2 {
    match e {
        BrokerError::Denied(why) | BrokerError::NotFound(why) => denied(resource, format!("Access denied. {why}")),
        BrokerError::Invalid(why) => Outcome2::Invalid { resource, message: why },
        BrokerError::Ca(e) => Outcome2::Invalid { resource, message: e.to_string() },
        other => failed(resource, other),
    }
}

pub(crate) async fn request_certificate(ctx: &CallCtx<'_>, a: RequestCertificate) -> Result<Outcome2, ErrorData> {
    check_text("name", &a.name, 253)?;
    check_text("csr_pem", &a.csr_pem, 16 * 1024)?;
    let resource = format!("certificate:{}", gatehouse_broker::audit::cap(&a.name, 200));
    let ttl = a.ttl_days.map(|d| Duration::from_secs(u64::from(d) * 86_400));
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(invalid("ttl_days must be positive"));
    }
    let groups = ctx.p.agent.groups.clone();
    Ok(match ctx.st.broker.sign_csr(&ctx.p.agent.actor(), Some(&groups), Some(&a.name), &a.csr_pem, ttl).await {
        Ok(b) => ok(resource, bundle(b)),
        Err(e) => refusal(resource, e),
    })
}

pub(crate) async fn get_certificate(ctx: &CallCtx<'_>, a: GetCertificate) -> Result<Outcome2, ErrorData> {
    check_text("name", &a.name, 253)?;
    let resource = format!("certificate:{}", gatehouse_broker::audit::cap(&a.name, 200));
    let groups = ctx.p.agent.groups.clone();
    Ok(match ctx.st.broker.get_certificate(&ctx.p.agent.actor(), Some(&groups), &a.name).await {
        Ok(b) => ok(resource, bundle(b)),
        Err(e) => refusal(resource, e),
    })
}

pub(crate) async fn list_certificates(ctx: &CallCtx<'_>, a: ListCertificates) -> Result<Outcome2, ErrorData> {
    let within = a.expiring_within_days.map(|d| Duration::from_secs(u64::from(d) * 86_400));
    let groups = ctx.p.agent.groups.clone();
    Ok(match ctx.st.broker.list_certificates(Some(&groups), within, false).await {
        Ok(list) => ok("certificates", CertList { certificates: list.iter().map(summary).collect() }),
        Err(e) => refusal("certificates".into(), e),
    })
}

pub(crate) async fn create_probe(ctx: &CallCtx<'_>, a: CreateProbe) -> Result<Outcome2, ErrorData> {
    check_text("target", &a.target, 260)?;
    let kind = ProbeKind::parse(&a.kind).map_err(|e| invalid(e.to_string()))?;
    let resource = format!("probe:{}", gatehouse_broker::audit::cap(&a.target, 200));
    let req = ProbeRequest {
        target: a.target.clone(),
        kind,
        expect_certificate_name: a.expect_certificate_name.clone(),
        interval: a.interval_seconds.map(Duration::from_secs),
    };
    let groups = ctx.p.agent.groups.clone();
    Ok(match probe::create_probe(&ctx.st.broker, &ctx.p.agent.actor(), Some(&groups), &req).await {
        Ok(p) => ok(resource, probe_out(p)),
        Err(BastionError::Broker(e)) => refusal(resource, e),
        Err(e) => failed(resource, e),
    })
}

pub(crate) async fn get_probe(ctx: &CallCtx<'_>, a: GetProbe) -> Result<Outcome2, ErrorData> {
    check_text("probe_id", &a.probe_id, 40)?;
    let resource = format!("probe:{}", gatehouse_broker::audit::cap(&a.probe_id, 40));
    let groups = ctx.p.agent.groups.clone();
    Ok(match probe::get_probe(&ctx.st.broker, &ctx.p.agent.actor(), Some(&groups), &a.probe_id).await {
        Ok(p) => ok(resource, probe_out(p)),
        Err(BastionError::Broker(e)) => refusal(resource, e),
        Err(e) => failed(resource, e),
    })
}
