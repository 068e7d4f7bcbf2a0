//! Agents' SSH sessions: the same upstream path as the bastion (fresh key,
//! short certificate, verified host key), kept open for the life of the
//! session so repeated commands are fast, with every command recorded and
//! capped like a human's exec.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_broker::sessions::{OpenedSession, RecordingEnd, SessionEnd};
use gatehouse_broker::{AuditRecord, Broker, Outcome, Severity};
use gatehouse_ca::CertPurpose;
use russh::ChannelMsg;

use crate::error::BastionError;
use crate::recording::{Header, Recorder};
use crate::upstream::{self, HostTrust, Upstream};

/// Limits of one command.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub command: String,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Per-stream cap on what is returned (not on what is recorded).
    pub max_output: usize,
    /// The MCP session the call came from, for the recording.
    pub mcp_session_id: Option<String>,
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub recording_id: String,
}

struct ExecSession {
    opened: OpenedSession,
    upstream: tokio::sync::Mutex<Option<Arc<Upstream>>>,
    channels: AtomicU32,
    bytes: Mutex<(u64, u64)>,
    last_exit: Mutex<(Option<u32>, Option<String>)>,
}

/// The agent sessions alive in this process.
#[derive(Clone, Default)]
pub struct ExecSessions {
    map: Arc<Mutex<HashMap<String, Arc<ExecSession>>>>,
    recording_cap: Arc<Mutex<u64>>,
}

impl ExecSessions {
    pub fn new(recording_cap: u64) -> Self {
        Self { map: Arc::default(), recording_cap: Arc::new(Mutex::new(recording_cap)) }
    }

    fn get(&self, id: &str) -> Option<Arc<ExecSession>> {
        self.map.lock().ok().and_then(|m| m.get(id).cloned())
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.get(id).is_some_and(|s| !s.opened.live.is_ended())
    }

    /// Track an opened agent session. When the broker ends it (close, kill,
    /// expiry, revocation, suspension) the upstream connection is dropped and
    /// the session row closed.
    pub fn register(&self, broker: &Broker, opened: OpenedSession) {
        let s = Arc::new(ExecSession {
            opened: opened.clone(),
            upstream: tokio::sync::Mutex::new(None),
            channels: AtomicU32::new(0),
            bytes: Mutex::new((0, 0)),
            last_exit: Mutex::new((None, None)),
        });
        if let Ok(mut m) = self.map.lock() {
            m.insert(opened.id.clone(), s.clone());
        }
        let map = self.map.clone();
        let broker = broker.clone();
        tokio::spawn(async move {
            s.opened.live.ended().await;
            let reason = s.opened.live.end_reason().unwrap_or_else(|| "session ended".into());
            if let Some(up) = s.upstream.lock().await.take() {
                let _ = up.handle.disconnect(russh::Disconnect::ByApplication, "session over", "en").await;
            }
            if let Ok(mut m) = map.lock() {
                m.remove(&s.opened.id);
            }
            let (bytes_in, bytes_out) = s.bytes.lock().map(|b| *b).unwrap_or_default();
            let (exit_status, exit_signal) = s.last_exit.lock().map(|e| e.clone()).unwrap_or_default();
            if let Err(e) = broker
                .close_session(&s.opened.id, SessionEnd { reason, exit_status, exit_signal, bytes_in, bytes_out })
                .await
            {
                tracing::error!(session = %s.opened.id, error = %e, "could not close an agent session");
            }
        });
    }

