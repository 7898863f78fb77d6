//! Requests with more headers than pingora's HTTP/1 parser takes (256) but within the router's
//! own limit (1000). The head guard reads every request head before pingora does; when a head
//! has too many lines for pingora, it hands pingora a head cut to what pingora parses and parks
//! the rest here, keyed by the connection; the proxy puts them back on the request before
//! anything reads it (filters, limits, the dyno's request). Headers that decide how the request
//! is framed or routed stay in the head pingora reads, so body framing never depends on a header
//! pingora did not see.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, BytesMut};
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;

/// Header lines pingora's HTTP/1 parser takes.
pub(crate) const PARSER_MAX_HEADERS: usize = 256;
/// Header lines a request may have; more → 431.
pub(crate) const MAX_HEADERS: usize = 1000;

/// Headers pingora must see itself: framing, connection management, routing.
const KEEP_IN_HEAD: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "expect",
    "te",
    "keep-alive",
    "proxy-connection",
];

/// What a head guard does with a request head.
#[derive(Debug, PartialEq)]
pub(crate) enum Head {
    /// Pass it on as it is.
    AsIs,
    /// Too many headers even for the router: 431.
    TooMany,
    /// Pass on this head (with the bytes that followed it); park these headers.
    Split(BytesMut, Vec<(HeaderName, HeaderValue)>),
}

/// Decide for a buffered head (`buf` holds the head and whatever followed it, `end` is where
/// the head ends). A head pingora can parse, or one the router's own parser rejects, is passed
/// on unchanged: pingora answers the latter with its 400.
pub(crate) fn split(buf: &[u8], end: usize) -> Head {
    let lines = buf[..end].iter().filter(|b| **b == b'\n').count();
    if lines.saturating_sub(2) <= PARSER_MAX_HEADERS {
        return Head::AsIs;
    }
    if lines.saturating_sub(2) > MAX_HEADERS {
        return Head::TooMany;
    }
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(parsed_end)) = req.parse(&buf[..end]) else {
        return Head::AsIs;
    };
    if parsed_end != end {
        return Head::AsIs;
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Head::AsIs;
    };
    let keep = |name: &str| KEEP_IN_HEAD.iter().any(|k| name.eq_ignore_ascii_case(k));
    let kept_special = req.headers.iter().filter(|h| keep(h.name)).count();
    if kept_special >= PARSER_MAX_HEADERS {
        return Head::TooMany;
    }
    // The first headers in order fill what pingora takes, framing and routing ones always;
    // the others keep their order and come after, so same-named headers stay in order.
    let mut room = PARSER_MAX_HEADERS - kept_special;
    let mut head = BytesMut::with_capacity(buf.len());
    head.put_slice(method.as_bytes());
    head.put_u8(b' ');
    head.put_slice(path.as_bytes());
    head.put_slice(if version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    let mut parked = Vec::new();
    let mut spilling = false;
    for h in req.headers.iter() {
        let special = keep(h.name);
        if special || (!spilling && room > 0) {
            if !special {
                room -= 1;
            }
            head.put_slice(h.name.as_bytes());
            head.put_slice(b": ");
            head.put_slice(h.value);
            head.put_slice(b"\r\n");
            continue;
        }
        spilling = true;
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Head::AsIs;
        };
        parked.push((name, value));
    }
    head.put_slice(b"\r\n");
    head.put_slice(&buf[end..]);
    Head::Split(head, parked)
}

/// Parked headers by connection, until the proxy takes them back.
#[derive(Debug, Default)]
pub(crate) struct Parked {
    count: AtomicUsize,
    by_conn: Mutex<HashMap<usize, Vec<(HeaderName, HeaderValue)>>>,
}

impl Parked {
    pub(crate) fn park(&self, conn: usize, headers: Vec<(HeaderName, HeaderValue)>) {
        if self.by_conn.lock().insert(conn, headers).is_none() {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The connection's parked headers, if any (one atomic load when there are none at all).
    pub(crate) fn take(&self, conn: usize) -> Option<Vec<(HeaderName, HeaderValue)>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let taken = self.by_conn.lock().remove(&conn);
        if taken.is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(n: usize, extra: &str) -> Vec<u8> {
        let mut h = b"POST /x HTTP/1.1\r\nhost: a.test\r\n".to_vec();
        for i in 0..n {
            h.extend_from_slice(format!("x-h{i}: {i}\r\n").as_bytes());
        }
        h.extend_from_slice(extra.as_bytes());
        h.extend_from_slice(b"\r\nbody");
        h
    }

    #[test]
    fn small_heads_pass_and_huge_ones_are_refused() {
        let h = head(255, "");
        assert_eq!(split(&h, h.len() - 4), Head::AsIs);
        let h = head(1000, "");
        assert_eq!(split(&h, h.len() - 4), Head::TooMany);
    }

    #[test]
    fn framing_stays_in_the_head_and_the_rest_is_parked_in_order() {
        let h = head(600, "content-length: 4\r\n");
        let Head::Split(cut, parked) = split(&h, h.len() - 4) else {
            panic!("expected a split");
        };
        let mut headers = [httparse::EMPTY_HEADER; PARSER_MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&cut).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(&cut[n..], b"body");
        assert_eq!(req.headers.len(), PARSER_MAX_HEADERS);
        assert!(req.headers.iter().any(|h| h.name == "content-length"));
        assert_eq!(req.headers[0].name, "host");
        // 602 headers: 256 in the head (host, content-length, x-h0..x-h253), 346 parked.
        assert_eq!(parked.len(), 602 - PARSER_MAX_HEADERS);
        assert_eq!(parked[0].0.as_str(), "x-h254");
        assert_eq!(parked.last().unwrap().0.as_str(), "x-h599");
    }

    #[test]
    fn parked_headers_are_taken_once() {
        let p = Parked::default();
        assert!(p.take(1).is_none());
        p.park(
            1,
            vec![(HeaderName::from_static("a"), HeaderValue::from_static("b"))],
        );
        assert_eq!(p.take(2), None);
        assert_eq!(p.take(1).unwrap().len(), 1);
        assert!(p.take(1).is_none());
    }
}
