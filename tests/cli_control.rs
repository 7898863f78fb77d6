//! The `wharf` CLI against a running `wharf control` on 127.0.0.1:0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let token = "wharf_cli_test_admin_token".to_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["control", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--admin-token", &token, "--runtime", "none"])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut url = None;
    for _ in 0..100 {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(u) = line.strip_prefix("wharf control listening on ") {
            url = Some(u.trim().to_owned());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        url: url.expect("wharf control printed its address"),
        token,
        _dir: dir,
    }
}

fn wharf(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .env("WHARF_API_URL", &s.url)
        .env("WHARF_API_TOKEN", &s.token)
        .env("HOME", s._dir.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(s: &Server, args: &[&str]) -> String {
    let (success, out, err) = wharf(s, args);
    assert!(success, "wharf {args:?} failed: {err}\n{out}");
    out
}

#[test]
fn operator_commands_against_a_running_control_plane() {
    let s = start();
    let out = ok(&s, &["spaces:create", "prod", "--compliance", "prod,socs"]);
    assert!(out.contains("prod, socs"), "{out}");
    let out = ok(&s, &["apps:create", "api", "-s", "prod"]);
    assert!(out.contains("api-prod"), "{out}");
    let out = ok(&s, &["apps"]);
    assert!(out.contains("Name") && out.contains("api-prod"), "{out}");
    let out = ok(&s, &["apps", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "api-prod");
    let out = ok(&s, &["apps:info", "-a", "api-prod"]);
    assert!(out.contains("prod, socs"), "{out}");

    let out = ok(&s, &["config:set", "A=1", "B=two words", "-a", "api-prod"]);
    assert!(out.contains("done, v2"), "{out}");
    let out = ok(&s, &["config", "-a", "api-prod"]);
    assert!(out.contains("B: two words"), "{out}");
    assert_eq!(ok(&s, &["config:show", "-a", "api-prod"]), out);
    let out = ok(&s, &["config:unset", "A", "-a", "api-prod"]);
    assert!(out.contains("done, v3"), "{out}");
    let out = ok(&s, &["config:show", "-a", "api-prod", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"B": "two words"})
    );

    let out = ok(
        &s,
        &[
            "ps:scale",
            "web=2",
            "worker=1:standard-2x",
            "-a",
            "api-prod",
        ],
    );
    assert!(
        out.contains("web=2:standard-1x") && out.contains("worker=1:standard-2x"),
        "{out}"
    );
    let out = ok(&s, &["ps", "-a", "api-prod"]);
    assert!(
        out.contains("=== Formation") && out.contains("worker"),
        "{out}"
    );
    ok(&s, &["ps:restart", "web", "-a", "api-prod"]);

    let out = ok(&s, &["releases", "-a", "api-prod"]);
    assert!(
        out.contains("v3") && out.contains("Remove A config vars"),
        "{out}"
    );
    let out = ok(&s, &["releases:rollback", "v2", "-a", "api-prod"]);
    assert!(out.contains("to v2... done, v4"), "{out}");
    let out = ok(&s, &["config:show", "-a", "api-prod", "--json"]);
    assert!(out.contains("\"A\": \"1\""), "{out}");

    ok(&s, &["apps:create", "web"]);
    ok(&s, &["sites:create", "www.example.com"]);
    let out = ok(
        &s,
        &[
            "routes:create",
            "/api",
            "/",
            "-a",
            "web-default",
            "-s",
            "www.example.com",
        ],
    );
    assert!(out.contains("www.example.com/api"), "{out}");
    let out = ok(
        &s,
        &[
            "filters:create",
            "auth",
            "--type",
            "jwt",
            "--jwt-issuer",
            "https://id.example.com/",
            "--jwt-jwks-uri",
            "https://id.example.com/jwks",
        ],
    );
    assert!(out.contains("jwt filter auth"), "{out}");
    ok(
        &s,
        &[
            "filters:create",
            "cors",
            "--type",
            "cors",
            "--cors-allow-origin",
            "https://a.example.com",
        ],
    );
    let out = ok(
        &s,
        &[
            "filters:attach",
            "auth",
            "-a",
            "web-default",
            "-e",
            "/health",
        ],
    );
    assert!(out.contains("Attached filter auth"), "{out}");
    let out = ok(
        &s,
        &[
            "drains:add",
            "syslog+tls://logs.example.com:6514",
            "-a",
            "web-default",
        ],
    );
    assert!(out.contains("Successfully added drain"), "{out}");
    let out = ok(&s, &["drains", "-a", "web-default"]);
    assert!(out.contains("syslog+tls://logs.example.com:6514"), "{out}");
    let out = ok(&s, &["logs", "-n", "10", "-a", "web-default"]);
    assert!(out.is_empty(), "{out}");

    // A scoped token from tokens:create is refused outside its space, with the API's message.
    let out = ok(&s, &["tokens:create", "--space", "prod", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let scoped = v["token"].as_str().unwrap();
    let denied = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args([
            "config:show",
            "-a",
            "web-default",
            "--api-url",
            &s.url,
            "--token",
            scoped,
        ])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"));

    let (success, _, err) = wharf(&s, &["apps:info", "-a", "nope"]);
    assert!(!success && err.contains("404"), "{err}");
    let out = ok(
        &s,
        &["apps:destroy", "-a", "api-prod", "--confirm", "api-prod"],
    );
    assert!(out.contains("Destroyed api-prod"), "{out}");
}

#[test]
fn help_lists_the_platform_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for c in [
        "control",
        "apps:create",
        "config:set",
        "ps:scale",
        "releases:rollback",
        "routes:create",
        "filters:attach",
        "drains:add",
        "logs",
        "tokens:create",
    ] {
        assert!(text.contains(c), "{c} missing from --help:\n{text}");
    }
}
