//! Signed-request verification with attacker-controlled headers and body:
//! never panics, and never accepts anything not signed by the key.
#![no_main]
use gatehouse_broker::agents::{SignedRequest, verify_signature};
use libfuzzer_sys::fuzz_target;

// A fixed public key whose private half this target never has.
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJD+e+e8JPNS3in4yfYuDlhK4FHSi5cbqDW+1ZXnc1rp";

fuzz_target!(|data: &[u8]| {
    // Fields separated by newlines: method, path, timestamp, nonce, signature, body.
    let text = String::from_utf8_lossy(data);
    let mut it = text.splitn(6, '\n');
    let (m, p, t, n, s, b) = (
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    );
    let req = SignedRequest { agent: "fuzz", method: m, path: p, timestamp: t, nonce: n, signature_b64: s, body: b.as_bytes() };
    let now = t.parse::<i64>().unwrap_or(0);
    assert!(verify_signature(KEY, &req, now).is_err(), "accepted a request nobody signed");
});
