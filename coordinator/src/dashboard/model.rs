//! What the dashboard shows about rollouts, computed from the stored facts with the wave
//! controller's own functions (site states, tallies, needed successes, failure budgets,
//! gate verdicts), so that the page and the controller can never disagree.
//!
//! Pure: a loaded rollout and the time in, numbers and sentences out. The same model
//! renders the page and feeds its live updates. It never decides anything.

use std::collections::{BTreeMap, HashMap};

use fleetwave_shared::protocol::operator::RolloutStatus;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::controller::gate::{failure_budget, human, needed};
use crate::controller::{self, SiteState};
use crate::engine::{Loaded, facts};
use crate::plan::OnSilent;

/// The states a progress bar shows, in drawing order, with their labels.
pub const SEGMENTS: [(&str, &str); 8] = [
    ("succeeded", "succeeded"),
    ("in_progress", "in progress"),
    ("deferred", "deferred"),
    ("pending", "pending"),
    ("silent", "silent"),
    ("failed", "failed"),
    ("rolled_back", "rolled back"),
    ("skipped", "skipped"),
];

/// How many sites stand where (one count per [`SEGMENTS`] entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: u32,
    pub by_state: BTreeMap<&'static str, u32>,
}

impl Counts {
    pub fn add(&mut self, state: &'static str) {
        self.total += 1;
        *self.by_state.entry(state).or_default() += 1;
    }

    pub fn get(&self, state: &str) -> u32 {
        self.by_state.get(state).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: &Counts) {
        self.total += other.total;
        for (k, v) in &other.by_state {
            *self.by_state.entry(k).or_default() += v;
        }
    }

    /// The bar's segments as (state, x, width) in a 0..1000 box; empty states left out.
    pub fn segments(&self) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut x = 0u32;
        for (i, (state, label)) in SEGMENTS.iter().enumerate() {
            let n = self.get(state);
            // Cumulative rounding: the segments always fill exactly 1000 units.
            let end = if self.total == 0 {
                0
            } else {
                let upto: u32 = SEGMENTS[..=i].iter().map(|(s, _)| self.get(s)).sum();
                (upto as u64 * 1000 / self.total as u64) as u32
            };
            out.push(Segment {
                state,
                label,
                count: n,
                x,
                width: end - x,
            });
            x = end;
        }
        out
    }
}

/// One part of a stacked progress bar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub state: &'static str,
    pub label: &'static str,
    pub count: u32,
    pub x: u32,
    pub width: u32,
}

/// One wave as the rollout page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WaveModel {
    pub index: u32,
    pub name: String,
    /// `not open`, `open`, `passed`.
    pub phase: &'static str,
    pub opened_at: String,
    pub counts: Counts,
    pub segments: Vec<Segment>,
    /// The gate as configured, in words.
    pub thresholds: String,
    /// Where the wave stands against the gate, e.g. "succeeded 46 of 48 needed; bake 12m of
    /// 30m; failures 1 of budget 3".
    pub numbers: String,
    /// The controller's own verdict sentence for the wave.
    pub standing: String,
    pub approval: String,
    /// This wave waits for an operator's approval now.
    pub awaiting_approval: bool,
}

/// One decision in the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRow {
    pub at: String,
    pub kind: String,
    pub wave: String,
    pub reason: String,
}

/// A site that needs attention (failed, silent, rolled back).
#[derive(Debug, Clone, Serialize)]
pub struct AttentionSite {
    pub site_id: String,
    pub wave: u32,
    pub state: &'static str,
    pub detail: String,
}

/// A site served by bundle (an air-gapped site): its wave waits for its reports until
/// `until` plus the report deadline.
#[derive(Debug, Clone, Serialize)]
pub struct BundledSite {
    pub site_id: String,
    pub wave: u32,
    /// Where it stands (a [`SEGMENTS`] key).
    pub state: &'static str,
    /// The bundle's assignment is valid until then.
    pub until: String,
    /// The bundle has expired (a site that has not reported turns silent).
    pub expired: bool,
}

