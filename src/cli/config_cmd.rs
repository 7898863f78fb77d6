//! `wharf config -a APP`: an app's config vars, as `heroku config` shows them; `wharf config
//! check FILE`: check a snapshot file without running anything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use wharf_config::{Format, Problems, Validated};

use super::platform::{AppArg, Conn, PlatformCommand};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub cmd: Option<ConfigCommand>,
    /// App whose config vars to show: `{app}-{space}`, or its name when unique.
    #[arg(short, long, required = true)]
    pub app: Option<String>,
    #[command(flatten)]
    pub c: Conn,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate a snapshot (TOML or JSON); print every problem with its path.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Print the compiled summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let cmd = match (args.cmd, args.app) {
        (Some(cmd), _) => cmd,
        (None, Some(app)) => {
            return super::platform::run(PlatformCommand::Config {
                a: AppArg { app },
                c: args.c,
            });
        }
        (None, None) => anyhow::bail!("give -a APP, or a subcommand (`wharf config check FILE`)"),
    };
    match cmd {
        ConfigCommand::Check { file, json } => match load_file(&file)? {
            Ok(v) => {
                let c = wharf_config::compile(&v);
                let summary = serde_json::json!({
                    "file": file.display().to_string(),
                    "valid": true,
                    "digest": c.router.digest,
                    "spaces": v.spaces.len(),
                    "apps": v.apps.len(),
                    "sites": v.sites.len(),
                    "routes": v.routes.len(),
                    "filters": v.filters.len(),
                    "certificates": v.certificates.len(),
                    "drains": v.drains.len(),
                });
                let mut out = std::io::stdout().lock();
                use std::io::Write;
                if json {
                    writeln!(out, "{summary:#}")?;
                } else {
                    writeln!(
                        out,
                        "{}: valid ({} spaces, {} apps, {} sites, {} routes, {} filters, {} certificates, {} drains; digest {})",
                        file.display(),
                        v.spaces.len(),
                        v.apps.len(),
                        v.sites.len(),
                        v.routes.len(),
                        v.filters.len(),
                        v.certificates.len(),
                        v.drains.len(),
                        c.router.digest
                    )?;
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                eprint!("{}: {problems}", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

/// Read, parse, load certificate files (relative to the file) and validate. The outer error is
/// I/O on the file itself; the inner one every problem found in it.
pub fn load_file(file: &Path) -> anyhow::Result<Result<Validated, Problems>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let format = Format::from_file_name(&file.to_string_lossy());
    let mut snapshot = match wharf_config::parse(&text, format) {
        Ok(s) => s,
        Err(e) => {
            let mut p = Problems::default();
            p.push("(file)", e.to_string());
            return Ok(Err(p));
        }
    };
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Err(p) =
        snapshot.load_files(|f| std::fs::read_to_string(dir.join(f)).map_err(|e| e.to_string()))
    {
        return Ok(Err(p));
    }
    Ok(wharf_config::validate(snapshot))
}
