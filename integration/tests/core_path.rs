//! The core path: a human SSHes through the bastion to a real sshd on a
//! per-session certificate; everything is recorded and audited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use expectrl::Expect;
use gatehouse_integration::*;
use serde_json::Value;

both_backends!(
    interactive_pty_session_is_recorded,
    exit_status_and_signal_pass_through,
    fifty_megabytes_round_trip_intact,
    scp_and_sftp_work,
    refusals_are_clear_and_audited,
    revoke_and_kill_end_sessions_within_a_second,
    expiry_ends_a_live_session,
    forwarding_is_refused_and_audited,
);

fn sessions(gh: &Gatehouse) -> Vec<Value> {
    gh.json(&["sessions", "list"]).as_array().unwrap().clone()
}

fn interactive_pty_session_is_recorded(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let mut cmd = w.ssh(&format!("{login}@web-1"), &[]);
    cmd.arg("-tt").env("TERM", "xterm").env("LANG", "C.UTF-8");
    let mut p = expectrl::Session::spawn(cmd).expect("spawn ssh in a pty");
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.get_process_mut().set_window_size(80, 24).unwrap();
    p.send_line("stty size; echo READY-$((20+22))").unwrap();
    p.expect("READY-42").expect("shell runs the typed command");
    // Resize the user's terminal: the target's pty follows.
    p.get_process_mut().set_window_size(132, 43).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.send_line("stty size; echo SIZE-DONE-$((1+1))").unwrap();
    p.expect("43 132").expect("stty size follows the resize");
    p.expect("SIZE-DONE-2").unwrap();
    p.send_line("echo typed-$((6*7)) output-marker").unwrap();
    p.expect("typed-42 output-marker").unwrap();
    p.send_line("exit 0").unwrap();
    p.expect(expectrl::Eof).expect("session ends");

    let s = eventually(Duration::from_secs(10), "session row closed", || {
        sessions(&w.gh).into_iter().find(|s| s["ended_at"].is_i64())
    });
    assert_eq!(s["subject_name"], "alice");
    assert_eq!(s["host_name"], "web-1");
    assert_eq!(s["login"], login.as_str());
    assert!(s["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    let path = s["recording_path"].as_str().expect("recording path in session row");
    let text = std::fs::read_to_string(path).expect("recording file exists");
    assert_eq!(
        sha256_file(std::path::Path::new(path)),
        s["recording_sha256"].as_str().unwrap(),
        "session row holds the file's SHA-256"
    );
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 80);
    assert_eq!(header["env"]["TERM"], "xterm");
    let title = header["title"].as_str().unwrap();
    assert!(title.contains("alice") && title.contains("web-1") && title.contains(&login), "{title}");
    let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).expect("every line is a JSON event")).collect();
    let all = |code: &str| {
        events.iter().filter(|e| e[1] == code).map(|e| e[2].as_str().unwrap().to_string()).collect::<String>()
    };
    assert!(all("i").contains("echo typed-$((6*7)) output-marker"), "typed command recorded as input");
    assert!(all("o").contains("typed-42 output-marker"), "its output recorded");
    assert!(events.iter().any(|e| e[1] == "r" && e[2] == "132x43"), "resize recorded");
    let mut last = 0.0;
    for e in &events {
        let t = e[0].as_f64().unwrap();
        assert!(t >= last, "event times are monotonic");
        last = t;
    }
    // export gives the same bytes; list shows it
    let exported = w.gh.ok(&["recordings", "export", s["id"].as_str().unwrap()]);
    assert_eq!(exported, text);
    let recs = w.gh.json(&["recordings", "list"]);
    assert!(recs.as_array().unwrap().iter().any(|r| r["session_id"] == s["id"] && r["kind"] == "shell"));
    // play replays the output
    let played = w.gh.ok(&["recordings", "play", s["id"].as_str().unwrap(), "--speed", "50"]);
    assert!(played.contains("typed-42 output-marker"));
    // audit: allow on connect, session start and end
    let ev = w.gh.audit(&["--user", "alice"]);
    for action in ["ssh.connect", "session.start", "session.end"] {
        assert!(ev.iter().any(|e| e["action"] == action && e["outcome"] == "allow"), "audit has {action}");
    }
}

