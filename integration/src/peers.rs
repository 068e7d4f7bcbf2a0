//! Small helpers around the real peers the tests drive: OpenSSL (CSRs,
//! `s_server`), MCP call operations for the Python SDK client, the host name.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Ran, run, wait_for_port};

/// One MCP `tools/call` operation for [`crate::mcp_http`] / [`crate::mcp_stdio`].
pub fn mcp_call(name: &str, args: Value) -> Value {
    json!({"op": "call", "name": name, "args": args})
}

/// `uname -n`, what `gatehouse_ssh_exec` of `uname -n` prints on a local target.
pub fn hostname() -> String {
    String::from_utf8(Command::new("uname").arg("-n").output().expect("uname").stdout)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Run `openssl` and return what it did.
pub fn openssl(args: &[&str]) -> Ran {
    let mut c = Command::new("openssl");
    c.args(args);
    run(c)
}

/// Run `openssl`, which must succeed; its stdout.
pub fn openssl_ok(args: &[&str]) -> String {
    let r = openssl(args);
    assert_eq!(r.code, Some(0), "openssl {args:?} failed: {}{}", r.stdout, r.stderr);
    r.stdout
}

/// `openssl s_server -www` serving a leaf and chain on 127.0.0.1:`port`.
pub struct TlsServer(Child);

impl TlsServer {
    pub fn start(port: u16, leaf: &Path, chain: &Path, key: &Path) -> Self {
        let child = Command::new("openssl")
            .args(["s_server", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(leaf)
            .arg("-cert_chain")
            .arg(chain)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        wait_for_port(port, Duration::from_secs(10)).expect("s_server listens");
        Self(child)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
