//! Hostile input: a suite of attacks, each refused with a clear error and
//! left in the audit log as a denial. Principal injection through the SSH
//! user name, path tricks in ids, credentials in query strings, oversized and
//! deeply nested JSON, forged `X-Forwarded-For`, a single-use token raced by
//! many clients, and an agent trying to approve its own request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};

use gatehouse_integration::*;
use serde_json::{Value, json};

both_backends!(
    principal_injection_in_the_ssh_user_name,
    path_tricks_in_ids,
    credentials_in_query_strings,
    oversized_and_deeply_nested_json,
    forwarded_for_is_believed_only_from_trusted_proxies,
    single_use_token_raced_by_many_clients,
    agent_cannot_approve_its_own_request,
);

/// A server with user `alice`, who owns the agents the tests create.
fn start(b: Backend, extra: &[&str]) -> (Gatehouse, UserKey) {
    let gh = Gatehouse::start_with(b, extra).expect("gatehouse serve starts");
    let key = UserKey::new();
    gh.ok(&["user", "add", "alice", "--ssh-key", key.public.to_str().unwrap()]);
    (gh, key)
}

/// Audit events with these CLI filters whose reason contains `needle`.
fn denials_with(gh: &Gatehouse, action: &str, needle: &str) -> Vec<Value> {
    gh.audit(&["--action", action, "--outcome", "deny"])
        .into_iter()
        .filter(|e| e["reason"].as_str().unwrap_or("").contains(needle))
        .collect()
}

/// `10,000` nested arrays: far past serde_json's depth limit.
fn deep_array(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// POST a file with curl (which stops sending when the server answers
/// early, as it should for an oversized body); status and body.
fn curl_post(url: &str, headers: &[(&str, &str)], body: &Path) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "-H", "Expect: 100-continue", "--data-binary"])
        .arg(format!("@{}", body.display()));
    for (k, v) in headers {
        c.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = c.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A raw SSH client (russh) for names stock `ssh` refuses to send (a
/// newline): logs in to the bastion as `user` with `key`, runs `id`, and
/// returns the exit status, stdout and stderr.
fn raw_ssh(gh: &Gatehouse, key: &UserKey, user: &str) -> (Option<u32>, String, String) {
    use russh::ChannelMsg;
    struct Bastion(String);
    impl russh::client::Handler for Bastion {
        type Error = russh::Error;
        async fn check_server_key(&mut self, k: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
            Ok(match k {
                russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                    key.to_openssh().is_ok_and(|line| self.0.contains(line.split_whitespace().nth(1).unwrap_or("-")))
                }
                _ => false,
            })
        }
    }
    let host_key = std::fs::read_to_string(gh.data_dir.join("keys/bastion_host_ed25519.pub")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = Arc::new(russh::client::Config::default());
        let mut h = russh::client::connect(config, ("127.0.0.1", gh.ssh_port), Bastion(host_key)).await.unwrap();
        let k = russh::keys::load_secret_key(&key.private, None).unwrap();
        let auth =
            h.authenticate_publickey(user, russh::keys::PrivateKeyWithHashAlg::new(Arc::new(k), None)).await.unwrap();
        assert!(auth.success(), "the key is alice's: authentication itself succeeds");
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, "id").await.unwrap();
        let (mut code, mut out, mut err) = (None, Vec::new(), Vec::new());
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                _ => {}
            }
        }
        (code, String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
    })
}

/// An agent's tool call through the REST bridge with a bearer token.
fn bridge_call(gh: &Gatehouse, token: &str, extra: &[(&str, &str)], name: &str, args: Value) -> HttpReply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    http(
        "POST",
        &format!("{}/api/agent/v1/tools/call", gh.url()),
        &headers,
        Some(&json!({"name": name, "arguments": args}).to_string()),
    )
}

// ---------------------------------------------------------------------------
// 1. Principal injection through the SSH login

