//! fleetwave agent library: everything `fleetwave-agent` does, as modules the binary and
//! the integration tests share.
//!
//! - [`config`]: the TOML configuration and its defaults.
//! - [`state`]: the SQLite state (trust, releases, journal, outbox, deferral).
//! - [`executor`], [`readiness`]: installing releases and checking health.
//! - [`signals`]: golden signals scraped from the managed application, summarized per minute.

pub mod args;
pub mod bundle;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod decision;
pub mod executor;
pub mod lifecycle;
pub mod peer;
pub mod readiness;
pub mod report_file;
pub mod signals;
pub mod state;
pub mod test_hooks;
