//! The MCP front door, driven by the official Python MCP SDK over
//! streamable HTTP and through `gatehouse mcp stdio`, against a real sshd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_integration::*;
use serde_json::{Value, json};

both_backends!(
    agent_flow_over_streamable_http,
    refused_credentials_get_401,
    http_edges_of_the_mcp_endpoint,
    agent_suspended_mid_session_loses_it_within_a_second,
    every_tool_is_refused_without_its_scope,
    stdio_bridge_signs_every_call,
    agent_lifecycle_and_token_listing,
);

const FULL: &str = "host:read,ssh_session:request,approval:request,audit:read,audit:write";

/// World + a prod host `db-1` on the same sshd; staging lets agents in
/// without a human approval (prod keeps the default: approval needed).
fn world(b: Backend) -> World {
    let w = World::new(b);
    w.set_policy("staging", "approvals = 0\n");
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
    w
}

fn tool_names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> =
        list["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn agent_flow_over_streamable_http(b: Backend) {
    let w = world(b);
    let login = local_login();
    let token = agent_with_token(&w.gh, "cursor-ops", "host:read,ssh_session:request,audit:read", "staging", &[]);
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            {"op": "list_tools"},
            mcp_call("gatehouse_whoami", json!({})),
            mcp_call("gatehouse_list_allowed_hosts", json!({})),
            mcp_call("gatehouse_request_ssh_session", json!({"host": "web-1", "login": login, "ttl_seconds": 600, "reason": "debug the login test"})),
        ]),
    );
    assert_eq!(r["protocol_version"], "2025-11-25", "{r}");
    let names = tool_names(mcp_result(&r, 0));
    assert_eq!(
        names,
        [
            "gatehouse_close_ssh_session",
            "gatehouse_list_allowed_hosts",
            "gatehouse_list_allowed_resources",
            "gatehouse_query_audit",
            "gatehouse_request_ssh_session",
            "gatehouse_ssh_exec",
            "gatehouse_whoami"
        ],
        "tools/list matches the token's scopes"
    );
    let tools = mcp_result(&r, 0)["tools"].as_array().unwrap();
    let ann = |n: &str| tools.iter().find(|t| t["name"] == n).unwrap()["annotations"].clone();
    assert_eq!(ann("gatehouse_whoami")["readOnlyHint"], true);
    assert_eq!(ann("gatehouse_ssh_exec")["destructiveHint"], true);
    assert_eq!(ann("gatehouse_ssh_exec")["readOnlyHint"], false);
    for t in tools {
        assert_eq!(t["input_schema"]["type"], "object", "{t}");
        assert_eq!(t["output_schema"]["type"], "object", "{t}");
    }
    let who = &mcp_result(&r, 1)["structured"];
    assert_eq!(who["agent"], "cursor-ops");
    assert_eq!(who["owner"], "alice");
    assert_eq!(who["groups"], json!(["staging"]));
    assert_eq!(who["auth"], "bearer");
    assert!(who["token_expires_at"].as_str().unwrap().ends_with('Z'));
    let hosts = &mcp_result(&r, 2)["structured"]["hosts"];
    assert_eq!(hosts.as_array().unwrap().len(), 1, "only hosts in the agent's groups: {hosts}");
    assert_eq!(hosts[0]["name"], "web-1");
    let granted = &mcp_result(&r, 3)["structured"];
    assert_eq!(granted["status"], "active", "{r}");
    let sid = granted["session_id"].as_str().unwrap().to_string();

    // A second connection (new MCP session) uses the SSH session: exec runs on the real target.
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_ssh_exec", json!({"session_id": sid, "command": "uname -n"})),
            mcp_call("gatehouse_ssh_exec", json!({"session_id": sid, "command": "echo to-stderr >&2; exit 3"})),
            mcp_call(
                "gatehouse_ssh_exec",
                json!({"session_id": sid, "command": "head -c 200000 /dev/zero | tr '\\0' x"})
            ),
            mcp_call(
                "gatehouse_request_ssh_session",
                json!({"host": "db-1", "login": login, "reason": "prompt says so"})
            ),
            mcp_call("gatehouse_list_allowed_resources", json!({})),
            mcp_call("gatehouse_query_audit", json!({"outcome": "deny"})),
        ]),
    );
    let uname = mcp_result(&r, 0);
    assert_eq!(uname["is_error"], false, "{uname}");
    assert_eq!(uname["structured"]["stdout"], format!("{}\n", hostname()));
    assert_eq!(uname["structured"]["exit_status"], 0);
    assert_eq!(uname["structured"]["untrusted"], true);
    assert!(uname["text"].as_str().unwrap().contains("UNTRUSTED"), "output is marked as untrusted data");
    let exit3 = &mcp_result(&r, 1)["structured"];
    assert_eq!(exit3["exit_status"], 3);
    assert_eq!(exit3["stderr"], "to-stderr\n");
    let big = &mcp_result(&r, 2)["structured"];
    assert_eq!(big["truncated"], true);
    assert_eq!(big["stdout"].as_str().unwrap().len(), 64 * 1024, "output capped at 64 KiB per stream");
    let prod = mcp_result(&r, 3);
    assert_eq!(prod["is_error"], true);
    assert_eq!(prod["text"], "Access denied. Token is scoped to groups [staging], host db-1 is in [prod]");
    let res = &mcp_result(&r, 4)["structured"];
    assert_eq!(res["open_sessions"][0]["session_id"], sid.as_str());
    let denials = &mcp_result(&r, 5)["structured"]["events"];
    assert!(denials.as_array().unwrap().iter().any(|e| e["action"] == "AI_AGENT_POLICY_DENIED"), "{denials}");

    // The audit log names agent, tool, resource, outcome, MCP session and client.
    let ev = w.gh.audit(&["--agent", "cursor-ops"]);
    let denied = ev.iter().find(|e| e["action"] == "AI_AGENT_POLICY_DENIED").expect("denial audited");
    assert_eq!(denied["actor"], "cursor-ops");
    assert_eq!(denied["resource"], format!("{login}@db-1"));
    assert_eq!(denied["outcome"], "deny");
    assert_eq!(denied["details"]["tool"], "gatehouse_request_ssh_session");
    assert_eq!(denied["client_addr"], "127.0.0.1");
    assert!(denied["mcp_session_id"].as_str().is_some_and(|s| !s.is_empty()));
    for tool in
        ["gatehouse_whoami", "gatehouse_list_allowed_hosts", "gatehouse_request_ssh_session", "gatehouse_ssh_exec"]
    {
        let e = ev.iter().find(|e| e["action"] == tool).unwrap_or_else(|| panic!("{tool} audited"));
        assert_eq!(e["outcome"], "allow");
        assert!(e["mcp_session_id"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // Sessions list shows the agent session with its MCP session and client address.
    let sessions = w.gh.json(&["sessions", "list"]);
    let s = sessions.as_array().unwrap().iter().find(|s| s["id"] == sid.as_str()).unwrap();
    assert_eq!(s["kind"], "mcp");
    assert_eq!(s["subject_name"], "cursor-ops");
    assert_eq!(s["client_addr"], "127.0.0.1");
    assert!(s["mcp_session_id"].as_str().is_some_and(|x| !x.is_empty()));
    // The exec is recorded like a human's, linked to the agent and the MCP session.
    let recs = w.gh.json(&["recordings", "list"]);
    let rec = recs.as_array().unwrap().iter().find(|r| r["command"] == "uname -n").unwrap();
    assert_eq!(rec["session_id"], sid.as_str());
    assert_eq!(rec["kind"], "exec");
    assert_eq!(rec["subject_name"], "cursor-ops");
    let cast = w.gh.ok(&["recordings", "export", rec["id"].as_str().unwrap()]);
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["gatehouse"]["subject"], "agent:cursor-ops");
    assert!(header["gatehouse"]["mcp_session"].as_str().is_some());
    assert!(cast.contains(&hostname()));

    // Close, and the session is gone.
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_close_ssh_session", json!({"session_id": sid})),
            mcp_call("gatehouse_ssh_exec", json!({"session_id": sid, "command": "true"}))
        ]),
    );
    assert_eq!(mcp_result(&r, 0)["structured"]["status"], "closed");
    assert_eq!(mcp_result(&r, 1)["is_error"], true);
    assert!(mcp_result(&r, 1)["text"].as_str().unwrap().contains("has ended"));

    // Bad input: unknown tool, malformed and oversized arguments are JSON-RPC errors.
    let huge = "x".repeat(300 * 1024);
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_no_such_tool", json!({})),
            mcp_call("gatehouse_request_ssh_session", json!({"host": "web-1"})),
            mcp_call("gatehouse_request_ssh_session", json!({"host": "web-1", "login": login, "reason": "  "})),
            mcp_call("gatehouse_ssh_exec", json!({"session_id": sid, "command": huge})),
            mcp_call("gatehouse_whoami", json!({"extra": 1})),
        ]),
    );
    for i in 0..5 {
        let e = &mcp_result(&r, i)["rpc_error"];
        assert_eq!(e["code"], -32602, "result {i}: {}", mcp_result(&r, i));
    }
    assert!(mcp_result(&r, 3)["rpc_error"]["message"].as_str().unwrap().contains("too large"));
    // A client that first tries a newer protocol revision falls back cleanly.
    let r = mcp_http(&w.gh, &token, &["--mode", "auto"], json!([mcp_call("gatehouse_whoami", json!({}))]));
    assert_eq!(mcp_result(&r, 0)["structured"]["agent"], "cursor-ops", "{r}");
}

