//! One task per client session channel: open the matching upstream channel,
//! forward requests and data both ways, record everything, and end on stop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gatehouse_broker::sessions::{OpenedSession, RecordingEnd};
use gatehouse_broker::{AuditRecord, Outcome, Severity};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, Sig};

use crate::recording::{Header, Recorder};
use crate::server::{ChannelMode, Conn, allowed_env};

/// Name of a signal as SSH sends it (`TERM`, `KILL`, …).
pub fn sig_name(s: &Sig) -> String {
    match s {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(c) => c.clone(),
    }
}

pub(crate) async fn run_channel(conn: Arc<Conn>, channel: Channel<Msg>, handle: Handle) {
    match conn.mode() {
        ChannelMode::Deny(msg) => deny_channel(channel, &msg).await,
        ChannelMode::Commands(user) => crate::commands::run(conn.clone(), user, channel, handle).await,
        ChannelMode::Offer { user, offer, denial } => {
            crate::jit::offer(conn, user, offer, denial, channel, handle).await;
        }
        ChannelMode::Proxy(session) => proxy_session(conn, *session, channel, handle, Vec::new()).await,
    }
}

/// Open the upstream channel and proxy. `initial` are client requests
/// already read from the channel (pty, env, shell), replayed first.
pub(crate) async fn proxy_session(
    conn: Arc<Conn>,
    session: OpenedSession,
    channel: Channel<Msg>,
    handle: Handle,
    initial: Vec<ChannelMsg>,
) {
    match conn.upstream().await {
        Ok(up) => {
            let upstream_channel = match up.handle.channel_open_session().await {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("the target refused a new channel: {e}");
                    if initial.is_empty() {
                        deny_channel(channel, &msg).await
                    } else {
                        refuse(&channel, &msg).await
                    }
                    return;
                }
            };
            proxy(conn, session, channel, upstream_channel, handle, initial).await;
        }
        Err(msg) => {
            if initial.is_empty() {
                deny_channel(channel, &msg).await
            } else {
                refuse(&channel, &msg).await
            }
        }
    }
}

/// Wait for the client's shell/exec/subsystem request, then print one line
/// on stderr and end the channel with exit status 1.
pub(crate) async fn deny_channel(mut channel: Channel<Msg>, msg: &str) {
    let wait = async {
        while let Some(m) = channel.wait().await {
            match m {
                ChannelMsg::RequestShell { .. } | ChannelMsg::Exec { .. } | ChannelMsg::RequestSubsystem { .. } => {
                    return true;
                }
                ChannelMsg::Eof | ChannelMsg::Close => return false,
                _ => {}
            }
        }
        false
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), wait).await;
    refuse(&channel, msg).await;
}

