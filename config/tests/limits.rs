//! Limits in the model: parsed with their defaults, validated with paths, compiled into the
//! router table and the shuttle plan.

use wharf_config::*;

const BASE: &str = r#"
version = 1
domain = "wharf.localhost"
[[spaces]]
name = "prod"
[[apps]]
name = "api"
space = "prod"
"#;

#[test]
fn defaults_cap_only_total_connections() {
    let v = load(BASE, Format::Toml).unwrap();
    let l = &v.router.limits;
    assert_eq!(l.max_connections, 20_000);
    assert_eq!(
        (
            l.max_connections_per_ip,
            l.requests_per_sec_per_ip,
            l.burst_per_ip
        ),
        (0, 0, 0)
    );
    let c = compile(&v);
    assert_eq!(c.router.apps[0].limits, Default::default());
    assert_eq!(c.shuttle.apps["api-prod"].log_rate, None);
}

#[test]
fn app_limits_compile_into_both_planes() {
    let text = format!(
        "{BASE}\n[router.limits]\nmax_connections_per_ip = 100\nrequests_per_sec_per_ip = 50\n\
         [[limits]]\napp = \"api-prod\"\nmax_concurrent_requests = 10\nrequests_per_sec = 20\n\
         max_body_bytes = 1024\nlog_lines_per_sec = 100\nlog_burst = 500\n"
    );
    let v = load(&text, Format::Toml).unwrap_or_else(|p| panic!("{p}"));
    let c = compile(&v);
    let a = &c.router.apps[0].limits;
    assert_eq!(a.max_concurrent_requests, 10);
    assert_eq!(
        a.rate,
        Some(Rate {
            per_sec: 20,
            burst: 20
        })
    );
    assert_eq!(a.max_body_bytes, 1024);
    assert_eq!(
        c.shuttle.apps["api-prod"].log_rate,
        Some(Rate {
            per_sec: 100,
            burst: 500
        })
    );
    assert_eq!(c.router.settings.limits.max_connections_per_ip, 100);
}

#[test]
fn bad_limits_are_reported_at_their_paths() {
    let text = format!(
        "{BASE}\n[router.limits]\nmax_connections = 10\nmax_connections_per_ip = 11\nburst_per_ip = 5\n\
         [[limits]]\napp = \"nope-prod\"\n\
         [[limits]]\napp = \"api-prod\"\nburst = 3\n\
         [[limits]]\napp = \"api-prod\"\nlog_burst = 3\n"
    );
    let p = load(&text, Format::Toml).unwrap_err();
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "router.limits.max_connections_per_ip",
        "router.limits.burst_per_ip",
        "limits[0].app",
        "limits[1].burst",
        "limits[2].app",
        "limits[2].log_burst",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
    let unknown = format!("{BASE}\n[[limits]]\napp = \"api-prod\"\nrps = 3\n");
    assert!(
        load(&unknown, Format::Toml).is_err(),
        "unknown fields are refused"
    );
}
