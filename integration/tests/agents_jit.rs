//! Agents and just-in-time access, through the official Python MCP SDK:
//! pending → approved → exec, denials as tool errors, action approvals,
//! temporary elevation, canaries; and the renewal bot's certificate flow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_integration::*;
use serde_json::{Value, json};

both_backends!(
    agent_session_waits_for_a_human_then_runs,
    agent_action_approvals_and_denials,
    elevation_widens_groups_for_its_ttl_only,
    canary_trips_on_an_agent_call,
    renewal_bot_flow_over_mcp,
);

/// web-1 (staging, no policy: the default needs one approval), an approver.
fn world(b: Backend) -> (World, UserKey) {
    let w = World::new(b);
    let carol = w.add_user("carol", "approver");
    (w, carol)
}

fn agent_session_waits_for_a_human_then_runs(b: Backend) {
    let (w, carol) = world(b);
    let login = local_login();
    let token = agent_with_token(&w.gh, "ops-bot", "host:read,ssh_session:request,approval:request", "staging", &[]);
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_list_allowed_hosts", json!({})),
            mcp_call(
                "gatehouse_request_ssh_session",
                json!({"host": "web-1", "login": login, "reason": "rotate logs", "ttl_seconds": 600})
            ),
        ]),
    );
    assert_eq!(mcp_result(&r, 0)["structured"]["hosts"][0]["allowed_logins"], json!(["*"]));
    let pending = &mcp_result(&r, 1)["structured"];
    assert_eq!(pending["status"], "pending_approval", "{r}");
    assert!(pending["session_id"].is_null());
    let approval = pending["approval_id"].as_str().unwrap().to_string();
    assert!(pending["needs"].as_str().unwrap().contains("approval"));
    // Still pending; the agent has no way to approve.
    let r = mcp_http(&w.gh, &token, &[], json!([mcp_call("gatehouse_get_approval", json!({"approval_id": approval}))]));
    assert_eq!(mcp_result(&r, 0)["structured"]["status"], "pending");
    // A human approves over SSH with the key they already use.
    let out = w.bastion_cmd(&carol, &["approve", &approval]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let r = mcp_http(&w.gh, &token, &[], json!([mcp_call("gatehouse_get_approval", json!({"approval_id": approval}))]));
    let st = &mcp_result(&r, 0)["structured"];
    assert_eq!(st["status"], "approved", "{r}");
    assert_eq!(st["decided_by"], "carol");
    let sid = st["session_id"].as_str().expect("approval opened the session").to_string();
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_ssh_exec", json!({"session_id": sid, "command": "uname -n"})),
            mcp_call("gatehouse_get_approval", json!({"approval_id": approval})),
        ]),
    );
    assert_eq!(mcp_result(&r, 0)["structured"]["stdout"], format!("{}\n", hostname()), "{r}");
    assert_eq!(mcp_result(&r, 1)["structured"]["session_id"], sid.as_str(), "reading again returns the same session");
    // A denied request is a tool error with the reason.
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([mcp_call(
            "gatehouse_request_ssh_session",
            json!({"host": "web-1", "login": "daemon", "reason": "look around"})
        )]),
    );
    let second = mcp_result(&r, 0)["structured"]["approval_id"].as_str().unwrap().to_string();
    let out = w.bastion_cmd(&carol, &["deny", &second, "--reason", "'not needed'"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let r = mcp_http(&w.gh, &token, &[], json!([mcp_call("gatehouse_get_approval", json!({"approval_id": second}))]));
    assert_eq!(mcp_result(&r, 0)["structured"]["status"], "denied");
    assert_eq!(mcp_result(&r, 0)["structured"]["decision_reason"], "not needed");
    // Policy that keeps agents out: a plain denial, audited as AI_AGENT_POLICY_DENIED.
    w.set_policy("staging", "agents = false\n");
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([mcp_call("gatehouse_request_ssh_session", json!({"host": "web-1", "login": login, "reason": "again"}))]),
    );
    let res = mcp_result(&r, 0);
    assert_eq!(res["is_error"], true, "{r}");
    assert!(res["text"].as_str().unwrap().starts_with("Access denied."), "{res}");
    let ev = w.gh.audit(&["--agent", "ops-bot", "--action", "AI_AGENT_POLICY_DENIED"]);
    assert!(!ev.is_empty());
}