fn principal_injection_in_the_ssh_user_name(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let attacks = [
        ("root,admin@web-1", "a comma"),
        (&format!("{login},root@web-1") as &str, "a comma"),
        ("ro ot@web-1", "whitespace"),
        ("root\nadmin@web-1", "control characters"),
        ("*@web-1", "a wildcard"),
        ("root@web-*", "a wildcard"),
        ("root@web-1/../db-1", "a path separator"),
    ]
    .map(|(u, why)| (u.to_string(), why));
    for (user, _) in &attacks {
        if user.contains('\n') {
            // Stock ssh refuses to send this one; a raw client does.
            let mut c = Command::new("ssh");
            c.args(ssh_opts(&w.gh, &w.key)).args(["-p", &w.gh.ssh_port.to_string(), "-l", user, "127.0.0.1", "id"]);
            let r = run(c);
            assert_eq!(r.code, Some(255), "{}", r.stderr);
            assert!(r.stderr.contains("invalid characters"), "{}", r.stderr);
            let (code, stdout, stderr) = raw_ssh(&w.gh, &w.key, user);
            assert_eq!(code, Some(1), "{user:?}: {stdout} {stderr}");
            assert!(stdout.is_empty(), "{user:?} ran something: {stdout}");
            assert_eq!(stderr.trim().lines().count(), 1, "{user:?}: one clear line expected: {stderr}");
            assert!(stderr.starts_with("gatehouse: ") && stderr.contains("not allowed"), "{user:?}: {stderr}");
            continue;
        }
        // `-l` carries the name exactly as given (the client does not split it).
        let mut c = Command::new("ssh");
        c.args(ssh_opts(&w.gh, &w.key)).args(["-p", &w.gh.ssh_port.to_string(), "-l", user, "127.0.0.1", "id"]);
        let r = run(c);
        assert_eq!(r.code, Some(1), "{user:?}: {} {}", r.stdout, r.stderr);
        assert!(r.stdout.is_empty(), "{user:?} ran something: {}", r.stdout);
        let said: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("gatehouse:")).collect();
        assert_eq!(said.len(), 1, "{user:?}: one clear line expected: {}", r.stderr);
        assert!(said[0].contains("LOGIN@HOST") && said[0].contains("not allowed"), "{user:?}: {}", said[0]);
    }
    // The same grant works for a proper name: the refusals were about the names.
    let r = run(w.ssh(&format!("{login}@web-1"), &["echo ok"]));
    assert_eq!(r.stdout, "ok\n", "{}", r.stderr);

    // No session (so no certificate) for any of them: only the proper one.
    let sessions = w.gh.json(&["sessions", "list"]);
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
    assert_eq!(sessions[0]["login"], login.as_str());
    // Each attempt is a denial naming the reason and the (escaped) name given.
    let denies = denials_with(&w.gh, "ssh.connect", "malformed target in SSH user name");
    assert_eq!(denies.len(), attacks.len(), "{denies:#?}");
    for (user, why) in &attacks {
        let escaped = format!("{user:?}");
        let e = denies
            .iter()
            .find(|e| e["details"]["ssh_user"] == escaped.as_str())
            .unwrap_or_else(|| panic!("no denial for {user:?} in {denies:#?}"));
        assert!(e["reason"].as_str().unwrap().contains(why), "{user:?}: {e}");
        assert_eq!(e["actor"], "alice");
        assert_eq!(e["client_addr"].as_str().unwrap().split(':').next(), Some("127.0.0.1"));
    }
    // The control character never reaches the audit row raw.
    assert!(!w.gh.ok(&["audit", "--format", "json"]).contains("root\\nadmin@web-1\""));
}

// ---------------------------------------------------------------------------
// 2. Path tricks in recording, session and approval ids

