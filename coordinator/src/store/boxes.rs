//! Boxes within a site: what an enrollment does to a site that may have several boxes.
//!
//! Pure: both backends read the token, the site and its boxes inside their enrollment
//! transaction and apply the step this module decides. It must never read or write
//! storage itself.

use super::{Enrollment, EnrollmentTokenRecord, SiteBox, SiteRecord, StoreError};
use fleetwave_shared::protocol::operator::SiteState;

/// What an accepted enrollment changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollStep {
    /// A new site, with the enrolling box as its first box (the `sites` row).
    NewSite,
    /// A new box of an enrolled site (a `site_boxes` row).
    JoinSite,
    /// A new device key for the site's first box (what a re-imaged one-box site does).
    RekeyFirstBox,
    /// A new device key for a box that joined the site later.
    RekeyBox,
}

/// Decides what `e` does, given its (usable) token, the site it names as stored and the
/// site's boxes. Refuses a decommissioned site (Conflict), a token not bound to an
/// enrolled site (SiteExists: such a token only creates new sites) and a box the site has
/// already unless the token is a rekey of the site issued after that box enrolled
/// (BoxExists).
pub fn enroll_step(
    e: &Enrollment,
    token: &EnrollmentTokenRecord,
    site: Option<&SiteRecord>,
    boxes: &[SiteBox],
) -> Result<EnrollStep, StoreError> {
    let Some(site) = site else {
        return Ok(EnrollStep::NewSite);
    };
    if site.state == SiteState::Decommissioned {
        return Err(StoreError::Conflict(format!(
            "site {} is decommissioned; an operator must re-enable it first",
            e.site_id
        )));
    }
    if token.site_id.as_deref() != Some(e.site_id.as_str()) {
        return Err(StoreError::SiteExists(e.site_id.clone()));
    }
    match boxes.iter().find(|b| b.box_id == e.box_id) {
        None => Ok(EnrollStep::JoinSite),
        Some(b) if token.created_at < b.enrolled_at => Err(StoreError::BoxExists {
            site_id: e.site_id.clone(),
            box_id: e.box_id.clone(),
        }),
        Some(b) if b.first => Ok(EnrollStep::RekeyFirstBox),
        Some(_) => Ok(EnrollStep::RekeyBox),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::Timestamp;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn enrollment(box_id: &str) -> Enrollment {
        Enrollment {
            token_hash: "h".into(),
            site_id: "store-1".into(),
            box_id: box_id.into(),
            role: "agent".into(),
            device_key: "ab".repeat(32),
            agent_version: "1".into(),
            at: at(100),
        }
    }

    fn token(site: Option<&str>, created: i64) -> EnrollmentTokenRecord {
        EnrollmentTokenRecord {
            id: "et-1".into(),
            labels: BTreeMap::new(),
            site_id: site.map(str::to_string),
            expires_at: at(1000),
            uses_total: 3,
            uses_left: 3,
            revoked: false,
            created_at: at(created),
            created_by: "op".into(),
        }
    }

    fn site(state: SiteState) -> SiteRecord {
        SiteRecord {
            id: "store-1".into(),
            device_key: "cd".repeat(32),
            labels: BTreeMap::new(),
            state,
            agent_version: "1".into(),
            enrolled_at: at(10),
            last_seen: None,
            installed: BTreeMap::new(),
            healthy: None,
            health_at: None,
            deferred_until: None,
        }
    }

    fn a_box(id: &str, first: bool, enrolled: i64) -> SiteBox {
        SiteBox {
            site_id: "store-1".into(),
            box_id: id.into(),
            role: "server".into(),
            device_key: "cd".repeat(32),
            agent_version: "1".into(),
            enrolled_at: at(enrolled),
            first,
        }
    }

    #[test]
    fn a_new_site_takes_any_usable_token() {
        let step = enroll_step(&enrollment("main"), &token(None, 0), None, &[]).unwrap();
        assert_eq!(step, EnrollStep::NewSite);
    }

    #[test]
    fn a_new_box_joins_with_a_token_bound_to_the_site_even_one_older_than_the_site() {
        let boxes = [a_box("srv", true, 10)];
        let s = site(SiteState::Active);
        let step = enroll_step(
            &enrollment("agt-1"),
            &token(Some("store-1"), 0),
            Some(&s),
            &boxes,
        );
        assert_eq!(step.unwrap(), EnrollStep::JoinSite);
    }

    #[test]
    fn a_token_not_bound_to_the_site_neither_joins_nor_rekeys() {
        let boxes = [a_box("srv", true, 10)];
        let s = site(SiteState::Active);
        for b in ["srv", "agt-1"] {
            let err = enroll_step(&enrollment(b), &token(None, 50), Some(&s), &boxes).unwrap_err();
            assert!(
                matches!(err, StoreError::SiteExists(ref id) if id == "store-1"),
                "{err}"
            );
            let other = token(Some("store-2"), 50);
            let err = enroll_step(&enrollment(b), &other, Some(&s), &boxes).unwrap_err();
            assert!(matches!(err, StoreError::SiteExists(_)), "{err}");
        }
    }

    #[test]
    fn the_same_box_again_is_refused_unless_the_token_is_a_newer_rekey() {
        let boxes = [a_box("srv", true, 10), a_box("agt-1", false, 20)];
        let s = site(SiteState::Active);
        // Bound to the site, but older than the box: the token that enrolled it.
        let err = enroll_step(
            &enrollment("agt-1"),
            &token(Some("store-1"), 5),
            Some(&s),
            &boxes,
        )
        .unwrap_err();
        assert!(
            matches!(err, StoreError::BoxExists { ref site_id, ref box_id } if site_id == "store-1" && box_id == "agt-1"),
            "{err}"
        );
        let rekey = token(Some("store-1"), 30);
        assert_eq!(
            enroll_step(&enrollment("agt-1"), &rekey, Some(&s), &boxes).unwrap(),
            EnrollStep::RekeyBox
        );
        assert_eq!(
            enroll_step(&enrollment("srv"), &rekey, Some(&s), &boxes).unwrap(),
            EnrollStep::RekeyFirstBox
        );
    }

    #[test]
    fn a_decommissioned_site_takes_no_box() {
        let s = site(SiteState::Decommissioned);
        let err = enroll_step(
            &enrollment("main"),
            &token(Some("store-1"), 50),
            Some(&s),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(ref m) if m.contains("decommissioned")),
            "{err}"
        );
    }
}
