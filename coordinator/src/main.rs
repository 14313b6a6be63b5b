//! `fleetwave-coordinator`: serve, check a config, create a local setup, back up, restore.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetwave_coordinator::backup;
use fleetwave_coordinator::config::Config;
use fleetwave_coordinator::init::{InitOptions, init};
use fleetwave_coordinator::server::{Transport, serve};

#[derive(Parser)]
#[command(
    name = "fleetwave-coordinator",
    version,
    about = "fleetwave coordinator: signed release waves for edge fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (TLS unless --insecure-plain-http).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Serve plain HTTP without TLS. Local development only: agents and operators
        /// would send tokens in clear text.
        #[arg(long)]
        insecure_plain_http: bool,
        /// Override `listen` from the config.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write a consistent copy of the database (safe while serving) and the artifacts into
    /// a backup directory.
    Backup {
        #[arg(long, short)]
        config: PathBuf,
        /// Directory for `coordinator-<time>.db` and `artifacts/` (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup in place of the database (the coordinator must be stopped). The old
    /// files move to `pre-restore-<time>/`; every site's assignment sequence moves ahead.
    Restore {
        #[arg(long, short)]
        config: PathBuf,
        /// The `coordinator-<time>.db` file a backup wrote.
        #[arg(long)]
        from: PathBuf,
        /// The backup's `artifacts/` directory: missing artifacts are copied (verified).
        #[arg(long)]
        artifacts: Option<PathBuf>,
    },
    /// Create a ready-to-run local setup (CA, server certificate, keys, admin token, config).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Root envelope (version 1) made with the `fleetwave` CLI.
        #[arg(long, requires = "coordinator_key")]
        root: Option<PathBuf>,
        /// The coordinator private key that --root lists under role coordinator.
        #[arg(long)]
        coordinator_key: Option<PathBuf>,
        /// Generate development root and release keys into DIR/offline-keys/ (NOT for production).
        #[arg(long, conflicts_with = "root")]
        dev_root: bool,
        /// Address the generated config listens on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell); the Debian
    /// package installs them (docs/cli.md).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (one per command and subcommand, from these clap
    /// definitions) into DIR; the Debian package installs them (docs/cli.md).
    #[command(hide = true)]
    Man {
        /// Where to write `NAME.1`, `NAME-SUBCOMMAND.1`, ...
        dir: PathBuf,
        /// Hand-written roff for the top page (deploy/debian/man/NAME.roff).
        #[arg(long)]
        extra: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file and print the effective configuration.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEETWAVE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Man { dir, extra } => Ok(fleetwave_shared::man::print_pages(
            <Cli as clap::CommandFactory>::command(),
            extra.as_deref(),
            &dir,
        )?),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(
                shell,
                &mut cmd,
                "fleetwave-coordinator",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Serve {
            config,
            insecure_plain_http,
            listen,
        } => {
            let mut config = Config::load(&config)?;
            if let Some(l) = listen {
                config.listen = l;
            }
            let transport = if insecure_plain_http {
                Transport::InsecurePlainHttp
            } else {
                Transport::Tls
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(config, transport))
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let config = Config::load(&config)?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Backup { config, out } => {
            let config = Config::load(&config)?;
            let r = backup::backup(&config, &out, jiff::Timestamp::now())?;
            println!("database:  {} (integrity check: ok)", r.database.display());
            println!(
                "artifacts: {} copied, {} already in {}",
                r.artifacts_copied,
                r.artifacts_already_there,
                out.join("artifacts").display()
            );
            println!(
                "also keep a copy of the configuration directory (keys, TLS): it is not in the backup"
            );
            Ok(())
        }
        Command::Restore {
            config,
            from,
            artifacts,
        } => {
            let config = Config::load(&config)?;
            let r = backup::restore(&config, &from, artifacts.as_deref(), jiff::Timestamp::now())?;
            println!(
                "restored {} into {}",
                from.display(),
                config.database_path().display()
            );
            if let Some(p) = &r.previous {
                println!("previous database files kept in {}", p.display());
            }
            println!(
                "{} site(s): assignment sequences moved {} ahead; {} artifact(s) copied",
                r.sites,
                backup::SEQUENCE_JUMP,
                r.artifacts_copied
            );
            Ok(())
        }
        Command::Init {
            dir,
            root,
            coordinator_key,
            dev_root,
            listen,
        } => {
            let out = init(&InitOptions {
                dir,
                root,
                coordinator_key,
                dev_root,
                listen,
            })?;
            if let Some(offline) = &out.offline_keys {
                eprintln!(
                    "WARNING: --dev-root generated ROOT and RELEASE private keys in {}.",
                    offline.display()
                );
                eprintln!(
                    "WARNING: these keys are for development only; a production root is made offline with `fleetwave`."
                );
            }
            println!("config:      {}", out.config.display());
            println!("CA cert:     {}", out.ca_cert.display());
            println!(
                "admin token: {} (file, 0600)",
                out.admin_token_file.display()
            );
            println!(
                "start with:  fleetwave-coordinator serve --config {}",
                out.config.display()
            );
            Ok(())
        }
    }
}