fn path_tricks_in_ids(b: Backend) {
    let (gh, _) = start(b, &[]);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first_line = passwd.lines().next().unwrap().to_string();

    // The CLI: the id reaches the server encoded and is refused there.
    for args in [
        vec!["recordings", "export", "../../etc/passwd"],
        vec!["recordings", "export", "r_../../../../etc/passwd"],
        vec!["sessions", "kill", "../../etc/passwd"],
    ] {
        let out = gh.cli(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(stdout.is_empty() && !stderr.contains(&first_line), "{args:?} leaked: {stdout}{stderr}");
        assert!(stderr.contains("is not a valid"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }

    // Raw HTTP with encoded separators and dots, single and double encoded.
    let auth = format!("Bearer {}", gh.token);
    let tricks = [
        ("GET", "/api/v1/recordings/..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/api/v1/recordings/..%2F..%2Fetc%2Fpasswd/cast"),
        ("GET", "/api/v1/recordings/%2e%2e%2f%2e%2e%2fetc%2fpasswd/cast"),
        ("GET", "/api/v1/recordings/s_..%2F..%2F..%2Fetc%2Fpasswd/cast"),
        ("GET", "/api/v1/recordings/%252e%252e%252fetc%252fpasswd/cast"),
        ("GET", "/api/v1/recordings/..%5C..%5Cetc%5Cpasswd/cast"),
        ("POST", "/api/v1/sessions/..%2F..%2Fetc%2Fpasswd/kill"),
        ("POST", "/api/v1/access/..%2F..%2Fetc%2Fpasswd/approve"),
        ("POST", "/api/v1/approvals/ap_..%2F..%2Fetc%2Fpasswd/approve"),
    ];
    for (method, path) in tricks {
        let r = http(
            method,
            &format!("{}{path}", gh.url()),
            &[("authorization", &auth), ("content-type", "application/json")],
            (method == "POST").then_some("{}"),
        );
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
        assert!(!r.body.contains(&first_line), "{path} leaked file contents");
        let err: Value = serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("{path}: not JSON: {}", r.body));
        assert!(err["error"].as_str().unwrap().contains("is not a valid"), "{path}: {}", r.body);
    }
    let denies = gh.audit(&["--action", "api.request", "--outcome", "deny"]);
    for (method, path) in tricks {
        let what = format!("{method} {path}");
        let e = denies.iter().find(|e| e["resource"] == what.as_str());
        let e = e.unwrap_or_else(|| panic!("{what} not audited: {denies:#?}"));
        assert!(e["reason"].as_str().unwrap().contains("is not a valid"), "{e}");
        assert_eq!(e["client_addr"], "127.0.0.1");
    }
    assert!(denies.len() >= tricks.len() + 3, "the CLI's attempts are audited too: {denies:#?}");

    // MCP tools taking ids.
    let token = agent_with_token(&gh, "ops", "ssh_session:request,approval:request,probe:read", "staging", &[]);
    let r = mcp_http(
        &gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_ssh_exec", json!({"session_id": "../../etc/passwd", "command": "cat /etc/passwd"})),
            mcp_call("gatehouse_close_ssh_session", json!({"session_id": "s_../../../etc/passwd"})),
            mcp_call("gatehouse_get_approval", json!({"approval_id": "../../etc/passwd"})),
            mcp_call("gatehouse_get_approval", json!({"approval_id": "ap_../../etc/passwd"})),
            mcp_call("gatehouse_get_probe", json!({"probe_id": "../../etc/passwd"})),
        ]),
    );
    for i in 0..5 {
        let res = mcp_result(&r, i);
        assert_eq!(res["is_error"], true, "{i}: {r}");
        let text = res["text"].as_str().unwrap();
        assert!(text.starts_with("Access denied.") || text.starts_with("Refused:"), "{i}: {text}");
        assert!(!text.contains(&first_line), "{i} leaked file contents");
    }
    let agent_denies = gh.audit(&["--agent", "ops", "--outcome", "deny"]);
    for resource in ["session:", "approval:", "probe"] {
        assert!(
            agent_denies.iter().any(|e| e["resource"].as_str().unwrap_or("").starts_with(resource)
                && e["resource"].as_str().unwrap_or("").contains("../")),
            "{resource}: {agent_denies:#?}"
        );
    }
    assert!(agent_denies.len() >= 5, "{agent_denies:#?}");
}

// ---------------------------------------------------------------------------
// 3. Credentials in query strings

