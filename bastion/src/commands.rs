//! The bastion's command interface: `ssh -p 2222 gatehouse@bastion COMMAND`.
//! It speaks for the authenticated user only, with the key they already use.

use std::sync::Arc;

use bytes::Bytes;
use gatehouse_broker::users::User;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg};

use crate::server::Conn;

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
    let (out, code) = execute(&conn, &user, &command).await;
    let (stdout, stderr) = if code == 0 { (out, String::new()) } else { (String::new(), out) };
    if !stdout.is_empty() {
        let _ = channel.data_bytes(Bytes::from(stdout.replace('\n', "\r\n"))).await;
    }
    if !stderr.is_empty() {
        let _ = channel.extended_data_bytes(1, Bytes::from(stderr.replace('\n', "\r\n"))).await;
    }
    let _ = channel.exit_status(code).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

const HELP: &str = "Gatehouse bastion commands (ssh -p PORT gatehouse@BASTION COMMAND):\n  whoami    who you are and your live grants\n  help      this text\n";

async fn execute(conn: &Conn, user: &User, command: &str) -> (String, u32) {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.first().copied() {
        None | Some("help") => (HELP.to_string(), 0),
        Some("whoami") => match conn.broker.list_grants(true).await {
            Ok(grants) => {
                let mut out = format!("user: {}\nrole: {}\n", user.name, user.role.as_str());
                let mine: Vec<_> =
                    grants.iter().filter(|g| g.subject_kind == "user" && g.subject_id == user.id).collect();
                if mine.is_empty() {
                    out.push_str("grants: none\n");
                } else {
                    out.push_str("grants:\n");
                    for g in mine {
                        out.push_str(&format!("  {}@{} until {} ({})\n", g.login, g.host_name, g.expires_at, g.id));
                    }
                }
                (out, 0)
            }
            Err(e) => (format!("gatehouse: {e}\n"), 1),
        },
        Some(other) => {
            (format!("gatehouse: unknown command {:?}; try `help`\n", gatehouse_broker::audit::cap(other, 40)), 2)
        }
    }
}
