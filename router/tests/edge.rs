//! The router over real sockets: curl and raw TLS clients against a router in front of real
//! HTTP dynos, all on 127.0.0.1.

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use wharf_config::*;

fn host(app: &str) -> String {
    format!("{app}.{DOMAIN}")
}

#[test]
fn routes_https_round_robin_with_forwarded_headers_and_log_lines() {
    let pki = Pki::new();
    let (d1, d2) = (Dyno::start("web.1"), Dyno::start("web.2"));
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d1.addr, d2.addr]);
    let sink = Collect::default();
    let r = start(&s, &sink);
    let https = r.addrs().https.unwrap();

    let mut seen = HashSet::new();
    for _ in 0..4 {
        let g = curl(&pki, https, "https", &host(&app), "/hello?x=1", &[]);
        assert_eq!(g.status, 200, "{g:?}");
        let j = g.json();
        seen.insert(j["dyno"].as_str().unwrap().to_owned());
        assert_eq!(j["path"], "/hello?x=1");
        let h = &j["headers"];
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-port"], https.port().to_string());
        assert_eq!(h["via"], "1.1 wharf");
        assert_eq!(h["host"], format!("{}:{}", host(&app), https.port()));
        let start: u64 = h["x-request-start"].as_str().unwrap().parse().unwrap();
        assert!(start > 1_600_000_000_000, "ms since epoch: {start}");
        // A request id is made and echoed.
        let id = g.header("x-request-id").unwrap();
        assert_eq!(h["x-request-id"], id);
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        assert_eq!(
            g.header("strict-transport-security"),
            Some("max-age=31536000")
        );
    }
    assert_eq!(
        seen,
        HashSet::from(["web.1".to_owned(), "web.2".to_owned()])
    );

    // A valid client request id is kept; an invalid one replaced.
    let keep = "abcdefghij0123456789-keep";
    let g = curl(
        &pki,
        https,
        "https",
        &host(&app),
        "/",
        &["-H", &format!("X-Request-Id: {keep}")],
    );
    assert_eq!(g.header("x-request-id"), Some(keep));
    let g = curl(
        &pki,
        https,
        "https",
        &host(&app),
        "/",
        &["-H", "X-Request-Id: bad id"],
    );
    assert_ne!(g.header("x-request-id"), Some("bad id"));
    // X-Forwarded-For is appended to, not replaced.
    let g = curl(
        &pki,
        https,
        "https",
        &host(&app),
        "/",
        &["-H", "X-Forwarded-For: 10.0.0.1"],
    );
    assert_eq!(
        g.json()["headers"]["x-forwarded-for"],
        "10.0.0.1, 127.0.0.1"
    );

    let line = sink.wait_for(keep);
    assert_eq!(line.app, app);
    assert_eq!(line.source, Source::Heroku);
    assert_eq!(line.process, "router");
    assert!(line.line.starts_with("at=info method=GET path=\"/\" host=api-prod.wharf.test request_id=abcdefghij0123456789-keep fwd=\"127.0.0.1\" dyno=web."), "{}", line.line);
    assert!(line.line.contains(" status=200 "), "{}", line.line);
    assert!(
        line.line.contains(" protocol=https tls_version=TLSv1."),
        "{}",
        line.line
    );
}

#[test]
fn plain_http_redirects_get_and_refuses_other_methods() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let r = start(&s, &Collect::default());
    let http = r.addrs().http.unwrap();
    let g = curl(&pki, http, "http", &host(&app), "/a/b?c=d", &[]);
    assert_eq!(g.status, 308);
    assert_eq!(
        g.header("location"),
        Some(format!("https://{}/a/b?c=d", host(&app)).as_str())
    );
    let g = curl(&pki, http, "http", &host(&app), "/", &["-I"]);
    assert_eq!(g.status, 308);
    let g = curl(
        &pki,
        http,
        "http",
        &host(&app),
        "/",
        &["-X", "POST", "-d", "x"],
    );
    assert_eq!(g.status, 400);
    assert!(g.body.contains("HTTPS"), "{}", g.body);
}

