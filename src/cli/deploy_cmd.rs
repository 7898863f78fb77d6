//! `wharf deploy -a APP DIR`: pack a directory into an immutable slug, run its build step with
//! the output streamed to the caller and, as `app[build]` lines, to the app's log stream, then
//! create the build (and so the release) through the API. `--image REF` deploys a container
//! image instead (Kubernetes runtime).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::platform::{AppArg, Client, Conn};

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub a: AppArg,
    /// The app's directory (a Procfile names its process types; `bin/build` runs if present).
    #[arg(required_unless_present = "image")]
    pub dir: Option<PathBuf>,
    /// Deploy this container image instead of a directory.
    #[arg(long, conflicts_with = "dir")]
    pub image: Option<String>,
    /// Where slugs are kept (they must stay readable by the runtime).
    #[arg(long, env = "WHARF_SLUG_DIR")]
    pub slug_dir: Option<PathBuf>,
    #[command(flatten)]
    pub c: Conn,
}

pub fn run(d: DeployArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&d.c)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let source = match (&d.image, &d.dir) {
        (Some(image), _) => format!("docker://{image}"),
        (None, Some(dir)) => {
            let slug = pack(dir, &slug_root(&d)?.join(&d.a.app))?;
            let mut log = BuildLog {
                client: &client,
                rt: &rt,
                app: &d.a.app,
                pending: Vec::new(),
                since: Instant::now(),
                broken: false,
            };
            let built = build(&slug, &mut log);
            log.flush();
            built?;
            format!("file://{}", slug.display())
        }
        (None, None) => bail!("give a directory or --image"),
    };
    let v = rt.block_on(client.post(
        &format!("/apps/{}/builds", d.a.app),
        json!({"source_blob": {"url": source}}),
    ))?;
    let status = v["status"].as_str().unwrap_or("?");
    let version = v["release"]["version"].as_i64();
    match version {
        Some(n) if status == "succeeded" => eprintln!("-----> Released v{n} of {}", d.a.app),
        _ => bail!("build {status}: {v}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn slug_root(d: &DeployArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &d.slug_dir {
        return Ok(p.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; give --slug-dir")?;
    Ok(PathBuf::from(home).join(".local/share/wharf/slugs"))
}

/// Copy `dir` (without `.git`) into a new directory under `root`: later edits to the source do
/// not change a release.
fn pack(dir: &Path, root: &Path) -> anyhow::Result<PathBuf> {
    if !dir.join("Procfile").is_file() && !dir.join("bin/build").is_file() {
        bail!(
            "{} has no Procfile: it names the process types (web: …)",
            dir.display()
        );
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let slug = root.join(stamp.to_string());
    eprintln!("-----> Packing {} into {}", dir.display(), slug.display());
    copy_tree(dir, &slug)?;
    slug.canonicalize().context("slug directory")
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}

/// Build output on its way to the caller (stderr, at once) and to the app's log stream (in
/// batches of up to 100 lines or 250 ms). The stream is best effort: if the API refuses a batch,
/// the build goes on and says so once.
struct BuildLog<'a> {
    client: &'a Client,
    rt: &'a tokio::runtime::Runtime,
    app: &'a str,
    pending: Vec<String>,
    since: Instant,
    broken: bool,
}

impl BuildLog<'_> {
    const BATCH: usize = 100;
    const EVERY: Duration = Duration::from_millis(250);

    fn heading(&mut self, text: &str) {
        eprintln!("-----> {text}");
        self.push(format!("-----> {text}"));
    }

    fn output(&mut self, line: String) {
        eprintln!("       {line}");
        self.push(line);
    }

    fn push(&mut self, line: String) {
        self.pending.push(line);
        if self.pending.len() >= Self::BATCH {
            self.flush();
        }
    }

    fn tick(&mut self) {
        if !self.pending.is_empty() && self.since.elapsed() >= Self::EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.since = Instant::now();
        if self.pending.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.pending);
        if self.broken {
            return;
        }
        let path = format!("/apps/{}/build-output", self.app);
        if let Err(e) = self
            .rt
            .block_on(self.client.post(&path, json!({ "lines": lines })))
        {
            eprintln!("       (build output is not reaching the log stream: {e:#})");
            self.broken = true;
        }
    }
}

/// Run `bin/build`, then a Procfile `release:` command, in the slug; output streamed.
fn build(slug: &Path, log: &mut BuildLog<'_>) -> anyhow::Result<()> {
    if slug.join("bin/build").is_file() {
        run_step(slug, "bin/build", Command::new(slug.join("bin/build")), log)?;
    }
    let procfile = std::fs::read_to_string(slug.join("Procfile")).unwrap_or_default();
    if let Some(cmd) = procfile
        .lines()
        .find_map(|l| l.strip_prefix("release:").map(str::trim))
    {
        let mut c = Command::new("sh");
        c.args(["-c", cmd]);
        run_step(slug, "release phase", c, log)?;
    }
    Ok(())
}

fn run_step(
    slug: &Path,
    what: &str,
    mut cmd: Command,
    log: &mut BuildLog<'_>,
) -> anyhow::Result<()> {
    log.heading(&format!("Running {what}"));
    let mut child = cmd
        .current_dir(slug)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|r| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    loop {
        match rx.recv_timeout(BuildLog::EVERY) {
            Ok(line) => log.output(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        log.tick();
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait()?;
    if !status.success() {
        log.heading(&format!("{what} failed ({status}): nothing was released"));
        bail!("{what} failed ({status}): nothing was released");
    }
    Ok(())
}
