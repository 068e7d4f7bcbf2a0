//! Bearer token parsing: shape check, hashing and id checks never panic, and
//! only well-formed values (known prefix, 43 base64url characters) pass.
#![no_main]
use gatehouse_broker::tokens::{hash, well_formed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if well_formed(s).is_some() {
        let body = s.split_once('_').map(|(_, b)| b).unwrap_or("");
        assert!(s.len() <= 7 + 43, "{s:?}");
        assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    assert_eq!(hash(s).len(), 64);
    let _ = gatehouse_broker::ids::check("tok", s);
    let _ = gatehouse_broker::ids::check("s", s);
});