fn exit_status_and_signal_pass_through(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let target = format!("{login}@web-1");
    let r = run(w.ssh(&target, &["echo out; echo err >&2; exit 7"]));
    assert_eq!(r.code, Some(7), "{}", r.stderr);
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "err\n");
    let r = run(w.ssh(&target, &["true"]));
    assert_eq!(r.code, Some(0));
    // A command killed by a signal: ssh reports it the way it does for a direct connection.
    let r = run(w.ssh(&target, &["kill -TERM $$"]));
    assert_eq!(r.code, Some(255), "stock ssh exits 255 for a remote signal: {}", r.stderr);
    let s = eventually(Duration::from_secs(10), "signal recorded", || {
        sessions(&w.gh).into_iter().find(|s| s["exit_signal"] == "TERM")
    });
    let rec = w.gh.json(&["recordings", "list"]);
    let rec = rec.as_array().unwrap().iter().find(|r| r["session_id"] == s["id"]).unwrap().clone();
    assert_eq!(rec["exit_signal"], "TERM");
    assert_eq!(rec["command"], "kill -TERM $$");
    let exit7 = eventually(Duration::from_secs(10), "exit 7 recorded", || {
        sessions(&w.gh).into_iter().find(|s| s["exit_status"] == 7)
    });
    assert_eq!(exit7["end_reason"], "client disconnected");
}

fn fifty_megabytes_round_trip_intact(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let mut data = vec![0u8; 50 * 1000 * 1000];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let want = sha256_hex(&data);
    let mut child = w
        .ssh(&format!("{login}@web-1"), &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&data).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), 50_000_000);
    assert_eq!(sha256_hex(&out.stdout), want, "50 MB arrive intact through stdin and stdout");
    // The recording counted and hashed every byte, stored at most the cap.
    let s = eventually(Duration::from_secs(10), "session closed", || {
        sessions(&w.gh).into_iter().find(|s| s["ended_at"].is_i64())
    });
    assert_eq!(s["bytes_in"], 50_000_000);
    assert_eq!(s["bytes_out"], 50_000_000);
    let rec = w.gh.json(&["recordings", "list"]);
    let rec = rec.as_array().unwrap()[0].clone();
    assert_eq!(rec["sha256_in"], want.as_str());
    assert_eq!(rec["sha256_out"], want.as_str());
    assert_eq!(rec["truncated"], true);
    let size = std::fs::metadata(rec["path"].as_str().unwrap()).unwrap().len();
    assert!(size < 2 * 16 * 1024 * 1024 + 1_000_000, "recording stays within the 16 MiB per direction cap: {size}");
}