#[test]
fn unknown_and_internal_hosts() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let public = add_app(&mut s, "api", "prod", &[d.addr]);
    let internal = add_app(&mut s, "admin", "back", &[d.addr]);
    let sink = Collect::default();
    let r = start(&s, &sink);
    let https = r.addrs().https.unwrap();
    let unknown = curl(&pki, https, "https", "nope.wharf.test", "/", &[]);
    assert_eq!(unknown.status, 404);
    // An internal app on the public listener answers exactly like an unknown host.
    let hidden = curl(&pki, https, "https", &host(&internal), "/", &[]);
    assert_eq!(
        (hidden.status, &hidden.body),
        (unknown.status, &unknown.body)
    );
    // On the internal listener it is served, and public apps are not.
    let int = r.addrs().internal.unwrap();
    assert_eq!(
        curl(&pki, int, "http", &host(&internal), "/", &[]).status,
        200
    );
    assert_eq!(
        curl(&pki, int, "http", &host(&public), "/", &[]).status,
        404
    );
    let g = curl(&pki, int, "http", &host(&internal), "/", &[]);
    assert_eq!(g.json()["headers"]["x-forwarded-proto"], "http");
}

#[test]
fn site_routes_longest_segment_prefix_with_rewrite() {
    let pki = Pki::new();
    let (web, api, v2) = (Dyno::start("web"), Dyno::start("api"), Dyno::start("v2"));
    let mut s = base(&pki);
    let web_app = add_app(&mut s, "web", "prod", &[web.addr]);
    let api_app = add_app(&mut s, "api", "prod", &[api.addr]);
    let v2_app = add_app(&mut s, "v2", "prod", &[v2.addr]);
    s.sites.push(Site {
        domain: "www.example.com".into(),
        internal: false,
    });
    for (src, app, target) in [
        ("/", &web_app, "/"),
        ("/api", &api_app, "/v3/api"),
        ("/api/v2", &v2_app, "/"),
    ] {
        s.routes.push(Route {
            site: "www.example.com".into(),
            source_path: src.into(),
            app: app.clone(),
            target_path: target.into(),
        });
    }
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let get = |p: &str| curl(&pki, https, "https", "www.example.com", p, &[]).json();
    let j = get("/api/x?q=1");
    assert_eq!(
        (j["dyno"].as_str(), j["path"].as_str()),
        (Some("api"), Some("/v3/api/x?q=1"))
    );
    assert_eq!(j["headers"]["x-forwarded-path"], "/api/x");
    assert_eq!(get("/api")["path"], "/v3/api");
    assert_eq!(get("/api/")["path"], "/v3/api/");
    let j = get("/api/v2/users");
    assert_eq!(
        (j["dyno"].as_str(), j["path"].as_str()),
        (Some("v2"), Some("/users"))
    );
    // Segment-aware: /apiary is not under /api.
    let j = get("/apiary");
    assert_eq!(
        (j["dyno"].as_str(), j["path"].as_str()),
        (Some("web"), Some("/apiary"))
    );
    // Dot segments are resolved before matching, so they cannot escape a route.
    let j = get("/api/../admin");
    assert_eq!(j["dyno"], "web");
    let g = curl(
        &pki,
        https,
        "https",
        "www.example.com",
        "/..",
        &["--path-as-is"],
    );
    assert_eq!(g.status, 400);
}

