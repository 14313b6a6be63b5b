//! `fleetwave`, the operator CLI: the clap command tree, dispatch, and exit codes.
//!
//! Each area (`key`, `envelope`, `root`, `release`, `site`, `rollout`, ...) is one
//! subcommand enum here; the work is done in a module per concern (`trust_cmds` for keys,
//! signing and verification offline, `api` for the commands that talk to a coordinator,
//! `demo` for the one-command quickstart).
//! To add an area or a command: add a variant to the area's enum (or a new area to
//! [`Command`]) pointing at an `Args` struct in its module, and one line in [`dispatch`].
//!
//! Exit codes mean the same everywhere: 0 done, 1 refused (a signature or document was
//! checked and refused, or the coordinator refused the request; one line on stderr names
//! the file or the server's code and message), 2 anything else (bad usage, a file that
//! cannot be read or written, an invalid manifest, no connection). `rollout status
//! --watch` adds how the watched rollout ended: 3 halted, 4 rolled back, 5 aborted,
//! 6 its `--timeout` passed ([`api::rollouts::WatchEnded`]). This module must never
//! print secrets: private key material is only ever read by `trust_cmds`.

mod api;
mod demo;
mod manifest;
mod trust_cmds;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const ABOUT: &str = "fleetwave operator CLI: keys and signing, publishing, sites, rollouts, \
                     and a one-command demo";

const LONG_ABOUT: &str = "\
fleetwave operator CLI.

fleetwave agents install only what the fleet's offline keys signed. This tool makes those
keys and signatures, and checks them exactly as an agent does:

  key        create ed25519 key pairs (private file mode 0600, public file .pub)
  envelope   sign or verify any payload as a DSSE envelope
  root       create, sign (two-person rule, rotation) and verify the root of trust
  release    sign a release from a TOML or JSON manifest
  verify     check a release or an assignment against a root, as an agent would

Talking to a coordinator (HTTPS pinned to the fleet CA):

  site       list, show, label, decommission, re-enable, rekey and import sites
  token      enrollment tokens for agents, operator tokens for people and CI
  release    publish signed releases, list and show them
  artifact   upload artifacts (content-addressed by SHA-256)
  root       publish a root rotation
  rollout    create, start, pause, resume, approve, abort, roll back, skip, status
  freeze     list, add and end fleet-wide freezes (no installs while one is in force)
  webhook    list, add, show and remove webhook endpoints; their delivery log
  audit      who changed what, when, from where
  demo       a coordinator and a dozen real agents on this machine, two rollouts

The coordinator, token and CA come from --url/--token/--ca, else FLEETWAVE_URL,
FLEETWAVE_TOKEN, FLEETWAVE_CA, else ~/.config/fleetwave/cli.toml (url, token or
token_file, ca). Human output by default; --json for scripts.

Exit codes: 0 done; 1 refused (a signature or document did not pass, or the coordinator
refused the request; one line on stderr names the file, or the server's status, code and
message); 2 usage, I/O or connection error. `rollout status --watch` also exits 3 when
the rollout halted, 4 rolled back, 5 aborted, 6 when its --timeout passed.

See docs/cli.md for every command, docs/trust-model.md for the model behind them.";

const EXAMPLES: &str = "\
Examples (a new fleet, offline):
  fleetwave key generate --out root-1.key
  fleetwave key generate --out release-1.key
  fleetwave key generate --out coordinator.key
  fleetwave root init --root-key root-1.key.pub --release-key release-1.key.pub \\
      --coordinator-key coordinator.key.pub --out root.json
  fleetwave root sign --key root-1.key --out root-v1.envelope.json root.json
  fleetwave root verify root-v1.envelope.json
  fleetwave release sign --key release-1.key release.toml --out pos-2.4.0.envelope.json
  fleetwave verify --root root-v1.envelope.json --release pos-2.4.0.envelope.json

Examples (online):
  export FLEETWAVE_URL=https://fleet.example.com:8443 FLEETWAVE_CA=fleet-ca.pem FLEETWAVE_TOKEN=fwo_...
  fleetwave artifact upload dist/pos-2.4.0.tar.gz
  fleetwave release publish pos-2.4.0.envelope.json
  fleetwave rollout create rollout.toml --start
  fleetwave rollout status ro-1a2b3c --watch --timeout 2h   # exit 0 only if it completes";

/// The operator CLI.
#[derive(Debug, Parser)]
#[command(
    name = "fleetwave",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The areas of the CLI.