fn scp_and_sftp_work(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let target = format!("{login}@web-1@127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("payload.bin");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    let remote = dir.path().join("uploaded.bin");
    let opts = ssh_opts(&w.gh, &w.key);
    let port = w.gh.ssh_port.to_string();
    // scp upload
    let r = run({
        let mut c = std::process::Command::new("scp");
        c.args(&opts).args(["-P", &port]).arg(&local).arg(format!("{target}:{}", remote.display()));
        c
    });
    assert_eq!(r.code, Some(0), "scp upload: {}", r.stderr);
    assert_eq!(sha256_file(&remote), sha256_hex(&payload));
    // scp download
    let back = dir.path().join("downloaded.bin");
    let r = run({
        let mut c = std::process::Command::new("scp");
        c.args(&opts).args(["-P", &port]).arg(format!("{target}:{}", remote.display())).arg(&back);
        c
    });
    assert_eq!(r.code, Some(0), "scp download: {}", r.stderr);
    assert_eq!(sha256_file(&back), sha256_hex(&payload));
    // sftp batch round trip
    let sftp_remote = dir.path().join("via-sftp.bin");
    let sftp_back = dir.path().join("via-sftp-back.bin");
    let batch = dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\nls -l {}\n",
            local.display(),
            sftp_remote.display(),
            sftp_remote.display(),
            sftp_back.display(),
            sftp_remote.display()
        ),
    )
    .unwrap();
    let r = run({
        let mut c = std::process::Command::new("sftp");
        c.args(&opts).args(["-P", &port, "-b"]).arg(&batch).arg(&target);
        c
    });
    assert_eq!(r.code, Some(0), "sftp: {}", r.stderr);
    assert!(r.stdout.contains("3000000"), "ls -l shows the file: {}", r.stdout);
    assert_eq!(sha256_file(&sftp_back), sha256_hex(&payload));
    // sftp channels are recorded as subsystem recordings with hashes
    let recs = w.gh.json(&["recordings", "list"]);
    let sftp = recs.as_array().unwrap().iter().find(|r| r["kind"] == "subsystem").expect("sftp recording").clone();
    assert_eq!(sftp["command"], "sftp");
    assert!(sftp["bytes_in"].as_i64().unwrap() > 3_000_000);
    assert_eq!(sftp["sha256_in"].as_str().unwrap().len(), 64);
}

fn refusals_are_clear_and_audited(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    // no grant
    let r = run(w.ssh(&format!("{login}@web-1"), &["true"]));
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stderr.trim(), "gatehouse: access denied: you have no grant for host web-1");
    // unknown host: the same words as an existing host without a grant
    let r = run(w.ssh(&format!("{login}@db-9"), &["true"]));
    assert_eq!(r.stderr.trim(), "gatehouse: access denied: you have no grant for host db-9");
    // wrong login
    w.grant("alice", "web-1", &login, "10m");
    let r = run(w.ssh("daemon@web-1", &["true"]));
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains(&format!("your grant for web-1 allows login {login}, not daemon")), "{}", r.stderr);
    // malformed user names never reach a certificate
    for bad in ["root,admin@web-1", "web-1", "a@b@c"] {
        let r = run(w.ssh(bad, &["true"]));
        assert_eq!(r.code, Some(1), "{bad}");
        assert!(r.stderr.contains("LOGIN@HOST"), "{bad}: {}", r.stderr);
    }
    // unknown key
    let stranger = UserKey::new();
    let r = run(ssh(&w.gh, &stranger, &format!("{login}@web-1"), &["true"]));
    assert_eq!(r.code, Some(255));
    assert!(r.stderr.contains("Permission denied (publickey)"), "{}", r.stderr);
    // expired grant
    w.gh.ok(&["user", "add", "bob", "--ssh-key", stranger.public.to_str().unwrap()]);
    w.grant("bob", "web-1", &login, "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let r = run(ssh(&w.gh, &stranger, &format!("{login}@web-1"), &["true"]));
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("has expired"), "{}", r.stderr);
    // target host key changed: pinned key is not the one the target presents
    let other = UserKey::new();
    w.gh.ok(&["host", "add", "web-2", "--address", &w.sshd.address(), "--host-key", other.public.to_str().unwrap()]);
    w.grant("alice", "web-2", &login, "10m");
    let r = run(w.ssh(&format!("{login}@web-2"), &["true"]));
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("host key of web-2 changed"), "{}", r.stderr);
    // the right key still works
    let r = run(w.ssh(&format!("{login}@web-1"), &["echo ok"]));
    assert_eq!(r.stdout, "ok\n");

    let denies = w.gh.audit(&["--outcome", "deny"]);
    let reasons: Vec<String> =
        denies.iter().map(|e| format!("{} {} {}", e["action"], e["resource"], e["reason"])).collect();
    let has = |action: &str, reason: &str| {
        denies.iter().any(|e| e["action"] == action && e["reason"].as_str().unwrap_or("").contains(reason))
    };
    assert!(has("ssh.connect", "no grant"), "{reasons:#?}");
    assert!(has("ssh.connect", "unknown host"), "{reasons:#?}");
    assert!(has("ssh.connect", "wrong login"), "{reasons:#?}");
    assert!(has("ssh.connect", "grant expired"), "{reasons:#?}");
    assert!(has("ssh.connect", "malformed target"), "{reasons:#?}");
    assert!(has("ssh.auth", "unknown key"), "{reasons:#?}");
    assert!(has("ssh.upstream_host_key", "changed"), "{reasons:#?}");
    let mismatch = denies.iter().find(|e| e["action"] == "ssh.upstream_host_key").unwrap();
    assert_eq!(mismatch["severity"], "critical");
    // the target never saw a session for the refused connections
    assert!(w.gh.audit(&["--outcome", "allow", "--action", "ssh.connect"]).len() >= 2);
}

