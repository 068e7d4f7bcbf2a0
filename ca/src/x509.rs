//! X.509 certificate authority for TLS certificates: a root and an issuing
//! intermediate (ECDSA P-256), leaf certificates signed from CSRs only, and
//! CRLs. Pure: callers pass `now` and do all storage.
//!
//! What a leaf carries is decided here, never copied from the CSR: the SANs
//! (DNS names only, each checked by the caller against its allowed domain
//! patterns), key usage (digitalSignature, plus keyEncipherment for RSA
//! keys), extended key usage (TLS server and client), `CA:FALSE`, a random
//! 128-bit serial, subject CN = the first SAN, and a validity window that
//! never outlives the issuing CA.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use zeroize::Zeroizing;

use crate::CaError;

/// Leaf certificates start this long before `now`, for clock skew.
pub const X509_BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Root lifetime.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Issuing intermediate lifetime.
pub const ISSUING_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The longest leaf lifetime anyone may allow (what browsers accept).
pub const MAX_LEAF_TTL: Duration = Duration::from_secs(397 * 24 * 3600);
/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_LEN: usize = 64 * 1024;

fn at(unix: u64) -> Result<OffsetDateTime, CaError> {
    let secs = i64::try_from(unix).map_err(|_| CaError::InvalidRequest("time out of range".into()))?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| CaError::InvalidRequest("time out of range".into()))
}

fn rc(what: &str) -> impl Fn(rcgen::Error) -> CaError + '_ {
    move |e| CaError::Signing(format!("{what}: {e}"))
}

/// Lowercase hex of bytes.
fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of DER bytes, lowercase hex (the fingerprint every API reports).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex_lower(&Sha256::digest(der))
}

/// Normalise a certificate serial as a user may type it (`4A:3F…`, `0x4a3f…`)
/// to lowercase hex without separators.
pub fn normalise_serial(s: &str) -> Result<String, CaError> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if hex.is_empty() || hex.len() > 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CaError::InvalidRequest("a serial is up to 20 bytes of hex (e.g. 4a:3f:… or 4a3f…)".into()));
    }
    // Leading zero bytes are not part of the number.
    let trimmed = hex.trim_start_matches('0');
    let trimmed = if trimmed.is_empty() { "0" } else { trimmed };
    Ok(if !trimmed.len().is_multiple_of(2) { format!("0{trimmed}") } else { trimmed.to_string() })
}

fn parse_hex(s: &str) -> Result<Vec<u8>, CaError> {
    let bad = || CaError::InvalidRequest(format!("{s:?} is not hex"));
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(bad))
        .collect()
}

/// Check and normalise one DNS name as it may appear in a certificate:
/// ASCII letters, digits and `-` per label (IDNs must be punycode), no
/// wildcard, no trailing dot, lowercased.
pub fn check_dns_name(name: &str) -> Result<String, CaError> {
    let bad = |why: &str| CaError::InvalidRequest(format!("DNS name {:?} is not valid: {why}", cap(name, 80)));
    let n = name.to_ascii_lowercase();
    if n.is_empty() || n.len() > 253 {
        return Err(bad("empty or longer than 253 characters"));
    }
    if n.starts_with("*.") || n.contains('*') {
        return Err(bad("wildcard certificates are not issued; request each name"));
    }
    if n.ends_with('.') {
        return Err(bad("remove the trailing dot"));
    }
    for label in n.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(bad("labels are letters, digits and '-', 1 to 63 characters, not starting or ending with '-'"));
        }
    }
    if n.parse::<std::net::IpAddr>().is_ok() || n.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad("an IP address is not a DNS name"));
    }
    Ok(n)
}

