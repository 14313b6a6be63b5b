//! The story the demo tells once the fleet runs: a good release through five waves, a
//! bad one that halts in its first wave and rolls back, with live progress, then the
//! verdict. The fleet itself is launched by [`super::launch`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use fleetwave_shared::protocol::operator::{self as api, paths};

use super::DemoArgs;
use super::fleet;
use super::launch::Demo;
use super::procs::{interrupted, nap};
use crate::api::rollouts::{Progress, tally_words};

impl Demo {
    /// Records what every site reports installed; prints the changes in one line.
    pub(super) fn observe_versions(&mut self) -> Result<()> {
        let sites = self.all_sites()?;
        let mut changes = Vec::new();
        for s in &sites {
            let Some(v) = s
                .installed
                .get(fleet::STREAM)
                .and_then(|i| i.version.clone())
            else {
                continue;
            };
            self.seen_versions
                .entry(s.id.clone())
                .or_default()
                .insert(v.clone());
            if self.last_versions.get(&s.id) != Some(&v) {
                let from = self
                    .last_versions
                    .get(&s.id)
                    .cloned()
                    .unwrap_or_else(|| "1.0.0".into());
                changes.push(format!("{} {from}→{v}", s.id));
                self.last_versions.insert(s.id.clone(), v);
            }
        }
        if !changes.is_empty() {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for s in &self.sites {
                let v = self
                    .last_versions
                    .get(&s.spec.id)
                    .cloned()
                    .unwrap_or_else(|| "1.0.0".into());
                *counts.entry(v).or_default() += 1;
            }
            let fleet: Vec<String> = counts.iter().map(|(v, n)| format!("{v} ×{n}")).collect();
            self.say.line(format!(
                "versions  {}   [fleet: {}]",
                changes.join(", "),
                fleet.join(", ")
            ));
        }
        Ok(())
    }

    /// Prints what changed in the rollout being watched, if any.
    pub(super) fn watch_rollout(&mut self) -> Result<()> {
        let Some((id, mut progress)) = self.watching.take() else {
            return Ok(());
        };
        let view = self.rollout_view(&id);
        if let Ok(view) = &view {
            for line in progress.update(view) {
                self.say.line(line);
            }
        }
        self.watching = Some((id, progress));
        view.map(|_| ())
    }

    pub(super) fn rollout_view(&self, id: &str) -> Result<api::RolloutView> {
        self.client().get(&format!("{}/{id}", paths::ROLLOUTS))
    }

    /// Creates and starts a rollout from the plan file, then prints progress until its
    /// status leaves `running` (or `deadline` passes). Returns the last view, or None when
    /// interrupted.
    pub(super) fn run_rollout(
        &mut self,
        plan_path: &Path,
        deadline: Duration,
    ) -> Result<Option<api::RolloutView>> {
        let created = crate::api::rollouts::create_from_file(self.client(), plan_path)?;
        let waves: Vec<String> = created
            .waves
            .iter()
            .map(|w| format!("{} {} ({} sites)", w.index, w.name, w.tally.sites))
            .collect();
        self.say.line(format!(
            "rollout   {} created for {}: waves {}",
            created.id,
            created.release_id,
            waves.join(" → ")
        ));
        let _: api::RolloutView = self.client().post(
            &format!("{}/{}/start", paths::ROLLOUTS, created.id),
            &serde_json::json!({}),
        )?;
        self.watching = Some((created.id.clone(), Progress::default()));
        let end = Instant::now() + deadline;
        loop {
            self.check_coordinator()?;
            self.check_agents();
            self.watch_rollout()?;
            let view = self.rollout_view(&created.id)?;
            self.observe_versions()?;
            let done = !matches!(
                view.status,
                api::RolloutStatus::Pending | api::RolloutStatus::Running
            );
            if done || Instant::now() > end {
                return Ok(Some(view));
            }
            if nap(Duration::from_millis(700)) {
                return Ok(None);
            }
        }
    }

    /// Waits until every site reports `version` installed (printing changes), or `deadline`.
    pub(super) fn settle(&mut self, version: &str, deadline: Duration) -> Result<Option<bool>> {
        let end = Instant::now() + deadline;
        loop {
            self.check_coordinator()?;
            self.observe_versions()?;
            self.watch_rollout()?;
            // Done when every site reports it and every app really serves it (an app may
            // still be serving a release its agent is about to roll back).
            let reported = self
                .sites
                .iter()
                .all(|s| self.last_versions.get(&s.spec.id).map(String::as_str) == Some(version));
            if reported && self.served_versions().values().all(|v| v == version) {
                return Ok(Some(true));
            }
            if Instant::now() > end {
                return Ok(Some(false));
            }
            if nap(Duration::from_millis(700)) {
                return Ok(None);
            }
        }
    }
}

