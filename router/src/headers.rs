//! Request and response header rules: request ids, forwarded headers, hop-by-hop stripping.

use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};

/// Kept from the client when 20–200 characters of `[A-Za-z0-9+/=-]` (Heroku's rule).
pub fn valid_request_id(id: &[u8]) -> bool {
    (20..=200).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-'))
}

/// Headers meaningful only for one hop (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

fn connection_tokens(value: Option<&http::HeaderValue>) -> Vec<HeaderName> {
    value
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(',')
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether this request asks for a protocol upgrade (websocket).
pub fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::UPGRADE)
        && connection_tokens(req.headers.get(http::header::CONNECTION))
            .iter()
            .any(|t| t == "upgrade")
}

/// Strip hop-by-hop request headers (and those named by `Connection`), except what an
/// upgrade needs. Transfer-Encoding framing is the proxy's own business.
pub fn strip_request_hop_by_hop(req: &mut RequestHeader, upgrade: bool) {
    for name in connection_tokens(req.headers.get(http::header::CONNECTION)) {
        if !(upgrade && name == "upgrade") {
            req.remove_header(&name);
        }
    }
    for name in HOP_BY_HOP {
        if *name == "transfer-encoding"
            || (upgrade && (*name == "connection" || *name == "upgrade"))
        {
            continue;
        }
        req.remove_header(*name);
    }
}

/// The same for responses.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader, upgrade: bool) {
    if upgrade && resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    for name in connection_tokens(resp.headers.get(http::header::CONNECTION)) {
        resp.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        if *name == "transfer-encoding" {
            continue;
        }
        resp.remove_header(*name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abcdefghij0123456789"));
        assert!(valid_request_id(b"0f0e4c1e-6bc3-4b46-b4e4-b0b4c2bd4a3d"));
        assert!(!valid_request_id(b"short"));
        assert!(!valid_request_id(b"abcdefghij0123456789 spaces"));
        assert!(!valid_request_id(&[b'a'; 201]));
    }

    #[test]
    fn hop_by_hop() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Connection", "keep-alive, X-Secret")
            .unwrap();
        req.insert_header("X-Secret", "1").unwrap();
        req.insert_header("Keep-Alive", "timeout=5").unwrap();
        req.insert_header("X-Kept", "1").unwrap();
        strip_request_hop_by_hop(&mut req, false);
        assert!(req.headers.get("x-secret").is_none());
        assert!(req.headers.get("keep-alive").is_none());
        assert!(req.headers.get("connection").is_none());
        assert!(req.headers.get("x-kept").is_some());

        let mut ws = RequestHeader::build("GET", b"/", None).unwrap();
        ws.insert_header("Connection", "Upgrade").unwrap();
        ws.insert_header("Upgrade", "websocket").unwrap();
        assert!(is_upgrade(&ws));
        strip_request_hop_by_hop(&mut ws, true);
        assert!(ws.headers.get("upgrade").is_some());
        assert!(ws.headers.get("connection").is_some());
    }
}
