//! `gatehouse`: the server (`gatehouse serve`) and the admin CLI, which is a
//! client of the server's HTTP API.
#![forbid(unsafe_code)]

mod api;
mod api_agents;
mod api_jit;
mod api_pki;
mod cli;
mod cli_agents;
mod cli_jit;
mod cli_pki;
mod client;
mod fmt;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "gatehouse", version, about = "SSH bastion and just-in-time session broker for humans and AI agents")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every client command shares.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The Gatehouse HTTP API.
    #[arg(long, global = true, env = "GATEHOUSE_URL", default_value = "http://127.0.0.1:8420")]
    url: String,
    /// Data directory (server state; the CLI reads admin.token from it).
    #[arg(long, global = true, env = "GATEHOUSE_DATA_DIR", default_value = "./gatehouse-data")]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the bastion (SSH) and the control plane (HTTP API, MCP).
    Serve(serve::ServeArgs),
    /// Certificate authority public keys.
    Ca {
        #[command(subcommand)]
        cmd: cli::CaCmd,
    },
    /// Human users and their SSH keys.
    User {
        #[command(subcommand)]
        cmd: cli::UserCmd,
    },
    /// Target hosts.
    Host {
        #[command(subcommand)]
        cmd: cli::HostCmd,
    },
    /// Admin-made grants.
    Grant {
        #[command(subcommand)]
        cmd: cli::GrantCmd,
    },
    /// Live and past sessions.
    Sessions {
        #[command(subcommand)]
        cmd: cli::SessionsCmd,
    },
    /// Session recordings (asciicast v2).
    Recordings {
        #[command(subcommand)]
        cmd: cli::RecordingsCmd,
    },
    /// Query the audit log.
    Audit(cli::AuditArgs),
    /// AI agents: identities with scopes and groups.
    Agent {
        #[command(subcommand)]
        cmd: cli_agents::AgentCmd,
    },
    /// Agents' MCP bearer tokens.
    Token {
        #[command(subcommand)]
        cmd: cli_agents::TokenCmd,
    },
    /// Decide what agents (and people) asked for: actions and access requests.
    Approvals {
        #[command(subcommand)]
        cmd: cli_agents::ApprovalsCmd,
    },
    /// The MCP bridge and client configuration.
    Mcp {
        #[command(subcommand)]
        cmd: cli_agents::McpCmd,
    },
    /// X.509 certificates for TLS: allowed domains, signing from CSRs, revocation.
    Pki {
        #[command(subcommand)]
        cmd: cli_pki::PkiCmd,
    },
    /// Liveness probes of registered targets.
    Probe {
        #[command(subcommand)]
        cmd: cli_pki::ProbeCmd,
    },
    /// Access policies bound to host groups.
    Policy {
        #[command(subcommand)]
        cmd: cli_jit::PolicyCmd,
    },
    /// Just-in-time access requests and approvals.
    Access {
        #[command(subcommand)]
        cmd: cli_jit::AccessCmd,
    },
    /// Outbound webhooks (Slack, Teams, your own receiver).
    Webhook {
        #[command(subcommand)]
        cmd: cli_jit::WebhookCmd,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatehouse: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args, &cli.global).await,
            Command::Ca { cmd } => cli::ca(&cli.global, cmd).await,
            Command::User { cmd } => cli::user(&cli.global, cmd).await,
            Command::Host { cmd } => cli::host(&cli.global, cmd).await,
            Command::Grant { cmd } => cli::grant(&cli.global, cmd).await,
            Command::Sessions { cmd } => cli::sessions(&cli.global, cmd).await,
            Command::Recordings { cmd } => cli::recordings(&cli.global, cmd).await,
            Command::Audit(args) => cli::audit(&cli.global, args).await,
            Command::Agent { cmd } => cli_agents::agent(&cli.global, cmd).await,
            Command::Token { cmd } => cli_agents::token(&cli.global, cmd).await,
            Command::Mcp { cmd } => cli_agents::mcp(&cli.global, cmd).await,
            Command::Approvals { cmd } => cli_agents::approvals(&cli.global, cmd).await,
            Command::Pki { cmd } => cli_pki::pki(&cli.global, cmd).await,
            Command::Probe { cmd } => cli_pki::probe(&cli.global, cmd).await,
            Command::Policy { cmd } => cli_jit::policy(&cli.global, cmd).await,
            Command::Access { cmd } => cli_jit::access(&cli.global, cmd).await,
            Command::Webhook { cmd } => cli_jit::webhook(&cli.global, cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, never a backtrace.
            let msg = format!("{e:#}");
            eprintln!("gatehouse: {}", msg.lines().next().unwrap_or("error"));
            std::process::ExitCode::from(1)
        }
    }
}
