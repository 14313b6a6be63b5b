//! The controller's view of a live rollout, kept with its facts and up to date as they
//! change, so that a controller pass runs [`crate::controller::tick`] on it in place
//! instead of copying every member site's facts (an id and a failure string each) into a
//! fresh [`RolloutView`] on every pass.
//!
//! The view is built from the rollout's rows on the first pass that needs it
//! ([`Loaded::with_view`]), then each committed change to a site's row rewrites that one
//! site's facts ([`Loaded::note_change`]); a change of a site's wave, or of the set of
//! members, drops the view and the next pass builds it again. The header (status, current
//! wave, each wave's opening and approval) is taken from the record on every use. The view
//! it hands out is always the one [`Loaded::view`] would build (debug builds check this on
//! every use).
//!
//! This module never writes to the database and never decides anything.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Loaded, facts};
use crate::controller::RolloutView;
use crate::controller::analysis::AnalysisFact;

/// A rollout's kept view (empty: not built, or dropped). Copies of a [`Loaded`] do not take
/// it along: they are one-off reads, and the copy would cost what the view saves.
#[derive(Default)]
pub struct KeptView(Mutex<Option<Box<RolloutView>>>);

impl Clone for KeptView {
    fn clone(&self) -> KeptView {
        KeptView::default()
    }
}

impl std::fmt::Debug for KeptView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = self.lock().is_some();
        f.debug_struct("KeptView").field("built", &built).finish()
    }
}

impl KeptView {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Box<RolloutView>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which site a committed change touched, for [`Loaded::note_change`].
pub enum Touched<'a> {
    /// The site's row changed in place (its wave is unchanged).
    Site(&'a str),
    /// A site joined, left or changed wave: the view is built again.
    Members,
    /// Only the rollout's record changed (read on every use).
    Record,
}

impl Loaded {
    /// Runs `f` on the controller's view of the rollout, built once and kept up to date
    /// (see the module documentation), with every wave's `analysis` empty: the same view
    /// as [`Loaded::view`] without copying it.
    pub fn with_view<R>(&self, f: impl FnOnce(&RolloutView) -> R) -> R {
        self.with_view_mut(|view| f(view))
    }

    /// [`Loaded::with_view`] with each wave's analysis facts set from `analysis` (by wave,
    /// [`super::Engine::analyses`]): the view that [`Loaded::view`] and the engine's last
    /// analysis make together, without building or copying one per call (the status of a
    /// rollout of a million sites copied all of them for every answer).
    pub fn with_view_analysed<R>(
        &self,
        analysis: &BTreeMap<u32, Vec<AnalysisFact>>,
        f: impl FnOnce(&RolloutView) -> R,
    ) -> R {
        self.with_view_mut(|view| {
            for (&wave, facts) in analysis {
                if let Some(w) = view.waves.get_mut(wave as usize) {
                    w.analysis.clone_from(facts);
                }
            }
            let out = f(view);
            // Kept with empty analyses, as every use expects it.
            for w in &mut view.waves {
                w.analysis.clear();
            }
            out
        })
    }

    fn with_view_mut<R>(&self, f: impl FnOnce(&mut RolloutView) -> R) -> R {
        let mut kept = self.views.lock();
        let view = match kept.take() {
            Some(mut v) => {
                self.refresh_header(&mut v);
                v
            }
            None => Box::new(self.view()),
        };
        debug_assert_eq!(*view, self.view(), "the kept view drifted from the rows");
        let mut view = view;
        let out = f(&mut view);
        *kept = Some(view);
        out
    }

    /// The header of the view (status, current wave, waves' opening and approval) as the
    /// record has it now; every wave's analysis emptied.
    fn refresh_header(&self, view: &mut RolloutView) {
        view.rollout_id.clone_from(&self.record.id);
        view.status = self.record.status;
        view.current_wave = self.current_wave();
        for (i, w) in view.waves.iter_mut().enumerate() {
            let r = self.record.waves.get(i);
            w.opened_at = r.and_then(|r| r.opened_at);
            w.approved_at = r.and_then(|r| r.approved_at);
            w.analysis.clear();
        }
    }

    /// Brings the kept view (if built) up to date with a change just applied to the rows.
    pub(super) fn note_change(&mut self, touched: Touched<'_>) {
        let kept = self.views.0.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(view) = kept.as_mut() else {
            return;
        };
        let site_id = match touched {
            Touched::Record => return,
            Touched::Members => {
                *kept = None;
                return;
            }
            Touched::Site(id) => id,
        };
        let Ok(at) = self
            .sites
            .binary_search_by(|s| s.site_id.as_str().cmp(site_id))
        else {
            // A change to a site that is not a member changed no row.
            return;
        };
        let row = &self.sites[at];
        let Some(wave) = view.waves.get_mut(row.wave as usize) else {
            // Sites of waves the plan does not have are not in the view.
            return;
        };
        match wave
            .sites
            .binary_search_by(|s| s.site_id.as_str().cmp(site_id))
        {
            Ok(i) => wave.sites[i] = facts(row),
            // Not where its row says: build the view again rather than guess.
            Err(_) => *kept = None,
        }
    }
}
