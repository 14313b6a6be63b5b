//! `rollout plan|create|start|pause|resume|approve|abort|rollback|skip|status|list`: one release
//! through its waves, and what the operator sees of it — the waves with their counts and
//! gate standing, and the decision timeline with reasons.
//!
//! [`render_status`], [`all_sites`] and [`Progress`] are shared with `fleetwave demo`.
//! `status --watch` follows a rollout until it ends (bars per wave on a terminal, plain
//! lines otherwise) and says how it ended in its exit code ([`watch_exit_code`]).
//! The plan file is sent as written; the coordinator validates it and names the line and
//! field at fault. A rollout's status lists only the sites that need attention (at most
//! 200); every site is read page by page from `GET /v1/rollouts/{id}/sites`.
//! `rollout plan FILE` is the dry run (`POST /v1/rollouts/plan`): it stores nothing, and
//! exits non-zero on an invalid plan so CI can check plans.
//! This module never decides anything about a rollout itself.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use fleetwave_shared::protocol::operator::{self as api, paths};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::{self, Table};
use super::{Client, ConnectArgs, encode};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Dry run of a plan file: which sites each wave would take now, which are left out
    /// and why, the earliest each wave could open. Stores nothing; exits 1 on an invalid
    /// plan (the coordinator names the line and field), so CI can check plans.
    #[command(after_help = PLAN_AFTER_HELP)]
    Plan(PlanArgs),
    /// Create a rollout from a plan file (.toml, or .json); it starts with `rollout start`.
    Create(CreateArgs),
    /// Start a created rollout: its first wave opens.
    Start(IdArgs),
    /// Pause: no new wave opens and no new lease is granted.
    Pause(ReasonArgs),
    /// Resume a paused (or halted) rollout.
    Resume(IdArgs),
    /// Approve a wave whose gate asks for a person's approval.
    Approve(ApproveArgs),
    /// Abort for good: nothing new starts; installed sites keep what they have.
    Abort(ReasonArgs),
    /// Send the rollout's sites back to their previous release.
    Rollback(ReasonArgs),
    /// Leave one site out of its wave's gate.
    Skip(SkipArgs),
    /// Install again on a failed site (--site) or on every failed site of a wave (--wave):
    /// a new attempt, counted once by the gate.
    Retry(RetryArgs),
    /// Waves with counts and gate standing, the sites that need attention, the decision
    /// timeline; --sites lists every site; --watch follows it to its end (exit code: how).
    #[command(after_help = STATUS_AFTER_HELP)]
    Status(StatusArgs),
    /// Every rollout, newest first.
    List(ListArgs),
    /// One file for a post-incident review: the plan, the timeline with the gate's
    /// numbers, every failed, silent or rolled-back site in the agent's own words with its
    /// reports around the failure, the audit entries, versions before and now.
    Export(super::export::ExportArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The plan: TOML, or JSON when the name ends in .json (see docs/waves.md).
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Start it at once.
    #[arg(long)]
    pub start: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    /// A table of waves and the sites left out, for people.
    Text,
    /// The coordinator's answer as it came (`PlanPreview` in the OpenAPI document).
    Json,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The plan: TOML, or JSON when the name ends in .json (see docs/waves.md).
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// `text` (default) or `json`; `--json` is the same as `--format json`.
    #[arg(long, value_enum, default_value = "text")]
    pub format: PlanOutput,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `rollout plan --help`, after the options.
pub const PLAN_AFTER_HELP: &str = "\
The coordinator validates the plan exactly as `rollout create` would (the same errors,
naming the line and field), places the fleet as it is now with the real wave membership,
and answers per wave: the sites (count and the first 50 ids), and the earliest the wave
could open. Earliest opens are a lower bound: every gate is assumed to pass the moment
it can (sites install as soon as their maintenance window, in their own time zone, and
the fleet's freezes allow; none fails; approvals are immediate); start_at sets the first.

Exit codes: 0 the plan is valid (the answer may still say that creating it now would be
refused, e.g. sites in another active rollout); 1 the coordinator refused it (an invalid
plan: the message names the line and field; or the token may not operate); 2 usage, I/O
or connection error.

Examples:
  fleetwave rollout plan rollout.toml
  fleetwave rollout plan rollout.toml --format json | jq '.waves[] | {name, count}'";

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The rollout id.
    pub rollout: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ReasonArgs {
    /// The rollout id.
    pub rollout: String,
    /// Why (kept in the timeline and the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The rollout id.
    pub rollout: String,
    /// The wave to approve, as numbered by `rollout status` (the first wave is 0).
    #[arg(long)]
    pub wave: u32,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct SkipArgs {
    /// The rollout id.
    pub rollout: String,
    /// The site to leave out.
    #[arg(long)]
    pub site: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["site", "wave"])))]
