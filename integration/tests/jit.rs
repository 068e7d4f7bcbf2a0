//! Just-in-time access with stock `ssh` and a real sshd target: requests and
//! approvals over the bastion's command interface, policy denials, the
//! in-terminal request flow, canary hosts and signed, retried webhooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use expectrl::{Expect, Regex};
use gatehouse_integration::*;
use serde_json::Value;

both_backends!(
    human_requests_and_an_approver_approves_over_ssh,
    two_approvers_needed_and_denials,
    policy_denials_say_why,
    interactive_request_flow_in_the_terminal,
    canary_hosts_trip_quietly,
    webhooks_are_signed_retried_and_recorded,
    webhook_outbox_survives_a_restart,
);

fn pending_ids(gh: &Gatehouse) -> Vec<String> {
    gh.json(&["access", "list", "--status", "pending"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// The request id a `request` command printed on its first line.
fn request_id(r: &Ran) -> String {
    let id = r.stdout.lines().next().unwrap_or("").trim().to_string();
    assert!(id.starts_with("a_") && id.len() == 18, "request printed its id first: {:?} {:?}", r.stdout, r.stderr);
    id
}

fn human_requests_and_an_approver_approves_over_ssh(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    let target = format!("{login}@web-1");
    let bob = w.add_user("bob", "approver");
    let carol = w.add_user("carol", "user");

    // No grant: the one-line denial of the core path is unchanged.
    let r = run(w.ssh(&target, &["true"]));
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stderr.trim(), "gatehouse: access denied: you have no grant for host web-1");

    // alice asks, and waits for the decision.
    let waiting = ssh(
        &w.gh,
        &w.key,
        "gatehouse",
        &["request", "web-1", "--login", &login, "--ttl", "30m", "--reason", "'deploy fix #7'", "--wait"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let id = eventually(Duration::from_secs(20), "a pending request", || pending_ids(&w.gh).into_iter().next());
    let req = w.gh.json(&["access", "show", &id]);
    assert_eq!(req["requester_name"], "alice");
    assert_eq!(req["reason"], "deploy fix #7");
    assert_eq!(req["ttl_seconds"], 1800);
    assert_eq!(req["approvals_required"], 1);

    // Nobody approves their own request; a plain user is no approver.
    let r = w.bastion_cmd(&w.key, &["approve", &id]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("you cannot approve or deny your own request"), "{}", r.stderr);
    let r = w.bastion_cmd(&carol, &["approve", &id]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("you are not an approver for this request"), "{}", r.stderr);
    let r = w.bastion_cmd(&carol, &["approvals"]);
    assert_eq!(r.stdout.trim(), "no pending requests you may decide");
    // Still pending: still no access.
    assert_eq!(run(w.ssh(&target, &["true"])).code, Some(1));

    // bob sees it and approves it, over SSH with his own key.
    let r = w.bastion_cmd(&bob, &["approvals"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains(&id) && r.stdout.contains("user alice wants") && r.stdout.contains("deploy fix #7"),
        "{}",
        r.stdout
    );
    let r = w.bastion_cmd(&bob, &["approve", &id, "--reason", "'go ahead'"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains(&format!("{id} is approved")), "{}", r.stdout);

    // alice's --wait saw the decision.
    let out = waiting.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with(&id), "{stdout}");
    assert!(stdout.contains("is pending: 0 of 1") && stdout.contains("is approved"), "{stdout}");

    // And she connects.
    let r = run(w.ssh(&target, &["echo granted-$((40+2))"]));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "granted-42\n");

    // The grant carries the approved TTL.
    let req = w.gh.json(&["access", "show", &id]);
    assert_eq!(req["status"], "approved");
    assert_eq!(req["decided_by"], "bob");
    let lasts = req["grant_expires_at"].as_i64().unwrap() - req["decided_at"].as_i64().unwrap();
    assert!((1_795_000..=1_805_000).contains(&lasts), "grant lasts 30 min: {lasts} ms");
    let grant = req["grant_id"].as_str().unwrap();
    let g = w.gh.json(&["grant", "list"]);
    let g = g.as_array().unwrap().iter().find(|g| g["id"] == grant).unwrap().clone();
    assert_eq!(g["subject_name"], "alice");
    assert_eq!(g["login"], login.as_str());
    assert_eq!(g["created_by"], "user:bob");

    // Everything is in the audit log with who, what and why.
    let ev = w.gh.audit(&[]);
    let find = |action: &str, actor: &str, outcome: &str| {
        ev.iter().find(|e| e["action"] == action && e["actor"] == actor && e["outcome"] == outcome).cloned()
    };
    let filed = find("access.request", "alice", "allow").expect("request audited");
    assert_eq!(filed["reason"], "deploy fix #7");
    assert_eq!(filed["details"]["request"], id.as_str());
    assert!(find("access.approve", "alice", "deny").unwrap()["reason"].as_str().unwrap().contains("own request"));
    assert!(find("access.approve", "carol", "deny").is_some());
    let ok = find("access.approve", "bob", "allow").expect("approval audited");
    assert_eq!(ok["reason"], "go ahead");
    assert_eq!(ok["details"]["status"], "approved");
    let gc = find("grant.create", "bob", "allow").expect("grant audited");
    assert_eq!(gc["details"]["request"], id.as_str());
    assert!(ev.iter().any(|e| e["action"] == "ssh.connect" && e["actor"] == "alice" && e["outcome"] == "allow"));
}

fn two_approvers_needed_and_denials(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    let target = format!("{login}@web-1");
    w.set_policy("staging", "approvals = 2\napprover_roles = [\"approver\"]\n");
    let bob = w.add_user("bob", "approver");
    let carol = w.add_user("carol", "approver");
    let dave = w.add_user("dave", "approver");
    let erin = w.add_user("erin", "admin");

    let r = w.bastion_cmd(&w.key, &["request", &format!("{login}@web-1"), "--reason", "upgrade"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let id = request_id(&r);
    assert!(r.stdout.contains("is pending: 0 of 2"), "{}", r.stdout);
    // erin is an admin, but this policy names the approver role only.
    let r = w.bastion_cmd(&erin, &["approve", &id]);
    assert!(r.stderr.contains("group staging needs roles [approver]"), "{}", r.stderr);

    // One of two: still pending, still no access.
    let r = w.bastion_cmd(&bob, &["approve", &id]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains(&format!("{id} is pending: 1 of 2")), "{}", r.stdout);
    let req = w.gh.json(&["access", "show", &id]);
    assert_eq!(req["status"], "pending");
    assert_eq!(req["approvals_given"], 1);
    assert_eq!(run(w.ssh(&target, &["true"])).code, Some(1));
    // The same approver twice is still one.
    let r = w.bastion_cmd(&bob, &["approve", &id]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("already decided"), "{}", r.stderr);
    // A second approver: granted.
    let r = w.bastion_cmd(&carol, &["approve", &id]);
    assert!(r.stdout.contains("is approved"), "{} {}", r.stdout, r.stderr);
    assert_eq!(w.gh.json(&["access", "show", &id])["decided_by"], "bob, carol");
    assert_eq!(run(w.ssh(&target, &["true"])).code, Some(0));

    // A denial needs a reason and ends the request.
    let r = w.bastion_cmd(&w.key, &["request", "web-1", "--login", "daemon", "--reason", "'look at logs'"]);
    let id2 = request_id(&r);
    let r = w.bastion_cmd(&dave, &["deny", &id2]);
    assert_eq!(r.code, Some(2), "clap refuses a deny without --reason");
    assert!(r.stderr.contains("--reason"), "{}", r.stderr);
    let r = w.bastion_cmd(&dave, &["deny", &id2, "--reason", "'not today'"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = w.bastion_cmd(&w.key, &["status", &id2]);
    assert_eq!(r.stdout.trim(), format!("{id2} was denied by dave: not today"));
    let r = w.bastion_cmd(&carol, &["approve", &id2]);
    assert!(r.stderr.contains("already denied"), "{}", r.stderr);
    let denied = w.gh.audit(&["--action", "access.deny"]);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["actor"], "dave");
    assert_eq!(denied[0]["reason"], "not today");

    // The admin counts as one approver (never the requester).
    let r = w.bastion_cmd(&w.key, &["request", "web-1", "--login", "nobody", "--reason", "check"]);
    let id3 = request_id(&r);
    let out = w.gh.ok(&["access", "approve", &id3, "--reason", "on call"]);
    assert!(out.contains("pending") && out.contains("1 of 2"), "{out}");
    let err = w.gh.fails(&["access", "approve", &id3]);
    assert!(err.contains("already decided"), "{err}");
    let r = w.bastion_cmd(&bob, &["approve", &id3]);
    assert!(r.stdout.contains("is approved"), "{}", r.stdout);
    assert_eq!(w.gh.json(&["access", "show", &id3])["decided_by"], "admin, bob");
    // The admin CLI denies with a reason too.
    let r = w.bastion_cmd(&w.key, &["request", "web-1", "--login", "sync", "--reason", "x"]);
    let id4 = request_id(&r);
    let err = w.gh.fails(&["access", "deny", &id4, "--reason", " "]);
    assert!(err.contains("give a reason"), "{err}");
    w.gh.ok(&["access", "deny", &id4, "--reason", "no"]);
    assert_eq!(w.gh.json(&["access", "show", &id4])["status"], "denied");
    let listed = w.gh.ok(&["access", "list"]);
    for id in [&id, &id2, &id3, &id4] {
        assert!(listed.contains(id.as_str()), "{listed}");
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn policy_denials_say_why(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    let ask = |reason: &str| {
        w.bastion_cmd(&w.key, &["request", "web-1", "--login", &login, "--reason", &format!("'{reason}'")])
    };

    // A time window that is certainly closed: a whole day, three days from today (UTC).
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let days_since_epoch = now.as_secs() / 86_400;
    let today = ((days_since_epoch + 3) % 7) as usize; // 1970-01-01 was a Thursday
    let other = (today + 3) % 7;
    w.set_policy(
        "staging",
        &format!(
            "approvals = 0\n[[window]]\ndays = [\"{}\"]\nstart = \"00:00\"\nend = \"24:00\"\ntime_zone = \"UTC\"\n",
            DAYS[other]
        ),
    );
    let r = ask("window");
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains(&format!(
            "access denied: outside the allowed time window for group staging ({} 00:00–24:00 UTC; it is {}",
            DAYS[other], DAYS[today]
        )),
        "{}",
        r.stderr
    );
    // policy test says the same, and allows at noon on the window's day.
    let out = w.gh.ok(&["policy", "test", "--user", "alice", "--host", "web-1", "--login", &login]);
    assert!(out.contains("decision: deny: outside the allowed time window"), "{out}");
    assert!(out.contains("policies of groups [staging] apply"), "{out}");
    let at = ((days_since_epoch + 3) * 86_400 + 12 * 3600) * 1000;
    let out =
        w.gh.ok(&["policy", "test", "--user", "alice", "--host", "web-1", "--login", &login, "--at", &at.to_string()]);
    assert!(out.contains("decision: allow"), "{out}");

    // Source networks: the tests connect from 127.0.0.1.
    w.set_policy("staging", "approvals = 0\nsource_cidrs = [\"10.0.0.0/8\"]\n");
    let r = ask("cidr");
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains(
            "access denied: your address 127.0.0.1 is not in the allowed networks for group staging (10.0.0.0/8)"
        ),
        "{}",
        r.stderr
    );
    let out =
        w.gh.ok(&["policy", "test", "--user", "alice", "--host", "web-1", "--login", &login, "--from", "10.1.2.3"]);
    assert!(out.contains("decision: allow"), "{out}");

    // Logins and TTL.
    w.set_policy("staging", "logins = [\"deploy\"]\nmax_ttl = \"2h\"\n");
    let r = ask("login");
    assert!(r.stderr.contains(&format!("login {login} is not allowed on web-1 (allowed: deploy)")), "{}", r.stderr);
    let r = w.bastion_cmd(&w.key, &["request", "deploy@web-1", "--ttl", "3h"]);
    assert!(r.stderr.contains("the requested TTL 3h exceeds the maximum of 2h for web-1"), "{}", r.stderr);

    // A rate cap: two requests an hour, the third is refused.
    w.set_policy("staging", "approvals = 0\n[rate_limit]\nrequests = 2\nper = \"1h\"\n");
    for i in 0..2 {
        let r = ask(&format!("rate {i}"));
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert!(r.stdout.contains("is approved"), "{}", r.stdout);
    }
    assert_eq!(run(w.ssh(&format!("{login}@web-1"), &["true"])).code, Some(0), "policy-approved grant works");
    let r = ask("rate 3");
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("rate limit reached: group staging allows 2 requests per 1h and you made 2"),
        "{}",
        r.stderr
    );

    // A policy file with a typo is refused with the key named.
    let bad = w.gh.dir.path().join("bad.toml");
    std::fs::write(&bad, "approvals = 1\nmax_tll = \"1h\"\n").unwrap();
    let err = w.gh.fails(&["policy", "set", "staging", "--file", bad.to_str().unwrap()]);
    assert!(err.contains("unknown field") && err.contains("max_tll"), "{err}");
    // show and list
    let shown = w.gh.ok(&["policy", "show", "staging"]);
    assert!(shown.contains("rate limit: 2 requests per 1h") && shown.contains("[rate_limit]"), "{shown}");
    let listed = w.gh.json(&["policy", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Every refusal is audited with its reason.
    let denies = w.gh.audit(&["--action", "access.request", "--outcome", "deny"]);
    for want in [
        "outside the allowed time window",
        "not in the allowed networks",
        "not allowed on web-1",
        "exceeds the maximum",
        "rate limit reached",
    ] {
        assert!(denies.iter().any(|e| e["reason"].as_str().unwrap().contains(want)), "{want}: {denies:#?}");
    }
    assert!(w.gh.audit(&["--action", "policy.set"]).len() >= 4);
}

fn interactive_request_flow_in_the_terminal(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    let bob = w.add_user("bob", "approver");
    let mut cmd = w.ssh(&format!("{login}@web-1"), &[]);
    cmd.arg("-tt").env("TERM", "xterm").env("LANG", "C.UTF-8");
    let mut p = expectrl::Session::spawn(cmd).expect("spawn ssh in a pty");
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.expect("you have no grant for host web-1").unwrap();
    p.expect("(1 approval from roles [approver, admin])").unwrap();
    p.expect("Reason (Enter to send, Ctrl-C to cancel): ").unwrap();
    // Typed with a correction.
    p.send("incident 4").unwrap();
    p.send("3\x7f2").unwrap();
    p.send("\r").unwrap();
    let found = p.expect(Regex("request (a_[0-9a-f]{16}) filed")).unwrap();
    let id = String::from_utf8_lossy(found.get(1).unwrap()).to_string();
    p.expect("waiting").unwrap();
    let req = w.gh.json(&["access", "show", &id]);
    assert_eq!(req["reason"], "incident 42");
    assert_eq!(req["status"], "pending");

    // Approved from another ssh process: the session continues.
    let r = w.bastion_cmd(&bob, &["approve", &id]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    p.expect(format!("{id} is approved")).unwrap();
    p.send_line("echo JIT-$((40+2))").unwrap();
    p.expect("JIT-42").unwrap();
    p.send_line("exit 0").unwrap();
    p.expect(expectrl::Eof).unwrap();

    // It was an ordinary, recorded session on the approved grant.
    let grant = w.gh.json(&["access", "show", &id])["grant_id"].as_str().unwrap().to_string();
    let s = eventually(Duration::from_secs(10), "session closed", || {
        w.gh.json(&["sessions", "list"]).as_array().unwrap().iter().find(|s| s["ended_at"].is_i64()).cloned()
    });
    assert_eq!(s["grant_id"], grant.as_str());
    let text = std::fs::read_to_string(s["recording_path"].as_str().unwrap()).unwrap();
    assert!(text.contains("JIT-42"), "the session after approval is recorded");

    // Ctrl-C while waiting withdraws the request.
    let mut cmd = w.ssh("daemon@web-1", &[]);
    cmd.arg("-tt").env("TERM", "xterm");
    let mut p = expectrl::Session::spawn(cmd).unwrap();
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.expect("Reason").unwrap();
    p.send("just looking\r").unwrap();
    let found = p.expect(Regex("request (a_[0-9a-f]{16}) filed")).unwrap();
    let id2 = String::from_utf8_lossy(found.get(1).unwrap()).to_string();
    p.expect("waiting").unwrap();
    p.send("\x03").unwrap();
    p.expect(format!("request {id2} cancelled")).unwrap();
    p.expect(expectrl::Eof).unwrap();
    assert_eq!(w.gh.json(&["access", "show", &id2])["status"], "cancelled");

    // Exec without a grant keeps the one-line denial, and files nothing.
    let r = run(w.ssh("daemon@web-1", &["true"]));
    assert_eq!(
        r.stderr.trim(),
        format!("gatehouse: access denied: your grant for web-1 allows login {login}, not daemon")
    );
    assert!(pending_ids(&w.gh).is_empty());
}

fn canary_hosts_trip_quietly(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    let hook = HookServer::start(&[]);
    let secret = "canary-signing-secret-0123456789";
    let secret_file = w.gh.dir.path().join("hook.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    w.gh.ok(&[
        "webhook",
        "add",
        &hook.url(),
        "--events",
        "canary.tripped",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ]);
    w.gh.ok(&[
        "host",
        "add",
        "honey-1",
        "--address",
        &w.sshd.address(),
        "--group",
        "honeypot",
        "--host-key",
        w.sshd.host_key_pub.to_str().unwrap(),
    ]);
    w.set_policy("honeypot", "canary = true\n");

    // A request names it: the same words as a host that does not exist.
    let canary = w.bastion_cmd(&w.key, &["request", "honey-1", "--login", &login, "--reason", "x"]);
    let unknown = w.bastion_cmd(&w.key, &["request", "nope-9", "--login", &login, "--reason", "x"]);
    assert_eq!(canary.code, Some(1));
    assert_eq!(canary.code, unknown.code);
    assert_eq!(canary.stderr.trim(), "gatehouse: access denied: you may not request access to host honey-1");
    assert_eq!(canary.stderr.replace("honey-1", "H"), unknown.stderr.replace("nope-9", "H"));

    // A connection names it — even with an admin-made grant it goes nowhere.
    w.grant("alice", "honey-1", &login, "10m");
    let marker = w.sshd.dir.path().join("canary-ran");
    let r = run(w.ssh(&format!("{login}@honey-1"), &[&format!("touch {}", marker.display())]));
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stderr.trim(), "gatehouse: access denied: you have no grant for host honey-1");
    assert!(!marker.exists());
    let r = run(w.ssh(&format!("{login}@nope-9"), &["true"]));
    assert_eq!(r.stderr.trim(), "gatehouse: access denied: you have no grant for host nope-9");
    // An interactive connection is not offered a request either.
    let mut cmd = w.ssh(&format!("{login}@honey-1"), &[]);
    cmd.arg("-tt");
    let mut p = expectrl::Session::spawn(cmd).unwrap();
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.expect("access denied: you have no grant for host honey-1").unwrap();
    p.expect(expectrl::Eof).unwrap();
    assert!(
        !w.gh.json(&["sessions", "list"]).as_array().unwrap().iter().any(|s| s["host_name"] == "honey-1"),
        "no session to a canary"
    );

    // Critical audit events name who and how.
    let trips = w.gh.audit(&["--action", "canary.tripped"]);
    assert!(trips.len() >= 3, "{trips:#?}");
    for t in &trips {
        assert_eq!(t["severity"], "critical");
        assert_eq!(t["outcome"], "deny");
        assert_eq!(t["actor"], "alice");
    }
    let via: Vec<&str> = trips.iter().map(|t| t["details"]["via"].as_str().unwrap()).collect();
    assert!(via.contains(&"access.request") && via.contains(&"ssh.connect"), "{via:?}");
    // The admin's dry run says what it is.
    let out = w.gh.ok(&["policy", "test", "--user", "alice", "--host", "honey-1", "--login", &login]);
    assert!(out.contains("(canary host)") && out.contains("is a canary"), "{out}");

    // And the alarm arrives, signed.
    let got = hook.wait_for("canary.tripped", 3, Duration::from_secs(20));
    for g in &got {
        verify_signature(secret.as_bytes(), g.header("x-gatehouse-signature").unwrap(), &g.body).unwrap();
        let body = g.json();
        assert_eq!(body["event"], "canary.tripped");
        assert!(body["text"].as_str().unwrap().contains("CANARY TRIPPED: user alice"), "{body}");
        assert_eq!(body["data"]["host"], "honey-1");
    }
}

fn webhooks_are_signed_retried_and_recorded(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    let hook = HookServer::start(&[500]);
    let dead = HookServer::hanging();
    let secret = "whsec-0123456789abcdef-do-not-log";
    let secret_file = w.gh.dir.path().join("hook.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let out = w.gh.ok(&[
        "webhook",
        "add",
        &hook.url(),
        "--events",
        "access.requested,access.approved,session.started,session.ended",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ]);
    let hook_id = out.split_whitespace().next().unwrap().to_string();
    assert!(out.contains("(signed)"), "{out}");
    let out = w.gh.ok(&["webhook", "add", &dead.url(), "--events", "*"]);
    let dead_id = out.split_whitespace().next().unwrap().to_string();
    let err = w.gh.fails(&["webhook", "add", "ftp://example.com/x", "--events", "*"]);
    assert!(err.contains("only http and https"), "{err}");
    let err = w.gh.fails(&["webhook", "add", &hook.url(), "--events", "access.requsted"]);
    assert!(err.contains("unknown event"), "{err}");

    // A hanging endpoint never slows a decision.
    let started = Instant::now();
    let r = w.bastion_cmd(&w.key, &["request", "web-1", "--login", &login, "--reason", "'needs review'"]);
    let took = started.elapsed();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(took < Duration::from_secs(4), "the request took {took:?}");
    let id = request_id(&r);

    // The first delivery gets a 500, the retry a 200: same body, both signed.
    let got = hook.wait_for("access.requested", 2, Duration::from_secs(20));
    assert_eq!(got[0].answered, 500);
    assert_eq!(got[1].answered, 200);
    assert_eq!(got[0].body, got[1].body);
    for g in &got[..2] {
        verify_signature(secret.as_bytes(), g.header("x-gatehouse-signature").unwrap(), &g.body).unwrap();
        assert_eq!(g.header("content-type"), Some("application/json"));
    }
    assert!(
        verify_signature(b"the wrong secret, sixteen+", got[1].header("x-gatehouse-signature").unwrap(), &got[1].body)
            .is_err()
    );
    let body = got[1].json();
    assert!(body["text"].as_str().unwrap().contains(&format!("user alice requests {login}@web-1")), "{body}");
    assert_eq!(body["data"]["request_id"], id.as_str());
    assert_eq!(body["data"]["reason"], "needs review");

    // Both attempts are recorded and listable.
    let d = eventually(Duration::from_secs(10), "delivery marked delivered", || {
        let d = w.gh.json(&["webhook", "deliveries", &hook_id]);
        let first = d.as_array().unwrap().first().cloned()?;
        (first["status"] == "delivered").then_some(first)
    });
    assert_eq!(d["event"], "access.requested");
    assert_eq!(d["attempts"], 2);
    let log: Vec<Value> = d["attempt_log"].as_array().unwrap().clone();
    assert_eq!(log[0]["http_status"], 500);
    assert_eq!(log[0]["error"], "HTTP 500 Internal Server Error");
    assert_eq!(log[1]["http_status"], 200);
    assert!(log[1]["at"].as_i64().unwrap() - log[0]["at"].as_i64().unwrap() >= 900, "retried after the backoff");
    let table = w.gh.ok(&["webhook", "deliveries", &hook_id]);
    assert!(table.contains("500") && table.contains("200") && table.contains("delivered"), "{table}");

    // The hanging endpoint's attempt times out and is recorded too.
    eventually(Duration::from_secs(20), "timeout recorded", || {
        let d = w.gh.json(&["webhook", "deliveries", &dead_id]);
        d.as_array()
            .unwrap()
            .iter()
            .find(|x| x["last_error"].as_str().is_some_and(|e| e.contains("timed out")))
            .cloned()
    });
    assert!(!dead.received().is_empty());

    // The secret never shows.
    let listed = w.gh.ok(&["webhook", "list", "--json"]);
    assert!(!listed.contains(secret));
    let hooks: Value = serde_json::from_str(&listed).unwrap();
    assert!(hooks.as_array().unwrap().iter().any(|h| h["id"] == hook_id.as_str() && h["secret_set"] == true));
    assert!(!w.gh.log_text().contains(secret));
    assert!(!w.gh.ok(&["audit", "--format", "json"]).contains(secret));

    // Approval is announced as well; removal stops deliveries.
    let bob = w.add_user("bob", "approver");
    w.bastion_cmd(&bob, &["approve", &id]);
    let got = hook.wait_for("access.approved", 1, Duration::from_secs(20));
    assert!(got[0].json()["text"].as_str().unwrap().contains("approved by bob"));
    // Sessions are announced when they start and end.
    let r = run(w.ssh(&format!("{login}@web-1"), &["exit 3"]));
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    let started = hook.wait_for("session.started", 1, Duration::from_secs(20));
    let ended = hook.wait_for("session.ended", 1, Duration::from_secs(20));
    let (s, e) = (started[0].json(), ended[0].json());
    assert_eq!(s["data"]["subject"], "alice");
    assert_eq!(s["data"]["host"], "web-1");
    assert_eq!(s["data"]["session_id"], e["data"]["session_id"]);
    assert_eq!(e["data"]["exit_status"], 3);
    w.gh.ok(&["webhook", "remove", &hook_id]);
    let err = w.gh.fails(&["webhook", "remove", &hook_id]);
    assert!(err.contains("already removed"), "{err}");
    let before = hook.received().len();
    w.bastion_cmd(&w.key, &["request", "web-1", "--login", "daemon", "--reason", "x"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(hook.received().len(), before, "a removed webhook gets nothing");
}

fn webhook_outbox_survives_a_restart(b: Backend) {
    let mut w = World::new(b);
    let login = local_login();
    // Nothing listens there yet.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let out = w.gh.ok(&["webhook", "add", &url, "--events", "access.requested"]);
    let hook_id = out.split_whitespace().next().unwrap().to_string();
    let r = w.bastion_cmd(&w.key, &["request", "web-1", "--login", &login, "--reason", "'after restart'"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    eventually(Duration::from_secs(10), "a failed attempt", || {
        let d = w.gh.json(&["webhook", "deliveries", &hook_id]);
        d.as_array().unwrap().first().filter(|d| d["attempts"].as_i64() >= Some(1)).cloned()
    });
    assert!(w.gh.stop().unwrap().success());
    let hook = HookServer::start_on(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(), &[], false);
    w.gh.restart().unwrap();
    let got = hook.wait_for("access.requested", 1, Duration::from_secs(30));
    assert_eq!(got[0].json()["data"]["reason"], "after restart");
    assert!(got[0].header("x-gatehouse-signature").is_none(), "no secret, no signature");
    let d = eventually(Duration::from_secs(10), "delivered after the restart", || {
        let d = w.gh.json(&["webhook", "deliveries", &hook_id]);
        d.as_array().unwrap().first().filter(|d| d["status"] == "delivered").cloned()
    });
    assert!(d["attempts"].as_i64().unwrap() >= 2);
    assert_eq!(d["attempt_log"][0]["error"], "could not connect");
}

#[test]
fn hmac_helper_matches_rfc4231() {
    // RFC 4231 test cases 2 and 6 (a key longer than the block).
    assert_eq!(
        hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hmac_sha256_hex(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First"),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}