pub(super) enum Outcome {
    Interrupted,
    /// The story ran; Err says what did not go as expected.
    Done(std::result::Result<(), String>),
}

pub(super) fn story(demo: &mut Demo, args: &DemoArgs) -> Result<Outcome> {
    let say_dir = demo.dir.display().to_string();
    demo.say.line(format!("fleetwave demo in {say_dir}"));
    let (url, token, ca, cdir) = demo.start_coordinator(args.port)?;
    if interrupted() {
        return Ok(Outcome::Interrupted);
    }
    let profile = demo.dir.join("cli.toml");
    std::fs::write(
        &profile,
        format!(
            "# fleetwave CLI profile for this demo: FLEETWAVE_PROFILE={} fleetwave site list\nurl = {:?}\ntoken_file = {:?}\nca = {:?}\n",
            profile.display(),
            url,
            cdir.join("admin.token").display().to_string(),
            ca.display().to_string()
        ),
    )?;
    println!();
    println!(
        "  dashboard:       {url}/   (the browser must trust {})",
        ca.display()
    );
    println!("  operator token:  {token}   (admin)");
    println!(
        "  CLI:             export FLEETWAVE_PROFILE={}",
        profile.display()
    );
    println!("                   fleetwave site list; fleetwave rollout list");
    println!("  logs:            {}", demo.dir.join("logs").display());
    println!("  stop:            Ctrl-C");
    println!();
    demo.say.line(format!(
        "coordinator up on {url} (TLS, SQLite in {}, dev root and release keys in {})",
        cdir.join("data").display(),
        cdir.join("offline-keys").display()
    ));
    let releases = demo.publish_releases(&cdir)?;
    let root = cdir.join("root.1.json");
    demo.start_sites(args.sites, &url, &ca, &root)?;
    if interrupted() {
        return Ok(Outcome::Interrupted);
    }
    // Every agent has talked to the coordinator.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        demo.check_coordinator()?;
        demo.check_agents();
        let seen = demo
            .all_sites()?
            .iter()
            .filter(|s| s.last_seen.is_some())
            .count();
        if seen >= demo.sites.len() {
            break;
        }
        if Instant::now() > end {
            return Ok(Outcome::Done(Err(format!(
                "only {seen} of {} agents reached the coordinator within 2 minutes; see {}",
                demo.sites.len(),
                demo.dir.join("logs").display()
            ))));
        }
        if nap(Duration::from_millis(300)) {
            return Ok(Outcome::Interrupted);
        }
    }
    demo.say.line(format!(
        "all {} agents are polling; every site runs app 1.0.0",
        demo.sites.len()
    ));

    // Act 1: the good release through five waves.
    let good = &releases[1].0;
    let bad = &releases[2].0;
    let plans = demo.dir.join("releases");
    let good_plan = plans.join(format!("rollout-{}.toml", good.version));
    std::fs::write(
        &good_plan,
        fleet::plan(
            &good.release_id(),
            &format!("demo {} to every store", good.version),
        ),
    )?;
    demo.say.blank();
    demo.say.line(format!(
        "=== act 1: {} (healthy) through pigs → canary city → 25% → the rest → dogs",
        good.release_id()
    ));
    let Some(good_view) = demo.run_rollout(&good_plan, Duration::from_secs(600))? else {
        return Ok(Outcome::Interrupted);
    };
    let Some(good_everywhere) = demo.settle(good.version, Duration::from_secs(60))? else {
        return Ok(Outcome::Interrupted);
    };

    // Act 2: the bad release; it must halt in its first wave and roll back.
    let bad_plan = plans.join(format!("rollout-{}.toml", bad.version));
    std::fs::write(
        &bad_plan,
        fleet::plan(
            &bad.release_id(),
            &format!("demo {} to every store", bad.version),
        ),
    )?;
    demo.say.blank();
    demo.say.line(format!(
        "=== act 2: {} (its app fails its health check), same waves, auto_rollback = true",
        bad.release_id()
    ));
    let Some(bad_view) = demo.run_rollout(&bad_plan, Duration::from_secs(300))? else {
        return Ok(Outcome::Interrupted);
    };
    demo.say
        .line("waiting for the first wave's sites to be back on 1.1.0");
    let Some(back) = demo.settle(good.version, Duration::from_secs(120))? else {
        return Ok(Outcome::Interrupted);
    };
    let bad_view = demo.rollout_view(&bad_view.id)?;

    // Act 3: a release that answers its health check but serves worse; the golden-signal
    // analysis must halt it in its first wave.
    let slow_view = if args.acts >= 3 {
        let Some(v) = act_three(demo, &releases[3].0, &plans, good.version)? else {
            return Ok(Outcome::Interrupted);
        };
        Some(v)
    } else {
        None
    };

    let served = demo.served_versions();
    let mut verdict = judge(
        demo,
        &good_view,
        good_everywhere,
        &bad_view,
        back,
        &served,
        bad.version,
    );
    let mut shown = vec![&good_view, &bad_view];
    if let Some((slow_view, slow_back)) = &slow_view {
        let slow_wrong = judge_slow(slow_view, *slow_back);
        if !slow_wrong.is_empty() {
            let mut all: Vec<String> = verdict.err().into_iter().collect();
            all.extend(slow_wrong);
            verdict = Err(all.join("; "));
        }
        shown.push(slow_view);
    }
    summary(demo, &url, &token, &shown, &served, &verdict);
    Ok(Outcome::Done(verdict))
}

