//! Probes: is a registered target up, and what does it serve? Kinds `tcp`,
//! `tls`, `ssh` and `https`, run at once and optionally on an interval.
//!
//! A probe is not a network scanner. It reaches only registered hosts inside
//! the caller's groups: by host name, by the IP address a host is registered
//! with, or by a DNS name under the caller's allowed certificate domains that
//! resolves to such a host (the connection goes to the checked address, so a
//! DNS answer cannot redirect it). Link-local and cloud metadata addresses are
//! refused even when registered. Every refusal is audited.
//!
//! TLS probes observe; they do not need to trust what is served. The verifier
//! records the presented chain (still checking the handshake signatures, so
//! the server holds the key of the certificate it shows) and the report says
//! whether the chain leads to Gatehouse's root and whether the leaf is the
//! latest bundle issued for the expected certificate name.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_broker::hosts::Host;
use gatehouse_broker::probes::{DueProbe, NewProbe, Probe, ProbeKind, ProbeResult, actor_from_label};
use gatehouse_broker::{Actor, AuditRecord, Broker, BrokerError, Outcome, now_ms};
use gatehouse_ca::DomainPattern;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::error::BastionError;
use crate::upstream::{HostTrust, verify_host};

/// How long one probe may take end to end.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest interval between scheduled runs.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// What a caller asks for.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    /// `HOST[:PORT]`: a registered host name, a registered IP, or a DNS name
    /// under the caller's allowed domains.
    pub target: String,
    pub kind: ProbeKind,
    /// For `tls`/`https`: compare the served leaf with the latest bundle of this name.
    pub expect_certificate_name: Option<String>,
    /// Run again every this long (at least 10 s).
    pub interval: Option<Duration>,
}

/// Where a target resolved to.
#[derive(Debug, Clone)]
struct Resolved {
    host: Host,
    addr: SocketAddr,
    /// The name to send as SNI / Host header.
    server_name: Option<String>,
}

/// Create a probe for a caller limited to `groups` (`None`: the admin, all
/// registered hosts), run it once, store it with its first result.
pub async fn create_probe(
    broker: &Broker,
    actor: &Actor,
    groups: Option<&[String]>,
    req: &ProbeRequest,
) -> Result<Probe, BastionError> {
    if let Some(n) = &req.expect_certificate_name {
        gatehouse_broker::pki::check_certificate_name(n)?;
        if !matches!(req.kind, ProbeKind::Tls | ProbeKind::Https) {
            return Err(BrokerError::Invalid("expect_certificate_name applies to tls and https probes".into()).into());
        }
    }
    if let Some(i) = req.interval
        && (i < gatehouse_broker::probes::MIN_PROBE_INTERVAL || i > MAX_PROBE_INTERVAL)
    {
        return Err(BrokerError::Invalid("probe interval must be between 10s and 24h".into()).into());
    }
    let resolved = match resolve(broker, groups, &req.target, req.kind).await? {
        Ok(r) => r,
        Err(why) => {
            broker
                .audit(
                    AuditRecord::new(
                        actor.clone(),
                        "probe.create",
                        format!("probe:{}", cap(&req.target)),
                        Outcome::Deny,
                    )
                    .reason(why.clone())
                    .details(json!({"kind": req.kind.as_str()})),
                )
                .await?;
            return Err(BrokerError::Denied(format!("probe refused: {why}")).into());
        }
    };
    let result = run(broker, &resolved, req.kind, req.expect_certificate_name.as_deref()).await;
    let probe = broker
        .insert_probe(
            actor,
            &NewProbe {
                target: req.target.clone(),
                kind: req.kind,
                host_id: resolved.host.id.clone(),
                host_name: resolved.host.name.clone(),
                expect_certificate_name: req.expect_certificate_name.clone(),
                interval: req.interval,
                groups: groups.map(<[String]>::to_vec),
            },
            &result,
        )
        .await?;
    Ok(probe)
}

