//! Bearer tokens: shown once, stored only as a SHA-256 hash, compared in
//! constant time. A token is `gh<kind>_` followed by 43 base64url characters
//! (256 random bits), so a leaked one is easy to recognise and grep for.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipnet::IpNet;
use rand::RngExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::Result;
use crate::{ids, now_ms};

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Full control of the admin API.
    Admin,
    /// An AI agent's MCP credential.
    Agent,
    /// One-time enrolment of an agent's signing key.
    Bootstrap,
    /// One-time enrolment of a target's SSH host key.
    Enroll,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Agent => "agent",
            TokenKind::Bootstrap => "bootstrap",
            TokenKind::Enroll => "enroll",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Admin => "ghadm_",
            TokenKind::Agent => "ghagt_",
            TokenKind::Bootstrap => "ghboot_",
            TokenKind::Enroll => "ghenr_",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "admin" => TokenKind::Admin,
            "agent" => TokenKind::Agent,
            "bootstrap" => TokenKind::Bootstrap,
            "enroll" => TokenKind::Enroll,
            _ => return None,
        })
    }
    fn from_secret(secret: &str) -> Option<Self> {
        [TokenKind::Admin, TokenKind::Agent, TokenKind::Bootstrap, TokenKind::Enroll]
            .into_iter()
            .find(|k| secret.starts_with(k.prefix()))
    }
}

/// A token value, redacted in `Debug`, zeroized on drop.
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Make a new token value of `kind`.
pub fn generate(kind: TokenKind) -> Secret {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rng().fill(&mut raw[..]);
    Secret(Zeroizing::new(format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(&raw[..]))))
}

/// The stored form of a token.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Quick shape check before touching the database: prefix, length, alphabet.
pub fn well_formed(secret: &str) -> Option<TokenKind> {
    let kind = TokenKind::from_secret(secret)?;
    let body = &secret[kind.prefix().len()..];
    (body.len() == 43 && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')).then_some(kind)
}

/// A stored token, as listed (never with its value).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub kind: String,
    pub subject_id: String,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub single_use: bool,
    pub used_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_addr: Option<String>,
    pub cidrs: Vec<String>,
}

pub(crate) const TOKEN_COLUMNS: &str = "id, kind, subject_id, hash, created_at, created_by, expires_at, revoked_at, single_use, used_at, last_used_at, last_used_addr, cidrs";

pub(crate) fn row_to_info(r: &sqlx::any::AnyRow) -> Result<(TokenInfo, String)> {
    let cidrs: String = r.try_get("cidrs")?;
    let single: i64 = r.try_get("single_use")?;
    Ok((
        TokenInfo {
            id: r.try_get("id")?,
            kind: r.try_get("kind")?,
            subject_id: r.try_get("subject_id")?,
            created_at: r.try_get("created_at")?,
            created_by: r.try_get("created_by")?,
            expires_at: r.try_get("expires_at")?,
            revoked_at: r.try_get("revoked_at")?,
            single_use: single != 0,
            used_at: r.try_get("used_at")?,
            last_used_at: r.try_get("last_used_at")?,
            last_used_addr: r.try_get("last_used_addr")?,
            cidrs: serde_json::from_str(&cidrs).unwrap_or_default(),
        },
        r.try_get("hash")?,
    ))
}

/// Parameters of a new token.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub subject_id: String,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub single_use: bool,
    pub cidrs: Vec<IpNet>,
}

/// Insert a token row inside `conn`'s transaction; returns (id, value).
pub(crate) async fn insert(conn: &mut sqlx::AnyConnection, kind: TokenKind, t: &NewToken) -> Result<(String, Secret)> {
    let secret = generate(kind);
    let id = ids::new("tok");
    let cidrs: Vec<String> = t.cidrs.iter().map(|c| c.to_string()).collect();
    sqlx::query(
        "INSERT INTO tokens (id, kind, subject_id, hash, created_at, created_by, expires_at, single_use, cidrs) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
    )
    .bind(&id)
    .bind(kind.as_str())
    .bind(&t.subject_id)
    .bind(hash(secret.expose()))
    .bind(now_ms())
    .bind(&t.created_by)
    .bind(t.expires_at)
    .bind(i64::from(t.single_use))
    .bind(serde_json::to_string(&cidrs).unwrap_or_else(|_| "[]".into()))
    .execute(&mut *conn)
    .await?;
    Ok((id, secret))
}

