//! Bundles for air-gapped sites (`POST /v1/bundles`): which sites a bundle serves, their
//! assignments (signed by the engine's own path, [`Engine::issue_assignments`], valid for
//! the plan's `bundle_validity`), and the rollout's timeline entry naming them.
//!
//! It decides what goes into a bundle, never how the file is written (that is the HTTP
//! edge's, `api::bundles`), and it never signs anything by hand.

use std::collections::BTreeMap;

use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::bundle::{ExportBundle, MAX_BUNDLE_SITES};
use fleetwave_shared::protocol::operator::RolloutStatus as WireStatus;
use jiff::Timestamp;

use super::{Engine, EngineError, Head};
use crate::store::SiteFilter;

/// The timeline kind of a bundle export.
pub const BUNDLE_EXPORTED: &str = "bundle_exported";

/// What an exported bundle carries besides the roots and the artifacts.
#[derive(Debug, Clone)]
pub struct BundleDocuments {
    pub rollout_id: String,
    pub wave: u32,
    /// The release envelope as published.
    pub release: Envelope,
    /// Each site's freshly signed assignment, by site id.
    pub assignments: BTreeMap<String, Envelope>,
    /// When the assignments expire (now + the plan's `bundle_validity`).
    pub expires: Timestamp,
}

impl Engine {
    /// Signs the assignments of the sites `req` names (one site, or a rollout's opened wave
    /// with an optional label filter), valid for the plan's `bundle_validity`, stores them
    /// (the poll path serves the same ones), and records a `bundle_exported` decision naming
    /// the sites.
    ///
    /// `check` sees the release before anything is signed; what it refuses (e.g. an
    /// artifact the coordinator does not hold) is an [`EngineError::InvalidBundle`] and
    /// nothing is issued or recorded.
    pub async fn export_bundle<T>(
        &self,
        req: &ExportBundle,
        actor: &str,
        check: impl FnOnce(&Envelope) -> Result<T, String>,
    ) -> Result<(BundleDocuments, T), EngineError> {
        let (rollout_id, wave, only) = match (&req.site, &req.rollout, req.wave) {
            (Some(site), None, None) if req.labels.is_empty() => {
                let (rollout, wave) = self.assigned_rollout(site).await?;
                (rollout, wave, Some(site.clone()))
            }
            (None, Some(rollout), Some(wave)) => (rollout.clone(), wave, None),
            (None, Some(_), None) => {
                return Err(EngineError::InvalidBundle(
                    "wave: a bundle for a rollout names one of its waves (`wave`, from 0)".into(),
                ));
            }
            _ => {
                return Err(EngineError::InvalidBundle(
                    "name either `site`, or `rollout` with `wave` (and optionally `labels`)".into(),
                ));
            }
        };
        let _guard = self.lock.lock().await;
        let now = self.clock.now();
        let (status, opened, head, members) = self
            .with_rollout(&rollout_id, |l| {
                let members: Vec<String> = l
                    .sites
                    .iter()
                    .filter(|s| s.wave == wave && !s.skipped && s.rollback_sequence.is_none())
                    .filter(|s| only.as_ref().is_none_or(|o| *o == s.site_id))
                    .map(|s| s.site_id.clone())
                    .collect();
                let opened = l
                    .record
                    .waves
                    .get(wave as usize)
                    .is_some_and(|w| w.opened_at.is_some());
                (l.record.status, opened, Head::of(l), members)
            })
            .await?;
        if wave >= head.plan.wave_count() {
            return Err(EngineError::NoSuchWave {
                wave,
                waves: head.plan.waves.len(),
            });
        }
        if status != WireStatus::Running {
            return Err(EngineError::InvalidBundle(format!(
                "rollout {rollout_id} is {}: bundles are exported for running rollouts only",
                status.as_str()
            )));
        }
        if !opened {
            return Err(EngineError::WaveNotOpen(wave));
        }
        let members = if req.labels.is_empty() {
            members
        } else {
            self.with_labels(members, &req.labels).await?
        };
        if members.is_empty() {
            return Err(EngineError::InvalidBundle(format!(
                "no site of rollout {rollout_id} wave {wave} matches (skipped sites and sites \
                 sent back by a rollback are left out)"
            )));
        }
        if members.len() > MAX_BUNDLE_SITES {
            return Err(EngineError::InvalidBundle(format!(
                "{} sites match: one bundle carries at most {MAX_BUNDLE_SITES}; narrow it with \
                 `labels` (e.g. by region) and export several",
                members.len()
            )));
        }
        let checked = check(&head.release.envelope).map_err(EngineError::InvalidBundle)?;
        let validity = head.plan.bundle_validity;
        let expires =
            crate::time::later(now, validity, "the bundle's expiry (now + bundle_validity)")?;
        let mut drafts = Vec::with_capacity(members.len());
        for site in &members {
            let mut d = head.draft(site, wave, now)?;
            d.expires = expires;
            drafts.push(d);
        }
        let release = crate::poll_cache::ServedRelease::new(head.release.envelope.clone());
        let mut assignments = BTreeMap::new();
        for chunk in drafts.chunks(super::ISSUE_CHUNK) {
            for r in self
                .issue_assignments(chunk.to_vec(), release.clone())
                .await?
            {
                assignments.insert(r.site_id, r.envelope);
            }
        }
        let (rid, sites, until) = (rollout_id.clone(), members.clone(), expires);
        self.db
            .run(move |s| s.serve_by_bundle(&rid, &sites, until))
            .await?;
        self.facts.apply_all(
            &rollout_id,
            members.iter().map(|s| super::facts::Update::Bundled {
                site_id: s.clone(),
                until: expires,
            }),
        );
        let reason = format!(
            "{} site(s) served by bundle (exported by {actor}); their assignments are valid \
             until {expires} (bundle_validity {}), and their report deadline counts from then: {}",
            members.len(),
            crate::plan::display_duration(validity),
            name_list(&members)
        );
        self.record_decisions(
            &rollout_id,
            vec![(BUNDLE_EXPORTED.to_string(), Some(wave), reason)],
            now,
        )
        .await?;
        Ok((
            BundleDocuments {
                rollout_id,
                wave,
                release: head.release.envelope.clone(),
                assignments,
                expires,
            },
            checked,
        ))
    }

