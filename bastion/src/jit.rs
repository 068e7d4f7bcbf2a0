//! The in-terminal request flow: a user connects to `LOGIN@HOST` without a
//! grant, policy would let them ask, and the channel is interactive. The
//! bastion asks for a reason (reading keystrokes from the channel and
//! echoing them), files the request, shows where it stands every second,
//! and on approval continues into the normal proxied, recorded session —
//! replaying the pty/env/shell requests the client already sent. Anything
//! else ends with the decision. Non-interactive channels get the one-line
//! denial.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_broker::access::{NewAccessRequest, RequestOffer, Requester, SshGate};
use gatehouse_broker::policy::fmt_duration;
use gatehouse_broker::users::User;
use gatehouse_broker::{Actor, BrokerError};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg};

use crate::proxy::{deny_channel, proxy_session, refuse};
use crate::server::{Conn, start_session};

/// Longest reason accepted at the prompt, in bytes.
const REASON_MAX: usize = 500;
/// A prompt nobody types into ends.
const PROMPT_IDLE: Duration = Duration::from_secs(300);

async fn say(channel: &Channel<Msg>, text: &str) {
    let _ = channel.data_bytes(Bytes::from(text.replace('\n', "\r\n"))).await;
}

enum Line {
    Text(String),
    Cancel,
    Closed,
}

pub(crate) async fn offer(
    conn: Arc<Conn>,
    user: User,
    offer: RequestOffer,
    denial: String,
    mut channel: Channel<Msg>,
    handle: Handle,
) {
    // The client's requests up to its shell/exec/subsystem request, kept to
    // replay to the target if the session goes ahead.
    let mut replay: Vec<ChannelMsg> = Vec::new();
    let mut pty = false;
    let started = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = channel.wait().await {
            match m {
                ChannelMsg::RequestPty { .. } => {
                    pty = true;
                    replay.push(m);
                }
                ChannelMsg::SetEnv { .. } | ChannelMsg::WindowChange { .. } => replay.push(m),
                ChannelMsg::RequestShell { .. } => {
                    replay.push(m);
                    return Some(true);
                }
                ChannelMsg::Exec { .. } | ChannelMsg::RequestSubsystem { .. } => return Some(false),
                ChannelMsg::Eof | ChannelMsg::Close => return None,
                _ => {}
            }
        }
        None
    })
    .await;
    match started {
        Ok(Some(true)) if pty => {}
        Ok(Some(_)) => {
            refuse(&channel, &denial).await;
            return;
        }
        Ok(None) => return,
        Err(_) => {
            deny_channel(channel, &denial).await;
            return;
        }
    }

    say(&channel, &format!("gatehouse: {denial}\n")).await;
    let id = match offer.pending.clone() {
        Some(id) => {
            say(
                &channel,
                &format!("gatehouse: your request {id} for {}@{} is waiting for approval.\n", offer.login, offer.host),
            )
            .await;
            id
        }
        None => {
            say(
                &channel,
                &format!(
                    "Policy lets you ask for {}@{} for {} ({}).\n",
                    offer.login,
                    offer.host,
                    fmt_duration(offer.ttl),
                    offer.needs
                ),
            )
            .await;
            let reason = loop {
                say(&channel, "Reason (Enter to send, Ctrl-C to cancel): ").await;
                match read_line(&conn, &mut channel, &mut replay).await {
                    Line::Text(t) if t.is_empty() => say(&channel, "gatehouse: a reason is required.\n").await,
                    Line::Text(t) => break t,
                    Line::Cancel => {
                        refuse(&channel, "no request was filed").await;
                        return;
                    }
                    Line::Closed => return,
                }
            };
            let filed = conn
                .broker
                .request_access(
                    &Requester::User(user.clone()),
                    &Actor::user(&user.name),
                    NewAccessRequest {
                        host: offer.host.clone(),
                        login: offer.login.clone(),
                        ttl: None,
                        reason,
                        client_addr: conn.client_addr(),
                        ..Default::default()
                    },
                )
                .await;
            match filed {
                Ok(r) => {
                    say(&channel, &format!("gatehouse: request {} filed.\n", r.id)).await;
                    r.id
                }
                Err(BrokerError::Denied(m) | BrokerError::Conflict(m) | BrokerError::Invalid(m)) => {
                    refuse(&channel, &m).await;
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not file an access request");
                    refuse(&channel, "gatehouse cannot file the request right now (storage unavailable)").await;
                    return;
                }
            }
        }
    };

    // Wait for the decision, showing where it stands.
    let since = Instant::now();
    let mut shown_pending = false;
    loop {
        let req = match conn.broker.access_request(&id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read an access request");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match req.status.as_str() {
            "pending" => {
                if !shown_pending {
                    say(&channel, &format!("Waiting for {} (Ctrl-C cancels the request).\n", req.needs)).await;
                    shown_pending = true;
                }
                say(
                    &channel,
                    &format!(
                        "\r\x1b[K  {}: {} of {} approval(s), waiting {}s",
                        req.id,
                        req.approvals_given,
                        req.approvals_required,
                        since.elapsed().as_secs()
                    ),
                )
                .await;
            }
            "approved" => {
                say(&channel, &format!("\r\x1b[K{}\n", req.status_line())).await;
                break;
            }
            _ => {
                say(&channel, "\r\x1b[K").await;
                refuse(&channel, &format!("access denied: {}", req.status_line())).await;
                return;
            }
        }
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                _ = conn.stop.cancelled() => return,
                m = channel.wait() => match m {
                    None | Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) => return,
                    Some(ChannelMsg::Data { data }) if data.contains(&0x03) => {
                        let who = Some(("user", user.id.as_str()));
                        match conn.broker.cancel_request(&Actor::user(&user.name), who, &id).await {
                            Ok(_) => {
                                say(&channel, "\n").await;
                                refuse(&channel, &format!("request {id} cancelled")).await;
                                return;
                            }
                            // Decided meanwhile: the next poll shows it.
                            Err(_) => break,
                        }
                    }
                    Some(m @ ChannelMsg::WindowChange { .. }) => replay.push(m),
                    Some(_) => {}
                },
            }
        }
    }

    // Approved: the grant exists now; admit the connection the normal way.
    let host = offer.host.clone();
    let access = match conn.broker.gate_ssh(&user, &offer.login, &host, &conn.client_addr()).await {
        Ok(SshGate::Allowed(a)) => *a,
        Ok(SshGate::Denied(m)) | Ok(SshGate::Requestable { denial: m, .. }) => {
            refuse(&channel, &m).await;
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "authorization failed after approval");
            refuse(&channel, "access denied: gatehouse cannot decide right now (storage unavailable); try again").await;
            return;
        }
    };
    let session = match start_session(&conn, &user, access).await {
        Ok(s) => s,
        Err(m) => {
            refuse(&channel, &m).await;
            return;
        }
    };
    proxy_session(conn, session, channel, handle, replay).await;
}

