//! The [`Store`] trait on SQLite: every method is one read on a reader connection or one
//! write transaction on the writer (the report path's folding is in [`super::reports`]).

use rusqlite::{OptionalExtension, params};

use super::*;

impl Store for SqliteStore {
    fn dashboard_read(&self) -> Arc<dyn super::read::DashboardRead> {
        Arc::new(dashboard::SqliteReadModel::new(self.path.clone()))
    }

    fn ping(&self) -> StoreResult<()> {
        self.read(|c| {
            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())?)
        })
    }

    fn roots(&self) -> StoreResult<Vec<Envelope>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT envelope FROM roots ORDER BY version")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            collect(rows, |t| envelope(&t))
        })
    }

    fn add_root(&self, version: u64, env: &Envelope, at: Timestamp) -> StoreResult<()> {
        self.write(|tx| {
            let latest: Option<i64> =
                tx.query_row("SELECT MAX(version) FROM roots", [], |r| r.get(0))?;
            let expected = latest.map_or(1, |v| v + 1);
            if version as i64 != expected {
                return Err(StoreError::Conflict(format!(
                    "root version {version} cannot be stored: the next version is {expected}"
                )));
            }
            tx.execute(
                "INSERT INTO roots (version, envelope, added_at) VALUES (?1, ?2, ?3)",
                params![version as i64, to_json(env), ms(at)],
            )?;
            Ok(())
        })
    }

    fn create_operator_token(&self, token_hash: &str, t: &OperatorTokenRecord) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO operator_tokens (id, token_hash, name, role, created_at, created_by, revoked) VALUES (?1,?2,?3,?4,?5,?6,0)",
                params![t.id, token_hash, t.name, t.role.as_str(), ms(t.created_at), t.created_by],
            )?;
            Ok(())
        })
    }

    fn operator_token_by_hash(&self, token_hash: &str) -> StoreResult<Option<OperatorTokenRecord>> {
        self.read(|c| {
            let row = c
                .query_row(
                    &format!("SELECT {OP_COLS} FROM operator_tokens WHERE token_hash = ?1"),
                    [token_hash],
                    op_record,
                )
                .optional()?;
            row.map(op_token).transpose()
        })
    }

    fn list_operator_tokens(&self) -> StoreResult<Vec<OperatorTokenRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {OP_COLS} FROM operator_tokens ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([], op_record)?;
            collect(rows, op_token)
        })
    }

    fn revoke_operator_token(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute("UPDATE operator_tokens SET revoked = 1 WHERE id = ?1", [id])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no operator token {id}")));
            }
            Ok(())
        })
    }

    fn create_enrollment_token(
        &self,
        token_hash: &str,
        t: &EnrollmentTokenRecord,
    ) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO enrollment_tokens (id, token_hash, labels, site_id, expires_at, uses_total, uses_left, revoked, created_at, created_by) VALUES (?1,?2,?3,?4,?5,?6,?7,0,?8,?9)",
                params![t.id, token_hash, to_json(&t.labels), t.site_id, ms(t.expires_at), t.uses_total, t.uses_left, ms(t.created_at), t.created_by],
            )?;
            Ok(())
        })
    }

    fn list_enrollment_tokens(&self) -> StoreResult<Vec<EnrollmentTokenRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ENROLL_COLS} FROM enrollment_tokens ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([], enroll_token)?;
            collect(rows, enroll_record)
        })
    }

    fn revoke_enrollment_token(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?1",
                [id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no enrollment token {id}")));
            }
            Ok(())
        })
    }

    fn enrollment_token_by_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<EnrollmentTokenRecord>> {
        self.read(|c| {
            let row = c
                .query_row(
                    &format!("SELECT {ENROLL_COLS} FROM enrollment_tokens WHERE token_hash = ?1"),
                    [token_hash],
                    enroll_token,
                )
                .optional()?;
            row.map(enroll_record).transpose()
        })
    }

    fn enroll(&self, e: &Enrollment) -> StoreResult<SiteRecord> {
        self.write(|tx| {
            let token = tx
                .query_row(&format!("SELECT {ENROLL_COLS} FROM enrollment_tokens WHERE token_hash = ?1"), [&e.token_hash], enroll_token)
                .optional()?
                .map(enroll_record)
                .transpose()?
                .ok_or_else(|| StoreError::NotFound("enrollment token is not known".into()))?;
            if token.revoked {
                return Err(StoreError::Conflict("enrollment token was revoked".into()));
            }
            if token.expires_at <= e.at {
                return Err(StoreError::Conflict(format!("enrollment token expired at {}", token.expires_at)));
            }
            if token.uses_left == 0 {
                return Err(StoreError::Conflict("enrollment token is used up".into()));
            }
            tx.execute("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = ?1", [&token.id])?;
            match get_site(tx, &e.site_id)? {
                Some(site) if site.state == SiteState::Decommissioned => Err(StoreError::Conflict(format!(
                    "site {} is decommissioned; an operator must re-enable it first",
                    e.site_id
                ))),
                Some(site)
                    if token.site_id.as_deref() != Some(e.site_id.as_str())
                        || token.created_at < site.enrolled_at =>
                {
                    Err(StoreError::SiteExists(e.site_id.clone()))
                }
                Some(mut site) => {
                    site.labels.extend(token.labels.clone());
                    tx.execute(
                        "UPDATE sites SET device_key = ?2, labels = ?3, agent_version = ?4, enrolled_at = ?5 WHERE id = ?1",
                        params![e.site_id, e.device_key, to_json(&site.labels), e.agent_version, ms(e.at)],
                    )?;
                    get_site(tx, &e.site_id)?.ok_or_else(|| StoreError::Corrupt("site vanished".into()))
                }
                None => {
                    tx.execute(
                        "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at) VALUES (?1,?2,?3,'active',?4,?5)",
                        params![e.site_id, e.device_key, to_json(&token.labels), e.agent_version, ms(e.at)],
                    )?;
                    get_site(tx, &e.site_id)?.ok_or_else(|| StoreError::Corrupt("site vanished".into()))
                }
            }
        })
    }

    fn record_session_nonce(
        &self,
        site_id: &str,
        nonce: &str,
        expires_at: Timestamp,
    ) -> StoreResult<bool> {
        self.write(|tx| {
            tx.execute("DELETE FROM session_nonces WHERE site_id = ?1 AND expires_at < ?2", params![site_id, ms(Timestamp::now())])?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO session_nonces (site_id, nonce, expires_at) VALUES (?1, ?2, ?3)",
                params![site_id, nonce, ms(expires_at)],
            )?;
            Ok(n == 1)
        })
    }

    fn site(&self, id: &str) -> StoreResult<Option<SiteRecord>> {
        self.read(|c| get_site(c, id))
    }

    fn list_sites(&self, f: &SiteFilter) -> StoreResult<Vec<SiteRecord>> {
        self.read(|c| {
            let mut sql = format!("SELECT {SITE_COLS} FROM sites WHERE id > ?1");
            let mut args: Vec<String> = vec![f.after.clone().unwrap_or_default()];
            if let Some(state) = f.state {
                args.push(state.as_str().to_string());
                sql.push_str(&format!(" AND state = ?{}", args.len()));
            }
            for (k, v) in &f.labels {
                args.push(format!("$.\"{}\"", k.replace('"', "")));
                let kp = args.len();
                args.push(v.clone());
                sql.push_str(&format!(" AND json_extract(labels, ?{kp}) = ?{}", args.len()));
            }
            if let Some(version) = &f.version {
                args.push(version.clone());
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM json_each(sites.installed) WHERE json_extract(value, '$.version') = ?{})",
                    args.len()
                ));
            }
            sql.push_str(&format!(" ORDER BY id LIMIT {}", f.limit.max(1)));
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args.iter()), site_row)?;
            collect(rows, site_record)
        })
    }

    fn set_site_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE sites SET labels = ?2 WHERE id = ?1",
                params![id, to_json(labels)],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no site {id}")));
            }
            Ok(())
        })
    }

    fn set_site_state(&self, id: &str, state: SiteState) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE sites SET state = ?2 WHERE id = ?1",
                params![id, state.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no site {id}")));
            }
            Ok(())
        })
    }

    fn touch_sites(&self, seen: &[(String, Timestamp)]) -> StoreResult<()> {
        if seen.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "UPDATE sites SET last_seen = MAX(COALESCE(last_seen, 0), ?2) WHERE id = ?1",
            )?;
            for (id, at) in seen {
                st.execute(params![id, ms(*at)])?;
            }
            Ok(())
        })
    }

    fn count_sites_by_state(&self) -> StoreResult<Vec<(SiteState, u64)>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT state, COUNT(*) FROM sites GROUP BY state")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            collect(rows, |(s, n)| {
                Ok((
                    SiteState::parse(&s)
                        .ok_or_else(|| StoreError::Corrupt(format!("site state {s}")))?,
                    n as u64,
                ))
            })
        })
    }

    fn count_sites_rollback_failed(&self) -> StoreResult<u64> {
        // Only rows in `rollback_failed` are candidates (few); a newer phase of the same
        // site in another rollout means it moved on.
        self.read(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(DISTINCT rs.site_id) FROM rollout_sites rs WHERE rs.phase = 'rollback_failed'
                   AND NOT EXISTS (SELECT 1 FROM rollout_sites later
                                   WHERE later.site_id = rs.site_id AND later.phase_at > rs.phase_at)",
                [],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
    }

    fn publish_release(&self, r: &ReleaseRecord) -> StoreResult<()> {
        self.write(|tx| {
            if tx.query_row("SELECT 1 FROM releases WHERE id = ?1", [&r.id], |_| Ok(())).optional()?.is_some() {
                return Err(StoreError::Conflict(format!("release {} is already published", r.id)));
            }
            let highest: Option<i64> = tx.query_row("SELECT MAX(counter) FROM releases WHERE name = ?1", [&r.name], |row| row.get(0))?;
            if let Some(h) = highest
                && r.counter as i64 <= h
            {
                return Err(StoreError::Conflict(format!(
                    "release {} has counter {}, but stream {:?} already has counter {h}: counters must go up",
                    r.id, r.counter, r.name
                )));
            }
            tx.execute(
                &format!("INSERT INTO releases ({RELEASE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
                params![r.id, r.digest, r.name, r.version, r.kind, r.counter as i64, to_json(&r.envelope), ms(r.published_at), r.published_by],
            )?;
            Ok(())
        })
    }

    fn release(&self, id: &str) -> StoreResult<Option<ReleaseRecord>> {
        self.read(|c| {
            let row = c
                .query_row(
                    &format!("SELECT {RELEASE_COLS} FROM releases WHERE id = ?1"),
                    [id],
                    release_row,
                )
                .optional()?;
            row.map(release_record).transpose()
        })
    }

    fn list_releases(&self) -> StoreResult<Vec<ReleaseRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RELEASE_COLS} FROM releases ORDER BY published_at, id"
            ))?;
            let rows = st.query_map([], release_row)?;
            collect(rows, release_record)
        })
    }

    fn add_artifact(&self, a: &ArtifactRecord) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO artifacts (sha256, length, uploaded_at, uploaded_by) VALUES (?1,?2,?3,?4)",
                params![a.sha256, a.length as i64, ms(a.uploaded_at), a.uploaded_by],
            )?;
            Ok(())
        })
    }

    fn artifact(&self, sha256: &str) -> StoreResult<Option<ArtifactRecord>> {
        self.read(|c| {
            let row = c
                .query_row("SELECT sha256, length, uploaded_at, uploaded_by FROM artifacts WHERE sha256 = ?1", [sha256], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
                })
                .optional()?;
            row.map(|(sha256, length, at, by)| {
                Ok(ArtifactRecord { sha256, length: length as u64, uploaded_at: from_millis(at)?, uploaded_by: by })
            })
            .transpose()
        })
    }

    fn create_rollout(&self, ro: &RolloutRecord, members: &[RolloutSiteRecord]) -> StoreResult<()> {
        self.write(|tx| {
            if tx.query_row("SELECT 1 FROM rollouts WHERE id = ?1", [&ro.id], |_| Ok(())).optional()?.is_some() {
                return Err(StoreError::Conflict(format!("rollout {} already exists", ro.id)));
            }
            let mut busy = Vec::new();
            {
                let mut st = tx.prepare_cached("SELECT rollout_id FROM rollout_sites WHERE site_id = ?1 AND active = 1")?;
                for m in members {
                    if let Some(other) = st.query_row([&m.site_id], |r| r.get::<_, String>(0)).optional()? {
                        busy.push(format!("{} (in {other})", m.site_id));
                    }
                }
            }
            if !busy.is_empty() {
                let more = if busy.len() > 10 { format!(" and {} more", busy.len() - 10) } else { String::new() };
                busy.truncate(10);
                return Err(StoreError::Conflict(format!(
                    "sites already belong to an active rollout (one active rollout per site): {}{more}",
                    busy.join(", ")
                )));
            }
            tx.execute(
                &format!("INSERT INTO rollouts ({ROLLOUT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"),
                params![ro.id, ro.release_id, ro.plan_source, ro.plan_format, ro.status.as_str(), ro.status_reason, to_json(&ro.waves), ms(ro.created_at), ro.created_by, ms(ro.updated_at)],
            )?;
            insert_members(tx, members)?;
            Ok(())
        })
    }

    fn rollout(&self, id: &str) -> StoreResult<Option<RolloutRecord>> {
        self.read(|c| {
            let row = c
                .query_row(
                    &format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = ?1"),
                    [id],
                    rollout_row,
                )
                .optional()?;
            row.map(rollout_record).transpose()
        })
    }

    fn list_rollouts(&self) -> StoreResult<Vec<RolloutRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ROLLOUT_COLS} FROM rollouts ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([], rollout_row)?;
            collect(rows, rollout_record)
        })
    }

    fn update_rollout(&self, ro: &RolloutRecord, decisions: &[DecisionRecord]) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE rollouts SET status = ?2, status_reason = ?3, waves = ?4, updated_at = ?5 WHERE id = ?1",
                params![ro.id, ro.status.as_str(), ro.status_reason, to_json(&ro.waves), ms(ro.updated_at)],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no rollout {}", ro.id)));
            }
            if !ro.status.is_active() {
                tx.execute("UPDATE rollout_sites SET active = 0 WHERE rollout_id = ?1", [&ro.id])?;
                tx.execute("DELETE FROM leases WHERE rollout_id = ?1", [&ro.id])?;
            }
            insert_decisions(tx, decisions)
        })
    }

    fn rollout_sites(&self, rollout_id: &str) -> StoreResult<Vec<RolloutSiteRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {RS_COLS} FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id WHERE rs.rollout_id = ?1 ORDER BY rs.site_id"))?;
            let rows = st.query_map([rollout_id], rs_record)?;
            collect(rows, Ok)
        })
    }

    fn rollout_site(
        &self,
        rollout_id: &str,
        site_id: &str,
    ) -> StoreResult<Option<RolloutSiteRecord>> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!("SELECT {RS_COLS} FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id WHERE rs.rollout_id = ?1 AND rs.site_id = ?2"))?;
            Ok(st.query_row([rollout_id, site_id], rs_record).optional()?)
        })
    }

    fn add_rollout_sites(&self, members: &[RolloutSiteRecord]) -> StoreResult<Vec<String>> {
        self.write(|tx| {
            let mut free = Vec::new();
            {
                let mut st = tx.prepare_cached("SELECT 1 FROM rollout_sites WHERE site_id = ?1 AND (active = 1 OR rollout_id = ?2)")?;
                for m in members {
                    if st.query_row(params![m.site_id, m.rollout_id], |_| Ok(())).optional()?.is_none() {
                        free.push(m.clone());
                    }
                }
            }
            insert_members(tx, &free)?;
            Ok(free.into_iter().map(|m| m.site_id).collect())
        })
    }

    fn set_rollout_site_skipped(&self, rollout_id: &str, site_id: &str) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE rollout_sites SET skipped = 1 WHERE rollout_id = ?1 AND site_id = ?2",
                params![rollout_id, site_id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "site {site_id} is not part of rollout {rollout_id}"
                )));
            }
            tx.execute(
                "DELETE FROM leases WHERE rollout_id = ?1 AND site_id = ?2",
                params![rollout_id, site_id],
            )?;
            Ok(())
        })
    }

    fn set_rollout_site_waves(
        &self,
        rollout_id: &str,
        moves: &[(String, u32)],
    ) -> StoreResult<Vec<String>> {
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "UPDATE rollout_sites SET wave = ?3 WHERE rollout_id = ?1 AND site_id = ?2 \
                 AND assigned_at IS NULL AND leased_at IS NULL",
            )?;
            let mut moved = Vec::new();
            for (site_id, wave) in moves {
                if st.execute(params![rollout_id, site_id, wave])? > 0 {
                    moved.push(site_id.clone());
                }
            }
            Ok(moved)
        })
    }

    fn active_rollout_of_site(&self, site_id: &str) -> StoreResult<Option<String>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT rollout_id FROM rollout_sites WHERE site_id = ?1 AND active = 1",
                [site_id],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn issue_assignments(
        &self,
        drafts: &[AssignmentDraft],
        sign: &(dyn Fn(&AssignmentDraft, u64) -> Envelope + Sync),
    ) -> StoreResult<Vec<AssignmentRecord>> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let mut out = Vec::with_capacity(drafts.len());
            // Prepared once per batch: a wave may issue thousands of assignments.
            let mut next_sequence = tx.prepare_cached(
                "UPDATE sites SET last_sequence = last_sequence + 1 WHERE id = ?1 RETURNING last_sequence",
            )?;
            let insert_sql =
                format!("INSERT INTO assignments ({ASSIGN_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)");
            let mut insert = tx.prepare_cached(&insert_sql)?;
            let mut mark_rollback = tx.prepare_cached(
                "UPDATE rollout_sites SET rollback_sequence = ?3 WHERE rollout_id = ?1 AND site_id = ?2",
            )?;
            let mut mark_assigned = tx.prepare_cached(
                "UPDATE rollout_sites SET assigned_at = COALESCE(assigned_at, ?3) WHERE rollout_id = ?1 AND site_id = ?2",
            )?;
            for d in drafts {
                let sequence: i64 = next_sequence
                    .query_row([&d.site_id], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| StoreError::NotFound(format!("no site {}", d.site_id)))?;
                let env = sign(d, sequence as u64);
                insert.execute(
                    params![d.site_id, sequence, d.rollout_id, d.wave, d.release_id, d.release_digest, d.rollback, to_json(&env), ms(d.issued_at), ms(d.expires)],
                )?;
                if d.rollback {
                    mark_rollback.execute(params![d.rollout_id, d.site_id, sequence])?;
                } else {
                    mark_assigned.execute(params![d.rollout_id, d.site_id, ms(d.issued_at)])?;
                }
                out.push(AssignmentRecord {
                    site_id: d.site_id.clone(),
                    sequence: sequence as u64,
                    rollout_id: d.rollout_id.clone(),
                    wave: d.wave,
                    release_id: d.release_id.clone(),
                    release_digest: d.release_digest.clone(),
                    rollback: d.rollback,
                    envelope: env,
                    issued_at: d.issued_at,
                    expires: d.expires,
                });
            }
            Ok(out)
        })
    }

    fn current_assignments(&self) -> StoreResult<Vec<AssignmentRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ASSIGN_COLS} FROM assignments a WHERE sequence = (SELECT MAX(sequence) FROM assignments b WHERE b.site_id = a.site_id)"
            ))?;
            let rows = st.query_map([], assign_row)?;
            collect(rows, assign_record)
        })
    }

    fn active_leases(&self, rollout_id: &str, now: Timestamp) -> StoreResult<Vec<LeaseRecord>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, site_id, rollout_id, wave, granted_at, expires_at FROM leases WHERE rollout_id = ?1 AND expires_at > ?2")?;
            let rows = st.query_map(params![rollout_id, ms(now)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, u32>(3)?, r.get::<_, i64>(4)?, r.get::<_, i64>(5)?))
            })?;
            collect(rows, |(id, site_id, rollout_id, wave, g, e)| {
                Ok(LeaseRecord { id, site_id, rollout_id, wave, granted_at: from_millis(g)?, expires_at: from_millis(e)? })
            })
        })
    }

    fn grant_leases(&self, leases: &[LeaseRecord]) -> StoreResult<Vec<StoreResult<()>>> {
        self.write(|tx| {
            let mut out = Vec::with_capacity(leases.len());
            for l in leases {
                // Each lease under its own savepoint: a failing one is undone alone.
                tx.execute_batch("SAVEPOINT lease_grant")?;
                match grant_lease(tx, l) {
                    Ok(()) => {
                        tx.execute_batch("RELEASE lease_grant")?;
                        out.push(Ok(()));
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO lease_grant; RELEASE lease_grant")?;
                        out.push(Err(e));
                    }
                }
            }
            Ok(out)
        })
    }

    fn compartment_counts(
        &self,
        rollout_id: &str,
        label: &str,
        value: &str,
        except_site: &str,
        now: Timestamp,
    ) -> StoreResult<(u32, u32)> {
        self.read(|c| {
            // Sites without the label share the value "": counted as all minus labelled.
            let sites: i64 = if value.is_empty() {
                let all: i64 = c
                    .prepare_cached("SELECT COUNT(*) FROM rollout_sites WHERE rollout_id = ?1")?
                    .query_row([rollout_id], |r| r.get(0))?;
                let labelled: i64 = c
                    .prepare_cached(
                        "SELECT COUNT(*) FROM site_labels sl JOIN rollout_sites rs \
                         ON rs.rollout_id = ?1 AND rs.site_id = sl.site_id \
                         WHERE sl.key = ?2 AND sl.value <> ''",
                    )?
                    .query_row(params![rollout_id, label], |r| r.get(0))?;
                all - labelled
            } else {
                c.prepare_cached(
                    "SELECT COUNT(*) FROM site_labels sl JOIN rollout_sites rs \
                     ON rs.rollout_id = ?1 AND rs.site_id = sl.site_id \
                     WHERE sl.key = ?2 AND sl.value = ?3",
                )?
                .query_row(params![rollout_id, label, value], |r| r.get(0))?
            };
            let active: i64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM leases l \
                     LEFT JOIN site_labels sl ON sl.site_id = l.site_id AND sl.key = ?2 \
                     WHERE l.rollout_id = ?1 AND l.expires_at > ?4 AND l.site_id <> ?5 \
                     AND COALESCE(sl.value, '') = ?3",
                )?
                .query_row(
                    params![rollout_id, label, value, ms(now), except_site],
                    |r| r.get(0),
                )?;
            Ok((sites.max(0) as u32, active.max(0) as u32))
        })
    }

    fn apply_report_group(
        &self,
        batches: &[ReportInput],
    ) -> StoreResult<Vec<StoreResult<ReportOutcome>>> {
        self.write(|tx| {
            let mut out = Vec::with_capacity(batches.len());
            for b in batches {
                // Each batch under its own savepoint: a failing one is undone alone.
                tx.execute_batch("SAVEPOINT report_batch")?;
                match apply_batch(tx, &b.site_id, &b.events, b.received_at) {
                    Ok(outcome) => {
                        tx.execute_batch("RELEASE report_batch")?;
                        out.push(Ok(outcome));
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO report_batch; RELEASE report_batch")?;
                        out.push(Err(e));
                    }
                }
            }
            Ok(out)
        })
    }

    fn add_decisions(&self, decisions: &[DecisionRecord]) -> StoreResult<()> {
        if decisions.is_empty() {
            return Ok(());
        }
        self.write(|tx| insert_decisions(tx, decisions))
    }

    fn prune_reports(
        &self,
        kind: ReportKind,
        before: Timestamp,
        limit: usize,
    ) -> StoreResult<usize> {
        self.write(|tx| {
            let n = tx.prepare_cached(PRUNE_REPORTS_SQL)?.execute(params![
                kind.as_str(),
                ms(before),
                limit as i64
            ])?;
            Ok(n)
        })
    }

    fn decisions(&self, rollout_id: &str) -> StoreResult<Vec<DecisionRecord>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, rollout_id, at, kind, wave, reason FROM decisions WHERE rollout_id = ?1 ORDER BY id")?;
            let rows = st.query_map([rollout_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?, r.get::<_, Option<u32>>(4)?, r.get::<_, String>(5)?))
            })?;
            collect(rows, |(id, rollout_id, at, kind, wave, reason)| {
                Ok(DecisionRecord { id, rollout_id, at: from_millis(at)?, kind, wave, reason })
            })
        })
    }

    fn audit(&self, a: &AuditRecord) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO audit_log (at, actor, action, target, detail, remote) VALUES (?1,?2,?3,?4,?5,?6)",
                params![ms(a.at), a.actor, a.action, a.target, a.detail, a.remote],
            )?;
            Ok(())
        })
    }

    fn list_audit(&self, before: Option<i64>, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, at, actor, action, target, detail, remote FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT ?2")?;
            let rows = st.query_map(params![before.unwrap_or(i64::MAX), limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?, r.get::<_, String>(6)?))
            })?;
            collect(rows, |(id, at, actor, action, target, detail, remote)| {
                Ok(AuditRecord { id, at: from_millis(at)?, actor, action, target, detail, remote })
            })
        })
    }
}

