//! Gatehouse control plane: storage, identities, tokens, grants, sessions,
//! recordings metadata and the audit log. Only this crate touches the
//! database; the bastion and the MCP server ask it.
#![forbid(unsafe_code)]

pub mod access;
pub mod agent_access;
pub mod agents;
pub mod approvals;
pub mod audit;
pub mod db;
pub mod error;
pub mod grants;
pub mod host_certs;
pub mod hosts;
pub mod ids;
pub mod keys;
pub mod live;
pub mod pki;
pub mod policy;
pub mod probes;
pub mod sessions;
pub mod tokens;
pub mod users;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use audit::{Actor, AuditEvent, AuditQuery, AuditRecord, Outcome, Severity};
pub use error::{BrokerError, Result};
use keys::{KeyStore, MasterKey, MasterKeySource};
use tokio_util::sync::CancellationToken;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// How to open the broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    /// `None` means the embedded SQLite database at `<data-dir>/gatehouse.db`.
    pub database_url: Option<String>,
    pub master_key: MasterKeySource,
    /// Per-direction cap on recorded exec/sftp data.
    pub recording_cap_bytes: u64,
    /// Names the bastion's host certificate is valid for (what users type
    /// after `@` when they connect).
    pub bastion_names: Vec<String>,
}

impl BrokerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            master_key: MasterKeySource::DataDir,
            recording_cap_bytes: 16 * 1024 * 1024,
            bastion_names: vec!["localhost".into(), "127.0.0.1".into()],
        }
    }
}

/// What the first start created, for the operator to see once.
#[derive(Debug, Default)]
pub struct FirstStart {
    /// The admin token, when this start created it (print once, never log).
    pub admin_token: Option<tokens::Secret>,
    /// True when the master key was generated into the data dir.
    pub generated_master_key: bool,
    pub created_keys: bool,
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    db: db::Db,
    data_dir: PathBuf,
    keys: KeyStore,
    live: live::LiveSessions,
    node_id: String,
    config: BrokerConfig,
    shutdown: CancellationToken,
    pki: pki::PkiState,
    hooks: webhooks::WebhookState,
    /// Kept (zeroized on drop, redacted in Debug) so `ca rotate` can seal a
    /// new CA without a restart.
    master: keys::MasterKey,
}

impl Broker {
    /// Open the data dir and database, run migrations, load or create keys,
    /// and make the admin token on first start.
    pub async fn open(config: BrokerConfig) -> Result<(Self, FirstStart)> {
        keys::create_private_dir(&config.data_dir)?;
        let recordings = config.data_dir.join("recordings");
        std::fs::create_dir_all(&recordings)?;
        let (master, generated_master_key) = MasterKey::load(&config.master_key, &config.data_dir)?;
        let keys = KeyStore::load_or_create(&config.data_dir, &master)?;
        let (pki, created_x509) = pki::load_or_create(&config.data_dir, &master)?;
        let hooks = webhooks::WebhookState::new(&master);
        let db = match &config.database_url {
            Some(url) => db::Db::connect(url).await?,
            None => db::Db::open_sqlite(&config.data_dir.join("gatehouse.db")).await?,
        };
        let node_id = load_node_id(&config.data_dir)?;
        let created_keys = keys.created;
        let broker = Self {
            inner: Arc::new(Inner {
                db,
                data_dir: config.data_dir.clone(),
                keys,
                live: live::LiveSessions::default(),
                node_id,
                config,
                shutdown: CancellationToken::new(),
                pki,
                hooks,
                master,
            }),
        };
        if created_keys {
            broker
                .db()
                .audit(AuditRecord::new(
                    Actor::system(),
                    "ca.created",
                    "ssh user CA, ssh host CA, bastion host key",
                    Outcome::Allow,
                ))
                .await?;
        }
        if created_x509 {
            broker
                .db()
                .audit(AuditRecord::new(Actor::system(), "ca.created", "x509 root CA, x509 issuing CA", Outcome::Allow))
                .await?;
        }
        let admin_token = broker.ensure_admin_token().await?;
        broker.recover_after_restart().await?;
        broker.spawn_enforcer();
        broker.spawn_webhook_worker();
        Ok((broker, FirstStart { admin_token, generated_master_key, created_keys }))
    }

