//! The bastion's SSH server: accepts stock OpenSSH clients, authenticates
//! them by registered public key, asks the broker whether `LOGIN@HOST` is
//! allowed, and hands each session channel to the proxy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_broker::access::{RequestOffer, SshGate};
use gatehouse_broker::grants::SshAccess;
use gatehouse_broker::sessions::{NewSession, OpenedSession, SessionEnd, Subject};
use gatehouse_broker::users::User;
use gatehouse_broker::{Actor, AuditRecord, Broker, BrokerError, Outcome, Severity};
use gatehouse_ca::CertPurpose;
use russh::keys::PrivateKey;
use russh::server::{self, Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, SshId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::BastionError;
use crate::target::{self, Target};
use crate::upstream::{self, HostTrust, Upstream};

/// Bastion settings.
#[derive(Debug, Clone)]
pub struct BastionConfig {
    /// Per-direction cap on recorded exec/sftp data.
    pub recording_cap: u64,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// How long shutdown waits for sessions to drain.
    pub drain_timeout: Duration,
}

impl Default for BastionConfig {
    fn default() -> Self {
        Self { recording_cap: 16 * 1024 * 1024, max_connections: 4096, drain_timeout: Duration::from_secs(10) }
    }
}

fn server_config(key: PrivateKey, certificates: Vec<russh::keys::Certificate>) -> Arc<server::Config> {
    Arc::new(server::Config {
        server_id: SshId::Standard("SSH-2.0-Gatehouse".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(250),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        certificates,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        window_size: CLIENT_WINDOW,
        maximum_packet_size: 65535,
        max_auth_attempts: 8,
        ..Default::default()
    })
}

/// Serve SSH on `listener` until `shutdown` is cancelled, then end every
/// session (recordings flushed, rows closed) within the drain timeout.
pub async fn run(
    listener: TcpListener,
    broker: Broker,
    cfg: BastionConfig,
    shutdown: CancellationToken,
) -> Result<(), BastionError> {
    let host_cert = broker.bastion_host_certificate()?;
    let config = server_config(broker.keys().bastion_key.clone(), host_cert.into_iter().collect());
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let cfg = Arc::new(cfg);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            drop(socket);
            continue;
        };
        let conn = Arc::new(Conn::new(broker.clone(), peer, cfg.clone()));
        let config = config.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            serve_connection(conn, config, socket, shutdown).await;
            drop(permit);
        });
    }
    tracker.close();
    broker.live().end_where(|s| s.subject_kind == "user", "gatehouse is shutting down");
    if tokio::time::timeout(cfg.drain_timeout, tracker.wait()).await.is_err() {
        tracing::warn!("some SSH sessions did not drain in time");
    }
    Ok(())
}

/// Per-connection state shared by the russh handler, the channel tasks and
/// the connection driver.
pub(crate) struct Conn {
    pub broker: Broker,
    pub peer: SocketAddr,
    pub cfg: Arc<BastionConfig>,
    pub state: Mutex<ConnState>,
    pub upstream: OnceCell<Result<Arc<Upstream>, String>>,
    /// Cancelled when the session must end (kill, revoke, expiry, shutdown).
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
    pub flow: Flow,
}

/// Client window size: how much a client may send ahead on a channel.
pub(crate) const CLIENT_WINDOW: u32 = 2 * 1024 * 1024;
/// Above this many queued-but-unforwarded bytes, stop granting window.
const FLOW_HIGH_WATER: u64 = 2 * 1024 * 1024;

/// Bytes received from the client and not yet accepted by the target.
///
/// russh replenishes a channel's receive window as soon as data arrives and
/// blocks the whole connection's loop when a channel's queue is full, which
/// deadlocks a proxy whose target is slow. So the proxy always drains the
/// client channel, counts what it holds here, and the handler's
/// `adjust_window` shrinks the window it grants while this is high: the
/// client then trickles until the target catches up.
#[derive(Default)]
pub(crate) struct Flow {
    queued: std::sync::atomic::AtomicU64,
}