fn agent_action_approvals_and_denials(b: Backend) {
    let (w, _carol) = world(b);
    let hook = HookServer::start(&[200, 200, 200, 200]);
    w.gh.ok(&[
        "webhook",
        "add",
        &hook.url(),
        "--events",
        "access.requested,access.approved,access.denied,agent.policy_denied",
    ]);
    let token = agent_with_token(&w.gh, "deployer", "approval:request", "staging", &[]);
    let other = agent_with_token(&w.gh, "other", "approval:request", "staging", &[]);
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call(
                "gatehouse_request_approval",
                json!({"action": "reload nginx", "resource": "web-1", "reason": "new certificate"})
            ),
            mcp_call(
                "gatehouse_request_approval",
                json!({"action": "drop database", "resource": "db-1", "reason": "cleanup"})
            ),
            mcp_call("gatehouse_request_approval", json!({"action": "x", "resource": "y", "reason": ""})),
        ]),
    );
    let a1 = mcp_result(&r, 0)["structured"]["approval_id"].as_str().unwrap().to_string();
    let a2 = mcp_result(&r, 1)["structured"]["approval_id"].as_str().unwrap().to_string();
    assert_eq!(mcp_result(&r, 0)["structured"]["status"], "pending");
    assert_eq!(mcp_result(&r, 2)["rpc_error"]["code"], -32602, "empty reason is malformed");
    let list = w.gh.ok(&["approvals", "list"]);
    assert!(list.contains(&a1) && list.contains("reload nginx on web-1"), "{list}");
    w.gh.ok(&["approvals", "approve", &a1]);
    let err = w.gh.fails(&["approvals", "deny", &a2]);
    assert!(err.contains("reason"), "{err}");
    w.gh.ok(&["approvals", "deny", &a2, "--reason", "never in business hours"]);
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_get_approval", json!({"approval_id": a1})),
            mcp_call("gatehouse_get_approval", json!({"approval_id": a2})),
        ]),
    );
    assert_eq!(mcp_result(&r, 0)["structured"]["status"], "approved");
    assert_eq!(mcp_result(&r, 1)["structured"]["status"], "denied");
    assert_eq!(mcp_result(&r, 1)["structured"]["decision_reason"], "never in business hours");
    // Another agent cannot read (or approve) it.
    let r = mcp_http(&w.gh, &other, &[], json!([mcp_call("gatehouse_get_approval", json!({"approval_id": a1}))]));
    assert_eq!(mcp_result(&r, 0)["is_error"], true);
    // Deciding twice is refused; the log names who asked and who decided.
    assert!(w.gh.fails(&["approvals", "approve", &a1]).contains("already approved"));
    assert_eq!(w.gh.audit(&["--action", "approval.request"]).len(), 2);
    assert_eq!(w.gh.audit(&["--action", "approval.approve"]).len(), 1);
    let hooks = hook.wait_for("access.requested", 2, Duration::from_secs(20));
    assert!(hooks.iter().any(|h| h.json()["text"].as_str().unwrap().contains("reload nginx")));
    hook.wait_for("access.approved", 1, Duration::from_secs(20));
    hook.wait_for("agent.policy_denied", 1, Duration::from_secs(20));
}

fn elevation_widens_groups_for_its_ttl_only(b: Backend) {
    let (w, carol) = world(b);
    let login = local_login();
    w.gh.ok(&[
        "host",
        "add",
        "db-1",
        "--address",
        &w.sshd.address(),
        "--group",
        "prod",
        "--host-key",
        w.sshd.host_key_pub.to_str().unwrap(),
    ]);
    let token = agent_with_token(&w.gh, "responder", "host:read,ssh_session:request,approval:request", "staging", &[]);
    // Without elevation prod is out of scope.
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_request_ssh_session", json!({"host": "db-1", "login": login, "reason": "incident 42"})),
            mcp_call(
                "gatehouse_request_ssh_session",
                json!({"host": "db-1", "login": login, "reason": "incident 42", "ttl_seconds": 25, "elevate_groups": ["prod"]})
            ),
        ]),
    );
    assert_eq!(mcp_result(&r, 0)["text"], "Access denied. Token is scoped to groups [staging], host db-1 is in [prod]");
    let approval =
        mcp_result(&r, 1)["structured"]["approval_id"].as_str().expect("elevation needs a human").to_string();
    assert_eq!(w.bastion_cmd(&carol, &["approve", &approval]).code, Some(0));
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_get_approval", json!({"approval_id": approval})),
            mcp_call("gatehouse_list_allowed_hosts", json!({}))
        ]),
    );
    let sid = mcp_result(&r, 0)["structured"]["session_id"].as_str().unwrap().to_string();
    let hosts: Vec<String> = mcp_result(&r, 1)["structured"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert!(hosts.contains(&"db-1".to_string()), "elevated into prod: {hosts:?}");
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([mcp_call("gatehouse_ssh_exec", json!({"session_id": sid, "command": "echo in-prod"}))]),
    );
    assert_eq!(mcp_result(&r, 0)["structured"]["stdout"], "in-prod\n");
    assert!(!w.gh.audit(&["--action", "agent.elevation.start"]).is_empty());
    // The TTL passes: the elevation reverts (audited) and the session ends.
    eventually(Duration::from_secs(60), "elevation end audited", || {
        (!w.gh.audit(&["--action", "agent.elevation.end"]).is_empty()).then_some(())
    });
    let r = mcp_http(&w.gh, &token, &[], json!([mcp_call("gatehouse_list_allowed_hosts", json!({}))]));
    let hosts = mcp_result(&r, 0)["structured"]["hosts"].as_array().unwrap().clone();
    assert!(hosts.iter().all(|h| h["name"] != "db-1"), "elevation reverted: {hosts:?}");
    let s = eventually(Duration::from_secs(30), "session ended", || {
        w.gh.json(&["sessions", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == sid.as_str() && s["ended_at"].is_i64())
            .cloned()
    });
    assert_eq!(s["end_reason"], "grant expired");
}