#[derive(Debug, Subcommand)]
enum Command {
    /// Create ed25519 signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sign or verify any payload as a DSSE envelope.
    #[command(subcommand)]
    Envelope(EnvelopeCommand),
    /// Create, sign and verify the fleet's root of trust (and its rotations).
    #[command(subcommand)]
    Root(RootCommand),
    /// Sign releases offline; publish, list and show them on the coordinator.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Upload artifacts to the coordinator's content-addressed store.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Sites: list, show, label, decommission, re-enable, rekey (a re-imaged box), import.
    #[command(subcommand)]
    Site(api::sites::SiteCommand),
    /// Enrollment tokens (agents) and operator tokens (people, CI).
    #[command(subcommand)]
    Token(api::sites::TokenCommand),
    /// Rollouts: one release through its waves.
    #[command(subcommand)]
    Rollout(api::rollouts::RolloutCommand),
    /// Bundles for air-gapped sites: export one to a file for `fleetwave-agent import-bundle`.
    #[command(subcommand)]
    Bundle(api::bundles::BundleCommand),
    /// Fleet-wide freezes: list, add, end (no site installs while one is in force).
    #[command(subcommand)]
    Freeze(api::freezes::FreezeCommand),
    /// Channels: the release each set of sites should run; sites off it converge to it.
    #[command(subcommand)]
    Channel(api::channels::ChannelCommand),
    /// Webhook endpoints (admin role): list, add, show, remove, test; their delivery log.
    #[command(subcommand)]
    Webhook(api::webhooks::WebhookCommand),
    /// The audit log: every change, who made it, when, from where.
    Audit(api::sites::AuditArgs),
    /// Run a whole demo fleet on this machine: a coordinator, real agents, two rollouts.
    #[command(long_about = demo::LONG_ABOUT)]
    Demo(demo::DemoArgs),
    /// Internal: stops a demo's apps when the demo process ends, however it ends.
    #[command(hide = true)]
    DemoGuard(demo::GuardArgs),
    /// Check a release, or an assignment and its release, against a root, as an agent would.
    #[command(
        long_about = trust_cmds::VERIFY_LONG_ABOUT,
        after_help = trust_cmds::VERIFY_EXAMPLES
    )]
    Verify(trust_cmds::VerifyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell); the Debian
    /// package installs them (docs/cli.md).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (one per command and subcommand, from these clap
    /// definitions) into DIR; the Debian package installs them (docs/cli.md).
    #[command(hide = true)]
    Man {
        /// Where to write `NAME.1`, `NAME-SUBCOMMAND.1`, ...
        dir: std::path::PathBuf,
        /// Hand-written roff for the top page (deploy/debian/man/NAME.roff).
        #[arg(long)]
        extra: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Generate a key pair: PATH (private, mode 0600) and PATH.pub; prints the key id.
    #[command(
        long_about = trust_cmds::KEY_GENERATE_LONG_ABOUT,
        after_help = trust_cmds::KEY_GENERATE_EXAMPLES
    )]
    Generate(trust_cmds::KeyGenerateArgs),
}

#[derive(Debug, Subcommand)]
enum EnvelopeCommand {
    /// Sign FILE as a DSSE envelope (one signature per key); prints the envelope JSON.
    #[command(
        long_about = trust_cmds::ENVELOPE_SIGN_LONG_ABOUT,
        after_help = trust_cmds::ENVELOPE_SIGN_EXAMPLES
    )]
    Sign(trust_cmds::EnvelopeSignArgs),
    /// Verify a DSSE envelope against public keys; prints the verified payload.
    #[command(
        long_about = trust_cmds::ENVELOPE_VERIFY_LONG_ABOUT,
        after_help = trust_cmds::ENVELOPE_VERIFY_EXAMPLES
    )]
    Verify(trust_cmds::EnvelopeVerifyArgs),
}