impl Flow {
    pub fn add(&self, n: usize) {
        self.queued.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn sub(&self, n: usize) {
        self.queued.fetch_sub(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    fn window(&self) -> u32 {
        if self.queued.load(std::sync::atomic::Ordering::Relaxed) > FLOW_HIGH_WATER { 2 } else { CLIENT_WINDOW }
    }
}

#[derive(Default)]
pub(crate) struct ConnState {
    pub user: Option<User>,
    pub target: Option<Target>,
    /// What a denied connection's channels print.
    pub denial: Option<String>,
    pub access: Option<SshAccess>,
    pub session: Option<OpenedSession>,
    pub unknown_keys: Vec<String>,
    pub next_channel: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    /// Why the session ended, if the proxy knows better than "disconnected".
    pub end_reason: Option<String>,
    /// No grant, but the user may ask for one in the terminal: the offer and
    /// the denial non-interactive channels print.
    pub offer: Option<(RequestOffer, String)>,
}

/// What a channel on this connection may do.
pub(crate) enum ChannelMode {
    Proxy(Box<OpenedSession>),
    Deny(String),
    Commands(User),
    /// Interactive channels may file a request and wait for it.
    Offer {
        user: User,
        offer: RequestOffer,
        denial: String,
    },
}

impl Conn {
    fn new(broker: Broker, peer: SocketAddr, cfg: Arc<BastionConfig>) -> Self {
        Self {
            broker,
            peer,
            cfg,
            state: Mutex::new(ConnState::default()),
            upstream: OnceCell::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            flow: Flow::default(),
        }
    }

    pub fn client_addr(&self) -> String {
        self.peer.to_string()
    }

    pub fn with_state<R>(&self, f: impl FnOnce(&mut ConnState) -> R) -> R {
        match self.state.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn mode(&self) -> ChannelMode {
        self.with_state(|s| {
            if let Some(d) = &s.denial {
                return ChannelMode::Deny(d.clone());
            }
            match (&s.target, &s.session, &s.user, &s.offer) {
                (Some(Target::Commands), _, Some(u), _) => ChannelMode::Commands(u.clone()),
                (_, Some(sess), _, _) => ChannelMode::Proxy(Box::new(sess.clone())),
                (_, None, Some(u), Some((offer, denial))) => {
                    ChannelMode::Offer { user: u.clone(), offer: offer.clone(), denial: denial.clone() }
                }
                _ => ChannelMode::Deny("access denied".into()),
            }
        })
    }

    /// The upstream connection, started at authentication; waits for it.
    pub async fn upstream(&self) -> Result<Arc<Upstream>, String> {
        self.upstream.get_or_init(|| self.connect_upstream()).await.clone()
    }

    async fn connect_upstream(&self) -> Result<Arc<Upstream>, String> {
        let Some((sess, access)) = self.with_state(|s| s.session.clone().zip(s.access.clone())) else {
            return Err("access denied".into());
        };
        let host_ca = Some(self.broker.keys().host_ca.public_key().clone());
        let trust = HostTrust::for_host(&access.host, host_ca).map_err(|e| e.to_string())?;
        let key = gatehouse_ca::generate_ed25519();
        let certs = self
            .broker
            .sign_session_certificates(&sess, key.public_key(), CertPurpose::Interactive)
            .map_err(|e| e.to_string())?;
        match upstream::connect(&access.host.address, trust, &access.login, key, certs).await {
            Ok(u) => Ok(Arc::new(u)),
            Err(e) => {
                let (action, severity, reason) = match &e {
                    BastionError::HostKey(_) => ("ssh.upstream_host_key", Severity::Critical, "host key mismatch"),
                    _ => ("ssh.upstream", Severity::Warning, "target unreachable"),
                };
                let _ = self
                    .broker
                    .audit(
                        AuditRecord::new(
                            sess.subject.actor(),
                            action,
                            format!("{}@{}", sess.login, sess.host.name),
                            Outcome::Deny,
                        )
                        .severity(severity)
                        .session(&sess.id)
                        .client(self.client_addr())
                        .reason(e.to_string()),
                    )
                    .await;
                self.with_state(|s| s.end_reason = Some(reason.to_string()));
                Err(format!("refusing to connect: {e}"))
            }
        }
    }

    /// Audit a refused request on this connection.
    pub async fn audit_refusal(&self, action: &str, what: &str) {
        self.audit_refusal_with(action, what, None).await;
    }

    /// Audit a refused request on this connection, with details.
    pub async fn audit_refusal_with(&self, action: &str, what: &str, details: Option<serde_json::Value>) {
        let (actor, session, resource) = self.with_state(|s| {
            let actor = s.user.as_ref().map(|u| Actor::user(&u.name)).unwrap_or_else(|| Actor::unknown("ssh client"));
            let resource = match &s.target {
                Some(Target::Host { login, host }) => format!("{login}@{host}"),
                _ => String::new(),
            };
            (actor, s.session.as_ref().map(|x| x.id.clone()), resource)
        });
        let mut rec = AuditRecord::new(actor, action, resource, Outcome::Deny)
            .reason(what.to_string())
            .client(self.client_addr());
        if let Some(id) = session {
            rec = rec.session(id);
        }
        if let Some(d) = details {
            rec = rec.details(d);
        }
        self.broker.audit_refusal(rec).await;
    }
}

async fn serve_connection(
    conn: Arc<Conn>,
    config: Arc<server::Config>,
    socket: TcpStream,
    shutdown: CancellationToken,
) {
    let handler = SshHandler { conn: conn.clone() };
    let running = match tokio::time::timeout(Duration::from_secs(30), server::run_stream(config, socket, handler)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "ssh handshake failed");
            return;
        }
        Err(_) => return,
    };
    let handle = running.handle();
    let mut running = Box::pin(running);
    let reason = tokio::select! {
        r = &mut running => {
            if let Err(e) = r {
                tracing::debug!(peer = %conn.peer, error = %e, "ssh connection ended with an error");
            }
            None
        }
        _ = conn.stop.cancelled() => Some(()),
        _ = shutdown.cancelled() => {
            if let Some(s) = conn.with_state(|s| s.session.clone()) {
                s.live.end("gatehouse is shutting down");
            }
            conn.stop.cancel();
            Some(())
        }
    };
    if reason.is_some() {
        // Channel tasks tell the user why and close; then drop the connection.
        conn.tasks.close();
        let _ = tokio::time::timeout(Duration::from_millis(500), conn.tasks.wait()).await;
        // The client leaves by itself once its channels are closed; the
        // disconnect (which would overtake queued channel data) is only for
        // clients that linger.
        if tokio::time::timeout(Duration::from_millis(500), &mut running).await.is_err() {
            let why = end_reason(&conn).unwrap_or_else(|| "session ended".into());
            let _ = handle.disconnect(russh::Disconnect::ByApplication, format!("gatehouse: {why}"), "en".into()).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
        }
    }
    conn.stop.cancel();
    conn.tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), conn.tasks.wait()).await.is_err() {
        tracing::warn!(peer = %conn.peer, "channel tasks did not finish");
    }
    if let Some(Ok(up)) = conn.upstream.get() {
        let _ = up.handle.disconnect(russh::Disconnect::ByApplication, "session over", "en").await;
    }
    finish_connection(&conn).await;
}

