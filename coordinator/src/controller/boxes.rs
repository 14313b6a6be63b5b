//! Boxes within a site: in which order a site's boxes install, and whether a box may take
//! a lease now.
//!
//! The site's own lease decision ([`super::lease_decision`]) comes first and counts the
//! site once in its wave's limits; inside the site, at most `max_unavailable_per_site`
//! boxes hold a lease at once, in the plan's `box_order`, and the next box starts only
//! once the boxes before it committed and reported healthy. Pure: the boxes, their facts
//! and the time are arguments; this module never touches the store or the clock.

use jiff::Timestamp;

use super::leases::{CONCURRENCY_RETRY_SECS, LeaseDenial, LeaseDenialReason, NOT_OPEN_RETRY_SECS};
use crate::plan::{BoxSelector, RolloutPlan};
use crate::store::SiteBox;
use crate::store::boxes::BoxFacts;

/// The site's boxes in the plan's order: each `box_order` selector takes the boxes it
/// matches (not taken yet) in box id order; the boxes no selector matches follow, in box
/// id order. Selectors that do not parse match nothing (plans are validated first).
pub fn ordered<'a>(order: &[String], boxes: &'a [SiteBox]) -> Vec<&'a SiteBox> {
    let mut by_id: Vec<&SiteBox> = boxes.iter().collect();
    by_id.sort_by(|a, b| a.box_id.cmp(&b.box_id));
    let mut out: Vec<&SiteBox> = Vec::with_capacity(boxes.len());
    for sel in order.iter().filter_map(|s| BoxSelector::parse(s).ok()) {
        for b in &by_id {
            if sel.matches(&b.box_id, &b.role) && !out.iter().any(|o| o.box_id == b.box_id) {
                out.push(b);
            }
        }
    }
    for b in by_id {
        if !out.iter().any(|o| o.box_id == b.box_id) {
            out.push(b);
        }
    }
    out
}

/// The first `box_order` selector that matches no box of a site of several boxes, as a
/// sentence naming the site, the selector and the boxes it has. One-box sites are not
/// checked (nothing is ordered inside them).
pub fn unmatched_selector(plan: &RolloutPlan, site_id: &str, boxes: &[SiteBox]) -> Option<String> {
    if boxes.len() < 2 {
        return None;
    }
    plan.box_order.iter().enumerate().find_map(|(i, s)| {
        let sel = BoxSelector::parse(s).ok()?;
        if boxes.iter().any(|b| sel.matches(&b.box_id, &b.role)) {
            return None;
        }
        let has: Vec<String> = boxes
            .iter()
            .map(|b| {
                if b.role.is_empty() {
                    format!("{} (no role)", b.box_id)
                } else {
                    format!("{} (role {})", b.box_id, b.role)
                }
            })
            .collect();
        Some(format!(
            "box_order[{i}] {s:?} matches no box of site {site_id} (its boxes: {}); \
             fix the selector or leave the site out of the rollout",
            has.join(", ")
        ))
    })
}

/// Whether box `me` of a site of several boxes may hold a lease at `now`. `facts`: the
/// boxes' facts in the rollout (boxes without any have none yet).
///
/// A box already holding its lease renews it. While a box of the site has failed, no
/// other box starts. Otherwise the boxes that have not committed and reported healthy,
/// in order, take the leases: `me` must be among the first `max_unavailable_per_site` of
/// them. A box out of turn is told which box it waits for (`box_order`, ask again in
/// [`CONCURRENCY_RETRY_SECS`]): never an error.
pub fn box_lease_decision(
    plan: &RolloutPlan,
    site_id: &str,
    boxes: &[SiteBox],
    facts: &[(String, BoxFacts)],
    me: &str,
    now: Timestamp,
) -> Result<(), LeaseDenial> {
    let none = BoxFacts::default();
    let of = |id: &str| facts_of(facts, id, &none);
    if of(me).holds_lease(now) {
        return Ok(());
    }
    let order = ordered(&plan.box_order, boxes);
    if let Some(failed) = order
        .iter()
        .find(|b| b.box_id != me && of(&b.box_id).failed())
    {
        return Err(LeaseDenial::new(
            LeaseDenialReason::BoxOrder,
            format!(
                "box {} of site {site_id} failed this release; the site's other boxes do not \
                 start (the site counts as failed in its wave)",
                failed.box_id
            ),
            NOT_OPEN_RETRY_SECS,
        ));
    }
    let limit = plan.max_unavailable_per_site.max(1) as usize;
    let pending: Vec<&SiteBox> = order
        .iter()
        .copied()
        .filter(|b| !of(&b.box_id).done())
        .collect();
    // Done already (or not a box of the site): nothing to wait for.
    let Some(ahead) = waits_for(&pending, me, limit) else {
        return Ok(());
    };
    let ahead: Vec<String> = ahead
        .iter()
        .map(|b| {
            if b.role.is_empty() {
                format!("box {}", b.box_id)
            } else {
                format!("box {} (role {})", b.box_id, b.role)
            }
        })
        .collect();
    Err(LeaseDenial::new(
        LeaseDenialReason::BoxOrder,
        format!(
            "box {me} of site {site_id} waits for {} to commit and report healthy \
             ({} box{} of the site at a time, in the plan's box order)",
            ahead.join(" and "),
            limit,
            if limit == 1 { "" } else { "es" }
        ),
        CONCURRENCY_RETRY_SECS,
    ))
}

