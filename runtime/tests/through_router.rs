//! A rolling deploy of real processes behind the real router: the router's table follows
//! `router_endpoints(runtime.dynos())` on every change, a bounded request loop goes through the
//! router's internal listener, and not one request fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_config::{
    App, Artifact, Compliance, DynoState, Formation, HealthCheck, LineSink, LogLine, Release,
    Snapshot, Space,
};
use wharf_runtime::local::{LocalConfig, LocalRuntime};
use wharf_runtime::{DesiredState, Runtime, RuntimeEvent, router_endpoints};

#[derive(Default)]
struct Collect(Mutex<Vec<LogLine>>);

impl LineSink for Collect {
    fn send(&self, line: LogLine) {
        self.0.lock().push(line);
    }
}

const APP_PY: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("release=%s dyno=%s\n" % (os.environ.get("RELEASE", "?"), os.environ.get("DYNO"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
S(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// The platform's state: one app in an internal space, releases 1 and 2, and the endpoints
/// the runtime reports now.
fn snapshot(dir: &str, release: u32, runtime: &LocalRuntime) -> Snapshot {
    let mut s = Snapshot::empty("wharf.localhost");
    s.spaces.push(Space {
        name: "default".into(),
        compliance: BTreeSet::from([Compliance::Internal]),
    });
    s.apps.push(App {
        name: "edge".into(),
        space: "default".into(),
        domains: Vec::new(),
        release: Some(release),
        log_token: None,
    });
    for v in 1..=2 {
        s.releases.push(Release {
            app: "edge-default".into(),
            version: v,
            artifact: Artifact::Slug(dir.to_owned()),
            config_vars: BTreeMap::from([("RELEASE".to_owned(), v.to_string())]),
        });
    }
    s.formation.push(web());
    s.endpoints = router_endpoints(&runtime.dynos());
    s
}

fn web() -> Formation {
    Formation {
        app: "edge-default".into(),
        process_type: "web".into(),
        quantity: 2,
        size: "standard-1x".into(),
        command: None,
        port: None,
        health_check: Some(HealthCheck::Http { path: "/".into() }),
        schedule: None,
    }
}

async fn get(router: SocketAddr) -> Result<String, String> {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(router)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: edge-default.wharf.localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let status = buf.lines().next().unwrap_or("");
        if status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200") {
            Ok(buf)
        } else {
            Err(format!("bad response {buf:?}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(15), go)
        .await
        .unwrap_or_else(|_| Err("request timed out".to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_through_the_router_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), APP_PY).unwrap();
    std::fs::write(dir.path().join("Procfile"), "web: exec python3 app.py\n").unwrap();
    let slug = dir.path().to_string_lossy().into_owned();

    let cfg = LocalConfig {
        ports: 22000..22100,
        boot_timeout: Duration::from_secs(30),
        grace_period: Duration::from_secs(3),
        drain_period: Duration::from_secs(2),
        health_interval: Duration::from_millis(100),
        service_proxies: false,
        ..LocalConfig::default()
    };
    let rt = Arc::new(LocalRuntime::new(cfg, Arc::new(Collect::default())));
    let mut events = rt.events();
    let desired = |release: u32| {
        let s = snapshot(&slug, release, &rt);
        DesiredState::from_snapshot(&s)
    };
    rt.converge(desired(1)).await.unwrap();
    let mut changes = rt.changes();
    for _ in 0..900 {
        let up = router_endpoints(&rt.dynos());
        if up.len() == 2 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
    assert_eq!(router_endpoints(&rt.dynos()).len(), 2, "{:#?}", rt.dynos());

    let router_sink = Arc::new(Collect::default());
    let table = {
        let v = wharf_config::validate(snapshot(&slug, 1, &rt)).unwrap();
        wharf_config::compile(&v).router
    };
    let router = Arc::new(
        wharf_router::Handle::start(
            wharf_router::Options {
                internal: Some("127.0.0.1:0".parse().unwrap()),
                threads: 1,
                ..wharf_router::Options::default()
            },
            table,
            router_sink,
        )
        .expect("router starts"),
    );
    let addr = router.addrs().internal.unwrap();

    // Endpoints follow the runtime: every change becomes a new table.
    let stop = Arc::new(AtomicBool::new(false));
    let release = Arc::new(Mutex::new(1u32));
    let sync = {
        let (rt, router, stop, release, slug) = (
            rt.clone(),
            router.clone(),
            stop.clone(),
            release.clone(),
            slug.clone(),
        );
        tokio::spawn(async move {
            let mut rx = rt.changes();
            while !stop.load(Ordering::SeqCst) {
                let s = snapshot(&slug, *release.lock(), &rt);
                router.apply_snapshot(s).expect("table applies");
                let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
            }
        })
    };
    let client = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut seen) = (0u32, Vec::new(), BTreeSet::new());
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 20_000 {
                n += 1;
                match get(addr).await {
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    *release.lock() = 2;
    rt.converge(desired(2)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(RuntimeEvent::ReleaseUp { release: 2, .. })) => break,
            Ok(Ok(RuntimeEvent::ReleaseFailed { reason, .. })) => panic!("deploy failed: {reason}"),
            Ok(_) => {}
            Err(_) => panic!("release 2 never came up"),
        }
    }
    for _ in 0..900 {
        let d = rt.dynos();
        if d.len() == 2 && d.iter().all(|x| x.release == 2 && x.state == DynoState::Up) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, seen) = client.await.unwrap();
    sync.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 0);
    assert!(seen.contains("1") && seen.contains("2"), "{seen:?}");
    router.shutdown();
    rt.shutdown().await;
}
