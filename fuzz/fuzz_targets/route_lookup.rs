//! Host/SNI and path normalisation and route lookup, as the router's request filter does them:
//! `normalize_host` (Host header and SNI) → `paths::normalize` → `RouterTable::find` →
//! `paths::rewrite`, against the table compiled from `deploy/wharf.example.toml` (apps, custom
//! domains, an internal space, a site with a rewritten prefix). Input: host, a 0 byte, path.
//!
//! Never panics; normalisation is idempotent and leaves no `.`/`..` segment and no escape of an
//! unreserved character; percent-encoding any unreserved characters of the path first changes
//! nothing (`%2e%2e` is `..`); the `%2F` view has no dot segment either; a match covers a
//! prefix of the normalised path on a segment boundary, and the rewritten path is absolute.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use wharf_config::names::normalize_host;
use wharf_config::paths;
use wharf_config::{Format, RouterTable, compile, parse, validate};

static TABLE: LazyLock<RouterTable> = LazyLock::new(|| {
    let mut s = parse(
        include_str!("../../deploy/wharf.example.toml"),
        Format::Toml,
    )
    .expect("example parses");
    s.load_files(|p| match p {
        "tls/example.crt" => Ok(include_str!("../../deploy/tls/example.crt").to_owned()),
        "tls/example.key" => Ok(include_str!("../../deploy/tls/example.key").to_owned()),
        other => Err(format!("{other} is not part of the example")),
    })
    .expect("the example's certificate files");
    compile(&validate(s).expect("example validates")).router
});

fuzz_target!(|data: &[u8]| {
    let table = &*TABLE;
    let (host, path) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"/"[..]),
    };
    let (Ok(host), Ok(path)) = (std::str::from_utf8(host), std::str::from_utf8(path)) else {
        return;
    };
    let Some(host) = normalize_host(host) else {
        return;
    };
    assert_eq!(
        normalize_host(&host).as_deref(),
        Some(host.as_str()),
        "host not idempotent"
    );
    assert!(!host.bytes().any(|b| b.is_ascii_uppercase()));

    let Ok(norm) = paths::normalize(path) else {
        return;
    };
    assert!(norm.starts_with('/'));
    let again = paths::normalize(&norm).expect("a normalised path normalises");
    assert_eq!(again, norm, "path normalisation not idempotent");
    let path_part = norm.split('?').next().unwrap_or("");
    assert!(
        !path_part.split('/').any(|s| s == "." || s == ".."),
        "dot segment left in {norm:?}"
    );

    let is_unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let escapes: Vec<&str> = path_part.split('%').skip(1).map(|e| &e[..2]).collect();
    assert!(
        escapes.iter().all(|e| {
            let b = u8::from_str_radix(e, 16).expect("two hex digits");
            !is_unreserved(b) && !e.bytes().any(|c| c.is_ascii_lowercase())
        }),
        "escape of an unreserved character or lower-case hex left in {norm:?}"
    );
    // The same path with unreserved characters (outside escapes) percent-encoded: every one,
    // then every other one.
    let (raw_path, raw_query) = path.split_at(path.find('?').unwrap_or(path.len()));
    for every in [1, 2] {
        let mut enc = String::with_capacity(raw_path.len() * 3);
        let mut bytes = raw_path.char_indices();
        let mut n = 0;
        while let Some((i, c)) = bytes.next() {
            if c == '%' {
                enc.push_str(&raw_path[i..i + 3]);
                bytes.nth(1);
            } else if c.is_ascii() && is_unreserved(c as u8) && n % every == 0 {
                enc.push_str(&format!("%{:02x}", c as u8));
                n += 1;
            } else {
                enc.push(c);
                n += 1;
            }
        }
        enc.push_str(raw_query);
        assert_eq!(
            paths::normalize(&enc).as_deref(),
            Ok(&*norm),
            "{enc:?} normalises apart from {path:?}"
        );
    }
    if let Ok(Some(view)) = paths::slash_view(&norm) {
        assert!(view.starts_with('/'));
        assert!(
            !view.split('/').any(|s| s == "." || s == ".."),
            "dot segment left in the %2F view {view:?}"
        );
    }

    for internal in [false, true] {
        let Ok(found) = table.find(&host, &norm, internal) else {
            continue;
        };
        assert!(found.app < table.apps.len());
        if let Some((route, len)) = found.route {
            assert!(len <= path_part.len(), "match longer than the path");
            assert!(norm.is_char_boundary(len));
            let rest = &norm[len..];
            assert!(
                rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
                "match ends inside a segment: {norm:?} at {len}"
            );
            let out = paths::rewrite(&route.target_path, &norm, len);
            assert!(out.starts_with('/'), "rewrite gave {out:?}");
        }
    }
});
