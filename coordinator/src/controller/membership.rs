//! Wave membership: which wave of a rollout a site belongs to.
//!
//! Each site gets a stable seed in [0, 1) from SHA-256(rollout id, site id). The rollout's
//! selector picks the population; then the waves take sites in order: a wave's selector
//! narrows who it can take (its *eligible* sites: those still remaining that match), a
//! wave without a share takes all of them, and a wave with `share = p` takes exactly
//! ⌈p/100 × eligible⌉ of them — a quota, not a probability — the ones with the lowest
//! seeds (site id breaks a tie). [`place`] does that over a set of sites; the server calls
//! it when a rollout is created and again each time a wave opens, over the sites not yet
//! in an opened wave, so a share is exact over the sites known when its wave opens.
//! [`wave_for_joiner`] places a site that joins an active rollout after it was created.
//!
//! Pure: no I/O, no clock, no randomness; the same sites in any order give the same waves.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::plan::RolloutPlan;

/// The stable per-site seed in [0, 1): the first 53 bits of
/// SHA-256(`rollout_id` ‖ 0x00 ‖ `site_id`), as a fraction.
pub fn seed(rollout_id: &str, site_id: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(rollout_id.as_bytes());
    h.update([0u8]);
    h.update(site_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let bits = u64::from_be_bytes(first) >> 11; // 53 bits: exact in an f64
    bits as f64 / (1u64 << 53) as f64
}

/// How many of `eligible` sites a wave with `share` percent takes: ⌈share/100 × eligible⌉,
/// at most `eligible`. A product that is a whole number up to floating-point noise (7% of
/// 100 is 7.000000000000001 in binary) counts as that whole number, so the quota is the
/// one a person computes.
pub fn share_quota(share: f64, eligible: usize) -> usize {
    let exact = share.clamp(0.0, 100.0) * eligible as f64 / 100.0;
    let nearest = exact.round();
    let quota = if (exact - nearest).abs() <= 1e-9 * nearest.max(1.0) {
        nearest
    } else {
        exact.ceil()
    };
    (quota as usize).min(eligible)
}

/// One site to place: its id and its current labels.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub site_id: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Places `sites` into the waves `from..` of `plan` for rollout `rollout_id`: for each
/// site, in input order, its zero-based wave, or None when the rollout's selector does not
/// select it. `sites` are the sites not in any wave before `from` (none of them is
/// counted twice; duplicates are the caller's mistake and are placed once each).
///
/// Wave by wave, in order: the eligible sites are the remaining selected sites its
/// selector matches; a wave without a share takes them all, a wave with a share takes the
/// first [`share_quota`] of them by seed. A validated plan's last wave takes everyone
/// left; should `from` be past the last wave, every selected site goes to the last wave.
pub fn place(
    plan: &RolloutPlan,
    rollout_id: &str,
    from: u32,
    sites: &[Candidate<'_>],
) -> Vec<Option<u32>> {
    let mut out = vec![None; sites.len()];
    // The selected sites, in seed order.
    let mut remaining: Vec<(f64, usize)> = sites
        .iter()
        .enumerate()
        .filter(|(_, c)| plan.selector.matches(c.labels))
        .map(|(i, c)| (seed(rollout_id, c.site_id), i))
        .collect();
    remaining.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then_with(|| sites[a.1].site_id.cmp(sites[b.1].site_id))
    });
    for (index, wave) in plan.waves.iter().enumerate().skip(from as usize) {
        let eligible = |i: usize| wave.selector.matches(sites[i].labels);
        let mut quota = match wave.share {
            None => usize::MAX,
            Some(share) => share_quota(share, remaining.iter().filter(|r| eligible(r.1)).count()),
        };
        remaining.retain(|&(_, i)| {
            if quota > 0 && eligible(i) {
                quota -= 1;
                out[i] = Some(index as u32);
                false
            } else {
                true
            }
        });
    }
    if let Some(last) = plan.waves.len().checked_sub(1) {
        for (_, i) in remaining {
            out[i] = Some(last as u32);
        }
    }
    out
}

