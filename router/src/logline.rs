//! Heroku-format router log lines.

use std::fmt::Write;

/// Heroku router error codes Wharf answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HCode {
    H10,
    H12,
    H13,
    H14,
    H15,
    H19,
    H21,
    H25,
    H27,
    H28,
    H31,
}

impl HCode {
    pub fn as_str(self) -> &'static str {
        match self {
            HCode::H10 => "H10",
            HCode::H12 => "H12",
            HCode::H13 => "H13",
            HCode::H14 => "H14",
            HCode::H15 => "H15",
            HCode::H19 => "H19",
            HCode::H21 => "H21",
            HCode::H25 => "H25",
            HCode::H27 => "H27",
            HCode::H28 => "H28",
            HCode::H31 => "H31",
        }
    }

    pub fn desc(self) -> &'static str {
        match self {
            HCode::H10 => "App crashed",
            HCode::H12 => "Request timeout",
            HCode::H13 => "Connection closed without response",
            HCode::H14 => "No web processes running",
            HCode::H15 => "Idle connection",
            HCode::H19 => "Backend connection timeout",
            HCode::H21 => "Backend connection refused",
            HCode::H25 => "HTTP restriction",
            HCode::H27 => "Client Request Interrupted",
            HCode::H28 => "Client Connection Idle",
            HCode::H31 => "Misdirected Request",
        }
    }

    /// The status the client gets (H27's 499 is only logged: the client is gone).
    pub fn status(self) -> u16 {
        match self {
            HCode::H25 => 502,
            HCode::H27 => 499,
            HCode::H28 => 408,
            HCode::H31 => 421,
            _ => 503,
        }
    }
}

/// The fields of one router line.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    pub code: Option<HCode>,
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub request_id: &'a str,
    pub fwd: &'a str,
    pub dyno: &'a str,
    pub connect_ms: Option<u64>,
    pub service_ms: u64,
    pub status: u16,
    pub bytes: u64,
    pub protocol: &'a str,
    pub tls_version: Option<&'a str>,
}

/// `at=info method=GET path="/x" host=… request_id=… fwd="…" dyno=web.1 connect=1ms
/// service=12ms status=200 bytes=… protocol=https tls_version=TLSv1.3`.
pub fn format(f: &Fields<'_>) -> String {
    let mut s = String::with_capacity(256);
    match f.code {
        Some(c) => {
            let _ = write!(s, "at=error code={} desc=\"{}\" ", c.as_str(), c.desc());
        }
        None => s.push_str("at=info "),
    }
    let _ = write!(
        s,
        "method={} path=\"{}\" host={} request_id={} fwd=\"{}\" dyno={} connect={} service={}ms status={} bytes={} protocol={}",
        f.method,
        Escaped(f.path),
        Escaped(f.host),
        f.request_id,
        Escaped(f.fwd),
        f.dyno,
        Ms(f.connect_ms),
        f.service_ms,
        f.status,
        f.bytes,
        f.protocol
    );
    if let Some(v) = f.tls_version {
        let _ = write!(s, " tls_version={v}");
    }
    s
}

struct Ms(Option<u64>);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ms) => write!(f, "{ms}ms"),
            None => Ok(()),
        }
    }
}

/// Quotes and control characters escaped so a hostile path cannot forge fields.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\x{:02x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_and_error_lines() {
        let line = format(&Fields {
            method: "GET",
            path: "/x",
            host: "api-prod.wharf.localhost",
            request_id: "abc",
            fwd: "127.0.0.1",
            dyno: "web.1",
            connect_ms: Some(1),
            service_ms: 12,
            status: 200,
            bytes: 5,
            protocol: "https",
            tls_version: Some("TLSv1.3"),
            ..Fields::default()
        });
        assert_eq!(
            line,
            "at=info method=GET path=\"/x\" host=api-prod.wharf.localhost request_id=abc fwd=\"127.0.0.1\" dyno=web.1 connect=1ms service=12ms status=200 bytes=5 protocol=https tls_version=TLSv1.3"
        );
        let line = format(&Fields {
            code: Some(HCode::H14),
            method: "GET",
            path: "/\"injected\" status=200",
            status: 503,
            protocol: "http",
            ..Fields::default()
        });
        assert!(line.starts_with("at=error code=H14 desc=\"No web processes running\" method=GET path=\"/\\\"injected\\\" status=200\""), "{line}");
    }
}
