//! A plan's dry run: which sites each wave would take now, which sites are left out and
//! why, and the earliest each wave could open.
//!
//! Membership is [`crate::controller::place`] itself, run over the fleet as creating the
//! rollout runs it; nothing here selects sites another way. The earliest opens are a lower
//! bound: the first wave opens at `start_at` (or now), and each later wave opens when the
//! one before could pass its gate at the earliest, assuming every gate passes the moment
//! it can: each site installs, instantly and successfully, as soon as its maintenance
//! window (in its own `tz`) and the fleet's freezes let it; the gate needs as many sites as
//! its success ratio and `min_sample` ask for, each healthy for the bake after installing,
//! and the wave open for its bake; approvals are given at once.
//!
//! Pure: the sites, freezes and time are arguments; it never reads a clock, a store or
//! the network, and never stores anything.

use std::collections::{BTreeMap, HashMap};

use fleetwave_shared::protocol::operator::{
    ExcludedSite, ExclusionGroup, ExclusionReason, PREVIEW_SITES, PlanPreview, StartAtView,
    WavePreview,
};
use fleetwave_shared::window::{Freeze, Window, zone};
use jiff::Timestamp;

use crate::controller::{self, Candidate};
use crate::plan::{RolloutPlan, StartAt, TZ_LABEL};

/// One enrolled site, as the preview sees it.
#[derive(Debug, Clone, Copy)]
pub struct PreviewSite<'a> {
    pub site_id: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// False: decommissioned.
    pub active: bool,
    /// The site asked to defer installs until then.
    pub deferred_until: Option<Timestamp>,
    /// Another active rollout that holds the site.
    pub in_rollout: Option<&'a str>,
    /// An operator holds the site (`fleetwave site hold`): by whom, and why.
    pub held: Option<(&'a str, &'a str)>,
}

/// The wire form of a plan's `start_at`.
pub fn start_at_view(s: &StartAt) -> StartAtView {
    StartAtView {
        at: s.at,
        zone: s.zone.clone(),
        local: s.local(),
        text: s.text.clone(),
    }
}

