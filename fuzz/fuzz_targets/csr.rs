//! CSR input from renewal bots: any bytes are either a verified CSR whose
//! names passed the DNS-name check, or a refusal that does not echo the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

const SENTINEL: &str = "GHSENTINELd41d8cd98f";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    // Raw input, and the same bytes wrapped as a PEM block so the DER parser
    // behind the armour is reached too.
    let wrapped = {
        use std::fmt::Write;
        let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
        let b64 = base64_encode(data);
        for chunk in b64.as_bytes().chunks(64) {
            let _ = writeln!(pem, "{}", String::from_utf8_lossy(chunk));
        }
        pem.push_str("-----END CERTIFICATE REQUEST-----\n");
        pem
    };
    for input in [s, wrapped.as_str()] {
        if let Ok(csr) = gatehouse_ca::x509::parse_csr(input) {
            for n in &csr.dns_names {
                assert!(gatehouse_ca::x509::check_dns_name(n).is_ok(), "{n:?}");
            }
        }
    }
    // A refusal never echoes what was sent (it might be a secret pasted by
    // mistake): a marker placed before and after the input never shows up.
    for input in [format!("{SENTINEL}\n{s}"), format!("{s}\n{SENTINEL}")] {
        if let Err(e) = gatehouse_ca::x509::parse_csr(&input) {
            assert!(!e.to_string().contains(SENTINEL), "error echoes the input: {e}");
        }
    }
});

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
