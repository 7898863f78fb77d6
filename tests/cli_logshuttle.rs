//! `wharf logshuttle --config FILE` on its own: it reloads its plan when the file changes and on
//! SIGHUP, and a broken file is refused while the running plan keeps accepting lines.

use std::process::Command;
use std::time::Duration;

mod support;
use support::proc::{Proc, free_port, poll, post_log};

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

#[test]
fn standalone_shuttle_reloads_on_change_and_sighup_and_keeps_its_plan_on_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wharf.toml");
    std::fs::write(&file, snapshot(&[("api", "token-api-0123456789")])).unwrap();
    let port = free_port();
    let shuttle = Proc::spawn(&[
        "logshuttle".to_owned(),
        "--config".to_owned(),
        file.display().to_string(),
        "--http".to_owned(),
        format!("127.0.0.1:{port}"),
    ]);
    let log = || shuttle.stderr();
    assert!(
        poll(30, || post_log(port, "token-api-0123456789", "hello")
            == "204"),
        "{}",
        log()
    );
    assert_eq!(
        post_log(port, "token-web-0123456789", "hello"),
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
        poll(15, || post_log(port, "token-web-0123456789", "hello")
            == "204"),
        "file change not applied: {}",
        log()
    );

    // A broken file is refused; both apps keep being accepted.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&file, "version = 1\n[[apps]]\nname = \"Bad Name\"\n").unwrap();
    assert!(poll(15, || log().contains("reload refused")), "{}", log());
    assert_eq!(post_log(port, "token-api-0123456789", "hello"), "204");
    assert_eq!(post_log(port, "token-web-0123456789", "hello"), "204");

    // SIGHUP reloads: a fixed file without `web` removes it.
    std::fs::write(&file, snapshot(&[("api", "token-api-0123456789")])).unwrap();
    let hup = |log: &str| log.matches("\"SIGHUP\"").count();
    let before = hup(&log());
    assert!(
        Command::new("kill")
            .args(["-HUP", &shuttle.child.id().to_string()])
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
        poll(15, || post_log(port, "token-web-0123456789", "hello")
            == "401"),
        "web still accepted after its removal: {}",
        log()
    );
    assert_eq!(post_log(port, "token-api-0123456789", "hello"), "204");
}