/// The wave of a site that joins an active rollout (it enrolled, came back or was
/// relabelled) while the waves up to `opened` have opened (None: none yet): the first
/// wave whose selector matches its labels and that still takes sites, or the last wave.
/// A wave without a share takes every site that matches, so it takes a joiner even once
/// open (a new pig joins the pigs at once); a share wave's quota closes when the wave
/// opens, so only a share wave that has not opened takes one. None when the rollout's
/// selector does not select the site.
///
/// Joining a wave that has not opened is provisional: when that wave opens, [`place`]
/// runs again over every site not in an opened wave, the joiner included, so the share
/// stays exact.
pub fn wave_for_joiner(
    plan: &RolloutPlan,
    labels: &BTreeMap<String, String>,
    opened: Option<u32>,
) -> Option<u32> {
    if !plan.selector.matches(labels) {
        return None;
    }
    let last = plan.waves.len().checked_sub(1)?;
    let open = |w: usize| opened.is_some_and(|o| w <= o as usize);
    let wave = plan
        .waves
        .iter()
        .enumerate()
        .position(|(w, wave)| wave.selector.matches(labels) && (wave.share.is_none() || !open(w)))
        .unwrap_or(last);
    Some(wave as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanFormat, parse_plan};
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const PLAN: &str = r#"
name = "pos 2.4"
release = "pos-2.4.0"
selector = { format = ["store", "kiosk"] }

[[waves]]
name = "pigs"
selector = { cohort = "pig" }

[[waves]]
name = "canary city"
selector = { city = "lyon", cohort = { not = "dog" } }

[[waves]]
name = "early"
share = 25
selector = { cohort = { not = "dog" } }

[[waves]]
name = "half of the rest"
share = 50
selector = { cohort = { not = "dog" } }

[[waves]]
name = "rest"
selector = { cohort = { not = "dog" } }

[[waves]]
name = "dogs"
"#;

    fn plan() -> RolloutPlan {
        parse_plan(PLAN, PlanFormat::Toml).unwrap()
    }

    /// Places `fleet` (site ids with labels) from wave `from`, as (site id → wave).
    fn place_all(
        p: &RolloutPlan,
        rollout: &str,
        from: u32,
        fleet: &[(String, BTreeMap<String, String>)],
    ) -> BTreeMap<String, Option<u32>> {
        let c: Vec<Candidate> = fleet
            .iter()
            .map(|(id, l)| Candidate {
                site_id: id,
                labels: l,
            })
            .collect();
        fleet
            .iter()
            .map(|(id, _)| id.clone())
            .zip(place(p, rollout, from, &c))
            .collect()
    }

    fn uniform(n: usize, l: &BTreeMap<String, String>) -> Vec<(String, BTreeMap<String, String>)> {
        (0..n)
            .map(|i| (format!("site-{i:05}"), l.clone()))
            .collect()
    }

    fn counts(placed: &BTreeMap<String, Option<u32>>, waves: usize) -> Vec<usize> {
        let mut c = vec![0; waves];
        for w in placed.values().flatten() {
            c[*w as usize] += 1;
        }
        c
    }

    #[test]
    fn seed_is_stable_and_in_range() {
        let a = seed("r1", "site-1");
        assert_eq!(a, seed("r1", "site-1"));
        assert!((0.0..1.0).contains(&a));
        assert_ne!(a, seed("r2", "site-1"));
        assert_ne!(a, seed("r1", "site-2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(seed("ab", "c"), seed("a", "bc"));
    }

    #[test]
    fn quotas_round_up_and_ignore_floating_point_noise() {
        assert_eq!(share_quota(25.0, 6), 2); // 1.5 → 2
        assert_eq!(share_quota(25.0, 4), 1);
        assert_eq!(share_quota(25.0, 1), 1);
        assert_eq!(share_quota(1.0, 3), 1);
        assert_eq!(share_quota(7.0, 100), 7); // 0.07 × 100 is 7.000000000000001
        assert_eq!(share_quota(14.2, 500), 71);
        assert_eq!(share_quota(33.3, 10), 4);
        assert_eq!(share_quota(50.0, 0), 0);
        assert_eq!(share_quota(100.0, 37), 37);
        assert_eq!(share_quota(0.001, 100_000), 1);
    }

    #[test]
    fn selectors_route_sites() {
        let p = plan();
        let one = |pairs: &[(&str, &str)]| {
            let fleet = vec![("s1".to_string(), labels(pairs))];
            place_all(&p, "r", 0, &fleet)["s1"]
        };
        assert_eq!(one(&[("format", "store"), ("cohort", "pig")]), Some(0));
        assert_eq!(one(&[("format", "store"), ("city", "lyon")]), Some(1));
        // A dog in the canary city still goes last.
        assert_eq!(
            one(&[("format", "store"), ("city", "lyon"), ("cohort", "dog")]),
            Some(5)
        );
        // Not selected by the rollout.
        assert_eq!(one(&[("format", "warehouse")]), None);
        assert_eq!(one(&[]), None);
    }

    /// The demo's second act: six stores, and its "25%" wave took none of them when a
    /// share was a per-site probability.
    #[test]
    fn a_25_percent_wave_of_six_sites_takes_two() {
        let p = plan();
        let l = labels(&[("format", "store"), ("cohort", "general")]);
        for rollout in ["demo-1", "demo-2", "demo-3", "r"] {
            let placed = place_all(&p, rollout, 0, &uniform(6, &l));
            // ⌈25% × 6⌉ = 2, then ⌈50% × 4⌉ = 2, then the rest.
            assert_eq!(counts(&placed, 6), [0, 0, 2, 2, 2, 0], "{rollout}");
        }
    }

    #[test]
    fn shares_are_exact_over_ten_thousand_sites() {
        let p = plan();
        let l = labels(&[("format", "store"), ("cohort", "general")]);
        let placed = place_all(&p, "rollout-7", 0, &uniform(10_000, &l));
        // 25% of all, then 50% of the remaining 7,500, then the rest.
        assert_eq!(counts(&placed, 6), [0, 0, 2_500, 3_750, 3_750, 0]);
    }

    #[test]
    fn a_full_share_takes_everyone_left() {
        let text = r#"
name = "x"
release = "r"
[[waves]]
name = "all of them"
share = 100
[[waves]]
name = "never reached"
"#;
        let p = parse_plan(text, PlanFormat::Toml).unwrap();
        let placed = place_all(&p, "r", 0, &uniform(500, &labels(&[])));
        assert_eq!(counts(&placed, 2), [500, 0]);
    }

    #[test]
    fn joiners_take_the_first_wave_that_still_takes_them() {
        let p = plan();
        let general = labels(&[("format", "store"), ("cohort", "general")]);
        let lyon = labels(&[("format", "store"), ("city", "lyon")]);
        let pig = labels(&[("format", "store"), ("cohort", "pig")]);
        let dog = labels(&[("format", "store"), ("cohort", "dog")]);
        // Nothing open yet: where its labels first fit.
        assert_eq!(wave_for_joiner(&p, &pig, None), Some(0));
        assert_eq!(wave_for_joiner(&p, &general, None), Some(2));
        // Waves without a share take a matching joiner even once open.
        assert_eq!(wave_for_joiner(&p, &pig, Some(3)), Some(0));
        assert_eq!(wave_for_joiner(&p, &lyon, Some(3)), Some(1));
        // An opened share wave's quota is closed: the next wave that takes it.
        assert_eq!(wave_for_joiner(&p, &general, Some(2)), Some(3));
        assert_eq!(wave_for_joiner(&p, &general, Some(3)), Some(4));
        assert_eq!(wave_for_joiner(&p, &dog, Some(0)), Some(5));
        assert_eq!(wave_for_joiner(&p, &general, Some(5)), Some(4));
        assert_eq!(
            wave_for_joiner(&p, &labels(&[("format", "van")]), None),
            None
        );
    }

    /// Every wave a share and a selector, the last one apart: a joiner that no share
    /// wave takes any more goes to the last wave.
    #[test]
    fn a_joiner_no_open_wave_takes_goes_to_the_last() {
        let text = r#"
name = "x"
release = "r"
[[waves]]
name = "some"
share = 10
[[waves]]
name = "more"
share = 50
[[waves]]
name = "rest"
share = 100
"#;
        let p = parse_plan(text, PlanFormat::Toml).unwrap();
        let l = labels(&[]);
        assert_eq!(wave_for_joiner(&p, &l, None), Some(0));
        assert_eq!(wave_for_joiner(&p, &l, Some(0)), Some(1));
        assert_eq!(wave_for_joiner(&p, &l, Some(1)), Some(2));
        assert_eq!(wave_for_joiner(&p, &l, Some(2)), Some(2));
    }

    fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        (
            prop::sample::select(vec!["store", "kiosk", "warehouse"]),
            prop::option::of(prop::sample::select(vec![
                "pig", "canary", "general", "dog",
            ])),
            prop::option::of(prop::sample::select(vec!["lyon", "paris", "oslo"])),
        )
            .prop_map(|(format, cohort, city)| {
                let mut l = labels(&[("format", format)]);
                if let Some(c) = cohort {
                    l.insert("cohort".into(), c.into());
                }
                if let Some(c) = city {
                    l.insert("city".into(), c.into());
                }
                l
            })
    }

    /// A fleet of 1 to 200 sites with random labels.
    fn arb_fleet() -> impl Strategy<Value = Vec<(String, BTreeMap<String, String>)>> {
        prop::collection::vec(arb_labels(), 1..=200).prop_map(|ls| {
            ls.into_iter()
                .enumerate()
                .map(|(i, l)| (format!("site-{i}"), l))
                .collect()
        })
    }

    /// A random valid plan: a rollout selector or none, waves with optional cohort
    /// selectors and shares (fractional ones too), the last one taking the rest.
    fn arb_plan() -> impl Strategy<Value = RolloutPlan> {
        let wave = (
            prop::option::of((
                any::<bool>(),
                prop::sample::select(vec!["pig", "canary", "general", "dog"]),
            )),
            prop::option::of(prop_oneof![
                (1u32..=100).prop_map(f64::from),
                (1u32..=1000).prop_map(|t| f64::from(t) / 10.0),
            ]),
        );
        (any::<bool>(), prop::collection::vec(wave, 0..6)).prop_map(|(narrow, waves)| {
            let mut text = String::from("name = \"p\"\nrelease = \"r\"\n");
            if narrow {
                text.push_str("selector = { format = [\"store\", \"kiosk\"] }\n");
            }
            for (i, (sel, share)) in waves.iter().enumerate() {
                text.push_str(&format!("[[waves]]\nname = \"w{i}\"\n"));
                match sel {
                    Some((true, c)) => {
                        text.push_str(&format!("selector = {{ cohort = {{ not = \"{c}\" }} }}\n"))
                    }
                    Some((false, c)) => {
                        text.push_str(&format!("selector = {{ cohort = \"{c}\" }}\n"))
                    }
                    None => {}
                }
                if let Some(s) = share {
                    text.push_str(&format!("share = {s}\n"));
                }
            }
            text.push_str("[[waves]]\nname = \"last\"\n");
            parse_plan(&text, PlanFormat::Toml).unwrap()
        })
    }

    proptest! {
        /// Every wave takes exactly its quota of the sites remaining when its turn comes
        /// (all of its eligible sites without a share, ⌈share × eligible⌉ with one), the
        /// ones with the lowest seeds; every selected site lands in exactly one wave whose
        /// selector matches it; unselected sites land nowhere.
        #[test]
        fn every_wave_takes_exactly_its_quota_and_everyone_is_placed(
            p in arb_plan(),
            rollout in "[a-z0-9-]{1,12}",
            fleet in arb_fleet(),
        ) {
            let placed = place_all(&p, &rollout, 0, &fleet);
            for (id, l) in &fleet {
                prop_assert_eq!(placed[id].is_some(), p.selector.matches(l));
            }
            // The selected sites still remaining before each wave.
            let mut remaining: Vec<(String, BTreeMap<String, String>)> = fleet
                .iter()
                .filter(|(_, l)| p.selector.matches(l))
                .cloned()
                .collect();
            for (index, wave) in p.waves.iter().enumerate() {
                let here = Some(index as u32);
                let eligible: Vec<&String> = remaining
                    .iter()
                    .filter(|(_, l)| wave.selector.matches(l))
                    .map(|(id, _)| id)
                    .collect();
                let want = match wave.share {
                    None => eligible.len(),
                    Some(s) => share_quota(s, eligible.len()),
                };
                let taken: Vec<&String> =
                    eligible.iter().copied().filter(|id| placed[*id] == here).collect();
                prop_assert_eq!(taken.len(), want, "wave {} of {} eligible", index, eligible.len());
                // Nobody who was not eligible is in this wave.
                prop_assert_eq!(placed.values().filter(|w| **w == here).count(), want);
                // Taken in seed order: no eligible site left behind has a lower seed.
                let highest = taken.iter().map(|id| seed(&rollout, id)).fold(-1.0, f64::max);
                for id in &eligible {
                    if placed[*id] != here {
                        prop_assert!(seed(&rollout, id) > highest);
                    }
                }
                remaining.retain(|(id, _)| placed[id] != here);
            }
            prop_assert!(remaining.is_empty(), "the last wave takes everyone left");
        }

        /// Placing the same sites again gives the same waves, in whatever order they
        /// come; and placing again from any wave `k` the sites the first placement did
        /// not put before `k` (what the server does when wave `k` opens and nobody
        /// joined) changes no one's wave.
        #[test]
        fn placement_is_stable_across_re_evaluation(
            p in arb_plan(),
            fleet in arb_fleet(),
            shuffle in any::<prop::sample::Index>(),
            k in any::<prop::sample::Index>(),
        ) {
            let placed = place_all(&p, "r-1", 0, &fleet);
            let mut turned = fleet.clone();
            turned.rotate_left(shuffle.index(fleet.len()));
            turned.reverse();
            prop_assert_eq!(&place_all(&p, "r-1", 0, &turned), &placed);
            let k = k.index(p.waves.len()) as u32;
            let later: Vec<_> = fleet
                .iter()
                .filter(|(id, _)| placed[id].is_some_and(|w| w >= k))
                .cloned()
                .collect();
            for (id, w) in place_all(&p, "r-1", k, &later) {
                prop_assert_eq!(w, placed[&id]);
            }
        }

        /// A joiner lands in the first wave whose selector matches and that still takes
        /// sites (no share, or not opened yet), else the last wave; never in an opened
        /// share wave but the last.
        #[test]
        fn a_joiner_never_enters_an_opened_share_wave_but_the_last(
            p in arb_plan(),
            l in arb_labels(),
            opened in prop::option::of(0u32..8),
        ) {
            let last = p.waves.len() as u32 - 1;
            let opened = opened.map(|o| o.min(last));
            let takes = |w: u32| {
                let wave = &p.waves[w as usize];
                wave.selector.matches(&l)
                    && (wave.share.is_none() || opened.is_none_or(|o| w > o))
            };
            match wave_for_joiner(&p, &l, opened) {
                None => prop_assert!(!p.selector.matches(&l)),
                Some(w) => {
                    prop_assert!(p.selector.matches(&l));
                    prop_assert!(p.waves[w as usize].selector.matches(&l));
                    prop_assert!(takes(w) || w == last);
                    prop_assert!((0..w).all(|e| !takes(e)));
                }
            }
        }

        /// A site's wave depends only on the plan, the rollout, the sites and the labels
        /// the plan mentions: labels no selector uses change nothing.
        #[test]
        fn membership_ignores_labels_no_selector_mentions(
            fleet in arb_fleet(),
            extra in prop::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{1,8}", 0..5),
        ) {
            let p = plan();
            let alone = place_all(&p, "r-1", 0, &fleet);
            let more: Vec<_> = fleet
                .iter()
                .map(|(id, l)| {
                    let mut l = l.clone();
                    for (k, v) in &extra {
                        if !matches!(k.as_str(), "format" | "cohort" | "city") {
                            l.insert(k.clone(), v.clone());
                        }
                    }
                    (id.clone(), l)
                })
                .collect();
            prop_assert_eq!(place_all(&p, "r-1", 0, &more), alone);
        }
    }
}
