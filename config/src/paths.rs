//! Request paths: validation of configured prefixes, normalisation (percent-encoded unreserved
//! characters decoded, dot segments resolved), segment-aware prefix matching (`/api` matches
//! `/api`, `/api/`, `/api/x`, never `/apiary`) and rewriting.

use std::borrow::Cow;
use std::collections::HashMap;

/// A configured path prefix: starts with `/`, no `?`/`#`, no `.`/`..` segments, no `//`.
pub fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.contains(['?', '#']) || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "{p:?} must be a plain path (no query, fragment, spaces)"
        ));
    }
    if p.len() > 1
        && p[1..]
            .trim_end_matches('/')
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!("{p:?} has an empty, '.' or '..' segment"));
    }
    // Requests are matched in their normal form, so a prefix in any other form never matches.
    match normalize(p) {
        Ok(n) if n == p => Ok(()),
        Ok(n) => Err(format!("{p:?} is not in normal form: write it {n:?}")),
        Err(e) => Err(format!("{p:?}: {e}")),
    }
}

/// Why a request path cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path climbs above the root with '..'")]
    AboveRoot,
    #[error("path has a '%' not followed by two hex digits")]
    BadEscape,
}

/// The path in normal form (RFC 3986 §6.2.2), as the router routes it, matches filters against
/// it and hands it to the dyno: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// decoded, the hex digits of the other escapes upper-cased, then `.` and `..` segments
/// resolved (§5.2.4). `%2e%2e` is `..` here, as it is for any dyno that decodes the path;
/// `%2F` stays an escape inside its segment. The query is not touched. Borrowed when nothing
/// changes, which is every ordinary request.
pub fn normalize(path_and_query: &str) -> Result<Cow<'_, str>, PathError> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') {
        // `*` (OPTIONS *) and absolute-form are handled by the HTTP layer.
        return Err(PathError::NotAbsolute);
    }
    if path.contains('%') {
        let decoded = decode_unreserved(path)?;
        let mut out = resolve_dots(&decoded, "")?.unwrap_or(decoded);
        out.push_str(query);
        return Ok(Cow::Owned(out));
    }
    Ok(resolve_dots(path, query)?.map_or(Cow::Borrowed(path_and_query), Cow::Owned))
}

/// The path as a dyno that also decodes `%2F` and `%5C` into `/` would see it, dot segments
/// resolved again; `None` when the normal form has neither escape. Filters are checked against
/// both views, so `/public/..%2Fadmin` cannot pass as a path under `/public`.
pub fn slash_view(normal: &str) -> Result<Option<String>, PathError> {
    let path = normal.split('?').next().unwrap_or("");
    if !path.contains("%2F") && !path.contains("%5C") {
        return Ok(None);
    }
    let slashed = path.replace("%2F", "/").replace("%5C", "/");
    Ok(Some(resolve_dots(&slashed, "")?.unwrap_or(slashed)))
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decode escapes of unreserved characters; upper-case the hex digits of the others.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(path.len());
    let mut parts = path.split('%');
    out.push_str(parts.next().unwrap_or(""));
    for part in parts {
        let b = part.as_bytes();
        let (Some(hi), Some(lo)) = (
            b.first().copied().and_then(hex),
            b.get(1).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let c = hi * 16 + lo;
        if is_unreserved(c) {
            out.push(char::from(c));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(hi)]));
            out.push(char::from(HEX[usize::from(lo)]));
        }
        // Both hex digits are ASCII: the rest starts on a character boundary.
        out.push_str(&part[2..]);
    }
    Ok(out)
}

/// `path` with its dot segments resolved and `query` appended; `None` when it has none.
fn resolve_dots(path: &str, query: &str) -> Result<Option<String>, PathError> {
    if !has_dot_segment(path) {
        return Ok(None);
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path[1..].split('/').collect();
    let last = segs.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len() + query.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    s.push_str(query);
    Ok(Some(s))
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// Replace the matched `source` prefix (`matched_len` bytes of `path_and_query`) with `target`,
/// keeping the rest and the query: `/api/x?q=1` via `/api → /v3/api` gives `/v3/api/x?q=1`.
pub fn rewrite(target: &str, path_and_query: &str, matched_len: usize) -> String {
    let rest = &path_and_query[matched_len..];
    let base = target.trim_end_matches('/');
    let mut out = String::with_capacity(base.len() + rest.len() + 1);
    out.push_str(base);
    if !rest.starts_with('/') {
        // Either nothing, or only a query remains: keep the target's own trailing slash.
        if base.len() < target.len() || base.is_empty() {
            out.push('/');
        }
    }
    out.push_str(rest);
    out
}

/// A segment trie of path prefixes: lookup walks the request path once, so its cost is
/// O(path length) whatever the number of prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixTree<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node<T> {
    value: Option<T>,
    children: HashMap<Box<str>, Node<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            value: None,
            children: HashMap::new(),
        }
    }
}

impl<T> Default for PrefixTree<T> {
    fn default() -> Self {
        PrefixTree {
            root: Node::default(),
            len: 0,
        }
    }
}

/// The longest prefix that matched: its value and how many bytes of the path it covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixMatch<'a, T> {
    pub value: &'a T,
    pub matched_len: usize,
}

