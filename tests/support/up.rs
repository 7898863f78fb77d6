//! A real `wharf up` for the end-to-end tests: free ports, its own data directory, the CLI
//! pointed at it, curl over HTTPS trusting its local CA, Ctrl-C on drop. Each test binary
//! uses it through `mod support;`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proc::free_port;

pub struct Up {
    pub child: Option<Child>,
    pub data: PathBuf,
    pub api: String,
    pub https: u16,
    pub log: PathBuf,
    pub _dir: tempfile::TempDir,
}

impl Up {
    pub fn start(extra: &[String]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let log = dir.path().join("up.log");
        let (api, https, admin) = (free_port(), free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["up", "--data-dir"])
            .arg(&data)
            .args([
                "--api",
                &format!("127.0.0.1:{api}"),
                "--https",
                &format!("127.0.0.1:{https}"),
            ])
            .args([
                "--http",
                "none",
                "--internal",
                "none",
                "--admin",
                &format!("127.0.0.1:{admin}"),
                "--rendezvous",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let up = Up {
            child: Some(child),
            data,
            api: format!("http://127.0.0.1:{api}"),
            https,
            log,
            _dir: dir,
        };
        up.wait_log("Wharf is up.", Duration::from_secs(120));
        up
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    pub fn wait_log(&self, needle: &str, within: Duration) {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{needle:?} not in the log:\n{}", self.log_text());
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The CLI against this platform: (exit status success, stdout + stderr).
    pub fn try_cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(args)
            .env("WHARF_API_URL", &self.api)
            .env("WHARF_API_TOKEN", self.token())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let (ok, text) = self.try_cli(args);
        assert!(ok, "wharf {args:?} failed:\n{text}");
        text
    }

    /// The CLI's `--json` answer (stdout only), parsed.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(args)
            .arg("--json")
            .env("WHARF_API_URL", &self.api)
            .env("WHARF_API_TOKEN", self.token())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "wharf {args:?} --json failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "wharf {args:?} --json: {e}\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `wharf run` attached, trusting the local CA: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("run")
            .args(args)
            .env("WHARF_API_URL", &self.api)
            .env("WHARF_API_TOKEN", self.token())
            .env("WHARF_CA", self.data.join("ca.pem"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `wharf deploy -a APP DIR`: packs, runs bin/build, releases. Returns its output.
    pub fn deploy(&self, app: &str, dir: &Path, slugs: &Path) -> String {
        let slugs = slugs.to_str().unwrap();
        self.cli(&[
            "deploy",
            "-a",
            app,
            dir.to_str().unwrap(),
            "--slug-dir",
            slugs,
        ])
    }

    /// GET through the router over HTTPS, trusting the local CA; (status, body).
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(self.data.join("ca.pem"))
            .args(["--resolve", &format!("{host}:{}:127.0.0.1", self.https)])
            .arg(format!("https://{host}:{}{path}", self.https))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    pub fn wait_get(&self, host: &str, path: &str, want: impl Fn(u16, &str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(90);
        let mut last = (0, String::new());
        while Instant::now() < end {
            last = self.get(host, path);
            if want(last.0, &last.1) {
                return last.1;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{host}{path}: never as wanted; last {last:?}\n{}",
            self.log_text()
        );
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
        }
    }
}

pub fn example() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello"))
}

/// Processes whose working directory is under `dir`.
pub fn dynos_of(dir: &Path) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .count()
}
