//! Certificates and probes, checked with tools nobody here wrote: OpenSSL
//! verifies the X.509 bundles and parses the CRL, `ssh-keygen -L` reads the
//! host certificates, stock `ssh` trusts the bastion through one
//! `@cert-authority` line, `openssl s_server` serves the bundles the TLS
//! probes look at, and every response, log line and database row is scanned
//! for private key material.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gatehouse_integration::*;

both_backends!(
    x509_bundles_verify_with_openssl_and_bad_csrs_are_refused,
    revocation_reaches_the_crl,
    enrolled_target_is_reached_without_a_pinned_key,
    stock_ssh_trusts_the_bastion_by_cert_authority,
    tls_probe_confirms_the_served_bundle,
);

// ---------------------------------------------------------------- helpers

/// A P-256 key and a CSR for `sans` made by OpenSSL. The CSR also asks
/// for things the broker must never grant (CA, certificate signing, code
/// signing, a foreign subject).
fn make_csr(dir: &Path, stem: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{stem}.key"));
    let csr = dir.join(format!("{stem}.csr"));
    let san = sans.iter().map(|s| format!("DNS:{s}")).collect::<Vec<_>>().join(",");
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
        "/CN=evil.example.org/O=Mallory",
        "-addext",
        &format!("subjectAltName={san}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-addext",
        "extendedKeyUsage=codeSigning",
    ]);
    (key, csr)
}

/// One HTTP/1.1 request to the Gatehouse API, without any client library.
fn http(gh: &Gatehouse, method: &str, path: &str, bearer: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", gh.http_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The lines of a private key's PEM body that carry secret bytes (all but
/// the last, which in PKCS#8 EC keys is public-key only).
fn secret_lines(key: &Path) -> Vec<String> {
    let pem = std::fs::read_to_string(key).unwrap();
    let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    body[..body.len() - 1].iter().map(|l| l.to_string()).collect()
}

/// Every row of the database as text: the SQLite files' bytes, or each
/// PostgreSQL table through psql.
fn database_text(gh: &Gatehouse) -> String {
    match &gh.pg {
        None => {
            let mut out = String::new();
            for f in ["gatehouse.db", "gatehouse.db-wal"] {
                if let Ok(b) = std::fs::read(gh.data_dir.join(f)) {
                    out.push_str(&String::from_utf8_lossy(&b));
                }
            }
            assert!(out.contains("pki_certificates") && out.contains("ca.created"), "read the SQLite database");
            out
        }
        Some(pg) => {
            let psql = |sql: &str| {
                let out = Command::new("psql")
                    .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &pg.name, "-At", "-c", sql])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let tables = psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'");
            let mut out = String::new();
            for t in tables.lines().filter(|t| !t.is_empty()) {
                out.push_str(&psql(&format!("SELECT t::text FROM \"{t}\" t")));
            }
            assert!(out.contains("ca.created"), "read the PostgreSQL rows");
            out
        }
    }
}

