//! `fleetwave-sim safety`: how safe a rollout is, measured. Repeated rollouts of one
//! class of release (healthy, crashes on start, fails its health check, slow degradation,
//! sites going silent, flapping links) over a fleet of simulated sites with per-site
//! golden signals and noise, against the REAL coordinator: the engine and its wave
//! controller built in-process from the coordinator library over a real SQLite file, with
//! an adjustable clock that the benchmark moves one minute at a time.
//!
//! Sites speak the agent API through the coordinator's own router (poll with ETag, lease,
//! report batches with phase, health and installed events and per-minute signals), called
//! in-process without a socket: the same handlers, checks and engine paths as over HTTPS,
//! minus TLS. Sites are written into the fresh database and their sessions opened
//! directly (`Sessions::open`): enrollment and the signed handshake are not what is
//! measured. The gate, the failure budget and the `[[analysis]]` judge are the
//! coordinator's; nothing here decides whether a rollout halts.
//!
//! It prints, per class over the runs: how many halted and by what, the wave of the
//! halt, the blast radius, the time from the first install to the halt, false halts.
//! Nothing here asserts a time or a figure.

mod model;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use fleetwave_coordinator::clock::Clock;
use fleetwave_coordinator::engine::Action;
use fleetwave_shared::protocol::operator::PlanFormat;
use fleetwave_shared::protocol::signals::{MAX_SIGNAL_MINUTES_PER_REPORT, SignalMinute};
use fleetwave_shared::protocol::{
    Event, EventBody, HealthSummary, LeaseRequest, Phase, PollResponse, ReportBatch, RolloutStatus,
    paths,
};
use futures_util::{StreamExt as _, TryStreamExt as _};
use jiff::{SignedDuration, Timestamp};
use tower::ServiceExt as _;

pub use model::Class;
use model::{Link, Profile, Rng, daily_load, min_median_max, minute_values};

use crate::coordinator::Setup;

/// The release stream the simulated application belongs to.
const STREAM: &str = "sim-app";
/// Give up on a run that has neither halted nor completed after this many simulated
/// minutes (a healthy rollout of this plan completes in about five hours).
const MAX_MINUTES: i64 = 24 * 60;
/// Agent requests in flight at once.
const IN_FLIGHT: usize = 32;
/// Wave names and shares of the plan, in order (the last takes the rest).
pub const WAVES: [(&str, Option<u32>); 4] = [
    ("canary", Some(2)),
    ("early", Some(10)),
    ("broad", Some(50)),
    ("rest", None),
];

/// The gate every wave of the plan has. The bake is no shorter than the report deadline:
/// with `bake = "30m"` a wave passed while the sites that went dark after their
/// assignment were still pending (not silent before an hour), and their silence crossed
/// the budget only once the next wave, or the one after, had installed (blast radius up
/// to 91 % of the fleet for a 10 % silent release; docs/benchmarks.md). The hour of
/// deadline lets a flapping link stay down for 45 minutes without a halt.
const GATE: &str =
    "{ success_ratio = 0.9, failure_budget_percent = 5, bake = \"1h\", report_deadline = \"1h\" }";

/// The plan each run rolls out: four waves with a failure budget and an analysis of the
/// error ratio and the p95 latency.
/// `gate` replaces [`GATE`] (the smoke test bakes shorter to stay quick).
pub fn plan(release: &str, gate: &str) -> String {
    let mut p = format!(
        "name = \"safety benchmark\"\nrelease = \"{release}\"\nselector = {{ sim = \"1\" }}\n\
         auto_rollback = true\nchannel = false\nassignment_ttl = \"2d\"\n"
    );
    for (name, share) in WAVES {
        p.push_str(&format!("\n[[waves]]\nname = \"{name}\"\n"));
        if let Some(s) = share {
            p.push_str(&format!("share = {s}\n"));
        }
        p.push_str(&format!("gate = {gate}\n"));
    }
    p.push_str(
        "\n[[analysis]]\nsignal = \"error_ratio\"\ndirection = \"increase_is_bad\"\n\
         tolerance = { absolute = 0.01 }\nmin_sites = 5\nmin_samples = 50\n\
         \n[[analysis]]\nsignal = \"latency_p95\"\ndirection = \"increase_is_bad\"\n\
         tolerance = { relative = 0.2 }\nmin_sites = 5\nmin_samples = 50\n",
    );
    p
}

