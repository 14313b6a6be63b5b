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
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::{Engine, EngineError};
use crate::controller::analysis::{AnalysisFact, Groups, Sample, groups, judge_signal};
use crate::controller::{RolloutStatus, RolloutView};
use crate::store::SignalSample;

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

/// The last verdicts of each wave of a rollout that had any, and the samples read for
/// its current wave.
#[derive(Debug, Default)]
pub(super) struct RolloutAnalyses {
    waves: BTreeMap<u32, Analysed>,
    samples: Option<SampleCache>,
}

/// Minutes before the last read that each read takes again: an agent sends its finished
/// minutes with its next report, so a minute normally arrives within a poll interval.
pub const REREAD_MINUTES: i64 = 3;
/// Each site's samples are read whole again once every this many judgements (a tenth of
/// the sites each minute, by their stable seed): a minute that arrives later than
/// [`REREAD_MINUTES`] (an agent back from offline sends its queue) counts within this
/// many minutes.
pub const FULL_READ_EVERY: u64 = 10;

/// One stored sample, as kept between judgements.
#[derive(Debug, Clone)]
struct Row {
    minute: Timestamp,
    value: f64,
    release_id: Option<Arc<str>>,
}

/// The samples already read for a rollout's wave, per signal (plan order) and site, so
/// that a judgement reads only the minutes that are new: a read of every minute of 400
/// sites for 10 signals took 80-190 ms per pass with 30 minutes stored
/// (`fleetwave-sim analysis`).
#[derive(Debug)]
struct SampleCache {
    wave: u32,
    /// The earliest minute read (the groups' first minute when the cache was made).
    from: Timestamp,
    /// Every minute before this was read (up to late arrivals, see [`FULL_READ_EVERY`]).
    read_to: Timestamp,
    /// Judgements made from this cache: whose turn it is to be read whole.
    reads: u64,
    signals: Vec<HashMap<String, Vec<Row>>>,
}

/// Which sites a judgement reads whole (from the cache's first minute) and which only
/// from `since`.
#[derive(Debug, Default, PartialEq)]
struct ReadPlan {
    whole: Vec<String>,
    recent: Vec<String>,
    since: Option<Timestamp>,
}

impl SampleCache {
    fn new(wave: u32, from: Timestamp, signals: usize) -> SampleCache {
        SampleCache {
            wave,
            from,
            read_to: from,
            reads: 0,
            signals: vec![HashMap::new(); signals],
        }
    }

    /// Usable for judging `wave` from `from` with `signals` signals.
    fn fits(&self, wave: u32, from: Timestamp, signals: usize) -> bool {
        self.wave == wave && self.from <= from && self.signals.len() == signals
    }

    /// New sites and the sites whose turn it is are read whole; the others from a few
    /// minutes before the last read. `turn` is a site's share of the
    /// [`FULL_READ_EVERY`] turns (its stable seed).
    fn plan(&self, sites: &[String], turn: impl Fn(&str) -> u64) -> ReadPlan {
        let mut plan = ReadPlan::default();
        let now_turn = self.reads % FULL_READ_EVERY;
        for site in sites {
            let known = self.signals.iter().all(|m| m.contains_key(site));
            if !known || turn(site) == now_turn {
                plan.whole.push(site.clone());
            } else {
                plan.recent.push(site.clone());
            }
        }
        if !plan.recent.is_empty() {
            plan.since = Some(self.read_to - SignedDuration::from_mins(REREAD_MINUTES));
        }
        plan
    }

    /// Takes in what `plan` read for signal `i` (`whole` and `recent` rows), up to `to`,
    /// and forgets the sites no longer compared.
    fn take(
        &mut self,
        i: usize,
        plan: &ReadPlan,
        whole: Vec<SignalSample>,
        recent: Vec<SignalSample>,
        sites: &[String],
    ) {
        let map = &mut self.signals[i];
        let mut releases: HashMap<String, Arc<str>> = HashMap::new();
        let mut row = |r: SignalSample| Row {
            minute: r.minute,
            value: r.value,
            release_id: r.release_id.map(|id| {
                releases
                    .entry(id)
                    .or_insert_with_key(|k| Arc::from(k.as_str()))
                    .clone()
            }),
        };
        for site in &plan.whole {
            map.insert(site.clone(), Vec::new());
        }
        if let Some(since) = plan.since {
            for site in &plan.recent {
                if let Some(rows) = map.get_mut(site) {
                    rows.retain(|r| r.minute < since);
                }
            }
        }
        for r in whole.into_iter().chain(recent) {
            if let Some(rows) = map.get_mut(&r.site_id) {
                rows.push(row(r));
            }
        }
        if map.len() > sites.len() {
            let keep: std::collections::HashSet<&str> = sites.iter().map(String::as_str).collect();
            map.retain(|site, _| keep.contains(site.as_str()));
        }
    }
}