fn refused_credentials_get_401(b: Backend) {
    let w = world(b);
    let ok = agent_with_token(&w.gh, "ops", "host:read", "staging", &[]);
    let whoami = json!([mcp_call("gatehouse_whoami", json!({}))]);
    let works = |t: &str| mcp_http(&w.gh, t, &[], whoami.clone());
    assert_eq!(mcp_result(&works(&ok), 0)["structured"]["agent"], "ops");
    let refused = |t: &str, why: &str| {
        let r = works(t);
        assert!(mcp_refused_401(&r), "{why}: {r}");
        let raw = http(
            "POST",
            &format!("{}/mcp", w.gh.url()),
            &[("authorization", &format!("Bearer {t}")), ("content-type", "application/json")],
            Some("{}"),
        );
        assert_eq!(raw.status, 401, "{why}");
        assert!(raw.headers["www-authenticate"].contains("error=\"invalid_token\""), "{why}");
    };
    // expired
    let short = token_for(&w.gh, "ops", &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1300));
    refused(&short, "expired token");
    // wrong CIDR (tests come from 127.0.0.1)
    let cidr = token_for(&w.gh, "ops", &["--cidr", "10.0.0.0/8"]);
    refused(&cidr, "out-of-CIDR token");
    let right_cidr = token_for(&w.gh, "ops", &["--cidr", "127.0.0.0/8"]);
    assert_eq!(mcp_result(&works(&right_cidr), 0)["structured"]["agent"], "ops");
    // single use: the first request consumes it
    let once = token_for(&w.gh, "ops", &["--single-use"]);
    let first = http(
        "POST",
        &format!("{}/mcp", w.gh.url()),
        &[
            ("authorization", &format!("Bearer {once}")),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string()),
    );
    assert_ne!(first.status, 401);
    refused(&once, "reused single-use token");
    // revoked
    let rev = token_for(&w.gh, "ops", &[]);
    // `token list` is newest first
    let newest = w.gh.json(&["token", "list"])[0]["id"].as_str().unwrap().to_string();
    w.gh.ok(&["token", "revoke", &newest]);
    refused(&rev, "revoked token");
    // suspended agent: every token refused; resume restores
    w.gh.ok(&["agent", "suspend", "ops"]);
    refused(&ok, "suspended agent");
    w.gh.ok(&["agent", "resume", "ops"]);
    assert_eq!(mcp_result(&works(&ok), 0)["structured"]["agent"], "ops");
    // garbage
    refused("ghagt_not-a-real-token", "malformed token");
    // every refusal is audited, naming why
    let denies = w.gh.audit(&["--action", "mcp.auth", "--outcome", "deny"]);
    let reasons: Vec<&str> = denies.iter().map(|e| e["reason"].as_str().unwrap()).collect();
    for why in [
        "token expired",
        "outside the token's CIDRs",
        "already used",
        "token revoked",
        "agent is suspended",
        "malformed token",
    ] {
        assert!(reasons.iter().any(|r| r.contains(why)), "{why} not in {reasons:?}");
    }
    // no token value ever appears in the audit log or the server log
    let all = w.gh.ok(&["audit", "--format", "json"]);
    for t in [&ok, &short, &cidr, &once, &rev] {
        assert!(!all.contains(t.as_str()), "token in audit log");
        assert!(!w.gh.log_text().contains(t.as_str()), "token in server log");
    }
}

