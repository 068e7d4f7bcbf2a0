//! Target hosts: name, address, groups and the pinned host key.

use serde::Serialize;
use sqlx::Row;

use crate::audit::{Actor, AuditRecord, Outcome};
use crate::error::{BrokerError, Result};
use crate::users::normalise_key;
use crate::{Broker, ids, now_ms};

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub id: String,
    pub name: String,
    /// `host:port`
    pub address: String,
    pub groups: Vec<String>,
    /// Pinned host public key (OpenSSH line), if any.
    pub host_key: Option<String>,
    pub host_key_fingerprint: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewHost {
    pub name: String,
    pub address: String,
    pub groups: Vec<String>,
    pub host_key: Option<String>,
}

/// Check `host:port` (or `[v6]:port`).
pub fn check_address(addr: &str) -> Result<()> {
    let bad = || BrokerError::Invalid(format!("address {:?} must be HOST:PORT", crate::audit::cap(addr, 80)));
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (h, p)
    } else {
        addr.rsplit_once(':').ok_or_else(bad)?
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() || host.len() > 253 {
        return Err(bad());
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':')) {
        return Err(bad());
    }
    Ok(())
}

impl Broker {
    pub async fn add_host(&self, actor: &Actor, h: &NewHost) -> Result<Host> {
        ids::check_name("host", &h.name)?;
        check_address(&h.address)?;
        for g in &h.groups {
            ids::check_name("group", g)?;
        }
        let key = match &h.host_key {
            Some(k) => Some(normalise_key(k)?),
            None => None,
        };
        let id = ids::new("h");
        let mut w = self.db().write().await?;
        sqlx::query("INSERT INTO hosts (id, name, address, host_key, created_at) VALUES ($1,$2,$3,$4,$5)")
            .bind(&id)
            .bind(&h.name)
            .bind(&h.address)
            .bind(key.as_ref().map(|(line, _, _)| line.clone()))
            .bind(now_ms())
            .execute(w.conn())
            .await
            .map_err(|e| match BrokerError::from(e) {
                BrokerError::Conflict(_) => BrokerError::Conflict(format!("host {} already exists", h.name)),
                other => other,
            })?;
        let mut groups = h.groups.clone();
        groups.sort();
        groups.dedup();
        for g in &groups {
            sqlx::query("INSERT INTO host_groups (host_id, group_name) VALUES ($1,$2)")
                .bind(&id)
                .bind(g)
                .execute(w.conn())
                .await?;
        }
        w.audit(AuditRecord::new(actor.clone(), "host.create", format!("host:{}", h.name), Outcome::Allow).details(
            serde_json::json!({
                "address": h.address,
                "groups": groups,
                "host_key": key.as_ref().map(|(_, fp, _)| fp),
            }),
        ))
        .await?;
        w.commit().await?;
        self.host_by_name(&h.name).await?.ok_or_else(|| BrokerError::NotFound(format!("host {}", h.name)))
    }

    /// Replace a host's pinned key.
    pub async fn pin_host_key(&self, actor: &Actor, name: &str, key: &str) -> Result<Host> {
        let (line, fp, _) = normalise_key(key)?;
        let mut w = self.db().write().await?;
        let n = sqlx::query("UPDATE hosts SET host_key = $1 WHERE name = $2")
            .bind(&line)
            .bind(name)
            .execute(w.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(BrokerError::NotFound(format!("host {name}")));
        }
        w.audit(
            AuditRecord::new(actor.clone(), "host.pin_key", format!("host:{name}"), Outcome::Allow)
                .details(serde_json::json!({"host_key": fp})),
        )
        .await?;
        w.commit().await?;
        self.host_by_name(name).await?.ok_or_else(|| BrokerError::NotFound(format!("host {name}")))
    }

    pub async fn list_hosts(&self) -> Result<Vec<Host>> {
        let rows = sqlx::query("SELECT id, name, address, host_key, created_at FROM hosts ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        let groups = sqlx::query("SELECT host_id, group_name FROM host_groups ORDER BY group_name")
            .fetch_all(self.pool())
            .await?;
        let mut hosts = rows.iter().map(row_to_host).collect::<Result<Vec<_>>>()?;
        for g in &groups {
            let hid: String = g.try_get("host_id")?;
            if let Some(h) = hosts.iter_mut().find(|h| h.id == hid) {
                h.groups.push(g.try_get("group_name")?);
            }
        }
        Ok(hosts)
    }

    pub async fn host_by_name(&self, name: &str) -> Result<Option<Host>> {
        let row = sqlx::query("SELECT id, name, address, host_key, created_at FROM hosts WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        let Some(r) = row else { return Ok(None) };
        let mut h = row_to_host(&r)?;
        h.groups = sqlx::query_scalar("SELECT group_name FROM host_groups WHERE host_id = $1 ORDER BY group_name")
            .bind(&h.id)
            .fetch_all(self.pool())
            .await?;
        Ok(Some(h))
    }
}

fn row_to_host(r: &sqlx::any::AnyRow) -> Result<Host> {
    let key: Option<String> = r.try_get("host_key")?;
    let fp = key.as_deref().and_then(|k| gatehouse_ca::parse_public_key(k).ok()).map(|k| gatehouse_ca::fingerprint(&k));
    Ok(Host {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        address: r.try_get("address")?,
        groups: Vec::new(),
        host_key: key,
        host_key_fingerprint: fp,
        created_at: r.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::check_address;

    #[test]
    fn addresses() {
        for ok in ["127.0.0.1:22", "web-1.example.com:2222", "[::1]:22"] {
            assert!(check_address(ok).is_ok(), "{ok}");
        }
        for bad in ["web-1", "web-1:0", "web-1:99999", ":22", "a b:22", "x;rm:22", "[zz]:22"] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }
}