/// The boxes `me` waits for: `None` when `me` is among the first `limit` of `pending` (or
/// not in it: nothing to wait for), else the first `limit` boxes ahead of it.
fn waits_for<'a>(pending: &[&'a SiteBox], me: &str, limit: usize) -> Option<Vec<&'a SiteBox>> {
    let pos = pending.iter().position(|b| b.box_id == me)?;
    (pos >= limit).then(|| pending[..pos].iter().take(limit).copied().collect())
}

/// The facts of box `id` among `facts` (a box not heard from yet: empty facts).
fn facts_of<'a>(facts: &'a [(String, BoxFacts)], id: &str, none: &'a BoxFacts) -> &'a BoxFacts {
    facts.iter().find(|(b, _)| b == id).map_or(none, |(_, f)| f)
}

/// Whether box `me` of a site of several boxes may take a lease for the site's rollback
/// (an assignment back to the previous release) at `now`. `facts`: the boxes' facts in the
/// rollout.
///
/// The boxes that committed the rollout's release go back in REVERSE box order, at most
/// `max_unavailable_per_site` at a time: `me` must be among the first of them, in that
/// order, that have not reported their rollback done
/// ([`BoxFacts::rolled_back_since_commit`]). A box that never committed the release has
/// nothing to roll back and is turned away for good (`box_order`, ask again in
/// [`NOT_OPEN_RETRY_SECS`]); one out of turn is told which box it waits for (ask again in
/// [`CONCURRENCY_RETRY_SECS`]). A box whose rollback is done may ask again (nothing to wait
/// for).
pub fn box_rollback_decision(
    plan: &RolloutPlan,
    site_id: &str,
    boxes: &[SiteBox],
    facts: &[(String, BoxFacts)],
    me: &str,
) -> Result<(), LeaseDenial> {
    let none = BoxFacts::default();
    let of = |id: &str| facts_of(facts, id, &none);
    if !of(me).upgraded() {
        return Err(LeaseDenial::new(
            LeaseDenialReason::BoxOrder,
            format!(
                "box {me} of site {site_id} never committed this rollout's release; the \
                 site's rollback does not touch it"
            ),
            NOT_OPEN_RETRY_SECS,
        ));
    }
    let limit = plan.max_unavailable_per_site.max(1) as usize;
    let pending: Vec<&SiteBox> = ordered(&plan.box_order, boxes)
        .into_iter()
        .rev()
        .filter(|b| of(&b.box_id).upgraded() && !of(&b.box_id).rolled_back_since_commit())
        .collect();
    // Rolled back already (or not a box of the site): nothing to wait for.
    let Some(ahead) = waits_for(&pending, me, limit) else {
        return Ok(());
    };
    let ahead: Vec<String> = ahead.iter().map(|b| format!("box {}", b.box_id)).collect();
    Err(LeaseDenial::new(
        LeaseDenialReason::BoxOrder,
        format!(
            "box {me} of site {site_id} rolls back after {} reported its rollback done \
             (the site's boxes go back in reverse box order, {} at a time)",
            ahead.join(" and "),
            limit
        ),
        CONCURRENCY_RETRY_SECS,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn a_box(id: &str, role: &str) -> SiteBox {
        SiteBox {
            site_id: "store-1".into(),
            box_id: id.into(),
            role: role.into(),
            device_key: "ab".repeat(32),
            agent_version: "1".into(),
            enrolled_at: at(0),
            first: id == "srv-1",
        }
    }

    fn plan(extra: &str) -> RolloutPlan {
        crate::plan::parse_plan(
            &format!("name = \"r\"\nrelease = \"rel-2\"\n{extra}\n[[waves]]\nname = \"all\"\n"),
            crate::plan::PlanFormat::Toml,
        )
        .unwrap()
    }

    fn store() -> Vec<SiteBox> {
        vec![
            a_box("agt-2", "agent"),
            a_box("srv-1", "server"),
            a_box("agt-1", "agent"),
        ]
    }

    fn committed_healthy(t: i64) -> BoxFacts {
        BoxFacts {
            committed_at: Some(at(t)),
            last_healthy_at: Some(at(t + 1)),
            ..BoxFacts::default()
        }
    }

    fn ids(v: &[&SiteBox]) -> Vec<String> {
        v.iter().map(|b| b.box_id.clone()).collect()
    }

    #[test]
    fn the_order_takes_selectors_first_then_box_ids() {
        let boxes = store();
        assert_eq!(ids(&ordered(&[], &boxes)), ["agt-1", "agt-2", "srv-1"]);
        let order = vec!["role=server".to_string(), "role=agent".to_string()];
        assert_eq!(ids(&ordered(&order, &boxes)), ["srv-1", "agt-1", "agt-2"]);
        let order = vec!["box=agt-2".to_string()];
        assert_eq!(ids(&ordered(&order, &boxes)), ["agt-2", "agt-1", "srv-1"]);
    }

    #[test]
    fn one_box_at_a_time_in_order_the_next_after_a_healthy_commit() {
        let p = plan("box_order = [\"role=server\", \"role=agent\"]");
        let boxes = store();
        let decide = |facts: &[(String, BoxFacts)], me: &str| {
            box_lease_decision(&p, "store-1", &boxes, facts, me, at(100))
        };
        // Nothing yet: only the server may start; an agent out of turn is told to wait.
        assert!(decide(&[], "srv-1").is_ok());
        let d = decide(&[], "agt-1").unwrap_err();
        assert_eq!(d.reason, LeaseDenialReason::BoxOrder);
        assert!(
            d.message.contains("waits for box srv-1 (role server)"),
            "{}",
            d.message
        );
        assert_eq!(d.retry_after_secs, CONCURRENCY_RETRY_SECS);
        // The server committed but has not reported healthy since: still its turn.
        let committed = BoxFacts {
            committed_at: Some(at(50)),
            last_healthy_at: Some(at(40)),
            ..BoxFacts::default()
        };
        assert!(decide(&[("srv-1".into(), committed)], "agt-1").is_err());
        // Healthy after the commit: the first agent, then (after it) the second.
        let srv = ("srv-1".to_string(), committed_healthy(50));
        assert!(decide(std::slice::from_ref(&srv), "agt-1").is_ok());
        assert!(decide(std::slice::from_ref(&srv), "agt-2").is_err());
        let agt1 = ("agt-1".to_string(), committed_healthy(70));
        assert!(decide(&[srv.clone(), agt1], "agt-2").is_ok());
    }

    #[test]
    fn a_box_holding_its_lease_renews_and_two_at_a_time_takes_two() {
        let p = plan("max_unavailable_per_site = 2");
        let boxes = store();
        let holding = BoxFacts {
            lease_until: Some(at(200)),
            ..BoxFacts::default()
        };
        // agt-2 holds a lease (e.g. granted before a plan change): it renews.
        let facts = [("agt-2".to_string(), holding)];
        assert!(box_lease_decision(&p, "store-1", &boxes, &facts, "agt-2", at(100)).is_ok());
        // Two at a time: agt-1 and agt-2 may, srv-1 (third in id order) may not.
        assert!(box_lease_decision(&p, "store-1", &boxes, &[], "agt-2", at(100)).is_ok());
        let d = box_lease_decision(&p, "store-1", &boxes, &[], "srv-1", at(100)).unwrap_err();
        assert!(
            d.message.contains("box agt-1 (role agent) and box agt-2"),
            "{}",
            d.message
        );
    }

    #[test]
    fn a_failed_box_stops_the_others() {
        let p = plan("");
        let boxes = store();
        let failed = BoxFacts {
            failed_at: Some(at(60)),
            failure: Some("health check failed".into()),
            ..BoxFacts::default()
        };
        let facts = [("agt-1".to_string(), failed)];
        let d = box_lease_decision(&p, "store-1", &boxes, &facts, "agt-2", at(100)).unwrap_err();
        assert!(
            d.message.contains("box agt-1 of site store-1 failed"),
            "{}",
            d.message
        );
    }

    #[test]
    fn a_rollback_goes_back_in_reverse_order_one_at_a_time_after_each_is_done() {
        let p = plan("box_order = [\"role=server\", \"role=agent\"]");
        let boxes = store();
        let decide = |facts: &[(String, BoxFacts)], me: &str| {
            box_rollback_decision(&p, "store-1", &boxes, facts, me)
        };
        // Order srv-1, agt-1, agt-2; the two first committed, agt-2 failed (and rolled
        // itself back): agt-1 goes back first, then srv-1; agt-2 not at all.
        let failed = BoxFacts {
            failed_at: Some(at(80)),
            failure: Some("health check failed".into()),
            rolled_back: true,
            ..BoxFacts::default()
        };
        let mut facts = vec![
            ("srv-1".to_string(), committed_healthy(10)),
            ("agt-1".to_string(), committed_healthy(30)),
            ("agt-2".to_string(), failed),
        ];
        assert!(decide(&facts, "agt-1").is_ok());
        let d = decide(&facts, "srv-1").unwrap_err();
        assert_eq!(d.reason, LeaseDenialReason::BoxOrder);
        assert_eq!(d.retry_after_secs, CONCURRENCY_RETRY_SECS);
        assert!(
            d.message
                .contains("box srv-1 of site store-1 rolls back after box agt-1 reported"),
            "{}",
            d.message
        );
        let d = decide(&facts, "agt-2").unwrap_err();
        assert!(d.message.contains("never committed"), "{}", d.message);
        assert_eq!(d.retry_after_secs, NOT_OPEN_RETRY_SECS);
        // agt-1's rollback started (its lease) but has not finished: srv-1 still waits.
        facts[1].1.rollback_started_at = Some(at(100));
        facts[1].1.lease_until = Some(at(400));
        assert!(decide(&facts, "srv-1").is_err());
        assert!(decide(&facts, "agt-1").is_ok(), "it renews");
        // A rollback reported done before the box's commit does not count.
        facts[1].1.rolled_back_at = Some(at(20));
        assert!(decide(&facts, "srv-1").is_err());
        // Done after it: srv-1's turn; agt-1 asking again is not turned away.
        facts[1].1.rolled_back_at = Some(at(150));
        assert!(decide(&facts, "srv-1").is_ok());
        assert!(decide(&facts, "agt-1").is_ok());
        assert!(decide(&facts, "agt-2").is_err());
        // Two at a time: both upgraded boxes go back at once.
        let two = plan("max_unavailable_per_site = 2");
        facts[1].1.rolled_back_at = None;
        assert!(box_rollback_decision(&two, "store-1", &boxes, &facts, "srv-1").is_ok());
    }

    #[test]
    fn a_selector_matching_no_box_is_named_with_the_site_and_its_boxes() {
        let p = plan("box_order = [\"role=server\", \"role=worker\"]");
        let m = unmatched_selector(&p, "store-1", &store()).unwrap();
        assert!(
            m.contains("box_order[1] \"role=worker\" matches no box of site store-1")
                && m.contains("srv-1 (role server)"),
            "{m}"
        );
        assert_eq!(
            unmatched_selector(&p, "store-2", &[a_box("main", "")]),
            None
        );
        assert_eq!(
            unmatched_selector(&plan("box_order = [\"role=agent\"]"), "s", &store()),
            None
        );
    }
}