/// What the command runs.
pub struct Options {
    pub sites: usize,
    pub runs: usize,
    pub seed: u64,
    pub classes: Vec<Class>,
    /// Print a line for every run (how it ended and the halt's reason).
    pub verbose: bool,
    /// Where each run's coordinator directory is made (a temp dir when None); each run's
    /// is removed after it.
    pub dir: Option<PathBuf>,
}

/// How one run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub class: Class,
    pub halt: Option<Halt>,
    pub completed: bool,
    /// Sites that took a lease (started installing the release) by the end of the run.
    pub installed: usize,
    pub sites: usize,
    /// Simulated minutes from the first lease to the halt.
    pub to_halt: Option<f64>,
    /// Simulated minutes from the start to the end of the run.
    pub minutes: i64,
    /// Report events the coordinator counted as duplicates (flapping links send again).
    pub duplicates: u64,
}

#[derive(Debug, Clone)]
pub struct Halt {
    pub wave: u32,
    pub reason: String,
}

impl Halt {
    /// What halted it, in a word.
    pub fn cause(&self) -> &'static str {
        if self.reason.contains("golden-signal analysis failed") {
            "analysis"
        } else if self.reason.contains("failure budget crossed") {
            "budget"
        } else {
            "other"
        }
    }
}

/// Runs every class `runs` times and prints the table. Returns the outcomes.
pub async fn run(opts: &Options) -> anyhow::Result<Vec<Outcome>> {
    anyhow::ensure!(
        opts.sites >= 20,
        "--sites must be at least 20 (got {})",
        opts.sites
    );
    anyhow::ensure!(opts.runs >= 1, "--runs must be at least 1");
    let started = Instant::now();
    let base = opts.dir.clone().unwrap_or_else(default_dir);
    println!(
        "rollout safety: {} sites, {} run(s) per class, seed {}, databases under {}; plan: {}",
        opts.sites,
        opts.runs,
        opts.seed,
        base.display(),
        describe_plan(opts.sites)
    );
    let mut all = Vec::new();
    for &class in &opts.classes {
        let t = Instant::now();
        let mut outcomes = Vec::with_capacity(opts.runs);
        for r in 0..opts.runs {
            std::fs::create_dir_all(&base)
                .with_context(|| format!("cannot create {}", base.display()))?;
            let tmp = tempfile::Builder::new()
                .prefix("fleetwave-sim-safety-")
                .tempdir_in(&base)?;
            let o = run_once(tmp.path(), opts.sites, opts.seed, r as u64, class, GATE)
                .await
                .with_context(|| format!("{} run {}", class.name(), r + 1))?;
            if opts.verbose {
                print_run(r + 1, &o);
            }
            outcomes.push(o);
        }
        print_class(class, &outcomes, t.elapsed());
        all.extend(outcomes);
    }
    let healthy: Vec<&Outcome> = all.iter().filter(|o| o.class == Class::Healthy).collect();
    let slow: Vec<&Outcome> = all
        .iter()
        .filter(|o| o.class == Class::SlowDegradation)
        .collect();
    if !slow.is_empty() {
        let early = slow
            .iter()
            .filter(|o| o.halt.as_ref().is_some_and(|h| h.wave <= 1))
            .count();
        let pct = 100.0 * early as f64 / slow.len() as f64;
        println!(
            "target: slow degradation halted within the first two waves in >= 95 % of runs: {early} of {} ({pct:.0} %): {}",
            slow.len(),
            if pct >= 95.0 { "met" } else { "NOT met" }
        );
    }
    if !healthy.is_empty() {
        let false_halts = healthy.iter().filter(|o| o.halt.is_some()).count();
        println!(
            "target: no false halt in {} healthy runs: {false_halts} false halt(s): {}",
            healthy.len(),
            if false_halts == 0 { "met" } else { "NOT met" }
        );
    }
    println!(
        "({} runs in {:.0} s)",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(all)
}

/// Where the runs' databases go by default: `/dev/shm` (memory) when the machine has it,
/// else the temp dir. The coordinator commits every report with `synchronous=FULL`; on a
/// disk the fsyncs (about 80 a simulated minute) made a healthy run take 28 s instead of
/// 5 s, and the medium changes no decision.
fn default_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The waves' sizes for `n` sites, as the coordinator places them (shares of the sites
/// still remaining, rounded up).
fn wave_sizes(n: usize) -> Vec<usize> {
    let mut left = n;
    WAVES
        .iter()
        .map(|(_, share)| {
            let take = match share {
                Some(s) => (left * *s as usize).div_ceil(100),
                None => left,
            };
            left -= take;
            take
        })
        .collect()
}

fn describe_plan(n: usize) -> String {
    let waves: Vec<String> = WAVES
        .iter()
        .zip(wave_sizes(n))
        .map(|((name, share), size)| match share {
            Some(s) => format!("{name} {s} % of the rest ({size})"),
            None => format!("{name} ({size})"),
        })
        .collect();
    format!(
        "{}; gate {GATE} per wave, auto_rollback; analysis error_ratio (absolute 0.01) and latency_p95 (relative 0.2), increase is bad, min_sites 5, min_samples 50",
        waves.join(", ")
    )
}

fn print_class(class: Class, outcomes: &[Outcome], took: Duration) {
    let n = outcomes.len();
    let halts: Vec<&Outcome> = outcomes.iter().filter(|o| o.halt.is_some()).collect();
    let mut by_wave = [0usize; WAVES.len()];
    let (mut analysis, mut budget, mut other) = (0, 0, 0);
    for h in halts.iter().filter_map(|o| o.halt.as_ref()) {
        if let Some(c) = by_wave.get_mut(h.wave as usize) {
            *c += 1;
        }
        match h.cause() {
            "analysis" => analysis += 1,
            "budget" => budget += 1,
            _ => other += 1,
        }
    }
    let completed = outcomes.iter().filter(|o| o.completed).count();
    let early = by_wave[0] + by_wave[1];
    let blast: Vec<f64> = halts
        .iter()
        .map(|o| 100.0 * o.installed as f64 / o.sites as f64)
        .collect();
    let to_halt: Vec<f64> = halts.iter().filter_map(|o| o.to_halt).collect();
    let duplicates: u64 = outcomes.iter().map(|o| o.duplicates).sum();
    let mut line = format!(
        "{:<19} halted {:>2}/{n} (analysis {analysis}, failure budget {budget}, other {other}); completed {completed}",
        class.name(),
        halts.len()
    );
    if !halts.is_empty() {
        let waves: Vec<String> = by_wave.iter().map(usize::to_string).collect();
        line.push_str(&format!(
            "; halt wave {} (canary/early/broad/rest); within the first two waves {early}/{n} ({:.0} %)",
            waves.join("/"),
            100.0 * early as f64 / n as f64
        ));
        if let Some((lo, med, hi)) = min_median_max(&blast) {
            line.push_str(&format!(
                "; blast radius {lo:.1} / {med:.1} / {hi:.1} % of the fleet (min/median/max)"
            ));
        }
        if let Some((_, med, hi)) = min_median_max(&to_halt) {
            line.push_str(&format!(
                "; first install to halt {med:.0} / {hi:.0} min (median/max)"
            ));
        }
    }
    if !class.should_halt() {
        line.push_str(&format!("; false halts {}", halts.len()));
        let took: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.completed)
            .map(|o| o.minutes as f64)
            .collect();
        if let Some((_, med, hi)) = min_median_max(&took) {
            line.push_str(&format!(
                "; rollout completed in {med:.0} / {hi:.0} min (median/max)"
            ));
        }
    }
    if duplicates > 0 {
        line.push_str(&format!("; {duplicates} duplicate report events"));
    }
    line.push_str(&format!(" [{:.1} s]", took.as_secs_f64()));
    println!("{line}");
    if let Some(h) = halts.iter().filter_map(|o| o.halt.as_ref()).next() {
        let mut reason = h.reason.clone();
        if reason.len() > 400 {
            let cut = (0..=400)
                .rev()
                .find(|&i| reason.is_char_boundary(i))
                .unwrap_or(0);
            reason.truncate(cut);
            reason.push_str(" ...");
        }
        println!("    e.g. {reason}");
    }
}

