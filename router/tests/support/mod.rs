//! Test support: a test CA and certificates (rcgen), dynos (hyper on 127.0.0.1:0), snapshot
//! builders, a collecting log sink, and curl.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use parking_lot::Mutex;
use wharf_config::*;

/// A CA and leaf certificates it signed.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Wharf Test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        Pki {
            dir,
            ca_pem,
            ca: rcgen::Issuer::new(params, key),
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf for `names`, with `cn` as its common name (to tell certificates apart).
    pub fn leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// What a dyno saw of a request, echoed as JSON.
pub fn echo_json(name: &str, req: &Request<Incoming>, body_len: usize) -> serde_json::Value {
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    serde_json::json!({
        "dyno": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
        "body_len": body_len,
    })
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

/// A test dyno: an HTTP/1.1 server on 127.0.0.1:0 on its own runtime thread.
/// Paths: `/status/N` answers N, `/sleep/MS` waits first, `/stream/N` sends N chunks,
/// `/ws` upgrades and echoes raw bytes; anything else echoes the request as JSON.
pub struct Dyno {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests this dyno has seen.
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dyno {
    pub fn start(name: &str) -> Dyno {
        Self::start_with(name, None)
    }

    /// A dyno that answers every request with `status`.
    pub fn failing(name: &str, status: u16) -> Dyno {
        Self::start_with(name, Some(status))
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn start_with(name: &str, fixed: Option<u16>) -> Dyno {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hits2 = hits.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let n = name.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        acc = listener.accept() => {
                            let Ok((stream, _)) = acc else { continue };
                            let name = n.clone();
                            let hits = hits2.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    handle(name.clone(), fixed, req)
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                    .with_upgrades()
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Dyno {
            addr,
            hits,
            name: name.to_owned(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Dyno {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(
    name: String,
    fixed: Option<u16>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if let Some(code) = fixed {
        return Ok(Response::builder()
            .status(code)
            .header("x-dyno", name.as_str())
            .body(full(format!("{name} always answers {code}\n")))
            .unwrap());
    }
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = hyper_util::rt::TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap());
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        return Ok(Response::builder()
            .status(code)
            .header("x-dyno", name.as_str())
            .body(full(format!("status {code} from {name}\n")))
            .unwrap());
    }
    if let Some(n) = path.strip_prefix("/stream/") {
        let n: usize = n.parse().unwrap_or(3);
        let stream = futures::stream::iter(
            (0..n).map(|i| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk {i}\n"))))),
        );
        return Ok(Response::builder()
            .status(200)
            .body(StreamBody::new(stream).boxed())
            .unwrap());
    }
    let head = echo_json(&name, &req, 0);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut json = head;
    json["body_len"] = body.len().into();
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-dyno", name.as_str())
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=30")
        .body(full(json.to_string()))
        .unwrap())
}

/// A sink that keeps every line, for assertions.
#[derive(Default, Clone)]
pub struct Collect(pub Arc<Mutex<Vec<LogLine>>>);

impl LineSink for Collect {
    fn send(&self, line: LogLine) {
        self.0.lock().push(line);
    }
}

impl Collect {
    pub fn lines(&self) -> Vec<LogLine> {
        self.0.lock().clone()
    }

    /// Wait (bounded) for a line containing `needle`.
    pub fn wait_for(&self, needle: &str) -> LogLine {
        for _ in 0..200 {
            if let Some(l) = self.0.lock().iter().find(|l| l.line.contains(needle)) {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("no log line with {needle:?} in {:#?}", self.lines());
    }
}

pub const DOMAIN: &str = "wharf.test";

/// A snapshot with spaces `prod` (public) and `back` (internal) and certificates.
pub fn base(pki: &Pki) -> Snapshot {
    let mut s = Snapshot::empty(DOMAIN);
    s.spaces.push(Space {
        name: "prod".into(),
        compliance: [Compliance::Prod].into(),
    });
    s.spaces.push(Space {
        name: "back".into(),
        compliance: [Compliance::Internal].into(),
    });
    let wild = pki.leaf("wildcard", &["*.wharf.test"]);
    let site = pki.leaf("site", &["www.example.com"]);
    let dflt = pki.leaf("default", &["default.invalid"]);
    for (name, leaf, names, default) in [
        ("wild", wild, vec!["*.wharf.test".to_owned()], false),
        ("site", site, vec!["www.example.com".to_owned()], false),
        ("default", dflt, vec![], true),
    ] {
        s.certificates.push(Certificate {
            name: name.into(),
            names,
            cert_pem: Some(leaf.cert_pem),
            key_pem: Some(leaf.key_pem),
            cert_file: None,
            key_file: None,
            default,
        });
    }
    s
}

/// Add app `name` in `space` with release 1 and these dynos (all `up`).
pub fn add_app(s: &mut Snapshot, name: &str, space: &str, dynos: &[SocketAddr]) -> String {
    let key = format!("{name}-{space}");
    s.apps.push(App {
        name: name.into(),
        space: space.into(),
        domains: vec![],
        release: Some(1),
        log_token: None,
    });
    s.releases.push(Release {
        app: key.clone(),
        version: 1,
        artifact: Artifact::Image("test:1".into()),
        config_vars: Default::default(),
    });
    for (i, a) in dynos.iter().enumerate() {
        s.endpoints.push(Endpoint {
            app: key.clone(),
            release: 1,
            process: format!("web.{}", i + 1),
            address: *a,
            state: DynoState::Up,
        });
    }
    key
}

pub fn compile(s: &Snapshot) -> RouterTable {
    let v = validate(s.clone()).unwrap_or_else(|p| panic!("{p}"));
    wharf_config::compile(&v).router
}

pub fn start(s: &Snapshot, sink: &Collect) -> wharf_router::Handle {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    wharf_router::Handle::start(
        wharf_router::Options {
            https: Some(any),
            http: Some(any),
            internal: Some(any),
            admin: Some(any),
            threads: 2,
            ..wharf_router::Options::default()
        },
        compile(s),
        Arc::new(sink.clone()),
    )
    .expect("router starts")
}

/// A curl response.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub version: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// curl `https://{host}{path}` through `addr`, trusting the test CA. Extra args go before the URL.
pub fn curl(
    pki: &Pki,
    addr: SocketAddr,
    scheme: &str,
    host: &str,
    path: &str,
    extra: &[&str],
) -> Got {
    let url = format!("{scheme}://{host}:{}{path}", addr.port());
    let resolve = format!("{host}:{}:127.0.0.1", addr.port());
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-D",
            "-",
            "--resolve",
            &resolve,
            "--cacert",
        ])
        .arg(pki.ca_path())
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url} {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_curl(&String::from_utf8_lossy(&out.stdout))
}

/// Split curl's `-D -` output: the last header block, then the body.
pub fn parse_curl(out: &str) -> Got {
    let mut rest = out;
    let mut got = Got {
        status: 0,
        headers: vec![],
        body: String::new(),
        version: String::new(),
    };
    // Skip interim responses (100 Continue) by taking header blocks while they start with HTTP/.
    while rest.starts_with("HTTP/") {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.split_whitespace();
        got.version = parts.next().unwrap_or("").to_owned();
        got.status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        got.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        rest = body;
    }
    got.body = rest.to_owned();
    got
}

/// A free port that nothing listens on (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A small HTTP server answering every request with `body` (JSON), counting requests. The body
/// can be changed while it runs (JWKS rotation).
pub struct JsonServer {
    pub addr: SocketAddr,
    pub body: Arc<Mutex<String>>,
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl JsonServer {
    pub fn start(body: String, content_type: &'static str) -> JsonServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (b, h) = (body.clone(), hits.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        acc = listener.accept() => {
                            let Ok((stream, _)) = acc else { continue };
                            let (b, h) = (b.clone(), h.clone());
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                                    h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    let body = b.lock().clone();
                                    async move {
                                        Ok::<_, Infallible>(Response::builder()
                                            .header("content-type", content_type)
                                            .body(full(body))
                                            .unwrap())
                                    }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        JsonServer {
            addr,
            body,
            hits,
            stop: Some(stop),
        }
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A metric's value from the router's registry (the first line starting with `prefix`; 0
/// when absent).
pub fn metric(r: &wharf_router::Handle, prefix: &str) -> f64 {
    let text = String::from_utf8(r.metrics().render()).unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Wait (bounded) for a metric to reach `want`; returns its last value.
pub fn wait_metric(r: &wharf_router::Handle, prefix: &str, want: f64) -> f64 {
    let mut v = metric(r, prefix);
    for _ in 0..400 {
        if v == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        v = metric(r, prefix);
    }
    v
}

/// Client connections open at the router.
pub const OPEN: &str = "wharf_router_client_connections ";

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Read what the router sends until it closes the connection (bounded: 20 s); `None` when it
/// kept the connection open that long.
pub fn read_until_closed(c: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(c, &mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(out),
            Err(_) => return None,
        }
    }
}

/// Wait (bounded) until no client connection and no request is left open at the router.
pub fn assert_nothing_leaks(r: &wharf_router::Handle) {
    assert_eq!(wait_metric(r, OPEN, 0.0), 0.0, "client connections leaked");
    assert_eq!(
        wait_metric(r, "wharf_router_requests_in_flight ", 0.0),
        0.0,
        "requests leaked"
    );
}
