//! JWT and CORS filters over real sockets: tokens signed with generated RSA and EC keys, a
//! JWKS server on 127.0.0.1, curl for every branch.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::*;
use wharf_config::*;

struct Key {
    enc: EncodingKey,
    jwk: Jwk,
    alg: Algorithm,
    kid: String,
    public_pem: String,
}

fn rsa_key(kid: &str) -> Key {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let pem = std::fs::read(&path).unwrap();
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&path)
        .output()
        .unwrap()
        .stdout;
    let enc = EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.into());
    Key {
        enc,
        jwk,
        alg: Algorithm::RS256,
        kid: kid.into(),
        public_pem: String::from_utf8(public).unwrap(),
    }
}

fn ec_key(kid: &str) -> Key {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    Key {
        enc,
        jwk,
        alg: Algorithm::ES256,
        kid: kid.into(),
        public_pem: kp.public_key_pem(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const ISS: &str = "https://auth.wharf.test/";

fn token(k: &Key, claims: serde_json::Value) -> String {
    let mut h = Header::new(k.alg);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, &claims, &k.enc).unwrap()
}

fn good_claims() -> serde_json::Value {
    serde_json::json!({"iss": ISS, "aud": "api", "sub": "user-1", "exp": now() + 600, "nbf": now() - 10})
}

fn jwks(keys: &[&Key]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .unwrap()
}

fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// JWT filter `auth` (issuer [`ISS`], audience `api`, every algorithm, keys from `jwks`) on two
/// apps served by `d`: `api-prod` everywhere but under `/public`, `scoped-prod` only under
/// `/private`. Returns the snapshot and the two app keys.
fn scoped_auth(pki: &Pki, jwks: &JsonServer, d: &Dyno) -> (Snapshot, String, String) {
    let mut s = base(pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    let scoped = add_app(&mut s, "scoped", "prod", &[d.addr]);
    s.filters.push(Filter::Jwt(JwtFilter {
        name: "auth".into(),
        jwks_uri: format!("http://{}/jwks", jwks.addr),
        issuer: ISS.into(),
        audiences: vec!["api".into()],
        leeway_secs: 5,
        jwks_ttl_secs: 300,
        algorithms: JWT_ALGORITHMS.iter().map(|s| s.to_string()).collect(),
    }));
    for (key, includes, excludes) in [
        (&app, vec![], vec!["/public"]),
        (&scoped, vec!["/private"], vec![]),
    ] {
        s.attachments.push(Attachment {
            app: key.clone(),
            filter: "auth".into(),
            includes: includes.into_iter().map(String::from).collect(),
            excludes: excludes.into_iter().map(String::from).collect(),
        });
    }
    (s, app, scoped)
}

#[test]
fn jwt_every_check() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let (rsa, ec, stranger) = (rsa_key("rsa-1"), ec_key("ec-1"), rsa_key("rsa-x"));
    let server = JsonServer::start(jwks(&[&rsa, &ec]), "application/json");
    let (s, app, scoped) = scoped_auth(&pki, &server, &d);
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let host = format!("{app}.{DOMAIN}");
    let call = |path: &str, tok: Option<&str>| {
        let auth = tok.map(|t| format!("Authorization: Bearer {t}"));
        let extra: Vec<&str> = match &auth {
            Some(a) => vec!["-H", a.as_str()],
            None => vec![],
        };
        curl(&pki, https, "https", &host, path, &extra)
    };
    let denied = |g: &Got, check: &str| {
        assert_eq!(g.status, 401, "{check}: {g:?}");
        assert_eq!(
            g.header("www-authenticate")
                .map(|v| v.starts_with("Bearer error=\"invalid_token\"")),
            Some(true),
            "{g:?}"
        );
        assert_eq!(g.json()["check"], check, "{g:?}");
    };

    let before = d.hits();
    denied(&call("/", None), "missing");
    denied(&call("/", Some("not.a.token")), "malformed");
    let mut c = good_claims();
    c["exp"] = (now() - 3600).into();
    denied(&call("/", Some(&token(&rsa, c))), "expired");
    let mut c = good_claims();
    c["nbf"] = (now() + 3600).into();
    denied(&call("/", Some(&token(&rsa, c))), "not_yet_valid");
    let mut c = good_claims();
    c["iss"] = "https://evil.example/".into();
    denied(&call("/", Some(&token(&rsa, c))), "issuer");
    let mut c = good_claims();
    c["aud"] = "other".into();
    denied(&call("/", Some(&token(&rsa, c))), "audience");
    denied(
        &call("/", Some(&token(&stranger, good_claims()))),
        "unknown_key",
    );
    // alg none: an unsigned token.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        b64(good_claims().to_string().as_bytes())
    );
    denied(&call("/", Some(&none)), "algorithm");
    // Key confusion: HS256 "signed" with the RSA public key as the secret.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &h,
        &good_claims(),
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .unwrap();
    denied(&call("/", Some(&confused)), "algorithm");
    // A token whose claims were changed after signing: the signature of another token.
    let t = token(&rsa, good_claims());
    let mut other = good_claims();
    other["sub"] = "admin".into();
    let o = token(&rsa, other);
    let tampered = format!(
        "{}.{}",
        o.rsplit_once('.').unwrap().0,
        t.rsplit_once('.').unwrap().1
    );
    denied(&call("/", Some(&tampered)), "signature");
    assert_eq!(d.hits(), before, "no rejected request reached the dyno");

    // Valid tokens, RSA and EC, reach the dyno with their Authorization header.
    for k in [&rsa, &ec] {
        let t = token(k, good_claims());
        let g = call("/", Some(&t));
        assert_eq!(g.status, 200, "{:?} {g:?}", k.alg);
        assert_eq!(g.json()["headers"]["authorization"], format!("Bearer {t}"));
        // And again (from the verified-token cache).
        assert_eq!(call("/x", Some(&t)).status, 200);
    }
    // Excludes never need a token; includes only those paths do.
    assert_eq!(call("/public/a", None).status, 200);
    assert_eq!(call("/publicity", None).status, 401);
    let scoped_host = format!("{scoped}.{DOMAIN}");
    assert_eq!(
        curl(&pki, https, "https", &scoped_host, "/other", &[]).status,
        200
    );
    assert_eq!(
        curl(&pki, https, "https", &scoped_host, "/private/x", &[]).status,
        401
    );

    let m = String::from_utf8(r.metrics().render()).unwrap();
    for needle in [
        "wharf_router_jwt_verdicts_total{verdict=\"expired\"} 1",
        "wharf_router_jwt_verdicts_total{verdict=\"ok\"}",
        "wharf_router_jwks_fetches_total{result=\"ok\"}",
    ] {
        assert!(m.contains(needle), "{needle} missing:\n{m}");
    }
}

#[test]
fn jwks_rotation_and_outage() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let (k1, k2) = (ec_key("k1"), ec_key("k2"));
    let server = JsonServer::start(jwks(&[&k1]), "application/json");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    s.filters.push(Filter::Jwt(JwtFilter {
        name: "auth".into(),
        jwks_uri: format!("http://{}/jwks", server.addr),
        issuer: ISS.into(),
        audiences: vec![],
        leeway_secs: 5,
        jwks_ttl_secs: 1,
        algorithms: vec!["ES256".into()],
    }));
    s.attachments.push(Attachment {
        app: app.clone(),
        filter: "auth".into(),
        includes: vec![],
        excludes: vec![],
    });
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let host = format!("{app}.{DOMAIN}");
    let status = |k: &Key| {
        let mut c = good_claims();
        c["jti"] = uuid::Uuid::new_v4().to_string().into();
        let a = format!("Authorization: Bearer {}", token(k, c));
        curl(&pki, https, "https", &host, "/", &["-H", &a]).status
    };
    assert_eq!(status(&k1), 200);
    // A new kid is picked up at once (refresh on unknown kid); the old one still works.
    *server.body.lock() = jwks(&[&k1, &k2]);
    assert_eq!(status(&k2), 200);
    assert_eq!(status(&k1), 200);
    // The old key leaves the set: after a TTL refresh it is refused.
    *server.body.lock() = jwks(&[&k2]);
    let mut refused = false;
    for _ in 0..40 {
        if status(&k1) == 401 {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(refused, "a removed key must stop verifying after its TTL");
    // The JWKS server answers garbage: the last good set keeps working.
    *server.body.lock() = "{ not json".into();
    let fetches = server.hits.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..40 {
        if server.hits.load(std::sync::atomic::Ordering::Relaxed) > fetches + 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&k2), 200);
    let m = String::from_utf8(r.metrics().render()).unwrap();
    assert!(
        m.contains("wharf_router_jwks_fetches_total{result=\"error\"}"),
        "{m}"
    );
}

/// A JWT scope (`includes` or `excludes`) holds whatever spelling of the path the client uses:
/// percent-encoded unreserved characters and dots are decoded before the filter looks, a `%2F`
/// is looked at both ways, and the dyno gets the normal path.
#[test]
fn jwt_scope_holds_against_percent_encoded_paths() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let key = ec_key("ec-1");
    let server = JsonServer::start(jwks(&[&key]), "application/json");
    let (s, open, scoped) = scoped_auth(&pki, &server, &d);
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    // --path-as-is: curl would otherwise resolve the dots itself.
    let call = |app: &str, path: &str, extra: &[&str]| {
        let mut args = vec!["--path-as-is"];
        args.extend_from_slice(extra);
        curl(
            &pki,
            https,
            "https",
            &format!("{app}.{DOMAIN}"),
            path,
            &args,
        )
    };

    let before = d.hits();
    for path in [
        "/private/x",
        "/%70rivate/x",
        "/public/%2e%2e/private/x",
        "/public/%2E%2e/private/x",
        "/public/.%2e/private/x",
        "/public/%2e./private/x",
        "/a/%2e/%2e%2e/private/x",
        "/public/..%2Fprivate/x",
        "/public/..%2fprivate/x",
        "/public/..%5Cprivate/x",
    ] {
        let g = call(&scoped, path, &[]);
        assert_eq!(g.status, 401, "includes /private, {path}: {g:?}");
    }
    for path in [
        "/admin",
        "/public/%2e%2e/admin",
        "/%70ublic/%2E%2E/admin",
        "/public/..%2Fadmin",
    ] {
        let g = call(&open, path, &[]);
        assert_eq!(g.status, 401, "excludes /public, {path}: {g:?}");
    }
    for path in ["/%2e%2e/private", "/public/%2e%2e/%2e%2e/private", "/a%zz"] {
        assert_eq!(call(&scoped, path, &[]).status, 400, "{path}");
    }
    assert_eq!(d.hits(), before, "no refused request reached the dyno");

    // Allowed requests reach the dyno in normal form, the original in X-Forwarded-Path.
    let g = call(&scoped, "/%70ublic/%2e/x%2fy", &[]);
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(g.json()["path"], "/public/x%2Fy");
    let t = token(&key, good_claims());
    let auth = format!("Authorization: Bearer {t}");
    let g = call(&scoped, "/public/%2e%2e/private/x?q=%2e", &["-H", &auth]);
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(g.json()["path"], "/private/x?q=%2e");
    assert_eq!(
        g.json()["headers"]["x-forwarded-path"],
        "/public/%2e%2e/private/x"
    );
    let g = call(&open, "/public/..%2Fpublic/a", &[]);
    assert_eq!(g.status, 200, "both views under /public: {g:?}");
}

