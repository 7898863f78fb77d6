//! A `wharf` child process with its stderr collected, bounded waits, free ports, and one
//! logplex POST with curl.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Call `f` every 200 ms until it holds or `secs` pass; whether it held.
pub fn poll(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// `wharf ARGS…` (RUST_LOG=info), killed on drop, its stderr kept.
pub struct Proc {
    pub child: Child,
    err: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = Arc::new(Mutex::new(String::new()));
        let e = err.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        Proc { child, err }
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Wait (bounded) until stderr contains `needle`.
    pub fn wait_for(&self, needle: &str, secs: u64) -> bool {
        poll(secs, || self.stderr().contains(needle))
    }
}

/// One octet-counted logplex frame carrying `line`, POSTed to 127.0.0.1:`port`/logs with the
/// app's log token; the HTTP status back.
pub fn post_log(port: u16, token: &str, line: &str) -> String {
    let msg = format!("<190>1 2026-11-23T12:00:00.000000+00:00 host app web.1 - - {line}");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-u", &format!("token:{token}")])
        .args(["-H", "Content-Type: application/logplex-1"])
        .args(["-H", "Logplex-Msg-Count: 1"])
        .args(["--data-binary", &format!("{} {msg}", msg.len())])
        .arg(format!("http://127.0.0.1:{port}/logs"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
