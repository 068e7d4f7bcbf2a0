//! Faults: the database going away, the recordings disk filling up or
//! turning read-only, and targets that stall or reset mid-session. Each is
//! driven for real: a TCP relay in front of PostgreSQL that the test cuts, a
//! small tmpfs mounted over the recordings dir, and SIGSTOP/SIGKILL on the
//! target's sshd processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatehouse_integration::*;
use serde_json::{Value, json};

both_backends!(full_or_read_only_recordings_disk_refuses_sessions, a_stalled_or_reset_target_does_not_stall_others);

/// PostgreSQL going away is a multi-node deployment's failure; the embedded
/// SQLite file has no such state (its disk failing is the recordings test).
#[test]
fn database_outage_refuses_then_recovers_postgres() {
    let proxy = TcpProxy::start("127.0.0.1:5432");
    let gh = Gatehouse::start_postgres_via(&proxy, &[]).unwrap();
    let sshd = Sshd::start(&gh.user_ca());
    let key = UserKey::new();
    gh.ok(&["user", "add", "alice", "--ssh-key", key.public.to_str().unwrap()]);
    gh.ok(&[
        "host",
        "add",
        "web-1",
        "--address",
        &sshd.address(),
        "--group",
        "staging",
        "--host-key",
        sshd.host_key_pub.to_str().unwrap(),
    ]);
    let login = local_login();
    gh.ok(&["grant", "add", "alice", "--host", "web-1", "--login", &login, "--ttl", "10m"]);
    let token = agent_with_token(&gh, "ops-bot", "host:read,ssh_session:request", "staging", &[]);
    let target = format!("{login}@web-1");

    let r = run(ssh(&gh, &key, &target, &["echo before"]));
    assert_eq!((r.code, r.stdout.trim()), (Some(0), "before"), "{r:?}");
    let v = mcp_http(&gh, &token, &[], json!([mcp_call("gatehouse_whoami", json!({}))]));
    assert_eq!(mcp_result(&v, 0)["structured"]["agent"], "ops-bot", "{v}");
    let sessions_before = gh.sql("SELECT count(*) FROM sessions");

    proxy.cut();
    // A new SSH session is refused, and the user is told why.
    let r = run(ssh(&gh, &key, &target, &["echo during"]));
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(!r.stdout.contains("during"), "{r:?}");
    assert!(r.stderr.contains("database is unreachable"), "{r:?}");
    // A tool call is refused with 503 and a clear error, not a hang or a 500.
    let v = mcp_http(&gh, &token, &[], json!([mcp_call("gatehouse_whoami", json!({}))]));
    assert!(v["http_statuses"].as_array().unwrap().iter().any(|s| s == 503), "{v}");
    assert!(v["results"].as_array().is_none_or(|r| r.iter().all(|x| x.get("structured").is_none())), "{v}");
    let resp = http(
        "POST",
        &format!("{}/mcp", gh.url()),
        &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "application/json")],
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    );
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.body.contains("unavailable"), "{resp:?}");
    assert!(!resp.body.contains(&token));
    // The admin API says so too.
    let out = gh.fails(&["sessions", "list"]);
    assert!(out.contains("unavailable"), "{out}");

    proxy.restore();
    // Service resumes on its own once the database answers again.
    let r = eventually(Duration::from_secs(30), "ssh works again", || {
        let r = run(ssh(&gh, &key, &target, &["echo after"]));
        (r.code == Some(0)).then_some(r)
    });
    assert_eq!(r.stdout.trim(), "after");
    let v = mcp_http(&gh, &token, &[], json!([mcp_call("gatehouse_whoami", json!({}))]));
    assert_eq!(mcp_result(&v, 0)["structured"]["agent"], "ops-bot", "{v}");

    // Nothing was allowed without its audit row: the session refused during
    // the outage left no row, and every session has its allow event.
    let sessions_after: i64 = gh.sql("SELECT count(*) FROM sessions").trim().parse().unwrap();
    let before: i64 = sessions_before.trim().parse().unwrap();
    assert_eq!(sessions_after, before + 1, "only the session after recovery was added");
    let unaudited = gh.sql(
        "SELECT count(*) FROM sessions s WHERE NOT EXISTS \
         (SELECT 1 FROM audit_events a WHERE a.session_id = s.id AND a.action = 'session.start' AND a.outcome = 'allow')",
    );
    assert_eq!(unaudited.trim(), "0");
    let during: Vec<Value> = gh.audit(&["--action", "session.start"]);
    assert_eq!(during.iter().filter(|e| e["outcome"] == "allow").count() as i64, sessions_after);
    let verify = gh.ok(&["audit", "verify"]);
    assert!(verify.contains("audit chain intact"), "{verify}");
}

