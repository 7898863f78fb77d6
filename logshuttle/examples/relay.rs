//! A syslog relay built on the shuttle, for `benches/logshuttle.sh`: syslog TCP in (bound to
//! one app's token) → bus → one or more drains. Writes the ingest port to `--port-file`.
//!
//! `relay --port-file F --drain syslog+tcp://127.0.0.1:P [--drain URL…] [--kafka BROKERS]
//!  [--stall-timeout-ms MS]`

use std::collections::BTreeMap;
use std::time::Duration;

use wharf_config::shuttle_plan::{AppLogs, DrainTarget};
use wharf_config::{DrainUrl, LogSettings, ShuttlePlan};
use wharf_logshuttle::{BusChoice, KafkaOptions, Options, Shuttle};

// The allocator of the `wharf` binary, whose `wharf logshuttle` this relay stands for.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut args = std::env::args().skip(1);
    let mut drains = Vec::new();
    let mut port_file = None;
    let mut kafka = None;
    let mut stall = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--drain" => drains.push(args.next().expect("--drain URL")),
            "--port-file" => port_file = args.next(),
            "--kafka" => kafka = args.next(),
            "--stall-timeout-ms" => {
                let ms: u64 = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("milliseconds");
                stall = Some(Duration::from_millis(ms));
            }
            other => panic!("unknown argument {other:?}"),
        }
    }
    let key = "bench-default".to_owned();
    let targets = drains
        .iter()
        .map(|u| DrainTarget {
            id: wharf_config::shuttle_plan::drain_id(&key, u),
            app: key.clone(),
            url: DrainUrl::parse(u).expect("drain URL"),
            token: Some("d.bench".to_owned()),
        })
        .collect();
    let mut apps = BTreeMap::new();
    apps.insert(
        key.clone(),
        AppLogs {
            name: "bench".into(),
            space: "default".into(),
            socs: false,
            log_token: Some("tok".into()),
            drains: targets,
            log_rate: None,
        },
    );
    let plan = ShuttlePlan {
        revision: 1,
        digest: "bench".into(),
        settings: LogSettings::default(),
        apps,
    };
    let bus = match kafka {
        Some(b) => BusChoice::Kafka(KafkaOptions {
            topic: format!("bench-{}", std::process::id()),
            group: format!("bench-{}", std::process::id()),
            ..KafkaOptions::new(b)
        }),
        None => BusChoice::InProcess,
    };
    let defaults = Options::default();
    let opts = Options {
        bus,
        drain_stall_timeout: stall.unwrap_or(defaults.drain_stall_timeout),
        ..defaults
    };
    let shuttle = Shuttle::start(opts, plan).await.expect("start");
    let l = shuttle
        .bind_syslog_tcp("127.0.0.1:0".parse().unwrap(), Some("tok".into()))
        .await
        .expect("bind");
    if let Some(f) = port_file {
        std::fs::write(f, l.local_addr().port().to_string()).expect("port file");
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
