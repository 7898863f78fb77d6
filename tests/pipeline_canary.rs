//! Pipelines and canaries against a real `wharf up`: every step through the `wharf` CLI, traffic
//! over HTTPS through the real router (curl trusting the local CA), real dynos of the example app.
//!
//! - a promotion gated by a required status check, then the promoted artifact served by the
//!   next stage's app, and the promotion in the audit trail;
//! - a canary answering 500s, aborted by the router's own z-test: the release is marked
//!   `aborted` with the reason and the figures, stable keeps serving, the canary dynos go.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::up::*;

/// A copy of examples/hello with `app.py` edited by `edit`.
fn example_copy(root: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    for f in ["Procfile", "app.py", "bin/build"] {
        std::fs::copy(example().join(f), dir.join(f)).unwrap();
    }
    let app = std::fs::read_to_string(dir.join("app.py")).unwrap();
    let edited = edit(app.clone());
    assert_ne!(edited, app, "the edit changed nothing");
    std::fs::write(dir.join("app.py"), edited).unwrap();
    dir
}

/// The version `wharf deploy` released (`-----> Released v7 of …`).
fn released_version(out: &str) -> String {
    out.split("-----> Released ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no release in:\n{out}"))
        .to_owned()
}

/// The slug `wharf deploy` packed (`-----> Packing DIR into SLUG`).
fn packed_slug(out: &str) -> PathBuf {
    let line = out
        .lines()
        .find(|l| l.contains("-----> Packing "))
        .unwrap_or_else(|| panic!("no packing line in:\n{out}"));
    PathBuf::from(line.rsplit(" into ").next().unwrap().trim())
}

#[test]
fn pipeline_promotion_through_the_cli_waits_for_its_check() {
    let up = Up::start(&["--dyno-ports".into(), "33000-33499".into()]);
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let slugs = root.join("slugs");
    let marker = format!("promoted artifact {}", std::process::id());
    let src = example_copy(&root, "src", |a| a.replace("hello from wharf", &marker));

    up.cli(&["spaces:create", "pl"]);
    up.cli(&["apps:create", "dev", "-s", "pl"]);
    up.cli(&["apps:create", "stage", "-s", "pl"]);
    let out = up.cli(&["pipelines:create", "shop", "--check", "ci/test"]);
    assert!(out.contains("ci/test"), "{out}");
    up.cli(&["pipelines:add", "dev-pl", "-p", "shop", "-s", "development"]);
    up.cli(&["pipelines:add", "stage-pl", "-p", "shop", "-s", "staging"]);
    let info = up.cli(&["pipelines:info", "shop"]);
    assert!(
        info.contains("dev-pl") && info.contains("stage-pl") && info.contains("staging"),
        "{info}"
    );

    let out = up.deploy("dev-pl", &src, &slugs);
    let v = released_version(&out);
    let body = up.wait_get("dev-pl.wharf.localhost", "/", |s, _| s == 200);
    assert!(body.contains(&marker), "{body}");
    // stage-pl has no release yet: nothing serves it.
    let (code, _) = up.get("stage-pl.wharf.localhost", "/");
    assert_ne!(code, 200);

    // The required check has not passed: refused, naming the check.
    let (ok, out) = up.try_cli(&["pipelines:promote", "-a", "dev-pl", "-p", "shop"]);
    assert!(!ok, "promotion allowed without its check:\n{out}");
    assert!(
        out.contains("ci/test"),
        "the refusal names the check:\n{out}"
    );
    let (code, _) = up.get("stage-pl.wharf.localhost", "/");
    assert_ne!(code, 200, "a refused promotion released something");

    // A pending check still refuses; success lets it through.
    up.cli(&[
        "releases:status",
        &v,
        "-a",
        "dev-pl",
        "--context",
        "ci/test",
        "--state",
        "pending",
    ]);
    let (ok, out) = up.try_cli(&["pipelines:promote", "-a", "dev-pl", "-p", "shop"]);
    assert!(!ok && out.contains("ci/test"), "{out}");
    let out = up.cli(&[
        "releases:status",
        &v,
        "-a",
        "dev-pl",
        "--context",
        "ci/test",
        "--state",
        "success",
        "--description",
        "tests passed",
    ]);
    assert!(out.contains("success"), "{out}");
    let out = up.cli(&["releases:status", &v, "-a", "dev-pl"]);
    assert!(out.contains("ci/test") && out.contains("success"), "{out}");
    let out = up.cli(&["pipelines:promote", "-a", "dev-pl", "-p", "shop"]);
    assert!(
        out.contains("stage-pl") && out.contains("staging") && out.contains("succeeded"),
        "{out}"
    );

    // The next stage's app runs the promoted artifact, served through the router.
    let body = up.wait_get("stage-pl.wharf.localhost", "/", |s, _| s == 200);
    assert!(body.contains(&marker), "{body}");
    assert!(body.contains("\"dyno\": \"web.1\""), "{body}");
    let releases = up.cli_json(&["releases", "-a", "stage-pl"]);
    let current = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["current"] == true)
        .unwrap_or_else(|| panic!("no current release: {releases}"));
    assert!(
        current["artifact"].to_string().contains("/slugs/dev-pl/"),
        "the artifact of dev-pl's build: {current}"
    );

    // The audit trail lists the promotion (and who made it).
    let audit = up.cli(&["audit", "--action", "POST /pipeline-promotions"]);
    assert!(audit.contains("/pipeline-promotions"), "{audit}");
    let entries = up.cli_json(&["audit", "--action", "POST /pipeline-promotions"]);
    assert_eq!(
        entries.as_array().map(Vec::len),
        Some(1),
        "one promotion succeeded (refusals are not changes): {entries}"
    );
}