/// Act 3: the slower release, judged on its golden signals. The rollout's view once it is
/// over and whether the first wave's sites are back on `good` (None: interrupted).
fn act_three(
    demo: &mut Demo,
    slow: &fleet::DemoVersion,
    plans: &std::path::Path,
    good: &str,
) -> Result<Option<(api::RolloutView, bool)>> {
    let slow_plan = plans.join(format!("rollout-{}.toml", slow.version));
    std::fs::write(
        &slow_plan,
        fleet::analysis_plan(
            &slow.release_id(),
            &format!("demo {} judged on its golden signals", slow.version),
        ),
    )?;
    demo.say.blank();
    demo.say.line(format!(
        "=== act 3: {} ({}): pigs and the canary city first, their error ratio and p95 latency compared with the sites still on {} (signals are per minute: this takes two or three)",
        slow.release_id(),
        slow.words(),
        good
    ));
    let Some(slow_view) = demo.run_rollout(&slow_plan, Duration::from_secs(420))? else {
        return Ok(None);
    };
    for line in analysis_lines(&slow_view) {
        demo.say.line(line);
    }
    demo.say
        .line("waiting for the first wave's sites to be back on 1.1.0");
    let Some(slow_back) = demo.settle(good, Duration::from_secs(120))? else {
        return Ok(None);
    };
    let slow_view = demo.rollout_view(&slow_view.id)?;
    Ok(Some((slow_view, slow_back)))
}

/// The signals that halted a rollout, each with both medians, the change and the p-value.
fn analysis_lines(v: &api::RolloutView) -> Vec<String> {
    use fleetwave_shared::protocol::analysis::{Verdict, number, p_value};
    let mut out = Vec::new();
    for w in &v.waves {
        for a in w.analysis.iter().filter(|a| a.verdict == Verdict::Fail) {
            let (Some(mu), Some(mc)) = (a.upgraded.median, a.control.median) else {
                continue;
            };
            out.push(format!(
                "analysis  wave {} halted by {}: {} on {} upgraded sites vs {} on {} control sites ({}), p = {}",
                w.index,
                a.signal,
                number(mu),
                a.upgraded.sites,
                number(mc),
                a.control.sites,
                match a.relative_effect {
                    Some(r) => format!("{:+.0} %", r * 100.0),
                    None => format!("{:+}", mu - mc),
                },
                a.p_value.map(p_value).unwrap_or_else(|| "-".into()),
            ));
        }
    }
    out
}

/// Did act 3 happen as it should: halted in its first wave by the analysis, nothing later
/// opened, the first wave back on the previous release?
fn judge_slow(v: &api::RolloutView, back: bool) -> Vec<String> {
    use fleetwave_shared::protocol::analysis::Verdict;
    let mut wrong = Vec::new();
    if !matches!(
        v.status,
        api::RolloutStatus::Halted | api::RolloutStatus::RolledBack
    ) {
        wrong.push(format!(
            "the slower rollout {} is {}, not halted",
            v.id,
            v.status.as_str()
        ));
    }
    let failed = v
        .waves
        .first()
        .is_some_and(|w| w.analysis.iter().any(|a| a.verdict == Verdict::Fail));
    if !failed {
        wrong.push(format!(
            "no golden signal of {}'s first wave failed ({})",
            v.id,
            v.status_reason.as_deref().unwrap_or("")
        ));
    }
    if v.waves.iter().any(|w| w.index > 0 && w.opened_at.is_some()) {
        wrong.push(format!("the slower rollout {} opened a later wave", v.id));
    }
    if !back {
        wrong.push("not every site reported 1.1.0 after the slower release's rollback".into());
    }
    wrong
}

