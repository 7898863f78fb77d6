//! The `wharf` binary itself: `config check` and the standalone router following its file.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

fn example() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/wharf.example.toml").to_owned()
}

#[test]
fn version_and_help_list_only_working_commands() {
    let out = wharf().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("wharf "));
    let help = String::from_utf8(wharf().arg("--help").output().unwrap().stdout).unwrap();
    assert!(help.contains("config") && help.contains("router"), "{help}");
}

#[test]
fn config_check_passes_the_example() {
    let out = wharf()
        .args(["config", "check", &example()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            ": valid (3 spaces, 3 apps, 1 sites, 2 routes, 2 filters, 1 certificates, 2 drains"
        ),
        "{text}"
    );
}

#[test]
fn config_check_prints_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.toml");
    std::fs::write(
        &bad,
        r#"version = 1
[[spaces]]
name = "prod"
[[apps]]
name = "api"
space = "prod"
[[releases]]
app = "api-prod"
version = 1
artifact = { image = "api:1" }
[[releases]]
app = "api-prod"
version = 2
artifact = { image = "api:2" }
[[sites]]
domain = "www.example.com"
[[routes]]
site = "www.example.com"
source_path = "/x"
app = "nope-prod"
target_path = "/"
[[canaries]]
app = "api-prod"
stable_release = 1
canary_release = 2
weight = 140
[[drains]]
app = "api-prod"
url = "ftp://logs.example.com"
"#,
    )
    .unwrap();
    let out = wharf()
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problems:"), "{err}");
    assert!(
        err.contains("routes[0].app: unknown app \"nope-prod\""),
        "{err}"
    );
    assert!(
        err.contains("canaries[0].weight: 140 is outside 0–100"),
        "{err}"
    );
    assert!(
        err.contains("drains[0].url: scheme \"ftp\" is not a drain"),
        "{err}"
    );

    std::fs::write(
        &bad,
        "version = 1\n[[apps]]\nname = \"a\"\nspace = \"s\"\nreplicas = 3\n",
    )
    .unwrap();
    let out = wharf()
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `replicas`"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(admin: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{admin}{path}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn standalone_router_reloads_on_change_and_sighup_and_keeps_serving_on_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    for f in ["example.crt", "example.key"] {
        std::fs::copy(format!("{deploy}/tls/{f}"), dir.path().join("tls").join(f)).unwrap();
    }
    let file = dir.path().join("wharf.toml");
    let text = std::fs::read_to_string(example()).unwrap();
    std::fs::write(&file, &text).unwrap();
    let (https, admin) = (free_port(), free_port());
    let child = wharf()
        .args(["router", "--config"])
        .arg(&file)
        .args([
            "--https",
            &format!("127.0.0.1:{https}"),
            "--http",
            "none",
            "--internal",
            "none",
        ])
        .args(["--admin", &format!("127.0.0.1:{admin}"), "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let wait_version = |v: u64| {
        for _ in 0..100 {
            if get(admin, "/healthz").contains(&format!("\"version\":{v},")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    assert!(wait_version(1), "router did not come up");
    // A changed file is picked up (the mtime check runs every second).
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&file, text.replace("revision = 0", "revision = 7")).unwrap();
    assert!(
        wait_version(2),
        "file change not applied: {}",
        get(admin, "/healthz")
    );
    assert!(get(admin, "/healthz").contains("\"revision\":7"));
    // SIGHUP reloads too.
    assert!(
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_version(3), "SIGHUP not applied");
    // A broken file is refused; the running table keeps serving.
    std::thread::sleep(Duration::from_millis(1100));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    writeln!(f, "[[routes]]\nsite = \"nowhere.example.com\"\nsource_path = \"/\"\napp = \"api-prod\"\ntarget_path = \"/\"").unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(get(admin, "/healthz").contains("\"version\":3,"));
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[2].site: unknown site \"nowhere.example.com\""),
        "{err}"
    );
}
