//! Trust the record: the audit log is a hash chain; edits, deletions and
//! reordering are detected, on the server and in exported evidence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use gatehouse_integration::*;
use serde_json::Value;

both_backends!(
    audit_chain_detects_tampering,
    crash_closes_sessions_and_keeps_every_event,
    user_ca_rotation_keeps_old_targets_working_through_the_grace_period
);

fn verify(gh: &Gatehouse) -> Result<String, String> {
    let out = gh.cli(&["audit", "verify"]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn audit_chain_detects_tampering(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let r = run(w.ssh(&format!("{login}@web-1"), &["echo hi"]));
    assert_eq!(r.code, Some(0));
    let r = run(w.ssh("nobody@web-9", &["true"]));
    assert_eq!(r.code, Some(1));
    eventually(Duration::from_secs(5), "session end audited", || {
        (!w.gh.audit(&["--action", "session.end"]).is_empty()).then_some(())
    });
    let ok = verify(&w.gh).expect("chain intact");
    assert!(ok.contains("audit chain intact"), "{ok}");

    // Exported evidence verifies offline, and tampering with the file is caught.
    let dir = tempfile::tempdir().unwrap();
    let export = w.gh.ok(&["audit", "export", "--format", "jsonl"]);
    let file = dir.path().join("evidence.jsonl");
    std::fs::write(&file, &export).unwrap();
    let out = w.gh.ok(&["audit", "verify", "--file", file.to_str().unwrap()]);
    assert!(out.contains("export intact"), "{out}");
    let edited = export.replacen("\"outcome\":\"deny\"", "\"outcome\":\"allow\"", 1);
    assert_ne!(edited, export);
    std::fs::write(&file, &edited).unwrap();
    let err = w.gh.fails(&["audit", "verify", "--file", file.to_str().unwrap()]);
    assert!(err.contains("does not match its hash"), "{err}");
    let lines: Vec<&str> = export.lines().collect();
    let mut dropped_last = lines[..lines.len() - 2].to_vec();
    dropped_last.push(lines[lines.len() - 1]);
    std::fs::write(&file, dropped_last.join("\n")).unwrap();
    let err = w.gh.fails(&["audit", "verify", "--file", file.to_str().unwrap()]);
    assert!(err.contains("not the exported chain head"), "{err}");
    let csv = w.gh.ok(&["audit", "export", "--format", "csv"]);
    assert!(csv.starts_with("seq,id,at,") && csv.contains("# chain head"));

    // Editing a row in the database is detected and named.
    let seq: i64 =
        w.gh.sql("SELECT seq FROM audit_events WHERE action = 'ssh.connect' AND outcome = 'deny'").parse().unwrap();
    let reason = w.gh.sql(&format!("SELECT reason FROM audit_events WHERE seq = {seq}"));
    w.gh.sql(&format!("UPDATE audit_events SET reason = 'nothing to see' WHERE seq = {seq}"));
    let err = verify(&w.gh).unwrap_err();
    assert!(err.contains(&format!("event #{seq}")) && err.contains("edited"), "{err}");
    w.gh.sql(&format!("UPDATE audit_events SET reason = '{reason}' WHERE seq = {seq}"));
    verify(&w.gh).expect("restored row verifies again");

    // Reordering two rows is detected.
    let (a, b2) = (seq - 2, seq - 1);
    w.gh.sql(&format!("UPDATE audit_events SET seq = -1 WHERE seq = {a}"));
    w.gh.sql(&format!("UPDATE audit_events SET seq = {a} WHERE seq = {b2}"));
    w.gh.sql(&format!("UPDATE audit_events SET seq = {b2} WHERE seq = -1"));
    let err = verify(&w.gh).unwrap_err();
    assert!(err.contains(&format!("event #{a}")), "{err}");
    w.gh.sql(&format!("UPDATE audit_events SET seq = -1 WHERE seq = {a}"));
    w.gh.sql(&format!("UPDATE audit_events SET seq = {a} WHERE seq = {b2}"));
    w.gh.sql(&format!("UPDATE audit_events SET seq = {b2} WHERE seq = -1"));
    verify(&w.gh).expect("order restored");

    // Deleting a row is detected at the next one.
    w.gh.sql(&format!("DELETE FROM audit_events WHERE seq = {}", seq - 3));
    let err = verify(&w.gh).unwrap_err();
    assert!(err.contains(&format!("event #{}", seq - 2)) && err.contains("predecessor hash does not match"), "{err}");
}

fn crash_closes_sessions_and_keeps_every_event(b: Backend) {
    let mut w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let mut child = w
        .ssh(&format!("{login}@web-1"), &["-tt"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = eventually(Duration::from_secs(15), "live session", || {
        w.gh.json(&["sessions", "list", "--active"])
            .as_array()
            .unwrap()
            .first()
            .map(|s| s["id"].as_str().unwrap().to_string())
    });
    let rec = eventually(Duration::from_secs(15), "recording", || {
        w.gh.json(&["recordings", "list"]).as_array().unwrap().first().map(|r| r["path"].as_str().unwrap().to_string())
    });
    let mut stdin = child.stdin.take();
    use std::io::Write;
    stdin.as_mut().unwrap().write_all(b"echo before-the-crash-$((40+2))\n").unwrap();
    eventually(Duration::from_secs(10), "output recorded", || {
        std::fs::read_to_string(&rec).unwrap().contains("before-the-crash-42").then_some(())
    });
    let events_before: usize = w.gh.audit(&[]).len();
    w.gh.crash();
    // The recording is parseable line by line up to the crash.
    let text = std::fs::read_to_string(&rec).unwrap();
    for line in text.lines() {
        serde_json::from_str::<Value>(line).expect("every line of a crashed recording parses");
    }
    w.gh.restart().unwrap();
    let s =
        w.gh.json(&["sessions", "list"]).as_array().unwrap().iter().find(|s| s["id"] == id.as_str()).unwrap().clone();
    assert_eq!(s["end_reason"], "broker restarted");
    let events = w.gh.audit(&[]);
    assert!(
        events.len() > events_before,
        "nothing written before the crash was lost ({} vs {events_before})",
        events.len()
    );
    verify(&w.gh).expect("chain intact after a crash");
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
}

/// The key part of a public key line (type and base64), without its comment.
fn key_of(line: &str) -> String {
    line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn user_ca_rotation_keeps_old_targets_working_through_the_grace_period(b: Backend) {
    let mut w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "30m");
    let first = w.gh.user_ca();
    assert_eq!(first.lines().count(), 1);

    let out = w.gh.ok(&["ca", "rotate", "--grace", "1h"]);
    assert!(out.contains("stays trusted until"), "{out}");
    let lines: Vec<String> = w.gh.user_ca().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "both CAs are shown during the overlap: {lines:?}");
    assert_ne!(key_of(&lines[0]), key_of(&first), "the new CA comes first");
    assert_eq!(key_of(&lines[1]), key_of(&first), "the old CA is still listed");
    let rotated = w.gh.audit(&["--action", "ca.rotated"]);
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert_eq!(rotated[0]["outcome"], "allow");

    // web-1 still trusts only the old CA: sessions keep working.
    let r = run(w.ssh(&format!("{login}@web-1"), &["echo old-target"]));
    assert_eq!((r.code, r.stdout.trim()), (Some(0), "old-target"), "{}", r.stderr);
    // A target moved to the new CA alone works too.
    let sshd2 = Sshd::start(&lines[0]);
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
    w.grant("alice", "web-2", &login, "30m");
    let r = run(w.ssh(&format!("{login}@web-2"), &["echo new-target"]));
    assert_eq!((r.code, r.stdout.trim()), (Some(0), "new-target"), "{}", r.stderr);

    // The overlap survives a restart (the old CA is sealed with its grace end).
    w.gh.stop();
    w.gh.restart().unwrap();
    assert_eq!(
        w.gh.user_ca().lines().map(key_of).collect::<Vec<_>>(),
        lines.iter().map(|l| key_of(l)).collect::<Vec<_>>()
    );

    // Rotating again with no grace: only the newest CA is trusted, and a
    // target that still trusts only the first one is refused.
    w.gh.ok(&["ca", "rotate", "--grace", "0s"]);
    let now: Vec<String> = w.gh.user_ca().lines().map(str::to_string).collect();
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(!lines.iter().any(|l| key_of(l) == key_of(&now[0])));
    let r = run(w.ssh(&format!("{login}@web-1"), &["echo should-not-run"]));
    assert_ne!(r.code, Some(0));
    assert!(!r.stdout.contains("should-not-run"));
    // The sealed key files never hold a private key in clear.
    for entry in std::fs::read_dir(w.gh.data_dir.join("keys")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        assert!(!text.contains("PRIVATE KEY"));
    }
}
