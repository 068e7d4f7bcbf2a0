//! The bastion's command interface: `ssh -p 2222 gatehouse@bastion COMMAND`.
//! It speaks for the authenticated user only, with the key they already use.
//! The command line is split like a shell would (quotes, escapes) and parsed
//! with clap, so mistakes get clap's clear messages.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use gatehouse_broker::access::{AccessRequest, NewAccessRequest, Requester, fmt_time};
use gatehouse_broker::policy::{Approver, fmt_duration};
use gatehouse_broker::users::User;
use gatehouse_broker::{Actor, BrokerError, parse_duration};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg};

use crate::server::Conn;

#[derive(Parser, Debug)]
#[command(
    name = "ssh gatehouse@bastion",
    about = "Gatehouse bastion commands, run as the user whose key you connected with.",
    disable_version_flag = true,
    color = clap::ColorChoice::Never,
    help_template = "{about}\n\n{usage-heading} {usage}\n\n{all-args}"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Who you are, your live grants and your requests.
    Whoami,
    /// Ask for access to a host (prints the request id).
    Request {
        /// The host, or LOGIN@HOST.
        host: String,
        /// The login on the host.
        #[arg(long, short)]
        login: Option<String>,
        /// How long, e.g. 30m or 2h (default 1h, capped by policy).
        #[arg(long)]
        ttl: Option<String>,
        /// Why you need it (some policies require one).
        #[arg(long, short, default_value = "", hide_default_value = true)]
        reason: String,
        /// Wait for the decision, printing where the request stands.
        #[arg(long)]
        wait: bool,
    },
    /// Your requests.
    Requests,
    /// Where a request stands.
    Status { id: String },
    /// Withdraw your pending request.
    Cancel { id: String },
    /// Pending requests you may approve or deny.
    Approvals,
    /// Approve a request.
    Approve {
        id: String,
        #[arg(long, short, default_value = "", hide_default_value = true)]
        reason: String,
    },
    /// Deny a request (a reason is required).
    Deny {
        id: String,
        #[arg(long, short)]
        reason: String,
    },
}

/// Run one command channel: read the exec request (or a shell), answer, exit.
pub(crate) async fn run(conn: Arc<Conn>, user: User, mut channel: Channel<Msg>, _handle: Handle) {
    let mut command = None;
    while let Some(m) = channel.wait().await {
        match m {
            ChannelMsg::Exec { command: c, .. } => {
                command = Some(String::from_utf8_lossy(&c).into_owned());
                break;
            }
            ChannelMsg::RequestShell { .. } => {
                command = Some("help".into());
                break;
            }
            ChannelMsg::Eof | ChannelMsg::Close => return,
            _ => {}
        }
    }
    let Some(command) = command else { return };
    let code = execute(&conn, &user, &command, &mut channel).await;
    let _ = channel.exit_status(code).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

async fn out(channel: &Channel<Msg>, text: &str) {
    if !text.is_empty() {
        let _ = channel.data_bytes(Bytes::from(text.replace('\n', "\r\n"))).await;
    }
}

async fn err(channel: &Channel<Msg>, text: &str) {
    if !text.is_empty() {
        let _ = channel.extended_data_bytes(1, Bytes::from(text.replace('\n', "\r\n"))).await;
    }
}

/// A broker error as the user sees it, with an exit status.
fn broker_error(e: &BrokerError) -> (String, u32) {
    match e {
        BrokerError::Denied(m) => (format!("gatehouse: {m}\n"), 1),
        BrokerError::Conflict(_) | BrokerError::NotFound(_) => (format!("gatehouse: {e}\n"), 1),
        BrokerError::Invalid(m) => (format!("gatehouse: {m}\n"), 2),
        other => {
            tracing::error!(error = %other, "command failed");
            ("gatehouse: cannot do that right now (storage unavailable); try again\n".into(), 1)
        }
    }
}

/// What a command line asks for, or the text to answer with: help (stdout,
/// status 0) or a mistake (stderr, status 2).
enum Parsed {
    Run(Cli),
    Help(String),
    Mistake(String),
}

/// Split the command line like a shell (quotes, escapes) and parse it.
fn parse(command: &str) -> Parsed {
    let Some(words) = shlex::split(command) else {
        return Parsed::Mistake("gatehouse: unbalanced quotes in the command\n".into());
    };
    let words = if words.is_empty() { vec!["help".to_string()] } else { words };
    match Cli::try_parse_from(std::iter::once("ssh gatehouse@BASTION".to_string()).chain(words)) {
        Ok(c) => Parsed::Run(c),
        Err(e) => {
            let text = e.render().to_string();
            match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Parsed::Help(text),
                _ => Parsed::Mistake(text),
            }
        }
    }
}

