//! Ready-to-paste client configuration for Claude Code, Cursor, Codex and
//! Claude Desktop, for bearer-token (HTTP) or signed (stdio bridge) mode.

use serde_json::json;

/// The clients we print configuration for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    ClaudeCode,
    Cursor,
    Codex,
    ClaudeDesktop,
}

impl Client {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "claude-code" => Client::ClaudeCode,
            "cursor" => Client::Cursor,
            "codex" => Client::Codex,
            "claude-desktop" => Client::ClaudeDesktop,
            _ => return None,
        })
    }
}

/// Environment variable the configs reference for the token (Codex requires one).
pub const TOKEN_ENV: &str = "GATEHOUSE_MCP_TOKEN";

fn pretty(v: serde_json::Value) -> String {
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Streamable HTTP with a bearer token. `token` None prints a placeholder.
pub fn http_config(client: Client, mcp_url: &str, token: Option<&str>) -> String {
    let tok = token.unwrap_or("<TOKEN>");
    match client {
        Client::ClaudeCode => format!(
            "# Claude Code: run once\nclaude mcp add --transport http gatehouse {mcp_url} --header \"Authorization: Bearer {tok}\"\n\n\
             # or put this in .mcp.json\n{}",
            pretty(
                json!({"mcpServers": {"gatehouse": {"type": "http", "url": mcp_url, "headers": {"Authorization": format!("Bearer {tok}")}}}})
            )
        ),
        Client::Cursor => format!(
            "# Cursor: ~/.cursor/mcp.json (or .cursor/mcp.json in the project)\n{}",
            pretty(
                json!({"mcpServers": {"gatehouse": {"url": mcp_url, "headers": {"Authorization": format!("Bearer {tok}")}}}})
            )
        ),
        Client::Codex => format!(
            "# Codex: ~/.codex/config.toml\n[mcp_servers.gatehouse]\nurl = \"{mcp_url}\"\nbearer_token_env_var = \"{TOKEN_ENV}\"\n\n\
             # and in the environment Codex runs in\nexport {TOKEN_ENV}={tok}"
        ),
        Client::ClaudeDesktop => format!(
            "# Claude Desktop: claude_desktop_config.json (stdio; the bridge forwards with the token)\n{}",
            pretty(json!({"mcpServers": {"gatehouse": {
                "command": "gatehouse",
                "args": ["mcp", "stdio", "--url", base_url(mcp_url)],
                "env": {TOKEN_ENV: tok}
            }}}))
        ),
    }
}

/// The stdio bridge with the enrolled signing key (no token anywhere).
pub fn stdio_config(client: Client) -> String {
    let block = json!({"mcpServers": {"gatehouse": {"command": "gatehouse", "args": ["mcp", "stdio"]}}});
    match client {
        Client::ClaudeCode => format!(
            "# Claude Code: run once\nclaude mcp add --transport stdio gatehouse -- gatehouse mcp stdio\n\n# or put this in .mcp.json\n{}",
            pretty(json!({"mcpServers": {"gatehouse": {"type": "stdio", "command": "gatehouse", "args": ["mcp", "stdio"]}}}))
        ),
        Client::Cursor => format!("# Cursor: ~/.cursor/mcp.json\n{}", pretty(block)),
        Client::Codex => "# Codex: ~/.codex/config.toml\n[mcp_servers.gatehouse]\ncommand = \"gatehouse\"\nargs = [\"mcp\", \"stdio\"]".to_string(),
        Client::ClaudeDesktop => format!("# Claude Desktop: claude_desktop_config.json\n{}", pretty(block)),
    }
}

/// `https://host/mcp` → `https://host`.
pub fn base_url(mcp_url: &str) -> &str {
    mcp_url.strip_suffix("/mcp").unwrap_or(mcp_url)
}

/// Everything `token create` prints after the token itself.
pub fn all_http(mcp_url: &str, token: &str) -> String {
    [Client::ClaudeCode, Client::Cursor, Client::Codex, Client::ClaudeDesktop]
        .iter()
        .map(|c| http_config(*c, mcp_url, Some(token)))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_the_url_and_token() {
        let all = all_http("https://gh.example.com/mcp", "ghagt_x");
        assert!(all.contains("claude mcp add --transport http gatehouse https://gh.example.com/mcp --header \"Authorization: Bearer ghagt_x\""));
        assert!(all.contains("bearer_token_env_var = \"GATEHOUSE_MCP_TOKEN\""));
        assert!(all.contains("\"command\": \"gatehouse\""));
        assert!(stdio_config(Client::ClaudeDesktop).contains("\"stdio\""));
        assert!(!stdio_config(Client::Cursor).contains("Bearer"));
    }
}