fn cors_snapshot(pki: &Pki, d: &Dyno) -> (Snapshot, String) {
    let mut s = base(pki);
    let app = add_app(&mut s, "api", "prod", &[d.addr]);
    s.filters.push(Filter::Cors(CorsFilter {
        name: "browser".into(),
        allow_origin: vec!["https://app.example.com".into()],
        allow_methods: vec!["GET".into(), "PUT".into()],
        allow_headers: vec!["Content-Type".into(), "Authorization".into()],
        expose_headers: vec!["X-Request-Id".into()],
        max_age: Some(600),
        allow_credentials: true,
    }));
    s.attachments.push(Attachment {
        app: app.clone(),
        filter: "browser".into(),
        includes: vec![],
        excludes: vec![],
    });
    (s, app)
}

#[test]
fn cors_every_branch() {
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let (s, app) = cors_snapshot(&pki, &d);
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let host = format!("{app}.{DOMAIN}");
    let call = |extra: &[&str]| curl(&pki, https, "https", &host, "/res", extra);
    let before = d.hits();
    let g = call(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example.com",
        "-H",
        "Access-Control-Request-Method: PUT",
        "-H",
        "Access-Control-Request-Headers: content-type",
    ]);
    assert_eq!(g.status, 204, "{g:?}");
    assert_eq!(
        g.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(g.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        g.header("access-control-allow-headers"),
        Some("Content-Type, Authorization")
    );
    assert_eq!(g.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(g.header("access-control-max-age"), Some("600"));
    for bad in [
        vec![
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://evil.example.com",
            "-H",
            "Access-Control-Request-Method: GET",
        ],
        vec![
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://app.example.com",
            "-H",
            "Access-Control-Request-Method: DELETE",
        ],
        vec![
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://app.example.com",
            "-H",
            "Access-Control-Request-Method: GET",
            "-H",
            "Access-Control-Request-Headers: x-secret",
        ],
    ] {
        let g = call(&bad);
        assert_eq!(g.status, 403, "{bad:?} {g:?}");
        assert_eq!(g.header("access-control-allow-origin"), None);
    }
    assert_eq!(d.hits(), before, "preflights are answered at the edge");
    let g = call(&["-H", "Origin: https://app.example.com"]);
    assert_eq!(g.status, 200);
    assert_eq!(
        g.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(g.header("vary"), Some("Origin"));
    assert_eq!(
        g.header("access-control-expose-headers"),
        Some("X-Request-Id")
    );
    assert_eq!(g.header("access-control-allow-credentials"), Some("true"));
    let g = call(&["-H", "Origin: https://evil.example.com"]);
    assert_eq!(g.status, 200);
    assert_eq!(g.header("access-control-allow-origin"), None);
    let g = call(&[]);
    assert_eq!(g.header("access-control-allow-origin"), None);
}

/// A real browser: a page on one origin fetches the app through the router on another origin.
/// The allowed origin reads the answer; the browser blocks the disallowed one.
#[test]
fn cors_in_headless_chromium() {
    let chromium = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let chromium =
        chromium.expect("chromium is installed by scripts/test (Debian package chromium)");
    let pki = Pki::new();
    let d = Dyno::start("web.1");
    let (mut s, app) = cors_snapshot(&pki, &d);
    let page_server = JsonServer::start(String::new(), "text/html");
    let other_server = JsonServer::start(String::new(), "text/html");
    let allowed_origin = format!("http://127.0.0.1:{}", page_server.addr.port());
    if let Filter::Cors(c) = &mut s.filters[0] {
        c.allow_origin = vec![allowed_origin.clone()];
        c.allow_credentials = false;
    }
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let target = format!("https://{app}.{DOMAIN}:{}/from-browser", https.port());
    let page = format!(
        r#"<html><body><div id="out">pending</div><script>
        fetch("{target}", {{method: "PUT", headers: {{"Content-Type": "application/json"}}, body: "{{}}"}})
          .then(r => r.json()).then(j => document.getElementById("out").textContent = "RESULT:ok:" + j.dyno)
          .catch(e => document.getElementById("out").textContent = "RESULT:blocked:" + e.name);
        </script></body></html>"#
    );
    *page_server.body.lock() = page.clone();
    *other_server.body.lock() = page;
    let run = |url: String| {
        let profile = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--ignore-certificate-errors",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(format!("{allowed_origin}/"));
    assert!(
        dom.contains("RESULT:ok:web.1"),
        "allowed origin must read the response: {dom}"
    );
    let dom = run(format!("http://127.0.0.1:{}/", other_server.addr.port()));
    assert!(
        dom.contains("RESULT:blocked:TypeError"),
        "disallowed origin must be blocked: {dom}"
    );
}