fn cap(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// Which names a group may get: an exact DNS name (`api.example.com`) or a
/// one-label wildcard (`*.edge.example.com` matches `a.edge.example.com`,
/// not `edge.example.com` nor `a.b.edge.example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPattern(String);

impl DomainPattern {
    pub fn parse(s: &str) -> Result<Self, CaError> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(base) = s.strip_prefix("*.") {
            let base = check_dns_name(base)
                .map_err(|_| CaError::InvalidRequest(format!("domain pattern {:?} is not valid", cap(&s, 80))))?;
            if !base.contains('.') {
                return Err(CaError::InvalidRequest(format!(
                    "domain pattern {s:?} is too wide: a wildcard needs at least two labels after '*.'"
                )));
            }
            return Ok(Self(format!("*.{base}")));
        }
        let exact = check_dns_name(&s).map_err(|_| {
            CaError::InvalidRequest(format!(
                "domain pattern {:?} is not valid: use an exact name (api.example.com) or '*.' and a domain (*.edge.example.com)",
                cap(&s, 80)
            ))
        })?;
        Ok(Self(exact))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does the (already normalised) DNS name fall under this pattern?
    pub fn matches(&self, dns_name: &str) -> bool {
        match self.0.strip_prefix("*.") {
            Some(base) => dns_name
                .strip_suffix(base)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            None => self.0 == dns_name,
        }
    }
}

/// A CSR whose signature verified, with the names it asks for.
pub struct VerifiedCsr {
    params: CertificateSigningRequestParams,
    /// The requested DNS names, normalised, in request order, without duplicates.
    pub dns_names: Vec<String>,
    /// `ECDSA P-256`, `Ed25519`, `RSA 2048`, …
    pub key_type: String,
    rsa: bool,
}

impl std::fmt::Debug for VerifiedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCsr").field("dns_names", &self.dns_names).field("key_type", &self.key_type).finish()
    }
}

/// Parse a PEM CSR and verify its signature. Every refusal says what is
/// wrong without echoing the input (it might be something secret pasted by
/// mistake).
pub fn parse_csr(pem: &str) -> Result<VerifiedCsr, CaError> {
    if pem.len() > MAX_CSR_LEN {
        return Err(CaError::InvalidCsr(format!("the CSR is larger than {MAX_CSR_LEN} bytes")));
    }
    if pem.contains("PRIVATE KEY") {
        return Err(CaError::InvalidCsr(
            "that is a private key, not a CSR; keep the key and send a certificate signing request".into(),
        ));
    }
    if !pem.contains("-----BEGIN CERTIFICATE REQUEST-----") && !pem.contains("-----BEGIN NEW CERTIFICATE REQUEST-----")
    {
        return Err(CaError::InvalidCsr(
            "not a PEM certificate signing request (expected -----BEGIN CERTIFICATE REQUEST-----)".into(),
        ));
    }
    let params = CertificateSigningRequestParams::from_pem(pem).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CaError::InvalidCsr(
            "the CSR's signature does not verify: it was altered, or not signed by the key it carries".into(),
        ),
        rcgen::Error::UnsupportedSignatureAlgorithm => CaError::InvalidCsr(
            "unsupported key or signature algorithm (use ECDSA P-256/P-384, Ed25519 or RSA ≥ 2048)".into(),
        ),
        rcgen::Error::UnsupportedExtension => CaError::InvalidCsr(
            "the CSR requests an extension Gatehouse does not accept (only subjectAltName, and keyUsage, \
             extendedKeyUsage and basicConstraints, which are ignored)"
                .into(),
        ),
        rcgen::Error::InvalidNameType => {
            CaError::InvalidCsr("the CSR has a subjectAltName type Gatehouse does not issue (only DNS names)".into())
        }
        _ => CaError::InvalidCsr("the CSR is malformed and could not be parsed".into()),
    })?;
    // Key type and size, from the request's SubjectPublicKeyInfo.
    let der = pem_body(pem)?;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|_| CaError::InvalidCsr("the CSR is malformed and could not be parsed".into()))?;
    let (key_type, rsa) = match req.certification_request_info.subject_pki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(k)) => {
            let bits = k.key_size();
            if bits < 2048 {
                return Err(CaError::InvalidCsr(format!("RSA keys must be at least 2048 bits, this one has {bits}")));
            }
            (format!("RSA {bits}"), true)
        }
        Ok(x509_parser::public_key::PublicKey::EC(p)) => (format!("ECDSA {} bits", p.key_size()), false),
        Ok(_) if params.public_key.algorithm() == &rcgen::PKCS_ED25519 => ("Ed25519".to_string(), false),
        _ => {
            return Err(CaError::InvalidCsr(
                "unsupported key type (use ECDSA P-256/P-384, Ed25519 or RSA ≥ 2048)".into(),
            ));
        }
    };
    let mut dns_names = Vec::new();
    for san in &params.params.subject_alt_names {
        match san {
            SanType::DnsName(n) => {
                let n = check_dns_name(n.as_str()).map_err(|e| CaError::InvalidCsr(e.to_string()))?;
                if !dns_names.contains(&n) {
                    dns_names.push(n);
                }
            }
            SanType::IpAddress(ip) => {
                return Err(CaError::InvalidCsr(format!(
                    "IP address SANs are not issued ({ip}); name the service by a DNS name"
                )));
            }
            _ => {
                return Err(CaError::InvalidCsr(
                    "the CSR has a subjectAltName type Gatehouse does not issue (only DNS names)".into(),
                ));
            }
        }
    }
    if dns_names.is_empty() {
        return Err(CaError::InvalidCsr(
            "the CSR has no DNS subjectAltName; put every name in subjectAltName (the subject is ignored)".into(),
        ));
    }
    if dns_names.len() > 100 {
        return Err(CaError::InvalidCsr("at most 100 names per certificate".into()));
    }
    Ok(VerifiedCsr { params, dns_names, key_type, rsa })
}