/// No private key material in `responses`, the serve log, the database, or
/// any file in the data dir.
fn assert_no_private_keys(gh: &Gatehouse, responses: &[String], keys: &[&Path]) {
    let mut haystacks: Vec<(String, String)> = responses.iter().map(|r| ("response".to_string(), r.clone())).collect();
    haystacks.push(("serve log".into(), gh.log_text()));
    haystacks.push(("serve stdout".into(), gh.stdout.lock().unwrap().clone()));
    haystacks.push(("database".into(), database_text(gh)));
    haystacks.push(("audit".into(), gh.ok(&["audit", "--format", "json", "--limit", "100000"])));
    for entry in walk(&gh.data_dir) {
        if entry.starts_with(gh.data_dir.join("recordings")) {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap();
        haystacks.push((entry.display().to_string(), String::from_utf8_lossy(&bytes).into_owned()));
    }
    let secrets: Vec<String> = keys.iter().flat_map(|k| secret_lines(k)).collect();
    assert!(!secrets.is_empty());
    for (what, text) in &haystacks {
        assert!(!text.contains("PRIVATE KEY"), "{what} contains PRIVATE KEY");
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{what} contains a line of a private key");
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The `gatehouse` CLI as it runs on a target: no admin token anywhere.
fn target_cli(gh: &Gatehouse, home: &Path, args: &[&str]) -> Ran {
    let mut c = Command::new(gatehouse_bin());
    c.args(args)
        .env("GATEHOUSE_URL", gh.url())
        .env_remove("GATEHOUSE_TOKEN")
        .env_remove("GATEHOUSE_ENROLL_TOKEN")
        .env("GATEHOUSE_DATA_DIR", home)
        .current_dir(home);
    run(c)
}

fn fp_from_openssl(cert: &Path) -> String {
    let out = openssl_ok(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-fingerprint", "-sha256"]);
    out.trim().rsplit('=').next().unwrap().replace(':', "").to_ascii_lowercase()
}

// ------------------------------------------------------------------ tests

fn x509_bundles_verify_with_openssl_and_bad_csrs_are_refused(b: Backend) {
    let gh = Gatehouse::start(b);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut responses = Vec::new();
    responses.push(gh.ok(&["pki", "allow", "edge", "--domain", "*.edge.example.com", "--max-ttl", "30d"]));
    let (key, csr) = make_csr(d, "web", &["web.edge.example.com", "api.edge.example.com"]);
    let out = d.join("bundle");
    // Ask for a year: the group allows 30 days.
    responses.push(gh.ok(&[
        "pki",
        "sign",
        "--csr",
        csr.to_str().unwrap(),
        "--ttl",
        "365d",
        "--out-dir",
        out.to_str().unwrap(),
    ]));
    let (root, chain, leaf) = (out.join("root.pem"), out.join("chain.pem"), out.join("leaf.pem"));
    let verified = openssl_ok(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(verified.trim().ends_with(": OK"), "{verified}");
    // The leaf alone does not verify against the root: the chain matters.
    assert_ne!(openssl(&["verify", "-CAfile", root.to_str().unwrap(), leaf.to_str().unwrap()]).code, Some(0));
    // fullchain = leaf + chain, and `pki ca` prints the same root
    let full = std::fs::read_to_string(out.join("fullchain.pem")).unwrap();
    assert_eq!(
        full,
        format!("{}{}", std::fs::read_to_string(&leaf).unwrap(), std::fs::read_to_string(&chain).unwrap())
    );
    assert_eq!(gh.ok(&["pki", "ca"]), std::fs::read_to_string(&root).unwrap());

    // What the broker set, not what the CSR asked for.
    let text = openssl_ok(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains("DNS:web.edge.example.com, DNS:api.edge.example.com"), "{text}");
    assert!(text.contains("Subject: CN = web.edge.example.com"), "{text}");
    assert!(!text.contains("evil.example.org") && !text.contains("Mallory"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    let ku = text.split("X509v3 Key Usage: critical").nth(1).unwrap().lines().nth(1).unwrap().trim();
    assert_eq!(ku, "Digital Signature", "{text}");
    assert!(!text.contains("Certificate Sign") && !text.contains("CRL Sign"), "{text}");
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("Code Signing"), "{text}");
    assert!(text.contains("Issuer: O = Gatehouse, CN = Gatehouse Issuing CA"), "{text}");
    // Validity capped at 30 days: still valid in 29, gone in 31.
    assert_eq!(openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-checkend", "2505600"]).code, Some(0));
    assert_eq!(openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-checkend", "2678400"]).code, Some(1));
    let serial = openssl_ok(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_ascii_lowercase();
    assert_eq!(serial.len(), 32, "a 128-bit random serial: {serial}");

    // The list and the expiry filter.
    let listed = gh.json(&["pki", "list", "--expiring-within", "31d"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["serial"], serial.as_str());
    assert_eq!(listed[0]["fingerprint_sha256"], fp_from_openssl(&leaf).as_str());
    assert!(gh.json(&["pki", "list", "--expiring-within", "29d"]).as_array().unwrap().is_empty());
    responses.push(listed.to_string());
    let got = gh.json(&["pki", "get", "web.edge.example.com"]);
    assert_eq!(got["leaf_pem"].as_str().unwrap(), std::fs::read_to_string(&leaf).unwrap());
    responses.push(got.to_string());

    // Refusals: a foreign name, a tampered CSR, garbage, a private key.
    let (_fkey, foreign) = make_csr(d, "foreign", &["web.edge.example.com", "evil.example.org"]);
    let err = gh.fails(&["pki", "sign", "--csr", foreign.to_str().unwrap()]);
    assert!(err.contains("evil.example.org is not under any domain allowed"), "{err}");
    let (_k2, deep) = make_csr(d, "deep", &["a.b.edge.example.com"]);
    let err = gh.fails(&["pki", "sign", "--csr", deep.to_str().unwrap()]);
    assert!(err.contains("a.b.edge.example.com is not under any domain"), "{err}");

    let der = d.join("web.der");
    openssl_ok(&["req", "-in", csr.to_str().unwrap(), "-outform", "DER", "-out", der.to_str().unwrap()]);
    let mut bytes = std::fs::read(&der).unwrap();
    let at = bytes.windows(3).position(|w| w == b"web").unwrap();
    bytes[at] = b'x';
    std::fs::write(&der, &bytes).unwrap();
    let tampered = d.join("tampered.csr");
    openssl_ok(&["req", "-inform", "DER", "-in", der.to_str().unwrap(), "-out", tampered.to_str().unwrap()]);
    let err = gh.fails(&["pki", "sign", "--csr", tampered.to_str().unwrap()]);
    assert!(err.contains("signature does not verify"), "{err}");

    let garbage = d.join("garbage.csr");
    std::fs::write(&garbage, "this is not a CSR\n").unwrap();
    let err = gh.fails(&["pki", "sign", "--csr", garbage.to_str().unwrap()]);
    assert!(err.contains("not a PEM certificate signing request"), "{err}");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE REQUEST-----\nMIIBbG9vaw==\n-----END CERTIFICATE REQUEST-----\n")
        .unwrap();
    let err = gh.fails(&["pki", "sign", "--csr", garbage.to_str().unwrap()]);
    assert!(err.contains("malformed") || err.contains("PEM"), "{err}");
    // The CLI will not send a private key; straight to the API, the broker refuses it without echoing it.
    let err = gh.fails(&["pki", "sign", "--csr", key.to_str().unwrap()]);
    assert!(err.contains("private key"), "{err}");
    let body = serde_json::json!({"csr_pem": std::fs::read_to_string(&key).unwrap()}).to_string();
    let (status, resp) = http(&gh, "POST", "/api/v1/pki/sign", Some(&gh.token), Some(&body));
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("that is a private key, not a CSR"), "{resp}");
    responses.push(resp);
    // No credential, no signing.
    let (status, _) = http(&gh, "POST", "/api/v1/pki/sign", None, Some(&body));
    assert_eq!(status, 401);

    let denies = gh.audit(&["--action", "pki.sign", "--outcome", "deny"]);
    let reasons: Vec<&str> = denies.iter().map(|e| e["reason"].as_str().unwrap()).collect();
    for want in [
        "evil.example.org is not under",
        "a.b.edge.example.com",
        "signature does not verify",
        "not a PEM",
        "private key",
    ] {
        assert!(reasons.iter().any(|r| r.contains(want)), "audit has a denial for {want}: {reasons:#?}");
    }
    let allow = gh.audit(&["--action", "pki.sign", "--outcome", "allow"]);
    assert_eq!(allow.len(), 1);
    assert_eq!(allow[0]["details"]["ttl_capped"], true);
    assert_eq!(allow[0]["details"]["serial"], serial.as_str());
    assert_no_private_keys(&gh, &responses, &[&key]);
}

fn revocation_reaches_the_crl(b: Backend) {
    let gh = Gatehouse::start(b);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gh.ok(&["pki", "allow", "edge", "--domain", "*.edge.example.com"]);
    let (_k1, csr1) = make_csr(d, "one", &["one.edge.example.com"]);
    let (_k2, csr2) = make_csr(d, "two", &["two.edge.example.com"]);
    gh.ok(&["pki", "sign", "--csr", csr1.to_str().unwrap(), "--out-dir", d.join("one").to_str().unwrap()]);
    gh.ok(&["pki", "sign", "--csr", csr2.to_str().unwrap(), "--out-dir", d.join("two").to_str().unwrap()]);
    let serial = |p: &Path| {
        openssl_ok(&["x509", "-in", p.to_str().unwrap(), "-noout", "-serial"])
            .trim()
            .trim_start_matches("serial=")
            .to_string()
    };
    let (s1, s2) = (serial(&d.join("one/leaf.pem")), serial(&d.join("two/leaf.pem")));
    // Revoke by the serial as OpenSSL prints it (uppercase hex).
    let out = gh.ok(&["pki", "revoke", &s1, "--reason", "key-compromise: laptop stolen"]);
    assert!(out.contains(&s1.to_ascii_lowercase()), "{out}");
    let err = gh.fails(&["pki", "revoke", &s1, "--reason", "again"]);
    assert!(err.contains("already revoked"), "{err}");
    assert!(gh.fails(&["pki", "revoke", "../../etc", "--reason", "x"]).contains("hex"));

    // Public, no credential.
    let (status, crl) = http(&gh, "GET", "/pki/crl.pem", None, None);
    assert_eq!(status, 200);
    let crl_path = d.join("crl.pem");
    std::fs::write(&crl_path, &crl).unwrap();
    let text = openssl_ok(&["crl", "-in", crl_path.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains(&format!("Serial Number: {s1}")), "{text}");
    assert!(!text.contains(&s2), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    // Signed by the issuing CA, and OpenSSL refuses the revoked leaf with it.
    let (status, root) = http(&gh, "GET", "/pki/root.pem", None, None);
    assert_eq!(status, 200);
    let cas = d.join("cas.pem");
    std::fs::write(&cas, format!("{root}{}", std::fs::read_to_string(d.join("one/chain.pem")).unwrap())).unwrap();
    let r = openssl(&["crl", "-in", crl_path.to_str().unwrap(), "-CAfile", cas.to_str().unwrap(), "-noout"]);
    assert!(r.code == Some(0) && r.stderr.contains("verify OK"), "{}{}", r.stdout, r.stderr);
    let check = |leaf: &str| {
        openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            crl_path.to_str().unwrap(),
            "-CAfile",
            d.join("one/root.pem").to_str().unwrap(),
            "-untrusted",
            d.join("one/chain.pem").to_str().unwrap(),
            leaf,
        ])
    };
    let r = check(d.join("one/leaf.pem").to_str().unwrap());
    assert_ne!(r.code, Some(0));
    assert!(format!("{}{}", r.stdout, r.stderr).contains("certificate revoked"), "{}{}", r.stdout, r.stderr);
    assert_eq!(check(d.join("two/leaf.pem").to_str().unwrap()).code, Some(0));
    // Listing shows the revocation; audit has it with its reason.
    let all = gh.json(&["pki", "list", "--all"]);
    let one = all.as_array().unwrap().iter().find(|c| c["name"] == "one.edge.example.com").unwrap();
    assert_eq!(one["status"], "revoked");
    assert_eq!(one["revoke_reason"], "key-compromise: laptop stolen");
    let ev = gh.audit(&["--action", "pki.revoke"]);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["details"]["reason_code"], "keyCompromise");
}

fn enrolled_target_is_reached_without_a_pinned_key(b: Backend) {
    let gh = Gatehouse::start(b);
    let key = UserKey::new();
    gh.ok(&["user", "add", "alice", "--ssh-key", key.public.to_str().unwrap()]);
    let login = local_login();
    let certs = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let cert_path = certs.path().join("ssh_host_ed25519_key-cert.pub");
    // sshd is told where its certificate will be; it starts without one.
    let sshd = Sshd::start_with(&gh.user_ca(), &format!("HostCertificate {}", cert_path.display())).unwrap();

    // Neither a key, a scan nor --trust-host-ca: refused.
    let err = gh.fails(&["host", "add", "web-3", "--address", &sshd.address()]);
    assert!(err.contains("never trusts a target's key on first use silently"), "{err}");
    let body = serde_json::json!({"name": "web-3", "address": sshd.address()}).to_string();
    let (status, resp) = http(&gh, "POST", "/api/v1/hosts", Some(&gh.token), Some(&body));
    assert_eq!(status, 400, "the API refuses it too: {resp}");
    let out = gh.ok(&["host", "add", "web-3", "--address", &sshd.address(), "--group", "staging", "--trust-host-ca"]);
    assert!(out.contains("no pinned key"), "{out}");
    gh.ok(&["grant", "add", "alice", "--host", "web-3", "--login", &login, "--ttl", "10m"]);

    // Not enrolled yet: no pinned key, no certificate → refused and audited.
    let r = run(ssh(&gh, &key, &format!("{login}@web-3"), &["echo reached"]));
    assert_ne!(r.code, Some(0));
    assert!(!r.stdout.contains("reached"));
    assert!(r.stderr.contains("web-3 has no pinned host key and presented no host certificate"), "{}", r.stderr);

    // Enrol from the target's side, with only the one-time token.
    let issued = gh.ok(&["host", "enroll-token", "web-3"]);
    let token = issued.lines().nth(1).unwrap().trim().to_string();
    assert!(token.starts_with("ghenr_"), "{issued}");
    let host_pub = sshd.host_key_pub.to_str().unwrap();
    let r = target_cli(
        &gh,
        home.path(),
        &["host", "enroll", "--url", &gh.url(), &token, "--host-key", host_pub, "--out", cert_path.to_str().unwrap()],
    );
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("HostCertificate {}", std::fs::canonicalize(&cert_path).unwrap().display())),
        "{}",
        r.stdout
    );
    let ca_file = certs.path().join("gatehouse_user_ca.pub");
    assert!(
        r.stdout.contains(&format!("TrustedUserCAKeys {}", std::fs::canonicalize(&ca_file).unwrap().display())),
        "{}",
        r.stdout
    );
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap().trim(), gh.user_ca());
    let listing = run({
        let mut c = Command::new("ssh-keygen");
        c.arg("-L").arg("-f").arg(&cert_path);
        c
    });
    assert_eq!(listing.code, Some(0), "{}", listing.stderr);
    assert!(listing.stdout.contains("host certificate"), "{}", listing.stdout);
    let principals = listing.stdout.split("Principals:").nth(1).unwrap().split("Critical Options").next().unwrap();
    assert_eq!(principals.split_whitespace().collect::<Vec<_>>(), ["web-3", "127.0.0.1"], "{}", listing.stdout);
    let host_ca_fp = run({
        let mut c = Command::new("ssh-keygen");
        let f = home.path().join("host_ca.pub");
        std::fs::write(&f, gh.ok(&["ca", "show", "--host-ca"])).unwrap();
        c.arg("-lf").arg(f);
        c
    });
    let ca_fp = host_ca_fp.stdout.split_whitespace().nth(1).unwrap().to_string();
    assert!(listing.stdout.contains(&format!("Signing CA: ED25519 {ca_fp}")), "{}", listing.stdout);
    // The token was single use.
    let r = target_cli(
        &gh,
        home.path(),
        &[
            "host",
            "enroll",
            "--url",
            &gh.url(),
            &token,
            "--host-key",
            host_pub,
            "--out",
            home.path().join("x").to_str().unwrap(),
        ],
    );
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("refused") || r.stderr.contains("unauthorized"), "{}", r.stderr);

    // sshd picks the certificate up; the bastion accepts it for web-3.
    sshd.reload().unwrap();
    let r = run(ssh(&gh, &key, &format!("{login}@web-3"), &["echo reached"]));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "reached\n");
    let hosts = gh.json(&["host", "list"]);
    let web3 = hosts.as_array().unwrap().iter().find(|h| h["name"] == "web-3").unwrap();
    assert!(web3["host_key"].is_null(), "still no pinned key");
    // An SSH probe sees the same.
    let p = gh.json(&["probe", "create", "web-3", "--kind", "ssh"]);
    let o = &p["last_result"]["observed"];
    assert_eq!(p["status"], "ok", "{p:#}");
    assert_eq!(o["host_certificate_valid"], true, "{p:#}");
    let host_fp = run({
        let mut c = Command::new("ssh-keygen");
        c.arg("-lf").arg(&sshd.host_key_pub);
        c
    });
    assert_eq!(o["host_key_fingerprint"], host_fp.stdout.split_whitespace().nth(1).unwrap());

    // A host whose certificate names another host is refused and audited.
    gh.ok(&["host", "add", "web-4", "--address", &sshd.address(), "--trust-host-ca"]);
    gh.ok(&["grant", "add", "alice", "--host", "web-4", "--login", &login, "--ttl", "10m"]);
    let r = run(ssh(&gh, &key, &format!("{login}@web-4"), &["echo reached"]));
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("host certificate is not valid for web-4"), "{}", r.stderr);
    let p = gh.json(&["probe", "create", "web-4", "--kind", "ssh"]);
    assert_eq!(p["last_result"]["observed"]["host_certificate_valid"], false, "{p:#}");
    let denies = gh.audit(&["--action", "ssh.upstream_host_key"]);
    assert!(
        denies.iter().any(|e| e["resource"] == format!("{login}@web-3")
            && e["reason"].as_str().unwrap().contains("no host certificate")),
        "{denies:#?}"
    );
    assert!(
        denies.iter().any(|e| e["resource"] == format!("{login}@web-4") && e["severity"] == "critical"),
        "{denies:#?}"
    );

    // Renewal: nothing to do while far from expiry; renews when due, signed by the host key.
    let renew = |before: &str| {
        target_cli(
            &gh,
            home.path(),
            &[
                "host",
                "enroll",
                "--url",
                &gh.url(),
                "--host-key",
                host_pub,
                "--out",
                cert_path.to_str().unwrap(),
                "--renew-before",
                before,
            ],
        )
    };
    let first = std::fs::read_to_string(&cert_path).unwrap();
    let r = renew("7d");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("nothing to do"), "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), first);
    let r = renew("60d");
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("renewing"), "{}", r.stdout);
    let second = std::fs::read_to_string(&cert_path).unwrap();
    assert_ne!(second, first);
    // The replaced certificate cannot renew again (replay), and that is audited.
    let old = home.path().join("old-cert.pub");
    std::fs::write(&old, &first).unwrap();
    let r = target_cli(
        &gh,
        home.path(),
        &[
            "host",
            "enroll",
            "--url",
            &gh.url(),
            "--host-key",
            host_pub,
            "--out",
            old.to_str().unwrap(),
            "--renew-before",
            "60d",
        ],
    );
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("already renewed"), "{}", r.stderr);
    let renewals = gh.audit(&["--action", "host.renew"]);
    assert!(renewals.iter().any(|e| e["outcome"] == "allow"));
    assert!(
        renewals.iter().any(|e| e["outcome"] == "deny" && e["reason"].as_str().unwrap().contains("already renewed"))
    );
    sshd.reload().unwrap();
    let r = run(ssh(&gh, &key, &format!("{login}@web-3"), &["echo again"]));
    assert_eq!(r.stdout, "again\n", "{}", r.stderr);
    let certs_listed = gh.json(&["host", "certificates", "web-3"]);
    assert_eq!(certs_listed.as_array().unwrap().len(), 2);
    // The host's private key never went anywhere.
    let host_private = sshd.host_key_pub.with_extension("");
    let body = std::fs::read_to_string(&host_private).unwrap();
    let secret: Vec<&str> = body.lines().filter(|l| !l.starts_with("-----")).collect();
    let db = database_text(&gh);
    let log = gh.log_text();
    for line in secret.iter().filter(|l| l.len() > 20) {
        assert!(!db.contains(line) && !log.contains(line), "host private key material leaked");
    }
}