    /// The rollout and wave of the site's current (forward) assignment.
    async fn assigned_rollout(&self, site: &str) -> Result<(String, u32), EngineError> {
        let id = site.to_string();
        if self.db.run(move |s| s.site(&id)).await?.is_none() {
            return Err(EngineError::SiteNotFound(site.to_string()));
        }
        match self.sites.get(site).and_then(|slot| slot.view().assignment) {
            Some(a) if !a.record.rollback => Ok((a.record.rollout_id.clone(), a.record.wave)),
            Some(_) => Err(EngineError::InvalidBundle(format!(
                "site {site} was sent back by a rollback: bundles carry forward assignments only"
            ))),
            None => Err(EngineError::InvalidBundle(format!(
                "site {site} has no assignment to carry: it is in no opened wave of a running \
                 rollout (see `fleetwave rollout status`)"
            ))),
        }
    }

    /// The `sites` whose labels match every `labels` entry.
    async fn with_labels(
        &self,
        sites: Vec<String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, EngineError> {
        let filter = SiteFilter {
            labels: labels.clone(),
            state: None,
            version: None,
            after: None,
            limit: i64::MAX as usize,
        };
        let matching: std::collections::BTreeSet<String> = self
            .db
            .run(move |s| s.list_sites(&filter))
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        Ok(sites.into_iter().filter(|s| matching.contains(s)).collect())
    }
}

/// The first site ids, then how many more.
fn name_list(sites: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut out = sites
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if sites.len() > SHOWN {
        out.push_str(&format!(" and {} more", sites.len() - SHOWN));
    }
    out
}
