//! The planes apart: `wharf router` and `wharf logshuttle` following a separate `wharf control`
//! over its snapshot feed, surviving the control plane going away, and a router restarted while
//! it is away starting from its snapshot cache.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod support;
use support::proc::{Proc, free_port, poll, post_log};

const TOKEN: &str = "wharf_follow_test_admin_token";
const DOMAIN: &str = "wharf.localhost";

fn control(data: &Path, port: u16) -> Proc {
    let p = Proc::spawn(&[
        "control".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        data.display().to_string(),
        "--admin-token".into(),
        TOKEN.into(),
        "--runtime".into(),
        "none".into(),
    ]);
    assert!(
        p.wait_for("wharf control listening on", 30),
        "control did not start: {}",
        p.stderr()
    );
    p
}

fn cli(url: &str, home: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .env("WHARF_API_URL", url)
        .env("WHARF_API_TOKEN", TOKEN)
        .env("HOME", home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wharf {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The HTTP status the router answers for `host`, trusting `ca`.
fn status(https: u16, ca: &Path, host: &str) -> String {
    let (out, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        &ca.display().to_string(),
        "--resolve",
        &format!("{host}:{https}:127.0.0.1"),
        &format!("https://{host}:{https}/"),
    ]);
    out
}

fn router(url: &str, https: u16, admin: u16, cache: &Path, wait: u64) -> Proc {
    Proc::spawn(&[
        "router".into(),
        "--control".into(),
        url.into(),
        "--control-token".into(),
        TOKEN.into(),
        "--snapshot-cache".into(),
        cache.display().to_string(),
        "--control-wait".into(),
        wait.to_string(),
        "--https".into(),
        format!("127.0.0.1:{https}"),
        "--http".into(),
        "none".into(),
        "--internal".into(),
        "none".into(),
        "--admin".into(),
        format!("127.0.0.1:{admin}"),
        "--threads".into(),
        "1".into(),
    ])
}

#[test]
fn router_and_shuttle_follow_a_separate_control_plane_and_outlive_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, home) = (dir.path().join("control"), dir.path().join("home"));
    std::fs::create_dir_all(&home).unwrap();
    let cport = free_port();
    let url = format!("http://127.0.0.1:{cport}");
    let mut cp = control(&data, cport);

    // A certificate for *.domain through the API: the router's default certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec![format!("*.{DOMAIN}"), DOMAIN.to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let body = serde_json::json!({
        "name": "wildcard",
        "names": [format!("*.{DOMAIN}")],
        "certificate_chain": cert.pem(),
        "private_key": key.serialize_pem(),
        "default": true,
    });
    let (out, err) = curl(&[
        "-f",
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body.to_string(),
        &format!("{url}/certificates"),
    ]);
    assert!(err.is_empty(), "certificate refused: {err} {out}");
    cli(&url, &home, &["spaces:create", "demo"]);

    let (https, admin) = (free_port(), free_port());
    let cache = dir.path().join("router-cache.json");
    let r1 = router(&url, https, admin, &cache, 30);
    assert!(
        r1.wait_for("wharf router: https", 30),
        "router did not start: {}",
        r1.stderr()
    );
    assert!(
        r1.stderr()
            .contains(&format!("config from control plane {url}"))
    );
    let web = format!("web-demo.{DOMAIN}");
    assert_eq!(status(https, &ca, &web), "404", "no app yet: unknown host");

    // The shuttle follows too: an app's log token is unknown until its snapshot arrives.
    let drain = TcpListener::bind("127.0.0.1:0").unwrap();
    let drain_port = drain.local_addr().unwrap().port();
    let lport = free_port();
    let shuttle = Proc::spawn(&[
        "logshuttle".into(),
        "--control".into(),
        url.clone(),
        "--control-token".into(),
        TOKEN.into(),
        "--http".into(),
        format!("127.0.0.1:{lport}"),
    ]);
    assert!(
        shuttle.wait_for("logplex HTTP ingest listening", 30),
        "shuttle did not start: {}",
        shuttle.stderr()
    );

    // A new app reaches the router (known host, no dynos: 503 H14) without a restart.
    cli(&url, &home, &["apps:create", "web", "-s", "demo"]);
    cli(
        &url,
        &home,
        &[
            "drains:add",
            &format!("syslog+tcp://127.0.0.1:{drain_port}"),
            "-a",
            "web-demo",
        ],
    );
    assert!(
        poll(30, || status(https, &ca, &web) == "503"),
        "router did not follow the new app: {}",
        r1.stderr()
    );

    // The shuttle accepts the app's token and delivers to the drain the snapshot named.
    let (snap, _) = curl(&[
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        &format!("{url}/v1/snapshot"),
    ]);
    let snap: serde_json::Value = serde_json::from_str(&snap).unwrap();
    let log_token = snap["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "web")
        .and_then(|a| a["log_token"].as_str())
        .expect("the snapshot carries the app's log token")
        .to_owned();
    assert!(
        poll(30, || post_log(lport, &log_token, "hello over the feed")
            .starts_with('2')),
        "shuttle did not follow the new app: {}",
        shuttle.stderr()
    );
    drain.set_nonblocking(false).unwrap();
    let (mut conn, _) = drain.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("hello over the feed") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        String::from_utf8_lossy(&got).contains("hello over the feed"),
        "drain got {:?}",
        String::from_utf8_lossy(&got)
    );

    // The control plane goes away: the last good snapshot keeps serving.
    let _ = cp.child.kill();
    let _ = cp.child.wait();
    assert!(
        r1.wait_for("control plane away", 60),
        "no warning: {}",
        r1.stderr()
    );
    assert_eq!(status(https, &ca, &web), "503");
    assert!(post_log(lport, &log_token, "still accepted").starts_with('2'));

    // A router started while the control plane is away serves from its cache.
    let (https2, admin2) = (free_port(), free_port());
    let r2 = router(&url, https2, admin2, &cache, 2);
    assert!(
        r2.wait_for("wharf router: https", 30),
        "second router did not start: {}",
        r2.stderr()
    );
    assert!(
        r2.stderr().contains("serving the cached snapshot"),
        "{}",
        r2.stderr()
    );
    assert_eq!(status(https2, &ca, &web), "503");
    drop(r2);

    // The control plane comes back on the same address: the feed resumes.
    cp = control(&data, cport);
    cli(&url, &home, &["apps:create", "api", "-s", "demo"]);
    let api = format!("api-demo.{DOMAIN}");
    assert!(
        poll(60, || status(https, &ca, &api) == "503"),
        "router did not resume following: {}",
        r1.stderr()
    );
    assert!(r1.stderr().contains("control plane reachable again"));
    drop(cp);
    drop(shuttle);
    drop(r1);
}

#[test]
fn following_needs_an_admin_token_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cport = free_port();
    let _cp = control(&dir.path().join("control"), cport);
    let r = Proc::spawn(&[
        "router".into(),
        "--control".into(),
        format!("http://127.0.0.1:{cport}"),
        "--control-token".into(),
        "not-a-token".into(),
        "--control-wait".into(),
        "2".into(),
        "--https".into(),
        "127.0.0.1:0".into(),
        "--http".into(),
        "none".into(),
        "--internal".into(),
        "none".into(),
        "--admin".into(),
        "none".into(),
    ]);
    assert!(
        r.wait_for("not serving until the control plane answers", 30),
        "{}",
        r.stderr()
    );
    let text = r.stderr();
    assert!(
        text.contains("the control plane refused the token (HTTP 401)"),
        "{text}"
    );
    assert!(
        !text.contains("wharf router: https"),
        "started with nothing to serve: {text}"
    );
}
