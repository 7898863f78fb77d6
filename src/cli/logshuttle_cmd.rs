//! `wharf logshuttle`: the log shuttle on its own, from a snapshot file (reloads on change and
//! SIGHUP) or following a control plane's snapshot feed, with Logplex HTTP and syslog ingest,
//! the in-process or Kafka bus, and metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use wharf_logshuttle::{BusChoice, Handle, KafkaOptions, Options, RecordFormat, Shuttle};

use super::source::{Loaded, Source, SourceArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Logplex `POST /logs` listener (Basic auth with an app's log token).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Syslog over TCP listener (octet-counted or newline framing).
    #[arg(long, value_name = "ADDR")]
    pub syslog_tcp: Option<SocketAddr>,
    /// Syslog over UDP listener.
    #[arg(long, value_name = "ADDR")]
    pub syslog_udp: Option<SocketAddr>,
    /// Bind the syslog listeners to this app's log token (else each message carries
    /// `token="…"` in its structured data).
    #[arg(long, value_name = "TOKEN")]
    pub syslog_token: Option<String>,
    /// Kafka brokers (`host:port,…`); without it the bus is in-process.
    #[arg(long, value_name = "BROKERS", env = "WHARF_KAFKA")]
    pub kafka: Option<String>,
    #[arg(long, default_value = "wharf-logs", env = "WHARF_KAFKA_TOPIC")]
    pub kafka_topic: String,
    /// Consumer group: one per shuttle deployment.
    #[arg(long, default_value = "wharf-logshuttle")]
    pub kafka_group: String,
    #[arg(long, default_value_t = 8)]
    pub kafka_partitions: i32,
    /// Static membership of the consumer group: this shuttle's own id, the same across its
    /// restarts (a restarted shuttle then takes its place at once), unique within the group.
    #[arg(long, value_name = "ID")]
    pub kafka_instance: Option<String>,
    /// The Kafka record format to write: 4, or 2 while shuttles older than format 4 still
    /// consume the topic (they cannot read 4) — during a rolling upgrade.
    #[arg(long, value_name = "2|4", default_value = "4")]
    pub kafka_record_format: RecordFormat,
    /// Prometheus metrics listener (`GET /metrics`).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// CA bundle (PEM) for syslog+tls:// and https:// drains instead of the web PKI roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    let mut source = Source::open(&args.source)?;
    let plan = match source.first("wharf.localhost", &|_| Ok(())).await? {
        Ok(valid) => wharf_config::compile(&valid).shuttle,
        Err(problems) => anyhow::bail!("{} is not valid:\n{problems}", source.describe()),
    };
    let bus = match &args.kafka {
        Some(brokers) => BusChoice::Kafka(KafkaOptions {
            brokers: brokers.clone(),
            topic: args.kafka_topic.clone(),
            group: args.kafka_group.clone(),
            partitions: args.kafka_partitions,
            instance: args.kafka_instance.clone(),
            record_format: args.kafka_record_format,
        }),
        None => BusChoice::InProcess,
    };
    let opts = Options {
        bus,
        ca_file: args.ca_file.clone(),
        ..Options::default()
    };
    let shuttle = Shuttle::start(opts, plan)
        .await
        .context("cannot start the log shuttle")?;
    let mut servers = Vec::new();
    if let Some(addr) = args.http {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(addr = %l.local_addr()?, "logplex HTTP ingest listening");
        servers.push(tokio::spawn(Handle::serve(l, shuttle.http_router())));
    }
    let mut listeners = Vec::new();
    if let Some(addr) = args.syslog_tcp {
        let l = shuttle
            .bind_syslog_tcp(addr, args.syslog_token.clone())
            .await?;
        tracing::info!(addr = %l.local_addr(), "syslog TCP ingest listening");
        listeners.push(l);
    }
    if let Some(addr) = args.syslog_udp {
        let l = shuttle
            .bind_syslog_udp(addr, args.syslog_token.clone())
            .await?;
        tracing::info!(addr = %l.local_addr(), "syslog UDP ingest listening");
        listeners.push(l);
    }
    if let Some(addr) = args.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(addr = %l.local_addr()?, "metrics listening");
        servers.push(tokio::spawn(Handle::serve(l, shuttle.metrics_router())));
    }
    tracing::info!(bus = shuttle.bus_kind(), config = %source.describe(), "log shuttle running");

    source
        .follow(|loaded, why| reload(&shuttle, loaded, why))
        .await?;
    tracing::info!("stopping: draining buffers (up to 5 s)");
    drop(listeners);
    for s in servers {
        s.abort();
    }
    shuttle.shutdown(Duration::from_secs(5)).await;
    Ok(ExitCode::SUCCESS)
}

/// Reload as a diff; a bad snapshot keeps the running plan.
fn reload(shuttle: &Handle, loaded: Loaded, why: &str) {
    let plan = loaded
        .map(|valid| wharf_config::compile(&valid).shuttle)
        .map_err(|problems| anyhow::anyhow!("not valid:\n{problems}"));
    match plan.and_then(|p| shuttle.apply(p).map_err(anyhow::Error::from)) {
        Ok(r) => tracing::info!(
            why,
            added = r.added.len(),
            removed = r.removed.len(),
            kept = r.kept.len(),
            "log shuttle reloaded"
        ),
        Err(e) => {
            tracing::error!(why, error = %format!("{e:#}"), "reload refused; keeping the running plan")
        }
    }
}