fn end_reason(conn: &Conn) -> Option<String> {
    let (live, own) = conn.with_state(|s| (s.session.as_ref().and_then(|x| x.live.end_reason()), s.end_reason.clone()));
    live.or(own)
}

async fn finish_connection(conn: &Conn) {
    let (session, user, unknown) =
        conn.with_state(|s| (s.session.clone(), s.user.clone(), std::mem::take(&mut s.unknown_keys)));
    if user.is_none() && !unknown.is_empty() {
        let _ = conn
            .broker
            .audit(
                AuditRecord::new(Actor::unknown("ssh client"), "ssh.auth", "bastion", Outcome::Deny)
                    .reason("unknown key")
                    .client(conn.client_addr())
                    .details(serde_json::json!({"offered_keys": unknown})),
            )
            .await;
    }
    let Some(session) = session else { return };
    let end = conn.with_state(|s| SessionEnd {
        reason: String::new(),
        exit_status: s.exit_status,
        exit_signal: s.exit_signal.clone(),
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
    });
    let reason = end_reason(conn).unwrap_or_else(|| "client disconnected".into());
    if let Err(e) = conn.broker.close_session(&session.id, SessionEnd { reason, ..end }).await {
        tracing::error!(session = %session.id, error = %e, "could not close the session row");
    }
}