fn served_cn(addr: std::net::SocketAddr, sni: &str) -> String {
    // openssl s_client may give up early on a loaded machine: a few bounded tries.
    let mut last = String::new();
    for _ in 0..5 {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                sni,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(subject) = last.lines().find(|l| l.starts_with("subject=")) {
            return subject
                .rsplit("CN")
                .next()
                .unwrap()
                .trim_start_matches([' ', '='])
                .to_owned();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no certificate subject from openssl: {last}");
}

#[test]
fn certificates_by_sni_and_misdirected_requests() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    s.sites.push(Site {
        domain: "www.example.com".into(),
        internal: false,
    });
    s.routes.push(Route {
        site: "www.example.com".into(),
        source_path: "/".into(),
        app: app.clone(),
        target_path: "/".into(),
    });
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    assert_eq!(served_cn(https, "www.example.com"), "site");
    assert_eq!(served_cn(https, "api-prod.wharf.test"), "wildcard");
    // A wildcard covers one label only.
    assert_eq!(served_cn(https, "a.b.wharf.test"), "default");
    assert_eq!(served_cn(https, "other.invalid"), "default");

    // SNI picked the wildcard certificate, Host asks for a name of another certificate: 421.
    let g = curl(
        &pki,
        https,
        "https",
        &host(&app),
        "/",
        &["-H", "Host: www.example.com"],
    );
    assert_eq!(g.status, 421, "{g:?}");
    // Two names under the same certificate are fine.
    let g = curl(
        &pki,
        https,
        "https",
        &host(&app),
        "/",
        &["-H", &format!("Host: {}", host(&app))],
    );
    assert_eq!(g.status, 200);

    // Certificates rotate with a swap: www.example.com moves to a new certificate.
    let mut s2 = s.clone();
    let fresh = pki.leaf("rotated", &["www.example.com"]);
    s2.certificates[1].cert_pem = Some(fresh.cert_pem);
    s2.certificates[1].key_pem = Some(fresh.key_pem);
    r.apply(support::compile(&s2)).unwrap();
    assert_eq!(served_cn(https, "www.example.com"), "rotated");
}

#[test]
fn tls_versions_and_http2() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let g = curl(&pki, https, "https", &host(&app), "/", &["--http2"]);
    assert_eq!((g.version.as_str(), g.status), ("HTTP/2", 200));
    assert_eq!(g.json()["headers"]["x-forwarded-proto"], "https");
    let g = curl(
        &pki,
        https,
        "https",
        &host(&app),
        "/",
        &["--http1.1", "--tlsv1.2", "--tls-max", "1.2"],
    );
    assert_eq!(g.status, 200);
    // Nothing older than TLS 1.2 is offered.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &https.to_string(),
            "-servername",
            &host(&app),
            "-tls1_1",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "TLS 1.1 handshake must fail");
}

#[test]
fn heroku_error_codes() {
    let pki = Pki::new();
    let live = Dyno::start("web.2");
    let mut s = base(&pki);
    s.router.first_byte_timeout_ms = 1000;
    let none = add_app(&mut s, "none", "prod", &[]);
    let crashed = add_app(&mut s, "crashed", "prod", &[]);
    s.endpoints.push(Endpoint {
        app: crashed.clone(),
        release: 1,
        process: "web.1".into(),
        address: dead_addr(),
        state: DynoState::Crashed,
    });
    let refused = add_app(&mut s, "refused", "prod", &[dead_addr()]);
    let retried = add_app(&mut s, "retried", "prod", &[dead_addr(), live.addr]);
    let slow = add_app(&mut s, "slow", "prod", &[live.addr]);
    let sink = Collect::default();
    let r = start(&s, &sink);
    let https = r.addrs().https.unwrap();

    assert_eq!(
        curl(&pki, https, "https", &host(&none), "/", &[]).status,
        503
    );
    sink.wait_for("at=error code=H14 desc=\"No web processes running\"");
    assert_eq!(
        curl(&pki, https, "https", &host(&crashed), "/", &[]).status,
        503
    );
    sink.wait_for("code=H10");
    assert_eq!(
        curl(&pki, https, "https", &host(&refused), "/", &[]).status,
        503
    );
    sink.wait_for("code=H21");
    // A refused connect is retried on another dyno, and the dead one is skipped after.
    for _ in 0..4 {
        let g = curl(&pki, https, "https", &host(&retried), "/", &[]);
        assert_eq!((g.status, g.json()["dyno"].as_str()), (200, Some("web.2")));
    }
    let g = curl(&pki, https, "https", &host(&slow), "/sleep/3000", &[]);
    assert_eq!(g.status, 503);
    sink.wait_for("code=H12");
    let text = String::from_utf8(r.metrics().render()).unwrap();
    assert!(
        text.contains("wharf_router_errors_total{code=\"H21\"}"),
        "{text}"
    );
    assert!(
        text.contains("wharf_router_dynos_marked_down_total"),
        "{text}"
    );
}