pub struct RetryArgs {
    /// The rollout id.
    pub rollout: String,
    /// The failed site to install on again.
    #[arg(long)]
    pub site: Option<String>,
    /// Every failed site of this wave (0 is the first).
    #[arg(long)]
    pub wave: Option<u32>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The rollout id.
    pub rollout: String,
    /// List every site with its wave, state and phase (read page by page; without it only
    /// failed, silent, rolled-back and in-progress sites are listed, at most 200).
    #[arg(long)]
    pub sites: bool,
    /// Follow the rollout until it ends: live bars per wave on a terminal, one line per
    /// change otherwise; the exit code says how it ended (see below).
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    /// With --watch: give up after this long (30s, 10m, 2h, 1d) with exit code 6.
    #[arg(long, requires = "watch", value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `--timeout`: a duration above zero.
fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    match super::sites::parse_secs(s) {
        Ok(0) => {
            Err("must be above zero (leave --timeout out to wait until the rollout ends)".into())
        }
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(e) => Err(e.to_string()),
    }
}

/// `rollout status --help`, after the options: what `--watch` does and its exit codes.
pub const STATUS_AFTER_HELP: &str = "\
With --watch, status follows the rollout until it ends. On a terminal it draws one bar
per wave (sites done of the wave's sites, with succeeded, failed and in-progress counts)
and prints decisions and failing sites above the bars; otherwise (a pipe, a CI log) it
prints one plain line per change. A pending, scheduled or paused rollout is still
watched: it may be started or resumed. The exit code says how the rollout ended:

  0  completed: every wave passed its gate
  1  refused: no such rollout, or the token may not read it (one line on stderr)
  2  usage, I/O or connection error
  3  halted: a gate failed (or the controller stopped it); the fleet said no
  4  rolled back: its sites were sent back to their previous release
  5  aborted by an operator
  6  --timeout passed before the rollout ended

Without --watch, status prints the rollout once and exits 0.

Examples:
  fleetwave rollout status ro-1a2b3c --sites
  fleetwave rollout status ro-1a2b3c --watch --timeout 2h
  # CI: start a rollout, fail the job unless the fleet completes it
  id=$(fleetwave rollout create rollout.toml --start --json | jq -r .id)
  fleetwave rollout status \"$id\" --watch --timeout 4h";

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn rollout(command: RolloutCommand) -> Result<()> {
    match command {
        RolloutCommand::Plan(args) => plan(args),
        RolloutCommand::Create(args) => create(args),
        RolloutCommand::Start(a) => act(&a.connect, &a.rollout, "start", None),
        RolloutCommand::Pause(a) => act(&a.connect, &a.rollout, "pause", reason(&a)),
        RolloutCommand::Resume(a) => act(&a.connect, &a.rollout, "resume", None),
        RolloutCommand::Abort(a) => act(&a.connect, &a.rollout, "abort", reason(&a)),
        RolloutCommand::Rollback(a) => act(&a.connect, &a.rollout, "rollback", reason(&a)),
        RolloutCommand::Approve(a) => act(
            &a.connect,
            &a.rollout,
            "approve",
            Some(serde_json::to_value(api::ApproveWave { wave: a.wave })?),
        ),
        RolloutCommand::Skip(a) => act(
            &a.connect,
            &a.rollout,
            "skip",
            Some(serde_json::to_value(api::SkipSite {
                site_id: a.site.clone(),
            })?),
        ),
        RolloutCommand::Retry(a) => act(
            &a.connect,
            &a.rollout,
            "retry",
            Some(serde_json::to_value(api::RetrySites {
                site_id: a.site.clone(),
                wave: a.wave,
            })?),
        ),
        RolloutCommand::Status(args) => status(args),
        RolloutCommand::List(args) => list(args),
        RolloutCommand::Export(args) => super::export::export(args),
    }
}

fn reason(a: &ReasonArgs) -> Option<serde_json::Value> {
    a.reason.as_ref().map(|r| {
        serde_json::to_value(api::ActionReason {
            reason: Some(r.clone()),
        })
        .expect("serializes")
    })
}

/// Reads a plan file as the body of `POST /v1/rollouts` (and of its dry run).
fn plan_body(plan: &std::path::Path) -> Result<api::CreateRollout> {
    let text = std::fs::read_to_string(plan)
        .with_context(|| format!("cannot read the plan {}", plan.display()))?;
    let format = if plan
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        api::PlanFormat::Json
    } else {
        api::PlanFormat::Toml
    };
    Ok(api::CreateRollout { plan: text, format })
}

/// Reads a plan file and sends it: `POST /v1/rollouts`.
pub fn create_from_file(client: &Client, plan: &std::path::Path) -> Result<api::RolloutView> {
    client.post(paths::ROLLOUTS, &plan_body(plan)?)
}

fn plan(args: PlanArgs) -> Result<()> {
    let body = plan_body(&args.plan)?;
    let client = Client::connect(&args.connect)?;
    let preview: api::PlanPreview = client.post(&format!("{}/plan", paths::ROLLOUTS), &body)?;
    if args.connect.json || args.format == PlanOutput::Json {
        return output::json(&preview);
    }
    print!("{}", render_preview(&preview));
    Ok(())
}

