//! Human users and their SSH public keys.

use gatehouse_ca::ssh_key::PublicKey;
use serde::Serialize;
use sqlx::Row;

use crate::audit::{Actor, AuditRecord, Outcome};
use crate::error::{BrokerError, Result};
use crate::{Broker, ids, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Approver,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "user" => Ok(Role::User),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            _ => Err(BrokerError::Invalid(format!(
                "role must be user, approver or admin, not {:?}",
                crate::audit::cap(s, 20)
            ))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UserKey {
    pub fingerprint: String,
    pub public_key: String,
    pub comment: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub keys: Vec<UserKey>,
}

/// Parse and normalise an OpenSSH public key line. Returns (key line without
/// comment, fingerprint, comment).
pub fn normalise_key(line: &str) -> Result<(String, String, String)> {
    let key: PublicKey =
        gatehouse_ca::parse_public_key(line).map_err(|e| BrokerError::Invalid(format!("SSH public key: {e}")))?;
    let comment = key.comment().to_string();
    let bare = gatehouse_ca::public_key_line(&key, "");
    Ok((bare.trim().to_string(), gatehouse_ca::fingerprint(&key), comment))
}

impl Broker {
    pub async fn add_user(&self, actor: &Actor, name: &str, role: Role, keys: &[String]) -> Result<User> {
        ids::check_name("user", name)?;
        if name == "gatehouse" {
            return Err(BrokerError::Invalid("\"gatehouse\" is reserved for the bastion's command interface".into()));
        }
        let parsed = keys.iter().map(|k| normalise_key(k)).collect::<Result<Vec<_>>>()?;
        let id = ids::new("u");
        let now = now_ms();
        let mut w = self.db().write().await?;
        sqlx::query("INSERT INTO users (id, name, role, created_at) VALUES ($1,$2,$3,$4)")
            .bind(&id)
            .bind(name)
            .bind(role.as_str())
            .bind(now)
            .execute(w.conn())
            .await
            .map_err(|e| match BrokerError::from(e) {
                BrokerError::Conflict(_) => BrokerError::Conflict(format!("user {name} already exists")),
                other => other,
            })?;
        for (line, fp, comment) in &parsed {
            sqlx::query(
                "INSERT INTO user_keys (fingerprint, user_id, public_key, comment, created_at) VALUES ($1,$2,$3,$4,$5)",
            )
            .bind(fp)
            .bind(&id)
            .bind(line)
            .bind(comment)
            .bind(now)
            .execute(w.conn())
            .await
            .map_err(|e| match BrokerError::from(e) {
                BrokerError::Conflict(_) => BrokerError::Conflict(format!("key {fp} is already registered")),
                other => other,
            })?;
        }
        w.audit(AuditRecord::new(actor.clone(), "user.create", format!("user:{name}"), Outcome::Allow).details(
            serde_json::json!({
                "role": role.as_str(),
                "keys": parsed.iter().map(|(_, fp, _)| fp).collect::<Vec<_>>(),
            }),
        ))
        .await?;
        w.commit().await?;
        self.user_by_name(name).await?.ok_or_else(|| BrokerError::NotFound(format!("user {name}")))
    }

    pub async fn add_user_key(&self, actor: &Actor, name: &str, key: &str) -> Result<User> {
        let user = self.user_by_name(name).await?.ok_or_else(|| BrokerError::NotFound(format!("user {name}")))?;
        let (line, fp, comment) = normalise_key(key)?;
        let mut w = self.db().write().await?;
        sqlx::query(
            "INSERT INTO user_keys (fingerprint, user_id, public_key, comment, created_at) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(&fp)
        .bind(&user.id)
        .bind(&line)
        .bind(&comment)
        .bind(now_ms())
        .execute(w.conn())
        .await?;
        w.audit(
            AuditRecord::new(actor.clone(), "user.key_add", format!("user:{name}"), Outcome::Allow)
                .details(serde_json::json!({"key": fp})),
        )
        .await?;
        w.commit().await?;
        self.user_by_name(name).await?.ok_or_else(|| BrokerError::NotFound(format!("user {name}")))
    }

    pub async fn set_user_role(&self, actor: &Actor, name: &str, role: Role) -> Result<User> {
        let mut w = self.db().write().await?;
        let n = sqlx::query("UPDATE users SET role = $1 WHERE name = $2")
            .bind(role.as_str())
            .bind(name)
            .execute(w.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(BrokerError::NotFound(format!("user {name}")));
        }
        w.audit(
            AuditRecord::new(actor.clone(), "user.set_role", format!("user:{name}"), Outcome::Allow)
                .details(serde_json::json!({"role": role.as_str()})),
        )
        .await?;
        w.commit().await?;
        self.user_by_name(name).await?.ok_or_else(|| BrokerError::NotFound(format!("user {name}")))
    }

    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows =
            sqlx::query("SELECT id, name, role, created_at FROM users ORDER BY name").fetch_all(self.pool()).await?;
        let keys = sqlx::query("SELECT user_id, fingerprint, public_key, comment FROM user_keys ORDER BY created_at")
            .fetch_all(self.pool())
            .await?;
        let mut users = rows.iter().map(row_to_user).collect::<Result<Vec<_>>>()?;
        for k in &keys {
            let uid: String = k.try_get("user_id")?;
            if let Some(u) = users.iter_mut().find(|u| u.id == uid) {
                u.keys.push(row_to_key(k)?);
            }
        }
        Ok(users)
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT id, name, role, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(r) => Ok(Some(self.with_keys(row_to_user(&r)?).await?)),
            None => Ok(None),
        }
    }

    /// The user who registered this public key, if any.
    pub async fn user_by_key(&self, key: &PublicKey) -> Result<Option<User>> {
        let fp = gatehouse_ca::fingerprint(key);
        let row = sqlx::query(
            "SELECT u.id, u.name, u.role, u.created_at FROM users u JOIN user_keys k ON k.user_id = u.id WHERE k.fingerprint = $1",
        )
        .bind(&fp)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => Ok(Some(row_to_user(&r)?)),
            None => Ok(None),
        }
    }

    async fn with_keys(&self, mut u: User) -> Result<User> {
        let keys = sqlx::query(
            "SELECT fingerprint, public_key, comment FROM user_keys WHERE user_id = $1 ORDER BY created_at",
        )
        .bind(&u.id)
        .fetch_all(self.pool())
        .await?;
        u.keys = keys.iter().map(row_to_key).collect::<Result<_>>()?;
        Ok(u)
    }
}

fn row_to_user(r: &sqlx::any::AnyRow) -> Result<User> {
    let role: String = r.try_get("role")?;
    Ok(User {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: Role::parse(&role)?,
        created_at: r.try_get("created_at")?,
        keys: Vec::new(),
    })
}

fn row_to_key(r: &sqlx::any::AnyRow) -> Result<UserKey> {
    Ok(UserKey {
        fingerprint: r.try_get("fingerprint")?,
        public_key: r.try_get("public_key")?,
        comment: r.try_get("comment")?,
    })
}