/// The DER bytes of the first PEM block.
fn pem_body(pem: &str) -> Result<Vec<u8>, CaError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| CaError::InvalidCsr("the PEM encoding is broken".into()))?;
    Ok(p.contents)
}

/// A newly created root; its private key is for the caller to seal and
/// keep apart (it is only needed to issue a new intermediate).
pub struct NewRoot {
    pub root_key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for NewRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewRoot(<redacted>)")
    }
}

/// The issuing CA (intermediate) plus the root certificate.
pub struct X509Ca {
    root_pem: String,
    issuing_pem: String,
    issuing_not_after: u64,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for X509Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Ca")
            .field("issuing_not_after", &self.issuing_not_after)
            .field("private", &"<redacted>")
            .finish()
    }
}

/// A signed leaf and everything a TLS server needs besides its own key.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// Lowercase hex, no separators.
    pub serial: String,
    pub subject_cn: String,
    pub dns_names: Vec<String>,
    pub not_before: u64,
    pub not_after: u64,
    /// SHA-256 of the leaf's DER, lowercase hex.
    pub fingerprint_sha256: String,
    pub leaf_pem: String,
    /// The intermediate(s), without the root.
    pub chain_pem: String,
}

impl IssuedCertificate {
    /// Leaf followed by the chain (what most servers load).
    pub fn fullchain_pem(&self) -> String {
        format!("{}{}", self.leaf_pem, self.chain_pem)
    }
}