fn print_run(run: usize, o: &Outcome) {
    let how = match &o.halt {
        Some(h) => format!(
            "halted at wave {} by {} after {:.0} min, {} of {} sites installed: {}",
            h.wave,
            h.cause(),
            o.to_halt.unwrap_or_default(),
            o.installed,
            o.sites,
            h.reason
        ),
        None if o.completed => format!("completed in {} min", o.minutes),
        None => format!("neither halted nor completed in {} min", o.minutes),
    };
    println!("  {} run {run}: {how}", o.class.name());
}

/// The agent API of the in-process coordinator: its router, called without a socket.
struct Api {
    router: axum::Router,
}

struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: axum::body::Bytes,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Vec<u8>>,
        if_none_match: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "coordinator")
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        let req = req.body(body.map_or_else(Body::empty, Body::from))?;
        let res = self.router.clone().oneshot(req).await?;
        let status = res.status();
        let etag = res
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = axum::body::to_bytes(res.into_body(), 16 << 20).await?;
        Ok(Answer { status, etag, body })
    }
}

/// What a run shares with every site's step.
struct World {
    api: Api,
    class: Class,
    /// The start of the run's first minute.
    t0: Timestamp,
    /// Where in the day the run starts (the shared traffic pattern).
    phase: f64,
    old: String,
    new: String,
}

