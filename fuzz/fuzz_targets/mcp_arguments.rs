//! MCP tool arguments: any JSON for any tool name is either accepted as the
//! tool's typed input or refused with a JSON-RPC error; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = gatehouse_mcp::TOOL_NAMES;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let name = NAMES[first as usize % NAMES.len()];
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) else {
        let _ = gatehouse_mcp::check_arguments(&String::from_utf8_lossy(rest), None, 1024);
        return;
    };
    let args = match v {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    };
    let _ = gatehouse_mcp::check_arguments(name, args, 64 * 1024);
});