/// The russh handler: a thin adapter. Requests are answered here (so the
/// answers stay in order with the client's pipelined requests); the channel
/// task in `proxy` does the forwarding and recording.
struct SshHandler {
    conn: Arc<Conn>,
}

/// Environment variables passed to targets.
pub(crate) fn allowed_env(name: &str) -> bool {
    name == "LANG" || name == "TERM" || name.starts_with("LC_")
}

impl SshHandler {
    async fn known_user(&self, key: &russh::keys::PublicKey) -> Option<User> {
        match self.conn.broker.user_by_key(key).await {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "user lookup failed");
                None
            }
        }
    }

    async fn admit(&self, user: User, ssh_user: &str) {
        let target = target::parse(ssh_user);
        let conn = &self.conn;
        conn.with_state(|s| {
            s.user = Some(user.clone());
            s.target = Some(target.clone());
        });
        let (login, host) = match target {
            Target::Commands => return,
            Target::Invalid(msg) => {
                let why = format!("malformed target in SSH user name: {}", target::problem(ssh_user));
                // Debug-escaped so control characters cannot forge log lines.
                let given = gatehouse_broker::audit::cap(&format!("{ssh_user:?}"), 220);
                conn.audit_refusal_with("ssh.connect", &why, Some(serde_json::json!({ "ssh_user": given }))).await;
                conn.with_state(|s| s.denial = Some(msg));
                return;
            }
            Target::Host { login, host } => (login, host),
        };
        let access = match conn.broker.gate_ssh(&user, &login, &host, &conn.client_addr()).await {
            Ok(SshGate::Allowed(a)) => *a,
            Ok(SshGate::Requestable { denial, offer }) => {
                conn.with_state(|s| s.offer = Some((offer, denial)));
                return;
            }
            Ok(SshGate::Denied(msg)) => {
                conn.with_state(|s| s.denial = Some(msg));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "authorization failed");
                conn.with_state(|s| {
                    s.denial =
                        Some("access denied: gatehouse cannot decide right now (storage unavailable); try again".into())
                });
                return;
            }
        };
        if let Err(msg) = start_session(&self.conn, &user, access).await {
            conn.with_state(|s| s.denial = Some(msg));
        }
    }
}

/// Open the session row for an allowed connection, remember it on the
/// connection, end the connection when the broker ends the session, and
/// start the upstream handshake. Err is what the user is told.
pub(crate) async fn start_session(conn: &Arc<Conn>, user: &User, access: SshAccess) -> Result<OpenedSession, String> {
    let opened = conn
        .broker
        .open_session(NewSession {
            kind: "ssh",
            subject: Subject { kind: "user", id: user.id.clone(), name: user.name.clone() },
            host: access.host.clone(),
            login: access.login.clone(),
            grant_id: Some(access.grant.id.clone()),
            client_addr: conn.client_addr(),
            mcp_session_id: None,
            expires_at: Some(access.grant.expires_at),
        })
        .await;
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "could not open the session");
            return Err(match e {
                BrokerError::Denied(why) => format!("access denied: {why}"),
                _ => "access denied: gatehouse could not record the session start".into(),
            });
        }
    };
    conn.with_state(|s| {
        s.session = Some(opened.clone());
        s.access = Some(access);
        s.offer = None;
    });
    // End this connection when the broker ends the session.
    let c = conn.clone();
    let live = opened.live.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = live.ended() => c.stop.cancel(),
            _ = c.stop.cancelled() => {}
        }
    });
    // Start the upstream handshake now, while the client finishes its own.
    let c = conn.clone();
    tokio::spawn(async move {
        let _ = c.upstream().await;
    });
    Ok(opened)
}