/// Why a presented token was refused. Kept apart from the message the
/// caller sees (always a plain 401) so the audit log can say more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    Malformed,
    Unknown,
    WrongKind,
    Expired,
    Revoked,
    AlreadyUsed,
    OutsideCidr,
}

impl TokenRefusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenRefusal::Malformed => "malformed token",
            TokenRefusal::Unknown => "unknown token",
            TokenRefusal::WrongKind => "token of the wrong kind",
            TokenRefusal::Expired => "token expired",
            TokenRefusal::Revoked => "token revoked",
            TokenRefusal::AlreadyUsed => "single-use token already used",
            TokenRefusal::OutsideCidr => "client address outside the token's CIDRs",
        }
    }
}

/// Check a presented token against the store. Single-use tokens are
/// consumed atomically here: of two concurrent uses exactly one wins.
pub async fn authenticate(
    pool: &sqlx::AnyPool,
    secret: &str,
    expect: TokenKind,
    client: Option<IpAddr>,
) -> Result<std::result::Result<TokenInfo, (Option<TokenInfo>, TokenRefusal)>> {
    let Some(kind) = well_formed(secret) else {
        return Ok(Err((None, TokenRefusal::Malformed)));
    };
    let h = hash(secret);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1")))
        .bind(&h)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Ok(Err((None, TokenRefusal::Unknown)));
    };
    let (info, stored) = row_to_info(&row)?;
    if !bool::from(stored.as_bytes().ct_eq(h.as_bytes())) || info.kind != kind.as_str() {
        return Ok(Err((None, TokenRefusal::Unknown)));
    }
    if kind != expect {
        // A real token of another kind (an agent's token at the admin API):
        // refused, and the audit row can say whose it was.
        return Ok(Err((Some(info), TokenRefusal::WrongKind)));
    }
    let now = now_ms();
    if info.revoked_at.is_some() {
        return Ok(Err((Some(info), TokenRefusal::Revoked)));
    }
    if info.expires_at.is_some_and(|e| e <= now) {
        return Ok(Err((Some(info), TokenRefusal::Expired)));
    }
    if !info.cidrs.is_empty() {
        let inside = client
            .is_some_and(|ip| info.cidrs.iter().filter_map(|c| c.parse::<IpNet>().ok()).any(|net| net.contains(&ip)));
        if !inside {
            return Ok(Err((Some(info), TokenRefusal::OutsideCidr)));
        }
    }
    let addr = client.map(|c| c.to_string());
    if info.single_use {
        let done = sqlx::query(
            "UPDATE tokens SET used_at = $1, last_used_at = $1, last_used_addr = $2 WHERE id = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(&addr)
        .bind(&info.id)
        .execute(pool)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(Err((Some(info), TokenRefusal::AlreadyUsed)));
        }
    } else if info.last_used_at.is_none_or(|t| now - t > 1000) || info.last_used_addr != addr {
        // Coarse last-use tracking: at most one write a second per token.
        sqlx::query("UPDATE tokens SET last_used_at = $1, last_used_addr = $2 WHERE id = $3")
            .bind(now)
            .bind(&addr)
            .bind(&info.id)
            .execute(pool)
            .await?;
    }
    Ok(Ok(info))
}

/// All tokens of `kind`, newest first.
pub async fn list(pool: &sqlx::AnyPool, kind: TokenKind) -> Result<Vec<TokenInfo>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE kind = $1 ORDER BY created_at DESC"
    )))
    .bind(kind.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| row_to_info(r).map(|(i, _)| i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_long_and_hash_differently() {
        let a = generate(TokenKind::Agent);
        let b = generate(TokenKind::Agent);
        assert!(a.expose().starts_with("ghagt_"));
        assert_eq!(a.expose().len(), 6 + 43);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(hash(a.expose()), hash(b.expose()));
        assert_eq!(well_formed(a.expose()), Some(TokenKind::Agent));
        assert_eq!(well_formed("ghagt_short"), None);
        assert_eq!(well_formed("Bearer x"), None);
        assert!(!format!("{a:?}").contains("ghagt_"));
    }
}
