//! schemathesis (PyPI; `scripts/deps.sh` installs it) against `/openapi.json` of a control
//! plane served for real on 127.0.0.1:0: no server errors, no schema or status violations.

mod support;
use support::{Db, control_plane, fresh_store, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_or_schema_violations() {
    schemathesis(Db::Sqlite, EXAMPLES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_or_schema_violations_on_postgres() {
    schemathesis(Db::Postgres, EXAMPLES).await;
}

/// Examples per operation (`-n`) in the fuzzing phase.
const EXAMPLES: u32 = 10;

async fn schemathesis(db: Db, examples: u32) {
    let found = std::process::Command::new("schemathesis")
        .arg("--version")
        .output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "schemathesis is not installed: run scripts/test (or `pip install schemathesis`)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (store, _schema) = fresh_store(db, &dir).await;
    let cp = control_plane(store).await;
    let (addr, token) = serve(&cp, "schemathesis", "st@example.com").await;
    let out = tokio::process::Command::new("schemathesis")
        .args(["run", &format!("http://{addr}/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing", "-w", "1"])
        .args(["-n", &examples.to_string()])
        // The long-poll waits by design; it has its own test.
        .args(["--exclude-path", "/v1/snapshot"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    // The run's summary (operations, test cases, failures) for `--no-capture` readers.
    let summary = text.rsplit_once("SUMMARY").map_or(&*text, |(_, s)| s);
    eprintln!("schemathesis ({db:?}):{summary}");
}
