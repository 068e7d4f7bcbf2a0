//! Session rows, recordings metadata, kills, expiry, and the enforcer that
//! ends sessions whose right to exist went away.

use std::path::PathBuf;
use std::time::Duration;

use gatehouse_ca::ssh_key::{Certificate, PublicKey};
use gatehouse_ca::{CertPurpose, UserCertRequest};
use rand::RngExt;
use serde::Serialize;
use sqlx::Row;

use crate::audit::{Actor, AuditRecord, Outcome};
use crate::error::{BrokerError, Result};
use crate::hosts::Host;
use crate::live::LiveSession;
use crate::{Broker, ids, now_ms};

/// Who a session belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    /// `user` or `agent`
    pub kind: &'static str,
    pub id: String,
    pub name: String,
}

impl Subject {
    pub fn actor(&self) -> Actor {
        Actor { kind: self.kind, name: self.name.clone() }
    }
}

/// A session about to start.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// `ssh` (through the bastion) or `mcp` (an agent's exec session).
    pub kind: &'static str,
    pub subject: Subject,
    pub host: Host,
    pub login: String,
    pub grant_id: Option<String>,
    pub client_addr: String,
    pub mcp_session_id: Option<String>,
    pub expires_at: Option<i64>,
}

/// A session that has started: its id, the certificate serial reserved for
/// it, and the live handle enforcement uses to end it.
#[derive(Debug, Clone)]
pub struct OpenedSession {
    pub id: String,
    pub serial: u64,
    pub subject: Subject,
    pub host: Host,
    pub login: String,
    pub live: LiveSession,
}

/// How a session ended.
#[derive(Debug, Clone, Default)]
pub struct SessionEnd {
    pub reason: String,
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub kind: String,
    pub subject_kind: String,
    pub subject_name: String,
    pub host_name: String,
    pub login: String,
    pub grant_id: Option<String>,
    pub client_addr: String,
    pub mcp_session_id: Option<String>,
    pub started_at: i64,
    pub expires_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub exit_status: Option<i64>,
    pub exit_signal: Option<String>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub recording_path: Option<String>,
    pub recording_sha256: Option<String>,
    pub cert_serial: String,
}

/// One recorded channel.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingInfo {
    pub id: String,
    pub session_id: String,
    pub channel: i64,
    pub kind: String,
    pub command: String,
    pub path: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub sha256_in: Option<String>,
    pub sha256_out: Option<String>,
    pub truncated: bool,
    pub exit_status: Option<i64>,
    pub exit_signal: Option<String>,
    pub file_sha256: Option<String>,
    /// Filled in listings: who and where.
    pub subject_name: Option<String>,
    pub host_name: Option<String>,
    pub login: Option<String>,
}

/// A recording about to start.
#[derive(Debug, Clone)]
pub struct NewRecording {
    pub id: String,
    pub path: PathBuf,
}

/// Totals of a finished recording.
#[derive(Debug, Clone, Default)]
pub struct RecordingEnd {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub sha256_in: String,
    pub sha256_out: String,
    pub truncated: bool,
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    pub file_sha256: String,
}

const SESSION_COLUMNS: &str = "id, kind, subject_kind, subject_name, host_name, login, grant_id, client_addr, mcp_session_id, \
     started_at, expires_at, ended_at, end_reason, exit_status, exit_signal, bytes_in, bytes_out, recording_path, \
     recording_sha256, cert_serial";

fn row_to_session(r: &sqlx::any::AnyRow) -> Result<SessionInfo> {
    Ok(SessionInfo {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        subject_kind: r.try_get("subject_kind")?,
        subject_name: r.try_get("subject_name")?,
        host_name: r.try_get("host_name")?,
        login: r.try_get("login")?,
        grant_id: r.try_get("grant_id")?,
        client_addr: r.try_get("client_addr")?,
        mcp_session_id: r.try_get("mcp_session_id")?,
        started_at: r.try_get("started_at")?,
        expires_at: r.try_get("expires_at")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
        exit_status: r.try_get("exit_status")?,
        exit_signal: r.try_get("exit_signal")?,
        bytes_in: r.try_get("bytes_in")?,
        bytes_out: r.try_get("bytes_out")?,
        recording_path: r.try_get("recording_path")?,
        recording_sha256: r.try_get("recording_sha256")?,
        cert_serial: r.try_get("cert_serial")?,
    })
}