fn stock_ssh_trusts_the_bastion_by_cert_authority(b: Backend) {
    let w = World::new(b);
    let login = local_login();
    w.grant("alice", "web-1", &login, "10m");
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    // Only the @cert-authority line: no pinned bastion key anywhere.
    let line = w.gh.ok(&["ca", "show", "--known-hosts", "[127.0.0.1]:*"]);
    assert!(line.starts_with("@cert-authority [127.0.0.1]:* ssh-ed25519 "), "{line}");
    std::fs::write(&kh, &line).unwrap();
    let connect = |known: &Path| {
        let mut c = Command::new("ssh");
        c.args(["-F", "none", "-i"])
            .arg(&w.key.private)
            .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no", "-p"])
            .arg(w.gh.ssh_port.to_string())
            .arg(format!("{login}@web-1@127.0.0.1"))
            .arg("echo via-ca");
        run(c)
    };
    let r = connect(&kh);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "via-ca\n");
    assert!(!r.stderr.contains("authenticity") && !r.stderr.contains("Permanently added"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), line, "nothing was added to known_hosts");
    // Control: the same line with another CA's key is refused, so the check above is real.
    let wrong = dir.path().join("wrong_known_hosts");
    std::fs::write(&wrong, format!("@cert-authority [127.0.0.1]:* {}\n", w.gh.user_ca())).unwrap();
    let r = connect(&wrong);
    assert_eq!(r.code, Some(255));
    assert!(r.stderr.contains("Host key verification failed"), "{}", r.stderr);
}

