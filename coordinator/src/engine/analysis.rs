//! Golden-signal analysis for the controller: reads the samples of the plan's
//! `[[analysis]]` signals for the current wave's groups and puts the verdicts in the view
//! as facts ([`controller::analysis`] decides who is compared, judges and applies the
//! verdicts; this module only reads).
//!
//! Signals arrive per minute, so the verdicts of a rollout's wave are computed at most
//! once per minute of the engine's clock and kept in between: a controller pass reads no
//! samples when the minute has not changed. Each wave's last verdicts stay after the wave
//! passes or halts (the status views and the dashboard's picture show them), in memory
//! only, for at most [`KEPT_ROLLOUTS`] rollouts. This module never decides anything itself.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use super::{Engine, EngineError};
use crate::controller::analysis::{AnalysisFact, Groups, Sample, groups, judge_signal};
use crate::controller::{RolloutStatus, RolloutView};

/// The most rollouts whose verdicts are kept; beyond it, the rollout judged longest ago
/// is forgotten (its timeline keeps the reasons). A running rollout is judged every minute,
/// so it is never the one forgotten while fewer than this many run.
pub const KEPT_ROLLOUTS: usize = 256;

/// The verdicts of one rollout's wave, as of one minute.
#[derive(Debug, Clone)]
struct Analysed {
    minute: Timestamp,
    facts: Vec<AnalysisFact>,
}

/// The last verdicts of each wave of a rollout that had any.
#[derive(Debug, Default)]
pub(super) struct RolloutAnalyses {
    waves: BTreeMap<u32, Analysed>,
}

impl RolloutAnalyses {
    fn latest(&self) -> Option<Timestamp> {
        self.waves.values().map(|a| a.minute).max()
    }
}

/// Keeps `facts` as `wave`'s verdicts of `minute` for rollout `id`, forgetting the rollout
/// judged longest ago when more than [`KEPT_ROLLOUTS`] would be kept.
fn keep(
    all: &mut HashMap<String, RolloutAnalyses>,
    id: &str,
    wave: u32,
    minute: Timestamp,
    facts: Vec<AnalysisFact>,
) {
    if !all.contains_key(id) && all.len() >= KEPT_ROLLOUTS {
        let oldest = all
            .iter()
            .min_by_key(|(_, r)| r.latest())
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            all.remove(&k);
        }
    }
    all.entry(id.to_string())
        .or_default()
        .waves
        .insert(wave, Analysed { minute, facts });
}

/// The start of `t`'s minute.
fn minute_of(t: Timestamp) -> Timestamp {
    let s = t.as_second();
    Timestamp::from_second(s - s.rem_euclid(60)).unwrap_or(t)
}

impl Engine {
    /// Puts the last verdicts computed for each of the rollout's waves into `view` (for
    /// the status views: what the controller judged on its last pass over each wave).
    pub fn last_analysis(&self, id: &str, view: &mut RolloutView) {
        let analyses = self.analyses.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = analyses.get(id) else {
            return;
        };
        for (&wave, a) in &r.waves {
            if let Some(w) = view.waves.get_mut(wave as usize) {
                w.analysis = a.facts.clone();
            }
        }
    }

    /// The last verdicts of each of the rollout's waves that had any, by wave (empty for
    /// a rollout never judged, or forgotten since).
    pub fn analyses(&self, id: &str) -> BTreeMap<u32, Vec<AnalysisFact>> {
        let analyses = self.analyses.lock().unwrap_or_else(|e| e.into_inner());
        analyses
            .get(id)
            .map(|r| r.waves.iter().map(|(&w, a)| (w, a.facts.clone())).collect())
            .unwrap_or_default()
    }

    /// `view` with its current wave's golden-signal verdicts, when the plan asks for
    /// analysis and some site of the wave has committed.
    pub(super) async fn with_analysis(
        &self,
        id: &str,
        mut view: RolloutView,
        now: Timestamp,
    ) -> Result<RolloutView, EngineError> {
        if view.plan.analysis.is_empty()
            || !matches!(view.status, RolloutStatus::Running | RolloutStatus::Paused)
        {
            return Ok(view);
        }
        let Some(wave) = view.current_wave else {
            return Ok(view);
        };
        let minute = minute_of(now);
        let cached = {
            let analyses = self.analyses.lock().unwrap_or_else(|e| e.into_inner());
            analyses
                .get(id)
                .and_then(|r| r.waves.get(&wave))
                .filter(|a| a.minute == minute)
                .map(|a| a.facts.clone())
        };
        let facts = match cached {
            Some(f) => f,
            None => {
                // No site of the wave committed yet: nothing to compare (kept, so that
                // the sites are not walked again this minute).
                let facts = match groups(&view, wave) {
                    Some(groups) => self.judge_wave(id, &view, &groups, now).await?,
                    None => Vec::new(),
                };
                keep(
                    &mut self.analyses.lock().unwrap_or_else(|e| e.into_inner()),
                    id,
                    wave,
                    minute,
                    facts.clone(),
                );
                facts
            }
        };
        if let Some(w) = view.waves.get_mut(wave as usize) {
            w.analysis = facts;
        }
        Ok(view)
    }

    /// Reads each `[[analysis]]` signal's samples since the groups' first minute and
    /// judges them.
    async fn judge_wave(
        &self,
        id: &str,
        view: &RolloutView,
        groups: &Groups,
        now: Timestamp,
    ) -> Result<Vec<AnalysisFact>, EngineError> {
        let (stream, release) = self
            .with_rollout(id, |l| (l.release.name.clone(), l.release.id.clone()))
            .await?;
        let sites = std::sync::Arc::new(groups.sites());
        let mut facts = Vec::with_capacity(view.plan.analysis.len());
        for signal in &view.plan.analysis {
            let (st, name, from, sites) = (
                signal.stream_or(&stream).to_string(),
                signal.signal.clone(),
                groups.from,
                sites.clone(),
            );
            let rows = self
                .db
                .run(move |s| s.signal_samples(&sites, &st, &name, from, now))
                .await?;
            let samples: Vec<Sample<'_>> = rows
                .iter()
                .map(|r| Sample {
                    site_id: &r.site_id,
                    minute: r.minute,
                    value: r.value,
                    release_id: r.release_id.as_deref(),
                })
                .collect();
            facts.push(judge_signal(
                signal,
                groups,
                &release,
                &samples,
                minute_of(now),
            ));
        }
        Ok(facts)
    }
}
