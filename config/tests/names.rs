//! Host normalisation: regressions found by the `route_lookup` fuzz target.

use wharf_config::names::normalize_host;

#[test]
fn hosts_with_empty_labels_are_refused_and_normalising_is_idempotent() {
    for bad in ["..", ".", "...", "a..b", ".a", "a..", "..:443"] {
        assert_eq!(normalize_host(bad), None, "{bad:?}");
    }
    for (raw, want) in [
        ("API-prod.wharf.localhost.", "api-prod.wharf.localhost"),
        ("api-prod.wharf.localhost:8443", "api-prod.wharf.localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8443", "[::1]"),
    ] {
        let n = normalize_host(raw).unwrap();
        assert_eq!(n, want);
        assert_eq!(normalize_host(&n).as_deref(), Some(want), "idempotent");
    }
}
