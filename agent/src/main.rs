//! `fleetwave-agent`: the daemon (`run`) and its local commands.
//!
//! Exit codes: 0 success; 1 failure (I/O, network, state); 2 bad usage or invalid
//! configuration; 3 not enrolled; 4 refused (a bundle or document that does not verify,
//! a deferral over the maximum); 5 `check` found failing checks. Human output by default,
//! `--json` where scripts need it. Logs go to stderr (journald under systemd).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fleetwave_agent::args::{Cli, Command, ConfigCommand};
use fleetwave_agent::config::{Config, ConfigError, valid_site_id};
use fleetwave_agent::daemon::{self, AGENT_VERSION, Context, Daemon, DaemonError};
use fleetwave_agent::decision::{self, Facts, Readiness};
use fleetwave_agent::readiness::DiskNeed;
use fleetwave_agent::state::{Deferral, Store};
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::EventBody;
use fleetwave_shared::trust::TrustState;
use jiff::SignedDuration;
use serde_json::json;

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_ENROLLED: u8 = 3;
const EXIT_REFUSED: u8 = 4;
const EXIT_CHECKS_FAILING: u8 = 5;

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            message: message.to_string(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Failure {
        Failure::new(EXIT_USAGE, e)
    }
}

impl From<DaemonError> for Failure {
    fn from(e: DaemonError) -> Failure {
        let code = match e {
            DaemonError::NotEnrolled(_) => EXIT_NOT_ENROLLED,
            _ => EXIT_FAILURE,
        };
        Failure::new(code, e)
    }
}

impl From<fleetwave_agent::state::StateError> for Failure {
    fn from(e: fleetwave_agent::state::StateError) -> Failure {
        Failure::new(EXIT_FAILURE, e)
    }
}

fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // `FLEETWAVE_LOG` holds `target=level` directives (e.g. `info,fleetwave_agent=debug`);
    // `Targets` parses them without a regex engine, which keeps the agent small.
    let filter = std::env::var("FLEETWAVE_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    if under_journald {
        // journald stamps every line itself.
        let layer = layer.without_time();
        tracing_subscriber::registry()
            .with(layer)
            .with(filter)
            .init();
    } else {
        tracing_subscriber::registry()
            .with(layer)
            .with(filter)
            .init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetwave-agent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("fleetwave-agent: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8, Failure> {
    let path = cli.config.as_path();
    match cli.command {
        Command::Run => {
            let config = Config::load(path)?;
            Daemon::new(config, path)?.run().await?;
            Ok(0)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let config = Config::load(path)?;
            println!("# {} is valid; effective configuration:", path.display());
            print!("{}", config.to_toml());
            Ok(0)
        }
        Command::Enroll {
            token,
            coordinator,
            site,
            ca,
            root,
            json,
        } => enroll(path, token, coordinator, site, ca, root, json).await,
        Command::Status { json } => status(path, json),
        Command::Defer {
            duration,
            reason,
            json,
        } => defer(path, &duration, reason, json).await,
        Command::Resume { json } => resume(path, json).await,
        Command::ImportBundle { file, json } => import_bundle(path, &file, json),
        Command::ExportReports { out, json } => export_reports(path, &out, json),
        Command::Check { json } => check(path, json).await,
        Command::SelfUpdateGuard {
            sha256,
            rollout,
            sequence,
        } => self_update_guard(path, &sha256, &rollout, sequence).await,
    }
}

/// The config for `enroll`: the file if it exists, else defaults; flags override.
fn enroll_config(
    path: &Path,
    coordinator: Option<String>,
    site: Option<String>,
    ca: Option<PathBuf>,
    root: Option<PathBuf>,
) -> Result<Config, Failure> {
    let mut text = if path.exists() {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::new(EXIT_USAGE, format!("cannot read {}: {e}", path.display())))?
    } else {
        String::new()
    };
    if !text.contains("[coordinator]") {
        text.push_str("\n[coordinator]\nurl = \"\"\n");
    }
    let mut config = Config::parse(&text, &path.display().to_string())?;
    if let Some(url) = coordinator {
        config.coordinator.url = url;
    }
    if let Some(site) = site {
        config.agent.site_id = site;
    }
    if let Some(ca) = ca {
        config.coordinator.ca_file = ca;
    }
    if let Some(root) = root {
        config.agent.root_file = root;
    }
    // Validate the overridden values the same way as a file.
    Config::parse(&config.to_toml(), "command line").map_err(Failure::from)
}

