//! The `LOGIN@HOST` SSH user name parser: never panics, and whatever it
//! accepts is a login and host name the broker's checks also accept or
//! refuse cleanly (no commas, spaces, wildcards or control characters).
#![no_main]
use gatehouse_bastion::target::{Target, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Target::Host { login, host } = parse(s) {
        assert!(!login.is_empty() && !host.is_empty());
        for part in [&login, &host] {
            assert!(!part.contains(['@', ',', ' ', '*', '\n', '\r', '\0', '/']), "{part:?}");
        }
        let _ = gatehouse_broker::ids::check_login(&login);
        let _ = gatehouse_broker::ids::check_name("host", &host);
    }
});