fn canary_trips_on_an_agent_call(b: Backend) {
    let (w, _carol) = world(b);
    let hook = HookServer::start(&[200, 200]);
    w.gh.ok(&["webhook", "add", &hook.url(), "--events", "canary.tripped"]);
    w.gh.ok(&[
        "host",
        "add",
        "vault-1",
        "--address",
        &w.sshd.address(),
        "--group",
        "staging",
        "--group",
        "honeypot",
        "--host-key",
        w.sshd.host_key_pub.to_str().unwrap(),
    ]);
    w.set_policy("honeypot", "canary = true\n");
    let token = agent_with_token(&w.gh, "curious", "host:read,ssh_session:request", "staging", &[]);
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_list_allowed_hosts", json!({})),
            mcp_call(
                "gatehouse_request_ssh_session",
                json!({"host": "vault-1", "login": "root", "reason": "the prompt said so"})
            ),
            mcp_call(
                "gatehouse_request_ssh_session",
                json!({"host": "nonexistent-9", "login": "root", "reason": "the prompt said so"})
            ),
        ]),
    );
    let hosts = mcp_result(&r, 0)["structured"]["hosts"].as_array().unwrap().clone();
    assert!(hosts.iter().all(|h| h["name"] != "vault-1"), "canaries are not advertised");
    let canary = mcp_result(&r, 1)["text"].as_str().unwrap().to_string();
    let missing = mcp_result(&r, 2)["text"].as_str().unwrap().to_string();
    assert_eq!(
        canary.replace("vault-1", "X"),
        missing.replace("nonexistent-9", "X"),
        "a canary reads like any other denial"
    );
    let crit = w.gh.audit(&["--action", "canary.tripped"]);
    assert_eq!(crit.len(), 1);
    assert_eq!(crit[0]["severity"], "critical");
    assert_eq!(crit[0]["actor"], "curious");
    let got = hook.wait_for("canary.tripped", 1, Duration::from_secs(20));
    assert!(got[0].json()["text"].as_str().unwrap().contains("vault-1"));
}

/// A fresh key and CSR, made where the bot runs; the key never leaves it.
fn csr(dir: &Path, stem: &str, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{stem}.key"));
    let csr = dir.join(format!("{stem}.csr"));
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        &format!("subjectAltName=DNS:{name}"),
    ]);
    (key, std::fs::read_to_string(csr).unwrap())
}

fn write_bundle(dir: &Path, b: &Value) -> (PathBuf, PathBuf) {
    let leaf = dir.join("leaf.pem");
    let chain = dir.join("chain.pem");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&leaf, b["leaf_pem"].as_str().unwrap()).unwrap();
    std::fs::write(&chain, b["chain_pem"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("root.pem"), b["root_pem"].as_str().unwrap()).unwrap();
    (leaf, chain)
}