async fn enroll(
    path: &Path,
    token: String,
    coordinator: Option<String>,
    site: Option<String>,
    ca: Option<PathBuf>,
    root: Option<PathBuf>,
    json: bool,
) -> Result<u8, Failure> {
    let config = enroll_config(path, coordinator, site, ca, root)?;
    if config.coordinator.url.is_empty() {
        return Err(Failure::new(
            EXIT_USAGE,
            "no coordinator URL: pass --coordinator or set coordinator.url",
        ));
    }
    let site_id = config.agent.site_id.clone();
    if !valid_site_id(&site_id) {
        return Err(Failure::new(
            EXIT_USAGE,
            "no site id: pass --site ID or set agent.site_id",
        ));
    }
    let anchor_bytes = std::fs::read(&config.agent.root_file).map_err(|e| {
        Failure::new(
            EXIT_USAGE,
            format!(
                "cannot read the root of trust {}: {e}",
                config.agent.root_file.display()
            ),
        )
    })?;
    let anchor = Envelope::from_json(&anchor_bytes).map_err(|e| {
        Failure::new(
            EXIT_REFUSED,
            format!(
                "{} is not a root envelope: {e}",
                config.agent.root_file.display()
            ),
        )
    })?;
    let mut trust = TrustState::from_anchor(&anchor).map_err(|e| {
        Failure::new(
            EXIT_REFUSED,
            format!(
                "root of trust {} refused: {e}",
                config.agent.root_file.display()
            ),
        )
    })?;
    let store = Store::open(&config.agent.state_dir)?;
    if let (Some(_), Some(existing)) = (store.trust()?, store.meta("site_id")?) {
        return Err(Failure::new(
            EXIT_FAILURE,
            format!(
                "this box is already enrolled as site {existing:?}; to enroll again, stop the agent and remove {}",
                config.agent.state_dir.display()
            ),
        ));
    }
    let key_path = config.device_key_path();
    let key = if key_path.exists() {
        fleetwave_shared::keys::read_private_key(&key_path)
            .map_err(|e| Failure::new(EXIT_FAILURE, e))?
    } else {
        let key = fleetwave_shared::keys::generate();
        fleetwave_shared::keys::write_key_pair(&key_path, &key)
            .map_err(|e| Failure::new(EXIT_FAILURE, e))?;
        key
    };
    let http = fleetwave_agent::client::http_client(&config.coordinator)
        .map_err(|e| Failure::new(EXIT_FAILURE, e))?;
    // Each configured coordinator in turn, while the one asked cannot be reached.
    let mut answer = None;
    let mut unreachable = Vec::new();
    for url in config.coordinator.urls() {
        let named_box = config.site_box.named();
        match fleetwave_agent::client::enroll(&http, &url, &token, &site_id, named_box, &key).await
        {
            Ok(a) => {
                answer = Some(a);
                break;
            }
            Err(e) if e.is_unreachable() => unreachable.push(format!("{url}: {e}")),
            Err(e) => {
                return Err(Failure::new(
                    EXIT_FAILURE,
                    format!("enrollment failed: {e}"),
                ));
            }
        }
    }
    let answer = answer.ok_or_else(|| {
        Failure::new(
            EXIT_FAILURE,
            format!(
                "enrollment failed: no coordinator could be reached ({})",
                unreachable.join("; ")
            ),
        )
    })?;
    let version = trust.update_root(&answer.roots).map_err(|e| {
        Failure::new(
            EXIT_REFUSED,
            format!("the coordinator's root chain does not follow from the anchor: {e}"),
        )
    })?;
    store.save_trust(&trust.persisted())?;
    store.set_meta("site_id", &answer.site_id)?;
    if let Some((box_id, _)) = config.site_box.named() {
        store.set_meta("box_id", box_id)?;
    }
    store.set_meta(
        "labels",
        &serde_json::to_string(&answer.labels).unwrap_or_default(),
    )?;
    // Enrolling runs before there is a context: the system clock, read here.
    let now = fleetwave_agent::clock::Clock::system().now();
    store.set_meta("enrolled_at", &now.to_string())?;
    store.set_meta("last_contact", &now.to_string())?;
    if json {
        println!(
            "{}",
            json!({"site_id": answer.site_id, "box_id": config.site_box.id, "role": config.site_box.role, "labels": answer.labels, "root_version": version, "device_key": key_path})
        );
    } else {
        println!(
            "enrolled as box {}{} of site {} (root version {version})",
            config.site_box.id,
            if config.site_box.role.is_empty() {
                String::new()
            } else {
                format!(" (role {})", config.site_box.role)
            },
            answer.site_id
        );
        println!("device key: {}", key_path.display());
        for (k, v) in &answer.labels {
            println!("label {k}={v}");
        }
    }
    Ok(0)
}

