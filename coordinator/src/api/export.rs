//! `GET /v1/rollouts/{id}/export`: a rollout for a post-incident review, in one answer.
//!
//! The status view (plan, waves, tallies, the decision timeline), the release, every
//! failed, silent or rolled-back site with the agent's own words and its reports around the
//! failure, the audit entries about the rollout, and the releases the sites ran before and
//! the versions they run now. Read-only; bounded at any fleet size.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use fleetwave_shared::protocol::export::{
    EXPORT_AUDIT, EXPORT_REPORTS_AFTER, EXPORT_REPORTS_BEFORE, EXPORT_SITES, ExportSite,
    RolloutExport,
};
use fleetwave_shared::protocol::operator::Permission;

use super::operator::{audit_entry, for_each_site, release_info, rollout_view_of, site_view};
use crate::error::{ApiError, ApiPath};
use crate::http::auth::Operator;
use crate::state::AppState;

pub async fn export_rollout(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutExport>, ApiError> {
    op.require(Permission::Read)?;
    let now = app.now();
    let l = app.engine.load_rollout(&id).await?;
    let rollout = rollout_view_of(&app, &l).await?;
    let release_id = l.record.release_id.clone();
    let release = app
        .db
        .run(move |s| s.release(&release_id))
        .await?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "rollout {id} names release {} that is not stored",
                l.record.release_id
            ))
        })?;
    let stream = release.name.clone();

    // The sites that went wrong, by wave then id.
    let view = l.view();
    let mut wrong = Vec::new();
    for_each_site(&l, &view, now, |wave, f, state| {
        if matches!(state, "failed" | "silent" | "rolled_back") {
            wrong.push((wave, f, state));
        }
    });
    wrong.sort_by(|a, b| (a.0, &a.1.site_id).cmp(&(b.0, &b.1.site_id)));
    let sites_omitted = wrong.len().saturating_sub(EXPORT_SITES) as u64;
    wrong.truncate(EXPORT_SITES);
    let records: BTreeMap<&str, &crate::store::RolloutSiteRecord> =
        l.sites.iter().map(|s| (s.site_id.as_str(), s)).collect();

    // Versions: what each site ran before, what it runs now.
    let site_ids: Vec<String> = l.sites.iter().map(|s| s.site_id.clone()).collect();
    let version_now: BTreeMap<String, Option<String>> = app
        .db
        .run(move |s| {
            let mut out = BTreeMap::new();
            for id in site_ids {
                let v = s
                    .site(&id)?
                    .and_then(|site| site.installed.get(&stream).and_then(|i| i.version.clone()));
                out.insert(id, v);
            }
            Ok(out)
        })
        .await?;
    let mut releases_before = BTreeMap::new();
    let mut versions_now = BTreeMap::new();
    for s in &l.sites {
        let before = s
            .previous_release_id
            .clone()
            .unwrap_or_else(|| "unknown".into());
        *releases_before.entry(before).or_insert(0u64) += 1;
        let now_v = version_now
            .get(&s.site_id)
            .cloned()
            .flatten()
            .unwrap_or_else(|| "none".into());
        *versions_now.entry(now_v).or_insert(0u64) += 1;
    }

    // Each site's reports around its failure (or its last report), on the read model's
    // connections: never the writer's.
    let read = app.db.dashboard_read();
    let moments: Vec<(String, jiff::Timestamp)> = wrong
        .iter()
        .map(|(_, f, _)| {
            let r = records.get(f.site_id.as_str());
            let at = r
                .and_then(|r| r.failed_at.or(r.last_report_at))
                .unwrap_or(now);
            (f.site_id.clone(), at)
        })
        .collect();
    let mut reports = tokio::task::spawn_blocking(move || {
        moments
            .iter()
            .map(|(sid, at)| {
                read.site_events_around(sid, *at, EXPORT_REPORTS_BEFORE, EXPORT_REPORTS_AFTER)
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading reports failed: {e}")))??
    .into_iter();
    let mut sites = Vec::with_capacity(wrong.len());
    for (wave, f, state) in wrong {
        let listed = site_view(&l, &view, wave, f, state, now);
        let record = records.get(f.site_id.as_str()).copied();
        sites.push(ExportSite {
            site_id: listed.site_id,
            wave,
            state: listed.state,
            phase: listed.phase,
            detail: listed.detail,
            failure: record.and_then(|r| r.failure.clone()),
            failed_at: record.and_then(|r| r.failed_at),
            last_report_at: record.and_then(|r| r.last_report_at),
            previous_release_id: record.and_then(|r| r.previous_release_id.clone()),
            version_now: version_now.get(&f.site_id).cloned().flatten(),
            reports: reports.next().unwrap_or_default(),
        });
    }

    let target = id.clone();
    let audit = app
        .db
        .run(move |s| s.audit_of(&target, EXPORT_AUDIT))
        .await?
        .into_iter()
        .map(audit_entry)
        .collect();
    Ok(Json(RolloutExport {
        exported_at: now,
        exported_by: op.actor(),
        rollout,
        release: release_info(release),
        sites,
        sites_omitted,
        audit,
        releases_before,
        versions_now,
    }))
}