/// A probe and its results (see [`Broker::get_probe`]).
pub async fn get_probe(
    broker: &Broker,
    actor: &Actor,
    groups: Option<&[String]>,
    id: &str,
) -> Result<Probe, BastionError> {
    Ok(broker.get_probe(actor, groups, id).await?)
}

/// Run an existing probe now, on behalf of `actor` (audited).
pub async fn run_probe_now(
    broker: &Broker,
    actor: &Actor,
    groups: Option<&[String]>,
    id: &str,
) -> Result<Probe, BastionError> {
    broker.get_probe(actor, groups, id).await?;
    let def = broker.probe_definition(id).await?;
    let scope = groups.map(<[String]>::to_vec).or(def.groups.clone());
    let result = run_definition(broker, &def, scope.as_deref()).await?;
    broker.record_probe_result(id, &result, Some(actor)).await?;
    Ok(broker.get_probe(actor, groups, id).await?)
}

async fn run_definition(
    broker: &Broker,
    def: &DueProbe,
    groups: Option<&[String]>,
) -> Result<ProbeResult, BastionError> {
    Ok(match resolve(broker, groups, &def.target, def.kind).await? {
        Ok(r) => run(broker, &r, def.kind, def.expect_certificate_name.as_deref()).await,
        Err(why) => ProbeResult {
            at: now_ms(),
            status: "refused".into(),
            latency_ms: None,
            error: Some(why),
            observed: json!({}),
        },
    })
}

/// Run scheduled probes until `shutdown`: claims due probes (one node runs
/// each), re-checks their scope, runs at most 8 at a time.
pub async fn run_scheduler(broker: Broker, shutdown: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let due = match broker.claim_due_probes(32).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read due probes");
                continue;
            }
        };
        for def in due {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let broker = broker.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let result = match run_definition(&broker, &def, def.groups.as_deref()).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(probe = %def.id, error = %e, "probe run failed");
                        return;
                    }
                };
                // Scheduled runs are telemetry; a refusal is a denial worth auditing.
                let creator = actor_from_label(&def.created_by);
                let audit_as = (result.status == "refused").then_some(&creator);
                if let Err(e) = broker.record_probe_result(&def.id, &result, audit_as).await {
                    tracing::warn!(probe = %def.id, error = %e, "cannot store a probe result");
                }
            });
        }
    }
}

fn cap(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// Addresses a probe never connects to, registered or not.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_link_local() {
                Some("a link-local address (169.254.0.0/16, where cloud metadata services live)")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                Some("not a unicast host address")
            } else if o == [100, 100, 100, 200] || o == [192, 0, 0, 192] {
                Some("a cloud metadata address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_address(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            if seg[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address (fe80::/10)")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast host address")
            } else if seg == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] {
                Some("a cloud metadata address")
            } else {
                None
            }
        }
    }
}

/// Split `HOST[:PORT]` (with `[v6]:port`, and tolerating a `scheme://`
/// prefix and a path).
fn split_target(target: &str) -> Result<(String, Option<u16>), String> {
    let t = target.trim();
    let t = t.split_once("://").map(|(_, rest)| rest).unwrap_or(t);
    let t = t.split('/').next().unwrap_or("");
    let bad = || format!("target {:?} must be HOST or HOST:PORT", cap(target));
    if t.is_empty() || t.len() > 260 {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(bad)?;
        let port = match p.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
            None if p.is_empty() => None,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else if t.matches(':').count() > 1 {
        (t.to_string(), None) // bare IPv6
    } else if let Some((h, p)) = t.rsplit_once(':') {
        (h.to_string(), Some(p.parse::<u16>().map_err(|_| bad())?))
    } else {
        (t.to_string(), None)
    };
    if port == Some(0) || host.is_empty() {
        return Err(bad());
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':')) {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

fn address_parts(address: &str) -> (String, u16) {
    if let Some(rest) = address.strip_prefix('[')
        && let Some((h, p)) = rest.split_once("]:")
    {
        return (h.to_string(), p.parse().unwrap_or(22));
    }
    match address.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(22)),
        None => (address.to_string(), 22),
    }
}

