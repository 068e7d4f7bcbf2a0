//! Policy files: any text is either a valid policy whose description renders
//! and which evaluates an ask without panicking, or a one-line error.
#![no_main]
use gatehouse_broker::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    match Policy::parse(s) {
        Ok(p) => {
            let _ = p.describe();
            assert!(p.max_ttl.as_secs() > 0);
        }
        Err(e) => assert!(!e.contains('\n'), "multi-line error: {e:?}"),
    }
});