/// Print one line on stderr and end the channel with exit status 1.
pub(crate) async fn refuse(channel: &Channel<Msg>, msg: &str) {
    let _ = channel.extended_data_bytes(1, Bytes::from(format!("gatehouse: {msg}\r\n"))).await;
    let _ = channel.exit_status(1).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// What the reader hands the forwarder, in the client's order.
enum Up {
    Data(Bytes),
    Eof,
    Close,
    Pty {
        term: String,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        terminal_modes: Vec<(russh::Pty, u32)>,
    },
    Env(String, String),
    Window(u32, u32, u32, u32),
    Shell,
    Exec(Vec<u8>),
    Subsystem(String),
    Signal(Sig),
}

/// Recording and bookkeeping of one proxied channel.
struct ChanState {
    recorder: Option<Recorder>,
    recording_id: Option<String>,
    /// The recording could not be written: the session must end.
    failed: bool,
    pty: Option<(String, u32, u32)>,
    env: BTreeMap<String, String>,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
    /// A shell/exec/subsystem request is waiting for the target's answer.
    pending_start: bool,
}

type Shared = Arc<Mutex<ChanState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, ChanState> {
    match s.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

async fn proxy(
    conn: Arc<Conn>,
    session: OpenedSession,
    client: Channel<Msg>,
    upstream: Channel<russh::client::Msg>,
    handle: Handle,
    initial: Vec<ChannelMsg>,
) {
    let channel_no = conn.with_state(|s| {
        s.next_channel += 1;
        s.next_channel
    });
    let state: Shared = Arc::new(Mutex::new(ChanState {
        recorder: None,
        recording_id: None,
        failed: false,
        pty: None,
        env: BTreeMap::new(),
        exit_status: None,
        exit_signal: None,
        pending_start: false,
    }));
    let client_id = client.id();
    let (mut client_rx, client_tx) = client.split();
    let (mut up_rx, up_tx) = upstream.split();
    let stop = conn.stop.clone();

    // Client → target, in two halves so the russh session loop is never
    // blocked on a slow target: the reader always drains the client channel
    // into a queue and the forwarder feeds the target. The queue is bounded by
    // withholding SSH window (see `Flow` and `Handler::adjust_window`).
    let (fwd_tx, mut fwd_rx) = tokio::sync::mpsc::unbounded_channel::<Up>();
    let mut initial = std::collections::VecDeque::from(initial);
    let reader = async {
        loop {
            let msg = match initial.pop_front() {
                Some(m) => Some(m),
                None => tokio::select! {
                    m = client_rx.wait() => m,
                    _ = stop.cancelled() => break,
                },
            };
            let Some(msg) = msg else {
                let _ = fwd_tx.send(Up::Close);
                break;
            };
            let action = match msg {
                ChannelMsg::Data { data } => {
                    if !record(&conn, &state, |r| r.input(&data)) {
                        break;
                    }
                    conn.flow.add(data.len());
                    Some(Up::Data(data))
                }
                ChannelMsg::Eof => Some(Up::Eof),
                ChannelMsg::Close => {
                    let _ = fwd_tx.send(Up::Close);
                    break;
                }
                ChannelMsg::RequestPty {
                    term, col_width, row_height, pix_width, pix_height, terminal_modes, ..
                } => {
                    lock(&state).pty = Some((term.clone(), col_width, row_height));
                    Some(Up::Pty { term, col_width, row_height, pix_width, pix_height, terminal_modes })
                }
                ChannelMsg::SetEnv { variable_name, variable_value, .. } => {
                    if allowed_env(&variable_name) && variable_value.len() <= 256 {
                        lock(&state).env.insert(variable_name.clone(), variable_value.clone());
                        Some(Up::Env(variable_name, variable_value))
                    } else {
                        None
                    }
                }
                ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                    if !record(&conn, &state, |r| r.resize(col_width, row_height)) {
                        break;
                    }
                    Some(Up::Window(col_width, row_height, pix_width, pix_height))
                }
                ChannelMsg::RequestShell { .. } => {
                    if !start_recording(&conn, &session, channel_no, &state, "shell", None).await {
                        break;
                    }
                    Some(Up::Shell)
                }
                ChannelMsg::Exec { command, .. } => {
                    let cmd = String::from_utf8_lossy(&command).into_owned();
                    if !start_recording(&conn, &session, channel_no, &state, "exec", Some(cmd)).await {
                        break;
                    }
                    Some(Up::Exec(command))
                }
                ChannelMsg::RequestSubsystem { name, .. } => {
                    if name == "sftp" {
                        if !start_recording(&conn, &session, channel_no, &state, "subsystem", Some("sftp".into())).await
                        {
                            break;
                        }
                        Some(Up::Subsystem(name))
                    } else {
                        conn.audit_refusal(
                            "ssh.subsystem",
                            &format!("subsystem {} refused", gatehouse_broker::audit::cap(&name, 60)),
                        )
                        .await;
                        None
                    }
                }
                ChannelMsg::AgentForward { .. } => {
                    conn.audit_refusal("ssh.agent_forwarding", "agent forwarding refused").await;
                    let _ = handle
                        .extended_data(client_id, 1, Bytes::from_static(b"gatehouse: agent forwarding is disabled\r\n"))
                        .await;
                    None
                }
                ChannelMsg::RequestX11 { .. } => {
                    conn.audit_refusal("ssh.x11_forwarding", "X11 forwarding refused").await;
                    None
                }
                ChannelMsg::Signal { signal } => Some(Up::Signal(signal)),
                _ => None,
            };
            if let Some(a) = action
                && fwd_tx.send(a).is_err()
            {
                break;
            }
        }
        drop(fwd_tx);
    };
    let forwarder = async {
        loop {
            let a = tokio::select! {
                a = fwd_rx.recv() => a,
                _ = stop.cancelled() => None,
            };
            let Some(a) = a else { break };
            let r = match a {
                Up::Data(data) => {
                    let n = data.len();
                    let r = up_tx.data_bytes(data).await;
                    conn.flow.sub(n);
                    r
                }
                Up::Eof => up_tx.eof().await,
                Up::Close => {
                    let _ = up_tx.close().await;
                    break;
                }
                Up::Pty { term, col_width, row_height, pix_width, pix_height, terminal_modes } => {
                    up_tx.request_pty(false, &term, col_width, row_height, pix_width, pix_height, &terminal_modes).await
                }
                Up::Env(k, v) => up_tx.set_env(false, k, v).await,
                Up::Window(c, r, pw, ph) => up_tx.window_change(c, r, pw, ph).await,
                Up::Shell => up_tx.request_shell(true).await,
                Up::Exec(cmd) => up_tx.exec(true, cmd).await,
                Up::Subsystem(name) => up_tx.request_subsystem(true, name).await,
                Up::Signal(sig) => up_tx.signal(sig).await,
            };
            if r.is_err() {
                break;
            }
        }
        // Whatever was queued and not sent no longer holds window.
        while let Ok(a) = fwd_rx.try_recv() {
            if let Up::Data(d) = a {
                conn.flow.sub(d.len());
            }
        }
    };
    let c2u = async {
        tokio::join!(reader, forwarder);
    };

    // Target → client.
    let u2c = async {
        let mut stopped = false;
        loop {
            let msg = tokio::select! {
                m = up_rx.wait() => m,
                _ = stop.cancelled() => { stopped = true; break }
            };
            let Some(msg) = msg else { break };
            match msg {
                ChannelMsg::Data { data } => {
                    if !record(&conn, &state, |r| r.output(&data)) {
                        stopped = true;
                        break;
                    }
                    if client_tx.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::ExtendedData { ext, data } => {
                    if !record(&conn, &state, |r| r.output(&data)) {
                        stopped = true;
                        break;
                    }
                    if client_tx.extended_data_bytes(ext, data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = client_tx.eof().await;
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    lock(&state).exit_status = Some(exit_status);
                    let _ = client_tx.exit_status(exit_status).await;
                }
                ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => {
                    lock(&state).exit_signal = Some(sig_name(&signal_name));
                    let _ =
                        handle.exit_signal_request(client_id, signal_name, core_dumped, error_message, lang_tag).await;
                }
                ChannelMsg::Success => {
                    lock(&state).pending_start = false;
                }
                ChannelMsg::Failure => {
                    let was_start = std::mem::replace(&mut lock(&state).pending_start, false);
                    if was_start {
                        let _ = client_tx
                            .extended_data_bytes(
                                1,
                                Bytes::from_static(b"gatehouse: the target refused the request\r\n"),
                            )
                            .await;
                        let _ = client_tx.exit_status(1).await;
                        break;
                    }
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        if stopped {
            let why = conn
                .with_state(|s| s.session.as_ref().and_then(|x| x.live.end_reason()).or(s.end_reason.clone()))
                .unwrap_or_else(|| "session ended".into());
            let _ =
                client_tx.extended_data_bytes(1, Bytes::from(format!("\r\ngatehouse: session ended: {why}\r\n"))).await;
        }
        let _ = client_tx.eof().await;
        let _ = client_tx.close().await;
    };

    tokio::join!(c2u, u2c);
    finish_recording(&conn, &state).await;
}

/// Apply `f` to the recorder; on a write error, end the whole session
/// (strict recording) and return false.
fn record(conn: &Conn, state: &Shared, f: impl FnOnce(&mut Recorder) -> std::io::Result<()>) -> bool {
    let mut st = lock(state);
    if st.failed {
        return false;
    }
    let Some(r) = st.recorder.as_mut() else { return true };
    match f(r) {
        Ok(()) => true,
        Err(e) => {
            st.failed = true;
            drop(st);
            tracing::error!(error = %e, "recording write failed; ending the session");
            recording_failed(conn, &e.to_string());
            false
        }
    }
}

/// Strict recording: end the session, and say so in the audit log.
fn recording_failed(conn: &Conn, why: &str) {
    let (actor, session, resource) = conn.with_state(|s| {
        let sess = s.session.as_ref();
        (
            sess.map(|x| x.subject.actor()),
            sess.map(|x| x.id.clone()),
            sess.map(|x| format!("{}@{}", x.login, x.host.name)).unwrap_or_default(),
        )
    });
    if let Some(actor) = actor {
        let mut rec = AuditRecord::new(actor, "session.recording", resource, Outcome::Error)
            .severity(Severity::Critical)
            .reason(format!("recording could not be written, session ended: {why}"))
            .client(conn.client_addr());
        if let Some(id) = session {
            rec = rec.session(id);
        }
        let broker = conn.broker.clone();
        tokio::spawn(async move {
            if let Err(e) = broker.audit(rec).await {
                tracing::error!(error = %e, "could not audit a recording failure");
            }
        });
    }
    conn.with_state(|s| {
        s.end_reason = Some("recording failed".into());
        if let Some(sess) = &s.session {
            sess.live.end("recording failed");
        }
    });
    conn.stop.cancel();
}

async fn start_recording(
    conn: &Conn,
    session: &OpenedSession,
    channel_no: u32,
    state: &Shared,
    kind: &str,
    command: Option<String>,
) -> bool {
    if lock(state).recorder.is_some() {
        return true; // one shell/exec/subsystem per channel; later requests go to the target as-is
    }
    let rec = match conn.broker.start_recording(&session.id, channel_no, kind, command.as_deref().unwrap_or("")).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the recording");
            recording_failed(conn, &e.to_string());
            return false;
        }
    };
    let (pty, env) = {
        let st = lock(state);
        (st.pty.clone(), st.env.clone())
    };
    let (w, h) = pty.as_ref().map(|(_, w, h)| (*w, *h)).unwrap_or((80, 24));
    let mut env = env;
    if let Some((term, _, _)) = &pty {
        env.insert("TERM".into(), term.clone());
    }
    let title = match &command {
        Some(c) => format!("{} → {}@{}: {}", session.subject.name, session.login, session.host.name, c),
        None => format!("{} → {}@{}", session.subject.name, session.login, session.host.name),
    };
    let header = Header {
        width: w,
        height: h,
        title,
        command: command.clone(),
        env,
        gatehouse: serde_json::json!({
            "session": session.id,
            "recording": rec.id,
            "channel": channel_no,
            "kind": kind,
            "subject": format!("{}:{}", session.subject.kind, session.subject.name),
            "host": session.host.name,
            "login": session.login,
            "pty": pty.is_some(),
        }),
    };
    // Interactive sessions are recorded in full; exec and sftp up to the cap.
    let cap = if kind == "shell" { None } else { Some(conn.cfg.recording_cap) };
    match Recorder::create(&rec.path, &header, cap) {
        Ok(r) => {
            let mut st = lock(state);
            st.recorder = Some(r);
            st.recording_id = Some(rec.id);
            st.pending_start = true;
            true
        }
        Err(e) => {
            tracing::error!(error = %e, path = %rec.path.display(), "cannot create the recording file");
            recording_failed(conn, &e.to_string());
            false
        }
    }
}

async fn finish_recording(conn: &Conn, state: &Shared) {
    let (recorder, id, exit_status, exit_signal) = {
        let mut st = lock(state);
        (st.recorder.take(), st.recording_id.take(), st.exit_status, st.exit_signal.clone())
    };
    conn.with_state(|s| {
        if exit_status.is_some() || exit_signal.is_some() {
            s.exit_status = exit_status;
            s.exit_signal = exit_signal.clone();
        }
    });
    let (Some(recorder), Some(id)) = (recorder, id) else { return };
    let exit = match (&exit_status, &exit_signal) {
        (_, Some(sig)) => format!("exit_signal={sig}"),
        (Some(code), None) => format!("exit_status={code}"),
        (None, None) => "without exit status".to_string(),
    };
    match recorder.finish(&exit) {
        Ok(summary) => {
            conn.with_state(|s| {
                s.bytes_in += summary.bytes_in;
                s.bytes_out += summary.bytes_out;
            });
            let end = RecordingEnd {
                bytes_in: summary.bytes_in,
                bytes_out: summary.bytes_out,
                sha256_in: summary.sha256_in,
                sha256_out: summary.sha256_out,
                truncated: summary.truncated,
                exit_status,
                exit_signal,
                file_sha256: summary.file_sha256,
            };
            if let Err(e) = conn.broker.finish_recording(&id, &end).await {
                tracing::error!(error = %e, recording = %id, "cannot store recording totals");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, recording = %id, "cannot finish the recording");
        }
    }
}