    async fn upstream(&self, broker: &Broker, s: &ExecSession) -> Result<Arc<Upstream>, BastionError> {
        let mut slot = s.upstream.lock().await;
        if let Some(up) = slot.as_ref()
            && !up.handle.is_closed()
        {
            return Ok(up.clone());
        }
        let host = &s.opened.host;
        let trust = HostTrust::for_host(host, Some(broker.keys().host_ca.public_key().clone()))?;
        let key = gatehouse_ca::generate_ed25519();
        let certs = broker.sign_session_certificates(&s.opened, key.public_key(), CertPurpose::ExecOnly)?;
        match upstream::connect(&host.address, trust, &s.opened.login, key, certs).await {
            Ok(up) => {
                let up = Arc::new(up);
                *slot = Some(up.clone());
                Ok(up)
            }
            Err(e) => {
                let (action, severity) = match &e {
                    BastionError::HostKey(_) => ("ssh.upstream_host_key", Severity::Critical),
                    _ => ("ssh.upstream", Severity::Warning),
                };
                let _ = broker
                    .audit(
                        AuditRecord::new(
                            s.opened.subject.actor(),
                            action,
                            format!("{}@{}", s.opened.login, host.name),
                            Outcome::Deny,
                        )
                        .severity(severity)
                        .session(&s.opened.id)
                        .reason(e.to_string()),
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// Run one command on a live session.
    pub async fn exec(&self, broker: &Broker, session_id: &str, req: ExecRequest) -> Result<ExecResult, BastionError> {
        let s = self
            .get(session_id)
            .filter(|s| !s.opened.live.is_ended())
            .ok_or_else(|| BastionError::Upstream(format!("session {session_id} is not open")))?;
        let up = self.upstream(broker, &s).await?;
        let channel_no = s.channels.fetch_add(1, Ordering::Relaxed) + 1;
        let rec = broker.start_recording(&s.opened.id, channel_no, "exec", &req.command).await?;
        let header = Header {
            width: 80,
            height: 24,
            title: format!("{} → {}@{}: {}", s.opened.subject.name, s.opened.login, s.opened.host.name, req.command),
            command: Some(req.command.clone()),
            env: Default::default(),
            gatehouse: serde_json::json!({
                "session": s.opened.id,
                "recording": rec.id,
                "channel": channel_no,
                "kind": "exec",
                "subject": format!("{}:{}", s.opened.subject.kind, s.opened.subject.name),
                "host": s.opened.host.name,
                "login": s.opened.login,
                "mcp_session": req.mcp_session_id,
                "pty": false,
            }),
        };
        let cap = self.recording_cap.lock().map(|c| *c).unwrap_or(16 * 1024 * 1024);
        let mut recorder = Recorder::create(&rec.path, &header, Some(cap)).map_err(|e| {
            s.opened.live.end("recording failed");
            BastionError::Recording(e.to_string())
        })?;
        let started = Instant::now();
        let channel = up.handle.channel_open_session().await?;
        let (mut rx, tx) = channel.split();
        tx.exec(true, req.command.as_bytes().to_vec()).await?;
        if let Some(stdin) = &req.stdin {
            recorder.input(stdin).map_err(|e| BastionError::Recording(e.to_string()))?;
            tx.data_bytes(Bytes::copy_from_slice(stdin)).await?;
        }
        tx.eof().await?;
        let mut out = ExecResult {
            exit_status: None,
            exit_signal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
            timed_out: false,
            duration_ms: 0,
            recording_id: rec.id.clone(),
        };
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        let mut record_error = None;
        loop {
            let msg = tokio::select! {
                m = rx.wait() => m,
                _ = &mut deadline => { out.timed_out = true; None }
                _ = s.opened.live.ended() => None,
            };
            let Some(msg) = msg else { break };
            match msg {
                ChannelMsg::Data { data } => {
                    if let Err(e) = recorder.output(&data) {
                        record_error = Some(e);
                        break;
                    }
                    append_capped(&mut out.stdout, &data, req.max_output, &mut out.truncated);
                }
                ChannelMsg::ExtendedData { data, .. } => {
                    if let Err(e) = recorder.output(&data) {
                        record_error = Some(e);
                        break;
                    }
                    append_capped(&mut out.stderr, &data, req.max_output, &mut out.truncated);
                }
                ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => out.exit_signal = Some(crate::sig_name(&signal_name)),
                ChannelMsg::Failure => {
                    let _ = recorder.marker("gatehouse: the target refused the command");
                    break;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        if out.timed_out {
            let _ = tx.signal(russh::Sig::KILL).await;
            let _ = recorder.marker(&format!("gatehouse: command timed out after {} s", req.timeout.as_secs()));
        }
        let _ = tx.close().await;
        out.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(e) = record_error {
            s.opened.live.end("recording failed");
            return Err(BastionError::Recording(e.to_string()));
        }
        let exit = match (&out.exit_status, &out.exit_signal) {
            (_, Some(sig)) => format!("exit_signal={sig}"),
            (Some(c), None) => format!("exit_status={c}"),
            _ if out.timed_out => "timed out".to_string(),
            _ => "without exit status".to_string(),
        };
        let summary = recorder.finish(&exit).map_err(|e| {
            s.opened.live.end("recording failed");
            BastionError::Recording(e.to_string())
        })?;
        if let Ok(mut b) = s.bytes.lock() {
            b.0 += summary.bytes_in;
            b.1 += summary.bytes_out;
        }
        if let Ok(mut e) = s.last_exit.lock() {
            *e = (out.exit_status, out.exit_signal.clone());
        }
        broker
            .finish_recording(
                &rec.id,
                &RecordingEnd {
                    bytes_in: summary.bytes_in,
                    bytes_out: summary.bytes_out,
                    sha256_in: summary.sha256_in,
                    sha256_out: summary.sha256_out,
                    truncated: summary.truncated,
                    exit_status: out.exit_status,
                    exit_signal: out.exit_signal.clone(),
                    file_sha256: summary.file_sha256,
                },
            )
            .await?;
        Ok(out)
    }
}

fn append_capped(buf: &mut Vec<u8>, data: &[u8], cap: usize, truncated: &mut bool) {
    let room = cap.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..room.min(data.len())]);
}
