//! Build helpers that must not live in a shipped binary.
//!
//! `cargo run -p xtask -- agent-completions SHELL` prints the shell completion script of
//! `fleetwave-agent` (bash, zsh, fish, ...), generated from the agent's clap definition
//! (`fleetwave_agent::args`); `cargo run -p xtask -- agent-man DIR [--extra FILE]` writes
//! its manual pages (one per command, `fleetwave_shared::man`). The agent binary itself does not link `clap_complete`: it
//! runs on small edge boxes and its size is budgeted (docs/operations.md). The CLI and the
//! coordinator print their own: `fleetwave completions SHELL`,
//! `fleetwave-coordinator completions SHELL`.

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Parser)]
#[command(name = "xtask", about = "fleetwave build helpers")]
struct Xtask {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Print the shell completion script of fleetwave-agent.
    AgentCompletions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
    /// Write the manual pages of fleetwave-agent into DIR.
    AgentMan {
        dir: std::path::PathBuf,
        /// Hand-written roff for the top page (deploy/debian/man/fleetwave-agent.roff).
        #[arg(long)]
        extra: Option<std::path::PathBuf>,
    },
}

fn main() -> std::io::Result<()> {
    match Xtask::parse().command {
        Task::AgentCompletions { shell } => {
            let mut cmd = fleetwave_agent::args::Cli::command();
            clap_complete::generate(shell, &mut cmd, "fleetwave-agent", &mut std::io::stdout());
            Ok(())
        }
        Task::AgentMan { dir, extra } => fleetwave_shared::man::print_pages(
            fleetwave_agent::args::Cli::command(),
            extra.as_deref(),
            &dir,
        ),
    }
}
