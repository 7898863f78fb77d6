//! Name rules: app and space names, host names, certificate names, header and method tokens.

/// App, space, filter and process-type names: `[a-z][a-z0-9-]*`, at most 63 bytes, no `--`
/// and no trailing `-` (Akkeris checked `[A-z]`, which lets `[`, `\` and `_` through).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 characters"));
    }
    let b = name.as_bytes();
    if !b[0].is_ascii_lowercase() {
        return Err(format!("{name:?} must start with a lowercase letter"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{name:?} has {c:?}: only lowercase letters, digits and '-' are allowed"
        ));
    }
    if name.ends_with('-') || name.contains("--") {
        return Err(format!("{name:?} must not end with '-' or contain '--'"));
    }
    Ok(())
}

/// Lowercase a host and strip a trailing dot and a `:port`. Returns `None` for bytes that no
/// host name can hold (so that a hostile Host header never reaches a table lookup as-is).
pub fn normalize_host(raw: &str) -> Option<String> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: never a routed name.
        let end = rest.find(']')?;
        return Some(format!("[{}]", rest[..end].to_ascii_lowercase()));
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // No empty label (`.`, `..`, `a..b`, `.a`): found by the route_lookup fuzz target, where
    // `..` normalised to `.`, which normalised again to nothing.
    if host.is_empty()
        || host.split('.').any(str::is_empty)
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// A DNS name as written in config: labels of `[a-z0-9-]`, 1–63 bytes each, not starting or
/// ending with `-`, at least two labels.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    if name != name.to_ascii_lowercase() {
        return Err(format!("{name:?} must be lowercase"));
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("{name:?} is not a fully qualified name"));
    }
    for label in labels {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} has an empty or over-long label"));
        }
        if label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("{name:?} has an invalid label {label:?}"));
        }
    }
    Ok(())
}

/// A certificate name: a DNS name or `*.` and a DNS name (a wildcard covers one label).
pub fn check_cert_name(name: &str) -> Result<(), String> {
    match name.strip_prefix("*.") {
        Some(rest) => check_dns_name(rest).map_err(|e| format!("wildcard {name:?}: {e}")),
        None if name.contains('*') => Err(format!(
            "{name:?}: a wildcard must be a whole leftmost label ('*.example.com')"
        )),
        None => check_dns_name(name),
    }
}

/// An HTTP token (RFC 9110 `tchar`), for methods and header names.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("api").is_ok());
        assert!(check_name("api-v2").is_ok());
        for bad in [
            "",
            "Api",
            "1api",
            "a_b",
            "a[b",
            "a-",
            "a--b",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            normalize_host("API.Example.com:443").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            normalize_host("a.example.com.").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(normalize_host("a b"), None);
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
    }

    #[test]
    fn cert_names() {
        assert!(check_cert_name("*.example.com").is_ok());
        assert!(check_cert_name("a.example.com").is_ok());
        assert!(check_cert_name("*.*.example.com").is_err());
        assert!(check_cert_name("a*.example.com").is_err());
        assert!(check_cert_name("example").is_err());
        assert!(check_cert_name("bad_label.example.com").is_err());
    }
}
