//! `wharf router`: the edge router on its own, from a snapshot file (reloaded when it changes
//! and on SIGHUP) or following a control plane's snapshot feed. An invalid snapshot is rejected
//! with every reason and the running table keeps serving.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::source::{Loaded, Source, SourceArgs};

#[derive(Debug, Args)]
pub struct RouterArgs {
    #[command(flatten)]
    pub source: SourceArgs,
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
    /// Proxy every request through pingora, not only those the router's own HTTP/1 path
    /// leaves to it (to compare the two; benches/router.sh does).
    #[arg(long)]
    pub pingora_only: bool,
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut source = Source::open(&args.source)?;
    // An HTTPS listener cannot start without a certificate: wait for a snapshot that has one.
    let needs_cert = |v: &wharf_config::Validated| {
        if v.certificates.is_empty() {
            Err("it has no certificate for the HTTPS listener yet".to_owned())
        } else {
            Ok(())
        }
    };
    let valid = match rt.block_on(source.first("wharf.localhost", &needs_cert))? {
        Ok(v) => v,
        Err(problems) => {
            eprint!("{}: {problems}", source.describe());
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
                direct: !args.pingora_only,
            },
            table,
            Arc::new(super::stdout_sink::StdoutSink::start()),
        )
        .context("starting the router")?,
    );
    let a = router.addrs();
    eprintln!(
        "wharf router: https {} | http {} | internal {} | admin {} | config from {}",
        show(a.https),
        show(a.http),
        show(a.internal),
        show(a.admin),
        source.describe()
    );
    rt.block_on(source.follow(|loaded, why| reload(&router, loaded, why)))?;
    tracing::info!("shutting down");
    router.shutdown();
    Ok(ExitCode::SUCCESS)
}

fn reload(router: &wharf_router::Handle, loaded: Loaded, why: &str) {
    match loaded {
        Err(problems) => {
            tracing::error!(
                why,
                count = problems.len(),
                "reload rejected; the running table keeps serving"
            );
            for p in problems.iter() {
                tracing::error!("{p}");
            }
        }
        Ok(valid) => match router.apply(wharf_config::compile(&valid).router) {
            Ok(v) => tracing::info!(version = v, revision = valid.revision, why, "reloaded"),
            Err(e) => {
                tracing::error!(error = %e, why, "reload rejected; the running table keeps serving")
            }
        },
    }
}

fn show(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "off".to_owned(), |a| a.to_string())
}