/// What `plan` would do now over `sites`. `seed_id` is the rollout id the seeds are drawn
/// from (a created rollout's id; any fixed string for a plan not created yet: then which
/// sites a share wave takes is an example, its count is exact).
pub fn preview(
    plan: &RolloutPlan,
    seed_id: &str,
    sites: &[PreviewSite<'_>],
    freezes: &[Freeze],
    now: Timestamp,
) -> PlanPreview {
    let mut excluded: BTreeMap<ExclusionReason, Vec<ExcludedSite>> = BTreeMap::new();
    for s in sites.iter().filter(|s| s.active) {
        if let Some((by, why)) = s.held {
            excluded
                .entry(ExclusionReason::Held)
                .or_default()
                .push(ExcludedSite {
                    site_id: s.site_id.to_string(),
                    detail: Some(format!("held by {by}: {why}")),
                });
        }
    }
    let active: Vec<&PreviewSite> = sites
        .iter()
        .filter(|s| s.active && s.held.is_none())
        .collect();
    for s in sites.iter().filter(|s| !s.active) {
        excluded
            .entry(ExclusionReason::Decommissioned)
            .or_default()
            .push(ExcludedSite {
                site_id: s.site_id.to_string(),
                detail: None,
            });
    }
    let candidates: Vec<Candidate> = active
        .iter()
        .map(|s| Candidate {
            site_id: s.site_id,
            labels: s.labels,
        })
        .collect();
    let placed = controller::place(plan, seed_id, 0, &candidates);
    let mut waves: Vec<Vec<&PreviewSite>> = vec![Vec::new(); plan.waves.len()];
    for (s, wave) in active.iter().zip(placed) {
        match (wave, s.in_rollout) {
            (None, _) => excluded
                .entry(ExclusionReason::NoMatch)
                .or_default()
                .push(ExcludedSite {
                    site_id: s.site_id.to_string(),
                    detail: Some(format!("the rollout's selector is {}", plan.selector)),
                }),
            (Some(_), Some(other)) => excluded
                .entry(ExclusionReason::InAnotherRollout)
                .or_default()
                .push(ExcludedSite {
                    site_id: s.site_id.to_string(),
                    detail: Some(format!("in rollout {other}")),
                }),
            (Some(w), None) => waves[w as usize].push(s),
        }
    }
    let timings: Vec<Vec<SiteTiming>> = waves
        .iter()
        .map(|w| {
            w.iter()
                .map(|s| SiteTiming {
                    tz: s.labels.get(TZ_LABEL).map(String::as_str),
                    deferred_until: s.deferred_until,
                })
                .collect()
        })
        .collect();
    let opens = earliest_opens(plan, &timings, freezes, now);
    let wave_previews: Vec<WavePreview> = waves
        .iter()
        .zip(opens)
        .enumerate()
        .map(|(i, (members, open))| {
            let mut ids: Vec<&str> = members.iter().map(|s| s.site_id).collect();
            let count = ids.len() as u64;
            smallest(&mut ids, PREVIEW_SITES);
            WavePreview {
                index: i as u32,
                name: plan.waves[i].name.clone(),
                count,
                sites_omitted: count - ids.len() as u64,
                sites: ids.into_iter().map(str::to_string).collect(),
                earliest_open: open.at,
                earliest_open_reason: open.reason,
            }
        })
        .collect();
    let busy = excluded
        .get(&ExclusionReason::InAnotherRollout)
        .map(Vec::len)
        .unwrap_or(0);
    let refused = (busy > 0).then(|| {
        format!(
            "creating this plan now would be refused: {busy} site(s) it selects already belong \
             to another active rollout (one active rollout per site); wait for that rollout to \
             end, abort it, or narrow this plan's selector"
        )
    });
    let mut notes = vec![
        "earliest_open is a lower bound: it assumes every gate passes the moment it can \
         (sites install as soon as their window and the freezes allow, none fails, \
         approvals are immediate); real rollouts open later"
            .to_string(),
    ];
    if plan.waves.iter().any(|w| w.share.is_some()) {
        notes.push(
            "share waves: the counts are exact for the fleet as it is now; which sites a share \
             takes is drawn from the rollout's id and placed again when each wave opens"
                .to_string(),
        );
    }
    if let Some(note) = retry_note(&plan.retry) {
        notes.push(note);
    }
    let selected = wave_previews.iter().map(|w| w.count).sum();
    PlanPreview {
        name: plan.name.clone(),
        release_id: plan.release.clone(),
        at: now,
        start_at: plan.start_at.as_ref().map(start_at_view),
        fleet: sites.len() as u64,
        selected,
        waves: wave_previews,
        excluded: excluded
            .into_iter()
            .map(|(reason, mut list)| {
                let count = list.len() as u64;
                if list.len() > PREVIEW_SITES {
                    list.select_nth_unstable_by(PREVIEW_SITES - 1, |a, b| {
                        a.site_id.cmp(&b.site_id)
                    });
                    list.truncate(PREVIEW_SITES);
                }
                list.sort_unstable_by(|a, b| a.site_id.cmp(&b.site_id));
                ExclusionGroup {
                    reason,
                    count,
                    sites_omitted: count - list.len() as u64,
                    sites: list,
                }
            })
            .collect(),
        refused,
        notes,
    }
}

/// What the plan's `[retry]` policy does, in words (None: it retries nothing).
fn retry_note(r: &crate::plan::RetryPolicy) -> Option<String> {
    if !r.retries() {
        return None;
    }
    let waits: Vec<String> = (1..r.max_attempts)
        .map(|n| controller::gate::human(r.delay_after(n)))
        .collect();
    Some(format!(
        "retry: a site whose install fails is tried again, {} attempts in all, after {}; it \
         counts as in progress meanwhile and as failed only when its last attempt fails",
        r.max_attempts,
        waits.join(", then ")
    ))
}

/// Keeps the `n` smallest ids, sorted (linear time over a big wave).
fn smallest(ids: &mut Vec<&str>, n: usize) {
    if ids.len() > n && n > 0 {
        ids.select_nth_unstable(n - 1);
    }
    ids.truncate(n);
    ids.sort_unstable();
}

/// What the earliest-open computation needs of one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteTiming<'a> {
    /// The site's `tz` label (None: UTC).
    pub tz: Option<&'a str>,
    pub deferred_until: Option<Timestamp>,
}