#[test]
fn canary_answering_500s_is_aborted_by_the_router() {
    let up = Up::start(&["--dyno-ports".into(), "33500-33999".into()]);
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let slugs = root.join("slugs");
    let host = "shop-cn.wharf.localhost";

    up.cli(&["spaces:create", "cn"]);
    up.cli(&["apps:create", "shop", "-s", "cn"]);
    let out = up.deploy("shop-cn", &example(), &slugs);
    let stable_slug = packed_slug(&out);
    let stable_v = released_version(&out);
    up.wait_get(host, "/", |s, _| s == 200);

    let out = up.cli(&[
        "canary:settings",
        "--enable",
        "--weight",
        "50",
        "--min-requests",
        "10",
        "--period-secs",
        "3600",
        "-a",
        "shop-cn",
    ]);
    assert!(out.contains("enabled") && out.contains("50%"), "{out}");

    // A new artifact whose web process answers every request with a 500.
    let broken = example_copy(&root, "broken", |a| {
        a.replace("self.send_response(200)", "self.send_response(500)")
    });
    let out = up.deploy("shop-cn", &broken, &slugs);
    let canary_slug = packed_slug(&out);
    let canary_v = released_version(&out);
    assert_ne!(canary_v, stable_v);
    let k = up.cli_json(&["canary", "-a", "shop-cn"]);
    assert_eq!(k["state"], "running", "{k}");
    assert_eq!(format!("v{}", k["release"]["version"]), canary_v, "{k}");

    // Its own dyno starts; the stable one keeps running.
    let end = Instant::now() + Duration::from_secs(60);
    while dynos_of(&canary_slug) == 0 {
        assert!(Instant::now() < end, "the canary dyno never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(dynos_of(&stable_slug) > 0);

    // Traffic through the router, in batches of 20 on one connection, until the control plane
    // has the canary aborted. The router's policy (AbortPolicy::default: 50 requests a side in
    // a 60 s window, z > 2.326) needs ≥ 100 requests at weight 50; 60 batches give 1200.
    let url = format!("https://{host}:{}/canary", up.https);
    let (mut ok, mut errors) = (0u32, 0u32);
    let mut aborted = Value::Null;
    for _ in 0..60 {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "30", "-w", "%{http_code}\n", "--cacert"])
            .arg(up.data.join("ca.pem"))
            .args(["--resolve", &format!("{host}:{}:127.0.0.1", up.https)]);
        for _ in 0..20 {
            c.args(["-o", "/dev/null", &url]);
        }
        let out = c.output().unwrap();
        for code in String::from_utf8_lossy(&out.stdout).lines() {
            match code {
                "200" => ok += 1,
                _ => errors += 1,
            }
        }
        let k = up.cli_json(&["canary", "-a", "shop-cn"]);
        if k["state"] == "aborted" {
            aborted = k;
            break;
        }
    }
    assert_eq!(
        aborted["state"],
        "aborted",
        "never aborted after {ok} 200s and {errors} errors\n{}",
        up.log_text()
    );
    assert!(errors >= 50 && ok >= 50, "{ok} 200s, {errors} errors");

    // The reason and the router's figures are on the canary...
    let reason = aborted["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("router: "), "{aborted}");
    let f = &aborted["figures"];
    let n = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a count: {aborted}"))
    };
    assert!(n(&f["canary"]["requests"]) >= 50, "{aborted}");
    assert_eq!(
        n(&f["canary"]["errors_5xx"]),
        n(&f["canary"]["requests"]),
        "every canary request was a 500: {aborted}"
    );
    assert!(n(&f["stable"]["requests"]) >= 50, "{aborted}");
    assert_eq!(n(&f["stable"]["errors_5xx"]), 0, "{aborted}");
    assert!(f["z"].as_f64().is_some_and(|z| z > 2.326), "{aborted}");
    let text = up.cli(&["canary", "-a", "shop-cn"]);
    assert!(text.contains("aborted") && text.contains("5xx"), "{text}");

    // ...and on the release, which never became current.
    let releases = up.cli_json(&["releases", "-a", "shop-cn"]);
    let list = releases.as_array().unwrap();
    let r = list
        .iter()
        .find(|r| format!("v{}", r["version"]) == canary_v)
        .unwrap_or_else(|| panic!("{canary_v} not listed: {releases}"));
    assert_eq!(r["status"], "aborted", "{r}");
    assert_eq!(r["current"], false, "{r}");
    assert_eq!(r["outcome"]["reason"], aborted["reason"], "{r}");
    assert_eq!(
        r["outcome"]["figures"]["canary"]["errors_5xx"], f["canary"]["errors_5xx"],
        "{r}"
    );
    let current = list.iter().find(|r| r["current"] == true).unwrap();
    assert_eq!(format!("v{}", current["version"]), stable_v, "{releases}");

    // The canary's dyno goes; stable keeps serving every request.
    let end = Instant::now() + Duration::from_secs(60);
    while dynos_of(&canary_slug) > 0 {
        assert!(Instant::now() < end, "the canary dyno is still running");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(dynos_of(&stable_slug) > 0, "the stable dyno stopped");
    for i in 0..40 {
        let (code, body) = up.get(host, &format!("/after-{i}"));
        assert_eq!(code, 200, "request {i} after the abort: {body}");
        assert!(body.contains("hello from wharf"), "{body}");
    }

    // The verdict is in the audit trail as the control plane's own act.
    let audit = up.cli(&["audit", "-a", "shop-cn", "--action", "canary abort"]);
    assert!(audit.contains("canary abort"), "{audit}");
}