/// Reason codes a revocation may carry (RFC 5280 §5.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl RevokeReason {
    /// The code named by free text such as `key-compromise` or
    /// `superseded: moved to new LB`; anything else is `Unspecified`.
    pub fn from_text(text: &str) -> Self {
        let head: String = text
            .split(|c: char| c == ':' || c.is_whitespace())
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match head.as_str() {
            "keycompromise" | "compromised" | "compromise" => Self::KeyCompromise,
            "affiliationchanged" => Self::AffiliationChanged,
            "superseded" => Self::Superseded,
            "cessationofoperation" | "decommissioned" => Self::CessationOfOperation,
            "privilegewithdrawn" => Self::PrivilegeWithdrawn,
            _ => Self::Unspecified,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }
    fn rcgen(self) -> RevocationReason {
        match self {
            Self::Unspecified => RevocationReason::Unspecified,
            Self::KeyCompromise => RevocationReason::KeyCompromise,
            Self::AffiliationChanged => RevocationReason::AffiliationChanged,
            Self::Superseded => RevocationReason::Superseded,
            Self::CessationOfOperation => RevocationReason::CessationOfOperation,
            Self::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One entry of a CRL.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    /// Lowercase hex.
    pub serial: String,
    pub revoked_at: u64,
    pub reason: RevokeReason,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::RngExt::fill(&mut rand::rng(), &mut bytes[..]);
    // Positive, and exactly 16 bytes long in DER (first byte 0x01..=0x7f).
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

fn ca_params(cn: &str, not_before: u64, not_after: u64, path_len: u8) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, "Gatehouse");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = at(not_before)?;
    p.not_after = at(not_after)?;
    p.serial_number = Some(random_serial());
    p.key_identifier_method = KeyIdMethod::Sha256;
    Ok(p)
}

impl X509Ca {
    /// Create a root and an issuing intermediate, both ECDSA P-256.
    pub fn generate(now_unix: u64) -> Result<(Self, NewRoot), CaError> {
        let mut tag = [0u8; 4];
        rand::RngExt::fill(&mut rand::rng(), &mut tag[..]);
        let tag = hex_lower(&tag);
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("root key"))?;
        let start = now_unix.saturating_sub(3600);
        let root_params =
            ca_params(&format!("Gatehouse Root CA {tag}"), start, now_unix.saturating_add(ROOT_LIFETIME.as_secs()), 1)?;
        let root_cert = root_params.self_signed(&root_key).map_err(rc("root certificate"))?;
        let root_issuer = Issuer::new(root_params, &root_key);

        let issuing_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("issuing key"))?;
        let issuing_not_after = now_unix.saturating_add(ISSUING_LIFETIME.as_secs());
        let mut issuing_params = ca_params(&format!("Gatehouse Issuing CA {tag}"), start, issuing_not_after, 0)?;
        issuing_params.use_authority_key_identifier_extension = true;
        let issuing_cert = issuing_params.signed_by(&issuing_key, &root_issuer).map_err(rc("issuing certificate"))?;
        let root_key_pem = Zeroizing::new(root_key.serialize_pem());
        let ca = Self {
            root_pem: root_cert.pem(),
            issuing_pem: issuing_cert.pem(),
            issuing_not_after,
            issuer: Issuer::new(issuing_params, issuing_key),
        };
        Ok((ca, NewRoot { root_key_pem }))
    }

    /// Load the issuing CA from its certificate and key, and the root certificate.
    pub fn from_pem(root_cert_pem: &str, issuing_cert_pem: &str, issuing_key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(issuing_key_pem)
            .map_err(|_| CaError::InvalidKey("the issuing CA key is unreadable".into()))?;
        let der = x509_parser::pem::parse_x509_pem(issuing_cert_pem.as_bytes())
            .map_err(|_| CaError::InvalidKey("the issuing CA certificate is unreadable".into()))?
            .1
            .contents;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|_| CaError::InvalidKey("the issuing CA certificate is unreadable".into()))?;
        if *cert.public_key().subject_public_key.data != *key.der_bytes() {
            return Err(CaError::InvalidKey("the issuing CA key does not belong to its certificate".into()));
        }
        let issuing_not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
        let issuer = Issuer::from_ca_cert_pem(issuing_cert_pem, key)
            .map_err(|_| CaError::InvalidKey("the issuing CA certificate is unreadable".into()))?;
        describe_pem(root_cert_pem).map_err(|_| CaError::InvalidKey("the root certificate is unreadable".into()))?;
        Ok(Self {
            root_pem: root_cert_pem.to_string(),
            issuing_pem: issuing_cert_pem.to_string(),
            issuing_not_after,
            issuer,
        })
    }

    /// The issuing CA's private key (PKCS#8 PEM) for the caller to seal.
    pub fn issuing_key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.issuer.key().serialize_pem())
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The intermediate certificate (the chain a server sends after its leaf).
    pub fn chain_pem(&self) -> &str {
        &self.issuing_pem
    }

    pub fn issuing_not_after(&self) -> u64 {
        self.issuing_not_after
    }

    /// Sign a leaf for the CSR's names, valid `now - 5 min .. now + ttl`
    /// (never past the issuing CA). The caller has already checked the
    /// names against policy and capped `ttl`.
    pub fn issue(&self, csr: &VerifiedCsr, ttl: Duration, now_unix: u64) -> Result<IssuedCertificate, CaError> {
        if ttl.is_zero() || ttl > MAX_LEAF_TTL {
            return Err(CaError::InvalidRequest(format!(
                "certificate lifetime must be between 1 s and {} days",
                MAX_LEAF_TTL.as_secs() / 86400
            )));
        }
        let first = csr.dns_names.first().ok_or_else(|| CaError::InvalidCsr("no DNS names".into()))?;
        let not_before = now_unix.saturating_sub(X509_BACKDATE.as_secs());
        let not_after = now_unix.saturating_add(ttl.as_secs()).min(self.issuing_not_after);
        if not_after <= now_unix {
            return Err(CaError::InvalidRequest("the issuing CA has expired".into()));
        }
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, first.as_str());
        p.subject_alt_names = csr
            .dns_names
            .iter()
            .map(|n| {
                rcgen::string::Ia5String::try_from(n.as_str())
                    .map(SanType::DnsName)
                    .map_err(|_| CaError::InvalidCsr(format!("{n:?} is not a valid DNS name")))
            })
            .collect::<Result<_, _>>()?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = if csr.rsa {
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = at(not_before)?;
        p.not_after = at(not_after)?;
        let serial = random_serial();
        let serial_hex = hex_lower(&serial.to_bytes());
        p.serial_number = Some(serial);
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        let signed = CertificateSigningRequestParams { params: p, public_key: csr.params.public_key.clone() }
            .signed_by(&self.issuer)
            .map_err(rc("leaf certificate"))?;
        Ok(IssuedCertificate {
            serial: serial_hex,
            subject_cn: first.clone(),
            dns_names: csr.dns_names.clone(),
            not_before,
            not_after,
            fingerprint_sha256: sha256_fingerprint(signed.der()),
            leaf_pem: signed.pem(),
            chain_pem: self.issuing_pem.clone(),
        })
    }

    /// A CRL signed by the issuing CA listing `revoked`, valid until
    /// `next_update_unix`. `number` must grow with every CRL issued.
    pub fn crl(
        &self,
        revoked: &[RevokedEntry],
        number: u64,
        now_unix: u64,
        next_update_unix: u64,
    ) -> Result<String, CaError> {
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&parse_hex(&r.serial)?),
                    revocation_time: at(r.revoked_at)?,
                    reason_code: Some(r.reason.rcgen()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = CertificateRevocationListParams {
            this_update: at(now_unix)?,
            next_update: at(next_update_unix)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(rc("CRL"))?;
        crl.pem().map_err(rc("CRL"))
    }
}