/// The human view of a plan preview: the waves with their sites and earliest opens, the
/// sites left out by reason, and what the figures mean.
pub fn render_preview(p: &api::PlanPreview) -> String {
    let mut out = format!(
        "plan {:?}  release {}  {} of {} site(s) selected (as of {})\n",
        p.name,
        p.release_id,
        p.selected,
        p.fleet,
        output::time(p.at)
    );
    if let Some(s) = &p.start_at {
        out.push_str(&format!("  {}\n", starts_at_words(s)));
    }
    if let Some(refused) = &p.refused {
        out.push_str(&format!("  WARNING: {refused}\n"));
    }
    let mut t = Table::new(&[
        "WAVE",
        "NAME",
        "SITES",
        "EARLIEST OPEN (UTC)",
        "SITES (FIRST)",
    ]);
    for w in &p.waves {
        let mut ids = w
            .sites
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = w.count.saturating_sub(w.sites.len().min(5) as u64);
        if more > 0 {
            ids.push_str(&format!(" (+{more})"));
        }
        t.row(vec![
            w.index.to_string(),
            w.name.clone(),
            w.count.to_string(),
            w.earliest_open
                .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "unknown".into()),
            ids,
        ]);
    }
    out.push_str(&t.render("  "));
    out.push_str("why each wave opens then:\n");
    for w in &p.waves {
        out.push_str(&format!(
            "  {} {}: {}\n",
            w.index, w.name, w.earliest_open_reason
        ));
    }
    if p.excluded.is_empty() {
        out.push_str("left out: none\n");
    } else {
        out.push_str("left out:\n");
        for g in &p.excluded {
            let mut ids: Vec<String> = g
                .sites
                .iter()
                .take(10)
                .map(|s| match &s.detail {
                    Some(d) => format!("{} ({d})", s.site_id),
                    None => s.site_id.clone(),
                })
                .collect();
            let more = g.count.saturating_sub(ids.len() as u64);
            if more > 0 {
                ids.push(format!("+{more} more"));
            }
            out.push_str(&format!(
                "  {} {}: {}\n",
                g.count,
                g.reason.as_str().replace('_', " "),
                ids.join(", ")
            ));
        }
    }
    for n in &p.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// "starts at 2026-12-05 01:00 UTC (2026-12-05 02:00 CET (Europe/Berlin))".
fn starts_at_words(s: &api::StartAtView) -> String {
    let utc = s.at.strftime("%Y-%m-%d %H:%M UTC").to_string();
    if s.zone.is_some() {
        format!("starts at {utc} ({})", s.local)
    } else {
        format!("starts at {utc}")
    }
}

fn create(args: CreateArgs) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let mut view = create_from_file(&client, &args.plan)?;
    if args.start {
        view = client.post(
            &format!("{}/{}/start", paths::ROLLOUTS, encode(&view.id)),
            &serde_json::json!({}),
        )?;
    }
    if args.connect.json {
        return output::json(&view);
    }
    print!("{}", render_status(&view, None));
    if !args.start {
        output::line(format!(
            "start it with: fleetwave rollout start {}",
            view.id
        ))?;
    }
    Ok(())
}

fn act(
    connect: &ConnectArgs,
    id: &str,
    action: &str,
    body: Option<serde_json::Value>,
) -> Result<()> {
    let client = Client::connect(connect)?;
    let view: api::RolloutView = client.post(
        &format!("{}/{}/{action}", paths::ROLLOUTS, encode(id)),
        &body.unwrap_or_else(|| serde_json::json!({})),
    )?;
    if connect.json {
        return output::json(&view);
    }
    print!("{}", render_status(&view, None));
    Ok(())
}

fn get_view(client: &Client, id: &str) -> Result<api::RolloutView> {
    client.get(&format!("{}/{}", paths::ROLLOUTS, encode(id)))
}

/// Every site of a rollout (optionally of one wave, or in one state), by site id:
/// `GET /v1/rollouts/{id}/sites`, page by page.
pub fn all_sites(
    client: &Client,
    id: &str,
    wave: Option<u32>,
    state: Option<&str>,
) -> Result<Vec<api::RolloutSiteView>> {
    let mut query = Vec::new();
    if let Some(w) = wave {
        query.push(format!("wave={w}"));
    }
    if let Some(s) = state {
        query.push(format!("state={}", encode(s)));
    }
    client.get_all(
        &format!("{}/{}/sites", paths::ROLLOUTS, encode(id)),
        &query,
        |page: api::RolloutSiteList| (page.sites, page.next_after),
    )
}

fn status(args: StatusArgs) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let mut view = get_view(&client, &args.rollout)?;
    let every = if args.sites {
        Some(all_sites(&client, &args.rollout, None, None)?)
    } else {
        None
    };
    if args.connect.json {
        // With --sites, `sites` holds every site (by site id) and none is omitted.
        if let Some(every) = every {
            view.sites = every;
            view.sites_omitted = 0;
        }
        return output::json(&view);
    }
    print!("{}", render_status(&view, every.as_deref()));
    if !args.watch {
        return Ok(());
    }
    watch(&client, &args.rollout, view, args.timeout)
}

/// How often `--watch` reads the rollout.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// The exit codes of `rollout status --watch` beyond 0 (completed), 1 and 2 (errors).
pub mod exit {
    pub const HALTED: u8 = 3;
    pub const ROLLED_BACK: u8 = 4;
    pub const ABORTED: u8 = 5;
    pub const TIMED_OUT: u8 = 6;
}

