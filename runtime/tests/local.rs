//! The local runtime against real processes: python3 web servers, `sh`, `sleep`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_config::{Artifact, DynoState, Formation, HealthCheck, LineSink, LogLine, Source};
use wharf_runtime::local::{LocalConfig, LocalRuntime, backoff};
use wharf_runtime::{
    DesiredApp, DesiredState, DynoStatus, RunHandle, RunRequest, Runtime, RuntimeEvent,
};

#[derive(Default)]
struct Collect(Mutex<Vec<LogLine>>);

impl LineSink for Collect {
    fn send(&self, line: LogLine) {
        self.0.lock().push(line);
    }
}

impl Collect {
    fn has(&self, process: &str, source: Source, text: &str) -> bool {
        self.0
            .lock()
            .iter()
            .any(|l| l.process == process && l.source == source && l.line.contains(text))
    }
}

const APP_PY: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = int(os.environ.get("HEALTH_STATUS", "200")) if self.path == "/health" else 200
        body = ("release=%s dyno=%s\n" % (os.environ.get("RELEASE", "?"), os.environ.get("DYNO"))).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
print("listening on", os.environ["PORT"], flush=True)
S(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn slug(dir: &Path) -> Artifact {
    std::fs::write(dir.join("app.py"), APP_PY).unwrap();
    std::fs::write(
        dir.join("Procfile"),
        "web: exec python3 app.py\nworker: sleep 300\n",
    )
    .unwrap();
    Artifact::Slug(dir.to_string_lossy().into_owned())
}

fn formation(app: &str, t: &str, quantity: u32) -> Formation {
    Formation {
        app: app.to_owned(),
        process_type: t.to_owned(),
        quantity,
        size: "standard-1x".to_owned(),
        command: None,
        port: None,
        health_check: None,
        schedule: None,
    }
}

fn app(name: &str, release: u32, artifact: Artifact, formation: Vec<Formation>) -> DesiredApp {
    let mut vars = BTreeMap::new();
    vars.insert("RELEASE".to_owned(), release.to_string());
    DesiredApp {
        key: format!("{name}-default"),
        name: name.to_owned(),
        space: "default".to_owned(),
        release,
        artifact,
        config_vars: vars,
        formation,
    }
}

fn config(ports: std::ops::Range<u16>) -> LocalConfig {
    LocalConfig {
        ports,
        boot_timeout: Duration::from_secs(30),
        grace_period: Duration::from_secs(3),
        drain_period: Duration::from_millis(1500),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_millis(800),
        health_interval: Duration::from_millis(100),
        schedule_tick: Duration::from_millis(200),
        ..LocalConfig::default()
    }
}

/// Wait (bounded) until `pred` holds for the dyno list.
async fn wait_for(rt: &LocalRuntime, what: &str, pred: impl Fn(&[DynoStatus]) -> bool) {
    let mut rx = rt.changes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if pred(&rt.dynos()) {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}: {:#?}",
            rt.dynos()
        );
        let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), rx.changed()).await;
    }
}

async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>,
    what: &str,
    pred: impl Fn(&RuntimeEvent) -> bool,
) -> RuntimeEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(e)) if pred(&e) => return e,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event channel closed waiting for {what}: {e}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

fn count(d: &[DynoStatus], t: &str, state: DynoState, release: u32) -> usize {
    d.iter()
        .filter(|x| x.process_type == t && x.state == state && x.release == release)
        .count()
}

async fn get(addr: SocketAddr) -> Result<String, String> {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
            Ok(buf)
        } else {
            Err(format!("bad response {buf:?}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .unwrap_or_else(|_| Err("request timed out".to_owned()))
}

/// Processes (not zombies) whose process group is one of `groups`.
fn alive_in_groups(groups: &BTreeSet<i32>) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2
            && f[0] != "Z"
            && let Ok(pgrp) = f[2].parse::<i32>()
            && groups.contains(&pgrp)
        {
            out.push((pid, pgrp));
        }
    }
    out
}