/// Start `sleep` through the bastion and wait until its session is live.
fn live_sleep(w: &World, login: &str) -> (std::process::Child, String) {
    let before: Vec<String> = sessions(&w.gh).iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    let child = w
        .ssh(&format!("{login}@web-1"), &["echo started; exec sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = eventually(Duration::from_secs(15), "live session", || {
        w.gh.json(&["sessions", "list", "--active"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .find(|id| !before.contains(id))
    });
    // and the command is running on the target
    eventually(Duration::from_secs(15), "recording started", || {
        w.gh.json(&["recordings", "list"]).as_array().unwrap().iter().find(|r| r["session_id"] == id.as_str()).cloned()
    });
    std::thread::sleep(Duration::from_millis(200));
    (child, id)
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within + Duration::from_secs(10) {
        if child.try_wait().unwrap().is_some() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn revoke_and_kill_end_sessions_within_a_second(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    let grant = w.grant("alice", "web-1", &login, "10m");

    let (mut child, id) = live_sleep(&w, &login);
    w.gh.ok(&["grant", "revoke", &grant]);
    let took = wait_exit(&mut child, Duration::from_secs(1)).expect("ssh exits after revoke");
    assert!(took <= Duration::from_secs(1), "session ended {took:?} after revoke");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("session ended: grant revoked"), "user is told why: {stderr}");
    let s = eventually(Duration::from_secs(5), "row closed", || {
        sessions(&w.gh).into_iter().find(|s| s["id"] == id.as_str() && s["ended_at"].is_i64())
    });
    assert_eq!(s["end_reason"], "grant revoked");
    assert!(w.gh.audit(&["--action", "grant.revoke"]).len() == 1);

    w.grant("alice", "web-1", &login, "10m");
    let (mut child, id) = live_sleep(&w, &login);
    w.gh.ok(&["sessions", "kill", &id]);
    let took = wait_exit(&mut child, Duration::from_secs(1)).expect("ssh exits after kill");
    assert!(took <= Duration::from_secs(1), "session ended {took:?} after kill");
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("session ended: killed by an administrator"));
    let s = eventually(Duration::from_secs(5), "row closed", || {
        sessions(&w.gh).into_iter().find(|s| s["id"] == id.as_str() && s["ended_at"].is_i64())
    });
    assert_eq!(s["end_reason"], "killed by an administrator");
    let kill = w.gh.audit(&["--action", "session.kill"]);
    assert_eq!(kill.len(), 1);
    assert_eq!(kill[0]["session_id"], id.as_str());
    // killing it again is a clear error
    let err = w.gh.fails(&["sessions", "kill", &id]);
    assert!(err.contains("already ended"), "{err}");
    let err = w.gh.fails(&["sessions", "kill", "../../etc/passwd"]);
    assert!(err.contains("not a valid"), "{err}");
}

fn expiry_ends_a_live_session(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "4s");
    let (mut child, id) = live_sleep(&w, &login);
    let took = wait_exit(&mut child, Duration::from_secs(5)).expect("ssh exits when the grant expires");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("session ended: grant expired"));
    let s = eventually(Duration::from_secs(5), "row closed", || {
        sessions(&w.gh).into_iter().find(|s| s["id"] == id.as_str() && s["ended_at"].is_i64())
    });
    assert_eq!(s["end_reason"], "grant expired");
}