/// The earliest a wave could open, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarliestOpen {
    /// None: cannot be known (an earlier wave's sites can never install).
    pub at: Option<Timestamp>,
    pub reason: String,
}

/// The earliest each wave of `plan` could open, its sites grouped by wave in
/// `waves` (see the module's doc for the assumptions). The first wave opens at the plan's
/// `start_at`, or `now` when it has none (or it has passed).
pub fn earliest_opens(
    plan: &RolloutPlan,
    waves: &[Vec<SiteTiming<'_>>],
    freezes: &[Freeze],
    now: Timestamp,
) -> Vec<EarliestOpen> {
    let mut out = Vec::with_capacity(plan.waves.len());
    let first = match &plan.start_at {
        Some(s) if s.at > now => EarliestOpen {
            at: Some(s.at),
            reason: format!("its start_at {}", s.local()),
        },
        _ => EarliestOpen {
            at: Some(now),
            reason: "as soon as the rollout starts (now at the earliest)".to_string(),
        },
    };
    out.push(first);
    for i in 1..plan.waves.len() {
        let prev = &plan.waves[i - 1];
        let Some(opened) = out[i - 1].at else {
            out.push(EarliestOpen {
                at: None,
                reason: format!("wave {} cannot open, so neither can this one", i - 1),
            });
            continue;
        };
        let sites = waves.get(i - 1).map(Vec::as_slice).unwrap_or(&[]);
        out.push(after_wave(
            i - 1,
            &prev.name,
            &prev.gate,
            plan.window.as_ref(),
            sites,
            freezes,
            opened,
        ));
    }
    out
}

/// When the wave after wave `index` (opened at `opened`, with `sites`) could open.
fn after_wave(
    index: usize,
    name: &str,
    gate: &crate::plan::Gate,
    window: Option<&Window>,
    sites: &[SiteTiming<'_>],
    freezes: &[Freeze],
    opened: Timestamp,
) -> EarliestOpen {
    let n = sites.len() as u32;
    let need = controller::gate::needed(gate, n).max(gate.min_sample.min(n));
    let approval = if gate.approval {
        ", then an operator's approval"
    } else {
        ""
    };
    let bake = crate::plan::display_duration(gate.bake);
    let wave_bake_end = opened.checked_add(gate.bake).ok();
    if need == 0 {
        return EarliestOpen {
            at: wave_bake_end,
            reason: format!(
                "wave {index} ({name}) needs no site to succeed: it passes after its bake \
                 {bake}{approval}"
            ),
        };
    }
    // Sites without a deferral share their zone's answer: one computation per zone.
    let mut per_zone: HashMap<Option<&str>, Install> = HashMap::new();
    let mut installs: Vec<Install> = sites
        .iter()
        .map(|s| {
            let from = s.deferred_until.map_or(opened, |d| d.max(opened));
            if from == opened {
                per_zone
                    .entry(s.tz)
                    .or_insert_with(|| earliest_install(window, s.tz, opened, freezes))
                    .clone()
            } else {
                let mut i = earliest_install(window, s.tz, from, freezes);
                i.why.insert(0, "deferred by the site".to_string());
                i
            }
        })
        .collect();
    let k = (need as usize).min(installs.len()) - 1;
    installs.select_nth_unstable_by(k, |a, b| match (a.at, b.at) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    let binding = &installs[k];
    let Some(installed) = binding.at else {
        let can = installs.iter().filter(|i| i.at.is_some()).count();
        return EarliestOpen {
            at: None,
            reason: format!(
                "wave {index} ({name}) needs {need} of {n} site(s) to succeed, and only {can} \
                 can ever install: {}",
                binding.why.join(", ")
            ),
        };
    };
    let at = installed
        .checked_add(gate.bake)
        .ok()
        .zip(wave_bake_end)
        .map(|(a, b)| a.max(b));
    let constraints = if binding.why.is_empty() {
        String::new()
    } else {
        format!(" ({})", binding.why.join(", "))
    };
    EarliestOpen {
        at,
        reason: format!(
            "wave {index} ({name}) needs {need} of {n} site(s) to succeed: the first {need} \
             can have installed by {installed}{constraints}, then bake {bake}{approval}"
        ),
    }
}

/// When one site could install at the earliest, and what held it back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Install {
    /// None: never (its `tz` label is not a zone).
    at: Option<Timestamp>,
    why: Vec<String>,
}

/// The first moment at or after `from` when a site in zone `tz` may install: inside the
/// plan's window (read in its zone) and outside every freeze.
fn earliest_install(
    window: Option<&Window>,
    tz: Option<&str>,
    from: Timestamp,
    freezes: &[Freeze],
) -> Install {
    let name = tz.unwrap_or("UTC");
    let zone = match zone(name) {
        Ok(z) => z,
        Err(e) if window.is_some() => {
            return Install {
                at: None,
                why: vec![format!("label {TZ_LABEL}: {e}")],
            };
        }
        Err(_) => jiff::tz::TimeZone::UTC,
    };
    let mut why = Vec::new();
    let mut at = from;
    // Each step moves `at` to a freeze's end or the window's next opening; a window opens
    // at least once a week and freezes last at most a year, so this ends quickly.
    for _ in 0..1000 {
        if let Some(f) = freezes.iter().find(|f| f.contains(at)) {
            let reason = if f.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", f.reason)
            };
            why.push(format!("freeze{reason} until {}", f.end));
            at = f.end;
            continue;
        }
        if let Some(w) = window {
            match w.next_open(&zone, at) {
                Ok(next) if next == Timestamp::MAX => {
                    why.push(format!("the window {}-{} never opens", w.start, w.end));
                    return Install { at: None, why };
                }
                Ok(next) if next > at => {
                    let line = format!("window {}-{} in {name}", w.start, w.end);
                    if !why.contains(&line) {
                        why.push(line);
                    }
                    at = next;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    why.push(format!("the plan's window cannot be used: {e}"));
                    return Install { at: None, why };
                }
            }
        }
        return Install { at: Some(at), why };
    }
    why.push("no moment outside the freezes and inside the window within 1000 steps".into());
    Install { at: None, why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanFormat, parse_plan};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn plan(extra: &str, waves: &str) -> RolloutPlan {
        parse_plan(
            &format!("name = \"p\"\nrelease = \"r-1\"\n{extra}\n{waves}"),
            PlanFormat::Toml,
        )
        .unwrap()
    }

    const THREE: &str = r#"
[[waves]]
name = "canary"
gate = { bake = "1h" }
[[waves]]
name = "early"
gate = { bake = "30m", approval = true }
[[waves]]
name = "rest"
"#;

    fn utc(n: usize) -> Vec<SiteTiming<'static>> {
        vec![
            SiteTiming {
                tz: None,
                deferred_until: None,
            };
            n
        ]
    }

    #[test]
    fn without_windows_or_freezes_waves_open_one_bake_apart_from_now() {
        let p = plan("", THREE);
        let now = ts("2026-12-04T18:00:00Z");
        let opens = earliest_opens(&p, &[utc(2), utc(3), utc(5)], &[], now);
        let at: Vec<_> = opens.iter().map(|o| o.at.unwrap()).collect();
        assert_eq!(
            at,
            [now, ts("2026-12-04T19:00:00Z"), ts("2026-12-04T19:30:00Z")]
        );
        assert!(opens[2].reason.contains("approval"), "{:?}", opens[2]);
        assert!(opens[1].reason.contains("needs 2 of 2"), "{:?}", opens[1]);
    }

    #[test]
    fn the_retry_policy_is_told_in_the_notes() {
        let now = ts("2026-12-04T18:00:00Z");
        let retry = "[retry]\nmax_attempts = 4\nbackoff = \"5m\"\nmax_backoff = \"15m\"\n";
        let notes = preview(&plan(retry, THREE), "seed", &[], &[], now).notes;
        assert!(
            notes.contains(
                &"retry: a site whose install fails is tried again, 4 attempts in all, after \
                  5m, then 10m, then 15m; it counts as in progress meanwhile and as failed \
                  only when its last attempt fails"
                    .to_string()
            ),
            "{notes:?}"
        );
        let notes = preview(&plan("", THREE), "seed", &[], &[], now).notes;
        assert!(!notes.iter().any(|n| n.starts_with("retry")), "{notes:?}");
    }

    #[test]
    fn start_at_sets_the_first_wave_and_everything_after() {
        let p = plan("start_at = \"2026-12-05T02:00:00[Europe/Berlin]\"", THREE);
        let now = ts("2026-12-04T18:00:00Z");
        let opens = earliest_opens(&p, &[utc(1), utc(1), utc(1)], &[], now);
        assert_eq!(opens[0].at, Some(ts("2026-12-05T01:00:00Z")));
        assert!(opens[0].reason.contains("02:00 CET"), "{:?}", opens[0]);
        assert_eq!(opens[1].at, Some(ts("2026-12-05T02:00:00Z")));
    }

    #[test]
    fn a_freeze_holds_installs_until_it_ends() {
        let p = plan("", THREE);
        let now = ts("2026-12-04T18:00:00Z");
        let freezes = [
            Freeze {
                start: ts("2026-12-04T00:00:00Z"),
                end: ts("2026-12-06T00:00:00Z"),
                reason: "weekend".into(),
            },
            // Back to back with the first: the chain is followed.
            Freeze {
                start: ts("2026-12-06T00:00:00Z"),
                end: ts("2026-12-06T06:00:00Z"),
                reason: String::new(),
            },
        ];
        let opens = earliest_opens(&p, &[utc(2), utc(1), utc(1)], &freezes, now);
        // The wave opens now (freezes hold leases, not waves); its sites install at 06:00.
        assert_eq!(opens[0].at, Some(now));
        assert_eq!(opens[1].at, Some(ts("2026-12-06T07:00:00Z")));
        assert!(
            opens[1].reason.contains("freeze (weekend)"),
            "{:?}",
            opens[1]
        );
    }

    #[test]
    fn windows_are_read_in_each_sites_zone_across_a_daylight_saving_change() {
        // Berlin falls back on 2026-10-25 (03:00 CEST -> 02:00 CET). The window 02:00-03:00
        // local is 00:00Z (CEST, the first of the two 02:00s) that night and 01:00Z after.
        let p = plan(
            "window = { start = \"02:00\", end = \"03:00\" }\nstart_at = \"2026-10-24T12:00:00Z\"",
            r#"
[[waves]]
name = "berlin"
gate = { bake = "1d" }
[[waves]]
name = "berlin again"
gate = { bake = "1d" }
[[waves]]
name = "rest"
"#,
        );
        let berlin = || {
            vec![SiteTiming {
                tz: Some("Europe/Berlin"),
                deferred_until: None,
            }]
        };
        let now = ts("2026-10-24T06:00:00Z");
        let opens = earliest_opens(&p, &[berlin(), berlin(), berlin()], &[], now);
        assert_eq!(opens[0].at, Some(ts("2026-10-24T12:00:00Z")));
        // Installs 2026-10-25 02:00 CEST = 00:00Z, + 1d bake.
        assert_eq!(opens[1].at, Some(ts("2026-10-26T00:00:00Z")));
        assert!(opens[1].reason.contains("Europe/Berlin"), "{:?}", opens[1]);
        // Installs 2026-10-26 02:00 CET = 01:00Z, + 1d bake: an hour later in UTC.
        assert_eq!(opens[2].at, Some(ts("2026-10-27T01:00:00Z")));
    }

    #[test]
    fn the_gate_waits_for_the_site_that_completes_its_success_ratio() {
        // Two sites in New York (window 02:00-04:00 local = 07:00Z), two in UTC: a ratio
        // of 0.75 needs 3, so the third earliest (a New York site) sets the time.
        let p = plan(
            "window = { start = \"02:00\", end = \"04:00\" }",
            r#"
[[waves]]
name = "mixed"
gate = { bake = "10m", success_ratio = 0.75 }
[[waves]]
name = "rest"
"#,
        );
        let now = ts("2026-12-04T03:00:00Z");
        let ny = SiteTiming {
            tz: Some("America/New_York"),
            deferred_until: None,
        };
        let deferred = SiteTiming {
            tz: None,
            deferred_until: Some(ts("2026-12-10T00:00:00Z")),
        };
        let opens = earliest_opens(&p, &[vec![ny, ny, utc(1)[0], deferred], vec![]], &[], now);
        // UTC site: inside 02:00-04:00 UTC now (03:00Z) -> 03:00Z. NY: 02:00 EST = 07:00Z.
        assert_eq!(opens[1].at, Some(ts("2026-12-04T07:10:00Z")));
        assert!(opens[1].reason.contains("needs 3 of 4"), "{:?}", opens[1]);
    }

    #[test]
    fn a_site_whose_zone_is_unknown_never_installs_in_a_windowed_plan() {
        let p = plan(
            "window = { start = \"02:00\", end = \"04:00\" }",
            "[[waves]]\nname = \"a\"\n[[waves]]\nname = \"b\"\n[[waves]]\nname = \"c\"\n",
        );
        let bad = vec![SiteTiming {
            tz: Some("Mars/Olympus"),
            deferred_until: None,
        }];
        let now = ts("2026-12-04T03:00:00Z");
        let opens = earliest_opens(&p, &[bad, vec![], vec![]], &[], now);
        assert_eq!(opens[1].at, None);
        assert!(opens[1].reason.contains("Mars/Olympus"), "{:?}", opens[1]);
        assert_eq!(opens[2].at, None);
    }

    #[test]
    fn preview_places_with_the_real_membership_and_names_exclusions() {
        let p = plan(
            "selector = { format = \"store\" }",
            "[[waves]]\nname = \"pigs\"\nselector = { cohort = \"pig\" }\n[[waves]]\nname = \"rest\"\n",
        );
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let pig = l(&[("format", "store"), ("cohort", "pig")]);
        let store = l(&[("format", "store")]);
        let kiosk = l(&[("format", "kiosk")]);
        let site = |id, labels, active, in_rollout| PreviewSite {
            site_id: id,
            labels,
            active,
            deferred_until: None,
            in_rollout,
            held: None,
        };
        let sites = [
            site("s-1", &pig, true, None),
            site("s-2", &store, true, None),
            site("s-3", &kiosk, true, None),
            site("s-4", &store, false, None),
            site("s-5", &store, true, Some("other-1")),
            PreviewSite {
                held: Some(("alice", "till replaced")),
                ..site("s-6", &store, true, None)
            },
        ];
        let now = ts("2026-12-04T18:00:00Z");
        let v = preview(&p, "preview", &sites, &[], now);
        assert_eq!((v.fleet, v.selected), (6, 2));
        assert_eq!(v.waves[0].sites, ["s-1"]);
        assert_eq!(v.waves[1].sites, ["s-2"]);
        let reasons: Vec<_> = v
            .excluded
            .iter()
            .map(|g| (g.reason, g.sites[0].site_id.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (ExclusionReason::Decommissioned, "s-4"),
                (ExclusionReason::InAnotherRollout, "s-5"),
                (ExclusionReason::NoMatch, "s-3"),
                (ExclusionReason::Held, "s-6"),
            ]
        );
        let held = v
            .excluded
            .iter()
            .find(|g| g.reason == ExclusionReason::Held)
            .unwrap();
        assert_eq!(
            held.sites[0].detail.as_deref(),
            Some("held by alice: till replaced")
        );
        assert!(v.refused.as_deref().unwrap().contains("1 site(s)"));
    }
}
