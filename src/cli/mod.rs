//! Command-line surface of `wharf`. Each subcommand lives in its own module; only commands that
//! work are listed here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_cmd;
mod control_cmd;
mod deploy_cmd;
mod follow;
mod logshuttle_cmd;
mod platform;
mod router_cmd;
mod run_cmd;
mod source;
mod stdout_sink;
mod up_cmd;

/// Wharf: the edge of an app platform — HTTPS router, log shuttle and control plane.
#[derive(Debug, Parser)]
#[command(name = "wharf", version, about, propagate_version = true)]
pub struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole platform in one process: control plane, router, log shuttle, local dynos.
    Up(up_cmd::UpArgs),
    /// Deploy a directory (Procfile, optional bin/build) or an image to an app.
    Deploy(deploy_cmd::DeployArgs),
    /// Run a one-off dyno attached to this terminal; exits with the command's status.
    Run(run_cmd::RunArgs),
    /// Show an app's config vars (`-a APP`), or check a snapshot file (`config check FILE`).
    Config(config_cmd::ConfigArgs),
    /// Run the HTTPS edge router from a snapshot file or a control plane's feed.
    Router(router_cmd::RouterArgs),
    /// Run the log shuttle from a snapshot file or a control plane's feed.
    Logshuttle(logshuttle_cmd::Args),
    /// Run the control plane: platform API, store and snapshot feed.
    Control(control_cmd::ControlArgs),
    #[command(flatten)]
    Platform(platform::PlatformCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(a) => up_cmd::run(a),
        Command::Deploy(d) => deploy_cmd::run(d),
        Command::Run(r) => run_cmd::run(r),
        Command::Config(c) => config_cmd::run(c),
        Command::Router(a) => router_cmd::run(a),
        Command::Logshuttle(a) => logshuttle_cmd::run(a),
        Command::Control(a) => control_cmd::run(a),
        Command::Platform(c) => platform::run(c),
    }
}

/// `tracing` to stderr; `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // pingora logs every failed client handshake and upstream error at ERROR; the router's own
    // lines and metrics carry those, so its internals stay quiet unless RUST_LOG asks.
    let default = format!("{default},pingora_core::services::listening=off,pingora_proxy=off");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
