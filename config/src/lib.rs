//! Wharf's desired state as plain data, and the pure functions over it.
//!
//! This crate owns the shared model and does no I/O: callers read files and sockets, this crate
//! turns text into a [`Snapshot`] ([`parse`]), checks it whole ([`validate`], every problem with
//! its path), and compiles a [`Validated`] snapshot into the read-optimised tables each data plane
//! swaps in as one pointer ([`compile`] → [`RouterTable`], [`ShuttlePlan`]). It also holds the
//! small types that cross crate lines: [`LogLine`] and [`RouterEvent`].
//!
//! ```
//! let text = r#"
//! version = 1
//! domain = "wharf.localhost"
//! [[spaces]]
//! name = "default"
//! [[apps]]
//! name = "api"
//! space = "default"
//! "#;
//! let snapshot = wharf_config::parse(text, wharf_config::Format::Toml).unwrap();
//! let valid = wharf_config::validate(snapshot).unwrap();
//! let compiled = wharf_config::compile(&valid);
//! assert!(compiled.router.hosts.contains_key("api-default.wharf.localhost"));
//! ```

pub mod compile;
pub mod drain_url;
pub mod events;
pub mod log;
pub mod model;
pub mod names;
pub mod parse;
pub mod paths;
pub mod problems;
pub mod router_table;
pub mod shuttle_plan;
pub mod validate;

pub use compile::{Compiled, compile, digest};
pub use drain_url::{DrainKind, DrainUrl};
pub use events::{RouterEvent, SideFigures};
pub use log::{CompactString, LineRef, LineSink, LogLine, Source};
pub use model::*;
pub use parse::{Format, ParseError, parse, to_json, to_toml};
pub use problems::{Problem, Problems};
pub use router_table::RouterTable;
pub use shuttle_plan::ShuttlePlan;
pub use validate::{Validated, validate, validate_update};

/// Parse, then validate: the one call a loader needs. Parse errors come back as one problem.
pub fn load(text: &str, format: Format) -> Result<Validated, Problems> {
    match parse(text, format) {
        Ok(s) => validate(s),
        Err(e) => {
            let mut p = Problems::default();
            p.push("(file)", e.to_string());
            Err(p)
        }
    }
}
