//! The stock Heroku CLI (npm `heroku@11`, installed outside the repo by `scripts/deps.sh`;
//! path in `WHARF_HEROKU_CLI`) against a control plane served on 127.0.0.1:0.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use wharf_config::{LineSink, LogLine, Source};
use wharf_control::logs::MemoryLogs;
use wharf_control::rendezvous::RendezvousConfig;
use wharf_control::{ControlPlane, NoRuntime, Settings};
use wharf_runtime::{
    DesiredState, DynoStatus, RunHandle, RunRequest, Runtime, RuntimeError, RuntimeEvent,
};

/// Runs nothing, except one-offs, which echo their command.
#[derive(Debug, Default)]
struct EchoRuntime(NoRuntime);

#[async_trait::async_trait]
impl Runtime for EchoRuntime {
    async fn converge(&self, d: DesiredState) -> Result<(), RuntimeError> {
        self.0.converge(d).await
    }
    fn dynos(&self) -> Vec<DynoStatus> {
        Vec::new()
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.changes()
    }
    fn events(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent> {
        self.0.events()
    }
    async fn run(&self, _app: &str, r: RunRequest) -> Result<RunHandle, RuntimeError> {
        let (tx, output) = tokio::sync::mpsc::channel(8);
        let (etx, exit) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(format!("ran: {}", r.command)).await;
            drop(tx);
            let _ = etx.send(Some(0));
        });
        Ok(RunHandle {
            dyno: "run.1".into(),
            output,
            exit,
        })
    }
    async fn restart(&self, _a: &str, _w: Option<&str>) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn shutdown(&self) {}
}

fn heroku_bin() -> PathBuf {
    match std::env::var_os("WHARF_HEROKU_CLI") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/wharf-heroku-cli/node_modules/.bin/heroku"),
    }
}

struct Heroku {
    bin: PathBuf,
    url: String,
    token: String,
    home: tempfile::TempDir,
    ca: PathBuf,
}

impl Heroku {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.args(args)
            .env("HEROKU_HOST", &self.url)
            .env("HEROKU_PARTICLEBOARD_URL", &self.url)
            .env("HEROKU_API_KEY", &self.token)
            .env("HEROKU_DISABLE_AUTOUPDATE", "1")
            .env("HEROKU_SKIP_NEW_VERSION_CHECK", "1")
            .env("DISABLE_TELEMETRY", "true")
            .env("NO_COLOR", "1")
            .env("HOME", self.home.path())
            .env("NODE_EXTRA_CA_CERTS", &self.ca)
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(120), self.command(args).output())
            .await
            .expect("heroku finished")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "heroku {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout + &stderr
    }
}

fn line(app: &str, text: &str) -> LogLine {
    LogLine {
        app: app.into(),
        space: "default".into(),
        source: Source::App,
        process: "web.1".into(),
        timestamp_us: 1_700_000_000_000_000,
        line: text.into(),
    }
}

mod support;
use support::{Db, fresh_store, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_heroku_cli_works_unchanged() {
    stock_heroku_cli(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_heroku_cli_works_unchanged_on_postgres() {
    stock_heroku_cli(Db::Postgres).await;
}

async fn stock_heroku_cli(db: Db) {
    let bin = heroku_bin();
    assert!(
        bin.exists(),
        "the Heroku CLI is not installed at {}: run scripts/test",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (store, _schema) = fresh_store(db, &dir).await;
    let logs = Arc::new(MemoryLogs::default());
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let ca_file = dir.path().join("rendezvous.pem");
    std::fs::write(&ca_file, cert.cert.pem()).unwrap();
    let settings = Settings {
        rendezvous: Some(RendezvousConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            public_host: "127.0.0.1".into(),
            cert_pem: cert.cert.pem(),
            key_pem: cert.signing_key.serialize_pem(),
        }),
        ..Settings::default()
    };
    let cp = ControlPlane::new(
        store,
        Arc::new(EchoRuntime::default()),
        logs.clone(),
        settings,
    )
    .await
    .unwrap();
    let (addr, token) = serve(&cp, "heroku cli", "dev@example.com").await;
    let h = Heroku {
        bin,
        url: format!("http://{addr}"),
        token,
        home: tempfile::tempdir().unwrap(),
        ca: ca_file,
    };

    let out = h.ok(&["apps:create", "demo"]).await;
    assert!(out.contains("demo-default.wharf.localhost"), "{out}");
    let out = h.ok(&["apps"]).await;
    assert!(out.contains("demo-default"), "{out}");
    let out = h.ok(&["config:set", "A=1", "B=two", "-a", "demo"]).await;
    assert!(out.contains("done, v2"), "{out}");
    let out = h.ok(&["config", "-a", "demo"]).await;
    assert!(out.contains("A:") && out.contains("two"), "{out}");
    let out = h.ok(&["ps:scale", "web=2", "-a", "demo"]).await;
    assert!(out.contains("web at 2:standard-1x"), "{out}");
    let out = h.ok(&["ps", "-a", "demo"]).await;
    assert!(out.contains("No dynos on demo"), "{out}");
    let out = h.ok(&["releases", "-a", "demo"]).await;
    assert!(
        out.contains("Set A, B config vars") && out.contains("Initial release"),
        "{out}"
    );
    h.ok(&["rollback", "-a", "demo"]).await;
    let out = h.ok(&["releases", "-a", "demo"]).await;
    assert!(out.contains("Rollback to v1"), "{out}");
    h.ok(&["rollback", "v2", "-a", "demo"]).await;
    let out = h.ok(&["config", "-a", "demo"]).await;
    assert!(out.contains("two"), "{out}");
    let out = h
        .ok(&[
            "drains:add",
            "syslog+tls://logs.example.com:6514",
            "-a",
            "demo",
        ])
        .await;
    assert!(out.contains("Successfully added drain"), "{out}");
    let out = h.ok(&["drains", "-a", "demo"]).await;
    assert!(out.contains("syslog+tls://logs.example.com:6514"), "{out}");

    logs.send(line("demo-default", "hello from history"));
    let out = h.ok(&["logs", "-n", "5", "-a", "demo"]).await;
    assert!(out.contains("app[web.1]: hello from history"), "{out}");

    let out = h.ok(&["run", "-a", "demo", "echo", "hi"]).await;
    assert!(out.contains("ran: echo hi"), "{out}");

    // --tail: keep sending until the streamed line shows up (bounded), then stop the CLI.
    let mut child = h
        .command(&["logs", "--tail", "-n", "1", "-a", "demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    for i in 0..120 {
        logs.send(line("demo-default", &format!("live line {i}")));
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), stdout.read(&mut buf)).await
        {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        if seen.contains("live line") {
            break;
        }
    }
    let _ = child.kill().await;
    assert!(seen.contains("app[web.1]: live line"), "{seen}");
}
