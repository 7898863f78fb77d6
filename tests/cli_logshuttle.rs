//! `wharf logshuttle --config FILE` on its own: it reloads its plan when the file changes and on
//! SIGHUP, and a broken file is refused while the running plan keeps accepting lines.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn snapshot(apps: &[(&str, &str)]) -> String {
    let mut s =
        String::from("version = 1\ndomain = \"wharf.localhost\"\n[[spaces]]\nname = \"default\"\n");
    for (name, token) in apps {
        s.push_str(&format!(
            "[[apps]]\nname = \"{name}\"\nspace = \"default\"\nlog_token = \"{token}\"\n"
        ));
    }
    s
}

/// One logplex frame with `token`; the HTTP status.
fn post(port: u16, token: &str) -> String {
    let msg = "<190>1 2026-11-23T12:00:00.000000+00:00 host app web.1 - - hello";
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-u", &format!("token:{token}")])
        .args(["-H", "Content-Type: application/logplex-1"])
        .args(["-H", "Logplex-Msg-Count: 1"])
        .args(["--data-binary", &format!("{} {msg}", msg.len())])
        .arg(format!("http://127.0.0.1:{port}/logs"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn poll(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn standalone_shuttle_reloads_on_change_and_sighup_and_keeps_its_plan_on_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wharf.toml");
    std::fs::write(&file, snapshot(&[("api", "token-api-0123456789")])).unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["logshuttle", "--config"])
        .arg(&file)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Arc::new(Mutex::new(String::new()));
    let e = err.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut e = e.lock().unwrap();
            e.push_str(&line);
            e.push('\n');
        }
    });
    let log = || err.lock().unwrap().clone();
    assert!(
        poll(30, || post(port, "token-api-0123456789") == "204"),
        "{}",
        log()
    );
    assert_eq!(
        post(port, "token-web-0123456789"),
        "401",
        "web is not known yet"
    );

    // A changed file adds an app (the mtime check runs every second).
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(
        &file,
        snapshot(&[
            ("api", "token-api-0123456789"),
            ("web", "token-web-0123456789"),
        ]),
    )
    .unwrap();
    assert!(
        poll(15, || post(port, "token-web-0123456789") == "204"),
        "file change not applied: {}",
        log()
    );

    // A broken file is refused; both apps keep being accepted.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&file, "version = 1\n[[apps]]\nname = \"Bad Name\"\n").unwrap();
    assert!(poll(15, || log().contains("reload refused")), "{}", log());
    assert_eq!(post(port, "token-api-0123456789"), "204");
    assert_eq!(post(port, "token-web-0123456789"), "204");

    // SIGHUP reloads: a fixed file without `web` removes it.
    std::fs::write(&file, snapshot(&[("api", "token-api-0123456789")])).unwrap();
    let hup = |log: &str| log.matches("\"SIGHUP\"").count();
    let before = hup(&log());
    assert!(
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        poll(15, || hup(&log()) > before),
        "no SIGHUP reload: {}",
        log()
    );
    assert!(
        poll(15, || post(port, "token-web-0123456789") == "401"),
        "web still accepted after its removal: {}",
        log()
    );
    assert_eq!(post(port, "token-api-0123456789"), "204");
    let _ = child.kill();
    let _ = child.wait();
}
