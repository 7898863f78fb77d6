//! Real peers for the tests, all on 127.0.0.1 with ephemeral ports: rsyslog receivers (TCP, TLS,
//! UDP) writing to files, a tansu Kafka broker, an HTTPS drain receiver, and certificates.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_config::shuttle_plan::{AppLogs, DrainTarget};
use wharf_config::{DrainUrl, LogLine, LogSettings, ShuttlePlan, Source};

/// Logs of the code under test, shown for failing tests.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Poll `f` every 100 ms for up to `secs` seconds.
pub async fn wait_for<F: FnMut() -> bool>(secs: u64, what: &str, mut f: F) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(f(), "timed out after {secs} s waiting for {what}");
}

pub fn line(app: &str, process: &str, text: &str) -> LogLine {
    LogLine {
        app: app.into(),
        space: app
            .rsplit_once('-')
            .map(|(_, s)| s.to_owned())
            .unwrap_or_default()
            .into(),
        source: Source::App,
        process: process.into(),
        timestamp_us: wharf_logshuttle::wire::now_us(),
        line: text.to_owned(),
    }
}

/// An app of a plan: key `{name}-{space}`, its log token and drains `(url, token)`.
pub struct AppSpec<'a> {
    pub name: &'a str,
    pub space: &'a str,
    pub token: Option<&'a str>,
    pub drains: Vec<(String, Option<String>)>,
}

pub fn plan(apps: Vec<AppSpec<'_>>, settings: LogSettings) -> ShuttlePlan {
    let mut map = BTreeMap::new();
    for a in apps {
        let key = format!("{}-{}", a.name, a.space);
        let drains = a
            .drains
            .iter()
            .map(|(u, t)| DrainTarget {
                id: wharf_config::shuttle_plan::drain_id(&key, u),
                app: key.clone(),
                url: DrainUrl::parse(u).expect("drain url"),
                token: t.clone(),
            })
            .collect();
        map.insert(
            key,
            AppLogs {
                name: a.name.to_owned(),
                space: a.space.to_owned(),
                socs: false,
                log_token: a.token.map(str::to_owned),
                drains,
                log_rate: None,
            },
        );
    }
    ShuttlePlan {
        revision: 1,
        digest: "test".to_owned(),
        settings,
        apps: map,
    }
}

pub fn app<'a>(name: &'a str, token: Option<&'a str>, drains: Vec<String>) -> AppSpec<'a> {
    AppSpec {
        name,
        space: "default",
        token,
        drains: drains.into_iter().map(|d| (d, None)).collect(),
    }
}