/// A rollout as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutModel {
    pub id: String,
    pub name: String,
    pub release_id: String,
    pub status: &'static str,
    pub status_reason: String,
    pub created: String,
    pub updated: String,
    pub waves: Vec<WaveModel>,
    pub totals: Counts,
    pub total_segments: Vec<Segment>,
    /// e.g. `current wave 2 (general) of waves 0–3`.
    pub current: String,
    pub decisions: Vec<DecisionRow>,
    pub attention: Vec<AttentionSite>,
    pub attention_more: u32,
    /// Sites served by bundle (the first 50), and how many more.
    pub bundled: Vec<BundledSite>,
    pub bundled_more: u32,
    /// Actions the rollout's status allows now (the engine checks again).
    pub controls: Vec<&'static str>,
    /// The wave an approval applies to.
    pub approve_wave: Option<u32>,
}

/// A time for people, in UTC to the second.
pub fn when(t: Option<Timestamp>) -> String {
    match t {
        Some(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => "—".to_string(),
    }
}

/// "3m ago" style age.
pub fn ago(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) if t <= now => format!("{} ago", human(now.duration_since(t))),
        Some(_) => "just now".to_string(),
        None => "never".to_string(),
    }
}

fn state_name(s: SiteState) -> &'static str {
    match s {
        SiteState::Pending => "pending",
        SiteState::InProgress => "in_progress",
        SiteState::Succeeded => "succeeded",
        SiteState::Failed => "failed",
        SiteState::Silent => "silent",
        SiteState::Deferred => "deferred",
        SiteState::Skipped => "skipped",
    }
}

/// Which controls a rollout in `status` shows: the actions [`RolloutStatus::allows`]
/// (the engine's own rule), approve only while a wave waits for approval, and skip and
/// retry (per site or per wave, shown beside them) never here.
pub fn allowed_controls(status: RolloutStatus, approve: bool) -> Vec<&'static str> {
    use fleetwave_shared::protocol::ActionKind;
    status
        .allowed_actions()
        .into_iter()
        .filter(|a| match a {
            ActionKind::Approve => approve,
            ActionKind::Skip | ActionKind::Retry => false,
            _ => true,
        })
        .map(ActionKind::as_str)
        .collect()
}

/// Where one member of a rollout stands: its bar state (a [`SEGMENTS`] key) and the
/// controller's status once its wave is open (which carries the reason in words).
fn member_state(
    gate: &crate::plan::Gate,
    opened_at: Option<Timestamp>,
    s: &crate::store::RolloutSiteRecord,
    now: Timestamp,
) -> (&'static str, Option<controller::SiteStatus>) {
    let f = facts(s);
    let (state, status) = match opened_at {
        Some(opened) => {
            let st = controller::site_status(gate, opened, &f, now);
            (state_name(st.state), Some(st))
        }
        None if f.skipped => ("skipped", None),
        None => ("pending", None),
    };
    if s.rollback_sequence.is_some() {
        ("rolled_back", status)
    } else {
        (state, status)
    }
}

/// Every member's bar state, by site id (the grid's colours by rollout state).
pub fn member_states(l: &Loaded, now: Timestamp) -> HashMap<String, &'static str> {
    let mut out = HashMap::with_capacity(l.sites.len());
    for s in &l.sites {
        let Some(wave) = l.plan.waves.get(s.wave as usize) else {
            continue;
        };
        let opened = l
            .record
            .waves
            .get(s.wave as usize)
            .and_then(|w| w.opened_at);
        let (state, _) = member_state(&wave.gate, opened, s, now);
        out.insert(s.site_id.clone(), state);
    }
    out
}

/// Builds the page model of a loaded rollout at `now`.
///
/// Reads the controller's kept view of the rollout ([`Loaded::with_view`]: no copy of
/// the members), classifies each member once without words and makes words only for the
/// sites the page lists (the first 50 needing attention).
pub fn rollout_model(l: &Loaded, now: Timestamp) -> RolloutModel {
    l.with_view(|view| model_of(l, view, now))
}