const RECORDING_SELECT: &str = "SELECT r.id, r.session_id, r.channel, r.kind, r.command, r.path, r.started_at, r.ended_at, \
     r.bytes_in, r.bytes_out, r.sha256_in, r.sha256_out, r.truncated, r.exit_status, r.exit_signal, r.file_sha256, \
     s.subject_name, s.host_name, s.login FROM recordings r LEFT JOIN sessions s ON s.id = r.session_id";

fn row_to_recording(r: &sqlx::any::AnyRow) -> Result<RecordingInfo> {
    let truncated: i64 = r.try_get("truncated")?;
    Ok(RecordingInfo {
        id: r.try_get("id")?,
        session_id: r.try_get("session_id")?,
        channel: r.try_get("channel")?,
        kind: r.try_get("kind")?,
        command: r.try_get("command")?,
        path: r.try_get("path")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        bytes_in: r.try_get("bytes_in")?,
        bytes_out: r.try_get("bytes_out")?,
        sha256_in: r.try_get("sha256_in")?,
        sha256_out: r.try_get("sha256_out")?,
        truncated: truncated != 0,
        exit_status: r.try_get("exit_status")?,
        exit_signal: r.try_get("exit_signal")?,
        file_sha256: r.try_get("file_sha256")?,
        subject_name: r.try_get("subject_name")?,
        host_name: r.try_get("host_name")?,
        login: r.try_get("login")?,
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Broker {
    /// Insert the session row and its `session.start` event, and register it
    /// live. Its expiry (if any) ends it on time.
    pub async fn open_session(&self, s: NewSession) -> Result<OpenedSession> {
        if let Err(e) = self.check_recordings_writable() {
            // Strict recording: no session without its recording.
            let why = format!("session recordings cannot be written ({e}); new sessions are refused until they can");
            self.db()
                .audit(
                    AuditRecord::new(
                        s.subject.actor(),
                        "session.start",
                        format!("{}@{}", s.login, s.host.name),
                        Outcome::Deny,
                    )
                    .reason(why.clone())
                    .client(&s.client_addr)
                    .mcp_session(s.mcp_session_id.clone()),
                )
                .await?;
            return Err(BrokerError::Denied(why));
        }
        let id = ids::new("s");
        let serial: u64 = rand::rng().random();
        let now = now_ms();
        let mut w = self.db().write().await?;
        sqlx::query(
            "INSERT INTO sessions (id, kind, subject_kind, subject_id, subject_name, host_id, host_name, login, grant_id, \
             client_addr, mcp_session_id, node_id, cert_serial, started_at, expires_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)",
        )
        .bind(&id)
        .bind(s.kind)
        .bind(s.subject.kind)
        .bind(&s.subject.id)
        .bind(&s.subject.name)
        .bind(&s.host.id)
        .bind(&s.host.name)
        .bind(&s.login)
        .bind(&s.grant_id)
        .bind(&s.client_addr)
        .bind(&s.mcp_session_id)
        .bind(self.node_id())
        .bind(format!("{serial:016x}"))
        .bind(now)
        .bind(s.expires_at)
        .execute(w.conn())
        .await?;
        w.audit(
            AuditRecord::new(
                s.subject.actor(),
                "session.start",
                format!("{}@{}", s.login, s.host.name),
                Outcome::Allow,
            )
            .session(&id)
            .client(&s.client_addr)
            .mcp_session(s.mcp_session_id.clone())
            .details(serde_json::json!({
                "kind": s.kind,
                "grant": s.grant_id,
                "cert_serial": format!("{serial:016x}"),
                "expires_at": s.expires_at,
            })),
        )
        .await?;
        crate::webhooks::enqueue(
            w.conn(),
            &crate::webhooks::Event::new(
                crate::webhooks::EventKind::SessionStarted,
                format!(
                    "Gatehouse: {} {} started session {id} on {}@{}",
                    s.subject.kind, s.subject.name, s.login, s.host.name
                ),
                serde_json::json!({
                    "session_id": id, "kind": s.kind, "subject_kind": s.subject.kind, "subject": s.subject.name,
                    "host": s.host.name, "login": s.login, "client_addr": s.client_addr, "grant_id": s.grant_id,
                    "mcp_session_id": s.mcp_session_id, "expires_at": s.expires_at,
                }),
            ),
        )
        .await?;
        w.commit().await?;
        self.kick_webhooks();
        let live = LiveSession::new(
            id.clone(),
            s.grant_id.clone(),
            s.subject.kind.to_string(),
            s.subject.id.clone(),
            s.expires_at,
        );
        self.live().insert(live.clone());
        if let Some(exp) = s.expires_at {
            let l = live.clone();
            tokio::spawn(async move {
                let wait = Duration::from_millis(u64::try_from(exp - now_ms()).unwrap_or(0));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => l.end("grant expired"),
                    _ = l.ended() => {}
                }
            });
        }
        Ok(OpenedSession { id, serial, subject: s.subject, host: s.host, login: s.login, live })
    }

    /// Can a recording be written right now? Writes and removes a 4 KiB
    /// probe file, so a full or read-only recordings disk is found before a
    /// session starts rather than after.
    pub fn check_recordings_writable(&self) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.recordings_dir().join(format!(".write-check-{}", ids::new("w")));
        let r = std::fs::File::create(&path).and_then(|mut f| f.write_all(&[0u8; 4096]));
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Sign the short-lived upstream user certificates for an opened
    /// session: one by the current user CA and, during a rotation's grace
    /// period, one by the previous CA, in the order the bastion offers them.
    pub fn sign_session_certificates(
        &self,
        s: &OpenedSession,
        key: &PublicKey,
        purpose: CertPurpose,
    ) -> Result<Vec<Certificate>> {
        let key_id = format!("gatehouse session={} {}={} host={}", s.id, s.subject.kind, s.subject.name, s.host.name);
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let cas = self.keys().user_cas();
        let mut certs = Vec::new();
        for ca in cas.trusted(now_ms()) {
            certs.push(ca.sign_user(
                &UserCertRequest {
                    public_key: key,
                    principal: &s.login,
                    key_id: &key_id,
                    serial: s.serial,
                    ttl: gatehouse_ca::MAX_SESSION_CERT_TTL,
                    purpose,
                },
                now,
            )?);
        }
        Ok(certs)
    }

    /// Close a session: final counters, first recording and its hash, and the
    /// `session.end` event (which carries every recording's SHA-256).
    pub async fn close_session(&self, id: &str, end: SessionEnd) -> Result<()> {
        self.live().remove(id);
        let recs = self.recordings_of(id).await?;
        let first = recs.first();
        let now = now_ms();
        let mut w = self.db().write().await?;
        let row = sqlx::query("SELECT subject_kind, subject_name, host_name, login, client_addr, mcp_session_id FROM sessions WHERE id = $1 AND ended_at IS NULL")
            .bind(id)
            .fetch_optional(w.conn())
            .await?;
        let Some(row) = row else {
            return Ok(()); // already closed
        };
        sqlx::query(
            "UPDATE sessions SET ended_at = $1, end_reason = $2, exit_status = $3, exit_signal = $4, bytes_in = $5, \
             bytes_out = $6, recording_path = $7, recording_sha256 = $8 WHERE id = $9",
        )
        .bind(now)
        .bind(&end.reason)
        .bind(end.exit_status.map(i64::from))
        .bind(&end.exit_signal)
        .bind(to_i64(end.bytes_in))
        .bind(to_i64(end.bytes_out))
        .bind(first.map(|r| r.path.clone()))
        .bind(first.and_then(|r| r.file_sha256.clone()))
        .bind(id)
        .execute(w.conn())
        .await?;
        let kind: String = row.try_get("subject_kind")?;
        let name: String = row.try_get("subject_name")?;
        let actor = match kind.as_str() {
            "agent" => Actor::agent(name.clone()),
            _ => Actor::user(name.clone()),
        };
        let host: String = row.try_get("host_name")?;
        let login: String = row.try_get("login")?;
        let client: String = row.try_get("client_addr")?;
        let mcp: Option<String> = row.try_get("mcp_session_id")?;
        w.audit(
            AuditRecord::new(actor, "session.end", format!("{login}@{host}"), Outcome::Allow)
                .session(id)
                .client(client)
                .mcp_session(mcp)
                .reason(end.reason.clone())
                .details(serde_json::json!({
                    "exit_status": end.exit_status,
                    "exit_signal": end.exit_signal,
                    "bytes_in": end.bytes_in,
                    "bytes_out": end.bytes_out,
                    "recordings": recs.iter().map(|r| serde_json::json!({
                        "id": r.id, "path": r.path, "sha256": r.file_sha256,
                    })).collect::<Vec<_>>(),
                })),
        )
        .await?;
        crate::webhooks::enqueue(
            w.conn(),
            &crate::webhooks::Event::new(
                crate::webhooks::EventKind::SessionEnded,
                format!("Gatehouse: {kind} {name}'s session {id} on {login}@{host} ended: {}", end.reason),
                serde_json::json!({
                    "session_id": id, "subject_kind": kind, "subject": name, "host": host, "login": login,
                    "reason": end.reason, "exit_status": end.exit_status, "exit_signal": end.exit_signal,
                    "bytes_in": end.bytes_in, "bytes_out": end.bytes_out,
                }),
            ),
        )
        .await?;
        w.commit().await?;
        self.kick_webhooks();
        Ok(())
    }

    /// Ask a session to end (here or, through the database, on another node).
    pub async fn kill_session(&self, actor: &Actor, id: &str, reason: &str) -> Result<SessionInfo> {
        ids::check("s", id)?;
        let now = now_ms();
        let mut w = self.db().write().await?;
        let n = sqlx::query(
            "UPDATE sessions SET kill_requested_at = $1, kill_reason = $2 WHERE id = $3 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(w.conn())
        .await?
        .rows_affected();
        if n == 0 {
            drop(w);
            let s = self.session(id).await?;
            return Err(BrokerError::Conflict(format!("session {} has already ended", s.id)));
        }
        w.audit(
            AuditRecord::new(actor.clone(), "session.kill", format!("session:{id}"), Outcome::Allow)
                .session(id)
                .reason(reason),
        )
        .await?;
        w.commit().await?;
        self.live().end(id, reason);
        self.session(id).await
    }

    pub async fn session(&self, id: &str) -> Result<SessionInfo> {
        ids::check("s", id)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1")))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("session {id}")))?;
        row_to_session(&row)
    }

    pub async fn list_sessions(&self, active_only: bool, limit: i64) -> Result<Vec<SessionInfo>> {
        let filter = if active_only { "WHERE ended_at IS NULL" } else { "" };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions {filter} ORDER BY started_at DESC LIMIT {}",
            limit.clamp(1, 100_000)
        )))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_to_session).collect()
    }

    /// Reserve a recording file for a channel and insert its row, with the
    /// `session.channel` event naming what runs (shell, exec command, sftp).
    pub async fn start_recording(
        &self,
        session_id: &str,
        channel: u32,
        kind: &str,
        command: &str,
    ) -> Result<NewRecording> {
        let id = ids::new("r");
        let path = self.recordings_dir().join(format!("{id}.cast"));
        let command = crate::audit::cap(command, 4000);
        let mut w = self.db().write().await?;
        let row = sqlx::query(
            "SELECT subject_kind, subject_name, host_name, login, client_addr, mcp_session_id FROM sessions WHERE id = $1",
        )
        .bind(session_id)
        .fetch_one(w.conn())
        .await?;
        sqlx::query(
            "INSERT INTO recordings (id, session_id, channel, kind, command, path, started_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&id)
        .bind(session_id)
        .bind(i64::from(channel))
        .bind(kind)
        .bind(&command)
        .bind(path.to_string_lossy().to_string())
        .bind(now_ms())
        .execute(w.conn())
        .await?;
        let kind_s: String = row.try_get("subject_kind")?;
        let name: String = row.try_get("subject_name")?;
        let actor = if kind_s == "agent" { Actor::agent(name) } else { Actor::user(name) };
        let host: String = row.try_get("host_name")?;
        let login: String = row.try_get("login")?;
        w.audit(
            AuditRecord::new(actor, "session.channel", format!("{login}@{host}"), Outcome::Allow)
                .session(session_id)
                .client(row.try_get::<String, _>("client_addr")?)
                .mcp_session(row.try_get("mcp_session_id")?)
                .details(serde_json::json!({"kind": kind, "command": command, "channel": channel, "recording": id})),
        )
        .await?;
        w.commit().await?;
        Ok(NewRecording { id, path })
    }

    pub async fn finish_recording(&self, id: &str, end: &RecordingEnd) -> Result<()> {
        let mut w = self.db().write().await?;
        sqlx::query(
            "UPDATE recordings SET ended_at = $1, bytes_in = $2, bytes_out = $3, sha256_in = $4, sha256_out = $5, \
             truncated = $6, exit_status = $7, exit_signal = $8, file_sha256 = $9 WHERE id = $10",
        )
        .bind(now_ms())
        .bind(to_i64(end.bytes_in))
        .bind(to_i64(end.bytes_out))
        .bind(&end.sha256_in)
        .bind(&end.sha256_out)
        .bind(i64::from(end.truncated))
        .bind(end.exit_status.map(i64::from))
        .bind(&end.exit_signal)
        .bind(&end.file_sha256)
        .bind(id)
        .execute(w.conn())
        .await?;
        w.commit().await?;
        Ok(())
    }

    pub async fn recordings_of(&self, session_id: &str) -> Result<Vec<RecordingInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{RECORDING_SELECT} WHERE r.session_id = $1 ORDER BY r.channel, r.started_at"
        )))
        .bind(session_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_to_recording).collect()
    }

    pub async fn list_recordings(&self, limit: i64) -> Result<Vec<RecordingInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{RECORDING_SELECT} ORDER BY r.started_at DESC LIMIT {}",
            limit.clamp(1, 100_000)
        )))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_to_recording).collect()
    }

    /// A recording by id (`r_…`) or by session id (`s_…`, its first channel).
    pub async fn recording(&self, id: &str) -> Result<RecordingInfo> {
        let row = if id.starts_with("s_") {
            ids::check("s", id)?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{RECORDING_SELECT} WHERE r.session_id = $1 ORDER BY r.channel, r.started_at LIMIT 1"
            )))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
        } else {
            ids::check("r", id)?;
            sqlx::query(sqlx::AssertSqlSafe(format!("{RECORDING_SELECT} WHERE r.id = $1")))
                .bind(id)
                .fetch_optional(self.pool())
                .await?
        };
        let rec = row_to_recording(&row.ok_or_else(|| BrokerError::NotFound(format!("recording {id}")))?)?;
        // The path is ours, but check it stays inside the recordings dir.
        let expected = self.recordings_dir().join(format!("{}.cast", rec.id));
        if std::path::Path::new(&rec.path) != expected {
            return Err(BrokerError::Internal(format!("recording {} has an unexpected path", rec.id)));
        }
        Ok(rec)
    }

    /// Sessions this node left open when it stopped (crash, kill -9) are
    /// closed with end reason `broker restarted`.
    pub(crate) async fn recover_after_restart(&self) -> Result<()> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM sessions WHERE ended_at IS NULL AND node_id = $1")
            .bind(self.node_id())
            .fetch_all(self.pool())
            .await?;
        for id in ids {
            self.close_session(&id, SessionEnd { reason: "broker restarted".into(), ..Default::default() }).await?;
        }
        Ok(())
    }

    /// Every 250 ms, end live sessions whose grant was revoked or expired or
    /// whose kill was requested, including by another node.
    pub(crate) fn spawn_enforcer(&self) {
        let b = self.clone();
        let stop = self.shutdown_token();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                n += 1;
                if n.is_multiple_of(240) {
                    let _ = b.prune_nonces().await;
                }
                if b.live().is_empty() {
                    continue;
                }
                match b.sessions_to_end().await {
                    Ok(list) => {
                        for (id, reason) in list {
                            b.live().end(&id, &reason);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "session enforcer could not read the database"),
                }
            }
        });
    }

    async fn sessions_to_end(&self) -> Result<Vec<(String, String)>> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT s.id, s.kill_requested_at, s.kill_reason, g.revoked_at, g.expires_at, s.expires_at AS s_expires, \
             a.status AS agent_status \
             FROM sessions s LEFT JOIN grants g ON g.id = s.grant_id \
             LEFT JOIN agents a ON s.subject_kind = 'agent' AND a.id = s.subject_id \
             WHERE s.ended_at IS NULL AND s.node_id = $1",
        )
        .bind(self.node_id())
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let id: String = r.try_get("id")?;
            let kill: Option<i64> = r.try_get("kill_requested_at")?;
            let kill_reason: Option<String> = r.try_get("kill_reason")?;
            let revoked: Option<i64> = r.try_get("revoked_at")?;
            let g_exp: Option<i64> = r.try_get("expires_at")?;
            let s_exp: Option<i64> = r.try_get("s_expires")?;
            let agent_status: Option<String> = r.try_get("agent_status")?;
            let reason = if kill.is_some() {
                Some(kill_reason.unwrap_or_else(|| "killed by an administrator".into()))
            } else if let Some(st) = agent_status.filter(|st| st != "active") {
                Some(format!("agent {st}"))
            } else if revoked.is_some() {
                Some("grant revoked".to_string())
            } else if g_exp.is_some_and(|e| e <= now) || s_exp.is_some_and(|e| e <= now) {
                Some("grant expired".to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                out.push((id, reason));
            }
        }
        Ok(out)
    }
}