impl World {
    fn minute_index(&self, t: Timestamp) -> i64 {
        t.duration_since(self.t0).as_secs().div_euclid(60)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Polling; nothing to do yet.
    Idle,
    /// Holds the assignment; asks for a lease.
    Assigned {
        rollout: String,
        sequence: u64,
    },
    Installing {
        rollout: String,
        until: Timestamp,
    },
    /// Committed the release.
    Committed,
    /// The install failed and the agent rolled back.
    Failed,
    /// Went dark ([`Class::Silent`]).
    Dark,
}

/// One simulated site: the agent's state machine, outbox and signal queue.
struct Site {
    id: String,
    token: String,
    profile: Profile,
    noise: Rng,
    link: Option<Link>,
    acks: Rng,
    state: State,
    etag: Option<String>,
    events: u64,
    outbox: Vec<Event>,
    signals: VecDeque<SignalMinute>,
    /// A batch whose answer was lost: sent again before anything else.
    resend: Option<ReportBatch>,
    next_minute: Timestamp,
    leased_at: Option<Timestamp>,
    committed_at: Option<Timestamp>,
    duplicates: u64,
}

impl Site {
    fn event(&mut self, at: Timestamp, body: EventBody) {
        self.events += 1;
        self.outbox.push(Event {
            id: format!("{}-e{}", self.id, self.events),
            at,
            body,
        });
    }

    fn phase(
        &mut self,
        at: Timestamp,
        rollout: &str,
        release: &str,
        phase: Phase,
        detail: Option<&str>,
    ) {
        self.event(
            at,
            EventBody::Phase {
                rollout_id: Some(rollout.to_string()),
                release_id: release.to_string(),
                phase,
                detail: detail.map(str::to_string),
            },
        );
    }

    fn installed(&mut self, at: Timestamp, release: &str, version: &str) {
        self.event(
            at,
            EventBody::Installed {
                name: STREAM.into(),
                release_id: Some(release.to_string()),
                version: Some(version.to_string()),
                previous_release_id: None,
            },
        );
    }

    fn on_new_release(&self, minute_end: Timestamp) -> bool {
        self.committed_at.is_some_and(|c| c <= minute_end)
    }

    /// Whether its health checks pass at `now`: a release that fails them does so
    /// `unhealthy_after` minutes after the commit.
    fn healthy(&self, class: Class, now: Timestamp) -> bool {
        match self.committed_at {
            Some(c) if class == Class::FailsHealthCheck => {
                now < c + SignedDuration::from_mins(i64::from(self.profile.unhealthy_after))
            }
            _ => true,
        }
    }

