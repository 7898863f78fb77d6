//! PostgreSQL restarted under load: a throwaway cluster (initdb into a temporary directory,
//! `pg_ctl start` on a free port of 127.0.0.1), the control plane served on a real socket, and
//! clients setting config vars and creating apps while the database is stopped and started
//! again. Requests fail cleanly while it is away (503 with the JSON error, within a bounded
//! time), succeed after, and no change is half-written.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_control::store::Store;

mod support;
use support::{control_plane, serve};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of its own, stopped and removed when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    /// Run the server's tools as this user (initdb refuses root).
    user: Option<String>,
}

fn run(user: &Option<String>, tool: &str, args: &[&str]) -> std::process::Output {
    let bin = Path::new(PG_BIN).join(tool);
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

impl Cluster {
    fn start() -> Cluster {
        let uid = Command::new("id").arg("-u").output().unwrap();
        let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = tempfile::tempdir().unwrap();
        let user = root.then(|| "postgres".to_owned());
        if root {
            let ids = |flag: &str| -> u32 {
                let o = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
            };
            std::os::unix::fs::chown(dir.path(), Some(ids("-u")), Some(ids("-g"))).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Cluster { dir, port, user };
        let data = c.data();
        let out = run(
            &c.user,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        c.pg_ctl_start();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        let out = run(
            &self.user,
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {out:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m fast`: sessions are terminated, the server goes away.
    fn stop(&self) {
        let out = run(
            &self.user,
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(
            &self.user,
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

/// One request over a fresh connection, waiting at most `timeout` for the whole answer: the
/// status (0 when none came in time) and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
    timeout: Duration,
) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, "connect failed".into());
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: control.test\r\nAccept: application/vnd.heroku+json; version=3\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, "write failed".into());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// What a client tried and what it got.
#[derive(Debug, Clone)]
struct Attempt {
    /// `config:<KEY>` or `app:<name>`.
    what: String,
    status: u16,
    body: String,
    sent: Instant,
    answered: Instant,
}

async fn poll<F: FnMut() -> bool>(secs: u64, what: &str, mut f: F) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(f(), "timed out after {secs} s waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_fails_cleanly_and_writes_nothing_by_halves() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let pg = Cluster::start();
    let store = Store::open(&pg.url()).await.unwrap();
    let cp = control_plane(store).await;
    let (addr, token) = serve(&cp, "load", "load@example.com").await;
    let port = addr.port();
    let t = token.clone();
    let (status, body) = tokio::task::spawn_blocking(move || {
        http(
            port,
            "POST",
            "/apps",
            &t,
            r#"{"name":"load"}"#,
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");

    // Three clients: each sets a config var of its own on `load`, then creates an app, in
    // turn, as fast as answers come. A request unanswered after 12 s is a hang (the store
    // gives up a step after 3 s; a request has at most three).
    let bound = Duration::from_secs(12);
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(std::sync::Mutex::new(Vec::<Attempt>::new()));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (stop, attempts, token) = (stop.clone(), attempts.clone(), token.clone());
            tokio::task::spawn_blocking(move || {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    let (what, method, path, body) = if n % 2 == 0 {
                        let key = format!("K{c}_{n}");
                        let body = format!(r#"{{"{key}":"v{n}"}}"#);
                        (
                            format!("config:{key}"),
                            "PATCH",
                            "/apps/load/config-vars",
                            body,
                        )
                    } else {
                        let name = format!("w{c}n{n}");
                        let body = format!(r#"{{"name":"{name}"}}"#);
                        (format!("app:{name}"), "POST", "/apps", body)
                    };
                    let sent = Instant::now();
                    let (status, body) = http(port, method, path, &token, &body, bound);
                    attempts.lock().unwrap().push(Attempt {
                        what,
                        status,
                        body,
                        sent,
                        answered: Instant::now(),
                    });
                    n += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    let ok = |a: &Attempt| a.status == 200 || a.status == 201;
    poll(30, "writes flowing", || {
        attempts.lock().unwrap().iter().filter(|a| ok(a)).count() >= 20
    })
    .await;

    // Away for 15 s: longer than the store's acquire timeout, so requests must give up.
    let stopped = Instant::now();
    pg.stop();
    tokio::time::sleep(Duration::from_secs(15)).await;
    pg.pg_ctl_start();
    let started = Instant::now();
    poll(60, "a write that succeeds after the restart", || {
        attempts
            .lock()
            .unwrap()
            .iter()
            .any(|a| ok(a) && a.sent > started)
    })
    .await;
    let recovered = attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|a| ok(a) && a.sent > started)
        .map(|a| a.answered - started)
        .min()
        .unwrap();
    // Then a few more seconds of load that must all succeed.
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Release);
    for c in clients {
        c.await.unwrap();
    }
    let attempts = attempts.lock().unwrap().clone();

    // Every answer is a success or a clean 503 with the JSON error; none hangs.
    let mut failed_while_away = 0;
    let mut longest_failure = Duration::ZERO;
    for a in &attempts {
        match a.status {
            200 | 201 => {}
            503 => {
                let v: Value = serde_json::from_str(&a.body)
                    .unwrap_or_else(|_| panic!("{}: a 503 body is JSON: {:?}", a.what, a.body));
                assert_eq!(v["id"], "unavailable", "{}: {v}", a.what);
                assert_eq!(
                    v["message"], "The store is unavailable; try again.",
                    "{}: no internal detail",
                    a.what
                );
                if a.sent >= stopped {
                    failed_while_away += 1;
                }
                longest_failure = longest_failure.max(a.answered - a.sent);
            }
            0 => panic!(
                "{}: no answer within {bound:?} ({:?}), sent {:?} after the stop",
                a.what,
                a.body,
                a.sent.saturating_duration_since(stopped)
            ),
            s => panic!("{}: status {s}: {}", a.what, a.body),
        }
    }
    assert!(failed_while_away > 0, "requests failed while it was away");
    let after: Vec<&Attempt> = attempts.iter().filter(|a| a.sent > settled).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|a| ok(a)),
        "every request succeeds once it is back: {:?}",
        after.iter().find(|a| !ok(a))
    );

    // Nothing half-written: read the store itself.
    let pool = sqlx::AnyPool::connect(&pg.url()).await.unwrap();
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT r.version, r.description, r.config FROM releases r JOIN apps a ON a.id = r.app_id \
         WHERE a.name = 'load' ORDER BY r.version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        versions,
        (1..=rows.len() as i64).collect::<Vec<_>>(),
        "release versions without gaps or repeats"
    );
    let released: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| {
            r.1.strip_prefix("Set ")
                .and_then(|d| d.strip_suffix(" config vars"))
                .map(str::to_owned)
        })
        .collect();
    let config: BTreeMap<String, String> = serde_json::from_str(&rows.last().unwrap().2).unwrap();
    let apps: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT a.name, \
           (SELECT COUNT(*) FROM releases r WHERE r.app_id = a.id), \
           (SELECT COUNT(*) FROM formation f WHERE f.app_id = a.id) \
         FROM apps a",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let apps: BTreeMap<String, (i64, i64)> =
        apps.into_iter().map(|(n, r, f)| (n, (r, f))).collect();
    let (mut kept_unanswered, mut accepted) = (0, 0);
    for a in &attempts {
        let (present, whole) = if let Some(key) = a.what.strip_prefix("config:") {
            let (r, c) = (released.contains(key), config.contains_key(key));
            (r || c, r == c)
        } else {
            let name = a.what.strip_prefix("app:").unwrap();
            match apps.get(name) {
                None => (false, true),
                Some(&(r, f)) => (true, r == 1 && f == 1),
            }
        };
        assert!(whole, "{}: half-written ({})", a.what, a.status);
        if ok(a) {
            accepted += 1;
            assert!(present, "{}: answered {} but not stored", a.what, a.status);
        } else if present {
            // The commit reached the database but its answer did not reach the client.
            kept_unanswered += 1;
        }
    }
    pool.close().await;
    eprintln!(
        "postgres restart: {} requests, {} accepted, {} failed with 503 ({} sent while it was \
         away; {} of the failed were stored anyway), longest failure answered in {:.1} s, \
         first success {:.1} s after the restart",
        attempts.len(),
        accepted,
        attempts.len() - accepted,
        failed_while_away,
        kept_unanswered,
        longest_failure.as_secs_f64(),
        recovered.as_secs_f64()
    );
}