fn model_of(l: &Loaded, view: &controller::RolloutView, now: Timestamp) -> RolloutModel {
    let mut waves = Vec::new();
    let mut totals = Counts::default();
    let mut attention = Vec::new();
    let mut attention_total = 0u32;
    let mut bundled = Vec::new();
    let mut bundled_total = 0u32;
    let mut approve_wave = None;
    let no_sites = Vec::new();
    for (i, plan_wave) in l.plan.waves.iter().enumerate() {
        let gate = &plan_wave.gate;
        let rec = l.record.waves.get(i).cloned().unwrap_or_default();
        let sites = view.waves.get(i).map(|w| &w.sites).unwrap_or(&no_sites);
        let mut counts = Counts::default();
        let mut tally = match rec.opened_at {
            Some(opened) => controller::tally(gate, opened, sites, now),
            None => controller::WaveTally::default(),
        };
        for f in sites {
            let state = match rec.opened_at {
                Some(opened) => state_name(controller::site_state(gate, opened, f, now)),
                None => {
                    tally.total += 1;
                    if f.skipped {
                        tally.skipped += 1;
                        "skipped"
                    } else {
                        tally.pending += 1;
                        "pending"
                    }
                }
            };
            let state = if f.rollback_assigned {
                "rolled_back"
            } else {
                state
            };
            counts.add(state);
            if let Some(until) = f.bundle_until {
                bundled_total += 1;
                if bundled.len() < 50 {
                    bundled.push(BundledSite {
                        site_id: f.site_id.clone(),
                        wave: i as u32,
                        state,
                        until: when(Some(until)),
                        expired: until <= now,
                    });
                }
            }
            if matches!(state, "failed" | "silent" | "rolled_back") {
                attention_total += 1;
                if attention.len() < 50 {
                    let detail = match rec.opened_at {
                        Some(opened) => controller::site_status(gate, opened, f, now).detail,
                        None if f.skipped => "skipped by an operator".to_string(),
                        None => "wave not open yet".to_string(),
                    };
                    attention.push(AttentionSite {
                        site_id: f.site_id.clone(),
                        wave: i as u32,
                        state,
                        detail: if state == "rolled_back" {
                            format!("sent back to its previous release ({detail})")
                        } else {
                            detail
                        },
                    });
                }
            }
        }
        let counted = tally.counted(gate.on_silent);
        let need = needed(gate, counted);
        let budget = failure_budget(gate, counted);
        let failures = tally.failures(gate.on_silent);
        let mut numbers = vec![
            format!("succeeded {} of {need} needed", tally.succeeded),
            format!("failures {failures} of budget {budget}"),
        ];
        if let Some(opened) = rec.opened_at {
            let open_for = now.duration_since(opened).max(SignedDuration::ZERO);
            numbers.insert(
                1,
                format!(
                    "bake {} of {}",
                    human(open_for.min(gate.bake)),
                    human(gate.bake)
                ),
            );
        }
        let min_req = gate.min_sample.min(counted);
        if min_req > 1 {
            numbers.push(format!(
                "finished {} of min sample {min_req}",
                tally.finished(gate.on_silent)
            ));
        }
        let verdict = controller::wave_verdict(view, i as u32, now);
        let awaiting_approval = matches!(
            &verdict,
            Some(controller::GateVerdict::Wait {
                blocker: controller::WaitBlocker::Approval,
                ..
            })
        );
        let phase = match (rec.opened_at, rec.passed_at) {
            (_, Some(_)) => "passed",
            (Some(_), None) => "open",
            (None, None) => "not open",
        };
        // The approve control shows when the gate passed and waits for an operator.
        if awaiting_approval && rec.approved_at.is_none() {
            approve_wave = Some(i as u32);
        }
        let approval = if !gate.approval {
            "no approval needed".to_string()
        } else if let Some(at) = rec.approved_at {
            format!(
                "approved by {} at {}",
                rec.approved_by.clone().unwrap_or_default(),
                when(Some(at))
            )
        } else if awaiting_approval {
            "gate passed: waiting for an operator's approval".to_string()
        } else {
            "needs an operator's approval once the gate passes".to_string()
        };
        let thresholds = format!(
            "success ratio {}% of counted sites; failure budget {}; min sample {}; bake {}; report deadline {}; silent sites {}{}",
            (gate.success_ratio * 100.0 * 100.0).round() / 100.0,
            match (gate.failure_budget, gate.failure_budget_percent) {
                (Some(n), Some(p)) => format!("{n} or {p}% (the smaller)"),
                (Some(n), None) => n.to_string(),
                (None, Some(p)) => format!("{p}%"),
                (None, None) => "what the success ratio leaves".to_string(),
            },
            gate.min_sample,
            human(gate.bake),
            human(gate.report_deadline),
            match gate.on_silent {
                OnSilent::Fail => "count as failures",
                OnSilent::Exclude => "are excluded",
            },
            if gate.approval {
                "; approval required"
            } else {
                ""
            }
        );
        totals.merge(&counts);
        waves.push(WaveModel {
            index: i as u32,
            name: plan_wave.name.clone(),
            phase,
            opened_at: when(rec.opened_at),
            segments: counts.segments(),
            counts,
            thresholds,
            numbers: numbers.join("; "),
            standing: verdict
                .map(|v| v.reason().to_string())
                .unwrap_or_else(|| "not open yet".to_string()),
            approval,
            awaiting_approval,
        });
    }
    let current = match l.current_wave() {
        Some(c) => format!(
            "current wave {c} ({}) of waves 0–{}",
            l.plan
                .waves
                .get(c as usize)
                .map(|w| w.name.as_str())
                .unwrap_or("?"),
            l.plan.waves.len().saturating_sub(1)
        ),
        None => format!("no wave open yet (of {})", l.plan.waves.len()),
    };
    RolloutModel {
        id: l.record.id.clone(),
        name: l.plan.name.clone(),
        release_id: l.record.release_id.clone(),
        status: l.record.status.as_str(),
        status_reason: l.record.status_reason.clone().unwrap_or_default(),
        created: format!(
            "{} by {}",
            when(Some(l.record.created_at)),
            l.record.created_by
        ),
        updated: when(Some(l.record.updated_at)),
        total_segments: totals.segments(),
        totals,
        waves,
        current,
        decisions: Vec::new(),
        attention,
        attention_more: attention_total.saturating_sub(50),
        bundled,
        bundled_more: bundled_total.saturating_sub(50),
        controls: allowed_controls(l.record.status, approve_wave.is_some()),
        approve_wave,
    }
}