/// Whether `--watch` stops at this status, and with which exit code: `None` while the
/// rollout may still move (pending, running, paused), `Some(0)` when it completed.
pub fn watch_exit_code(status: api::RolloutStatus) -> Option<u8> {
    match status {
        api::RolloutStatus::Pending
        | api::RolloutStatus::Scheduled
        | api::RolloutStatus::Running
        | api::RolloutStatus::Paused => None,
        api::RolloutStatus::Completed => Some(0),
        api::RolloutStatus::Halted => Some(exit::HALTED),
        api::RolloutStatus::RolledBack => Some(exit::ROLLED_BACK),
        api::RolloutStatus::Aborted => Some(exit::ABORTED),
    }
}

/// A watched rollout that did not complete: `main` prints it as one line on stderr and
/// exits with [`WatchEnded::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum WatchEnded {
    #[error("rollout {id} did not complete: it is {status} (exit {})", watch_exit_code(*status).unwrap_or(1))]
    Stopped {
        id: String,
        status: api::RolloutStatus,
    },
    #[error("rollout {id} is still {status} after --timeout {}s (exit {})", timeout.as_secs(), exit::TIMED_OUT)]
    TimedOut {
        id: String,
        status: api::RolloutStatus,
        timeout: Duration,
    },
}

impl WatchEnded {
    pub fn exit_code(&self) -> u8 {
        match self {
            WatchEnded::Stopped { status, .. } => watch_exit_code(*status).unwrap_or(1),
            WatchEnded::TimedOut { .. } => exit::TIMED_OUT,
        }
    }
}

/// `status --watch`: reads the rollout every [`WATCH_POLL`] and shows what changed, until
/// its status ends the watch or `timeout` passes. `first` is already printed.
fn watch(
    client: &Client,
    id: &str,
    first: api::RolloutView,
    timeout: Option<Duration>,
) -> Result<()> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut display = if std::io::stdout().is_terminal() {
        WatchDisplay::bars(&first)
    } else {
        WatchDisplay::lines(&first)
    };
    let mut last = first;
    let code = loop {
        if let Some(code) = watch_exit_code(last.status) {
            break code;
        }
        let now = Instant::now();
        let nap = match deadline {
            Some(d) if now >= d => {
                display.finish();
                return Err(WatchEnded::TimedOut {
                    id: last.id,
                    status: last.status,
                    timeout: timeout.unwrap_or_default(),
                }
                .into());
            }
            Some(d) => (d - now).min(WATCH_POLL),
            None => WATCH_POLL,
        };
        std::thread::sleep(nap);
        last = get_view(client, id)?;
        display.update(&last)?;
    };
    display.finish();
    output::line(format!(
        "rollout {} is {}{}",
        last.id,
        last.status.as_str(),
        last.status_reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    ))?;
    if code == 0 {
        Ok(())
    } else {
        Err(WatchEnded::Stopped {
            id: last.id,
            status: last.status,
        }
        .into())
    }
}

/// What `--watch` shows: plain time-stamped lines (a pipe, a log), or live bars (a
/// terminal).
enum WatchDisplay {
    Lines(Progress),
    Bars(Bars),
}

impl WatchDisplay {
    fn lines(first: &api::RolloutView) -> WatchDisplay {
        let mut progress = Progress::default();
        progress.update(first); // already printed
        WatchDisplay::Lines(progress)
    }

    fn bars(first: &api::RolloutView) -> WatchDisplay {
        WatchDisplay::Bars(Bars::new(first))
    }

    fn update(&mut self, v: &api::RolloutView) -> Result<()> {
        let now = jiff::Timestamp::now().strftime("%H:%M:%S").to_string();
        match self {
            WatchDisplay::Lines(progress) => {
                for line in progress.update(v) {
                    output::line(format!("{now}  {line}"))?;
                }
            }
            WatchDisplay::Bars(bars) => bars.update(v, &now)?,
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let WatchDisplay::Bars(bars) = self {
            bars.finish();
        }
    }
}

/// One progress bar per wave (sites done of the wave's sites), drawn on stdout; the
/// decisions, failing sites and status changes are printed above them.
struct Bars {
    multi: MultiProgress,
    waves: Vec<ProgressBar>,
    progress: Progress,
}

impl Bars {
    fn new(first: &api::RolloutView) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let mut progress = Progress::without_wave_lines();
        progress.update(first); // already printed
        let mut bars = Bars {
            multi,
            waves: Vec::new(),
            progress,
        };
        bars.draw(first);
        bars
    }

    fn style() -> ProgressStyle {
        ProgressStyle::with_template("{prefix} [{bar:30.green/red}] {pos:>5}/{len:<5} {msg}")
            .expect("a valid template")
            .progress_chars("=> ")
    }

    /// Sets each wave's bar from the view, adding bars for waves not seen yet.
    fn draw(&mut self, v: &api::RolloutView) {
        let width = v.waves.iter().map(|w| w.name.len()).max().unwrap_or(0);
        let set = |bar: &ProgressBar, w: &api::WaveView| {
            bar.set_prefix(format!("wave {} {:<width$}", w.index, w.name));
            bar.set_length(u64::from(w.tally.sites));
            bar.set_position(u64::from(wave_done(&w.tally)));
            bar.set_message(wave_words(w));
        };
        for (i, w) in v.waves.iter().enumerate() {
            match self.waves.get(i) {
                Some(bar) => set(bar, w),
                None => {
                    // Filled in before it is shown, so that it never flashes 0/0.
                    let bar = ProgressBar::hidden().with_style(Bars::style());
                    set(&bar, w);
                    self.waves.push(self.multi.add(bar));
                }
            }
        }
    }