pub(super) fn insert_decisions(
    tx: &rusqlite::Transaction,
    decisions: &[DecisionRecord],
) -> StoreResult<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO decisions (rollout_id, at, kind, wave, reason) VALUES (?1,?2,?3,?4,?5)",
    )?;
    for d in decisions {
        st.execute(params![d.rollout_id, ms(d.at), d.kind, d.wave, d.reason])?;
    }
    Ok(())
}

pub(super) fn insert_members(
    tx: &rusqlite::Transaction,
    members: &[RolloutSiteRecord],
) -> StoreResult<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO rollout_sites (rollout_id, site_id, wave, active, skipped, previous_release_id) VALUES (?1,?2,?3,1,0,?4)",
    )?;
    for m in members {
        st.execute(params![
            m.rollout_id,
            m.site_id,
            m.wave,
            m.previous_release_id
        ])?;
    }
    Ok(())
}

/// Stores one lease, replacing the site's earlier lease for the same rollout.
pub(super) fn grant_lease(tx: &rusqlite::Transaction, l: &LeaseRecord) -> StoreResult<()> {
    tx.prepare_cached("DELETE FROM leases WHERE rollout_id = ?1 AND site_id = ?2")?
        .execute(params![l.rollout_id, l.site_id])?;
    tx.prepare_cached(
        "INSERT INTO leases (id, site_id, rollout_id, wave, granted_at, expires_at) VALUES (?1,?2,?3,?4,?5,?6)",
    )?
    .execute(params![l.id, l.site_id, l.rollout_id, l.wave, ms(l.granted_at), ms(l.expires_at)])?;
    tx.prepare_cached(
        "UPDATE rollout_sites SET leased_at = MAX(COALESCE(leased_at, 0), ?3) WHERE rollout_id = ?1 AND site_id = ?2",
    )?
    .execute(params![l.rollout_id, l.site_id, ms(l.granted_at)])?;
    Ok(())
}
