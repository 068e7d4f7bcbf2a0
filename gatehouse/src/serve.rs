//! `gatehouse serve`: open the broker, bind the SSH and HTTP listeners, run
//! until SIGTERM/SIGINT, then drain sessions and flush recordings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gatehouse_bastion::BastionConfig;
use gatehouse_broker::keys::MasterKeySource;
use gatehouse_broker::{Broker, BrokerConfig};
use tokio_util::sync::CancellationToken;

use crate::Global;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where the bastion listens for SSH.
    #[arg(long, env = "GATEHOUSE_SSH_LISTEN", default_value = "0.0.0.0:2222")]
    ssh_listen: SocketAddr,
    /// Where the admin API and MCP endpoint listen.
    #[arg(long, env = "GATEHOUSE_HTTP_LISTEN", default_value = "127.0.0.1:8420")]
    http_listen: SocketAddr,
    /// PostgreSQL URL for multi-node deployments (default: SQLite in the data dir).
    #[arg(long, env = "GATEHOUSE_DATABASE_URL")]
    database_url: Option<String>,
    /// File holding the master key (64 hex digits) that seals the CA keys.
    #[arg(long, env = "GATEHOUSE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Per-direction cap on recorded exec/sftp data, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    recording_cap: u64,
    /// Names users reach the bastion by; its host certificate is valid for them.
    #[arg(long = "bastion-name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
    bastion_names: Vec<String>,
    /// Browser origins allowed to call /mcp (default: none; requests with an Origin header get 403).
    #[arg(long = "mcp-allowed-origin")]
    mcp_allowed_origins: Vec<String>,
    /// Host header values accepted on /mcp (DNS-rebinding protection); default loopback names.
    #[arg(long = "mcp-allowed-host", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    mcp_allowed_hosts: Vec<String>,
    /// A reverse proxy in front of the HTTP listener (CIDR; repeatable, or
    /// comma-separated in the environment). Only requests arriving from one
    /// have their `X-Forwarded-For` believed; the client is then its right-most
    /// entry that is not itself a trusted proxy. Default: none.
    #[arg(long = "trusted-proxy", env = "GATEHOUSE_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Longest SSH session an agent may ask for.
    #[arg(long, default_value = "1h")]
    mcp_max_session_ttl: String,
}

pub async fn run(args: ServeArgs, global: &Global) -> anyhow::Result<()> {
    init_tracing();
    let master_key = match (&args.master_key_file, std::env::var("GATEHOUSE_MASTER_KEY")) {
        (Some(p), _) => MasterKeySource::File(p.clone()),
        (None, Ok(v)) if !v.is_empty() => MasterKeySource::Value(zeroize::Zeroizing::new(v)),
        _ => MasterKeySource::DataDir,
    };
    let mut config = BrokerConfig::new(&global.data_dir);
    config.database_url = args.database_url.clone();
    config.master_key = master_key;
    config.recording_cap_bytes = args.recording_cap;
    config.bastion_names = args.bastion_names.clone();
    let (broker, first) = Broker::open(config).await.context("cannot start")?;
    if first.generated_master_key {
        tracing::warn!(
            path = %global.data_dir.join("master.key").display(),
            "generated a master key in the data dir; in production keep it elsewhere (--master-key-file or GATEHOUSE_MASTER_KEY)"
        );
    }
    if let Some(token) = &first.admin_token {
        // Printed once, on stdout, never through the logger.
        println!("Admin token (shown once; also saved to {}):", global.data_dir.join("admin.token").display());
        println!("{}", token.expose());
    }
    let ssh = tokio::net::TcpListener::bind(args.ssh_listen)
        .await
        .with_context(|| format!("cannot listen for SSH on {}", args.ssh_listen))?;
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.http_listen))?;
    tracing::info!(ssh = %ssh.local_addr()?, http = %http.local_addr()?, "gatehouse is ready");
    println!("Gatehouse listening: ssh {} · http {}", ssh.local_addr()?, http.local_addr()?);

    let shutdown = CancellationToken::new();
    let bastion = tokio::spawn(gatehouse_bastion::run(
        ssh,
        broker.clone(),
        BastionConfig { recording_cap: args.recording_cap, ..Default::default() },
        shutdown.clone(),
    ));
    tokio::spawn(gatehouse_bastion::probe::run_scheduler(broker.clone(), shutdown.clone()));
    let exec = gatehouse_bastion::exec::ExecSessions::new(args.recording_cap);
    let mcp_cfg = gatehouse_mcp::McpConfig {
        allowed_origins: args.mcp_allowed_origins.clone(),
        allowed_hosts: args.mcp_allowed_hosts.clone(),
        max_session_ttl: gatehouse_broker::parse_duration(&args.mcp_max_session_ttl)
            .context("--mcp-max-session-ttl")?,
        ..Default::default()
    };
    let app = crate::api::router(broker.clone()).merge(gatehouse_mcp::router(gatehouse_mcp::McpState::new(
        broker.clone(),
        exec,
        mcp_cfg,
    )));
    if !args.trusted_proxies.is_empty() {
        tracing::info!(proxies = ?args.trusted_proxies, "X-Forwarded-For is believed from these trusted proxies only");
    }
    let app = app.layer(axum::middleware::from_fn_with_state(
        gatehouse_mcp::client_ip::TrustedProxies::new(args.trusted_proxies.clone()),
        gatehouse_mcp::client_ip::resolve,
    ));
    let http_shutdown = shutdown.clone();
    let http_server = tokio::spawn(async move {
        axum::serve(http, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });

    wait_for_signal().await;
    tracing::info!("shutting down: draining sessions");
    shutdown.cancel();
    match bastion.await {
        Ok(Err(e)) => tracing::error!(error = %e, "bastion stopped with an error"),
        Err(e) => tracing::error!(error = %e, "bastion task failed"),
        Ok(Ok(())) => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), http_server).await;
    broker.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("GATEHOUSE_LOG").unwrap_or_else(|_| EnvFilter::new("info,russh=warn,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