impl RolloutAnalyses {
    fn latest(&self) -> Option<Timestamp> {
        self.waves.values().map(|a| a.minute).max()
    }
}

/// Keeps `facts` as `wave`'s verdicts of `minute` for rollout `id`, and the samples read
/// for them, forgetting the rollout judged longest ago when more than [`KEPT_ROLLOUTS`]
/// would be kept.
fn keep(
    all: &mut HashMap<String, RolloutAnalyses>,
    id: &str,
    wave: u32,
    minute: Timestamp,
    facts: Vec<AnalysisFact>,
    samples: Option<SampleCache>,
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
    let r = all.entry(id.to_string()).or_default();
    r.waves.insert(wave, Analysed { minute, facts });
    r.samples = samples;
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
            // Verdicts stay for the status views; the samples read for them do not.
            if let Some(r) = self
                .analyses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(id)
            {
                r.samples = None;
            }
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
                let (facts, samples) = match groups(&view, wave) {
                    Some(groups) => self.judge_wave(id, &view, &groups, now).await?,
                    None => (Vec::new(), None),
                };
                keep(
                    &mut self.analyses.lock().unwrap_or_else(|e| e.into_inner()),
                    id,
                    wave,
                    minute,
                    facts.clone(),
                    samples,
                );
                facts
            }
        };
        if let Some(w) = view.waves.get_mut(wave as usize) {
            w.analysis = facts;
        }
        Ok(view)
    }

    /// Reads each `[[analysis]]` signal's samples since the groups' first minute (the
    /// minutes not read before, see [`SampleCache`]) and judges them.
    async fn judge_wave(
        &self,
        id: &str,
        view: &RolloutView,
        groups: &Groups,
        now: Timestamp,
    ) -> Result<(Vec<AnalysisFact>, Option<SampleCache>), EngineError> {
        let (stream, release) = self
            .with_rollout(id, |l| (l.release.name.clone(), l.release.id.clone()))
            .await?;
        let wave = view.current_wave.unwrap_or_default();
        let n = view.plan.analysis.len();
        let mut cache = self
            .analyses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
            .and_then(|r| r.samples.take())
            .filter(|c| c.fits(wave, groups.from, n))
            .unwrap_or_else(|| SampleCache::new(wave, groups.from, n));
        let sites = groups.sites();
        let plan = Arc::new(cache.plan(&sites, |site| {
            (crate::controller::seed(id, site) * FULL_READ_EVERY as f64) as u64
        }));
        // The signals by stream (usually all the release's), with their places in the plan.
        let mut streams: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
        for (i, a) in view.plan.analysis.iter().enumerate() {
            streams
                .entry(a.stream_or(&stream).to_string())
                .or_default()
                .push((i, a.signal.clone()));
        }
        let (from, p) = (cache.from, plan.clone());
        // One trip to the store; one statement per site and stream.
        let rows = self
            .db
            .run(move |s| {
                let mut rows: Vec<(Vec<SignalSample>, Vec<SignalSample>)> =
                    (0..n).map(|_| Default::default()).collect();
                for (st, signals) in &streams {
                    let names: Vec<String> = signals.iter().map(|(_, n)| n.clone()).collect();
                    let mut whole = if p.whole.is_empty() {
                        vec![Vec::new(); names.len()]
                    } else {
                        s.signals_samples(&p.whole, st, &names, from, now)?
                    };
                    let mut recent = match p.since {
                        Some(since) => s.signals_samples(&p.recent, st, &names, since, now)?,
                        None => vec![Vec::new(); names.len()],
                    };
                    for (k, (i, _)) in signals.iter().enumerate() {
                        rows[*i] = (
                            std::mem::take(&mut whole[k]),
                            std::mem::take(&mut recent[k]),
                        );
                    }
                }
                Ok::<_, crate::store::StoreError>(rows)
            })
            .await?;
        for (i, (whole, recent)) in rows.into_iter().enumerate() {
            cache.take(i, &plan, whole, recent, &sites);
        }
        cache.read_to = cache.read_to.max(minute_of(now));
        cache.reads += 1;
        let mut facts = Vec::with_capacity(n);
        for (i, signal) in view.plan.analysis.iter().enumerate() {
            let samples: Vec<Sample<'_>> = cache.signals[i]
                .iter()
                .flat_map(|(site, rows)| {
                    rows.iter().map(move |r| Sample {
                        site_id: site,
                        minute: r.minute,
                        value: r.value,
                        release_id: r.release_id.as_deref(),
                    })
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
        Ok((facts, Some(cache)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(m: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + m * 60).unwrap()
    }

    fn sample(site: &str, m: i64, value: f64) -> SignalSample {
        SignalSample {
            site_id: site.into(),
            minute: t(m),
            value,
            release_id: Some("r-2".into()),
        }
    }

    fn rows(c: &SampleCache, site: &str) -> Vec<(i64, f64)> {
        c.signals[0][site]
            .iter()
            .map(|r| ((r.minute.as_second() - t(0).as_second()) / 60, r.value))
            .collect()
    }

    /// New sites are read whole; known ones only from a few minutes before the last
    /// read (a minute sent again replaces itself), except on their turn; sites no longer
    /// compared are forgotten.
    #[test]
    fn a_judgement_reads_only_the_new_minutes_of_known_sites() {
        let sites: Vec<String> = vec!["a".into(), "b".into()];
        let mut c = SampleCache::new(0, t(0), 1);
        let p = c.plan(&sites, |_| 5);
        assert_eq!((p.whole.len(), p.recent.len(), p.since), (2, 0, None));
        let whole = (0..10)
            .flat_map(|m| [sample("a", m, 1.0), sample("b", m, 2.0)])
            .collect();
        c.take(0, &p, whole, vec![], &sites);
        c.read_to = t(10);
        c.reads = 1;
        assert_eq!(rows(&c, "a").len(), 10);

        // "b"'s turn comes at reads % FULL_READ_EVERY == 1: read whole; "a" from minute 7.
        let p = c.plan(&sites, |s| if s == "b" { 1 } else { 5 });
        assert_eq!(p.whole, vec!["b".to_string()]);
        assert_eq!(p.recent, vec!["a".to_string()]);
        assert_eq!(p.since, Some(t(10 - REREAD_MINUTES)));
        // Minute 8 of "a" arrived again with another value, minute 10 is new; "b" had a
        // late minute 3 changed (only a whole read sees it).
        let recent = vec![
            sample("a", 8, 1.5),
            sample("a", 9, 1.0),
            sample("a", 10, 1.0),
        ];
        let mut whole: Vec<SignalSample> = (0..11).map(|m| sample("b", m, 2.0)).collect();
        whole[3].value = 9.0;
        c.take(0, &p, whole, recent, &sites);
        let a = rows(&c, "a");
        assert_eq!(
            a.len(),
            10,
            "minutes 0-6 kept, 8-10 read again (7 had no sample)"
        );
        assert!(a.contains(&(8, 1.5)) && a.contains(&(10, 1.0)) && !a.contains(&(8, 1.0)));
        assert!(rows(&c, "b").contains(&(3, 9.0)));
        assert_eq!(rows(&c, "b").len(), 11);

        // "b" left the groups.
        let only_a = vec!["a".to_string()];
        let p = c.plan(&only_a, |_| 5);
        c.take(0, &p, vec![], vec![], &only_a);
        assert!(!c.signals[0].contains_key("b"));
    }

    #[test]
    fn a_cache_fits_only_its_wave_signals_and_first_minute() {
        let c = SampleCache::new(1, t(5), 3);
        assert!(c.fits(1, t(5), 3));
        assert!(
            c.fits(1, t(7), 3),
            "a later first minute: rows before it are left out"
        );
        assert!(
            !c.fits(1, t(4), 3),
            "an earlier first minute needs a whole read"
        );
        assert!(!c.fits(2, t(5), 3));
        assert!(!c.fits(1, t(5), 2));
    }
}