async fn lookup(host: &str) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, 0))).await {
        Ok(Ok(addrs)) => {
            let mut v: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            v.dedup();
            v
        }
        _ => Vec::new(),
    }
}

fn in_scope(host: &Host, groups: Option<&[String]>) -> bool {
    groups.is_none_or(|gs| host.groups.iter().any(|g| gs.contains(g)))
}

/// Resolve a target to a registered host inside `groups` and one address
/// to connect to. `Ok(Err(why))` is a refusal (audited by the caller).
async fn resolve(
    broker: &Broker,
    groups: Option<&[String]>,
    target: &str,
    kind: ProbeKind,
) -> Result<Result<Resolved, String>, BastionError> {
    let (name, port) = match split_target(target) {
        Ok(x) => x,
        Err(e) => return Err(BrokerError::Invalid(e).into()),
    };
    let hosts = broker.list_hosts().await?;
    let default_port = |h: &Host| match kind {
        ProbeKind::Tcp | ProbeKind::Ssh => address_parts(&h.address).1,
        ProbeKind::Tls | ProbeKind::Https => 443,
    };
    // The addresses each in-scope host is registered at.
    let mut scoped: Vec<(&Host, Vec<IpAddr>)> = Vec::new();
    for h in hosts.iter().filter(|h| in_scope(h, groups)) {
        scoped.push((h, lookup(&address_parts(&h.address).0).await));
    }
    let pick = |host: &Host, ips: &[IpAddr], server_name: Option<String>| -> Result<Resolved, String> {
        let mut why = format!("{} has no usable address", host.name);
        for ip in ips {
            match forbidden_address(*ip) {
                Some(what) => why = format!("{ip} is {what}; probes never go there"),
                None => {
                    return Ok(Resolved {
                        host: host.clone(),
                        addr: SocketAddr::new(*ip, port.unwrap_or_else(|| default_port(host))),
                        server_name,
                    });
                }
            }
        }
        Err(why)
    };

    // 1. A registered host name.
    if let Some(h) = hosts.iter().find(|h| h.name == name) {
        if !in_scope(h, groups) {
            return Ok(Err(format!("host {} is outside your groups", h.name)));
        }
        let ips = scoped.iter().find(|(s, _)| s.id == h.id).map(|(_, ips)| ips.clone()).unwrap_or_default();
        let addr_host = address_parts(&h.address).0;
        let sni = if addr_host.parse::<IpAddr>().is_err() { Some(addr_host) } else { None };
        return Ok(pick(h, &ips, sni));
    }
    // 2. An IP address: only as a registered host's address.
    if let Ok(ip) = name.parse::<IpAddr>() {
        if let Some(what) = forbidden_address(ip) {
            return Ok(Err(format!("{ip} is {what}; probes never go there")));
        }
        if let Some((h, _)) = scoped.iter().find(|(_, ips)| ips.contains(&ip)) {
            return Ok(pick(h, &[ip], None));
        }
        return Ok(Err(format!("{ip} is not the address of a registered host in your groups")));
    }
    // 3. A DNS name under the caller's allowed domains that resolves to a
    //    registered host in the groups.
    let Ok(dns) = gatehouse_ca::x509::check_dns_name(&name) else {
        return Ok(Err(format!("{} is neither a registered host nor a DNS name", cap(&name))));
    };
    let patterns = broker.pki_domains(groups).await?;
    let allowed = patterns.iter().filter_map(|r| DomainPattern::parse(&r.pattern).ok()).any(|p| p.matches(&dns));
    if !allowed {
        return Ok(Err(format!("{dns} is not a registered host and not under your allowed domains")));
    }
    let ips = lookup(&dns).await;
    if ips.is_empty() {
        return Ok(Err(format!("{dns} does not resolve")));
    }
    for ip in &ips {
        if let Some(what) = forbidden_address(*ip) {
            return Ok(Err(format!("{dns} resolves to {ip}, {what}; probes never go there")));
        }
    }
    if let Some((h, hips)) = scoped.iter().find(|(_, hips)| ips.iter().any(|ip| hips.contains(ip))) {
        let shared: Vec<IpAddr> = ips.iter().filter(|ip| hips.contains(ip)).copied().collect();
        return Ok(pick(h, &shared, Some(dns)));
    }
    let shown: Vec<String> = ips.iter().map(ToString::to_string).collect();
    Ok(Err(format!("{dns} resolves to {}, not a registered host in your groups", shown.join(", "))))
}

