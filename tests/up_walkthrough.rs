//! The newcomer's walk-through against a real `wharf up` (embedded mode): every step through
//! the `wharf` CLI, curl over HTTPS trusting the local CA, and real dynos of the example app.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;
use support::proc::free_port;
use support::up::*;

/// rsyslogd receiving a syslog TCP drain (octet-counted), writing each raw message as a line.
struct Rsyslog {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rsyslog {
    fn start() -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let out = dir.path().join("drain.log");
        let port_file = dir.path().join("port");
        let conf = dir.path().join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{d}\" maxMessageSize=\"128k\")\n\
                 template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
                 module(load=\"imtcp\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"0\" listenPortFileName=\"{}\" ruleset=\"out\")\n\
                 ruleset(name=\"out\") {{ action(type=\"omfile\" file=\"{}\" template=\"raw\" flushOnTXEnd=\"on\" asyncWriting=\"off\") }}\n",
                port_file.display(),
                out.display()
            ),
        )
        .unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd (apt-get install rsyslog)");
        let end = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < end, "rsyslogd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        };
        Rsyslog {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    fn wait_for(&self, needle: &str) -> String {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return l.to_owned();
            }
            assert!(
                Instant::now() < end,
                "{needle:?} never reached rsyslog:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn walkthrough_embedded() {
    walkthrough(&["--dyno-ports".into(), "31000-31999".into()]);
}

/// A real Kafka-protocol broker (tansu with sqlite storage) in a temp dir.
struct Tansu {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Tansu {
    fn start() -> Tansu {
        let bin = std::env::split_paths(&std::env::var("PATH").unwrap_or_default())
            .map(|d| d.join("tansu"))
            .chain(
                std::env::var("HOME")
                    .ok()
                    .map(|h| PathBuf::from(h).join(".cargo/bin/tansu")),
            )
            .find(|p| p.is_file())
            .expect("tansu: scripts/deps.sh installs it");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .current_dir(dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Tansu {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database of its own on the PostgreSQL at 127.0.0.1:5432, dropped afterwards.
struct Database(String);

impl Database {
    fn create() -> Database {
        let name = format!("wharf_up_{}_{}", std::process::id(), free_port());
        let ok = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-qc",
                &format!("create database {name}"),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "PostgreSQL on 127.0.0.1:5432 (scripts/test starts it)");
        Database(name)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
            .arg(format!("drop database if exists {} with (force)", self.0))
            .status();
    }
}

#[test]
fn walkthrough_postgres_and_kafka() {
    let db = Database::create();
    let kafka = Tansu::start();
    walkthrough(&[
        "--dyno-ports".into(),
        "32000-32999".into(),
        "--database-url".into(),
        db.url(),
        "--kafka".into(),
        format!("127.0.0.1:{}", kafka.port),
    ]);
}

fn walkthrough(extra: &[String]) {
    let up = Up::start(extra);
    let engines = up.log_text();
    if extra.iter().any(|a| a == "--kafka") {
        assert!(engines.contains("log shuttle (Kafka bus)"), "{engines}");
    }
    if extra.iter().any(|a| a == "--database-url") {
        assert!(engines.contains("control plane (PostgreSQL)"), "{engines}");
    }
    let text = up.log_text();
    assert!(
        text.contains("[6/6] platform API") && text.contains("admin token  wharf_"),
        "{text}"
    );

    up.cli(&["spaces:create", "prod"]);
    up.cli(&["apps:create", "hello", "-s", "prod"]);
    // Slugs live in a directory of this test, so its dynos can be told apart by directory.
    let apps_root = tempfile::tempdir().unwrap();
    let apps_dir = apps_root.path().canonicalize().unwrap().join("slugs");
    let hello_dir = apps_dir.join("hello-prod");
    let out = up.deploy("hello-prod", &example(), &apps_dir);
    assert!(
        out.contains("-----> Running bin/build") && out.contains("nothing to compile"),
        "{out}"
    );
    assert!(out.contains("-----> Released v"), "{out}");
    let host = "hello-prod.wharf.localhost";
    let body = up.wait_get(host, "/first", |s, _| s == 200);
    assert!(body.contains("\"dyno\": \"web.1\""), "{body}");

    // Logs: the router's line and the app's own line for the same request.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = up.cli(&["logs", "-a", "hello-prod", "-n", "100"]);
        if logs.contains("heroku[router]: at=info method=GET path=\"/first\"")
            && logs.contains("app[web.1]: request method=GET path=/first")
            && logs.contains("app[build]: -----> Running bin/build")
            && logs.contains("nothing to compile")
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "build, router and app lines missing:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A one-off dyno attached over the TLS rendezvous: its output here, its exit status ours.
    let (code, out, err) = up.run(&[
        "-a",
        "hello-prod",
        "--",
        "sh",
        "-c",
        "echo one-off in $DYNO with $PORT; exit 3",
    ]);
    assert_eq!(code, Some(3), "{out}\n{err}");
    assert!(out.contains("one-off in run.1 with"), "{out}\n{err}");
    assert!(!out.contains("__wharf_exit_status__"), "{out}");

    // A syslog drain to a real rsyslog receiver gets the router's and the app's lines too.
    let rsyslog = Rsyslog::start();
    up.cli(&[
        "drains:add",
        &format!("syslog+tcp://127.0.0.1:{}", rsyslog.port),
        "-a",
        "hello-prod",
    ]);
    let end = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    let (router_line, app_line) = loop {
        n += 1;
        up.get(host, &format!("/drained-{n}"));
        let text = std::fs::read_to_string(&rsyslog.out).unwrap_or_default();
        let r = text
            .lines()
            .find(|l| l.contains("router - - at=info method=GET path=\"/drained-"))
            .map(str::to_owned);
        let a = text
            .lines()
            .find(|l| l.contains("web.1 - - request method=GET path=/drained-"))
            .map(str::to_owned);
        if let (Some(r), Some(a)) = (r, a) {
            break (r, a);
        }
        assert!(Instant::now() < end, "drain lines missing:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        router_line.starts_with("<158>1 ") || router_line.starts_with("<190>1 "),
        "{router_line}"
    );
    assert!(app_line.starts_with("<190>1 "), "{app_line}");
    rsyslog.wait_for("heroku router - - at=info");

    // Scale to 3: round-robin over all of them.
    up.cli(&["ps:scale", "web=3", "-a", "hello-prod"]);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: std::collections::HashSet<String> = (0..6)
            .map(|_| up.get(host, "/").1)
            .filter_map(|b| b.split("\"dyno\": \"").nth(1).map(|r| r[..5].to_owned()))
            .collect();
        if seen.len() == 3 {
            break;
        }
        assert!(Instant::now() < end, "never saw 3 dynos: {seen:?}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // config:set makes a release and rolls it while a bounded load loop runs: 0 failed requests.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loader = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (ca, https) = (up.data.join("ca.pem"), up.https);
        std::thread::spawn(move || {
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let out = Command::new("curl")
                    .args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--max-time",
                        "20",
                        "--cacert",
                    ])
                    .arg(&ca)
                    .args(["--resolve", &format!("{host}:{https}:127.0.0.1")])
                    .arg(format!("https://{host}:{https}/load"))
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&out.stdout) == "200" {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    up.cli(&["config:set", "GREETING=rolled", "-a", "hello-prod"]);
    up.wait_get(host, "/", |s, b| s == 200 && b.contains("rolled"));
    // Let the old dynos drain and stop under load too.
    let settle = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the rolling deploy ({} ok)",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 10);

    // Rollback to the release before the config change.
    let releases = up.cli(&["releases", "-a", "hello-prod"]);
    assert!(releases.contains("v3"), "{releases}");
    up.cli(&["releases:rollback", "v2", "-a", "hello-prod"]);
    up.wait_get(host, "/", |s, b| s == 200 && b.contains("hello from wharf"));

    // A site with two apps on path routes.
    up.cli(&["apps:create", "api", "-s", "prod"]);
    up.deploy("api-prod", &example(), &apps_dir);
    up.wait_get("api-prod.wharf.localhost", "/", |s, _| s == 200);
    up.cli(&["sites:create", "shop.wharf.localhost"]);
    up.cli(&[
        "routes:create",
        "/",
        "/",
        "-a",
        "hello-prod",
        "-s",
        "shop.wharf.localhost",
    ]);
    up.cli(&[
        "routes:create",
        "/api",
        "/v1",
        "-a",
        "api-prod",
        "-s",
        "shop.wharf.localhost",
    ]);
    let body = up.wait_get("shop.wharf.localhost", "/api/users?x=1", |s, _| s == 200);
    assert!(body.contains("\"path\": \"/v1/users?x=1\""), "{body}");
    let body = up.wait_get("shop.wharf.localhost", "/apiary", |s, _| s == 200);
    assert!(body.contains("\"path\": \"/apiary\""), "{body}");

    // A JWT filter attached to the api app: no token, no entry.
    up.cli(&[
        "filters:create",
        "staff",
        "-t",
        "jwt",
        "--jwt-issuer",
        "https://auth.example.com/",
        "--jwt-jwks-uri",
        "https://auth.example.com/jwks.json",
        "--jwt-audiences",
        "api",
    ]);
    up.cli(&["filters:attach", "staff", "-a", "api-prod"]);
    up.wait_get("api-prod.wharf.localhost", "/", |s, _| s == 401);

    // Delete an app: its dynos, its routes, its host and its drains are gone.
    assert!(dynos_of(&hello_dir) >= 3, "hello runs 3 web dynos");
    assert!(
        drain_connections(rsyslog.port) > 0,
        "the shuttle holds a connection to hello's drain"
    );
    up.cli(&[
        "apps:destroy",
        "-a",
        "hello-prod",
        "--confirm",
        "hello-prod",
    ]);
    up.wait_get(host, "/", |s, _| s == 404);
    up.wait_get("shop.wharf.localhost", "/", |s, _| s == 404);
    let end = Instant::now() + Duration::from_secs(60);
    while dynos_of(&hello_dir) > 0 {
        assert!(Instant::now() < end, "hello's dynos still running");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(dynos_of(&apps_dir) > 0, "api keeps running");
    // The shuttle dropped the destroyed app's drain and closed its connection to rsyslog.
    let end = Instant::now() + Duration::from_secs(30);
    while drain_connections(rsyslog.port) > 0 {
        assert!(
            Instant::now() < end,
            "the shuttle still holds the destroyed app's drain connection"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Ctrl-C stops every dyno.
    drop(up);
    let end = Instant::now() + Duration::from_secs(30);
    while dynos_of(&apps_dir) > 0 {
        assert!(Instant::now() < end, "dynos left behind after Ctrl-C");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Established TCP connections to 127.0.0.1:`port` (a drain receiver), as `ss` counts them.
fn drain_connections(port: u16) -> usize {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).lines().count()
}
