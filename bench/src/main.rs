//! Benchmarks run by hand (`bench/run.sh`), never as tests. Every figure is
//! reported next to the OpenSSH baseline measured in the same run on the same
//! machine: direct `ssh` to an sshd, and `ssh -J` through a second sshd.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gatehouse_integration::*;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

struct Setup {
    gh: Gatehouse,
    target: Sshd,
    jump: Sshd,
    _key: UserKey,
    login: String,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Result<Setup> {
    let gh = Gatehouse::start_with(Backend::Sqlite, &[])?;
    let key = UserKey::new();
    let dir = tempfile::tempdir()?;
    let auth = dir.path().join("authorized_keys");
    std::fs::copy(&key.public, &auth)?;
    let extra =
        format!("AuthorizedKeysFile {}\nMaxStartups 2000\nMaxSessions 2000\nAllowTcpForwarding yes", auth.display());
    let target = Sshd::start_with(&gh.user_ca(), &extra)?;
    let jump = Sshd::start_with(&gh.user_ca(), &extra)?;
    let login = bench_login()?;
    gh.ok(&["user", "add", "alice", "--ssh-key", key.public.to_str().unwrap()]);
    gh.ok(&[
        "host",
        "add",
        "web-1",
        "--address",
        &target.address(),
        "--group",
        "bench",
        "--host-key",
        target.host_key_pub.to_str().unwrap(),
    ]);
    gh.ok(&["grant", "add", "alice", "--host", "web-1", "--login", &login, "--ttl", "2h"]);
    // Agents in the bench group get sessions without waiting for a human.
    let policy = dir.path().join("bench-policy.toml");
    std::fs::write(&policy, "approvals = 0\n")?;
    gh.ok(&["policy", "set", "bench", "--file", policy.to_str().unwrap()]);
    let known_hosts = dir.path().join("known_hosts");
    let mut kh = std::fs::read_to_string(&gh.known_hosts)?;
    for s in [&target, &jump] {
        kh.push_str(&format!("\n[127.0.0.1]:{} {}", s.port, std::fs::read_to_string(&s.host_key_pub)?.trim()));
    }
    std::fs::write(&known_hosts, kh)?;
    // One config for every path, so `ssh -J`'s inner ssh uses it too.
    let config = dir.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n",
            key.private.display(),
            known_hosts.display()
        ),
    )?;
    Ok(Setup { gh, target, jump, _key: key, login, config, _dir: dir })
}

#[derive(Clone, Copy, Debug)]
enum Path {
    Direct,
    /// Direct with the key exchange Gatehouse's client side negotiates
    /// (OpenSSH 9.2 prefers sntrup761x25519, which russh does not offer).
    DirectCurve25519,
    Gatehouse,
    Jump,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "OpenSSH direct",
            Path::DirectCurve25519 => "OpenSSH direct, curve25519 kex",
            Path::Gatehouse => "through Gatehouse",
            Path::Jump => "OpenSSH jump host (ssh -J)",
        }
    }
}