    /// Is the database answering? (A `SELECT 1`, given two seconds.)
    pub async fn storage_check(&self) -> Result<()> {
        match tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(self.pool())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(BrokerError::Storage("the database did not answer within 2s".into())),
        }
    }

    pub fn db(&self) -> &db::Db {
        &self.inner.db
    }

    pub fn pool(&self) -> &sqlx::AnyPool {
        self.inner.db.pool()
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.inner.data_dir.join("recordings")
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub fn keys(&self) -> &KeyStore {
        &self.inner.keys
    }

    pub fn live(&self) -> &live::LiveSessions {
        &self.inner.live
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Cancelled when the broker is shutting down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// The user CA public key line for `TrustedUserCAKeys`.
    /// During a rotation's grace period both lines, the new CA first.
    pub fn user_ca_line(&self) -> String {
        let cas = self.inner.keys.user_cas();
        let comments = ["gatehouse-user-ca", "gatehouse-user-ca-previous"];
        let lines: Vec<String> = cas
            .trusted(now_ms())
            .into_iter()
            .zip(comments)
            .map(|(ca, comment)| gatehouse_ca::public_key_line(ca.public_key(), comment))
            .collect();
        lines.join("\n")
    }

    /// `ca rotate`: a new user CA signs from now on, the replaced one stays
    /// trusted for `grace`. Audited either way.
    pub async fn rotate_user_ca(&self, actor: &Actor, grace: Duration) -> Result<keys::Rotation> {
        let r = self.inner.keys.rotate_user_ca(&self.inner.data_dir, &self.inner.master, grace, now_ms());
        let rec = match &r {
            Ok(r) => AuditRecord::new(actor.clone(), "ca.rotated", "ssh user CA", Outcome::Allow).reason(format!(
                "new {} signs; previous {} trusted for {}",
                r.new_fingerprint,
                r.previous_fingerprint,
                policy::fmt_duration(grace)
            )),
            Err(e) => {
                AuditRecord::new(actor.clone(), "ca.rotated", "ssh user CA", Outcome::Error).reason(e.to_string())
            }
        };
        self.db().audit(rec).await?;
        r
    }

    pub fn host_ca_line(&self) -> String {
        gatehouse_ca::public_key_line(self.inner.keys.host_ca.public_key(), "gatehouse-host-ca")
    }

    pub fn bastion_host_key_line(&self) -> String {
        gatehouse_ca::public_key_line(self.inner.keys.bastion_key.public_key(), "gatehouse-bastion")
    }

    /// A host certificate for the bastion's own key, signed by the host CA, so
    /// users' `ssh` trusts any Gatehouse bastion through one
    /// `@cert-authority` line. Issued fresh at every start.
    pub fn bastion_host_certificate(&self) -> Result<Option<gatehouse_ca::ssh_key::Certificate>> {
        let names: Vec<String> =
            self.inner.config.bastion_names.iter().filter(|n| ids::check_name("bastion", n).is_ok()).cloned().collect();
        if names.is_empty() {
            return Ok(None);
        }
        let serial: u64 = rand::RngExt::random(&mut rand::rng());
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let cert = self.inner.keys.host_ca.sign_host(
            &gatehouse_ca::HostCertRequest {
                public_key: self.inner.keys.bastion_key.public_key(),
                principals: &names,
                key_id: "gatehouse bastion",
                serial,
                ttl: Duration::from_secs(365 * 24 * 3600),
            },
            now,
        )?;
        Ok(Some(cert))
    }

    /// Record an event that changes no other state (a denial, a note).
    pub async fn audit(&self, rec: AuditRecord) -> Result<String> {
        self.inner.db.audit(rec).await
    }

    /// Audit a refusal the caller has already decided on: the refusal
    /// stands whether or not the row can be written; a failure is logged.
    pub async fn audit_refusal(&self, rec: AuditRecord) {
        if let Err(e) = self.audit(rec).await {
            tracing::error!(error = %e, "could not audit a refused request");
        }
    }

    pub async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        audit::query(self.pool(), q).await
    }

    pub async fn audit_verify(&self) -> Result<audit::ChainReport> {
        audit::verify_chain(self.pool()).await
    }

    async fn ensure_admin_token(&self) -> Result<Option<tokens::Secret>> {
        let existing: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE kind = 'admin' AND revoked_at IS NULL")
                .fetch_one(self.pool())
                .await?;
        let path = self.inner.data_dir.join("admin.token");
        if existing > 0 && path.exists() {
            return Ok(None);
        }
        let mut w = self.inner.db.write().await?;
        let (id, secret) = tokens::insert(
            w.conn(),
            tokens::TokenKind::Admin,
            &tokens::NewToken { created_by: "gatehouse serve (first start)".into(), ..Default::default() },
        )
        .await?;
        w.audit(AuditRecord::new(Actor::system(), "token.create", format!("admin token {id}"), Outcome::Allow)).await?;
        keys::write_private(&path, format!("{}\n", secret.expose()).as_bytes())?;
        w.commit().await?;
        Ok(Some(secret))
    }

    /// Authenticate an admin API bearer token.
    pub async fn authenticate_admin(
        &self,
        secret: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<tokens::TokenInfo> {
        match tokens::authenticate(self.pool(), secret, tokens::TokenKind::Admin, client).await? {
            Ok(info) => Ok(info),
            Err((info, why)) => {
                let mut actor = Actor::unknown("api client");
                let mut rec = AuditRecord::new(actor.clone(), "api.auth", "admin api", Outcome::Deny);
                if let Some(i) = &info {
                    if i.kind == tokens::TokenKind::Agent.as_str()
                        && let Ok(agent) = self.agent_by_id(&i.subject_id).await
                    {
                        actor = agent.actor();
                    }
                    rec = AuditRecord::new(actor, "api.auth", "admin api", Outcome::Deny)
                        .details(serde_json::json!({"token": i.id, "token_kind": i.kind}));
                }
                self.audit(rec.reason(why.as_str()).client(client.map(|c| c.to_string()).unwrap_or_default())).await?;
                Err(BrokerError::Unauthorized(why.as_str().into()))
            }
        }
    }

    /// Stop background work and close the database.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.db.close().await;
    }
}

fn load_node_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("node.id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if ids::check("node", &s).is_ok() {
            return Ok(s);
        }
    }
    let id = ids::new("node");
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

/// Parse a human duration such as `30m`, `8h`, `90d`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim())
        .map_err(|e| BrokerError::Invalid(format!("duration {:?}: {e}", audit::cap(s, 40))))
}