fn renewal_bot_flow_over_mcp(b: Backend) {
    let gh = Gatehouse::start(b);
    gh.ok(&["user", "add", "alice"]);
    gh.ok(&["pki", "allow", "edge", "--domain", "*.edge.example.com"]);
    gh.ok(&["host", "add", "edge-1", "--address", "127.0.0.1:22", "--group", "edge", "--trust-host-ca"]);
    let token = agent_with_token(
        &gh,
        "renewal-bot",
        "certificate:read,certificate:request,probe:create,probe:read",
        "edge",
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = "www.edge.example.com";
    // An existing certificate that expires in two days.
    let (key1, csr1) = csr(d, "old", name);
    let r = mcp_http(
        &gh,
        &token,
        &[],
        json!([mcp_call("gatehouse_request_certificate", json!({"name": name, "csr_pem": csr1, "ttl_days": 2}))]),
    );
    let old = mcp_result(&r, 0)["structured"].clone();
    assert_eq!(old["status"], "valid", "{r}");
    let (leaf1, chain1) = write_bundle(&d.join("old"), &old);
    let port = free_port();
    let server = TlsServer::start(port, &leaf1, &chain1, &key1);
    // 1. list what expires soon; 2. send a fresh CSR; 3. fetch the bundle.
    let (key2, csr2) = csr(d, "new", name);
    let (_key3, csr3) = csr(d, "foreign", "www.prod.example.com");
    let r = mcp_http(
        &gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_list_certificates", json!({"expiring_within_days": 30})),
            mcp_call("gatehouse_request_certificate", json!({"name": name, "csr_pem": csr2, "ttl_days": 30})),
            mcp_call("gatehouse_get_certificate", json!({"name": name})),
            mcp_call(
                "gatehouse_create_probe",
                json!({"target": format!("edge-1:{port}"), "kind": "tls", "expect_certificate_name": name})
            ),
            mcp_call("gatehouse_request_certificate", json!({"name": "www.prod.example.com", "csr_pem": csr3})),
            mcp_call(
                "gatehouse_request_certificate",
                json!({"name": name, "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n"})
            ),
            mcp_call("gatehouse_create_probe", json!({"target": "169.254.169.254:80", "kind": "https"})),
            mcp_call("gatehouse_create_probe", json!({"target": format!("127.0.0.2:{port}"), "kind": "tls"})),
        ]),
    );
    let expiring = mcp_result(&r, 0)["structured"]["certificates"].as_array().unwrap().clone();
    assert!(expiring.iter().any(|c| c["serial"] == old["serial"]), "the old one is listed as expiring: {expiring:?}");
    let new = mcp_result(&r, 1)["structured"].clone();
    assert_ne!(new["fingerprint_sha256"], old["fingerprint_sha256"]);
    assert_eq!(mcp_result(&r, 2)["structured"]["serial"], new["serial"], "get returns the latest bundle");
    // The probe still sees the old certificate being served.
    let probe = &mcp_result(&r, 3)["structured"];
    assert_eq!(probe["status"], "ok", "{probe}");
    assert_eq!(probe["observed"]["certificate"]["fingerprint_sha256"], old["fingerprint_sha256"]);
    assert_eq!(probe["observed"]["matches_latest_bundle"], false);
    let refused = mcp_result(&r, 4);
    assert_eq!(refused["is_error"], true);
    assert!(refused["text"].as_str().unwrap().starts_with("Access denied."), "{refused}");
    assert_eq!(mcp_result(&r, 5)["is_error"], true, "garbage CSR refused");
    for i in [6, 7] {
        let p = mcp_result(&r, i);
        assert_eq!(p["is_error"], true, "probe {i} refused: {p}");
    }
    // openssl agrees the new bundle chains to the root.
    let (leaf2, chain2) = write_bundle(&d.join("new"), &new);
    openssl_ok(&[
        "verify",
        "-CAfile",
        d.join("new/root.pem").to_str().unwrap(),
        "-untrusted",
        chain2.to_str().unwrap(),
        leaf2.to_str().unwrap(),
    ]);
    // The endpoint starts serving the new bundle; the probe confirms it.
    drop(server);
    let _server = TlsServer::start(port, &leaf2, &chain2, &key2);
    let r = mcp_http(
        &gh,
        &token,
        &[],
        json!([mcp_call(
            "gatehouse_create_probe",
            json!({"target": format!("edge-1:{port}"), "kind": "tls", "expect_certificate_name": name})
        )]),
    );
    let probe = &mcp_result(&r, 0)["structured"];
    assert_eq!(probe["observed"]["certificate"]["fingerprint_sha256"], new["fingerprint_sha256"], "{probe}");
    assert_eq!(probe["observed"]["matches_latest_bundle"], true);
    let id = probe["probe_id"].as_str().unwrap();
    let r = mcp_http(&gh, &token, &[], json!([mcp_call("gatehouse_get_probe", json!({"probe_id": id}))]));
    assert_eq!(mcp_result(&r, 0)["structured"]["observed"]["matches_latest_bundle"], true);
    // No private key material anywhere: responses, log, database.
    let log = gh.log_text();
    for key in [&key1, &key2] {
        let body: String = std::fs::read_to_string(key).unwrap().lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!log.contains(&body[..40]));
        assert!(!r.to_string().contains(&body[..40]));
    }
    assert!(!log.contains("PRIVATE KEY"));
    let denials = gh.audit(&["--agent", "renewal-bot", "--action", "AI_AGENT_POLICY_DENIED"]);
    assert!(denials.len() >= 3, "{denials:#?}");
}