#[test]
fn streaming_bodies_and_large_uploads() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let g = curl(&pki, https, "https", &host(&app), "/stream/50", &[]);
    assert_eq!(g.status, 200);
    assert_eq!(g.body.lines().count(), 50);
    assert!(g.body.ends_with("chunk 49\n"));
    let file = pki.dir.path().join("upload.bin");
    std::fs::write(&file, vec![7u8; 5 << 20]).unwrap();
    for extra in [
        vec!["--data-binary"],
        vec!["-H", "Transfer-Encoding: chunked", "--data-binary"],
    ] {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.push(format!("@{}", file.display()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let g = curl(&pki, https, "https", &host(&app), "/upload", &args);
        assert_eq!(g.json()["body_len"], 5 << 20);
    }
}

/// A raw TLS connection to the router, for what curl will not send.
fn raw_tls(
    pki: &Pki,
    addr: std::net::SocketAddr,
    sni: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), sni.to_owned().try_into().unwrap())
        .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

use rustls_pki_types::pem::PemObject;

fn exchange(pki: &Pki, addr: std::net::SocketAddr, sni: &str, request: &[u8]) -> String {
    let mut s = raw_tls(pki, addr, sni);
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn smuggling_and_limits() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let h = host(&app);
    let resp = exchange(&pki, https, &h, format!(
        "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes());
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = exchange(
        &pki,
        https,
        &h,
        format!(
            "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
        )
        .as_bytes(),
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let long = "a".repeat(9000);
    let resp = exchange(
        &pki,
        https,
        &h,
        format!("GET /{long} HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes(),
    );
    assert!(resp.starts_with("HTTP/1.1 414"), "{resp}");
    let resp = exchange(
        &pki,
        https,
        &h,
        format!("GET / HTTP/1.1\r\nHost: {h}\r\nX-Big: {long}\r\n\r\n").as_bytes(),
    );
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let resp = exchange(&pki, https, &h, b"GET / HTTP/1.1\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[test]
fn websocket_upgrade_is_proxied() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let sink = Collect::default();
    let r = start(&s, &sink);
    let h = host(&app);
    // Many upgrades in a row: pingora 0.9.1's own upgrade path ended the session when the
    // dyno's 101 was read before the request's empty body end (EOF right after the 101).
    for round in 0..30 {
        let mut c = raw_tls(&pki, r.addrs().https.unwrap(), &h);
        c.write_all(format!("GET /ws HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            c.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("upgrade: websocket"),
            "{head}"
        );
        for msg in [&b"hello websocket"[..], b"second frame"] {
            c.write_all(msg).unwrap();
            let mut echo = vec![0u8; msg.len()];
            c.read_exact(&mut echo)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(echo, msg);
        }
    }
    let line = sink.wait_for("path=\"/ws\"");
    assert!(line.line.contains("status=101"), "{}", line.line);
    // An upgrade the dyno does not accept: its answer is relayed as is.
    let resp = exchange(
        &pki,
        r.addrs().https.unwrap(),
        &h,
        format!(
            "GET /plain HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("x-dyno: web.1"),
        "{resp}"
    );
}

#[test]
fn admin_metrics_and_health() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let r = start(&s, &Collect::default());
    curl(
        &pki,
        r.addrs().https.unwrap(),
        "https",
        &host(&app),
        "/",
        &[],
    );
    let admin = r.addrs().admin.unwrap();
    let g = curl(&pki, admin, "http", "127.0.0.1", "/healthz", &[]);
    assert_eq!(g.status, 200);
    assert_eq!(g.json()["version"], 1);
    let g = curl(&pki, admin, "http", "127.0.0.1", "/metrics", &[]);
    for m in [
        "wharf_router_requests_total{app=\"api-prod\",class=\"2xx\"} 1",
        "wharf_router_request_duration_seconds_bucket",
        "wharf_router_upstream_connect_seconds",
        "wharf_router_tls_handshakes_total{version=\"TLSv1.3\"}",
        "wharf_router_config_version 1",
        "wharf_router_config_swaps_total 1",
        "wharf_router_requests_in_flight 0",
    ] {
        assert!(g.body.contains(m), "{m} missing from\n{}", g.body);
    }
}

#[test]
fn invalid_config_is_rejected_whole_and_the_old_one_serves() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    // A key that does not match its certificate: refused by the router itself.
    let mut bad = s.clone();
    bad.certificates[0].key_pem = Some(pki.leaf("x", &["x.wharf.test"]).key_pem);
    add_app(&mut bad, "new", "prod", &[d.addr]);
    let err = r.apply(support::compile(&bad)).unwrap_err();
    assert!(err.to_string().contains("certificates[0] (wild)"), "{err}");
    // A snapshot that does not validate: every reason given.
    let mut invalid = s.clone();
    invalid.canaries.push(Canary {
        app: "ghost-prod".into(),
        stable_release: 1,
        canary_release: 1,
        weight: 300,
        sticky: false,
        abort: Default::default(),
    });
    let err = r.apply_snapshot(invalid).unwrap_err();
    assert!(err.reasons.len() >= 3, "{err}");
    assert_eq!(r.version(), 1);
    assert_eq!(
        curl(&pki, https, "https", &host(&app), "/", &[]).status,
        200
    );
    assert_eq!(
        curl(&pki, https, "https", "new-prod.wharf.test", "/", &[]).status,
        404
    );
}

#[test]
fn request_body_limit() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    s.router.max_body_bytes = 1024;
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let small = "x".repeat(1000);
    let big = "x".repeat(5000);
    assert_eq!(
        curl(
            &pki,
            https,
            "https",
            &host(&app),
            "/",
            &["--http1.1", "--data-binary", &small]
        )
        .json()["body_len"],
        1000
    );
    let before = d.hits();
    assert_eq!(
        curl(
            &pki,
            https,
            "https",
            &host(&app),
            "/",
            &["--http1.1", "--data-binary", &big]
        )
        .status,
        413
    );
    assert_eq!(
        d.hits(),
        before,
        "a declared oversized body never reaches the dyno"
    );
    // Chunked: the limit is counted as the body streams.
    let g = curl(
        &pki,
        https,
        "https",
        &host(&app),
        "/",
        &[
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &big,
        ],
    );
    assert_eq!(g.status, 413, "{g:?}");
}

/// A dyno on a raw socket, for answers no HTTP library gives: it reads each request head and
/// hands the socket to `act`. Accepts until dropped (bounded: at most 30 s of polling).
struct RawDyno {
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawDyno {
    fn start(act: impl Fn(TcpStream) + Send + Sync + 'static) -> RawDyno {
        Self::start_with_head(move |s, _| act(s))
    }

    /// Like [`RawDyno::start`], with the request head as text.
    fn start_with_head(act: impl Fn(TcpStream, String) + Send + Sync + 'static) -> RawDyno {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let act = Arc::new(act);
        let thread = std::thread::spawn(move || {
            for _ in 0..3000 {
                if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                match l.accept() {
                    Ok((mut s, _)) => {
                        let act = act.clone();
                        std::thread::spawn(move || {
                            s.set_nonblocking(false).unwrap();
                            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                            if let Some(head) = read_head(&mut s) {
                                act(s, head);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        RawDyno {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RawDyno {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read one request head (up to 64 KiB); `None` when the peer went away first.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while head.len() < 65536 {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                head.extend_from_slice(&b[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    return Some(String::from_utf8_lossy(&head).into_owned());
                }
            }
        }
    }
    None
}

#[test]
fn dyno_closing_without_a_response_is_h13_and_a_malformed_response_is_h25() {
    let pki = Pki::new();
    // Reads the request, then closes the connection without a byte of response.
    let closer = RawDyno::start(drop);
    // Answers with something that is not HTTP.
    let garbage = RawDyno::start(|mut s| {
        let _ = s.write_all(b"HELLO THERE\r\nthis is not http\r\n\r\n");
    });
    let mut s = base(&pki);
    let closed = add_app(&mut s, "closed", "prod", &[closer.addr]);
    let bad = add_app(&mut s, "bad", "prod", &[garbage.addr]);
    let sink = Collect::default();
    let r = start(&s, &sink);
    let https = r.addrs().https.unwrap();

    let g = curl(&pki, https, "https", &host(&closed), "/x", &["--http1.1"]);
    assert_eq!(g.status, 503, "{g:?}");
    assert_eq!(
        g.body, "Application error: connection closed without response\n",
        "{g:?}"
    );
    let line = sink.wait_for("code=H13");
    assert!(
        line.line
            .contains("desc=\"Connection closed without response\""),
        "{}",
        line.line
    );
    assert!(line.line.contains("status=503"), "{}", line.line);
    assert_eq!(line.app, closed);

    let g = curl(&pki, https, "https", &host(&bad), "/y", &[]);
    assert_eq!(g.status, 502, "{g:?}");
    assert_eq!(
        g.body, "Bad Gateway: invalid response from the app\n",
        "{g:?}"
    );
    let line = sink.wait_for("code=H25");
    assert!(line.line.contains("status=502"), "{}", line.line);
    assert!(line.line.contains("path=\"/y\""), "{}", line.line);

    let text = String::from_utf8(r.metrics().render()).unwrap();
    for code in ["H13", "H25"] {
        assert!(
            text.contains(&format!("wharf_router_errors_total{{code=\"{code}\"}} 1")),
            "{code} not counted in\n{text}"
        );
    }
}

#[test]
fn client_gone_before_the_response_is_h27_logged_as_499() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "slow", "prod", &[d.addr]);
    let sink = Collect::default();
    let r = start(&s, &sink);
    let https = r.addrs().https.unwrap();
    let h = host(&app);
    // The client sends its request and goes away while the dyno still works on it.
    let mut c = raw_tls(&pki, https, &h);
    c.write_all(format!("GET /sleep/2000 HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes())
        .unwrap();
    c.flush().unwrap();
    for _ in 0..200 {
        if d.hits() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(d.hits(), 1, "the request reached the dyno");
    c.conn.send_close_notify();
    let _ = c.conn.complete_io(&mut c.sock);
    c.sock.shutdown(std::net::Shutdown::Both).unwrap();
    drop(c);

    let line = sink.wait_for("code=H27");
    assert!(
        line.line.contains("desc=\"Client Request Interrupted\""),
        "{}",
        line.line
    );
    assert!(line.line.contains("status=499"), "{}", line.line);
    assert!(line.line.contains("path=\"/sleep/2000\""), "{}", line.line);
    let text = String::from_utf8(r.metrics().render()).unwrap();
    assert!(
        text.contains("wharf_router_errors_total{code=\"H27\"} 1"),
        "{text}"
    );
}

#[test]
fn first_byte_and_idle_timeouts_are_separate_h12_and_h15() {
    let pki = Pki::new();
    // `/late`: the head after 1.5 s. `/drip`: chunks 1.5 s apart. `/stall`: one chunk, then
    // 3.5 s of silence.
    let dyno = RawDyno::start_with_head(|mut s, head| {
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let pause = |ms| std::thread::sleep(Duration::from_millis(ms));
        let chunk = |s: &mut TcpStream, text: &str| {
            s.write_all(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes())
        };
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        let _ = (|| -> std::io::Result<()> {
            match path.as_str() {
                "/late" => {
                    pause(1500);
                    s.write_all(head)?;
                    chunk(&mut s, "late\n")?;
                }
                "/drip" => {
                    s.write_all(head)?;
                    for i in 0..3 {
                        chunk(&mut s, &format!("drip {i}\n"))?;
                        pause(1500);
                    }
                }
                _ => {
                    s.write_all(head)?;
                    chunk(&mut s, "first\n")?;
                    pause(3500);
                    chunk(&mut s, "too late\n")?;
                }
            }
            s.write_all(b"0\r\n\r\n")
        })();
    });
    let mut s = base(&pki);
    s.router.first_byte_timeout_ms = 1000;
    s.router.idle_timeout_ms = 2000;
    let app = add_app(&mut s, "stream", "prod", &[dyno.addr]);
    let sink = Collect::default();
    let r = start(&s, &sink);
    let https = r.addrs().https.unwrap();
    let h = host(&app);

    // No head within the first-byte deadline: 503 H12.
    let g = curl(&pki, https, "https", &h, "/late", &[]);
    assert_eq!(g.status, 503, "{g:?}");
    assert_eq!(g.body, "Application error: request timeout\n");
    let line = sink.wait_for("path=\"/late\"");
    assert!(line.line.contains("code=H12"), "{}", line.line);

    // Gaps longer than the first-byte deadline but within the idle one: the whole stream.
    let g = curl(&pki, https, "https", &h, "/drip", &[]);
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(g.body, "drip 0\ndrip 1\ndrip 2\n");
    let line = sink.wait_for("path=\"/drip\"");
    assert!(line.line.starts_with("at=info"), "{}", line.line);

    // Silence past the idle deadline mid-stream: cut, H15.
    let mut c = raw_tls(&pki, https, &h);
    c.write_all(format!("GET /stall HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("first"), "{got}");
    assert!(!got.contains("too late"), "{got}");
    let line = sink.wait_for("path=\"/stall\"");
    assert!(line.line.contains("code=H15"), "{}", line.line);
    assert!(
        line.line.contains("desc=\"Idle connection\""),
        "{}",
        line.line
    );
}

/// Up to 1000 request headers reach the dyno, all of them, in order, with the body framed by a
/// Content-Length far down the head (pingora's own parser stops at 256); more than 1000 → 431.
#[test]
fn up_to_1000_headers_are_proxied_and_more_get_431() {
    let pki = Pki::new();
    // A raw dyno: hyper's own parser would stop at 100 headers. It keeps each request whole.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    let d = RawDyno::start_with_head(move |mut s, head| {
        let mut req = head.into_bytes();
        let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let text = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut b = [0u8; 1024];
        while req.len() < end + len {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        seen2
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&req).into_owned());
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
    });
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let back = add_app(&mut s, "admin", "back", &[d.addr]);
    let r = start(&s, &Collect::default());
    let h = host(&app);
    let hb = host(&back);
    // `n` header lines in all: Host, Content-Length among the last, and numbered ones.
    let request = |h: &str, n: usize| {
        let mut req = format!("POST /h HTTP/1.1\r\nHost: {h}\r\n");
        for i in 1..n - 1 {
            if i == n - 10 {
                req.push_str("Content-Length: 5\r\n");
            }
            req.push_str(&format!("X-H-{i}: {i}\r\n"));
        }
        req.push_str("\r\nhello");
        req
    };
    let plain = |addr, req: &str| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        // Up to the end of the response head: the router keeps the connection alive.
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&b[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let https = r.addrs().https.unwrap();
    let internal = r.addrs().internal.unwrap();
    // The public app over HTTPS, the internal one on the internal listener.
    let send = |addr, n| {
        if addr == https {
            exchange(&pki, addr, &h, request(&h, n).as_bytes())
        } else {
            plain(addr, &request(&hb, n))
        }
    };
    let mut sent = 0;
    for n in [256, 257, 600, 1000] {
        for addr in [https, internal] {
            let resp = send(addr, n);
            assert!(
                resp.starts_with("HTTP/1.1 200"),
                "{n} headers on {addr}: {resp}"
            );
            sent += 1;
            let got = seen.lock().unwrap().last().cloned().unwrap();
            let numbered: Vec<usize> = got
                .lines()
                .filter_map(|l| l.strip_prefix("X-H-").or_else(|| l.strip_prefix("x-h-")))
                .map(|l| l.split(':').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(
                numbered,
                (1..n - 1).collect::<Vec<_>>(),
                "{n} headers on {addr}: every one, in order"
            );
            assert!(
                got.ends_with("\r\n\r\nhello"),
                "{n} headers: the body: {got}"
            );
        }
    }
    assert_eq!(seen.lock().unwrap().len(), sent);
    for n in [1001, 3000] {
        for addr in [https, internal] {
            let resp = send(addr, n);
            assert!(
                resp.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
                "{n} headers on {addr}: {resp}"
            );
        }
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        sent,
        "nothing over the limit reached the dyno"
    );
}