impl<T> PrefixTree<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert `prefix` (checked with [`check_prefix`]); returns the value it replaced.
    pub fn insert(&mut self, prefix: &str, value: T) -> Option<T> {
        let mut node = &mut self.root;
        for seg in segments(prefix) {
            node = node.children.entry(seg.into()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The longest segment-aware prefix of `path_and_query` (the query is ignored).
    pub fn longest_match(&self, path_and_query: &str) -> Option<PrefixMatch<'_, T>> {
        let path = match path_and_query.find('?') {
            Some(i) => &path_and_query[..i],
            None => path_and_query,
        };
        let mut node = &self.root;
        let mut best = node.value.as_ref().map(|v| PrefixMatch {
            value: v,
            matched_len: 0,
        });
        let mut offset = 0usize;
        for seg in path.split('/').skip(1) {
            let end = offset + 1 + seg.len();
            if seg.is_empty() {
                break;
            }
            match node.children.get(seg) {
                Some(child) => {
                    node = child;
                    offset = end;
                    if let Some(v) = node.value.as_ref() {
                        best = Some(PrefixMatch {
                            value: v,
                            matched_len: offset,
                        });
                    }
                }
                None => break,
            }
        }
        best
    }

    /// Whether any prefix matches `path`.
    pub fn matches(&self, path: &str) -> bool {
        self.longest_match(path).is_some()
    }
}

fn segments(prefix: &str) -> impl Iterator<Item = &str> {
    prefix.split('/').filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(prefixes: &[&str]) -> PrefixTree<String> {
        let mut t = PrefixTree::new();
        for p in prefixes {
            t.insert(p, (*p).to_owned());
        }
        t
    }

    #[test]
    fn segment_aware() {
        let t = tree(&["/api"]);
        for hit in ["/api", "/api/", "/api/x", "/api?q=1", "/api/x/y?z"] {
            assert_eq!(
                t.longest_match(hit).map(|m| m.value.as_str()),
                Some("/api"),
                "{hit}"
            );
        }
        for miss in ["/apiary", "/", "/ap", "/x/api"] {
            assert!(t.longest_match(miss).is_none(), "{miss}");
        }
    }

    #[test]
    fn longest_wins() {
        let t = tree(&["/", "/api", "/api/v2", "/api/v2/admin"]);
        let m = |p| {
            t.longest_match(p)
                .map(|m| (m.value.as_str(), m.matched_len))
        };
        assert_eq!(m("/api/v2/x"), Some(("/api/v2", 7)));
        assert_eq!(m("/api/v3"), Some(("/api", 4)));
        assert_eq!(m("/other"), Some(("/", 0)));
        assert_eq!(m("/api/v2/admin/"), Some(("/api/v2/admin", 13)));
    }

    #[test]
    fn rewrites() {
        assert_eq!(rewrite("/v3/api", "/api/x?q=1", 4), "/v3/api/x?q=1");
        assert_eq!(rewrite("/v3/api", "/api", 4), "/v3/api");
        assert_eq!(rewrite("/v3/api", "/api?q", 4), "/v3/api?q");
        assert_eq!(rewrite("/v3/api", "/api/", 4), "/v3/api/");
        assert_eq!(rewrite("/", "/api/x", 4), "/x");
        assert_eq!(rewrite("/", "/api", 4), "/");
        assert_eq!(rewrite("/", "/api?a=b", 4), "/?a=b");
        assert_eq!(rewrite("/app/", "/api", 4), "/app/");
        assert_eq!(rewrite("/app", "/x/y", 0), "/app/x/y");
    }

    #[test]
    fn dot_segments() {
        assert_eq!(normalize("/a/b?x=..").unwrap(), "/a/b?x=..");
        assert_eq!(normalize("/a/../b").unwrap(), "/b");
        assert_eq!(normalize("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(normalize("/a/b/..?q").unwrap(), "/a/?q");
        assert_eq!(normalize("/.."), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a/../../etc"), Err(PathError::AboveRoot));
        assert_eq!(normalize("x"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn percent_encoded_unreserved_characters_and_dots() {
        for (raw, want) in [
            ("/%2e%2e/private", Err(PathError::AboveRoot)),
            ("/a/%2e%2e/private", Ok("/private")),
            ("/a/%2E%2e/private?x=%2e", Ok("/private?x=%2e")),
            ("/a/.%2e/private", Ok("/private")),
            ("/a/%2e/b", Ok("/a/b")),
            ("/%70rivate/%7Euser", Ok("/private/~user")),
            ("/a%2fb/%c3%a9", Ok("/a%2Fb/%C3%A9")),
            ("/a/..%2Fb", Ok("/a/..%2Fb")),
            ("/%252e%252e/x", Ok("/%252e%252e/x")),
        ] {
            assert_eq!(normalize(raw).as_deref().map_err(|e| *e), want, "{raw}");
        }
        for bad in ["/a%", "/a%2", "/a%zz", "/%g0"] {
            assert_eq!(normalize(bad), Err(PathError::BadEscape), "{bad}");
        }
        assert!(matches!(normalize("/plain/path?q"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn slash_view_decodes_encoded_slashes() {
        assert_eq!(slash_view("/a/b").unwrap(), None);
        assert_eq!(
            slash_view("/public/..%2Fadmin?q").unwrap().as_deref(),
            Some("/admin")
        );
        assert_eq!(slash_view("/a%5Cb").unwrap().as_deref(), Some("/a/b"));
        assert_eq!(slash_view("/..%2F..%2Fx"), Err(PathError::AboveRoot));
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("/").is_ok());
        assert!(check_prefix("/api/").is_ok());
        assert!(check_prefix("/a/b").is_ok());
        assert!(check_prefix("/caf%C3%A9").is_ok());
        for bad in [
            "api",
            "/a?b",
            "/a//b",
            "/a/../b",
            "/a b",
            "/%70rivate",
            "/a%2f",
            "/a%",
        ] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
