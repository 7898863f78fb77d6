//! The parsers under fuzz, compiled from their own crates' source files so that the fuzz build
//! needs neither pingora nor rdkafka. Each file named here must import nothing from its crate
//! (only `wharf_config` and third-party crates): the fuzz build fails loudly if one starts to.

#[path = "../../logshuttle/src/wire.rs"]
pub mod wire;

#[path = "../../router/src/filters/token.rs"]
pub mod token;