    fn update(&mut self, v: &api::RolloutView, now: &str) -> Result<()> {
        for line in self.progress.update(v) {
            self.multi
                .println(format!("{now}  {line}"))
                .context("cannot write to stdout")?;
        }
        self.draw(v);
        Ok(())
    }

    fn finish(&mut self) {
        for bar in &self.waves {
            bar.finish();
        }
    }
}

/// A wave's sites that are no longer pending or in progress.
fn wave_done(t: &api::WaveTally) -> u32 {
    t.sites.saturating_sub(t.pending + t.in_progress)
}

/// A bar's message: `2 succeeded, 1 failed, 3 in progress` (plus any other non-zero
/// count) and whether the wave is open or passed.
fn wave_words(w: &api::WaveView) -> String {
    let t = &w.tally;
    let mut parts = vec![
        format!("{} succeeded", t.succeeded),
        format!("{} failed", t.failed),
        format!("{} in progress", t.in_progress),
    ];
    for (n, word) in [
        (t.pending, "pending"),
        (t.silent, "silent"),
        (t.skipped, "skipped"),
        (t.rolled_back, "rolled back"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    let state = if w.passed_at.is_some() {
        "passed"
    } else if w.opened_at.is_some() {
        "open"
    } else {
        "not open"
    };
    format!("{}  [{state}]", parts.join(", "))
}

fn list(args: ListArgs) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let mut list: api::RolloutList = client.get(paths::ROLLOUTS)?;
    list.rollouts
        .sort_by_key(|r| std::cmp::Reverse(r.created_at));
    if args.connect.json {
        return output::json(&list);
    }
    let mut t = Table::new(&[
        "ROLLOUT", "RELEASE", "STATUS", "CREATED", "UPDATED", "REASON",
    ]);
    for r in &list.rollouts {
        t.row(vec![
            r.id.clone(),
            r.release_id.clone(),
            r.status.as_str().into(),
            output::time(r.created_at),
            output::time(r.updated_at),
            r.status_reason.clone().unwrap_or_default(),
        ]);
    }
    t.print()
}

/// One wave's counts in a few words: `2/2 succeeded` plus whatever else is non-zero.
pub fn tally_words(t: &api::WaveTally) -> String {
    let mut parts = vec![format!("{}/{} succeeded", t.succeeded, t.sites)];
    for (n, word) in [
        (t.in_progress, "in progress"),
        (t.pending, "pending"),
        (t.failed, "failed"),
        (t.silent, "silent"),
        (t.skipped, "skipped"),
        (t.rolled_back, "rolled back"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    parts.join(", ")
}

/// The human view of a rollout: header, waves table, the sites that need attention (or
/// `every` site, when given), timeline.
pub fn render_status(v: &api::RolloutView, every: Option<&[api::RolloutSiteView]>) -> String {
    let mut out = format!(
        "rollout {}  release {}  status {}{}\n  created {} by {}, updated {}\n",
        v.id,
        v.release_id,
        v.status.as_str().to_uppercase(),
        v.status_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        output::time(v.created_at),
        v.created_by,
        output::time(v.updated_at),
    );
    if let Some(s) = &v.start_at
        && matches!(
            v.status,
            api::RolloutStatus::Pending | api::RolloutStatus::Scheduled
        )
    {
        out.push_str(&format!("  {}\n", starts_at_words(s)));
    }
    let mut t = Table::new(&[
        "WAVE", "NAME", "SITES", "OK", "PROG", "PEND", "FAIL", "SILENT", "RB", "OPENED", "GATE",
    ]);
    for w in &v.waves {
        let gate = match (w.approval_required, w.approved_at) {
            (true, None) => format!("{} [needs approval]", w.gate),
            (true, Some(_)) => format!("{} [approved]", w.gate),
            _ => w.gate.clone(),
        };
        t.row(vec![
            w.index.to_string(),
            w.name.clone(),
            w.tally.sites.to_string(),
            w.tally.succeeded.to_string(),
            w.tally.in_progress.to_string(),
            w.tally.pending.to_string(),
            w.tally.failed.to_string(),
            w.tally.silent.to_string(),
            w.tally.rolled_back.to_string(),
            w.opened_at
                .map(|t| t.strftime("%H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
            gate,
        ]);
    }
    out.push_str(&t.render("  "));
    out.push_str(&analysis_table(v));
    out.push_str(&rollback_failed_note(every.unwrap_or(&v.sites)));
    match every {
        Some(all) => {
            let mut sorted: Vec<&api::RolloutSiteView> = all.iter().collect();
            sorted.sort_by(|a, b| (a.wave, &a.site_id).cmp(&(b.wave, &b.site_id)));
            out.push_str("sites:\n");
            out.push_str(&site_table(sorted));
        }
        None => {
            // Already in order: failed, silent, rolled back, in progress.
            if !v.sites.is_empty() {
                out.push_str("sites needing attention:\n");
                out.push_str(&site_table(v.sites.iter().collect()));
            }
            if v.sites_omitted > 0 {
                out.push_str(&format!(
                    "  {} {}sites not listed; --sites lists every site\n",
                    v.sites_omitted,
                    if v.sites.is_empty() { "" } else { "more " },
                ));
            }
        }
    }
    out.push_str("timeline:\n");
    if v.decisions.is_empty() {
        out.push_str("  (no decisions yet)\n");
    }
    for d in &v.decisions {
        out.push_str(&format!("  {}\n", decision_line(d)));
    }
    out
}

/// Each wave's golden-signal analysis, one line per signal: verdict, both groups'
/// medians and sizes, the effect, the p-value, the tolerance and the minutes compared.
/// Empty when no wave has any.
pub fn analysis_table(v: &api::RolloutView) -> String {
    use fleetwave_shared::protocol::analysis::{self as an, number, signed};
    if v.waves.iter().all(|w| w.analysis.is_empty()) {
        return String::new();
    }
    let group = |g: &an::GroupNumbers| match g.median {
        Some(m) => format!("{} ({} sites, {} samples)", number(m), g.sites, g.samples),
        None => format!("- ({} sites)", g.sites),
    };
    let mut t = Table::new(&[
        "WAVE",
        "SIGNAL",
        "VERDICT",
        "UPGRADED",
        "CONTROL",
        "EFFECT",
        "P",
        "TOLERANCE",
        "MINUTES",
    ]);
    for w in &v.waves {
        for a in &w.analysis {
            let effect = match (a.effect, a.relative_effect) {
                (Some(e), Some(r)) => format!("{} ({:+.1} %)", signed(e), r * 100.0),
                (Some(e), None) => signed(e),
                _ => "-".into(),
            };
            t.row(vec![
                w.index.to_string(),
                a.signal.clone(),
                a.verdict.as_str().to_uppercase(),
                group(&a.upgraded),
                group(&a.control),
                effect,
                a.p_value.map(an::p_value).unwrap_or_else(|| "-".into()),
                format!("{} ({})", a.tolerance, a.direction.as_str()),
                a.minutes.to_string(),
            ]);
        }
    }
    format!(
        "golden-signal analysis (upgraded vs control medians):\n{}",
        t.render("  ")
    )
}

/// A warning naming the listed sites whose agent gave up rolling back (phase
/// `rollback_failed`): those boxes may run neither release and need an operator. Empty
/// when there are none.
fn rollback_failed_note(sites: &[api::RolloutSiteView]) -> String {
    let stuck: Vec<&str> = sites
        .iter()
        .filter(|s| s.phase.as_deref() == Some("rollback_failed"))
        .map(|s| s.site_id.as_str())
        .collect();
    if stuck.is_empty() {
        return String::new();
    }
    format!(
        "ROLLBACK FAILED on {} site{} (the agent gave up; each box needs an operator): {}\n",
        stuck.len(),
        if stuck.len() == 1 { "" } else { "s" },
        stuck.join(", ")
    )
}

/// Sites as a table: site, wave, state, phase, detail (which says when a site was served
/// by bundle).
fn site_table(sites: Vec<&api::RolloutSiteView>) -> String {
    let mut s = Table::new(&["SITE", "WAVE", "STATE", "PHASE", "DETAIL"]);
    for site in sites {
        let mut detail = site.detail.clone().unwrap_or_default();
        if let Some(until) = site.bundle_until {
            if !detail.is_empty() {
                detail.push_str("; ");
            }
            detail.push_str(&format!("by bundle until {}", output::time(until)));
        }
        s.row(vec![
            site.site_id.clone(),
            site.wave.to_string(),
            site.state.clone(),
            site.phase.clone().unwrap_or_else(|| "-".into()),
            detail,
        ]);
    }
    s.render("  ")
}

/// `12:00:03  open_wave   wave 1  reason`.
pub fn decision_line(d: &api::DecisionView) -> String {
    format!(
        "{}  {:<10}{}  {}",
        d.at.strftime("%H:%M:%S"),
        d.kind,
        d.wave.map(|w| format!("  wave {w}")).unwrap_or_default(),
        d.reason
    )
}

/// Turns successive views of one rollout into the lines that say what changed: new
/// decisions (with reasons), wave counts that moved, a status change.
#[derive(Debug, Default)]
pub struct Progress {
    /// Leave out the wave lines (the bars of `--watch` on a terminal show the counts).
    no_wave_lines: bool,
    decisions_seen: usize,
    tallies: BTreeMap<u32, api::WaveTally>,
    site_states: BTreeMap<String, String>,
    status: Option<api::RolloutStatus>,
}

impl Progress {
    /// A printer without the wave-count lines.
    pub fn without_wave_lines() -> Progress {
        Progress {
            no_wave_lines: true,
            ..Progress::default()
        }
    }

    pub fn update(&mut self, v: &api::RolloutView) -> Vec<String> {
        let mut lines = Vec::new();
        for d in v.decisions.iter().skip(self.decisions_seen) {
            // "waiting" notes repeat the gate's standing; the wave lines below carry it.
            if d.kind != "waiting" {
                lines.push(format!(
                    "decision  {}{}: {}",
                    d.kind,
                    d.wave
                        .and_then(|w| v.waves.get(w as usize))
                        .map(|w| format!(" (wave {} {})", w.index, w.name))
                        .unwrap_or_default(),
                    d.reason
                ));
            }
        }
        self.decisions_seen = v.decisions.len();
        let wave_lines = !self.no_wave_lines;
        for w in v.waves.iter().filter(|_| wave_lines) {
            if w.opened_at.is_none() && w.tally.rolled_back == 0 {
                continue;
            }
            if self.tallies.get(&w.index) != Some(&w.tally) {
                lines.push(format!(
                    "wave {} {:<12} {}  | gate: {}",
                    w.index,
                    w.name,
                    tally_words(&w.tally),
                    w.gate
                ));
                self.tallies.insert(w.index, w.tally.clone());
            }
        }
        // Sites that went wrong (or came back) are named, with the agent's own words.
        for site in &v.sites {
            if self.site_states.get(&site.site_id) == Some(&site.state) {
                continue;
            }
            if matches!(site.state.as_str(), "failed" | "silent" | "rolled_back") {
                lines.push(format!(
                    "site      {} (wave {}) {}{}{}",
                    site.site_id,
                    site.wave,
                    site.state.replace('_', " "),
                    site.phase
                        .as_deref()
                        .map(|p| format!(", last phase {p}"))
                        .unwrap_or_default(),
                    site.detail
                        .as_deref()
                        .filter(|d| !d.is_empty())
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ));
            }
            self.site_states
                .insert(site.site_id.clone(), site.state.clone());
        }
        if self.status != Some(v.status) {
            if self.status.is_some() {
                lines.push(format!(
                    "rollout   {} is now {}{}",
                    v.id,
                    v.status.as_str(),
                    v.status_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ));
            }
            self.status = Some(v.status);
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(id: &str, state: &str, phase: &str, detail: &str) -> api::RolloutSiteView {
        api::RolloutSiteView {
            site_id: id.into(),
            wave: 0,
            state: state.into(),
            phase: Some(phase.into()),
            detail: Some(detail.into()),
            bundle_until: None,
        }
    }

    #[test]
    fn watch_exit_codes_follow_the_status_and_the_help_lists_each() {
        use api::RolloutStatus as S;
        for status in S::ALL {
            let code = watch_exit_code(status);
            match status {
                S::Pending | S::Scheduled | S::Running | S::Paused => {
                    assert_eq!(code, None, "{status}")
                }
                S::Completed => assert_eq!(code, Some(0)),
                S::Halted | S::RolledBack | S::Aborted => {
                    let code = code.unwrap();
                    assert!(code > 2, "1 and 2 are errors: {status}");
                    let word = status.as_str().replace('_', " ");
                    assert!(
                        STATUS_AFTER_HELP.contains(&format!("  {code}  {word}")),
                        "{code} {word} missing from the help"
                    );
                }
            }
        }
        assert!(STATUS_AFTER_HELP.contains(&format!("  {}  --timeout", exit::TIMED_OUT)));
        let codes = [
            exit::HALTED,
            exit::ROLLED_BACK,
            exit::ABORTED,
            exit::TIMED_OUT,
        ];
        let distinct: std::collections::BTreeSet<u8> = codes.into_iter().collect();
        assert_eq!(distinct.len(), codes.len());
        let ended = WatchEnded::Stopped {
            id: "r-1".into(),
            status: S::Halted,
        };
        assert_eq!(ended.exit_code(), exit::HALTED);
        assert_eq!(
            ended.to_string(),
            "rollout r-1 did not complete: it is halted (exit 3)"
        );
        let late = WatchEnded::TimedOut {
            id: "r-1".into(),
            status: S::Paused,
            timeout: Duration::from_secs(90),
        };
        assert_eq!(late.exit_code(), exit::TIMED_OUT);
        assert_eq!(
            late.to_string(),
            "rollout r-1 is still paused after --timeout 90s (exit 6)"
        );
    }

    #[test]
    fn timeout_is_a_duration_above_zero() {
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_timeout("0s").unwrap_err().contains("above zero"));
        assert!(parse_timeout("soon").is_err());
    }

    fn wave(index: u32, tally: api::WaveTally, opened: bool) -> api::WaveView {
        api::WaveView {
            index,
            name: format!("w{index}"),
            opened_at: opened.then(jiff::Timestamp::now),
            passed_at: None,
            approval_required: false,
            approved_at: None,
            tally,
            gate: "waiting".into(),
            analysis: vec![],
        }
    }

    #[test]
    fn a_wave_bar_counts_the_sites_done_and_names_the_counts() {
        let tally = api::WaveTally {
            sites: 10,
            pending: 2,
            in_progress: 3,
            succeeded: 4,
            failed: 1,
            ..Default::default()
        };
        assert_eq!(wave_done(&tally), 5);
        assert_eq!(
            wave_words(&wave(0, tally.clone(), true)),
            "4 succeeded, 1 failed, 3 in progress, 2 pending  [open]"
        );
        assert!(wave_words(&wave(1, tally, false)).ends_with("[not open]"));
    }

    #[test]
    fn progress_without_wave_lines_still_names_decisions_and_status() {
        let now = jiff::Timestamp::now();
        let mut view = api::RolloutView {
            id: "r-1".into(),
            release_id: "demo-2".into(),
            status: api::RolloutStatus::Running,
            status_reason: None,
            created_at: now,
            created_by: "ops".into(),
            updated_at: now,
            waves: vec![wave(0, api::WaveTally::default(), true)],
            sites: vec![],
            sites_omitted: 0,
            decisions: vec![],
            plan: String::new(),
            plan_format: api::PlanFormat::Toml,
            start_at: None,
        };
        let mut with = Progress::default();
        let mut without = Progress::without_wave_lines();
        with.update(&view);
        without.update(&view);
        view.waves[0].tally.sites = 1;
        view.waves[0].tally.failed = 1;
        view.status = api::RolloutStatus::Halted;
        view.decisions.push(api::DecisionView {
            at: now,
            kind: "halt".into(),
            wave: Some(0),
            reason: "failure budget crossed".into(),
        });
        let all = with.update(&view);
        let some = without.update(&view);
        assert!(all.iter().any(|l| l.starts_with("wave 0")), "{all:?}");
        assert_eq!(
            some,
            [
                "decision  halt (wave 0 w0): failure budget crossed",
                "rollout   r-1 is now halted"
            ]
        );
    }

    #[test]
    fn status_shows_each_waves_analysis_numbers() {
        use fleetwave_shared::protocol::analysis as an;
        let now = jiff::Timestamp::now();
        let group = |sites, samples, median| an::GroupNumbers {
            sites,
            samples,
            median: Some(median),
            spread: None,
        };
        let mut w = wave(0, api::WaveTally::default(), true);
        w.analysis.push(an::SignalAnalysis {
            signal: "latency_p95_ms".into(),
            verdict: an::Verdict::Fail,
            reason: "latency_p95_ms: fail".into(),
            direction: an::Direction::IncreaseIsBad,
            tolerance: an::Tolerance::Relative(0.1),
            alpha: 0.05,
            min_sites: 5,
            min_samples: 20,
            upgraded: group(6, 60, 130.0),
            control: group(12, 118, 100.0),
            effect: Some(30.0),
            relative_effect: Some(0.3),
            p_value: Some(1.6e-21),
            from: now,
            judged_at: now,
            minutes: 10,
        });
        let view = api::RolloutView {
            id: "r-1".into(),
            release_id: "demo-2".into(),
            status: api::RolloutStatus::Halted,
            status_reason: None,
            created_at: now,
            created_by: "ops".into(),
            updated_at: now,
            waves: vec![w, wave(1, api::WaveTally::default(), false)],
            sites: vec![],
            sites_omitted: 0,
            decisions: vec![],
            plan: String::new(),
            plan_format: api::PlanFormat::Toml,
            start_at: None,
        };
        let text = render_status(&view, None);
        let line = text
            .lines()
            .find(|l| l.contains("latency_p95_ms"))
            .unwrap_or_else(|| panic!("no analysis line in:\n{text}"));
        for words in [
            "FAIL",
            "130 (6 sites, 60 samples)",
            "100 (12 sites, 118 samples)",
            "+30 (+30.0 %)",
            "1.6e-21",
            "10 % of the control median (increase_is_bad)",
        ] {
            assert!(line.contains(words), "{words:?} missing in {line:?}");
        }
        assert!(line.trim_end().ends_with("10"), "{line:?}");
        // No analysis anywhere: no section.
        let mut none = view.clone();
        none.waves[0].analysis.clear();
        assert!(!render_status(&none, None).contains("golden-signal"));
    }

    #[test]
    fn status_names_the_sites_whose_rollback_failed_with_the_agents_words() {
        let now = jiff::Timestamp::now();
        let view = api::RolloutView {
            id: "r-1".into(),
            release_id: "demo-2".into(),
            status: api::RolloutStatus::Halted,
            status_reason: Some("wave 0: 2 of 3 sites failed".into()),
            created_at: now,
            created_by: "ops".into(),
            updated_at: now,
            waves: vec![],
            sites: vec![
                site(
                    "store-1",
                    "failed",
                    "rollback_failed",
                    "install failed and its rollback failed; the box needs an operator: \
                     restart exited 1; output: port 8080 in use",
                ),
                site("store-2", "failed", "failed", "install failed: unhealthy"),
            ],
            sites_omitted: 1,
            decisions: vec![],
            plan: String::new(),
            plan_format: api::PlanFormat::Toml,
            start_at: None,
        };
        let text = render_status(&view, None);
        assert!(
            text.contains("ROLLBACK FAILED on 1 site (the agent gave up; each box needs an operator): store-1\n"),
            "{text}"
        );
        assert!(text.contains("rollback_failed"), "{text}");
        assert!(text.contains("port 8080 in use"), "{text}");
        // Nothing to say when no rollback failed.
        assert_eq!(rollback_failed_note(&view.sites[1..]), "");
    }
}
