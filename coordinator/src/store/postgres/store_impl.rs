//! The [`Store`] trait on PostgreSQL: each method is one read on a pooled connection or
//! one serializable write transaction, implemented by area as on SQLite: [`access`]
//! (roots, tokens, enrollment, audit), [`sites`], [`releases`], [`rollouts`] (with their
//! decisions), [`assignments`] (with leases), [`reports`] (the report path), [`channels`],
//! [`freezes`], [`signals`], [`site_import`] and [`webhooks`].

use super::*;

impl Store for PgStore {
    fn dashboard_read(&self) -> Arc<dyn super::read::DashboardRead> {
        Arc::new(dashboard::PgReadModel::new(self.pool.clone()))
    }

    fn channels(&self) -> StoreResult<Vec<ChannelRecord>> {
        channels::list(self)
    }

    fn put_channel(&self, channel: &ChannelRecord, audit: &AuditRecord) -> StoreResult<()> {
        channels::put(self, channel, audit)
    }

    fn delete_channel(&self, name: &str, audit: &AuditRecord) -> StoreResult<()> {
        channels::delete(self, name, audit)
    }

    fn sites_off_version(
        &self,
        stream: &str,
        version: &str,
        free_only: bool,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<OffVersionSite>> {
        channels::sites_off_version(self, stream, version, free_only, after, limit)
    }

    fn sites_off_version_indexed(
        &self,
        stream: &str,
        version: &str,
        free_only: bool,
    ) -> StoreResult<Vec<OffVersionSite>> {
        channels::sites_off_version_indexed(self, stream, version, free_only)
    }

    fn open_dashboard_session(
        &self,
        id_hash: &str,
        session: &DashboardSession,
        created_before: Timestamp,
        used_before: Timestamp,
    ) -> StoreResult<()> {
        dashboard_sessions::open_dashboard_session(
            self,
            id_hash,
            session,
            created_before,
            used_before,
        )
    }

    fn dashboard_session(&self, id_hash: &str) -> StoreResult<Option<DashboardSession>> {
        dashboard_sessions::dashboard_session(self, id_hash)
    }

    fn touch_dashboard_session(&self, id_hash: &str, at: Timestamp) -> StoreResult<()> {
        dashboard_sessions::touch_dashboard_session(self, id_hash, at)
    }

    fn close_dashboard_session(&self, id_hash: &str) -> StoreResult<()> {
        dashboard_sessions::close_dashboard_session(self, id_hash)
    }

    fn create_freeze(&self, f: &FreezeRecord) -> StoreResult<()> {
        freezes::create(self, f)
    }

    fn open_freezes(&self, now: Timestamp) -> StoreResult<Vec<FreezeRecord>> {
        freezes::open(self, now)
    }

    fn end_freeze(&self, id: &str, at: Timestamp, by: &str) -> StoreResult<FreezeRecord> {
        freezes::end(self, id, at, by)
    }

    fn create_webhook(&self, w: &WebhookRecord, audit: &AuditRecord) -> StoreResult<()> {
        webhooks::create(self, w, audit)
    }

    fn webhooks(&self) -> StoreResult<Vec<WebhookRecord>> {
        webhooks::list(self)
    }

    fn webhook(&self, id: &str) -> StoreResult<Option<WebhookRecord>> {
        webhooks::get(self, id)
    }

    fn delete_webhook(&self, id: &str, audit: &AuditRecord) -> StoreResult<()> {
        webhooks::delete(self, id, audit)
    }

    fn enqueue_webhook_test(
        &self,
        id: &str,
        event: &crate::webhooks::WebhookEvent,
        audit: &AuditRecord,
    ) -> StoreResult<String> {
        webhooks::enqueue_test(self, id, event, audit)
    }

    fn record_site_silences(&self, silences: &[SiteSilence]) -> StoreResult<usize> {
        webhooks::record_site_silences(self, silences)
    }

    fn webhook_subscribed(&self, kind: &str) -> StoreResult<bool> {
        webhooks::subscribed(self, kind)
    }

    fn webhook_delivery_counts(&self) -> StoreResult<BTreeMap<String, DeliveryCounts>> {
        webhooks::counts(self)
    }

    fn due_webhook_deliveries(
        &self,
        now: Timestamp,
        busy: &[String],
        limit: usize,
    ) -> StoreResult<Vec<DueDelivery>> {
        webhooks::due(self, now, busy, limit)
    }

    fn record_webhook_attempt(
        &self,
        attempt: &AttemptRecord,
        next_attempt_at: Option<Timestamp>,
    ) -> StoreResult<()> {
        webhooks::record_attempt(self, attempt, next_attempt_at)
    }

    fn webhook_attempts(&self, endpoint_id: &str, limit: usize) -> StoreResult<Vec<AttemptRecord>> {
        webhooks::attempts(self, endpoint_id, limit)
    }

    fn webhook_deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        webhooks::deliveries(self, endpoint_id, limit)
    }