/// Did the story happen as it should? Every failed expectation, in one message.
fn judge(
    demo: &Demo,
    good: &api::RolloutView,
    good_everywhere: bool,
    bad: &api::RolloutView,
    back: bool,
    served: &BTreeMap<String, String>,
    bad_version: &str,
) -> std::result::Result<(), String> {
    let mut wrong = Vec::new();
    if good.status != api::RolloutStatus::Completed {
        wrong.push(format!(
            "the good rollout {} is {} ({}), not completed",
            good.id,
            good.status.as_str(),
            good.status_reason.as_deref().unwrap_or("")
        ));
    }
    if !good_everywhere {
        wrong.push("not every site reported 1.1.0 after the good rollout".to_string());
    }
    if !matches!(
        bad.status,
        api::RolloutStatus::Halted | api::RolloutStatus::RolledBack
    ) {
        wrong.push(format!(
            "the bad rollout {} is {}, not halted",
            bad.id,
            bad.status.as_str()
        ));
    }
    let opened_later = bad
        .waves
        .iter()
        .filter(|w| w.index > 0 && w.opened_at.is_some())
        .map(|w| w.name.clone())
        .collect::<Vec<_>>();
    if !opened_later.is_empty() {
        wrong.push(format!(
            "the bad rollout opened later waves: {opened_later:?}"
        ));
    }
    // The view lists only the sites that need attention: the later waves' sites (pending,
    // as they must be) are read from the rollout's site list.
    let bad_sites = crate::api::rollouts::all_sites(demo.client(), &bad.id, None, None)
        .unwrap_or_else(|e| {
            wrong.push(format!("cannot list the sites of {}: {e:#}", bad.id));
            Vec::new()
        });
    for s in bad_sites.iter().filter(|s| s.wave > 0) {
        if s.phase.is_some() {
            wrong.push(format!(
                "{} (wave {}) started on the bad release (phase {:?})",
                s.site_id, s.wave, s.phase
            ));
        }
        if demo
            .seen_versions
            .get(&s.site_id)
            .is_some_and(|v| v.contains(bad_version))
        {
            wrong.push(format!(
                "{} (wave {}) installed {bad_version}",
                s.site_id, s.wave
            ));
        }
    }
    if !back {
        wrong.push("not every site reported 1.1.0 after the rollback".to_string());
    }
    let off: Vec<String> = served
        .iter()
        .filter(|(_, v)| v.as_str() != "1.1.0")
        .map(|(s, v)| format!("{s} serves {v}"))
        .collect();
    if !off.is_empty() {
        wrong.push(format!("apps not on 1.1.0: {}", off.join(", ")));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

fn summary(
    demo: &Demo,
    url: &str,
    token: &str,
    rollouts: &[&api::RolloutView],
    served: &BTreeMap<String, String>,
    verdict: &std::result::Result<(), String>,
) {
    let say = &demo.say;
    say.blank();
    say.line("=== summary");
    for &v in rollouts {
        say.line(format!(
            "rollout {} ({}): {}{}",
            v.id,
            v.release_id,
            v.status.as_str(),
            v.status_reason
                .as_deref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        ));
        for w in &v.waves {
            say.line(format!(
                "    wave {} {:<12} {}",
                w.index,
                w.name,
                match (w.opened_at, w.tally.sites) {
                    (Some(_), _) => tally_words(&w.tally),
                    (None, 0) => "never opened".to_string(),
                    (None, n) => format!("never opened: its {n} site(s) never saw the release"),
                }
            ));
        }
    }
    let mut by_version: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (site, v) in served {
        by_version
            .entry(v.as_str())
            .or_default()
            .push(site.as_str());
    }
    for (v, sites) in &by_version {
        say.line(format!(
            "apps serving {v}: {} ({})",
            sites.len(),
            sites.join(" ")
        ));
    }
    match verdict {
        Ok(()) if rollouts.len() >= 3 => say.line(
            "as expected: 1.1.0 reached every site wave by wave; 1.2.0 (unhealthy) and 1.3.0 (slower, failing more, healthy) each halted in their first wave and rolled back, and no later site ever installed them",
        ),
        Ok(()) => say.line(
            "as expected: 1.1.0 reached every site wave by wave; 1.2.0 (unhealthy) halted in its first wave and rolled back, and no later site ever installed it",
        ),
        Err(e) => say.line(format!("NOT as expected: {e}")),
    }
    say.line(format!("dashboard {url}/  operator token {token}"));
    let ids: Vec<&str> = rollouts.iter().map(|v| v.id.as_str()).collect();
    say.line(format!(
        "timelines and the analysis: fleetwave rollout status ID ({}) with FLEETWAVE_PROFILE={}",
        ids.join(", "),
        demo.dir.join("cli.toml").display()
    ));
}