/// A tmpfs mounted over a directory, unmounted when dropped.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount is installed");
        assert!(
            out.status.success(),
            "mounting a small tmpfs for the recordings-disk test needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { at: at.to_path_buf() }
    }

    /// Remount; read-only waits until the last session's recording is
    /// closed (the client can exit a moment before the bastion closes it).
    fn remount(&self, opt: &str) {
        eventually(Duration::from_secs(10), &format!("remount {opt}"), || {
            let out = Command::new("mount").args(["-o", &format!("remount,{opt}")]).arg(&self.at).output().unwrap();
            out.status.success().then_some(())
        });
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Fill the filesystem under `dir` until it reports no space left.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            break;
        }
    }
    // Whatever space a partial write left: take it too.
    while f.write_all(&[0u8; 512]).is_ok() {}
    path
}

fn spawn_ticker(w: &World, target: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = w
        .ssh(target, &["echo ready; while :; do head -c 2000 /dev/zero | tr '\\0' t; echo; sleep 0.1; done"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (child, out)
}

fn full_or_read_only_recordings_disk_refuses_sessions(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    let target = format!("{login}@web-1");
    w.grant("alice", "web-1", &login, "10m");
    let recordings = w.gh.data_dir.join("recordings");
    let disk = Tmpfs::mount(&recordings, "1m");

    // A live session, printing as it goes.
    let (mut live, _out) = spawn_ticker(&w, &target);
    let live_id = eventually(Duration::from_secs(10), "the session is listed", || {
        let v = w.gh.json(&["sessions", "list", "--active"]);
        v.as_array().and_then(|a| a.first()).map(|s| s["id"].as_str().unwrap().to_string())
    });

    // The disk fills up: the live session ends (its recording cannot grow) ...
    let filler = fill(&recordings);
    let status = eventually(Duration::from_secs(15), "the live session ends", || live.try_wait().unwrap());
    assert!(!status.success());
    let s = eventually(Duration::from_secs(10), "the session row is closed", || {
        let v = w.gh.json(&["sessions", "list"]);
        v.as_array().unwrap().iter().find(|s| s["id"] == live_id.as_str() && !s["ended_at"].is_null()).cloned()
    });
    assert_eq!(s["end_reason"], "recording failed", "{s}");
    let failed = w.gh.audit(&["--action", "session.recording"]);
    assert!(failed.iter().any(|e| e["session_id"] == live_id.as_str() && e["outcome"] == "error"), "{failed:?}");

    // ... and a new one is refused, with the reason, and audited.
    let r = run(w.ssh(&target, &["echo refused"]));
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(!r.stdout.contains("refused"));
    assert!(r.stderr.contains("recordings cannot be written"), "{r:?}");
    let denies = |why: &str| {
        w.gh.audit(&["--action", "session.start", "--outcome", "deny"])
            .into_iter()
            .filter(|e| e["reason"].as_str().unwrap_or("").contains(why))
            .count()
    };
    assert_eq!(denies("No space left"), 1);

    // Space comes back: sessions work again.
    std::fs::remove_file(&filler).unwrap();
    let r = run(w.ssh(&target, &["echo back"]));
    assert_eq!((r.code, r.stdout.trim()), (Some(0), "back"), "{r:?}");

    // Read-only: refused and audited the same way.
    disk.remount("ro");
    let r = run(w.ssh(&target, &["echo refused"]));
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("recordings cannot be written"), "{r:?}");
    assert_eq!(denies("Read-only file system"), 1);
    disk.remount("rw");
    let r = run(w.ssh(&target, &["echo writable"]));
    assert_eq!((r.code, r.stdout.trim()), (Some(0), "writable"), "{r:?}");

    // Every recording that was written is parseable line by line.
    for entry in std::fs::read_dir(&recordings).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines() {
            serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{}: {e}: {line:?}", p.display()));
        }
    }
}