fn ssh(s: &Setup, path: Path, args: &[&str]) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(&s.config);
    match path {
        Path::Direct => {
            c.args(["-p", &s.target.port.to_string(), &format!("{}@127.0.0.1", s.login)]);
        }
        Path::DirectCurve25519 => {
            c.args([
                "-o",
                "KexAlgorithms=curve25519-sha256",
                "-p",
                &s.target.port.to_string(),
                &format!("{}@127.0.0.1", s.login),
            ]);
        }
        Path::Gatehouse => {
            c.args(["-p", &s.gh.ssh_port.to_string(), &format!("{}@web-1@127.0.0.1", s.login)]);
        }
        Path::Jump => {
            c.args([
                "-J",
                &format!("{}@127.0.0.1:{}", s.login, s.jump.port),
                "-p",
                &s.target.port.to_string(),
                &format!("{}@127.0.0.1", s.login),
            ]);
        }
    }
    c.args(args);
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn time_true(s: &Setup, path: Path) -> Result<f64> {
    let start = Instant::now();
    let out = ssh(s, path, &["true"]).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{} failed: {}", path.name(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

fn connect(s: &Setup, runs: usize, results: &mut Value) -> Result<()> {
    println!("\n## Connect and run `true` ({runs} runs each, interleaved, median)\n");
    let paths = [Path::Direct, Path::DirectCurve25519, Path::Gatehouse, Path::Jump];
    for p in paths {
        for _ in 0..3 {
            time_true(s, p)?;
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..runs {
        for (i, p) in paths.iter().enumerate() {
            samples[i].push(time_true(s, *p)?);
        }
    }
    let med: Vec<f64> = samples.iter().map(|v| median(v.clone())).collect();
    println!("| path | median ms | ratio to direct |\n|---|---|---|");
    for (i, p) in paths.iter().enumerate() {
        println!("| {} | {:.1} | {:.2}× |", p.name(), med[i], med[i] / med[0]);
    }
    results["connect"] = json!({
        "runs": runs,
        "direct_ms": med[0], "direct_curve25519_ms": med[1], "gatehouse_ms": med[2], "jump_ms": med[3],
        "gatehouse_over_direct": med[2] / med[0], "gatehouse_over_direct_curve25519": med[2] / med[1],
        "jump_over_direct": med[3] / med[0],
    });
    Ok(())
}

fn stream(s: &Setup, path: Path, bytes: u64) -> Result<f64> {
    let mut child = ssh(s, path, &[&format!("head -c {bytes} /dev/zero")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let st = child.wait()?;
    if !st.success() || total != bytes {
        bail!("{}: got {total} of {bytes} bytes ({st})", path.name());
    }
    Ok(bytes as f64 / secs / 1e6)
}

fn throughput(s: &Setup, bytes: u64, rounds: usize, results: &mut Value) -> Result<()> {
    println!("\n## {} MB of stdout ({rounds} rounds, median MB/s; recording on)\n", bytes / 1_000_000);
    let paths = [Path::Direct, Path::Gatehouse, Path::Jump];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for _ in 0..rounds {
        for (i, p) in paths.iter().enumerate() {
            samples[i].push(stream(s, *p, bytes)?);
        }
    }
    let med: Vec<f64> = samples.iter().map(|v| median(v.clone())).collect();
    println!("| path | MB/s | ratio to jump host |\n|---|---|---|");
    for (i, p) in paths.iter().enumerate() {
        println!("| {} | {:.0} | {:.2}× |", p.name(), med[i], med[i] / med[2]);
    }
    results["throughput"] = json!({
        "bytes": bytes, "rounds": rounds,
        "direct_mbps": med[0], "gatehouse_mbps": med[1], "jump_mbps": med[2],
        "gatehouse_over_jump": med[1] / med[2],
    });
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

fn active_sessions(s: &Setup) -> usize {
    s.gh.json(&["sessions", "list", "--active", "--limit", "100000"]).as_array().map(Vec::len).unwrap_or(0)
}

fn idle(s: &Setup, n: usize, results: &mut Value) -> Result<()> {
    println!("\n## {n} idle interactive sessions through Gatehouse\n");
    let pid = s.gh.pid().context("server pid")?;
    // warm up allocator and caches with a few sessions first
    let mut warm = Vec::new();
    for _ in 0..10 {
        warm.push(
            ssh(s, Path::Gatehouse, &["-tt"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    eventually(Duration::from_secs(60), "warm-up sessions", || (active_sessions(s) >= 10).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid)?;
    let mut children = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        children.push(
            ssh(s, Path::Gatehouse, &["-tt"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        if i % 50 == 49 {
            // let the target's MaxStartups breathe
            eventually(Duration::from_secs(120), "sessions", || (active_sessions(s) >= 10 + i + 1 - 20).then_some(()));
        }
    }
    eventually(Duration::from_secs(300), "all idle sessions up", || (active_sessions(s) >= n + 10).then_some(()));
    let up = start.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!("| sessions | RSS before | RSS after | per session |\n|---|---|---|---|");
    println!("| {n} | {:.1} MiB | {:.1} MiB | {:.0} KiB |", before as f64 / 1024.0, after as f64 / 1024.0, per);
    println!("\n(all {n} up in {:.1} s)", up.as_secs_f64());
    results["idle"] = json!({"sessions": n, "rss_before_kib": before, "rss_after_kib": after, "per_session_kib": per});
    for mut c in children.into_iter().chain(warm) {
        let _ = c.kill();
        let _ = c.wait();
    }
    eventually(Duration::from_secs(60), "sessions closed", || (active_sessions(s) == 0).then_some(()));
    Ok(())
}

async fn mcp_client(url: &str, token: &str) -> Result<rmcp::service::RunningService<rmcp::RoleClient, ()>> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(token),
    );
    Ok(().serve(transport).await?)
}

async fn timed_call(
    c: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    name: &'static str,
    args: Value,
) -> Result<(f64, Value)> {
    let mut p = CallToolRequestParams::new(name);
    if let Value::Object(m) = args {
        p = p.with_arguments(m);
    }
    let start = Instant::now();
    let r = c.call_tool(p).await?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if r.is_error == Some(true) {
        bail!("{name} failed: {:?}", r.content);
    }
    Ok((ms, r.structured_content.unwrap_or(Value::Null)))
}

async fn mcp(s: &Setup, calls: usize, results: &mut Value) -> Result<()> {
    println!("\n## MCP tool calls (rmcp client over streamable HTTP, bearer token)\n");
    s.gh.ok(&[
        "agent",
        "create",
        "bench",
        "--owner",
        "alice",
        "--scopes",
        "host:read,ssh_session:request",
        "--groups",
        "bench",
    ]);
    let token = token_for(&s.gh, "bench", &[]);
    let url = format!("{}/mcp", s.gh.url());
    let mut whoami = json!({});
    for clients in [1usize, 16] {
        let mut handles = Vec::new();
        for _ in 0..clients {
            let (url, token) = (url.clone(), token.clone());
            handles.push(tokio::spawn(async move {
                let c = mcp_client(&url, &token).await?;
                for _ in 0..20 {
                    timed_call(&c, "gatehouse_whoami", json!({})).await?;
                }
                let mut v = Vec::with_capacity(calls);
                for _ in 0..calls {
                    v.push(timed_call(&c, "gatehouse_whoami", json!({})).await?.0);
                }
                c.cancel().await.ok();
                anyhow::Ok(v)
            }));
        }
        let mut all = Vec::new();
        let start = Instant::now();
        for h in handles {
            all.extend(h.await??);
        }
        let wall = start.elapsed().as_secs_f64();
        let (p50, p99) = (percentile(all.clone(), 0.5), percentile(all.clone(), 0.99));
        println!(
            "gatehouse_whoami, {clients} client(s) × {calls} calls: p50 {p50:.2} ms, p99 {p99:.2} ms, {:.0} calls/s",
            all.len() as f64 / wall
        );
        whoami[format!("clients_{clients}")] =
            json!({"p50_ms": p50, "p99_ms": p99, "calls": all.len(), "calls_per_s": all.len() as f64 / wall});
    }
    // exec on an open session versus a fresh ssh through the bastion
    let c = mcp_client(&url, &token).await?;
    let (_, granted) = timed_call(
        &c,
        "gatehouse_request_ssh_session",
        json!({"host": "web-1", "login": s.login, "reason": "benchmark", "ttl_seconds": 3600}),
    )
    .await?;
    let sid = granted["session_id"].as_str().context("session id")?.to_string();
    let runs = 30;
    let mut exec = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..3 {
        timed_call(&c, "gatehouse_ssh_exec", json!({"session_id": sid, "command": "true"})).await?;
    }
    for _ in 0..runs {
        exec.push(timed_call(&c, "gatehouse_ssh_exec", json!({"session_id": sid, "command": "true"})).await?.0);
        fresh.push(time_true(s, Path::Gatehouse)?);
    }
    let (e, f) = (median(exec), median(fresh));
    println!(
        "\ngatehouse_ssh_exec `true` on an open session: median {e:.1} ms; fresh `ssh … true` through the bastion: {f:.1} ms; ratio {:.2}×",
        e / f
    );
    results["mcp"] =
        json!({"whoami": whoami, "exec_open_session_ms": e, "fresh_ssh_ms": f, "exec_over_fresh_ssh": e / f});
    c.cancel().await.ok();
    Ok(())
}

/// 500 interactive sessions held open plus 100 MCP tool calls per second for
/// two minutes: every session survives, every call succeeds, memory is flat.
fn load(s: &Setup, sessions: usize, rate: u64, secs: u64, results: &mut Value) -> Result<()> {
    println!("\n## Load: {sessions} interactive sessions + {rate} MCP calls/s for {secs} s\n");
    let pid = s.gh.pid().context("server pid")?;
    let mut children = Vec::new();
    for i in 0..sessions {
        children.push(
            ssh(s, Path::Gatehouse, &["-tt"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        if i % 50 == 49 {
            eventually(Duration::from_secs(120), "sessions", || (active_sessions(s) + 20 > i).then_some(()));
        }
    }
    eventually(Duration::from_secs(300), "all sessions up", || (active_sessions(s) >= sessions).then_some(()));
    if !s.gh.cli(&["agent", "show", "bench"]).status.success() {
        s.gh.ok(&[
            "agent",
            "create",
            "bench",
            "--owner",
            "alice",
            "--scopes",
            "host:read,ssh_session:request",
            "--groups",
            "bench",
        ]);
    }
    let token = token_for(&s.gh, "bench", &[]);
    let url = format!("{}/mcp", s.gh.url());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let clients = 10u64;
    let (lat, failures, rss) = rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..clients {
            let (url, token) = (url.clone(), token.clone());
            handles.push(tokio::spawn(async move {
                let c = mcp_client(&url, &token).await?;
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 * clients / rate));
                let end = Instant::now() + Duration::from_secs(secs);
                let (mut lat, mut failures) = (Vec::new(), 0u64);
                let mut n = 0u64;
                while Instant::now() < end {
                    tick.tick().await;
                    let name = if n.is_multiple_of(2) { "gatehouse_whoami" } else { "gatehouse_list_allowed_hosts" };
                    n += 1;
                    match timed_call(&c, name, json!({})).await {
                        Ok((ms, _)) => lat.push(ms),
                        Err(_) => failures += 1,
                    }
                }
                c.cancel().await.ok();
                anyhow::Ok((lat, failures))
            }));
        }
        let mut rss = Vec::new();
        let sampler = async {
            for _ in 0..(secs / 10) {
                tokio::time::sleep(Duration::from_secs(10)).await;
                rss.push(rss_kib(pid).unwrap_or(0));
            }
        };
        let (results, ()) = tokio::join!(futures::future::join_all(handles), sampler);
        let (mut lat, mut failures) = (Vec::new(), 0u64);
        for r in results {
            let (l, f) = r??;
            lat.extend(l);
            failures += f;
        }
        anyhow::Ok((lat, failures, rss))
    })?;
    let alive = children.iter_mut().map(|c| c.try_wait().ok().flatten().is_none()).filter(|a| *a).count();
    let active = active_sessions(s);
    let (p50, p99) = (percentile(lat.clone(), 0.5), percentile(lat.clone(), 0.99));
    println!(
        "| calls | failed calls | p50 | p99 | sessions alive after | RSS every 10 s (MiB) |\n|---|---|---|---|---|---|"
    );
    println!(
        "| {} | {failures} | {p50:.2} ms | {p99:.2} ms | {alive}/{sessions} (server: {active} active) | {} |",
        lat.len(),
        rss.iter().map(|k| format!("{:.0}", *k as f64 / 1024.0)).collect::<Vec<_>>().join(" → ")
    );
    results["load"] = json!({"sessions": sessions, "rate": rate, "seconds": secs, "calls": lat.len(), "failed_calls": failures,
        "p50_ms": p50, "p99_ms": p99, "sessions_alive": alive, "server_active": active, "rss_kib": rss});
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s || a == "all");
    let num =
        |name: &str, default: u64| -> u64 { std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default) };
    let s = setup()?;
    println!(
        "# Gatehouse benchmark\n\nmachine: {} cores; OpenSSH: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        openssh_version()
    );
    let mut results = json!({});
    if want("connect") {
        connect(&s, num("BENCH_CONNECT_RUNS", 30) as usize, &mut results)?;
    }
    if want("throughput") {
        throughput(&s, num("BENCH_BYTES", 1_000_000_000), num("BENCH_ROUNDS", 3) as usize, &mut results)?;
    }
    if want("mcp") {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(mcp(&s, num("BENCH_MCP_CALLS", 500) as usize, &mut results))?;
    }
    if want("idle") {
        idle(&s, num("BENCH_IDLE", 500) as usize, &mut results)?;
    }
    if args.iter().any(|a| a == "load") {
        load(
            &s,
            num("BENCH_LOAD_SESSIONS", 500) as usize,
            num("BENCH_LOAD_RATE", 100),
            num("BENCH_LOAD_SECS", 120),
            &mut results,
        )?;
    }
    let out = gatehouse_integration::workspace().join("bench/out");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    println!("\nraw figures: bench/out/results.json");
    Ok(())
}

/// A login whose shell starts fast (`/bin/sh`, no profile), so the figures
/// measure SSH and Gatehouse rather than a heavy ~/.bashrc on the target.
fn bench_login() -> Result<String> {
    const NAME: &str = "ghbench";
    let exists = Command::new("id").arg(NAME).output()?.status.success();
    if !exists {
        let st = Command::new("useradd").args(["-m", "-s", "/bin/sh", NAME]).status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("note: cannot create user {NAME}; measuring as the current user");
            return Ok(local_login());
        }
    }
    // A locked password ("!") makes sshd refuse the account even for keys.
    let _ = Command::new("usermod").args(["-p", "*", NAME]).status();
    Ok(NAME.to_string())
}

fn openssh_version() -> String {
    let out = Command::new("ssh").arg("-V").output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_default()
}