/// The assignment's fields for display (verified when `valid`).
fn describe_assignment(ctx: &Context) -> Result<serde_json::Value, Failure> {
    let Some(stored) = ctx.store.assignment()? else {
        return Ok(serde_json::Value::Null);
    };
    Ok(match ctx.evaluate(&stored.assignment, &stored.release) {
        Ok(a) => json!({
            "valid": true,
            "rollout_id": a.assignment.rollout_id,
            "wave": a.assignment.wave,
            "sequence": a.assignment.sequence,
            "rollback": a.assignment.rollback,
            "not_before": a.assignment.not_before,
            "expires": a.assignment.expires,
            "window": a.assignment.window,
            "release_id": a.release.id,
            "stream": a.release.name,
            "version": a.release.version,
            "kind": a.release.kind.as_str(),
            "accepted_at": stored.accepted_at,
        }),
        Err(r) => json!({"valid": false, "refusal": r.code(), "message": r.to_string()}),
    })
}

fn status(path: &Path, json_out: bool) -> Result<u8, Failure> {
    let config = Config::load(path)?;
    let ctx = Context::open(config)?;
    let installed = ctx.store.installed()?;
    let assignment = describe_assignment(&ctx)?;
    let last = ctx.store.journal_recent(1)?.into_iter().next();
    // A rollback of the newest install that failed: still being retried, or given up.
    let rollback_failing = match &last {
        Some(e) => daemon::RollbackFailing::load(&ctx.store, e.id)?,
        None => None,
    };
    let install = last.map(|e| {
        json!({
            "rollout_id": e.rollout_id, "sequence": e.sequence, "release_id": e.release_id,
            "step": e.step.as_str(), "state": e.state.as_str(), "started_at": e.started_at,
            "updated_at": e.updated_at, "finished_at": e.finished_at, "outcome": e.outcome,
            "detail": e.detail,
        })
    });
    let health: Option<serde_json::Value> = ctx
        .store
        .meta("last_health")?
        .and_then(|t| serde_json::from_str(&t).ok());
    let counts = ctx.store.outbox_counts()?;
    let queued: u64 = counts.iter().map(|(_, n)| n).sum();
    let deferral = ctx.store.deferral()?.filter(|d| d.until > ctx.clock.now());
    let dead_counts = ctx.store.dead_letter_counts()?;
    let dead_total: u64 = dead_counts.iter().map(|(_, n)| n).sum();
    let dead_recent = ctx.store.dead_letters(10)?;
    let signals = fleetwave_agent::signals::load_statuses(&ctx.store, &ctx.config.signals)?;
    let signals_queued = ctx.store.signals_len()?;
    let signals_dropped = ctx.store.signals_dropped()?;
    let signals_delivery = ctx
        .store
        .meta(fleetwave_agent::daemon::SIGNAL_DELIVERY_KEY)?;
    let value = json!({
        "site_id": ctx.site_id,
        "agent_version": AGENT_VERSION,
        "root_version": ctx.trust.root().version,
        "last_contact": ctx.store.meta("last_contact")?,
        "installed": installed,
        "assignment": assignment,
        "last_install": install,
        "rollback_failing": rollback_failing,
        "deferral": deferral,
        "health": health,
        "signals": signals,
        "signal_queue": {
            "queued_minutes": signals_queued,
            "dropped": signals_dropped,
            "delivery": signals_delivery,
        },
        "queued_reports": {"total": queued, "by_kind": counts.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()},
        "dead_letters": {
            "total": dead_total,
            "by_kind": dead_counts.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "recent": dead_recent,
        },
    });
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(0);
    }
    println!("site          {}", ctx.site_id);
    println!(
        "agent         {AGENT_VERSION} (root version {})",
        ctx.trust.root().version
    );
    println!(
        "last contact  {}",
        value["last_contact"].as_str().unwrap_or("never")
    );
    if installed.is_empty() {
        println!("installed     nothing yet");
    }
    for i in &installed {
        println!(
            "installed     {} {} ({}), committed {}; previous {}",
            i.stream,
            i.version,
            i.release_id,
            i.committed_at,
            i.previous_release_id.as_deref().unwrap_or("none")
        );
    }
    match &value["assignment"] {
        serde_json::Value::Null => println!("assigned      nothing"),
        a if a["valid"] == true => println!(
            "assigned      {} {} ({}) by rollout {} wave {}, sequence {}{}; not before {}, expires {}",
            a["stream"].as_str().unwrap_or(""),
            a["version"].as_str().unwrap_or(""),
            a["release_id"].as_str().unwrap_or(""),
            a["rollout_id"].as_str().unwrap_or(""),
            a["wave"],
            a["sequence"],
            if a["rollback"] == true {
                " (rollback)"
            } else {
                ""
            },
            a["not_before"].as_str().unwrap_or(""),
            a["expires"].as_str().unwrap_or("")
        ),
        a => println!(
            "assigned      refused: {}",
            a["message"].as_str().unwrap_or("")
        ),
    }
    if let Some(i) = &value["last_install"].as_object() {
        println!(
            "last install  {} step {} ({}), {}",
            i["release_id"].as_str().unwrap_or(""),
            i["step"].as_str().unwrap_or(""),
            i["state"].as_str().unwrap_or(""),
            i["outcome"]
                .as_str()
                .map(|o| format!("outcome {o}"))
                .unwrap_or_else(|| "in progress".into())
        );
    }
    if let Some(f) = &rollback_failing {
        match f.next_try_at {
            Some(next) => println!(
                "rollback      FAILING: attempt {} of {} failed at {}; next try at {next}: {}",
                f.failures, f.attempts, f.failed_at, f.last_error
            ),
            None => println!(
                "rollback      FAILED {} times, gave up at {} (the box needs an operator): {}",
                f.failures, f.failed_at, f.last_error
            ),
        }
        if !f.output.is_empty() {
            for line in f.output.lines() {
                println!("              | {line}");
            }
        }
    }
    match &deferral {
        Some(d) => println!(
            "deferred      until {}{}",
            d.until,
            d.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        None => println!("deferred      no"),
    }
    match &health {
        Some(h) => {
            let failing: Vec<String> = h["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["passed"] == false)
                .map(|c| {
                    format!(
                        "{}: {}",
                        c["name"].as_str().unwrap_or(""),
                        c["reason"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let at = h["at"].as_str().unwrap_or("");
            if failing.is_empty() {
                println!("health        healthy at {at}");
            } else {
                println!("health        UNHEALTHY at {at}: {}", failing.join("; "));
            }
        }
        None => println!("health        not sampled yet"),
    }
    for (stream, status) in &signals {
        for line in fleetwave_agent::signals::status_lines(stream, status.as_ref()) {
            println!("signals       {line}");
        }
    }
    if !signals.is_empty() || signals_queued > 0 || signals_dropped.minutes > 0 {
        for line in fleetwave_agent::signals::queue_lines(
            signals_queued,
            &signals_dropped,
            signals_delivery.as_deref(),
        ) {
            println!("signals       {line}");
        }
    }
    let kinds: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "queued        {queued} report(s){}",
        if kinds.is_empty() {
            String::new()
        } else {
            format!(": {}", kinds.join(", "))
        }
    );
    if dead_total > 0 {
        let kinds: Vec<String> = dead_counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        println!(
            "dead letters  {dead_total} report(s) the coordinator refused, kept in agent.db: {}",
            kinds.join(", ")
        );
        for d in &dead_recent {
            println!(
                "              {} {} at {}: {} {}: {}",
                d.kind, d.id, d.refused_at, d.refused.status, d.refused.code, d.refused.message
            );
        }
    }
    Ok(0)
}

/// Sends queued reports now, if the coordinator answers within a few seconds.
async fn deliver_now(ctx: &Context) -> usize {
    let Ok(Some(session)) = ctx.session() else {
        return 0;
    };
    tokio::time::timeout(
        Duration::from_secs(15),
        daemon::deliver_reports(ctx, &session),
    )
    .await
    .unwrap_or(0)
}

async fn defer(
    path: &Path,
    duration: &str,
    reason: Option<String>,
    json_out: bool,
) -> Result<u8, Failure> {
    let config = Config::load(path)?;
    let ctx = Context::open(config)?;
    let max = SignedDuration::from_secs(ctx.config.install.max_defer_secs as i64);
    let now = ctx.clock.now();
    let until = decision::parse_duration(duration)
        .and_then(|d| decision::defer_until(now, d, max))
        .map_err(|e| Failure::new(EXIT_REFUSED, e))?;
    ctx.store.set_deferral(&Deferral {
        until,
        reason: reason.clone(),
        set_at: now,
    })?;
    ctx.report(EventBody::Deferral {
        until: Some(until),
        reason: reason.clone(),
    })?;
    let delivered = deliver_now(&ctx).await > 0;
    if json_out {
        println!(
            "{}",
            json!({"deferred_until": until, "reason": reason, "reported": delivered})
        );
    } else {
        println!(
            "installs deferred until {until}{}",
            if delivered {
                ""
            } else {
                " (the coordinator is told at the next contact)"
            }
        );
    }
    Ok(0)
}

async fn resume(path: &Path, json_out: bool) -> Result<u8, Failure> {
    let config = Config::load(path)?;
    let ctx = Context::open(config)?;
    let had = ctx.store.clear_deferral()?;
    if had {
        ctx.report(EventBody::Deferral {
            until: None,
            reason: None,
        })?;
    }
    let delivered = had && deliver_now(&ctx).await > 0;
    if json_out {
        println!("{}", json!({"was_deferred": had, "reported": delivered}));
    } else if had {
        println!("deferral lifted; installs may start again");
    } else {
        println!("no deferral was set");
    }
    Ok(0)
}

fn import_bundle(path: &Path, file: &Path, json_out: bool) -> Result<u8, Failure> {
    use fleetwave_agent::bundle::{BundleError, import};
    let config = Config::load(path)?;
    let mut ctx = Context::open(config)?;
    match import(&mut ctx, file) {
        Ok(done) => {
            if json_out {
                println!("{}", serde_json::to_string(&done).unwrap_or_default());
            } else {
                println!(
                    "imported {}: release {} (rollout {}, sequence {}), {} artifact(s) staged{}",
                    file.display(),
                    done.release_id.as_deref().unwrap_or("?"),
                    done.rollout_id.as_deref().unwrap_or("?"),
                    done.sequence.map(|s| s.to_string()).unwrap_or_default(),
                    done.artifacts.len(),
                    if done.new_assignment {
                        ""
                    } else {
                        "; this assignment was already known"
                    }
                );
            }
            Ok(0)
        }
        Err(e @ (BundleError::Refused { .. } | BundleError::Artifact { .. })) => {
            if json_out {
                println!("{}", json!({"error": e.to_string()}));
            }
            Err(Failure::new(EXIT_REFUSED, e))
        }
        Err(e @ (BundleError::Malformed(_) | BundleError::Unsafe(_))) => {
            Err(Failure::new(EXIT_REFUSED, e))
        }
        Err(e) => Err(Failure::new(EXIT_FAILURE, e)),
    }
}

fn export_reports(path: &Path, out: &Path, json_out: bool) -> Result<u8, Failure> {
    let config = Config::load(path)?;
    let ctx = Context::open(config)?;
    let done = fleetwave_agent::report_file::export(&ctx, out)
        .map_err(|e| Failure::new(EXIT_FAILURE, e))?;
    if json_out {
        println!("{}", serde_json::to_string(&done).unwrap_or_default());
    } else {
        println!(
            "wrote {}: {} event(s) of site {} ({} bytes), signed with the device key{}",
            out.display(),
            done.events,
            done.site_id,
            done.bytes,
            if done.left_out > 0 {
                format!(
                    "; {} newer event(s) did not fit in one file and stay queued (they are \
                     sent when the box is online)",
                    done.left_out
                )
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

async fn check(path: &Path, json_out: bool) -> Result<u8, Failure> {
    let config = Config::load(path)?;
    let ctx = Context::open(config)?;
    let health = ctx.health()?;
    let stored = ctx.store.assignment()?;
    let accepted = stored
        .as_ref()
        .and_then(|s| ctx.evaluate(&s.assignment, &s.release).ok());
    let artifact_bytes = accepted
        .as_ref()
        .map(|a| a.release.artifacts.iter().map(|x| x.length).sum())
        .unwrap_or(0);
    let sample = health
        .readiness(&DiskNeed {
            path: ctx.config.staging_dir(),
            artifact_bytes,
        })
        .await;
    daemon::record_sample(
        &ctx.store,
        &sample,
        ctx.config.outbox.max_events,
        ctx.clock.now(),
    );
    let failing: Vec<String> = sample
        .failing()
        .map(|c| format!("{}: {}", c.name, c.reason))
        .collect();
    let decision = accepted.as_ref().map(|a| {
        let zone = ctx.config.time_zone();
        let deferred_until = ctx.store.deferral().ok().flatten().map(|d| d.until);
        decision::readiness(
            &Facts {
                assignment: &a.assignment,
                zone: &zone,
                deferred_until,
                failing_checks: &failing,
            },
            ctx.trust.effective_now(ctx.clock.now()),
        )
    });
    let decision_text = match &decision {
        None => "no assignment".to_string(),
        Some(Readiness::Ready) => "ready: would ask for a lease now".to_string(),
        Some(Readiness::Wait(w)) => format!("waiting: {}", w.detail()),
        Some(Readiness::Expired { expires }) => format!("assignment expired at {expires}"),
    };
    if json_out {
        println!(
            "{}",
            json!({"healthy": sample.healthy(), "checks": sample.checks, "readiness": decision_text})
        );
    } else {
        for c in &sample.checks {
            println!(
                "{} {:<24} {}",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.reason
            );
        }
        println!("readiness: {decision_text}");
    }
    Ok(if sample.healthy() {
        0
    } else {
        EXIT_CHECKS_FAILING
    })
}

async fn self_update_guard(
    path: &Path,
    sha256: &str,
    rollout: &str,
    sequence: u64,
) -> Result<u8, Failure> {
    let config = Config::load(path)?;
    let period = Duration::from_secs(config.health.verify.period_secs)
        + Duration::from_secs(config.health.verify.interval_secs * 2)
        + Duration::from_secs(60);
    let state_dir = config.agent.state_dir.clone();
    let confirmed = async || -> bool {
        // The new agent committed the release (its journal says so).
        Store::open(&state_dir)
            .and_then(|s| s.journal_finished_for(rollout, sequence))
            .ok()
            .flatten()
            .is_some_and(|e| e.outcome.as_deref() == Some("committed"))
    };
    let outcome = fleetwave_agent::executor::self_update::guard(
        &config.executor.self_update,
        sha256,
        period,
        Duration::from_secs(5),
        confirmed,
    )
    .await
    .map_err(|e| Failure::new(EXIT_FAILURE, format!("self-update guard: {e}")))?;
    tracing::info!(?outcome, "self-update guard finished");
    Ok(0)
}