async fn run(broker: &Broker, r: &Resolved, kind: ProbeKind, expect: Option<&str>) -> ProbeResult {
    let start = Instant::now();
    let mut observed = json!({
        "address": r.addr.to_string(),
        "host": r.host.name,
    });
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, async {
        match kind {
            ProbeKind::Tcp => {
                TcpStream::connect(r.addr).await.map_err(|e| format!("cannot connect to {}: {e}", r.addr))?;
                Ok(())
            }
            ProbeKind::Tls | ProbeKind::Https => tls(broker, r, kind, expect, &mut observed).await,
            ProbeKind::Ssh => ssh(broker, r, &mut observed).await,
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer from {} within {} s", r.addr, PROBE_TIMEOUT.as_secs())));
    let latency = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
    match outcome {
        Ok(()) => ProbeResult { at: now_ms(), status: "ok".into(), latency_ms: Some(latency), error: None, observed },
        Err(e) => {
            ProbeResult { at: now_ms(), status: "failed".into(), latency_ms: Some(latency), error: Some(e), observed }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

type SeenChain = Arc<Mutex<Option<Vec<CertificateDer<'static>>>>>;

/// Records the presented chain instead of judging it; still checks the
/// handshake signature against the presented leaf.
#[derive(Debug)]
struct Observe {
    provider: Arc<CryptoProvider>,
    seen: SeenChain,
}

impl ServerCertVerifier for Observe {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(chain);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

async fn tls(
    broker: &Broker,
    r: &Resolved,
    kind: ProbeKind,
    expect: Option<&str>,
    observed: &mut Value,
) -> Result<(), String> {
    let provider = provider();
    let seen: SeenChain = Arc::new(Mutex::new(None));
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Observe { provider: provider.clone(), seen: seen.clone() }))
        .with_no_client_auth();
    // The name to ask for: the target's DNS name, else the expected bundle's first name.
    let mut sni = r.server_name.clone();
    let latest = match expect {
        Some(n) => broker.latest_bundle(n).await.map_err(|e| e.to_string())?,
        None => None,
    };
    if sni.is_none() {
        sni = latest.as_ref().and_then(|b| b.info.dns_names.first().cloned());
    }
    let server_name = match &sni {
        Some(n) => ServerName::try_from(n.clone()).map_err(|_| format!("{n:?} is not a valid TLS server name"))?,
        None => ServerName::IpAddress(r.addr.ip().into()),
    };
    if let Some(o) = observed.as_object_mut() {
        o.insert("server_name".into(), json!(sni));
    }
    let tcp = TcpStream::connect(r.addr).await.map_err(|e| format!("cannot connect to {}: {e}", r.addr))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = connector.connect(server_name, tcp).await;
    let chain = seen.lock().ok().and_then(|s| s.clone());
    if let Some(chain) = &chain {
        describe_chain(broker, chain, sni.as_deref(), expect, latest.as_ref(), observed).await;
    }
    let mut stream = handshake.map_err(|e| format!("TLS handshake with {} failed: {e}", r.addr))?;
    if let Some(o) = observed.as_object_mut() {
        let (_, conn) = stream.get_ref();
        o.insert("tls_version".into(), json!(conn.protocol_version().map(|v| format!("{v:?}"))));
    }
    if kind == ProbeKind::Https {
        let host = sni.clone().unwrap_or_else(|| r.addr.ip().to_string());
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatehouse-probe\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.map_err(|e| format!("sending the HTTP request failed: {e}"))?;
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while got < buf.len() {
            let n = stream.read(&mut buf[got..]).await.map_err(|e| format!("reading the HTTP response failed: {e}"))?;
            if n == 0 || buf[..got + n].windows(2).any(|w| w == b"\r\n") {
                got += n;
                break;
            }
            got += n;
        }
        let head = String::from_utf8_lossy(&buf[..got]);
        let line = head.lines().next().unwrap_or("");
        let code = line
            .strip_prefix("HTTP/")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| "the server did not answer with an HTTP status line".to_string())?;
        if let Some(o) = observed.as_object_mut() {
            o.insert("http_status".into(), json!(code));
        }
    }
    let _ = stream.shutdown().await;
    Ok(())
}

async fn describe_chain(
    broker: &Broker,
    chain: &[CertificateDer<'static>],
    sni: Option<&str>,
    expect: Option<&str>,
    latest: Option<&gatehouse_broker::pki::Bundle>,
    observed: &mut Value,
) {
    let Some(leaf) = chain.first() else { return };
    let summary = gatehouse_ca::x509::describe_der(leaf);
    let mut cert = match &summary {
        Ok(s) => json!({
            "subject": s.subject,
            "issuer": s.issuer,
            "dns_names": s.dns_names,
            "ip_addresses": s.ip_addresses,
            "serial": s.serial,
            "not_before": s.not_before.saturating_mul(1000),
            "not_after": s.not_after.saturating_mul(1000),
            "fingerprint_sha256": s.fingerprint_sha256,
        }),
        Err(e) => json!({"error": e.to_string(), "fingerprint_sha256": gatehouse_ca::x509::sha256_fingerprint(leaf)}),
    };
    let fp = gatehouse_ca::x509::sha256_fingerprint(leaf);
    // Does it chain to our root (ignoring the name)?
    let root = gatehouse_ca::x509::pem_certificates(broker.pki_root_pem()).ok().and_then(|mut v| v.pop());
    let (chains, chain_error) = match root {
        Some(root_der) => {
            let root_der = CertificateDer::from(root_der);
            match webpki::anchor_from_trusted_cert(&root_der) {
                Ok(anchor) => match webpki::EndEntityCert::try_from(leaf) {
                    Ok(ee) => {
                        let algs = provider().signature_verification_algorithms.all;
                        let anchors = [anchor];
                        let r = ee.verify_for_usage(
                            algs,
                            &anchors,
                            chain.get(1..).unwrap_or(&[]),
                            UnixTime::now(),
                            webpki::KeyUsage::server_auth(),
                            None,
                            None,
                        );
                        let name_ok = sni
                            .and_then(|n| ServerName::try_from(n).ok())
                            .map(|n| ee.verify_is_valid_for_subject_name(&n).is_ok());
                        if let (Some(ok), Some(o)) = (name_ok, cert.as_object_mut()) {
                            o.insert("valid_for_server_name".into(), json!(ok));
                        }
                        let err = r.err().map(|e| format!("{e:?}"));
                        (err.is_none(), err)
                    }
                    Err(e) => (false, Some(format!("{e:?}"))),
                },
                Err(e) => (false, Some(format!("{e:?}"))),
            }
        }
        None => (false, Some("no Gatehouse root".into())),
    };
    if let Some(o) = cert.as_object_mut() {
        o.insert("chain_length".into(), json!(chain.len()));
        o.insert("chains_to_gatehouse_root".into(), json!(chains));
        if let Some(e) = chain_error {
            o.insert("chain_error".into(), json!(e));
        }
    }
    if let Ok(Some(ours)) = broker.certificate_by_fingerprint(&fp).await
        && let Some(o) = cert.as_object_mut()
    {
        o.insert(
            "issued_by_gatehouse".into(),
            json!({"name": ours.name, "serial": ours.serial, "status": ours.status}),
        );
    }
    if let Some(o) = observed.as_object_mut() {
        o.insert("certificate".into(), cert);
        if let Some(name) = expect {
            o.insert("expect_certificate_name".into(), json!(name));
            o.insert("latest_bundle_serial".into(), json!(latest.map(|b| b.info.serial.clone())));
            o.insert("latest_bundle_fingerprint".into(), json!(latest.map(|b| b.info.fingerprint_sha256.clone())));
            o.insert("matches_latest_bundle".into(), json!(latest.is_some_and(|b| b.info.fingerprint_sha256 == fp)));
        }
    }
}

/// Captures the server's host key or certificate, then stops.
struct SshObserve {
    trust: HostTrust,
    seen: Arc<Mutex<Option<crate::upstream::SeenHostKey>>>,
    algorithm: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for SshObserve {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = verify_host(&self.trust, key);
        let alg = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.algorithm().as_str().to_string(),
            russh::keys::PublicKeyOrCertificate::Certificate(c) => c.algorithm().as_str().to_string(),
        };
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(verdict);
        }
        if let Ok(mut a) = self.algorithm.lock() {
            *a = Some(alg);
        }
        // Only observing: never go past key exchange.
        Ok(false)
    }
}

async fn ssh(broker: &Broker, r: &Resolved, observed: &mut Value) -> Result<(), String> {
    // Judge only the host certificate here: the pinned key is reported apart.
    let trust = HostTrust {
        host_name: r.host.name.clone(),
        pinned: None,
        host_ca: Some(broker.keys().host_ca.public_key().clone()),
    };
    let seen = Arc::new(Mutex::new(None));
    let algorithm = Arc::new(Mutex::new(None));
    let handler = SshObserve { trust, seen: seen.clone(), algorithm: algorithm.clone() };
    let preferred = russh::Preferred {
        host_key_certificates: std::borrow::Cow::Owned(vec![gatehouse_ca::ssh_key::Algorithm::Ed25519]),
        ..Default::default()
    };
    let config = Arc::new(russh::client::Config { preferred, nodelay: true, ..Default::default() });
    let result = russh::client::connect(config, r.addr, handler).await;
    let verdict = seen.lock().ok().and_then(|s| s.clone());
    let Some(v) = verdict else {
        return Err(match result {
            Err(e) => format!("SSH handshake with {} failed: {e}", r.addr),
            Ok(_) => format!("{} presented no host key", r.addr),
        });
    };
    let pinned_matches = r.host.host_key_fingerprint.as_ref().map(|p| Some(p) == v.fingerprint.as_ref());
    if let Some(o) = observed.as_object_mut() {
        o.insert("host_key_fingerprint".into(), json!(v.fingerprint));
        o.insert("host_key_algorithm".into(), json!(algorithm.lock().ok().and_then(|a| a.clone())));
        o.insert("host_certificate".into(), json!(v.certificate));
        o.insert("host_certificate_valid".into(), json!(v.certificate && v.problem.is_none()));
        if v.certificate
            && let Some(p) = &v.problem
        {
            o.insert("host_certificate_error".into(), json!(p));
        }
        o.insert("pinned_key_matches".into(), json!(pinned_matches));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_are_forbidden() {
        for bad in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "0.0.0.0",
            "224.0.0.1",
            "100.100.100.200",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
        ] {
            assert!(forbidden_address(bad.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))).is_some(), "{bad}");
        }
        for ok in ["127.0.0.1", "10.0.0.5", "::1", "2001:db8::1"] {
            assert!(forbidden_address(ok.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))).is_none(), "{ok}");
        }
    }

    #[test]
    fn targets_split() {
        assert_eq!(split_target("web-1"), Ok(("web-1".into(), None)));
        assert_eq!(split_target("Web.Edge.example.com:8443"), Ok(("web.edge.example.com".into(), Some(8443))));
        assert_eq!(split_target("https://a.example.com/x"), Ok(("a.example.com".into(), None)));
        assert_eq!(split_target("[::1]:22"), Ok(("::1".into(), Some(22))));
        assert_eq!(split_target("10.0.0.1:443"), Ok(("10.0.0.1".into(), Some(443))));
        for bad in ["", "a:0", "a:99999", "a b", "a;b:1", "[::1"] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
    }
}