/// The timeline, newest first, at most `limit` entries.
pub fn decision_rows(decisions: &[crate::store::DecisionRecord], limit: usize) -> Vec<DecisionRow> {
    decisions
        .iter()
        .rev()
        .take(limit)
        .map(|d| DecisionRow {
            at: when(Some(d.at)),
            kind: d.kind.clone(),
            wave: d.wave.map(|w| w.to_string()).unwrap_or_default(),
            reason: d.reason.clone(),
        })
        .collect()
}

/// The live-update message of a rollout: every text the page patches, keyed as the
/// page's `data-live` attributes, the bars, the controls and the timeline.
pub fn rollout_live(m: &RolloutModel) -> serde_json::Value {
    let mut text = BTreeMap::new();
    text.insert("status".to_string(), m.status.to_string());
    text.insert("status_reason".to_string(), m.status_reason.clone());
    text.insert("current".to_string(), m.current.clone());
    text.insert("updated".to_string(), m.updated.clone());
    let mut bars = BTreeMap::new();
    bars.insert(format!("{}.total", m.id), m.total_segments.clone());
    for (state, _) in SEGMENTS {
        text.insert(format!("total.{state}"), m.totals.get(state).to_string());
    }
    for w in &m.waves {
        let k = |f: &str| format!("w{}.{f}", w.index);
        text.insert(k("phase"), w.phase.to_string());
        text.insert(k("opened_at"), w.opened_at.clone());
        text.insert(k("numbers"), w.numbers.clone());
        text.insert(k("standing"), w.standing.clone());
        text.insert(k("approval"), w.approval.clone());
        for (state, _) in SEGMENTS {
            text.insert(k(state), w.counts.get(state).to_string());
        }
        bars.insert(format!("{}.w{}", m.id, w.index), w.segments.clone());
    }
    serde_json::json!({
        "text": text,
        "bars": bars,
        "controls": m.controls,
        "approve_wave": m.approve_wave,
        "timeline": m.decisions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_fill_the_bar_exactly() {
        let mut c = Counts::default();
        for s in [
            "succeeded",
            "succeeded",
            "failed",
            "pending",
            "pending",
            "pending",
            "silent",
        ] {
            c.add(s);
        }
        let segs = c.segments();
        assert_eq!(segs.iter().map(|s| s.width).sum::<u32>(), 1000);
        let succ = segs.iter().find(|s| s.state == "succeeded").unwrap();
        assert_eq!((succ.x, succ.width, succ.count), (0, 285, 2));
        assert!(Counts::default().segments().iter().all(|s| s.width == 0));
    }

    #[test]
    fn controls_follow_the_status() {
        use RolloutStatus::*;
        assert_eq!(
            allowed_controls(Running, false),
            vec!["pause", "abort", "rollback"]
        );
        assert_eq!(
            allowed_controls(Halted, true),
            vec!["resume", "approve", "abort", "rollback"]
        );
        assert_eq!(allowed_controls(Aborted, true), Vec::<&str>::new());
        assert_eq!(allowed_controls(Completed, false), vec!["rollback"]);
    }
}
