//! What the SSH username asks for.

/// The bastion's command interface user (`ssh gatehouse@bastion …`).
pub const COMMAND_USER: &str = "gatehouse";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `LOGIN@HOST`: a session on a target.
    Host { login: String, host: String },
    /// `gatehouse`: the command interface.
    Commands,
    /// Anything else, with the reason shown to the user.
    Invalid(String),
}

/// What is wrong with a user name that does not parse, for the audit log.
pub fn problem(user: &str) -> &'static str {
    if user.len() > 200 {
        "too long"
    } else if user.chars().any(|c| c.is_control()) {
        "control characters"
    } else if user.chars().any(char::is_whitespace) {
        "whitespace"
    } else if user.contains(',') {
        "a comma (several principals)"
    } else if user.contains(['*', '?']) {
        "a wildcard"
    } else if user.contains(['/', '\\']) {
        "a path separator"
    } else if user.contains(['"', '\'']) {
        "a quote"
    } else {
        "not LOGIN@HOST"
    }
}

/// Parse the SSH username. Exactly one `@`; both sides non-empty and free of
/// control characters, spaces, commas and wildcards (the broker checks the
/// login and host name rules in detail).
pub fn parse(user: &str) -> Target {
    if user == COMMAND_USER {
        return Target::Commands;
    }
    let usage = "the SSH user must be LOGIN@HOST, e.g. ssh -p 2222 root@web-1@bastion";
    if user.len() > 200 {
        return Target::Invalid(format!("{usage} (the name given is too long)"));
    }
    if user
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, ',' | '*' | '?' | '/' | '\\' | '"' | '\''))
    {
        return Target::Invalid(format!("{usage} (the name given has characters that are not allowed)"));
    }
    let mut parts = user.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(login), Some(host), None) if !login.is_empty() && !host.is_empty() => {
            Target::Host { login: login.to_string(), host: host.to_string() }
        }
        _ => Target::Invalid(usage.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_login_at_host() {
        assert_eq!(parse("root@web-1"), Target::Host { login: "root".into(), host: "web-1".into() });
        assert_eq!(parse("gatehouse"), Target::Commands);
        for bad in
            ["root", "@web", "root@", "a@b@c", "ro ot@web", "root,admin@web", "*@web", "root@we\nb", "root@web/../x"]
        {
            assert!(matches!(parse(bad), Target::Invalid(_)), "{bad:?}");
        }
    }
}