fn tls_probe_confirms_the_served_bundle(b: Backend) {
    let gh = Gatehouse::start(b);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut responses = Vec::new();
    gh.ok(&["pki", "allow", "edge", "--domain", "*.edge.example.com"]);
    gh.ok(&["host", "add", "edge-1", "--address", "127.0.0.1:22", "--group", "edge", "--trust-host-ca"]);
    gh.ok(&["host", "add", "stage-1", "--address", "127.0.0.3:22", "--group", "staging", "--trust-host-ca"]);
    let name = "www.edge.example.com";
    let (key1, csr1) = make_csr(d, "k1", &[name]);
    responses.push(gh.ok(&[
        "pki",
        "sign",
        "--csr",
        csr1.to_str().unwrap(),
        "--out-dir",
        d.join("b1").to_str().unwrap(),
    ]));
    let fp1 = fp_from_openssl(&d.join("b1/leaf.pem"));
    let port = free_port();
    let server = TlsServer::start(port, &d.join("b1/leaf.pem"), &d.join("b1/chain.pem"), &key1);
    let target = format!("edge-1:{port}");

    let p = gh.json(&["probe", "create", &target, "--kind", "tls", "--expect-certificate-name", name]);
    responses.push(p.to_string());
    let id = p["id"].as_str().unwrap().to_string();
    let o = &p["last_result"]["observed"];
    assert_eq!(p["status"], "ok", "{p:#}");
    assert!(p["latency_ms"].as_i64().unwrap() >= 0);
    assert_eq!(o["certificate"]["fingerprint_sha256"], fp1.as_str(), "{p:#}");
    assert_eq!(o["certificate"]["subject"], format!("CN={name}"));
    assert_eq!(o["certificate"]["dns_names"], serde_json::json!([name]));
    assert!(o["certificate"]["issuer"].as_str().unwrap().contains("Gatehouse Issuing CA"));
    assert!(o["certificate"]["not_after"].as_i64().unwrap() > 0);
    assert_eq!(o["certificate"]["chains_to_gatehouse_root"], true, "{p:#}");
    assert_eq!(o["certificate"]["chain_length"], 2);
    assert_eq!(o["matches_latest_bundle"], true, "{p:#}");

    // Re-issue under the same name with a new key: the server still serves the old one.
    let (key2, csr2) = make_csr(d, "k2", &[name]);
    responses.push(gh.ok(&[
        "pki",
        "sign",
        "--csr",
        csr2.to_str().unwrap(),
        "--name",
        name,
        "--out-dir",
        d.join("b2").to_str().unwrap(),
    ]));
    let fp2 = fp_from_openssl(&d.join("b2/leaf.pem"));
    assert_ne!(fp1, fp2);
    let p = gh.json(&["probe", "run", &id]);
    responses.push(p.to_string());
    let o = &p["last_result"]["observed"];
    assert_eq!(o["certificate"]["fingerprint_sha256"], fp1.as_str());
    assert_eq!(o["matches_latest_bundle"], false, "{p:#}");
    assert_eq!(o["latest_bundle_fingerprint"], fp2.as_str());
    // The server switches to the new bundle: the probe confirms it.
    drop(server);
    let _server = TlsServer::start(port, &d.join("b2/leaf.pem"), &d.join("b2/chain.pem"), &key2);
    let p = gh.json(&["probe", "run", &id]);
    let o = &p["last_result"]["observed"];
    assert_eq!(o["certificate"]["fingerprint_sha256"], fp2.as_str());
    assert_eq!(o["matches_latest_bundle"], true, "{p:#}");
    assert_eq!(p["recent_results"].as_array().unwrap().len(), 3);
    let got = gh.json(&["probe", "get", &id]);
    assert_eq!(got["last_result"]["observed"]["matches_latest_bundle"], true);
    responses.push(got.to_string());
    // HTTPS: the status code.
    let p = gh.json(&["probe", "create", &target, "--kind", "https"]);
    assert_eq!(p["last_result"]["observed"]["http_status"], 200, "{p:#}");
    // TCP to a closed port fails, with a reason.
    let closed = free_port();
    let p = gh.json(&["probe", "create", &format!("edge-1:{closed}"), "--kind", "tcp"]);
    assert_eq!(p["status"], "failed");
    assert!(p["last_result"]["error"].as_str().unwrap().contains("cannot connect"), "{p:#}");

    // Not a scanner: unregistered addresses, metadata, other groups.
    let refused = |args: &[&str], why: &str| {
        let mut a = vec!["probe", "create"];
        a.extend_from_slice(args);
        let err = gh.fails(&a);
        assert!(err.contains("probe refused") && err.contains(why), "{args:?}: {err}");
    };
    refused(&[&format!("127.0.0.2:{port}"), "--kind", "tls"], "not the address of a registered host");
    refused(&["169.254.169.254:80", "--kind", "https"], "link-local");
    refused(&["[fe80::1]:80", "--kind", "tcp"], "link-local");
    refused(&["stage-1", "--kind", "tcp", "--group", "edge"], "outside your groups");
    refused(&[&target, "--kind", "tls", "--group", "staging"], "outside your groups");
    refused(&["127.0.0.3:22", "--kind", "tcp", "--group", "edge"], "not the address of a registered host");
    refused(&[&format!("nothere.example.org:{port}"), "--kind", "tls"], "not under your allowed domains");
    let denies = gh.audit(&["--action", "probe.create", "--outcome", "deny"]);
    assert_eq!(denies.len(), 7, "{denies:#?}");
    assert!(denies.iter().any(|e| e["resource"] == "probe:169.254.169.254:80"));
    // Allowed as the edge group would be:
    let p = gh.json(&["probe", "create", &target, "--kind", "tls", "--group", "edge"]);
    assert_eq!(p["status"], "ok");

    // On an interval: the scheduler runs it again.
    let p =
        gh.json(&["probe", "create", &target, "--kind", "tls", "--expect-certificate-name", name, "--interval", "10s"]);
    let iid = p["id"].as_str().unwrap().to_string();
    let runs = eventually(Duration::from_secs(30), "a scheduled run", || {
        let g = gh.json(&["probe", "get", &iid]);
        (g["recent_results"].as_array().unwrap().len() >= 2).then_some(g)
    });
    assert_eq!(runs["last_result"]["observed"]["matches_latest_bundle"], true);
    let err = gh.fails(&["probe", "create", &target, "--kind", "tls", "--interval", "1s"]);
    assert!(err.contains("between 10s and 24h"), "{err}");
    gh.ok(&["probe", "delete", &iid]);
    assert!(gh.json(&["probe", "list"]).as_array().unwrap().iter().all(|p| p["id"] != iid.as_str()));

    assert_no_private_keys(&gh, &responses, &[&key1, &key2]);
}
