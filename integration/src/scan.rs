//! The secret scan run after the whole suite: every log line, CLI and HTTP
//! response, MCP result, recording and database row the tests produced is
//! searched for private key material and bearer tokens in clear.
//!
//! What is looked for:
//! - Gatehouse tokens by shape: `ghadm_`, `ghagt_`, `ghboot_`, `ghenr_`
//!   followed by 43 base64url characters (256 bits);
//! - private keys: PEM armour (`PRIVATE KEY-----`) and the base64 of the
//!   OpenSSH private key magic (`openssh-key-v1`), armoured or not;
//! - each test instance's master key (listed in its `secrets.txt`).
//!
//! Excluded by the harness before anything is written: the one place each
//! secret is shown by design (`token create`, `agent bootstrap`, `host
//! enroll-token` output and the first-start admin token line).

use std::path::{Path, PathBuf};

/// Where test instances leave what they produced (set by the test command).
pub const ARTIFACTS_ENV: &str = "GATEHOUSE_TEST_ARTIFACTS";
/// The file in each instance's artifact dir that lists its secrets.
pub const SECRETS_FILE: &str = "secrets.txt";

const TOKEN_PREFIXES: [&str; 4] = ["ghadm_", "ghagt_", "ghboot_", "ghenr_"];
const TOKEN_BODY_LEN: usize = 43;
/// base64("openssh-key-v1"), the start of every OpenSSH private key blob.
const OPENSSH_KEY_MAGIC_B64: &str = "b3BlbnNzaC1rZXktdjE";

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    pub offset: usize,
    pub what: &'static str,
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The patterns, compiled once: token prefixes, private key markers and the
/// known secret values, found in one pass over each file.
pub struct Patterns {
    ac: aho_corasick::AhoCorasick,
    kinds: Vec<(&'static str, bool)>,
}

impl Patterns {
    /// `known` are exact secret values (shorter than 16 bytes are ignored).
    pub fn new(known: &[String]) -> Self {
        let mut needles: Vec<&[u8]> = Vec::new();
        let mut kinds = Vec::new();
        for p in TOKEN_PREFIXES {
            needles.push(p.as_bytes());
            kinds.push(("bearer token", true));
        }
        needles.push(b"PRIVATE KEY-----");
        kinds.push(("PEM private key", false));
        needles.push(OPENSSH_KEY_MAGIC_B64.as_bytes());
        kinds.push(("OpenSSH private key blob", false));
        for k in known.iter().filter(|k| k.len() >= 16) {
            needles.push(k.as_bytes());
            kinds.push(("known secret (master key)", false));
        }
        let ac = aho_corasick::AhoCorasick::new(needles).unwrap_or_else(|e| panic!("scan patterns: {e}"));
        Self { ac, kinds }
    }

    /// Find secrets in `data` (any bytes).
    pub fn scan(&self, data: &[u8]) -> Vec<(usize, &'static str)> {
        let mut found = Vec::new();
        for m in self.ac.find_overlapping_iter(data) {
            let Some(&(what, is_token)) = self.kinds.get(m.pattern().as_usize()) else { continue };
            if is_token {
                let n = data[m.end()..].iter().take_while(|b| is_b64url(**b)).count();
                if n < TOKEN_BODY_LEN {
                    continue;
                }
            }
            found.push((m.start(), what));
        }
        found.sort();
        found
    }
}

/// Find secrets in `data` (any bytes). `known` are exact secret values.
pub fn scan_bytes(data: &[u8], known: &[String]) -> Vec<(usize, &'static str)> {
    Patterns::new(known).scan(data)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Scan every file under `root`. Returns the findings and (files, bytes) scanned.
pub fn scan_dir(root: &Path) -> std::io::Result<(Vec<Finding>, usize, u64)> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    let mut known = Vec::new();
    for f in files.iter().filter(|f| f.file_name().is_some_and(|n| n == SECRETS_FILE)) {
        known.extend(std::fs::read_to_string(f)?.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    }
    known.sort();
    known.dedup();
    let patterns = Patterns::new(&known);
    let mut findings = Vec::new();
    let (mut n, mut bytes) = (0, 0u64);
    for f in files.iter().filter(|f| f.file_name().is_none_or(|n| n != SECRETS_FILE)) {
        let data = std::fs::read(f)?;
        n += 1;
        bytes += data.len() as u64;
        for (offset, what) in patterns.scan(&data) {
            findings.push(Finding { file: f.clone(), offset, what });
        }
    }
    Ok((findings, n, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens_keys_and_known_secrets_but_not_their_hashes() {
        let token = format!("ghagt_{}", "A".repeat(43));
        let text = format!("log line token={token} end");
        assert_eq!(scan_bytes(text.as_bytes(), &[]), vec![(15, "bearer token")]);
        // A hash of a token, a token id or a truncated prefix is not a token.
        let safe = "tok_8c7a268711e06226 sha256=ab12 ghagt_short ghadm_";
        assert!(scan_bytes(safe.as_bytes(), &[]).is_empty());
        let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n";
        let kinds: Vec<_> = scan_bytes(pem.as_bytes(), &[]).into_iter().map(|(_, w)| w).collect();
        assert_eq!(kinds, vec!["PEM private key", "OpenSSH private key blob"]);
        let mk = "ab".repeat(32);
        assert_eq!(scan_bytes(format!("x{mk}").as_bytes(), std::slice::from_ref(&mk)).len(), 1);
        // Binary data (a SQLite page) is searched too.
        let mut page = vec![0u8; 100];
        page.extend_from_slice(token.as_bytes());
        assert_eq!(scan_bytes(&page, &[]).len(), 1);
    }

    #[test]
    fn scan_dir_reads_every_file_but_the_secret_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/recordings")).unwrap();
        let mk = "cd".repeat(32);
        std::fs::write(dir.path().join("a").join(SECRETS_FILE), format!("{mk}\n")).unwrap();
        std::fs::write(dir.path().join("a/serve.log"), "all quiet").unwrap();
        std::fs::write(dir.path().join("a/recordings/r.cast"), format!("[0.1, \"o\", \"{mk}\"]")).unwrap();
        let (f, n, _) = scan_dir(dir.path()).unwrap();
        assert_eq!(n, 2);
        assert_eq!(f.len(), 1);
        assert!(f[0].file.ends_with("r.cast"));
    }
}