#[derive(Debug, Subcommand)]
enum RootCommand {
    /// Write an unsigned root document from public key files.
    #[command(
        long_about = trust_cmds::ROOT_INIT_LONG_ABOUT,
        after_help = trust_cmds::ROOT_INIT_EXAMPLES
    )]
    Init(trust_cmds::RootInitArgs),
    /// Sign a root document, or add signatures to an existing envelope of it.
    #[command(
        long_about = trust_cmds::ROOT_SIGN_LONG_ABOUT,
        after_help = trust_cmds::ROOT_SIGN_EXAMPLES
    )]
    Sign(trust_cmds::RootSignArgs),
    /// Verify a signed root, on its own or as the rotation of the previous version.
    #[command(
        long_about = trust_cmds::ROOT_VERIFY_LONG_ABOUT,
        after_help = trust_cmds::ROOT_VERIFY_EXAMPLES
    )]
    Verify(trust_cmds::RootVerifyArgs),
    /// Publish a signed root (a rotation) to the coordinator; agents follow the chain.
    Publish(api::releases::EnvelopeFileArgs),
    /// List the root versions the coordinator holds.
    List(api::releases::ListArgs),
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Build a release from a TOML or JSON manifest and sign it with release keys.
    #[command(
        long_about = trust_cmds::RELEASE_SIGN_LONG_ABOUT,
        after_help = trust_cmds::RELEASE_SIGN_EXAMPLES
    )]
    Sign(trust_cmds::ReleaseSignArgs),
    /// Publish a signed release envelope; the coordinator verifies it against the root.
    Publish(api::releases::EnvelopeFileArgs),
    /// List published releases.
    List(api::releases::ListArgs),
    /// Show one release: stream, version, counter, digest, artifacts.
    Show(api::releases::ReleaseShowArgs),
}

#[derive(Debug, Subcommand)]
enum ArtifactCommand {
    /// Upload a file (streamed); prints its sha256, length and the URL for a manifest.
    Upload(api::releases::ArtifactUploadArgs),
}

/// A signature or document was checked and refused: exit code 1. The message is one line
/// naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct Refused {
    /// The file at fault, as the operator named it.
    pub file: String,
    /// A stable code ([`fleetwave_shared::Refusal::code`] where there is one).
    pub code: &'static str,
    pub reason: String,
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Key(KeyCommand::Generate(args)) => trust_cmds::key_generate(args),
        Command::Envelope(EnvelopeCommand::Sign(args)) => trust_cmds::envelope_sign(args),
        Command::Envelope(EnvelopeCommand::Verify(args)) => trust_cmds::envelope_verify(args),
        Command::Root(RootCommand::Init(args)) => trust_cmds::root_init(args),
        Command::Root(RootCommand::Sign(args)) => trust_cmds::root_sign(args),
        Command::Root(RootCommand::Verify(args)) => trust_cmds::root_verify(args),
        Command::Release(ReleaseCommand::Sign(args)) => trust_cmds::release_sign(args),
        Command::Verify(args) => trust_cmds::verify(args),
        Command::Man { dir, extra } => Ok(fleetwave_shared::man::print_pages(
            <Cli as clap::CommandFactory>::command(),
            extra.as_deref(),
            &dir,
        )?),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "fleetwave", &mut std::io::stdout());
            Ok(())
        }
        Command::Root(RootCommand::Publish(args)) => api::releases::root_publish(args),
        Command::Root(RootCommand::List(args)) => api::releases::root_list(args),
        Command::Release(ReleaseCommand::Publish(args)) => api::releases::release_publish(args),
        Command::Release(ReleaseCommand::List(args)) => api::releases::release_list(args),
        Command::Release(ReleaseCommand::Show(args)) => api::releases::release_show(args),
        Command::Artifact(ArtifactCommand::Upload(args)) => api::releases::artifact_upload(args),
        Command::Site(command) => api::sites::site(command),
        Command::Token(command) => api::sites::token(command),
        Command::Rollout(command) => api::rollouts::rollout(command),
        Command::Bundle(command) => api::bundles::bundle(command),
        Command::Freeze(command) => api::freezes::freeze(command),
        Command::Channel(command) => api::channels::channel(command),
        Command::Webhook(command) => api::webhooks::webhook(command),
        Command::Audit(args) => api::sites::audit(args),
        Command::Demo(args) => demo::run(args),
        Command::DemoGuard(args) => demo::guard(args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let broken_pipe = err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                // The reader (e.g. `| head`) has seen enough.
                ExitCode::SUCCESS
            } else if let Some(refused) = err.downcast_ref::<Refused>() {
                eprintln!("refused: {refused}");
                ExitCode::from(1)
            } else if let Some(refused) = err.downcast_ref::<api::ServerRefused>() {
                eprintln!("refused: {refused}");
                ExitCode::from(1)
            } else if let Some(ended) = err.downcast_ref::<api::rollouts::WatchEnded>() {
                eprintln!("watch: {ended}");
                ExitCode::from(ended.exit_code())
            } else if let Some(failed) = err.downcast_ref::<demo::StoryFailed>() {
                eprintln!("demo: {failed}");
                ExitCode::from(1)
            } else {
                eprintln!("error: {err:#}");
                ExitCode::from(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