/// What a certificate says, for reports (probes, listings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    /// Lowercase hex.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint_sha256: String,
}

/// Describe one DER certificate.
pub fn describe_der(der: &[u8]) -> Result<CertSummary, CaError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|_| CaError::InvalidKey("not a parseable X.509 certificate".into()))?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                        _ => None,
                    };
                    ip_addresses.extend(ip);
                }
                _ => {}
            }
        }
    }
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        dns_names,
        ip_addresses,
        serial: normalise_serial(&hex_lower(cert.raw_serial())).unwrap_or_default(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        fingerprint_sha256: sha256_fingerprint(der),
    })
}

/// Describe the first certificate of a PEM text.
pub fn describe_pem(pem: &str) -> Result<CertSummary, CaError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| CaError::InvalidKey("not a PEM certificate".into()))?;
    describe_der(&p.contents)
}

/// The DER bytes of every certificate in a PEM text, in order.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|_| CaError::InvalidKey("broken PEM".into()))?;
        if p.label == "CERTIFICATE" {
            out.push(p.contents);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn csr_for(names: &[&str]) -> (String, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        // Ask for things the broker must not grant.
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        p.distinguished_name.push(DnType::CommonName, "evil.example.org");
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        (csr, key)
    }

    #[test]
    fn domain_patterns_match_one_label_or_exactly() {
        let w = DomainPattern::parse("*.Edge.example.com").unwrap();
        assert_eq!(w.as_str(), "*.edge.example.com");
        assert!(w.matches("a.edge.example.com"));
        assert!(w.matches("web-1.edge.example.com"));
        assert!(!w.matches("edge.example.com"));
        assert!(!w.matches("a.b.edge.example.com"));
        assert!(!w.matches("aedge.example.com"));
        assert!(!w.matches("a.edge.example.com.evil.org"));
        let e = DomainPattern::parse("api.example.com").unwrap();
        assert!(e.matches("api.example.com"));
        assert!(!e.matches("x.api.example.com"));
        for bad in
            ["*", "*.com", "a.*.example.com", "*foo.example.com", "", "exa mple.com", "-a.example.com", "1.2.3.4"]
        {
            assert!(DomainPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_names_are_checked() {
        assert_eq!(check_dns_name("WWW.Example.com").unwrap(), "www.example.com");
        for bad in ["*.example.com", "a..b", "a.b.", "a_b.example.com", "ex ample.com", "é.example.com", "10.0.0.1"] {
            assert!(check_dns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn leaf_has_what_the_broker_sets_not_what_the_csr_asked() {
        let (ca, root) = X509Ca::generate(NOW).unwrap();
        assert!(root.root_key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{root:?}{ca:?}").contains("PRIVATE"));
        let (pem, _key) = csr_for(&["a.edge.example.com", "b.edge.example.com", "A.edge.example.com"]);
        let csr = parse_csr(&pem).unwrap();
        assert_eq!(csr.dns_names, ["a.edge.example.com", "b.edge.example.com"]);
        let leaf = ca.issue(&csr, Duration::from_secs(30 * 86400), NOW).unwrap();
        assert_eq!(leaf.not_after, NOW + 30 * 86400);
        assert_eq!(leaf.not_before, NOW - 300);
        assert_eq!(leaf.serial.len(), 32);
        let der = pem_certificates(&leaf.leaf_pem).unwrap().remove(0);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=a.edge.example.com");
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign() && !ku.key_encipherment());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        let s = describe_der(&der).unwrap();
        assert_eq!(s.dns_names, ["a.edge.example.com", "b.edge.example.com"]);
        assert_eq!(s.serial, leaf.serial);
        assert_eq!(s.fingerprint_sha256, leaf.fingerprint_sha256);
        assert!(s.issuer.contains("Gatehouse Issuing CA"));
        assert_eq!(leaf.fullchain_pem(), format!("{}{}", leaf.leaf_pem, ca.chain_pem()));
        // The leaf verifies under the intermediate, the intermediate under the root.
        let chain = pem_certificates(ca.chain_pem()).unwrap().remove(0);
        let root_der = pem_certificates(ca.root_pem()).unwrap().remove(0);
        let (_, inter) = X509Certificate::from_der(&chain).unwrap();
        let (_, rootc) = X509Certificate::from_der(&root_der).unwrap();
        cert.verify_signature(Some(inter.public_key())).unwrap();
        inter.verify_signature(Some(rootc.public_key())).unwrap();
        assert!(cert.verify_signature(Some(rootc.public_key())).is_err());
    }

    #[test]
    fn leaf_never_outlives_the_issuing_ca() {
        let (ca, _) = X509Ca::generate(NOW).unwrap();
        let (pem, _) = csr_for(&["a.edge.example.com"]);
        let csr = parse_csr(&pem).unwrap();
        let late = ca.issuing_not_after() - 86400;
        let leaf = ca.issue(&csr, Duration::from_secs(90 * 86400), late).unwrap();
        assert_eq!(leaf.not_after, ca.issuing_not_after());
        assert!(ca.issue(&csr, Duration::from_secs(398 * 86400), NOW).is_err());
        assert!(ca.issue(&csr, Duration::ZERO, NOW).is_err());
    }

    #[test]
    fn bad_csrs_are_refused_clearly() {
        let (pem, key) = csr_for(&["a.edge.example.com"]);
        let err = |s: &str| parse_csr(s).unwrap_err().to_string();
        assert!(err("hello").contains("not a PEM certificate signing request"));
        assert!(err(&key.serialize_pem()).contains("private key"), "private keys are named, never echoed");
        assert!(!err(&key.serialize_pem()).contains(&key.serialize_pem()[40..80]));
        // Tamper one byte inside the signed part: the signature no longer verifies.
        let der = pem_body(&pem).unwrap();
        let i = der.windows(4).position(|w| w == b"edge").unwrap();
        let mut bad = der.clone();
        bad[i] = b'x';
        let bad_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bad));
        assert!(err(&bad_pem).contains("signature does not verify"), "{}", err(&bad_pem));
        // Garbage inside a PEM frame.
        let junk = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", vec![0x30, 0x03, 1, 2, 3]));
        assert!(err(&junk).contains("malformed"), "{}", err(&junk));
        // IP SANs and missing SANs.
        let (ip, _) = csr_for(&["10.0.0.1"]);
        assert!(err(&ip).contains("IP address SANs are not issued"));
        let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let none = CertificateParams::default().serialize_request(&k).unwrap().pem().unwrap();
        assert!(err(&none).contains("no DNS subjectAltName"));
        let (wild, _) = csr_for(&["*.edge.example.com"]);
        assert!(err(&wild).contains("wildcard"));
    }

    #[test]
    fn ca_round_trips_and_signs_crls() {
        let (ca, _) = X509Ca::generate(NOW).unwrap();
        let key = ca.issuing_key_pem();
        let back = X509Ca::from_pem(ca.root_pem(), ca.chain_pem(), &key).unwrap();
        assert_eq!(back.issuing_not_after(), ca.issuing_not_after());
        let other = X509Ca::generate(NOW).unwrap().0;
        assert!(X509Ca::from_pem(ca.root_pem(), ca.chain_pem(), &other.issuing_key_pem()).is_err());
        let crl = back
            .crl(
                &[RevokedEntry { serial: "4a3f".into(), revoked_at: NOW, reason: RevokeReason::KeyCompromise }],
                7,
                NOW,
                NOW + 86400,
            )
            .unwrap();
        let der = x509_parser::pem::parse_x509_pem(crl.as_bytes()).unwrap().1.contents;
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
        let serials: Vec<String> = parsed.iter_revoked_certificates().map(|r| r.raw_serial_as_string()).collect();
        assert_eq!(serials, ["4a:3f"]);
        let inter_der = pem_certificates(ca.chain_pem()).unwrap().remove(0);
        let (_, inter) = X509Certificate::from_der(&inter_der).unwrap();
        parsed.verify_signature(inter.public_key()).unwrap();
    }

    #[test]
    fn serials_and_reasons_normalise() {
        assert_eq!(normalise_serial("4A:3F:00").unwrap(), "4a3f00");
        assert_eq!(normalise_serial("0x004a3f").unwrap(), "4a3f");
        assert_eq!(normalise_serial("a3f").unwrap(), "0a3f");
        assert!(normalise_serial("xyz").is_err());
        assert!(normalise_serial("../etc").is_err());
        assert_eq!(RevokeReason::from_text("key-compromise: laptop stolen"), RevokeReason::KeyCompromise);
        assert_eq!(RevokeReason::from_text("superseded"), RevokeReason::Superseded);
        assert_eq!(RevokeReason::from_text("moved"), RevokeReason::Unspecified);
    }
}
