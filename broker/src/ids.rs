//! Identifiers and the names users type: generated ids are `prefix_` + 16 hex
//! digits; every name that reaches a file path, a certificate or SQL is checked
//! here first.

use rand::RngExt;

use crate::error::{BrokerError, Result};

/// A fresh random id such as `s_9f2c4e1a0b7d3c55`.
pub fn new(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}_{n:016x}")
}

/// Is `id` a well-formed generated id with this prefix? Rejects path tricks
/// (`../`, slashes, NUL) before an id is ever joined onto a path.
pub fn check(prefix: &str, id: &str) -> Result<()> {
    let ok = id
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::Invalid(format!("{:?} is not a valid {prefix}_ id", crate::audit::cap(id, 40))))
    }
}

/// A login on a target (the certificate principal): POSIX user name rules.
pub fn check_login(login: &str) -> Result<()> {
    let ok = !login.is_empty()
        && login.len() <= 32
        && login.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        && login.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::Invalid(format!(
            "login {:?} is not a valid user name (lowercase letters, digits, '_', '-', '.')",
            crate::audit::cap(login, 40)
        )))
    }
}

/// A name for a user, agent, host or group: letters, digits, `_`, `-`, `.`,
/// starting with a letter or digit, at most 63 characters.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::Invalid(format!(
            "{what} name {:?} is not valid (letters, digits, '_', '-', '.', at most 63)",
            crate::audit::cap(name, 40)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_check() {
        let id = new("s");
        assert!(check("s", &id).is_ok());
        assert!(check("g", &id).is_err());
        for bad in
            ["s_../../etc/passwd", "s_0123456789abcdeF", "s_0123", "../s_0123456789abcdef", "s_0123456789abcdef/"]
        {
            assert!(check("s", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn logins_refuse_injection() {
        for ok in ["root", "deploy", "_svc", "a.b-c", "u1"] {
            assert!(check_login(ok).is_ok(), "{ok}");
        }
        for bad in ["", "root,admin", "root admin", "*", "ro\not", "Root", "-x", "a@b", "a/b", &"a".repeat(33)] {
            assert!(check_login(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(check_name("host", "web-1.prod").is_ok());
        assert!(check_name("host", ".hidden").is_err());
        assert!(check_name("host", "a b").is_err());
        assert!(check_name("host", "a@b").is_err());
    }
}