async fn execute(conn: &Conn, user: &User, command: &str, channel: &mut Channel<Msg>) -> u32 {
    let cli = match parse(command) {
        Parsed::Run(c) => c,
        Parsed::Help(text) => {
            out(channel, &text).await;
            return 0;
        }
        Parsed::Mistake(text) => {
            err(channel, &text).await;
            return 2;
        }
    };
    let approver = Approver::User { name: user.name.clone(), role: user.role };
    match cli.cmd {
        Cmd::Whoami => match whoami(conn, user).await {
            Ok(text) => {
                out(channel, &text).await;
                0
            }
            Err(e) => report(channel, &e).await,
        },
        Cmd::Request { host, login, ttl, reason, wait } => {
            let (login, host) = match (login, host.split_once('@')) {
                (Some(l), None) => (l, host.clone()),
                (None, Some((l, h))) => (l.to_string(), h.to_string()),
                (Some(_), Some(_)) => {
                    err(channel, "gatehouse: give the login either as LOGIN@HOST or with --login, not both\n").await;
                    return 2;
                }
                (None, None) => {
                    err(channel, "gatehouse: which login? request HOST --login LOGIN (or LOGIN@HOST)\n").await;
                    return 2;
                }
            };
            let ttl = match ttl.as_deref().map(parse_duration).transpose() {
                Ok(t) => t,
                Err(e) => return report(channel, &e).await,
            };
            let filed = conn
                .broker
                .request_access(
                    &Requester::User(user.clone()),
                    &Actor::user(&user.name),
                    NewAccessRequest {
                        host,
                        login,
                        ttl,
                        reason,
                        client_addr: conn.client_addr(),
                        ..Default::default()
                    },
                )
                .await;
            let req = match filed {
                Ok(r) => r,
                Err(e) => return report(channel, &e).await,
            };
            out(channel, &format!("{}\n", req.id)).await;
            out(channel, &format!("{}\n", req.status_line())).await;
            if req.status == "pending" && wait {
                return wait_for(conn, user, req, channel).await;
            }
            if req.status == "approved" { 0 } else { u32::from(req.status != "pending") }
        }
        Cmd::Requests => {
            match conn.broker.list_access_requests(None, Some(("user", &user.id)), 50).await {
                Ok(list) if list.is_empty() => out(channel, "no requests\n").await,
                Ok(list) => {
                    for r in &list {
                        out(channel, &format!("{}  {}\n", fmt_time(r.created_at), r.status_line())).await;
                    }
                }
                Err(e) => return report(channel, &e).await,
            }
            0
        }
        Cmd::Status { id } => match mine_or_mine_to_decide(conn, user, &approver, &id).await {
            Ok(r) => {
                out(channel, &format!("{}\n", r.status_line())).await;
                0
            }
            Err(e) => report(channel, &e).await,
        },
        Cmd::Cancel { id } => {
            match conn.broker.cancel_request(&Actor::user(&user.name), Some(("user", &user.id)), &id).await {
                Ok(r) => {
                    out(channel, &format!("{}\n", r.status_line())).await;
                    0
                }
                Err(e) => report(channel, &e).await,
            }
        }
        Cmd::Approvals => match conn.broker.approvals_for(&approver).await {
            Ok(list) if list.is_empty() => {
                out(channel, "no pending requests you may decide\n").await;
                0
            }
            Ok(list) => {
                for r in &list {
                    out(channel, &pending_line(r)).await;
                }
                0
            }
            Err(e) => report(channel, &e).await,
        },
        Cmd::Approve { id, reason } => {
            match conn.broker.decide_request(&approver, &id, true, &reason, &conn.client_addr()).await {
                Ok(r) => {
                    out(channel, &format!("{}\n", r.status_line())).await;
                    0
                }
                Err(e) => report(channel, &e).await,
            }
        }
        Cmd::Deny { id, reason } => {
            match conn.broker.decide_request(&approver, &id, false, &reason, &conn.client_addr()).await {
                Ok(r) => {
                    out(channel, &format!("{}\n", r.status_line())).await;
                    0
                }
                Err(e) => report(channel, &e).await,
            }
        }
    }
}

async fn report(channel: &Channel<Msg>, e: &BrokerError) -> u32 {
    let (text, code) = broker_error(e);
    err(channel, &text).await;
    code
}

fn pending_line(r: &AccessRequest) -> String {
    format!(
        "{}  {} {} wants {}@{} for {}: \u{201c}{}\u{201d} ({} of {}; {})\n",
        r.id,
        r.requester_kind,
        r.requester_name,
        r.login,
        r.host_name,
        fmt_duration(Duration::from_secs(u64::try_from(r.ttl_seconds).unwrap_or(0))),
        r.reason,
        r.approvals_given,
        r.approvals_required,
        r.needs
    )
}