    fn ping(&self) -> StoreResult<()> {
        access::ping(self)
    }

    fn claim_leadership(&self, holder: &str, lease: std::time::Duration) -> StoreResult<Claim> {
        leadership::claim(self, holder, lease)
    }

    fn resign_leadership(&self, holder: &str) -> StoreResult<()> {
        leadership::resign(self, holder)
    }

    fn roots(&self) -> StoreResult<Vec<Envelope>> {
        access::roots(self)
    }

    fn add_root(&self, version: u64, env: &Envelope, at: Timestamp) -> StoreResult<()> {
        access::add_root(self, version, env, at)
    }

    fn create_operator_token(&self, token_hash: &str, t: &OperatorTokenRecord) -> StoreResult<()> {
        access::create_operator_token(self, token_hash, t)
    }

    fn operator_token_by_hash(&self, token_hash: &str) -> StoreResult<Option<OperatorTokenRecord>> {
        access::operator_token_by_hash(self, token_hash)
    }

    fn list_operator_tokens(&self) -> StoreResult<Vec<OperatorTokenRecord>> {
        access::list_operator_tokens(self)
    }

    fn revoke_operator_token(&self, id: &str) -> StoreResult<()> {
        access::revoke_operator_token(self, id)
    }

    fn create_enrollment_token(
        &self,
        token_hash: &str,
        t: &EnrollmentTokenRecord,
    ) -> StoreResult<()> {
        access::create_enrollment_token(self, token_hash, t)
    }

    fn list_enrollment_tokens(&self) -> StoreResult<Vec<EnrollmentTokenRecord>> {
        access::list_enrollment_tokens(self)
    }

    fn revoke_enrollment_token(&self, id: &str) -> StoreResult<()> {
        access::revoke_enrollment_token(self, id)
    }

    fn enrollment_token_by_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<EnrollmentTokenRecord>> {
        access::enrollment_token_by_hash(self, token_hash)
    }

    fn enroll(&self, e: &Enrollment) -> StoreResult<SiteRecord> {
        access::enroll(self, e)
    }

    fn site_boxes(&self, site_id: &str) -> StoreResult<Vec<SiteBox>> {
        sites::site_boxes(self, site_id)
    }

    fn boxes_of_multi_box_sites(&self) -> StoreResult<Vec<SiteBox>> {
        sites::boxes_of_multi_box_sites(self)
    }

    fn rollout_boxes(
        &self,
        rollout_id: &str,
        site_id: &str,
    ) -> StoreResult<Vec<(String, super::boxes::BoxFacts)>> {
        self.read(|c| reports::read_box_facts(&mut **c, rollout_id, site_id))
    }

    fn lease_box(
        &self,
        rollout_id: &str,
        site_id: &str,
        box_id: &str,
        at: Timestamp,
        until: Timestamp,
        allow: &BoxLeaseCheck<'_>,
    ) -> StoreResult<bool> {
        self.write(|tx| {
            let all = reports::read_box_facts(&mut *tx, rollout_id, site_id)?;
            if !allow(&all) {
                return Ok(false);
            }
            let mut facts = all
                .into_iter()
                .find(|(b, _)| b == box_id)
                .map(|(_, f)| f)
                .unwrap_or_default();
            super::boxes::lease(&mut facts, at, until);
            reports::write_box_facts(&mut *tx, rollout_id, site_id, box_id, &facts)?;
            Ok(true)
        })
    }

    fn record_session_nonce(
        &self,
        site_id: &str,
        nonce: &str,
        expires_at: Timestamp,
    ) -> StoreResult<bool> {
        access::record_session_nonce(self, site_id, nonce, expires_at)
    }

    fn existing_sites(&self, ids: &[String]) -> StoreResult<Vec<String>> {
        site_import::existing(self, ids)
    }

    fn import_sites(&self, sites: &[ImportedSite], tokens: &[ImportedToken]) -> StoreResult<()> {
        site_import::import(self, sites, tokens)
    }

    fn undo_site_import(&self, site_ids: &[String], token_ids: &[String]) -> StoreResult<()> {
        site_import::undo(self, site_ids, token_ids)
    }