/// Read one line typed into a raw-mode terminal, echoing it. Ctrl-C (or
/// Ctrl-D on an empty line) cancels; Backspace and Ctrl-U edit; escape
/// sequences (arrow keys) are ignored.
async fn read_line(conn: &Conn, channel: &mut Channel<Msg>, replay: &mut Vec<ChannelMsg>) -> Line {
    let mut buf: Vec<u8> = Vec::new();
    let mut in_escape = false;
    loop {
        let m = tokio::select! {
            m = channel.wait() => m,
            _ = conn.stop.cancelled() => return Line::Closed,
            _ = tokio::time::sleep(PROMPT_IDLE) => return Line::Cancel,
        };
        let data = match m {
            None | Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) => return Line::Closed,
            Some(ChannelMsg::Data { data }) => data,
            Some(m @ ChannelMsg::WindowChange { .. }) => {
                replay.push(m);
                continue;
            }
            Some(_) => continue,
        };
        let mut echo: Vec<u8> = Vec::new();
        let mut done = None;
        for &b in data.iter() {
            if in_escape {
                // ESC [ … final byte (0x40–0x7e), or ESC + one byte.
                if (0x40..=0x7e).contains(&b) && b != b'[' {
                    in_escape = false;
                }
                continue;
            }
            match b {
                b'\r' | b'\n' => {
                    done = Some(Line::Text(String::from_utf8_lossy(&buf).trim().to_string()));
                    break;
                }
                0x03 => {
                    done = Some(Line::Cancel);
                    break;
                }
                0x04 if buf.is_empty() => {
                    done = Some(Line::Cancel);
                    break;
                }
                0x1b => in_escape = true,
                0x7f | 0x08 => {
                    if pop_char(&mut buf) {
                        echo.extend_from_slice(b"\x08 \x08");
                    }
                }
                0x15 => {
                    while pop_char(&mut buf) {
                        echo.extend_from_slice(b"\x08 \x08");
                    }
                }
                b if b < 0x20 => {}
                b => {
                    if buf.len() < REASON_MAX {
                        buf.push(b);
                        echo.push(b);
                    }
                }
            }
        }
        if !echo.is_empty() {
            let _ = channel.data_bytes(Bytes::from(echo)).await;
        }
        if let Some(line) = done {
            say(channel, "\n").await;
            return line;
        }
    }
}

/// Remove the last UTF-8 character; false if there was none.
fn pop_char(buf: &mut Vec<u8>) -> bool {
    let Some(mut last) = buf.pop() else { return false };
    // Continuation bytes: keep popping to the character's first byte.
    while last & 0xC0 == 0x80 {
        match buf.pop() {
            Some(b) => last = b,
            None => break,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::pop_char;

    #[test]
    fn backspace_removes_whole_characters() {
        let mut b = "aé€".as_bytes().to_vec();
        assert!(pop_char(&mut b));
        assert_eq!(b, "aé".as_bytes());
        assert!(pop_char(&mut b));
        assert_eq!(b, b"a");
        assert!(pop_char(&mut b));
        assert!(!pop_char(&mut b));
    }
}