/// A request the user filed, or one they may decide; otherwise "not found".
async fn mine_or_mine_to_decide(
    conn: &Conn,
    user: &User,
    approver: &Approver,
    id: &str,
) -> Result<AccessRequest, BrokerError> {
    let r = conn.broker.access_request(id).await?;
    let mine = r.requester_kind == "user" && r.requester_name == user.name;
    let may_decide = r.rule.as_ref().is_some_and(|rule| {
        gatehouse_broker::policy::may_decide(rule, &r.requester_kind, &r.requester_name, approver).is_ok()
    });
    if mine || may_decide { Ok(r) } else { Err(BrokerError::NotFound(format!("request {id}"))) }
}

/// `request --wait`: print each change until the request is decided.
async fn wait_for(conn: &Conn, user: &User, first: AccessRequest, channel: &mut Channel<Msg>) -> u32 {
    let id = first.id.clone();
    let mut last = first.status_line();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = conn.stop.cancelled() => return 1,
            m = channel.wait() => match m {
                None | Some(ChannelMsg::Close) => return 1,
                Some(ChannelMsg::Data { data }) if data.contains(&0x03) => {
                    let who = Some(("user", user.id.as_str()));
                    if let Ok(r) = conn.broker.cancel_request(&Actor::user(&user.name), who, &id).await {
                        out(channel, &format!("{}\n", r.status_line())).await;
                        return 1;
                    }
                }
                Some(_) => {}
            },
        }
        let r = match conn.broker.access_request(&id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read an access request");
                continue;
            }
        };
        let line = r.status_line();
        if line != last {
            out(channel, &format!("{line}\n")).await;
            last = line;
        }
        match r.status.as_str() {
            "pending" => {}
            "approved" => {
                out(channel, &format!("connect with: ssh {}@{}@BASTION\n", r.login, r.host_name)).await;
                return 0;
            }
            _ => return 1,
        }
    }
}

async fn whoami(conn: &Conn, user: &User) -> Result<String, BrokerError> {
    let grants = conn.broker.list_grants(true).await?;
    let mut out = format!("user: {}\nrole: {}\n", user.name, user.role.as_str());
    let mine: Vec<_> = grants.iter().filter(|g| g.subject_kind == "user" && g.subject_id == user.id).collect();
    if mine.is_empty() {
        out.push_str("grants: none\n");
    } else {
        out.push_str("grants:\n");
        for g in mine {
            out.push_str(&format!("  {}@{} until {} ({})\n", g.login, g.host_name, fmt_time(g.expires_at), g.id));
        }
    }
    let pending = conn.broker.list_access_requests(Some("pending"), Some(("user", &user.id)), 50).await?;
    if !pending.is_empty() {
        out.push_str("pending requests:\n");
        for r in &pending {
            out.push_str(&format!("  {}\n", r.status_line()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &str) -> Cli {
        match parse(cmd) {
            Parsed::Run(c) => c,
            Parsed::Help(t) | Parsed::Mistake(t) => panic!("{cmd:?}: {t}"),
        }
    }

    #[test]
    fn command_lines_are_split_like_a_shell() {
        match run("request web-1 --login root --ttl 30m --reason 'deploy fix #7' --wait").cmd {
            Cmd::Request { host, login, ttl, reason, wait } => {
                assert_eq!((host.as_str(), login.as_deref(), ttl.as_deref()), ("web-1", Some("root"), Some("30m")));
                assert_eq!(reason, "deploy fix #7");
                assert!(wait);
            }
            other => panic!("{other:?}"),
        }
        match run(r#"deny a_0123456789abcdef --reason "not \"today\"""#).cmd {
            Cmd::Deny { id, reason } => {
                assert_eq!((id.as_str(), reason.as_str()), ("a_0123456789abcdef", "not \"today\""))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(run("approvals").cmd, Cmd::Approvals));
    }

    #[test]
    fn mistakes_and_help_are_clear() {
        let Parsed::Mistake(t) = parse("deny a_0123456789abcdef") else { panic!("deny needs a reason") };
        assert!(t.contains("--reason"), "{t}");
        let Parsed::Mistake(t) = parse("request web-1 --reason 'unbalanced") else { panic!("unbalanced") };
        assert!(t.contains("unbalanced quotes"), "{t}");
        let Parsed::Mistake(t) = parse("aprove a_1") else { panic!("typo") };
        assert!(t.contains("aprove") && t.contains("approve"), "{t}");
        for help in ["", "help", "--help", "request --help"] {
            let Parsed::Help(t) = parse(help) else { panic!("{help:?} is help") };
            assert!(t.contains("request"), "{t}");
            assert!(!t.contains('\x1b'), "no colours: {t:?}");
        }
    }
}