    /// One simulated minute of the agent: queue the finished minutes' signals, move the
    /// install on, then (when its link is up) poll, ask for a lease and deliver reports.
    async fn step(&mut self, w: &World, now: Timestamp, minute: Timestamp) -> anyhow::Result<()> {
        if self.state == State::Dark {
            return Ok(());
        }
        let m = w.minute_index(minute);
        while self.next_minute < minute {
            let end = self.next_minute + SignedDuration::from_mins(1);
            let on_new = self.on_new_release(end);
            let load = daily_load(w.minute_index(self.next_minute), w.phase);
            let v = minute_values(
                &self.profile,
                load,
                on_new && w.class == Class::SlowDegradation,
                &mut self.noise,
            );
            self.signals.push_back(SignalMinute {
                stream: STREAM.into(),
                release_id: Some(if on_new { w.new.clone() } else { w.old.clone() }),
                minute: self.next_minute,
                values: [
                    ("error_ratio".to_string(), v.error_ratio),
                    ("latency_p95".to_string(), v.latency_p95),
                ]
                .into(),
                resets: Vec::new(),
                scrapes: 4,
                failed_scrapes: 0,
            });
            self.next_minute = end;
        }
        if let State::Installing { rollout, until } = &self.state
            && now >= *until
        {
            let (rollout, at) = (rollout.clone(), *until);
            if w.class == Class::CrashOnStart {
                self.phase(
                    at,
                    &rollout,
                    &w.new,
                    Phase::Failed,
                    Some("start: the application exited with status 1"),
                );
                self.phase(at, &rollout, &w.new, Phase::RolledBack, None);
                self.installed(at, &w.old, "1.0.0");
                self.state = State::Failed;
            } else {
                self.phase(at, &rollout, &w.new, Phase::Committed, None);
                self.installed(at, &w.new, "2.0.0");
                self.committed_at = Some(at);
                self.state = State::Committed;
            }
        }
        if let Some(link) = &mut self.link
            && !link.up_at(m)
        {
            return Ok(());
        }
        if let Some(batch) = self.resend.take() {
            self.send(w, &batch).await?;
        }
        if self.state == State::Idle {
            self.poll(w, now).await?;
            if self.state == State::Dark {
                return Ok(());
            }
        }
        if let State::Assigned { rollout, sequence } = &self.state {
            let (rollout, sequence) = (rollout.clone(), *sequence);
            let body = serde_json::to_vec(&LeaseRequest {
                rollout_id: rollout.clone(),
                sequence,
            })?;
            let a = w
                .api
                .call(Method::POST, paths::LEASE, &self.token, Some(body), None)
                .await?;
            match a.status {
                StatusCode::OK => {
                    self.leased_at = Some(now);
                    let new = w.new.clone();
                    for p in [Phase::Leased, Phase::Downloading, Phase::Installing] {
                        self.phase(now, &rollout, &new, p, None);
                    }
                    let until =
                        now + SignedDuration::from_mins(i64::from(self.profile.install_minutes));
                    self.state = State::Installing { rollout, until };
                }
                // Not now (the rollout halted, a limit): asked again next minute.
                StatusCode::CONFLICT => {}
                s => bail!(
                    "{}: lease answered {s}: {}",
                    self.id,
                    String::from_utf8_lossy(&a.body)
                ),
            }
        }
        let heartbeat = m.rem_euclid(5) == i64::from(self.profile.heartbeat_offset);
        if heartbeat {
            let healthy = self.healthy(w.class, now);
            self.event(
                now,
                EventBody::Health {
                    healthy,
                    summary: HealthSummary {
                        passed: if healthy { 3 } else { 2 },
                        failed: u32::from(!healthy),
                        failing: if healthy {
                            Vec::new()
                        } else {
                            vec!["http:app: status 500".into()]
                        },
                        ..Default::default()
                    },
                },
            );
        }
        // Events go out at once; signal minutes with the heartbeat (or with events).
        while !self.outbox.is_empty() || (heartbeat && !self.signals.is_empty()) {
            let n = self.signals.len().min(MAX_SIGNAL_MINUTES_PER_REPORT);
            let batch = ReportBatch {
                events: std::mem::take(&mut self.outbox),
                signals: self.signals.drain(..n).collect(),
            };
            self.send(w, &batch).await?;
            if self.link.is_some() && self.acks.chance(model::LOST_ACK) {
                self.resend = Some(batch);
                break;
            }
        }
        Ok(())
    }