fn credentials_in_query_strings(b: Backend) {
    let (gh, _) = start(b, &[]);
    let agent = agent_with_token(&gh, "ops", "host:read", "staging", &[]);
    let admin = gh.token.clone();
    let cases = [
        format!("{}/api/v1/users?token={admin}", gh.url()),
        format!("{}/api/v1/audit?limit=5&access_token={admin}", gh.url()),
        format!("{}/api/v1/users?Access_Token={agent}", gh.url()),
    ];
    for url in &cases {
        let r = http("GET", url, &[], None);
        assert_eq!(r.status, 400, "{url}");
        assert!(r.body.contains("not accepted in the query string"), "{}", r.body);
    }
    // Even alongside a good Authorization header: the leaked one is refused.
    let r = http("GET", &cases[0], &[("authorization", &format!("Bearer {admin}"))], None);
    assert_eq!(r.status, 400);
    for q in [format!("token={agent}"), format!("access_token={agent}"), format!("x=1&ACCESS_TOKEN={agent}")] {
        let r = http(
            "POST",
            &format!("{}/mcp?{q}", gh.url()),
            &[("content-type", "application/json"), ("accept", "application/json, text/event-stream")],
            Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string()),
        );
        assert_eq!(r.status, 400, "{q}");
        assert!(r.body.contains("not accepted in the query string"), "{}", r.body);
    }
    let r = http("POST", &format!("{}/api/agent/v1/tools/list?token={agent}", gh.url()), &[], Some("{}"));
    assert_eq!(r.status, 400);

    let api = denials_with(&gh, "api.auth", "credentials in the query string");
    assert_eq!(api.len(), 4, "{api:#?}");
    let mcp = denials_with(&gh, "mcp.auth", "credentials in the query string");
    assert_eq!(mcp.len(), 4, "{mcp:#?}");
    for e in api.iter().chain(&mcp) {
        assert_eq!(e["client_addr"], "127.0.0.1", "{e}");
    }
    // The values appear nowhere: not in the audit log, not in the server log.
    let all = gh.ok(&["audit", "--format", "json"]);
    let log = gh.log_text();
    for t in [&admin, &agent] {
        assert!(!all.contains(t.as_str()), "token in the audit log");
        assert!(!log.contains(t.as_str()), "token in the server log");
    }
}

// ---------------------------------------------------------------------------
// 4. Oversized and deeply nested JSON