fn http_edges_of_the_mcp_endpoint(b: Backend) {
    let w = world(b);
    let token = agent_with_token(&w.gh, "ops", "host:read", "staging", &[]);
    let url = format!("{}/mcp", w.gh.url());
    // auth is checked on every method
    for m in ["POST", "GET", "DELETE"] {
        let r = http(m, &url, &[], None);
        assert_eq!(r.status, 401, "{m}");
        assert!(r.headers["www-authenticate"].starts_with("Bearer"), "{m}");
    }
    // OAuth discovery paths are real 404s (not {} or HTML), so a static header is accepted
    for p in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let r = http("GET", &format!("{}{p}", w.gh.url()), &[], None);
        assert_eq!(r.status, 404, "{p}");
        assert!(!r.body.trim_start().starts_with('{') && !r.body.contains("<html"), "{p}: {}", r.body);
    }
    // a disallowed browser Origin is refused with 403
    let r = http(
        "POST",
        &url,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("origin", "https://evil.example"),
            ("content-type", "application/json"),
        ],
        Some("{}"),
    );
    assert_eq!(r.status, 403);
    // tokens in query strings are refused
    let r = http("POST", &format!("{url}?access_token={token}"), &[("content-type", "application/json")], Some("{}"));
    assert_eq!(r.status, 400);
    // a Host header that is not allowed is refused (DNS rebinding protection)
    let r = http("POST", &url, &[("authorization", &format!("Bearer {token}")), ("host", "evil.example"), ("content-type", "application/json"), ("accept", "application/json, text/event-stream")], Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).to_string()));
    assert!(r.status == 403 || r.status == 400 || r.status == 421, "bad Host refused: {}", r.status);
    // an MCP session belongs to the agent that opened it
    let other = agent_with_token(&w.gh, "ops2", "host:read", "staging", &[]);
    let init = http("POST", &url, &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json"), ("accept", "application/json, text/event-stream")], Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).to_string()));
    assert_eq!(init.status, 200);
    let sid = init.headers["mcp-session-id"].clone();
    let hijack = http(
        "POST",
        &url,
        &[
            ("authorization", &format!("Bearer {other}")),
            ("mcp-session-id", &sid),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        Some(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string()),
    );
    assert_eq!(hijack.status, 404);
}

fn agent_suspended_mid_session_loses_it_within_a_second(b: Backend) {
    let w = world(b);
    let login = local_login();
    let token = agent_with_token(&w.gh, "ops", "ssh_session:request", "staging", &[]);
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([mcp_call(
            "gatehouse_request_ssh_session",
            json!({"host": "web-1", "login": login, "reason": "long job"})
        )]),
    );
    let sid = mcp_result(&r, 0)["structured"]["session_id"].as_str().unwrap().to_string();
    let gh_url = w.gh.url();
    let t2 = token.clone();
    let sid2 = sid.clone();
    let runner = std::thread::spawn(move || {
        let py = test_python();
        let mut child = std::process::Command::new(py)
            .arg(workspace().join("integration/python/mcp_client.py"))
            .args(["--url", &format!("{gh_url}/mcp"), "--token", &t2])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(
                json!([mcp_call(
                    "gatehouse_ssh_exec",
                    json!({"session_id": sid2, "command": "echo started; sleep 30", "timeout_seconds": 60})
                )])
                .to_string()
                .as_bytes(),
            )
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (Instant::now(), serde_json::from_slice::<Value>(&out.stdout).unwrap())
    });
    // wait until the command runs on the target
    eventually(Duration::from_secs(20), "exec recording", || {
        w.gh.json(&["recordings", "list"]).as_array().unwrap().iter().find(|r| r["session_id"] == sid.as_str()).cloned()
    });
    std::thread::sleep(Duration::from_millis(500));
    let suspended_at = Instant::now();
    w.gh.ok(&["agent", "suspend", "ops"]);
    let (returned_at, out) = runner.join().unwrap();
    let took = returned_at.duration_since(suspended_at);
    assert!(took < Duration::from_millis(1500), "exec ended {took:?} after suspend: {out}");
    let s = eventually(Duration::from_secs(5), "session closed", || {
        w.gh.json(&["sessions", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == sid.as_str() && s["ended_at"].is_i64())
            .cloned()
    });
    assert_eq!(s["end_reason"], "agent suspended");
    assert!(mcp_result(&out, 0)["structured"]["exit_status"].is_null(), "the command did not finish: {out}");
    // and its token is refused from now on
    let r = mcp_http(&w.gh, &token, &[], json!([mcp_call("gatehouse_whoami", json!({}))]));
    assert!(mcp_refused_401(&r), "{r}");
}

fn every_tool_is_refused_without_its_scope(b: Backend) {
    let w = world(b);
    let login = local_login();
    // A support bot: probe:read only, none of the tools below.
    let token = agent_with_token(&w.gh, "docs", "probe:read", "staging", &[]);
    let calls = [
        ("gatehouse_list_allowed_hosts", json!({}), "host:read"),
        (
            "gatehouse_request_ssh_session",
            json!({"host": "web-1", "login": login, "reason": "x"}),
            "ssh_session:request",
        ),
        ("gatehouse_ssh_exec", json!({"session_id": "s_0000000000000000", "command": "true"}), "ssh_session:request"),
        ("gatehouse_close_ssh_session", json!({"session_id": "s_0000000000000000"}), "ssh_session:request"),
        ("gatehouse_write_audit_event", json!({"message": "hi"}), "audit:write"),
        ("gatehouse_query_audit", json!({}), "audit:read"),
        ("gatehouse_request_certificate", json!({"name": "a.example.com", "csr_pem": "x"}), "certificate:request"),
        ("gatehouse_get_certificate", json!({"name": "a.example.com"}), "certificate:read"),
        ("gatehouse_list_certificates", json!({}), "certificate:read"),
        ("gatehouse_create_probe", json!({"target": "web-1", "kind": "tcp"}), "probe:create"),
    ];
    let mut ops = vec![json!({"op": "list_tools"})];
    ops.extend(calls.iter().map(|(n, a, _)| mcp_call(n, a.clone())));
    let r = mcp_http(&w.gh, &token, &[], Value::Array(ops));
    let listed = tool_names(mcp_result(&r, 0));
    assert_eq!(
        listed,
        ["gatehouse_get_probe", "gatehouse_list_allowed_resources", "gatehouse_whoami"],
        "only tools within the scopes (and the always-callable ones) are listed"
    );
    for (i, (name, _, scope)) in calls.iter().enumerate() {
        let res = mcp_result(&r, i + 1);
        assert_eq!(res["is_error"], true, "{name}: {res}");
        assert_eq!(res["text"], format!("Access denied. Token lacks scope {scope}, which {name} requires"));
    }
    let denials = w.gh.audit(&["--agent", "docs", "--action", "AI_AGENT_POLICY_DENIED"]);
    for (name, _, _) in &calls {
        assert!(denials.iter().any(|e| e["details"]["tool"] == *name), "{name} denial audited");
    }
    // With the scopes, the write and query tools work and notes are agent-authored.
    let token = agent_with_token(&w.gh, "auditor", "audit:read,audit:write", "staging", &[]);
    let long = "y".repeat(2001);
    let r = mcp_http(
        &w.gh,
        &token,
        &[],
        json!([
            mcp_call(
                "gatehouse_write_audit_event",
                json!({"message": "checked the deploy, all good", "severity": "warning"})
            ),
            mcp_call("gatehouse_write_audit_event", json!({"message": long})),
            mcp_call("gatehouse_query_audit", json!({"since": "1h", "limit": 5})),
        ]),
    );
    assert_eq!(mcp_result(&r, 0)["is_error"], false);
    assert!(mcp_result(&r, 1)["rpc_error"]["message"].as_str().unwrap().contains("too long"));
    let events = mcp_result(&r, 2)["structured"]["events"].as_array().unwrap().clone();
    assert!(events.len() <= 5);
    let note = w.gh.audit(&["--agent", "auditor", "--action", "agent.note"]);
    assert_eq!(note.len(), 1);
    assert_eq!(note[0]["reason"], "checked the deploy, all good");
    assert_eq!(note[0]["severity"], "warning");
    assert_eq!(note[0]["details"]["agent_authored"], true);
}

/// A loopback HTTP relay recording every byte the client sends.
struct Relay {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
    received: Arc<Mutex<Vec<u8>>>,
}

fn relay_to(upstream: u16) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (s2, r2) = (sent.clone(), received.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { break };
            let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
            let (mut c2, mut s2c) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (sent, received) = (s2.clone(), r2.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c2.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sent.lock().unwrap().extend_from_slice(&buf[..n]);
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = s2c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    received.lock().unwrap().extend_from_slice(&buf[..n]);
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Relay { port, sent, received }
}

/// Split a recorded byte stream into HTTP requests (head + Content-Length body).
fn split_requests(mut raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        let total = end + 4 + len;
        out.push(raw[..total].to_vec());
        raw = &raw[total..];
    }
    out
}

fn raw_status(port: u16, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn stdio_bridge_signs_every_call(b: Backend) {
    let w = world(b);
    let login = local_login();
    w.gh.ok(&["agent", "create", "claude-bridge", "--owner", "alice", "--scopes", FULL, "--groups", "staging"]);
    let out = w.gh.ok(&["agent", "bootstrap", "claude-bridge"]);
    let bootstrap = out.lines().nth(1).unwrap().trim().to_string();
    assert!(bootstrap.starts_with("ghboot_"));
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    // Enrol through a recording relay so we can check what crossed the wire.
    let relay = relay_to(w.gh.http_port);
    let relay_url = format!("http://127.0.0.1:{}", relay.port);
    let enroll = std::process::Command::new(gatehouse_bin())
        .args(["agent", "enroll", "--url", &relay_url, &bootstrap, "--dir"])
        .arg(&agent_dir)
        .output()
        .unwrap();
    assert!(enroll.status.success(), "{}", String::from_utf8_lossy(&enroll.stderr));
    let key_file = agent_dir.join("agent_ed25519");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // The bootstrap token is single use.
    let again = std::process::Command::new(gatehouse_bin())
        .args(["agent", "enroll", "--url", &w.gh.url(), &bootstrap, "--dir"])
        .arg(dir.path().join("again"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("unauthorized"));
    // Rewrite the config so the bridge goes through the relay too.
    let cfg_path = agent_dir.join("agent.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    assert_eq!(cfg["url"], relay_url.as_str());
    cfg["url"] = json!(relay_url);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();

    let agent_dir_s = agent_dir.to_str().unwrap().to_string();
    let env = [("GATEHOUSE_AGENT_DIR", agent_dir_s.as_str()), ("PATH", "/usr/bin:/bin")];
    let r = mcp_stdio(
        &env,
        json!([{"op": "list_tools"}, mcp_call("gatehouse_whoami", json!({})), mcp_call("gatehouse_request_ssh_session", json!({"host": "web-1", "login": login, "reason": "bridge test"}))]),
    );
    assert!(r.get("connect_error").is_none(), "{r}");
    assert!(tool_names(mcp_result(&r, 0)).contains(&"gatehouse_ssh_exec".to_string()));
    let who = &mcp_result(&r, 1)["structured"];
    assert_eq!(who["agent"], "claude-bridge");
    assert_eq!(who["auth"], "signed");
    let sid = mcp_result(&r, 2)["structured"]["session_id"].as_str().unwrap().to_string();
    let r = mcp_stdio(
        &env,
        json!([
            mcp_call("gatehouse_ssh_exec", json!({"session_id": sid, "command": "uname -n"})),
            mcp_call("gatehouse_ssh_exec", json!({"session_id": sid, "command": "exit 3"}))
        ]),
    );
    assert_eq!(mcp_result(&r, 0)["structured"]["stdout"], format!("{}\n", hostname()));
    assert_eq!(mcp_result(&r, 1)["structured"]["exit_status"], 3);

    // A replayed request is refused; so is one outside the clock-skew window.
    let sent = relay.sent.lock().unwrap().clone();
    let requests = split_requests(&sent);
    let signed: Vec<&Vec<u8>> = requests
        .iter()
        .filter(|r| String::from_utf8_lossy(r).to_ascii_lowercase().contains("x-gatehouse-signature"))
        .collect();
    assert!(signed.len() >= 4, "bridge calls are signed: {}", signed.len());
    let call_req = signed.iter().find(|r| String::from_utf8_lossy(r).contains("tools/call")).unwrap();
    assert_eq!(raw_status(w.gh.http_port, call_req), 401, "replay refused");
    let old = String::from_utf8_lossy(call_req).to_string();
    let ts_line =
        old.lines().find(|l| l.to_ascii_lowercase().starts_with("x-gatehouse-timestamp:")).unwrap().to_string();
    let stale = old.replace(&ts_line, "x-gatehouse-timestamp: 1000000000");
    assert_eq!(raw_status(w.gh.http_port, stale.as_bytes()), 401, "stale timestamp refused");
    let denies = w.gh.audit(&["--action", "mcp.auth", "--outcome", "deny"]);
    assert!(denies.iter().any(|e| e["reason"].as_str().unwrap().contains("replayed")), "{denies:?}");
    assert!(denies.iter().any(|e| e["reason"].as_str().unwrap().contains("clock skew")), "{denies:?}");

    // The bridge's private key never appears in any request, response or log.
    let key_pem = std::fs::read_to_string(&key_file).unwrap();
    let key_body: String = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let received = relay.received.lock().unwrap().clone();
    for (what, hay) in [
        ("requests", String::from_utf8_lossy(&sent).to_string()),
        ("responses", String::from_utf8_lossy(&received).to_string()),
        ("server log", w.gh.log_text()),
    ] {
        assert!(!hay.contains(&key_body[..40]), "private key material in {what}");
        assert!(!hay.contains("PRIVATE KEY"), "private key in {what}");
    }
    assert!(
        !String::from_utf8_lossy(&sent).contains(&bootstrap[10..])
            || String::from_utf8_lossy(&sent).matches(&bootstrap[10..]).count() == 1,
        "the bootstrap token crossed once, at enrolment"
    );
    // Configuration blocks for both modes.
    let cfg = w.gh.ok(&["mcp", "config", "claude-desktop"]);
    assert!(cfg.contains("\"args\"") && cfg.contains("\"stdio\""));
    let cfg = w.gh.ok(&["mcp", "config", "codex", "--mode", "http"]);
    assert!(cfg.contains("bearer_token_env_var"));
}

fn agent_lifecycle_and_token_listing(b: Backend) {
    let w = world(b);
    let out = w.gh.ok(&[
        "agent",
        "create",
        "cursor-ops",
        "--owner",
        "alice",
        "--scopes",
        "host:read,ssh_session:request",
        "--groups",
        "staging",
        "--risk",
        "high",
    ]);
    assert!(out.contains("created agent cursor-ops"));
    let err =
        w.gh.fails(&["agent", "create", "bad", "--owner", "alice", "--scopes", "secret:read", "--groups", "staging"]);
    assert!(err.contains("unknown scope"), "{err}");
    let err =
        w.gh.fails(&["agent", "create", "bad", "--owner", "nobody", "--scopes", "host:read", "--groups", "staging"]);
    assert!(err.contains("not found"), "{err}");
    let created = w.gh.ok(&["token", "create", "--agent", "cursor-ops", "--ttl", "48h", "--cidr", "127.0.0.0/8"]);
    let token = created.lines().nth(1).unwrap().trim().to_string();
    // shown once, with ready-to-paste client configuration
    for needle in [
        "claude mcp add --transport http gatehouse",
        "\"mcpServers\"",
        "bearer_token_env_var",
        "\"command\": \"gatehouse\"",
    ] {
        assert!(created.contains(needle), "{needle} in:\n{created}");
    }
    let list = w.gh.ok(&["token", "list", "--json"]);
    assert!(!list.contains(&token), "token list never shows the value");
    let listed: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(listed[0]["agent"], "cursor-ops");
    assert_eq!(listed[0]["cidrs"], json!(["127.0.0.0/8"]));
    let table = w.gh.ok(&["token", "list"]);
    assert!(table.contains("127.0.0.0/8") && table.contains("cursor-ops"));
    // use updates last use
    let _ = mcp_http(&w.gh, &token, &[], json!([mcp_call("gatehouse_whoami", json!({}))]));
    let listed = w.gh.json(&["token", "list"]);
    assert!(listed[0]["last_used_at"].is_i64());
    assert_eq!(listed[0]["last_used_addr"], "127.0.0.1");
    // rename keeps identity and tokens
    w.gh.ok(&["agent", "rename", "cursor-ops", "cursor-staging"]);
    let r = mcp_http(&w.gh, &token, &[], json!([mcp_call("gatehouse_whoami", json!({}))]));
    assert_eq!(mcp_result(&r, 0)["structured"]["agent"], "cursor-staging");
    let show = w.gh.json(&["agent", "show", "cursor-staging"]);
    assert_eq!(show["agent"]["risk"], "high");
    assert_eq!(show["tokens"].as_array().unwrap().len(), 1);
    // revoke is permanent and kills its tokens
    w.gh.ok(&["agent", "revoke", "cursor-staging"]);
    let r = mcp_http(&w.gh, &token, &[], json!([mcp_call("gatehouse_whoami", json!({}))]));
    assert!(mcp_refused_401(&r), "{r}");
    let err = w.gh.fails(&["agent", "resume", "cursor-staging"]);
    assert!(err.contains("revoked"), "{err}");
    let listed = w.gh.json(&["token", "list"]);
    assert!(listed[0]["revoked_at"].is_i64());
    let agents = w.gh.json(&["agent", "list"]);
    assert_eq!(agents[0]["status"], "revoked");
    for a in ["agent.create", "agent.rename", "agent.revoke", "token.create"] {
        assert!(!w.gh.audit(&["--action", a]).is_empty(), "{a} audited");
    }
}