#[test]
fn backoff_grows_and_caps_at_twenty_minutes() {
    let i = Duration::from_secs(10);
    let max = Duration::from_secs(20 * 60);
    assert_eq!(backoff(1, i, max), Duration::ZERO);
    assert_eq!(backoff(2, i, max), Duration::from_secs(10));
    assert_eq!(backoff(3, i, max), Duration::from_secs(20));
    assert_eq!(backoff(10, i, max), max);
    assert_eq!(backoff(100, i, max), max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_and_down() {
    let dir = tempfile::tempdir().unwrap();
    let art = slug(dir.path());
    let sink = Arc::new(Collect::default());
    let rt = LocalRuntime::new(config(21000..21100), sink.clone());
    let a = |web, worker| DesiredState {
        apps: vec![app(
            "scaly",
            1,
            art.clone(),
            vec![
                formation("scaly-default", "web", web),
                formation("scaly-default", "worker", worker),
            ],
        )],
    };
    rt.converge(a(1, 1)).await.unwrap();
    wait_for(&rt, "1 web + 1 worker up", |d| {
        count(d, "web", DynoState::Up, 1) == 1 && count(d, "worker", DynoState::Up, 1) == 1
    })
    .await;
    rt.converge(a(3, 2)).await.unwrap();
    wait_for(&rt, "3 web + 2 worker up", |d| {
        count(d, "web", DynoState::Up, 1) == 3 && count(d, "worker", DynoState::Up, 1) == 2
    })
    .await;
    let names: BTreeSet<String> = rt.dynos().into_iter().map(|d| d.name).collect();
    for n in ["web.1", "web.2", "web.3", "worker.1", "worker.2"] {
        assert!(names.contains(n), "{n} missing: {names:?}");
    }
    // Every web dyno answers on its own address.
    for d in rt.dynos().iter().filter(|d| d.process_type == "web") {
        let body = get(d.address.unwrap()).await.unwrap();
        assert!(body.contains(&format!("dyno={}", d.name)), "{body}");
    }
    rt.converge(a(1, 0)).await.unwrap();
    wait_for(&rt, "scaled down to web.1", |d| {
        d.len() == 1 && d[0].name == "web.1" && d[0].state == DynoState::Up
    })
    .await;
    assert!(sink.has("web.1", Source::Heroku, "State changed from starting to up"));
    assert!(sink.has("web.1", Source::App, "listening on"));
    assert!(sink.has(
        "web.3",
        Source::Heroku,
        "Stopping all processes with SIGTERM"
    ));
    // Idempotent: the same state again changes nothing.
    let before: Vec<String> = rt.dynos().into_iter().map(|d| d.id).collect();
    rt.converge(a(1, 0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<String> = rt.dynos().into_iter().map(|d| d.id).collect();
    assert_eq!(before, after);
    rt.shutdown().await;
    assert!(rt.dynos().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_with_backoff() {
    let sink = Arc::new(Collect::default());
    let rt = LocalRuntime::new(config(21100..21200), sink.clone());
    let mut events = rt.events();
    let mut f = formation("crashy-default", "worker", 1);
    f.command = Some("echo boom; exit 3".to_owned());
    rt.converge(DesiredState {
        apps: vec![app("crashy", 1, Artifact::Command("true".into()), vec![f])],
    })
    .await
    .unwrap();
    let mut delays = Vec::new();
    while delays.len() < 5 {
        match wait_event(&mut events, "a crash", |e| {
            matches!(e, RuntimeEvent::DynoCrashed { .. })
        })
        .await
        {
            RuntimeEvent::DynoCrashed {
                exit_code,
                restart_in_ms,
                dyno,
                ..
            } => {
                assert_eq!(exit_code, Some(3));
                assert_eq!(dyno, "worker.1");
                delays.push(restart_in_ms);
            }
            _ => unreachable!(),
        }
    }
    // At once, then 200 ms doubling, capped at 800 ms.
    assert_eq!(delays, vec![0, 200, 400, 800, 800]);
    let d = rt.dynos();
    assert_eq!(d.len(), 1);
    assert!(d[0].restarts >= 5, "{d:?}");
    assert!(sink.has("worker.1", Source::App, "boom"));
    assert!(sink.has("worker.1", Source::Heroku, "Process exited with status 3"));
    assert!(sink.has("worker.1", Source::Heroku, "to crashed"));
    let crashes: u64 = rt
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == "wharf_runtime_dyno_crashes_total")
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| m.get_counter().get_value() as u64)
        })
        .sum();
    assert!(crashes >= 5, "crash counter {crashes}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let art = slug(dir.path());
    let sink = Arc::new(Collect::default());
    let rt = Arc::new(LocalRuntime::new(config(21200..21300), sink.clone()));
    let mut events = rt.events();
    let mut web = formation("roll-default", "web", 2);
    web.health_check = Some(HealthCheck::Http {
        path: "/health".into(),
    });
    let state = |release| DesiredState {
        apps: vec![app("roll", release, art.clone(), vec![web.clone()])],
    };
    rt.converge(state(1)).await.unwrap();
    wait_for(&rt, "2 web up on v1", |d| {
        count(d, "web", DynoState::Up, 1) == 2
    })
    .await;
    let service = rt.service_address("roll-default").expect("service proxy");

    // Watch the number of up web dynos through the deploy.
    let stop = Arc::new(AtomicBool::new(false));
    let min_up = Arc::new(AtomicU64::new(u64::MAX));
    let watcher = {
        let (rt, stop, min_up) = (rt.clone(), stop.clone(), min_up.clone());
        tokio::spawn(async move {
            let mut rx = rt.changes();
            while !stop.load(Ordering::SeqCst) {
                let up = rt
                    .dynos()
                    .iter()
                    .filter(|d| d.process_type == "web" && d.state == DynoState::Up)
                    .count() as u64;
                min_up.fetch_min(up, Ordering::SeqCst);
                let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
            }
        })
    };
    // Clients: one picks a currently-up dyno from dynos(), one goes through the service proxy.
    let client = |via_proxy: bool| {
        let (rt, stop) = (rt.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut seen) = (0u32, Vec::new(), BTreeSet::new());
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) && n < 20_000 {
                n += 1;
                let target = if via_proxy {
                    service
                } else {
                    let up: Vec<SocketAddr> = rt
                        .dynos()
                        .iter()
                        .filter(|d| d.process_type == "web" && d.state == DynoState::Up)
                        .filter_map(|d| d.address)
                        .collect();
                    up[n as usize % up.len()]
                };
                match get(target).await {
                    Ok(body) => {
                        ok += 1;
                        if let Some(r) = body.split("release=").nth(1) {
                            seen.insert(r.split_whitespace().next().unwrap_or("").to_owned());
                        }
                    }
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed, seen)
        })
    };
    let direct = client(false);
    let proxied = client(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.converge(state(2)).await.unwrap();
    wait_event(&mut events, "release 2 up", |e| {
        matches!(e, RuntimeEvent::ReleaseUp { release: 2, .. })
    })
    .await;
    wait_for(&rt, "only v2 left", |d| {
        count(d, "web", DynoState::Up, 2) == 2 && d.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok1, failed1, seen1) = direct.await.unwrap();
    let (ok2, failed2, seen2) = proxied.await.unwrap();
    watcher.await.unwrap();
    assert!(failed1.is_empty(), "direct client failures: {failed1:?}");
    assert!(failed2.is_empty(), "proxied client failures: {failed2:?}");
    assert!(ok1 > 0 && ok2 > 0);
    for seen in [&seen1, &seen2] {
        assert!(seen.contains("1") && seen.contains("2"), "{seen:?}");
    }
    assert!(
        min_up.load(Ordering::SeqCst) >= 2,
        "fewer than 2 web dynos up during the deploy"
    );
    assert!(sink.has("web.1", Source::Heroku, "State changed from up to down"));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_release_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let art = slug(dir.path());
    let sink = Arc::new(Collect::default());
    let mut cfg = config(21300..21400);
    cfg.boot_timeout = Duration::from_secs(6);
    let rt = LocalRuntime::new(cfg, sink.clone());
    let mut events = rt.events();
    let mut web = formation("sick-default", "web", 1);
    web.health_check = Some(HealthCheck::Http {
        path: "/health".into(),
    });
    rt.converge(DesiredState {
        apps: vec![app("sick", 1, art.clone(), vec![web.clone()])],
    })
    .await
    .unwrap();
    wait_event(&mut events, "release 1 up", |e| {
        matches!(e, RuntimeEvent::ReleaseUp { release: 1, .. })
    })
    .await;
    let mut bad = app("sick", 2, art.clone(), vec![web.clone()]);
    bad.config_vars.insert("HEALTH_STATUS".into(), "500".into());
    let bad_state = DesiredState { apps: vec![bad] };
    rt.converge(bad_state.clone()).await.unwrap();
    let e = wait_event(&mut events, "release 2 failed", |e| {
        matches!(e, RuntimeEvent::ReleaseFailed { .. })
    })
    .await;
    match e {
        RuntimeEvent::ReleaseFailed {
            release,
            rolled_back_to,
            ..
        } => {
            assert_eq!(release, 2);
            assert_eq!(rolled_back_to, Some(1));
        }
        _ => unreachable!(),
    }
    wait_for(&rt, "v1 still serving alone", |d| {
        d.len() == 1 && count(d, "web", DynoState::Up, 1) == 1
    })
    .await;
    let d = rt.dynos();
    let body = get(d[0].address.unwrap()).await.unwrap();
    assert!(body.contains("release=1"), "{body}");
    assert!(sink.has("web.1", Source::Heroku, "Error R10 (Boot timeout)"));
    // The failed release is not retried by converging the same state again.
    let before: Vec<String> = rt.dynos().into_iter().map(|d| d.id).collect();
    rt.converge(bad_state).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<String> = rt.dynos().into_iter().map(|d| d.id).collect();
    assert_eq!(before, after);
    // One-offs run the release that serves, not the failed one.
    let (lines, code) = rt
        .run(
            "sick-default",
            RunRequest {
                command: "echo release $RELEASE".into(),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!((lines, code), (vec!["release 1".to_owned()], Some(0)));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_streams_output_and_exit_code_with_discovery_env() {
    let dir = tempfile::tempdir().unwrap();
    let art = slug(dir.path());
    let sink = Arc::new(Collect::default());
    let rt = LocalRuntime::new(config(21400..21500), sink.clone());
    let api = app(
        "api",
        1,
        art.clone(),
        vec![formation("api-default", "web", 1)],
    );
    let mut job = app("jobs", 4, art, vec![formation("jobs-default", "worker", 1)]);
    job.config_vars.insert("GREETING".into(), "hello".into());
    rt.converge(DesiredState {
        apps: vec![api, job],
    })
    .await
    .unwrap();
    wait_for(&rt, "api web up", |d| {
        count(d, "web", DynoState::Up, 1) == 1
    })
    .await;
    let service = rt.service_address("api-default").unwrap();
    let handle = rt
        .run(
            "jobs-default",
            RunRequest {
                command: "echo $GREETING $DYNO; echo $API_SERVICE_HOST:$API_SERVICE_PORT; echo oops >&2; exit 7"
                    .into(),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(handle.dyno, "run.1");
    let (lines, code) = handle.wait().await;
    assert_eq!(code, Some(7));
    assert!(lines.contains(&"hello run.1".to_owned()), "{lines:?}");
    assert!(lines.contains(&service.to_string()), "{lines:?}");
    assert!(lines.contains(&"oops".to_owned()), "{lines:?}");
    assert!(sink.has("run.1", Source::App, "hello run.1"));
    assert!(sink.has("run.1", Source::Heroku, "Process exited with status 7"));
    // The discovery address really reaches the api app.
    assert!(get(service).await.unwrap().contains("dyno=web.1"));
    assert!(rt.dynos().iter().all(|d| d.name != "run.1"));
    assert!(matches!(
        rt.run("nope-default", RunRequest::default()).await,
        Err(wharf_runtime::RuntimeError::UnknownApp(_))
    ));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_dyno_fires() {
    let sink = Arc::new(Collect::default());
    let mut cfg = config(21500..21600);
    // A clock two seconds before a minute boundary.
    let real = (cfg.clock)();
    let offset = 60 - real.rem_euclid(60) - 2;
    cfg.clock = Arc::new(move || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + offset
    });
    let rt = LocalRuntime::new(cfg, sink.clone());
    let mut events = rt.events();
    let mut f = formation("cron-default", "report", 1);
    f.command = Some("echo tick from $DYNO".into());
    f.schedule = Some("* * * * *".into());
    rt.converge(DesiredState {
        apps: vec![app("cron", 1, Artifact::Command("true".into()), vec![f])],
    })
    .await
    .unwrap();
    // Between firings the scheduled type is reported idle, with no process behind it.
    let idle = rt
        .dynos()
        .into_iter()
        .find(|d| d.process_type == "report")
        .expect("the scheduled type is listed");
    assert_eq!(idle.state, wharf_config::DynoState::Idle);
    assert_eq!((idle.name.as_str(), idle.address), ("report.1", None));
    let e = wait_event(&mut events, "the schedule to fire", |e| {
        matches!(e, RuntimeEvent::Scheduled { .. })
    })
    .await;
    assert_eq!(
        e,
        RuntimeEvent::Scheduled {
            app: "cron-default".into(),
            process_type: "report".into(),
            dyno: "report.1".into()
        }
    );
    wait_event(&mut events, "the scheduled dyno to exit", |e| {
        matches!(
            e,
            RuntimeEvent::Exited {
                exit_code: Some(0),
                ..
            }
        )
    })
    .await;
    assert!(sink.has("report.1", Source::App, "tick from report.1"));
    // Exited: idle again until the next minute.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let states: Vec<_> = rt
            .dynos()
            .into_iter()
            .filter(|d| d.process_type == "report")
            .map(|d| d.state)
            .collect();
        if states == [wharf_config::DynoState::Idle] {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "not idle again: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let art = slug(dir.path());
    let sink = Arc::new(Collect::default());
    let mut cfg = config(21600..21700);
    cfg.grace_period = Duration::from_secs(1);
    let rt = LocalRuntime::new(cfg, sink.clone());
    let mut forks = formation("orphans-default", "forker", 2);
    forks.command = Some("sleep 300 & sleep 300 & wait".into());
    let mut stubborn = formation("orphans-default", "stubborn", 1);
    stubborn.command = Some("trap '' TERM; sleep 300 & sleep 300 & wait".into());
    rt.converge(DesiredState {
        apps: vec![app(
            "orphans",
            1,
            art,
            vec![formation("orphans-default", "web", 2), forks, stubborn],
        )],
    })
    .await
    .unwrap();
    wait_for(&rt, "everything up", |d| {
        d.len() == 5 && d.iter().all(|x| x.state == DynoState::Up)
    })
    .await;
    // A one-off that would outlive us.
    let _run = rt
        .run(
            "orphans-default",
            RunRequest {
                command: "sleep 300".into(),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap();
    let mut groups: BTreeSet<i32> = BTreeSet::new();
    for _ in 0..100 {
        groups = rt.process_groups().into_iter().collect();
        if groups.len() == 6 && alive_in_groups(&groups).len() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(groups.len(), 6, "{groups:?}");
    let before = alive_in_groups(&groups);
    // web: python (2); forker: sh + 2 sleeps (x2); stubborn: sh + 2 sleeps; run: sleep.
    assert!(before.len() >= 10, "{before:?}");
    rt.shutdown().await;
    let mut left = alive_in_groups(&groups);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = alive_in_groups(&groups);
    }
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(rt.dynos().is_empty());
    assert!(sink.has("stubborn.1", Source::Heroku, "Error R12 (Exit timeout)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_one_dyno_or_a_type() {
    let dir = tempfile::tempdir().unwrap();
    let art = slug(dir.path());
    let sink = Arc::new(Collect::default());
    let rt = LocalRuntime::new(config(21700..21800), sink.clone());
    rt.converge(DesiredState {
        apps: vec![app(
            "again",
            1,
            art,
            vec![
                formation("again-default", "web", 1),
                formation("again-default", "worker", 2),
            ],
        )],
    })
    .await
    .unwrap();
    wait_for(&rt, "all up", |d| {
        d.len() == 3 && d.iter().all(|x| x.state == DynoState::Up)
    })
    .await;
    let starts = |name: &str| {
        sink.0
            .lock()
            .iter()
            .filter(|l| l.process == name && l.line.starts_with("Starting process"))
            .count()
    };
    rt.restart("again-default", Some("worker.2")).await.unwrap();
    for _ in 0..300 {
        if starts("worker.2") == 2 && rt.dynos().iter().all(|x| x.state == DynoState::Up) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(starts("worker.2"), 2);
    assert_eq!(starts("worker.1"), 1);
    assert_eq!(starts("web.1"), 1);
    rt.restart("again-default", Some("worker")).await.unwrap();
    let web_before: Vec<String> = rt
        .dynos()
        .into_iter()
        .filter(|d| d.process_type == "web")
        .map(|d| d.id)
        .collect();
    rt.restart("again-default", None).await.unwrap();
    for _ in 0..300 {
        if starts("web.1") >= 2 && starts("worker.1") >= 2 && starts("worker.2") >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(starts("web.1") >= 2 && starts("worker.1") >= 2 && starts("worker.2") >= 3);
    // The web process was replaced rolling: a new dyno, the old one drained and gone.
    wait_for(&rt, "web replaced", |d| {
        let web: Vec<&DynoStatus> = d.iter().filter(|x| x.process_type == "web").collect();
        web.len() == 1 && web[0].state == DynoState::Up && !web_before.contains(&web[0].id)
    })
    .await;
    assert!(sink.has(
        "worker.2",
        Source::Heroku,
        "Stopping all processes with SIGTERM"
    ));
    assert!(matches!(
        rt.restart("nope-default", None).await,
        Err(wharf_runtime::RuntimeError::UnknownApp(_))
    ));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_app_stops_everything_it_ran() {
    let dir = tempfile::tempdir().unwrap();
    let art = slug(dir.path());
    let sink = Arc::new(Collect::default());
    let rt = LocalRuntime::new(config(21800..21900), sink.clone());
    let keep = app(
        "keep",
        1,
        art.clone(),
        vec![formation("keep-default", "worker", 1)],
    );
    let gone = app(
        "gone",
        1,
        art,
        vec![
            formation("gone-default", "web", 2),
            formation("gone-default", "worker", 1),
        ],
    );
    rt.converge(DesiredState {
        apps: vec![keep.clone(), gone],
    })
    .await
    .unwrap();
    wait_for(&rt, "all up", |d| {
        d.len() == 4 && d.iter().all(|x| x.state == DynoState::Up)
    })
    .await;
    assert!(rt.service_address("gone-default").is_some());
    let groups: BTreeSet<i32> = rt.process_groups().into_iter().collect();
    rt.converge(DesiredState { apps: vec![keep] })
        .await
        .unwrap();
    wait_for(&rt, "only keep left", |d| {
        d.len() == 1 && d[0].app == "keep-default"
    })
    .await;
    assert!(rt.service_address("gone-default").is_none());
    let kept: BTreeSet<i32> = rt.process_groups().into_iter().collect();
    let removed: BTreeSet<i32> = groups.difference(&kept).copied().collect();
    assert_eq!(removed.len(), 3);
    let mut left = alive_in_groups(&removed);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = alive_in_groups(&removed);
    }
    assert!(left.is_empty(), "{left:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_reading_never_blocks_a_one_off() {
    let sink = Arc::new(Collect::default());
    let rt = LocalRuntime::new(config(21900..22000), sink.clone());
    rt.converge(DesiredState {
        apps: vec![app("chatty", 1, Artifact::Command("true".into()), vec![])],
    })
    .await
    .unwrap();
    let handle = rt
        .run(
            "chatty-default",
            RunRequest {
                command: "seq 1 5000; exit 4".into(),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap();
    // Keep the output receiver alive but never read it.
    let RunHandle { output, exit, .. } = handle;
    let code = tokio::time::timeout(Duration::from_secs(60), exit)
        .await
        .expect("the one-off finished although nobody read its output")
        .unwrap();
    assert_eq!(code, Some(4));
    drop(output);
    // The log shuttle got every line regardless.
    assert!(sink.has("run.1", Source::App, "5000"));
    rt.shutdown().await;
}

#[tokio::test]
async fn invalid_apps_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let art = slug(dir.path());
    let rt = LocalRuntime::new(config(22100..22200), Arc::new(Collect::default()));
    let bad = [
        // Images are for the Kubernetes runtime.
        app(
            "img",
            1,
            Artifact::Image("api:v1".into()),
            vec![formation("img-default", "web", 1)],
        ),
        // No Procfile entry and no command for "clock".
        app(
            "slug",
            1,
            art.clone(),
            vec![formation("slug-default", "clock", 1)],
        ),
        // A command artifact is the web process only.
        app(
            "cmd",
            1,
            Artifact::Command("true".into()),
            vec![formation("cmd-default", "worker", 1)],
        ),
    ];
    for a in bad {
        let good = app(
            "fine",
            1,
            art.clone(),
            vec![formation("fine-default", "worker", 1)],
        );
        let err = rt
            .converge(DesiredState {
                apps: vec![good, a.clone()],
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, wharf_runtime::RuntimeError::Invalid { app, .. } if *app == a.key),
            "{err}"
        );
        assert!(rt.dynos().is_empty(), "nothing started: {:?}", rt.dynos());
    }
    let mut f = formation("cron-default", "job", 1);
    f.command = Some("true".into());
    f.schedule = Some("61 * * * *".into());
    assert!(
        rt.converge(DesiredState {
            apps: vec![app("cron", 1, art, vec![f])],
        })
        .await
        .is_err()
    );
    rt.shutdown().await;
}
