//! Wharf's HTTPS edge router.
//!
//! This crate owns the HTTP data plane: the pingora server and its listeners (public HTTPS,
//! public HTTP that redirects, internal, admin), the certificate resolver (per SNI: exact →
//! wildcard → default), the live route table behind one `ArcSwap` (swapped whole, in-flight
//! requests finish on the table they started with), filters (JWT, CORS), canary choice and
//! abort, round-robin balancing with passive health, Heroku-style router log lines and
//! Prometheus metrics. It depends on `wharf-config` only: it loads a compiled
//! [`wharf_config::RouterTable`] and writes [`wharf_config::LogLine`]s to a
//! [`wharf_config::LineSink`].
//!
//! Start one with [`Handle::start`], swap tables with [`Handle::apply`], stop with
//! [`Handle::shutdown`]; `tests/` shows each behaviour over real sockets.

pub mod admin;
pub mod canary;
pub mod chunked;
pub mod client;
pub mod filters;
pub mod h2_guard;
pub mod headers;
pub mod limits;
pub mod live;
pub mod logline;
pub mod metrics;
mod overflow;
pub mod proxy;
pub mod server;
pub mod shared;
pub mod tls;

pub use live::Rejected;
pub use server::{Addrs, Handle, Options, StartError};
