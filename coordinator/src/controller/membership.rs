//! Wave membership: which wave of a rollout a site belongs to.
//!
//! Each site gets a stable seed in [0, 1) from SHA-256(rollout id, site id). The rollout's
//! selector picks the population; then the waves take sites in order: a wave's selector
//! narrows who it can take, and its share takes that percent of the sites still remaining,
//! by seed. After each share wave the seed of the sites it did not take is rescaled to
//! [0, 1) again, so every share is a share of what remains, uniform and independent of
//! how many other sites exist. A site's wave therefore depends only on the plan, the
//! rollout id, its own id and its own labels: a site that enrolls mid-rollout lands where
//! it would have landed at the start. Pure: no I/O, no randomness.

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

/// The zero-based wave `site_id` (with `labels`) belongs to in rollout `rollout_id`, or
/// None when the rollout's selector does not select it.
///
/// A validated plan's last wave takes every remaining site, so every selected site lands
/// in exactly one wave.
pub fn wave_for_site(
    plan: &RolloutPlan,
    rollout_id: &str,
    site_id: &str,
    labels: &BTreeMap<String, String>,
) -> Option<u32> {
    if !plan.selector.matches(labels) {
        return None;
    }
    let mut s = seed(rollout_id, site_id);
    for (index, wave) in plan.waves.iter().enumerate() {
        if !wave.selector.matches(labels) {
            // Not in this wave's population: its seed is not consumed.
            continue;
        }
        match wave.share {
            None => return Some(index as u32),
            Some(percent) => {
                let p = (percent / 100.0).clamp(0.0, 1.0);
                if s < p || p >= 1.0 {
                    return Some(index as u32);
                }
                // Uniform on [p, 1) → uniform on [0, 1).
                s = ((s - p) / (1.0 - p)).clamp(0.0, f64::from_bits(1.0f64.to_bits() - 1));
            }
        }
    }
    None
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
    fn selectors_route_sites() {
        let p = plan();
        let store = |extra: &[(&str, &str)]| {
            let mut l = labels(&[("format", "store")]);
            l.extend(labels(extra));
            l
        };
        assert_eq!(
            wave_for_site(&p, "r", "s1", &store(&[("cohort", "pig")])),
            Some(0)
        );
        assert_eq!(
            wave_for_site(&p, "r", "s1", &store(&[("city", "lyon")])),
            Some(1)
        );
        // A dog in the canary city still goes last.
        assert_eq!(
            wave_for_site(
                &p,
                "r",
                "s1",
                &store(&[("city", "lyon"), ("cohort", "dog")])
            ),
            Some(5)
        );
        // Not selected by the rollout.
        assert_eq!(
            wave_for_site(&p, "r", "s1", &labels(&[("format", "warehouse")])),
            None
        );
        assert_eq!(wave_for_site(&p, "r", "s1", &labels(&[])), None);
    }

    #[test]
    fn shares_are_roughly_right_over_ten_thousand_sites() {
        let p = plan();
        let mut counts = [0u32; 6];
        let l = labels(&[("format", "store"), ("cohort", "general")]);
        for i in 0..10_000 {
            let w = wave_for_site(&p, "rollout-7", &format!("site-{i:05}"), &l).unwrap();
            counts[w as usize] += 1;
        }
        // No pigs, no canary city, no dogs among these sites.
        assert_eq!((counts[0], counts[1], counts[5]), (0, 0, 0));
        // 25% of all, then 50% of the remaining 75% (37.5%), then the rest (37.5%).
        // Binomial standard deviation at n = 10,000 is under 0.5%; ±3% never flakes.
        let pct = |n: u32| n as f64 / 100.0;
        assert!((pct(counts[2]) - 25.0).abs() < 3.0, "{counts:?}");
        assert!((pct(counts[3]) - 37.5).abs() < 3.0, "{counts:?}");
        assert!((pct(counts[4]) - 37.5).abs() < 3.0, "{counts:?}");
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
        for i in 0..500 {
            assert_eq!(
                wave_for_site(&p, "r", &format!("s{i}"), &labels(&[])),
                Some(0)
            );
        }
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

    /// A random valid plan: waves with optional cohort selectors and shares, the last one
    /// taking the rest.
    fn arb_plan() -> impl Strategy<Value = RolloutPlan> {
        let wave = (
            prop::option::of((
                any::<bool>(),
                prop::sample::select(vec!["pig", "canary", "general", "dog"]),
            )),
            prop::option::of(1u32..=100),
        );
        prop::collection::vec(wave, 0..6).prop_map(|waves| {
            let mut text = String::from("name = \"p\"\nrelease = \"r\"\n");
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
        /// Whatever the plan, every site lands in exactly one wave whose selector matches.
        #[test]
        fn any_valid_plan_places_every_site(
            p in arb_plan(),
            site in "[a-z0-9-]{1,16}",
            l in arb_labels(),
        ) {
            let w = wave_for_site(&p, "r", &site, &l);
            prop_assert!(w.is_some());
            prop_assert!(p.waves[w.unwrap() as usize].selector.matches(&l));
        }

        /// Every site the rollout selects lands in exactly one wave, and that wave's
        /// selector matches it; unselected sites land nowhere.
        #[test]
        fn every_selected_site_lands_in_exactly_one_matching_wave(
            rollout in "[a-z0-9-]{1,12}",
            site in "[a-z0-9-]{1,16}",
            l in arb_labels(),
        ) {
            let p = plan();
            match wave_for_site(&p, &rollout, &site, &l) {
                None => prop_assert!(!p.selector.matches(&l)),
                Some(w) => {
                    prop_assert!(p.selector.matches(&l));
                    prop_assert!((w as usize) < p.waves.len());
                    prop_assert!(p.waves[w as usize].selector.matches(&l));
                    // Dogs go last, pigs first.
                    if l.get("cohort").map(String::as_str) == Some("dog") {
                        prop_assert_eq!(w, 5);
                    }
                    if l.get("cohort").map(String::as_str) == Some("pig") {
                        prop_assert_eq!(w, 0);
                    }
                }
            }
        }

        /// A site's wave depends only on the plan, the rollout, its id and the labels the
        /// plan mentions: labels no selector uses (and the order sites are seen in) change
        /// nothing, so a site that enrolls late lands where it would have at the start.
        #[test]
        fn membership_ignores_labels_no_selector_mentions(
            site in "[a-z0-9-]{1,16}",
            l in arb_labels(),
            extra in prop::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{1,8}", 0..5),
        ) {
            let p = plan();
            let alone = wave_for_site(&p, "r-1", &site, &l);
            let mut more = l.clone();
            for (k, v) in extra {
                if !matches!(k.as_str(), "format" | "cohort" | "city") {
                    more.insert(k, v);
                }
            }
            prop_assert_eq!(wave_for_site(&p, "r-1", &site, &more), alone);
        }
    }
}
