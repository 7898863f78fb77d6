//! Request paths: validation of configured prefixes, dot-segment normalisation, segment-aware
//! prefix matching (`/api` matches `/api`, `/api/`, `/api/x`, never `/apiary`) and rewriting.

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
    Ok(())
}

/// Why a request path cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path climbs above the root with '..'")]
    AboveRoot,
}

/// Resolve `.` and `..` segments (RFC 3986 §5.2.4) in the path part (the query is not
/// touched). Borrowed when nothing changes, which is every ordinary request.
pub fn normalize(path_and_query: &str) -> Result<Cow<'_, str>, PathError> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') {
        // `*` (OPTIONS *) and absolute-form are handled by the HTTP layer.
        return Err(PathError::NotAbsolute);
    }
    if !has_dot_segment(path) {
        return Ok(Cow::Borrowed(path_and_query));
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
    let mut s = String::with_capacity(path_and_query.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    s.push_str(query);
    Ok(Cow::Owned(s))
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
    fn prefixes() {
        assert!(check_prefix("/").is_ok());
        assert!(check_prefix("/api/").is_ok());
        assert!(check_prefix("/a/b").is_ok());
        for bad in ["api", "/a?b", "/a//b", "/a/../b", "/a b"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