impl server::Handler for SshHandler {
    type Error = russh::Error;

    /// Said before authentication, only when nothing could be authorized:
    /// the user learns why instead of a bare "Permission denied".
    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(match self.conn.broker.storage_check().await {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(error = %e, "database unreachable; refusing new sessions");
                Some(
                    "gatehouse: the broker's database is unreachable, so no session can be authorized or \
                     audited right now; try again shortly\r\n"
                        .into(),
                )
            }
        })
    }

    fn adjust_window(&mut self, _channel: ChannelId, _current: u32) -> u32 {
        self.conn.flow.window()
    }

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(&mut self, _user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        if self.known_user(offer.public_key).await.is_some() {
            Ok(Auth::Accept)
        } else {
            let fp = gatehouse_ca::fingerprint(offer.public_key);
            self.conn.with_state(|s| {
                if s.unknown_keys.len() < 16 && !s.unknown_keys.contains(&fp) {
                    s.unknown_keys.push(fp);
                }
            });
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.known_user(key.public_key).await {
            Some(u) => {
                self.admit(u, user).await;
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let handle = session.handle();
        let conn = self.conn.clone();
        self.conn.tasks.spawn(crate::proxy::run_channel(conn, channel, handle));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _oa: &str,
        _op: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::Other { code: 1, reason: "port forwarding is disabled by Gatehouse".into() })
            .await;
        self.conn
            .audit_refusal(
                "ssh.port_forwarding",
                &format!("local forwarding to {}:{port} refused", gatehouse_broker::audit::cap(host, 100)),
            )
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _c: Channel<Msg>,
        path: &str,
        reply: server::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::Other { code: 1, reason: "socket forwarding is disabled by Gatehouse".into() })
            .await;
        self.conn
            .audit_refusal(
                "ssh.port_forwarding",
                &format!("unix socket forwarding to {} refused", gatehouse_broker::audit::cap(path, 100)),
            )
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _c: Channel<Msg>,
        _a: &str,
        _p: u32,
        reply: server::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::Other { code: 1, reason: "X11 forwarding is disabled by Gatehouse".into() })
            .await;
        self.conn.audit_refusal("ssh.x11_forwarding", "X11 channel refused").await;
        Ok(())
    }

    async fn tcpip_forward(&mut self, address: &str, port: &mut u32, _s: &mut Session) -> Result<bool, Self::Error> {
        self.conn
            .audit_refusal(
                "ssh.port_forwarding",
                &format!("remote forwarding of {}:{port} refused", gatehouse_broker::audit::cap(address, 100)),
            )
            .await;
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, path: &str, _s: &mut Session) -> Result<bool, Self::Error> {
        self.conn
            .audit_refusal(
                "ssh.port_forwarding",
                &format!("remote socket forwarding of {} refused", gatehouse_broker::audit::cap(path, 100)),
            )
            .await;
        Ok(false)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _c: u32,
        _r: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if allowed_env(name) { session.channel_success(channel) } else { session.channel_failure(channel) }
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" { session.channel_success(channel) } else { session.channel_failure(channel) }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _c: u32,
        _r: u32,
        _pw: u32,
        _ph: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _s: bool,
        _p: &str,
        _c: &str,
        _n: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn agent_request(&mut self, _channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        Ok(false)
    }
}
