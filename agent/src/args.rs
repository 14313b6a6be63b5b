//! The agent's command line (clap), in the library so that a generator outside the agent
//! binary (`cargo run -p xtask -- agent-completions`) can write its shell completions
//! without linking `clap_complete` into the agent.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// fleetwave edge agent: polls the coordinator, verifies signed assignments, installs
/// releases under a lease, rolls back on failure, and reports back.
#[derive(Parser)]
#[command(name = "fleetwave-agent", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, env = "FLEETWAVE_AGENT_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon (systemd Type=notify service).
    Run,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Enroll this box with a one-time token: creates the device key and stores the
    /// verified root of trust.
    Enroll {
        /// One-time enrollment token from an operator.
        #[arg(long)]
        token: String,
        /// Coordinator base URL (overrides coordinator.url).
        #[arg(long)]
        coordinator: Option<String>,
        /// Site id to enroll as (overrides agent.site_id).
        #[arg(long)]
        site: Option<String>,
        /// Fleet CA PEM file (overrides coordinator.ca_file).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Root of trust anchor file (overrides agent.root_file).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what is installed, assigned, queued, and the last contact and health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Defer installs on this site for a bounded time (e.g. 6h, 2d, 1h30m).
    Defer {
        duration: String,
        /// Why (shown to operators).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lift a local deferral.
    Resume {
        #[arg(long)]
        json: bool,
    },
    /// Import an air-gapped bundle (verified exactly like network documents).
    ImportBundle {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the queued reports to a file signed with the device key, for an operator to
    /// carry to the coordinator (`fleetwave site import-reports FILE`). The events stay
    /// queued: the coordinator applies each once, by file or online.
    ExportReports {
        /// Where to write the file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run readiness and health checks now and print them; exit 0 only if all pass.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Internal: watch a self-update and restore the previous agent if the new one does not
    /// commit in time.
    #[command(hide = true)]
    SelfUpdateGuard {
        #[arg(long)]
        sha256: String,
        #[arg(long)]
        rollout: String,
        #[arg(long)]
        sequence: u64,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print it with every default filled in.
    Check,
}