fn forwarding_is_refused_and_audited(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let r = run(w.ssh(&format!("{login}@web-1"), &["-W", &w.sshd.address()]));
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("port forwarding is disabled by Gatehouse"), "{}", r.stderr);
    // Agent forwarding: a real ssh-agent on the user's side, `ssh -A`.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut agent =
        std::process::Command::new("ssh-agent").arg("-D").arg("-a").arg(&sock).stdout(Stdio::null()).spawn().unwrap();
    eventually(Duration::from_secs(5), "ssh-agent socket", || sock.exists().then_some(()));
    let mut c = w.ssh(&format!("{login}@web-1"), &["-A", "echo agent=${SSH_AUTH_SOCK:-none}"]);
    c.env("SSH_AUTH_SOCK", &sock);
    let r = run(c);
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(r.stdout.trim(), "agent=none", "the target never sees a forwarded agent");
    assert!(r.stderr.contains("agent forwarding is disabled"), "{}", r.stderr);
    let ev = w.gh.audit(&["--outcome", "deny"]);
    assert!(ev.iter().any(|e| e["action"] == "ssh.port_forwarding"), "{ev:#?}");
    assert!(ev.iter().any(|e| e["action"] == "ssh.agent_forwarding"), "{ev:#?}");
    // Each command is an audit event naming it.
    let chans = w.gh.audit(&["--action", "session.channel"]);
    assert!(
        chans
            .iter()
            .any(|e| e["details"]["command"] == "echo agent=${SSH_AUTH_SOCK:-none}" && e["details"]["kind"] == "exec")
    );
}

both_backends!(shutdown_drains_and_flushes, recording_is_strict);

fn shutdown_drains_and_flushes(b: Backend) {
    let mut w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let (child, id) = live_sleep(&w, &login);
    let status = w.gh.stop().expect("server was running");
    assert!(status.success(), "gatehouse serve exits cleanly on SIGTERM: {status}");
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("session ended: gatehouse is shutting down"));
    w.gh.restart().unwrap();
    let s = sessions(&w.gh).into_iter().find(|s| s["id"] == id.as_str()).unwrap();
    assert_eq!(s["end_reason"], "gatehouse is shutting down");
    let path = s["recording_path"].as_str().expect("recording in the row");
    assert_eq!(sha256_file(std::path::Path::new(path)), s["recording_sha256"].as_str().unwrap());
    let text = std::fs::read_to_string(path).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last[1], "m", "the recording was finished with its closing marker");
    assert!(last[2].as_str().unwrap().contains("gatehouse: end"));
    assert!(text.contains("started"), "output before shutdown is in the recording");
}

fn recording_is_strict(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    // Make the recordings directory unusable (a file in its place; root ignores modes).
    let rec_dir = w.gh.data_dir.join("recordings");
    std::fs::remove_dir_all(&rec_dir).unwrap();
    std::fs::write(&rec_dir, b"not a directory").unwrap();
    let marker = w.sshd.dir.path().join("ran");
    let r = run(w.ssh(&format!("{login}@web-1"), &[&format!("touch {}; echo ran", marker.display())]));
    assert_ne!(r.code, Some(0));
    assert!(!r.stdout.contains("ran"), "{}", r.stdout);
    assert!(!marker.exists(), "the command never ran unrecorded on the target");
    // Refused before the session starts (a recording could not be written),
    // with the reason, and audited as a deny; no session row exists.
    assert!(r.stderr.contains("session recordings cannot be written"), "{}", r.stderr);
    let ev = eventually(Duration::from_secs(5), "refusal audited", || {
        w.gh.audit(&["--action", "session.start", "--outcome", "deny"]).into_iter().next()
    });
    assert!(ev["reason"].as_str().unwrap().contains("Not a directory"), "{ev}");
    assert!(sessions(&w.gh).is_empty());
    // (A recording that fails mid-session ends that session: faults.rs.)
}
