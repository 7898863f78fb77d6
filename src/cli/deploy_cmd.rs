//! `wharf deploy -a APP DIR`: pack a directory into an immutable slug, run its build step with
//! the output streamed to the caller, then create the build (and so the release) through the API.
//! `--image REF` deploys a container image instead (Kubernetes runtime).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

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
    let source = match (&d.image, &d.dir) {
        (Some(image), _) => format!("docker://{image}"),
        (None, Some(dir)) => {
            let slug = pack(dir, &slug_root(&d)?.join(&d.a.app))?;
            build(&slug)?;
            format!("file://{}", slug.display())
        }
        (None, None) => bail!("give a directory or --image"),
    };
    let client = Client::new(&d.c)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
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

/// Run `bin/build`, then a Procfile `release:` command, in the slug; output streamed.
fn build(slug: &Path) -> anyhow::Result<()> {
    if slug.join("bin/build").is_file() {
        run_step(slug, "bin/build", Command::new(slug.join("bin/build")))?;
    }
    let procfile = std::fs::read_to_string(slug.join("Procfile")).unwrap_or_default();
    if let Some(cmd) = procfile
        .lines()
        .find_map(|l| l.strip_prefix("release:").map(str::trim))
    {
        let mut c = Command::new("sh");
        c.args(["-c", cmd]);
        run_step(slug, "release phase", c)?;
    }
    Ok(())
}

fn run_step(slug: &Path, what: &str, mut cmd: Command) -> anyhow::Result<()> {
    eprintln!("-----> Running {what}");
    let mut child = cmd
        .current_dir(slug)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let err = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("       {line}");
        }
    });
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("       {line}");
        }
    }
    let _ = errs.join();
    let status = child.wait()?;
    if !status.success() {
        bail!("{what} failed ({status}): nothing was released");
    }
    Ok(())
}
