//! `wharf router`: the edge router on its own, reading a snapshot file; reloads when the file
//! changes and on SIGHUP. An invalid file is rejected with every reason and the running table
//! keeps serving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::config_cmd::load_file;

#[derive(Debug, Args)]
pub struct RouterArgs {
    /// Snapshot file (TOML or JSON); see deploy/wharf.example.toml.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Public HTTPS listener.
    #[arg(long, default_value = "0.0.0.0:8443", env = "WHARF_HTTPS")]
    pub https: SocketAddr,
    /// Public HTTP listener (redirects to HTTPS); `none` to disable.
    #[arg(long, default_value = "0.0.0.0:8080", env = "WHARF_HTTP")]
    pub http: Listen,
    /// Internal listener for internal spaces and sites; `none` to disable.
    #[arg(long, default_value = "127.0.0.1:8081", env = "WHARF_INTERNAL")]
    pub internal: Listen,
    /// Admin listener (/metrics, /healthz); `none` to disable.
    #[arg(long, default_value = "127.0.0.1:9090", env = "WHARF_ADMIN")]
    pub admin: Listen,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// A listener address, or `none`.
#[derive(Debug, Clone, Copy)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            Ok(Listen(None))
        } else {
            s.parse()
                .map(|a| Listen(Some(a)))
                .map_err(|e| format!("{s:?}: {e}"))
        }
    }
}

pub fn run(args: RouterArgs) -> anyhow::Result<ExitCode> {
    let valid = match load_file(&args.config)? {
        Ok(v) => v,
        Err(problems) => {
            eprint!("{}: {problems}", args.config.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let table = wharf_config::compile(&valid).router;
    let router = Arc::new(
        wharf_router::Handle::start(
            wharf_router::Options {
                https: Some(args.https),
                http: args.http.0,
                internal: args.internal.0,
                admin: args.admin.0,
                threads: args.threads,
            },
            table,
            Arc::new(super::stdout_sink::StdoutSink::start()),
        )
        .context("starting the router")?,
    );
    let a = router.addrs();
    eprintln!(
        "wharf router: https {} | http {} | internal {} | admin {} (reloads {} on change and SIGHUP)",
        show(a.https),
        show(a.http),
        show(a.internal),
        show(a.admin),
        args.config.display()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(super::follow::follow_file(
        &args.config,
        Duration::from_secs(1),
        |why| reload(&router, &args.config, why),
    ))?;
    tracing::info!("shutting down");
    router.shutdown();
    Ok(ExitCode::SUCCESS)
}

fn reload(router: &wharf_router::Handle, file: &std::path::Path, why: &str) {
    match load_file(file) {
        Err(e) => {
            tracing::error!(error = %e, why, "reload failed; the running table keeps serving")
        }
        Ok(Err(problems)) => {
            tracing::error!(
                why,
                count = problems.len(),
                "reload rejected; the running table keeps serving"
            );
            for p in problems.iter() {
                tracing::error!("{p}");
            }
        }
        Ok(Ok(valid)) => match router.apply(wharf_config::compile(&valid).router) {
            Ok(v) => tracing::info!(version = v, why, "reloaded"),
            Err(e) => {
                tracing::error!(error = %e, why, "reload rejected; the running table keeps serving")
            }
        },
    }
}

fn show(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "off".to_owned(), |a| a.to_string())
}