/// Options with quick back-off for tests.
pub fn options() -> wharf_logshuttle::Options {
    init_logs();
    wharf_logshuttle::Options {
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(2),
        http_linger: Duration::from_millis(50),
        drain_stall_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

/// A port that was free a moment ago (for peers that cannot report their own).
pub fn free_port_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_port_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA and a server certificate for 127.0.0.1 and localhost signed by it.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki() -> Pki {
    pki_for(&["localhost", "127.0.0.1"])
}

/// A test CA and a server certificate for `names` signed by it.
pub fn pki_for(names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wharf test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Tls,
    Udp,
}

/// rsyslogd as a drain receiver, writing each message's raw text as a line to `out`.
pub struct Rsyslog {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub proto: Proto,
    pub out: PathBuf,
    child: Option<Child>,
    conf: PathBuf,
}

impl Rsyslog {
    pub fn start(proto: Proto, pki: Option<&Pki>) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.log");
        let conf = dir.path().join("rsyslog.conf");
        let mut r = Rsyslog {
            port: 0,
            proto,
            out,
            child: None,
            conf,
            dir,
        };
        if let Some(p) = pki {
            std::fs::write(r.dir.path().join("ca.pem"), &p.ca_pem).unwrap();
            std::fs::write(r.dir.path().join("cert.pem"), &p.cert_pem).unwrap();
            std::fs::write(r.dir.path().join("key.pem"), &p.key_pem).unwrap();
        }
        if proto == Proto::Udp {
            r.port = free_port_udp();
        }
        r.spawn();
        r
    }

    fn write_conf(&self) {
        let d = self.dir.path().display();
        let port_file = self.dir.path().join("port");
        let mut c = format!(
            "global(workDirectory=\"{d}\" maxMessageSize=\"128k\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n"
        );
        match self.proto {
            Proto::Tcp => c.push_str(&format!(
                "module(load=\"imtcp\")\ninput(type=\"imtcp\" address=\"127.0.0.1\" port=\"{}\" listenPortFileName=\"{}\" ruleset=\"out\")\n",
                self.port,
                port_file.display()
            )),
            Proto::Tls => c.push_str(&format!(
                "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" DefaultNetstreamDriverCertFile=\"{d}/cert.pem\" DefaultNetstreamDriverKeyFile=\"{d}/key.pem\")\n\
                 module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{}\" listenPortFileName=\"{}\" ruleset=\"out\")\n",
                self.port,
                port_file.display()
            )),
            Proto::Udp => c.push_str(&format!(
                "module(load=\"imudp\")\ninput(type=\"imudp\" address=\"127.0.0.1\" port=\"{}\" ruleset=\"out\")\n",
                self.port
            )),
        }
        c.push_str(&format!(
            "ruleset(name=\"out\") {{ action(type=\"omfile\" file=\"{}\" template=\"raw\" flushOnTXEnd=\"on\" asyncWriting=\"off\") }}\n",
            self.out.display()
        ));
        std::fs::write(&self.conf, c).unwrap();
    }

    fn spawn(&mut self) {
        let port_file = self.dir.path().join("port");
        let _ = std::fs::remove_file(&port_file);
        self.write_conf();
        let pid = self.dir.path().join("rsyslogd.pid");
        let _ = std::fs::remove_file(&pid);
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd on PATH (apt-get install rsyslog rsyslog-gnutls)");
        self.child = Some(child);
        if self.proto != Proto::Udp && self.port == 0 {
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(p) = std::fs::read_to_string(&port_file)
                    && let Ok(p) = p.trim().parse::<u16>()
                    && p != 0
                {
                    self.port = p;
                    break;
                }
                assert!(Instant::now() < end, "rsyslogd did not report its port");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Wait until it accepts: TCP connect, or for UDP a probe that shows up in the file.
        let end = Instant::now() + Duration::from_secs(30);
        match self.proto {
            Proto::Tcp | Proto::Tls => {
                while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                    assert!(Instant::now() < end, "rsyslogd does not accept");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Proto::Udp => {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let probe = "<14>1 - probe probe - - - udp-probe";
                while !std::fs::read_to_string(&self.out)
                    .unwrap_or_default()
                    .contains("udp-probe")
                {
                    let _ = s.send_to(probe.as_bytes(), ("127.0.0.1", self.port));
                    assert!(Instant::now() < end, "rsyslogd UDP not ready");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Lines received so far (probes excluded).
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("udp-probe"))
            .map(str::to_owned)
            .collect()
    }

    pub fn url(&self) -> String {
        match self.proto {
            Proto::Tcp => format!("syslog+tcp://127.0.0.1:{}", self.port),
            Proto::Tls => format!("syslog+tls://127.0.0.1:{}", self.port),
            Proto::Udp => format!("syslog+udp://127.0.0.1:{}", self.port),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The tansu binary: on PATH or in ~/.cargo/bin.
pub fn tansu_bin() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("tansu");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let home = std::env::var("HOME").ok()?;
    let p = Path::new(&home).join(".cargo/bin/tansu");
    p.is_file().then_some(p)
}

/// A real Kafka-protocol broker (tansu, sqlite storage) in a temp dir.
pub struct Tansu {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Tansu {
    pub fn start() -> Tansu {
        let mut t = Tansu {
            dir: tempfile::tempdir().unwrap(),
            port: free_port_tcp(),
            child: None,
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let bin =
            tansu_bin().expect("tansu not found: scripts/deps.sh need_kafka_broker installs it");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(bin)
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .arg("--storage-engine")
            // The path is relative to the working directory, the data dir.
            .arg("sqlite://tansu.db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < end, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop the broker (SIGKILL); its data stays for [`Tansu::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request an HTTPS drain receiver saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub status: u16,
}

/// An HTTPS receiver answering `script` statuses in turn, then 200.
pub struct HttpsReceiver {
    pub port: u16,
    pub seen: Arc<parking_lot::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsReceiver {
    pub async fn start(pki: &Pki, script: Vec<u16>) -> HttpsReceiver {
        use http_body_util::BodyExt as _;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pki.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::<Seen>::new()));
        let script = Arc::new(parking_lot::Mutex::new(std::collections::VecDeque::from(
            script,
        )));
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let seen = s2.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            let script = script.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let status = script.lock().pop_front().unwrap_or(200);
                                seen.lock().push(Seen {
                                    path: parts.uri.path().to_owned(),
                                    headers: parts.headers,
                                    body,
                                    status,
                                });
                                let resp = http::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        HttpsReceiver { port, seen, task }
    }
}

/// A syslog TCP receiver that reads slowly but steadily: `chunk` bytes, then a pause, with a
/// small receive buffer so that the sender feels it. Collects the octet-counted frames.
pub struct SlowReceiver {
    pub port: u16,
    pub frames: Arc<parking_lot::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowReceiver {
    pub fn start(chunk: usize, pause: Duration) -> SlowReceiver {
        use tokio::io::AsyncReadExt as _;
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        sock.set_recv_buffer_size(8 * 1024).unwrap();
        sock.set_reuse_address(true).unwrap();
        sock.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        sock.listen(16).unwrap();
        sock.set_nonblocking(true).unwrap();
        let std_listener: std::net::TcpListener = sock.into();
        let port = std_listener.local_addr().unwrap().port();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let frames = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let f2 = frames.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let frames = f2.clone();
                tokio::spawn(async move {
                    let mut dec = wharf_logshuttle::wire::FrameDecoder { max: 1 << 20 };
                    let mut buf = bytes::BytesMut::new();
                    let mut b = vec![0u8; chunk];
                    loop {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                        while let Ok(Some(f)) = dec.decode(&mut buf) {
                            frames.lock().push(String::from_utf8_lossy(&f).into_owned());
                        }
                        tokio::time::sleep(pause).await;
                    }
                });
            }
        });
        SlowReceiver { port, frames, task }
    }

    pub fn url(&self) -> String {
        format!("syslog+tcp://127.0.0.1:{}", self.port)
    }
}

/// A TCP listener that accepts and never reads: a stalled drain receiver.
pub struct StalledReceiver {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StalledReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StalledReceiver {
    pub async fn start() -> StalledReceiver {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        sock.set_recv_buffer_size(8 * 1024).unwrap();
        sock.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        sock.listen(16).unwrap();
        sock.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(sock.into()).unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        StalledReceiver { port, task }
    }

    pub fn url(&self) -> String {
        format!("syslog://127.0.0.1:{}", self.port)
    }
}

/// A syslog receiver that accepts each connection and resets it at once (linger 0, nothing
/// read), on a thread of its own so that the reset follows the accept promptly.
pub struct ResettingReceiver {
    pub port: u16,
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ResettingReceiver {
    pub fn start() -> ResettingReceiver {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, st) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                let Ok(s) = s else { continue };
                a.fetch_add(1, Ordering::AcqRel);
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            }
        });
        ResettingReceiver {
            port,
            accepted,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("syslog+tcp://127.0.0.1:{}", self.port)
    }
}

impl Drop for ResettingReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}
