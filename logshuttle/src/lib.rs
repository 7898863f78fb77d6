//! Wharf's log shuttle: the data plane for logs, Heroku Logplex and Akkeris logshuttle style.
//!
//! This crate owns everything between a log line's birth and its drains:
//! - **ingest**: the in-process [`Handle::sink`] (router, dynos, builds; never blocks, sheds and
//!   counts when full), Logplex `POST /logs` ([`Handle::http_router`]) and syslog TCP/UDP
//!   ([`Handle::bind_syslog_tcp`], [`Handle::bind_syslog_udp`]);
//! - **the bus** ([`Bus`]): in-process (embedded default) or Kafka ([`KafkaOptions`]), each
//!   app's lines in order, Kafka offsets committed only after every drain accounted for a line;
//! - **drains** (`syslog://`, `syslog+tcp://`, `syslog+udp://`, `syslog+tls://`, `https://`,
//!   `http://` when allowed): a task and a bounded buffer each, L10 notices on overflow,
//!   reconnect with jittered back-off; reload is a diff ([`Handle::apply`]);
//! - **history and tail** for Heroku log sessions ([`Handle::session`]), L11 for slow readers;
//! - **metrics** in a Prometheus registry ([`Metrics`]).
//!
//! ```no_run
//! # async fn demo(plan: wharf_config::ShuttlePlan) -> Result<(), wharf_logshuttle::Error> {
//! use wharf_logshuttle::{Filter, Options, Shuttle};
//! let handle = Shuttle::start(Options::default(), plan).await?;
//! let sink = handle.sink(); // give this to the router
//! let (history, mut tail) = handle.session("api-default", 100, Filter::default())?;
//! while let Some(line) = tail.recv().await { /* serve as SSE */ let _ = line; }
//! # let _ = (sink, history); Ok(()) }
//! ```

pub mod bus;
mod drain;
mod error;
pub mod ingest;
pub mod kafka;
pub mod metrics;
mod shuttle;
mod stream;
pub mod tls;
pub mod wire;

pub use bus::{Ack, Acker, Bus, Consumed, InProcessBus};
pub use error::Error;
pub use ingest::syslog::SyslogListener;
pub use kafka::{KafkaBus, KafkaOptions, RecordFormat};
pub use metrics::Metrics;
pub use shuttle::{ApplyReport, BusChoice, Handle, Options, Shuttle};
pub use stream::{Filter, Tail};
