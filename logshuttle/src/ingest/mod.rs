//! Ingest paths besides the in-process sink: Logplex HTTP `POST /logs` and syslog TCP/UDP.

pub mod http;
pub mod syslog;