    fn site(&self, id: &str) -> StoreResult<Option<SiteRecord>> {
        sites::site(self, id)
    }

    fn list_sites(&self, f: &SiteFilter) -> StoreResult<Vec<SiteRecord>> {
        sites::list_sites(self, f)
    }

    fn site_keys(&self) -> StoreResult<Vec<SiteKey>> {
        sites::site_keys(self)
    }

    fn site_labels(&self, stream: Option<&str>) -> StoreResult<Vec<SiteLabels>> {
        sites::site_labels(self, stream)
    }

    fn set_site_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> StoreResult<()> {
        sites::set_site_labels(self, id, labels)
    }

    fn set_site_state(&self, id: &str, state: SiteState) -> StoreResult<()> {
        sites::set_site_state(self, id, state)
    }

    fn touch_sites(&self, seen: &[(String, Timestamp)]) -> StoreResult<()> {
        sites::touch_sites(self, seen)
    }

    fn set_site_hold(&self, site_id: &str, hold: Option<&SiteHold>) -> StoreResult<bool> {
        sites::set_site_hold(self, site_id, hold)
    }

    fn site_holds(&self) -> StoreResult<BTreeMap<String, SiteHold>> {
        sites::site_holds(self)
    }

    fn count_sites_by_state(&self) -> StoreResult<Vec<(SiteState, u64)>> {
        sites::count_sites_by_state(self)
    }

    fn count_sites_rollback_failed(&self) -> StoreResult<u64> {
        sites::count_sites_rollback_failed(self)
    }

    fn count_sites_not_seen_since(&self, cutoffs: &[Timestamp]) -> StoreResult<Vec<u64>> {
        sites::count_sites_not_seen_since(self, cutoffs)
    }

    fn publish_release(&self, r: &ReleaseRecord) -> StoreResult<()> {
        releases::publish_release(self, r)
    }

    fn release(&self, id: &str) -> StoreResult<Option<ReleaseRecord>> {
        releases::release(self, id)
    }

    fn list_releases(&self) -> StoreResult<Vec<ReleaseRecord>> {
        releases::list_releases(self)
    }

    fn add_artifact(&self, a: &ArtifactRecord) -> StoreResult<()> {
        releases::add_artifact(self, a)
    }

    fn artifact(&self, sha256: &str) -> StoreResult<Option<ArtifactRecord>> {
        releases::artifact(self, sha256)
    }

    fn create_rollout(&self, ro: &RolloutRecord, members: &[RolloutSiteRecord]) -> StoreResult<()> {
        rollouts::create_rollout(self, ro, members)
    }

    fn rollout(&self, id: &str) -> StoreResult<Option<RolloutRecord>> {
        rollouts::rollout(self, id)
    }

    fn list_rollouts(&self) -> StoreResult<Vec<RolloutRecord>> {
        rollouts::list_rollouts(self)
    }

    fn update_rollout(&self, ro: &RolloutRecord, decisions: &[DecisionRecord]) -> StoreResult<()> {
        rollouts::update_rollout(self, ro, decisions)
    }

    fn rollout_sites(&self, rollout_id: &str) -> StoreResult<Vec<RolloutSiteRecord>> {
        rollouts::rollout_sites(self, rollout_id)
    }

    fn rollout_site(
        &self,
        rollout_id: &str,
        site_id: &str,
    ) -> StoreResult<Option<RolloutSiteRecord>> {
        rollouts::rollout_site(self, rollout_id, site_id)
    }

    fn rollout_site_rows(&self, keys: &[(String, String)]) -> StoreResult<Vec<RolloutSiteRecord>> {
        rollouts::rollout_site_rows(self, keys)
    }

    fn add_rollout_sites(&self, members: &[RolloutSiteRecord]) -> StoreResult<Vec<String>> {
        rollouts::add_rollout_sites(self, members)
    }

    fn set_rollout_site_skipped(&self, rollout_id: &str, site_id: &str) -> StoreResult<()> {
        rollouts::set_rollout_site_skipped(self, rollout_id, site_id)
    }

    fn reset_rollout_sites_for_retry(
        &self,
        rollout_id: &str,
        site_ids: &[String],
    ) -> StoreResult<Vec<u32>> {
        rollouts::reset_rollout_sites_for_retry(self, rollout_id, site_ids)
    }
    fn serve_by_bundle(
        &self,
        rollout_id: &str,
        sites: &[String],
        until: Timestamp,
    ) -> StoreResult<()> {
        rollouts::serve_by_bundle(self, rollout_id, sites, until)
    }
    fn schedule_rollout_site_retries(
        &self,
        rollout_id: &str,
        retries: &[(String, Timestamp)],
    ) -> StoreResult<()> {
        rollouts::schedule_rollout_site_retries(self, rollout_id, retries)
    }