fn oversized_and_deeply_nested_json(b: Backend) {
    let (gh, _) = start(b, &[]);
    let token = agent_with_token(&gh, "ops", "host:read", "staging", &[]);
    let big = gh.dir.path().join("big.json");
    // 10 MB of valid-looking JSON.
    std::fs::write(
        &big,
        format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(10 << 20)),
    )
    .unwrap();
    let agent_auth = format!("Bearer {token}");
    let admin_auth = format!("Bearer {}", gh.token);
    let json_ct = ("content-type", "application/json");
    let accept = ("accept", "application/json, text/event-stream");

    // MCP endpoint and REST bridge: 413 with a JSON error, before any parsing.
    for path in ["/mcp", "/api/agent/v1/tools/call"] {
        let (status, body) =
            curl_post(&format!("{}{path}", gh.url()), &[("authorization", &agent_auth), json_ct, accept], &big);
        assert_eq!(status, 413, "{path}: {body}");
        assert!(body.contains("too large"), "{path}: {body}");
    }
    // Admin API: the same.
    let (status, body) =
        curl_post(&format!("{}/api/v1/users", gh.url()), &[("authorization", &admin_auth), json_ct], &big);
    assert_eq!(status, 413, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert!(err["error"].as_str().unwrap().contains("too large"), "{body}");

    // 10,000-deep arrays in a tool argument: a JSON-RPC parse error.
    let deep = deep_array(10_000);
    let call = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{{\"name\":\"gatehouse_whoami\",\"arguments\":{{\"x\":{deep}}}}}}}"
    );
    let r = http("POST", &format!("{}/mcp", gh.url()), &[("authorization", &agent_auth), json_ct, accept], Some(&call));
    assert_eq!(r.status, 400, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], -32700, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("recursion limit"), "{v}");
    let bridge = format!("{{\"name\":\"gatehouse_whoami\",\"arguments\":{{\"x\":{deep}}}}}");
    let r = http(
        "POST",
        &format!("{}/api/agent/v1/tools/call", gh.url()),
        &[("authorization", &agent_auth), json_ct],
        Some(&bridge),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["error"]["code"], -32700);
    // ... and to the admin API.
    let r = http(
        "POST",
        &format!("{}/api/v1/users", gh.url()),
        &[("authorization", &admin_auth), json_ct],
        Some(&format!("{{\"name\":\"eve\",\"ssh_keys\":{deep}}}")),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let err: Value = serde_json::from_str(&r.body).unwrap();
    assert!(err["error"].as_str().unwrap().contains("recursion limit"), "{}", r.body);

    // Nesting the parser accepts still reaches the tool, which refuses the
    // argument as a JSON-RPC error, audited like any call.
    let r = mcp_http(&gh, &token, &[], json!([mcp_call("gatehouse_whoami", json!({"x": json!([[[[[[[[1]]]]]]]])}))]));
    assert_eq!(mcp_result(&r, 0)["rpc_error"]["code"], -32602, "{r}");

    // The server is still up and serves the next requests.
    assert_eq!(http("GET", &format!("{}/healthz", gh.url()), &[], None).status, 200);
    let r = mcp_http(&gh, &token, &[], json!([mcp_call("gatehouse_whoami", json!({}))]));
    assert_eq!(mcp_result(&r, 0)["structured"]["agent"], "ops", "{r}");
    assert!(!gh.json(&["user", "list"]).as_array().unwrap().iter().any(|u| u["name"] == "eve"));

    // Every refusal is audited as a denial, with who and from where.
    let mcp = gh.audit(&["--action", "mcp.request", "--outcome", "deny"]);
    assert_eq!(mcp.iter().filter(|e| e["reason"].as_str().unwrap().contains("too large")).count(), 2, "{mcp:#?}");
    assert_eq!(mcp.iter().filter(|e| e["reason"].as_str().unwrap().contains("recursion limit")).count(), 2);
    for e in &mcp {
        assert_eq!(e["actor"], "ops");
        assert_eq!(e["client_addr"], "127.0.0.1");
    }
    let api = gh.audit(&["--action", "api.request", "--outcome", "deny"]);
    assert!(
        api.iter()
            .any(|e| e["resource"] == "POST /api/v1/users" && e["reason"].as_str().unwrap().contains("too large"))
    );
    assert!(
        api.iter().any(|e| e["resource"] == "POST /api/v1/users"
            && e["reason"].as_str().unwrap().contains("recursion limit"))
    );
    let tool = gh.audit(&["--action", "gatehouse_whoami", "--outcome", "deny"]);
    assert_eq!(tool.len(), 1, "{tool:#?}");
    assert!(tool[0]["reason"].as_str().unwrap().contains("invalid arguments"), "{}", tool[0]);
}

// ---------------------------------------------------------------------------
// 5. X-Forwarded-For from anyone but a trusted proxy

fn forwarded_for_is_believed_only_from_trusted_proxies(b: Backend) {
    let spoof = ("x-forwarded-for", "10.9.9.9");
    // No trusted proxy: the header is ignored.
    let (gh, _) = start(b, &[]);
    agent_with_token(&gh, "ops", "host:read", "staging", &[]);
    let local = token_for(&gh, "ops", &["--cidr", "127.0.0.1/32"]);
    let remote = token_for(&gh, "ops", &["--cidr", "10.9.9.0/24"]);
    let r = bridge_call(&gh, &local, &[spoof], "gatehouse_whoami", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["result"]["structuredContent"]["agent"], "ops");
    let ok = gh.audit(&["--action", "gatehouse_whoami", "--outcome", "allow"]);
    assert_eq!(ok.last().unwrap()["client_addr"], "127.0.0.1");
    let r = bridge_call(&gh, &remote, &[spoof], "gatehouse_whoami", json!({}));
    assert_eq!(r.status, 401, "{}", r.body);
    let r = mcp_http(
        &gh,
        &remote,
        &["--header", "X-Forwarded-For: 10.9.9.9"],
        json!([mcp_call("gatehouse_whoami", json!({}))]),
    );
    assert!(mcp_refused_401(&r), "{r}");
    let refused = denials_with(&gh, "mcp.auth", "outside the token's CIDRs");
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(refused.iter().all(|e| e["client_addr"] == "127.0.0.1" && e["actor"] == "ops"), "{refused:#?}");
    // The admin API ignores it too.
    let r = http("GET", &format!("{}/api/v1/users", gh.url()), &[spoof, ("authorization", "Bearer ghadm_nope")], None);
    assert_eq!(r.status, 401);
    let api = gh.audit(&["--action", "api.auth", "--outcome", "deny"]);
    assert_eq!(api.last().unwrap()["client_addr"], "127.0.0.1");
    drop(gh);

    // Behind a trusted proxy (here: loopback), its header names the client.
    let (gh, _) = start(b, &["--trusted-proxy", "127.0.0.1/32"]);
    agent_with_token(&gh, "ops", "host:read", "staging", &[]);
    let remote = token_for(&gh, "ops", &["--cidr", "10.9.9.0/24"]);
    let r = bridge_call(&gh, &remote, &[spoof], "gatehouse_whoami", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = mcp_http(
        &gh,
        &remote,
        &["--header", "X-Forwarded-For: 10.9.9.9"],
        json!([mcp_call("gatehouse_whoami", json!({}))]),
    );
    assert_eq!(mcp_result(&r, 0)["structured"]["agent"], "ops", "{r}");
    // The right-most entry that is not a trusted proxy: a hop through a
    // second trusted proxy is skipped, a forged left-most entry is not used.
    let r = bridge_call(
        &gh,
        &remote,
        &[("x-forwarded-for", "203.0.113.5, 10.9.9.9, 127.0.0.1")],
        "gatehouse_whoami",
        json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = bridge_call(&gh, &remote, &[("x-forwarded-for", "10.9.9.9, 203.0.113.5")], "gatehouse_whoami", json!({}));
    assert_eq!(r.status, 401, "the client is 203.0.113.5, outside the CIDR");
    // Without the header, the proxy itself is the client.
    let r = bridge_call(&gh, &remote, &[], "gatehouse_whoami", json!({}));
    assert_eq!(r.status, 401);
    let allowed = gh.audit(&["--action", "gatehouse_whoami", "--outcome", "allow"]);
    assert_eq!(allowed.len(), 3, "{allowed:#?}");
    assert!(allowed.iter().all(|e| e["client_addr"] == "10.9.9.9"), "{allowed:#?}");
    let refused = denials_with(&gh, "mcp.auth", "outside the token's CIDRs");
    let addrs: Vec<&str> = refused.iter().map(|e| e["client_addr"].as_str().unwrap()).collect();
    assert_eq!(addrs, ["203.0.113.5", "127.0.0.1"], "{refused:#?}");
    let r = http("GET", &format!("{}/api/v1/users", gh.url()), &[spoof, ("authorization", "Bearer ghadm_nope")], None);
    assert_eq!(r.status, 401);
    let api = gh.audit(&["--action", "api.auth", "--outcome", "deny"]);
    assert_eq!(api.last().unwrap()["client_addr"], "10.9.9.9");
}

// ---------------------------------------------------------------------------
// 6. One single-use token, many clients at once

fn single_use_token_raced_by_many_clients(b: Backend) {
    const N: usize = 16;
    let (gh, _) = start(b, &[]);
    agent_with_token(&gh, "ops", "host:read", "staging", &[]);
    let once = token_for(&gh, "ops", &["--single-use"]);
    let start = Barrier::new(N);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    bridge_call(&gh, &once, &[], "gatehouse_whoami", json!({})).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), N - 1, "{statuses:?}");
    let used = denials_with(&gh, "mcp.auth", "single-use token already used");
    assert_eq!(used.len(), N - 1, "{used:#?}");
    assert_eq!(gh.audit(&["--action", "gatehouse_whoami", "--outcome", "allow"]).len(), 1);
    let tokens = gh.json(&["token", "list"]);
    let t = tokens.as_array().unwrap().iter().find(|t| t["single_use"] == true).unwrap();
    assert!(t["used_at"].is_i64(), "{t}");
    // And afterwards it stays used.
    assert_eq!(bridge_call(&gh, &once, &[], "gatehouse_whoami", json!({})).status, 401);
}

// ---------------------------------------------------------------------------
// 7. An agent approving its own request

fn agent_cannot_approve_its_own_request(b: Backend) {
    let (gh, key) = start(b, &[]);
    // A target is never contacted here: a request only needs the host row.
    gh.ok(&[
        "host",
        "add",
        "web-1",
        "--address",
        "127.0.0.1:9",
        "--group",
        "staging",
        "--host-key",
        key.public.to_str().unwrap(),
    ]);
    let token = agent_with_token(&gh, "ops-bot", "host:read,ssh_session:request,approval:request", "staging", &[]);
    let r = mcp_http(
        &gh,
        &token,
        &[],
        json!([mcp_call(
            "gatehouse_request_ssh_session",
            json!({"host": "web-1", "login": "deploy", "reason": "rotate logs", "ttl_seconds": 600})
        )]),
    );
    let pending = &mcp_result(&r, 0)["structured"];
    assert_eq!(pending["status"], "pending_approval", "{r}");
    let id = pending["approval_id"].as_str().unwrap().to_string();

    // Over MCP: there is no tool for deciding; whatever the agent names is refused.
    let r = mcp_http(
        &gh,
        &token,
        &[],
        json!([
            mcp_call("gatehouse_approve", json!({"approval_id": id})),
            mcp_call("gatehouse_decide_request", json!({"id": id, "approve": true})),
            mcp_call("gatehouse_get_approval", json!({"approval_id": id, "approve": true})),
        ]),
    );
    for i in 0..3 {
        assert_eq!(mcp_result(&r, i)["rpc_error"]["code"], -32602, "{i}: {r}");
    }
    assert!(mcp_result(&r, 0)["rpc_error"]["message"].as_str().unwrap().contains("unknown tool"));
    // Through the REST bridge: the same.
    let r = bridge_call(&gh, &token, &[], "gatehouse_approve_request", json!({"approval_id": id}));
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], -32602, "{v}");
    // Its token at the admin API's decision routes: 401.
    for path in [format!("/api/v1/access/{id}/approve"), format!("/api/v1/approvals/{id}/approve")] {
        let r = http(
            "POST",
            &format!("{}{path}", gh.url()),
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            Some("{\"reason\":\"self-service\"}"),
        );
        assert_eq!(r.status, 401, "{path}: {}", r.body);
    }
    // Through the CLI with the agent's token in place of the admin's.
    let out = Command::new(gatehouse_bin())
        .args(["access", "approve", &id])
        .env("GATEHOUSE_URL", gh.url())
        .env("GATEHOUSE_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"), "{out:?}");

    // Still pending; nobody approved anything.
    let req = gh.json(&["access", "show", &id]);
    assert_eq!(req["status"], "pending", "{req}");
    assert!(gh.audit(&["--action", "access.approve"]).is_empty());
    let r = mcp_http(&gh, &token, &[], json!([mcp_call("gatehouse_get_approval", json!({"approval_id": id}))]));
    assert_eq!(mcp_result(&r, 0)["structured"]["status"], "pending", "{r}");

    // Each attempt is a denial in the agent's name.
    let unknown = gh.audit(&["--agent", "ops-bot", "--action", "mcp.unknown_tool", "--outcome", "deny"]);
    assert_eq!(unknown.len(), 3, "{unknown:#?}");
    let bad_args = gh.audit(&["--agent", "ops-bot", "--action", "gatehouse_get_approval", "--outcome", "deny"]);
    assert_eq!(bad_args.len(), 1, "{bad_args:#?}");
    let api = gh.audit(&["--agent", "ops-bot", "--action", "api.auth", "--outcome", "deny"]);
    assert_eq!(api.len(), 3, "{api:#?}");
    assert!(api.iter().all(|e| e["reason"] == "token of the wrong kind"), "{api:#?}");
}