    async fn send(&mut self, w: &World, batch: &ReportBatch) -> anyhow::Result<()> {
        let a = w
            .api
            .call(
                Method::POST,
                paths::REPORTS,
                &self.token,
                Some(serde_json::to_vec(batch)?),
                None,
            )
            .await?;
        if a.status != StatusCode::OK {
            bail!(
                "{}: reports answered {}: {}",
                self.id,
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        let ack: fleetwave_shared::protocol::ReportAck = serde_json::from_slice(&a.body)?;
        self.duplicates += u64::from(ack.duplicates);
        Ok(())
    }

    async fn poll(&mut self, w: &World, now: Timestamp) -> anyhow::Result<()> {
        let a = w
            .api
            .call(
                Method::GET,
                &format!("{}?wait=0&root_version=1", paths::POLL),
                &self.token,
                None,
                self.etag.as_deref(),
            )
            .await?;
        match a.status {
            StatusCode::NOT_MODIFIED => return Ok(()),
            StatusCode::OK => {}
            s => bail!(
                "{}: poll answered {s}: {}",
                self.id,
                String::from_utf8_lossy(&a.body)
            ),
        }
        self.etag = a.etag;
        let body: PollResponse = serde_json::from_slice(&a.body).context("poll body")?;
        let Some(env) = body.assignment else {
            return Ok(());
        };
        let payload = base64::engine::general_purpose::STANDARD
            .decode(&env.payload)
            .context("assignment payload")?;
        let assignment: fleetwave_shared::docs::Assignment =
            serde_json::from_slice(&payload).context("assignment")?;
        if assignment.rollback || assignment.not_before > now {
            return Ok(());
        }
        if self.profile.goes_silent {
            self.state = State::Dark;
            return Ok(());
        }
        let (rollout, new) = (assignment.rollout_id.clone(), w.new.clone());
        self.phase(now, &rollout, &new, Phase::Accepted, None);
        self.state = State::Assigned {
            rollout,
            sequence: assignment.sequence,
        };
        Ok(())
    }
}

/// One rollout of one class over a new coordinator in `dir`, every wave with `gate`.
pub async fn run_once(
    dir: &Path,
    n: usize,
    seed: u64,
    run: u64,
    class: Class,
    gate: &str,
) -> anyhow::Result<Outcome> {
    let setup = Setup::open_or_create(dir)?;
    let db = setup.database();
    drop(fleetwave_coordinator::store::SqliteStore::open(&db)?);
    let clock = Clock::adjustable();
    let t0 = {
        let s = clock.now().as_second();
        Timestamp::from_second(s - s.rem_euclid(60))?
    };
    let (old, new) = (format!("{STREAM}-1"), format!("{STREAM}-2"));
    let mut keys = Vec::with_capacity(n);
    {
        let mut conn = rusqlite::Connection::open(&db)?;
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare(
                "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at, last_seen, installed) VALUES (?1, ?2, '{\"sim\":\"1\"}', 'active', '0.1.0-sim', ?3, ?3, ?4)",
            )?;
            let installed =
                serde_json::json!({STREAM: {"release_id": old, "version": "1.0.0", "at": t0}});
            for i in 0..n {
                let key = hex::encode(crate::site::device_key(i).verifying_key().as_bytes());
                st.execute(rusqlite::params![
                    crate::site::site_id(i),
                    key,
                    t0.as_millisecond(),
                    installed.to_string()
                ])?;
                keys.push(key);
            }
        }
        tx.commit()?;
    }
    let config = fleetwave_coordinator::config::Config::load(&setup.dir.join("coordinator.toml"))?;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let app =
        fleetwave_coordinator::server::build_app_with_clock(config, stop_rx, clock.clone()).await?;
    crate::tick::publish_in_process(&app, &setup, &old, "1.0.0", 1).await?;
    crate::tick::publish_in_process(&app, &setup, &new, "2.0.0", 2).await?;
    let session_until = clock.now() + SignedDuration::from_hours(72);
    let mut sites: Vec<Site> = keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            let id = crate::site::site_id(i);
            let profile = Profile::draw(seed, run, i, class);
            Site {
                token: app.sessions.open(&id, None, &key, session_until),
                link: profile.flapping.then(|| Link::new(seed, run, i)),
                noise: Rng::derive(seed, &[run, i as u64, 3]),
                acks: Rng::derive(seed, &[run, i as u64, 4]),
                profile,
                id,
                state: State::Idle,
                etag: None,
                events: 0,
                outbox: Vec::new(),
                signals: VecDeque::new(),
                resend: None,
                next_minute: t0,
                leased_at: None,
                committed_at: None,
                duplicates: 0,
            }
        })
        .collect();
    let world = World {
        api: Api {
            router: fleetwave_coordinator::server::router(app.clone()),
        },
        class,
        t0,
        phase: Rng::derive(seed, &[run, u64::MAX]).uniform(),
        old,
        new: new.clone(),
    };
    let rollout = app
        .engine
        .create_rollout(plan(&new, gate), PlanFormat::Toml, "fleetwave-sim")
        .await
        .map_err(|e| anyhow::anyhow!("create rollout: {e}"))?;
    app.engine
        .rollout_action(&rollout.id, Action::Start, "fleetwave-sim")
        .await
        .map_err(|e| anyhow::anyhow!("start rollout: {e}"))?;
    let mut minutes = 0;
    let end = loop {
        clock.advance(Duration::from_secs(60));
        minutes += 1;
        let now = clock.now();
        let minute = {
            let s = now.as_second();
            Timestamp::from_second(s - s.rem_euclid(60))?
        };
        futures_util::stream::iter(sites.iter_mut().map(|s| s.step(&world, now, minute)))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        app.engine
            .tick_all()
            .await
            .map_err(|e| anyhow::anyhow!("controller pass: {e}"))?;
        let id = rollout.id.clone();
        let record = app
            .db
            .run(move |s| s.rollout(&id))
            .await?
            .context("the rollout disappeared")?;
        // Still running after MAX_MINUTES: neither halted nor completed (undecided).
        if record.status != RolloutStatus::Running || minutes >= MAX_MINUTES {
            break record.status;
        }
    };
    let id = rollout.id.clone();
    let decisions = app.db.run(move |s| s.decisions(&id)).await?;
    let halt = decisions.iter().rev().find(|d| d.kind == "halt");
    let first_lease = sites.iter().filter_map(|s| s.leased_at).min();
    let halt_out = match (end, halt) {
        (RolloutStatus::Halted | RolloutStatus::RolledBack, Some(d)) => Some((
            Halt {
                wave: d.wave.unwrap_or(0),
                reason: d.reason.clone(),
            },
            d.at,
        )),
        (RolloutStatus::Halted | RolloutStatus::RolledBack, None) => {
            bail!("the rollout ended {end:?} without a halt decision")
        }
        _ => None,
    };
    let to_halt = match (&halt_out, first_lease) {
        (Some((_, at)), Some(first)) => Some(at.duration_since(first).as_secs_f64() / 60.0),
        _ => None,
    };
    Ok(Outcome {
        class,
        completed: end == RolloutStatus::Completed,
        halt: halt_out.map(|(h, _)| h),
        installed: sites.iter().filter(|s| s.leased_at.is_some()).count(),
        sites: n,
        to_halt,
        minutes,
        duplicates: sites.iter().map(|s| s.duplicates).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's gate with a 20-minute bake and deadline: a healthy rollout of four
    /// waves is then about 110 simulated minutes instead of 285.
    const QUICK: &str = "{ success_ratio = 0.9, failure_budget_percent = 5, bake = \"20m\", report_deadline = \"20m\" }";

    /// A small fleet through the real engine: the slowly degrading release halts by its
    /// golden-signal analysis, in the first two waves, before most of the fleet took it;
    /// the healthy one completes without a halt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_degradation_halts_early_and_a_healthy_release_completes() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        for run in 0..2 {
            let dir = tempfile::tempdir_in(default_dir()).unwrap();
            let o = run_once(dir.path(), 60, 11, run, Class::SlowDegradation, QUICK)
                .await
                .unwrap();
            let halt = o.halt.as_ref().expect("the degrading release halts");
            assert_eq!(halt.cause(), "analysis", "{}", halt.reason);
            assert!(
                halt.wave <= 1,
                "halted at wave {}: {}",
                halt.wave,
                halt.reason
            );
            assert!(o.installed < 20, "{} of 60 sites took it", o.installed);
            assert!(!o.completed);

            let dir = tempfile::tempdir_in(default_dir()).unwrap();
            let o = run_once(dir.path(), 60, 11, run, Class::Healthy, QUICK)
                .await
                .unwrap();
            assert!(o.halt.is_none(), "false halt: {:?}", o.halt);
            assert!(o.completed, "the healthy rollout completes");
            assert_eq!(o.installed, 60);
        }
    }
}