    fn set_rollout_site_waves(
        &self,
        rollout_id: &str,
        moves: &[(String, u32)],
    ) -> StoreResult<Vec<String>> {
        rollouts::set_rollout_site_waves(self, rollout_id, moves)
    }

    fn active_rollout_of_site(&self, site_id: &str) -> StoreResult<Option<String>> {
        rollouts::active_rollout_of_site(self, site_id)
    }

    fn issue_assignments(
        &self,
        drafts: &[AssignmentDraft],
        sign: &(dyn Fn(&AssignmentDraft, u64) -> Envelope + Sync),
    ) -> StoreResult<Vec<AssignmentRecord>> {
        assignments::issue_assignments(self, drafts, sign)
    }

    fn current_assignments_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AssignmentRecord>> {
        assignments::current_assignments_after(self, after, limit)
    }

    fn current_assignment_of(&self, site_id: &str) -> StoreResult<Option<AssignmentRecord>> {
        assignments::current_assignment_of(self, site_id)
    }

    fn active_leases(&self, rollout_id: &str, now: Timestamp) -> StoreResult<Vec<LeaseRecord>> {
        assignments::active_leases(self, rollout_id, now)
    }

    fn grant_leases(&self, leases: &[LeaseRecord]) -> StoreResult<Vec<StoreResult<()>>> {
        assignments::grant_leases(self, leases)
    }

    fn grant_lease_counted(
        &self,
        lease: &LeaseRecord,
        compartment: Option<(&str, &str)>,
        allow: &(dyn Fn(&LeaseCounts) -> bool + Sync),
    ) -> StoreResult<Result<(), LeaseCounts>> {
        assignments::grant_lease_counted(self, lease, compartment, allow)
    }

    fn shared_by_replicas(&self) -> bool {
        true
    }

    fn max_group_items(&self) -> usize {
        super::MAX_GROUP_ITEMS
    }

    fn change_feed(&self) -> StoreResult<Option<Box<dyn ChangeFeed>>> {
        Ok(Some(Box::new(super::changes::open(self)?)))
    }

    fn compartment_counts(
        &self,
        rollout_id: &str,
        label: &str,
        value: &str,
        except_site: &str,
        now: Timestamp,
    ) -> StoreResult<(u32, u32)> {
        assignments::compartment_counts(self, rollout_id, label, value, except_site, now)
    }

    fn apply_report_group(
        &self,
        batches: &[ReportInput],
    ) -> StoreResult<Vec<StoreResult<ReportOutcome>>> {
        reports::apply_report_group(self, batches)
    }

    fn add_decisions(&self, decisions: &[DecisionRecord]) -> StoreResult<()> {
        rollouts::add_decisions(self, decisions)
    }

    fn prune_reports(
        &self,
        kind: ReportKind,
        before: Timestamp,
        limit: usize,
    ) -> StoreResult<usize> {
        reports::prune_reports(self, kind, before, limit)
    }

    fn put_signals(
        &self,
        site_id: &str,
        minutes: &[fleetwave_shared::protocol::signals::SignalMinute],
        received_at: Timestamp,
    ) -> StoreResult<SignalsStored> {
        signals::put(self, site_id, minutes, received_at)
    }

    fn latest_signals(
        &self,
        site_id: &str,
    ) -> StoreResult<Vec<(fleetwave_shared::protocol::signals::SignalMinute, Timestamp)>> {
        signals::latest(self, site_id)
    }

    fn signal_samples(
        &self,
        sites: &[String],
        stream: &str,
        signal: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<SignalSample>> {
        signals::samples(self, sites, stream, signal, from, to)
    }

    fn prune_signals(&self, before: Timestamp, limit: usize) -> StoreResult<usize> {
        signals::prune(self, before, limit)
    }

    fn decisions(&self, rollout_id: &str) -> StoreResult<Vec<DecisionRecord>> {
        rollouts::decisions(self, rollout_id)
    }

    fn audit(&self, a: &AuditRecord) -> StoreResult<()> {
        access::audit(self, a)
    }

    fn list_audit(&self, before: Option<i64>, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        access::list_audit(self, before, limit)
    }

    fn audit_of(&self, target: &str, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        access::audit_of(self, target, limit)
    }
}