/// Every process under `pid` (children, grandchildren, …), not `pid` itself.
fn descendants(pid: u32) -> Vec<i32> {
    let mut all = Vec::new();
    let mut frontier = vec![pid as i32];
    while let Some(p) = frontier.pop() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
            // The parent pid is the second field after the parenthesised name.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid.and_then(|x| x.parse::<i32>().ok()) == Some(p) {
                all.push(child);
                frontier.push(child);
            }
        }
    }
    all
}

fn signal_all(pids: &[i32], sig: nix::sys::signal::Signal) {
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
    }
}

fn a_stalled_or_reset_target_does_not_stall_others(b: Backend) {
    use nix::sys::signal::Signal;
    let w = World::new(b);
    let login = local_login();
    let sshd2 = Sshd::start(&w.gh.user_ca());
    w.gh.ok(&[
        "host",
        "add",
        "web-2",
        "--address",
        &sshd2.address(),
        "--group",
        "staging",
        "--host-key",
        sshd2.host_key_pub.to_str().unwrap(),
    ]);
    // web-3 accepts TCP connections and then says nothing at all.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    w.gh.ok(&[
        "host",
        "add",
        "web-3",
        "--address",
        &silent_addr,
        "--group",
        "staging",
        "--host-key",
        w.sshd.host_key_pub.to_str().unwrap(),
    ]);
    for h in ["web-1", "web-2", "web-3"] {
        w.grant("alice", h, &login, "10m");
    }

    // A session on web-1, then web-1's sshd processes are frozen.
    let (mut stalled, _out) = spawn_ticker(&w, &format!("{login}@web-1"));
    let frozen = descendants(w.sshd.pid());
    assert!(!frozen.is_empty());
    signal_all(&frozen, Signal::SIGSTOP);
    // A session to the silent web-3 hangs in its handshake meanwhile.
    let mut hanging =
        w.ssh(&format!("{login}@web-3"), &["true"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();

    // Sessions to web-2 go on: interactive data and a bulk transfer.
    for i in 0..3 {
        let r = run(w.ssh(&format!("{login}@web-2"), &[&format!("echo other-{i}; head -c 2000000 /dev/zero | wc -c")]));
        assert_eq!(r.code, Some(0), "{r:?}");
        assert_eq!(r.stdout.split_whitespace().collect::<Vec<_>>(), vec![format!("other-{i}").as_str(), "2000000"]);
    }
    assert!(stalled.try_wait().unwrap().is_none(), "the stalled session is still open, just stuck");
    // The API answers too.
    w.gh.ok(&["sessions", "list", "--active"]);

    // The silent target gives up with a clear reason, on its own.
    let st = eventually(Duration::from_secs(30), "the handshake to web-3 times out", || hanging.try_wait().unwrap());
    assert!(!st.success());
    let ups = w.gh.audit(&["--action", "ssh.upstream"]);
    assert!(ups.iter().any(|e| e["resource"].as_str().unwrap_or("").ends_with("@web-3")), "{ups:?}");

    // web-1 resets mid-session: its processes die; that session ends, and the
    // others never notice.
    signal_all(&frozen, Signal::SIGKILL);
    signal_all(&frozen, Signal::SIGCONT);
    let st = eventually(Duration::from_secs(20), "the reset session ends", || stalled.try_wait().unwrap());
    assert!(!st.success());
    let r = run(w.ssh(&format!("{login}@web-2"), &["echo still-fine"]));
    assert_eq!((r.code, r.stdout.trim()), (Some(0), "still-fine"), "{r:?}");
    eventually(Duration::from_secs(10), "every web-1 session is closed", || {
        let v = w.gh.json(&["sessions", "list", "--active"]);
        (!v.as_array().unwrap().iter().any(|s| s["host_name"] == "web-1")).then_some(())
    });
}
