//! Log drain URLs: the schemes Heroku and Akkeris users type, parsed once at validation.

use std::fmt;

use url::Url;

/// Transport of a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DrainKind {
    /// `syslog://` or `syslog+tcp://`: RFC 5424 over TCP, octet-counted (RFC 6587).
    SyslogTcp,
    /// `syslog+udp://`: one message per datagram.
    SyslogUdp,
    /// `syslog+tls://`: like TCP, inside TLS with the server's name verified.
    SyslogTls,
    /// `https://`: `application/logplex-1` batches.
    Https,
    /// `http://`: the same in clear, only when the platform allows it.
    Http,
}

/// A parsed drain URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DrainUrl {
    pub kind: DrainKind,
    pub host: String,
    pub port: u16,
    /// Path and query for HTTP drains (`/` when none).
    pub path: String,
    /// The URL as given (may hold credentials: display [`DrainUrl::redacted`] instead).
    pub raw: String,
}

impl DrainUrl {
    pub fn parse(raw: &str) -> Result<DrainUrl, String> {
        let url = Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        let (kind, default_port) = match url.scheme() {
            "syslog" | "syslog+tcp" => (DrainKind::SyslogTcp, 514),
            "syslog+udp" => (DrainKind::SyslogUdp, 514),
            "syslog+tls" => (DrainKind::SyslogTls, 6514),
            "https" => (DrainKind::Https, 443),
            "http" => (DrainKind::Http, 80),
            other => {
                return Err(format!(
                    "scheme {other:?} is not a drain: use syslog://, syslog+tcp://, syslog+udp://, syslog+tls:// or https://"
                ));
            }
        };
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            _ => return Err(format!("{:?} has no host", redact(raw))),
        };
        let port = url.port().unwrap_or(default_port);
        if port == 0 {
            return Err(format!("{:?} has port 0", redact(raw)));
        }
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        Ok(DrainUrl {
            kind,
            host,
            port,
            path,
            raw: raw.to_owned(),
        })
    }

    /// The URL with any password replaced by `***`, for logs and listings.
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }
}

impl fmt::Display for DrainUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replace the password of a URL's user-info with `***`.
pub fn redact(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        let d = DrainUrl::parse("syslog+tls://logs.example.com:6515").unwrap();
        assert_eq!(
            (d.kind, d.host.as_str(), d.port),
            (DrainKind::SyslogTls, "logs.example.com", 6515)
        );
        assert_eq!(
            DrainUrl::parse("syslog://h").unwrap().kind,
            DrainKind::SyslogTcp
        );
        assert_eq!(DrainUrl::parse("syslog+udp://h:9").unwrap().port, 9);
        let d = DrainUrl::parse("https://u:secret@h/logs?x=1").unwrap();
        assert_eq!(
            (d.kind, d.port, d.path.as_str()),
            (DrainKind::Https, 443, "/logs?x=1")
        );
        assert!(!d.redacted().contains("secret"));
        assert!(
            DrainUrl::parse("ftp://h")
                .unwrap_err()
                .contains("not a drain")
        );
        assert!(DrainUrl::parse("nonsense").is_err());
        assert!(DrainUrl::parse("syslog://:514").is_err());
    }
}
