//! `fleetwave-coordinator`: serve, check a config, create a local setup, back up, restore,
//! migrate the state from SQLite to PostgreSQL.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleetwave_coordinator::backup;
use fleetwave_coordinator::config::{Config, StorageBackend};
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
    /// Copy a coordinator's state from its SQLite file into an empty PostgreSQL database
    /// (the coordinator must be stopped), then verify every table's row count and
    /// checksum on both sides; nothing is committed unless every table matches.
    MigrateStore {
        /// The coordinator's SQLite file (`database`, default
        /// /var/lib/fleetwave-coordinator/coordinator.db).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database, `postgres://user@host:5432/dbname?sslmode=require`.
        #[arg(long)]
        to: String,
        /// File holding the database password (one line), if the URL has none.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// PEM file of the certificate authorities for the database server's certificate
        /// (default: the system's roots).
        #[arg(long)]
        ca_file: Option<PathBuf>,
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

/// `backup` and `restore` work on the SQLite file; PostgreSQL has its own tools.
fn refuse_postgres(config: &Config, command: &str) -> anyhow::Result<()> {
    if config.storage.backend == StorageBackend::Postgres {
        anyhow::bail!(
            "{command} works on the SQLite file, but this configuration keeps the state in PostgreSQL ([storage] backend = \"postgres\"): use pg_dump and pg_restore (docs/operations.md)"
        );
    }
    Ok(())
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
        Command::MigrateStore {
            from,
            to,
            password_file,
            ca_file,
        } => {
            let mut options = fleetwave_coordinator::store::PgOptions::new(to.clone());
            options.ca_file = ca_file;
            if let Some(path) = password_file {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("--password-file {}", path.display()))?;
                options.password = Some(text.trim_end_matches(['\r', '\n']).to_string());
            }
            let tables = fleetwave_coordinator::store::migrate::migrate_store(&from, &options)?;
            println!(
                "{:<24} {:>12}  sha256 of the rows (SQLite = PostgreSQL)",
                "table", "rows"
            );
            for t in &tables {
                println!(
                    "{:<24} {:>12}  {}{}",
                    t.table,
                    t.rows,
                    t.checksum,
                    if t.copied {
                        ""
                    } else {
                        "  (derived by PostgreSQL)"
                    }
                );
            }
            println!(
                "copied {} into {}: {} tables verified; set [storage] backend = \"postgres\" and url in the configuration",
                from.display(),
                fleetwave_coordinator::config::redact_url(&to),
                tables.len()
            );
            Ok(())
        }
        Command::Backup { config, out } => {
            let config = Config::load(&config)?;
            refuse_postgres(&config, "backup")?;
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
            refuse_postgres(&config, "restore")?;
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
