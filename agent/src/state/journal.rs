//! The install journal: which install is running and which step it reached.
//!
//! Every executor step is written here as `started` before it runs and `done` after it
//! returned, each write committed with `synchronous=FULL`. After a crash or power cut the
//! open entry and [`recovery`] say whether to resume, verify again, finish a commit or roll
//! back. [`recovery`] is pure; the rest only stores. Nothing here runs a step.

use fleetwave_shared::Envelope;
use jiff::Timestamp;
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use super::{StateError, Store, envelope, envelope_text, ts};

/// The steps of an install, in order. `Rollback` can follow any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// A lease was granted; nothing on the box has changed.
    Leased,
    /// Download, verify and unpack the artifacts into a new directory (nothing switched).
    Prepare,
    /// Switch to the new version and restart it.
    Install,
    /// Watch health for the verify period.
    Verify,
    /// Record the new version as committed; keep the previous one for rollback.
    Commit,
    /// Switch back to the previous version and restart it.
    Rollback,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Leased,
        Step::Prepare,
        Step::Install,
        Step::Verify,
        Step::Commit,
        Step::Rollback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Leased => "leased",
            Step::Prepare => "prepare",
            Step::Install => "install",
            Step::Verify => "verify",
            Step::Commit => "commit",
            Step::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.as_str() == s)
    }
}

/// Whether the step recorded last had started or finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Started,
    Done,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Started => "started",
            StepState::Done => "done",
        }
    }
}

/// How an install ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Committed,
    RolledBack,
    /// Ended before anything on the box changed (e.g. the assignment expired meanwhile).
    Abandoned,
    /// The rollback failed `install.rollback_attempts` times: the agent gave up; the box
    /// needs an operator.
    RollbackFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Abandoned => "abandoned",
            Outcome::RollbackFailed => "rollback_failed",
        }
    }
}

/// One install, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub id: i64,
    pub rollout_id: String,
    pub sequence: u64,
    pub release_id: String,
    pub stream: String,
    pub assignment: Envelope,
    pub release: Envelope,
    pub lease_id: Option<String>,
    pub step: Step,
    pub state: StepState,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

/// What to do with an install found open at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing was switched yet: run the install again from `prepare` (which resumes its
    /// download and skips verified work).
    Resume,
    /// Nothing was switched and the assignment can no longer be acted on: close the entry.
    Abandon,
    /// The switch may be half done and the assignment is still current: run `install`
    /// again (idempotent: it switches and restarts), then verify.
    Reinstall,
    /// The new version may be (partly) in place but may not be finished: switch back to
    /// the previous release.
    RollBack,
    /// The new version is in place: watch health for a full verify period again, then
    /// commit or roll back.
    Reverify,
    /// Health was verified: finish the commit (idempotent).
    FinishCommit,
    /// A rollback was under way: finish it (idempotent).
    FinishRollback,
}

/// The recovery decision for an open journal entry. `assignment_current` is whether the
/// assignment is still verified and unexpired at the trusted time and may be acted on
/// (policy included): an expired assignment is never acted on, so unfinished work on it is
/// rolled back or abandoned instead of finished.
pub fn recovery(step: Step, state: StepState, assignment_current: bool) -> Recovery {
    match (step, state) {
        (Step::Leased, _) | (Step::Prepare, _) => {
            if assignment_current {
                Recovery::Resume
            } else {
                Recovery::Abandon
            }
        }
        (Step::Install, StepState::Started) => {
            if assignment_current {
                Recovery::Reinstall
            } else {
                Recovery::RollBack
            }
        }
        (Step::Install, StepState::Done) | (Step::Verify, StepState::Started) => {
            if assignment_current {
                Recovery::Reverify
            } else {
                Recovery::RollBack
            }
        }
        // Verified healthy for the whole period: committing finishes what was decided.
        (Step::Verify, StepState::Done) | (Step::Commit, _) => Recovery::FinishCommit,
        (Step::Rollback, _) => Recovery::FinishRollback,
    }
}

/// What a new journal entry is about.
pub struct NewInstall<'a> {
    pub rollout_id: &'a str,
    pub sequence: u64,
    pub release_id: &'a str,
    pub stream: &'a str,
    pub assignment: &'a Envelope,
    pub release: &'a Envelope,
    pub lease_id: Option<&'a str>,
}

const COLUMNS: &str = "id, rollout_id, sequence, release_id, stream, assignment, release, \
     lease_id, step, status, started_at, updated_at, finished_at, outcome, detail";

type Row = (
    i64,
    String,
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
        r.get(14)?,
    ))
}

fn entry(row: Row) -> Result<JournalEntry, StateError> {
    let corrupt = |message: String| StateError::Corrupt {
        what: "journal step",
        message,
    };
    Ok(JournalEntry {
        id: row.0,
        rollout_id: row.1,
        sequence: row.2 as u64,
        release_id: row.3,
        stream: row.4,
        assignment: envelope(&row.5, "journal assignment")?,
        release: envelope(&row.6, "journal release")?,
        lease_id: row.7,
        step: Step::parse(&row.8).ok_or_else(|| corrupt(row.8.clone()))?,
        state: match row.9.as_str() {
            "started" => StepState::Started,
            "done" => StepState::Done,
            other => return Err(corrupt(other.to_string())),
        },
        started_at: ts(row.10, "journal started_at")?,
        updated_at: ts(row.11, "journal updated_at")?,
        finished_at: row.12.map(|t| ts(t, "journal finished_at")).transpose()?,
        outcome: row.13,
        detail: row.14,
    })
}

impl Store {
    /// Opens a journal entry at step `leased` (done). At most one entry is open at a time:
    /// an open one must be finished first.
    pub fn journal_begin(&self, new: &NewInstall<'_>, at: Timestamp) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO journal (rollout_id, sequence, release_id, stream, assignment, release,
                 lease_id, step, status, started_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'leased', 'done', ?8, ?8)",
            params![
                new.rollout_id,
                new.sequence as i64,
                new.release_id,
                new.stream,
                envelope_text(new.assignment),
                envelope_text(new.release),
                new.lease_id,
                at.to_string()
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Records that `step` started or finished.
    pub fn journal_step(
        &self,
        id: i64,
        step: Step,
        state: StepState,
        at: Timestamp,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE journal SET step = ?2, status = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, step.as_str(), state.as_str(), at.to_string()],
        )?;
        Ok(())
    }

    pub fn journal_set_lease(&self, id: i64, lease_id: &str) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE journal SET lease_id = ?2 WHERE id = ?1",
            params![id, lease_id],
        )?;
        Ok(())
    }

    /// Closes an entry with its outcome.
    pub fn journal_finish(
        &self,
        id: i64,
        outcome: Outcome,
        detail: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE journal SET finished_at = ?2, updated_at = ?2, outcome = ?3, detail = ?4
             WHERE id = ?1",
            params![id, at.to_string(), outcome.as_str(), detail],
        )?;
        Ok(())
    }

    /// The install that has not finished, if any.
    pub fn journal_open(&self) -> Result<Option<JournalEntry>, StateError> {
        let row = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM journal WHERE finished_at IS NULL
                     ORDER BY id DESC LIMIT 1"
                ),
                [],
                read_row,
            )
            .optional()?;
        row.map(entry).transpose()
    }

    /// The newest entries, newest first.
    pub fn journal_recent(&self, limit: usize) -> Result<Vec<JournalEntry>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM journal ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt
            .query_map([limit as i64], read_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(entry).collect()
    }

    /// The most recent finished install of `rollout_id` at `sequence`, if any: an
    /// assignment that was already worked on is not installed again.
    pub fn journal_finished_for(
        &self,
        rollout_id: &str,
        sequence: u64,
    ) -> Result<Option<JournalEntry>, StateError> {
        let row = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM journal WHERE rollout_id = ?1 AND sequence = ?2
                     AND finished_at IS NOT NULL ORDER BY id DESC LIMIT 1"
                ),
                params![rollout_id, sequence as i64],
                read_row,
            )
            .optional()?;
        row.map(entry).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_for_every_step() {
        use Recovery::*;
        use StepState::*;
        let table = [
            (Step::Leased, Done, true, Resume),
            (Step::Leased, Done, false, Abandon),
            (Step::Prepare, Started, true, Resume),
            (Step::Prepare, Started, false, Abandon),
            (Step::Prepare, Done, true, Resume),
            (Step::Prepare, Done, false, Abandon),
            (Step::Install, Started, true, Reinstall),
            (Step::Install, Started, false, RollBack),
            (Step::Install, Done, true, Reverify),
            (Step::Install, Done, false, RollBack),
            (Step::Verify, Started, true, Reverify),
            (Step::Verify, Started, false, RollBack),
            (Step::Verify, Done, true, FinishCommit),
            (Step::Verify, Done, false, FinishCommit),
            (Step::Commit, Started, true, FinishCommit),
            (Step::Commit, Started, false, FinishCommit),
            (Step::Rollback, Started, true, FinishRollback),
            (Step::Rollback, Started, false, FinishRollback),
        ];
        for (step, state, current, want) in table {
            assert_eq!(
                recovery(step, state, current),
                want,
                "{step:?} {state:?} {current}"
            );
        }
    }

    fn env(payload: &str) -> Envelope {
        Envelope {
            payload: payload.into(),
            payload_type: "t".into(),
            signatures: vec![],
        }
    }

    #[test]
    fn journal_records_steps_and_closes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert!(store.journal_open().unwrap().is_none());
        let (a, r) = (env("YQ=="), env("cg=="));
        let id = store
            .journal_begin(
                &NewInstall {
                    rollout_id: "r1",
                    sequence: 7,
                    release_id: "pos-2",
                    stream: "pos",
                    assignment: &a,
                    release: &r,
                    lease_id: Some("l1"),
                },
                at,
            )
            .unwrap();
        store
            .journal_step(id, Step::Install, StepState::Started, at)
            .unwrap();
        let open = store.journal_open().unwrap().unwrap();
        assert_eq!((open.step, open.state), (Step::Install, StepState::Started));
        assert_eq!(open.assignment, a);
        assert_eq!(open.sequence, 7);
        store
            .journal_finish(id, Outcome::RolledBack, Some("health"), at)
            .unwrap();
        assert!(store.journal_open().unwrap().is_none());
        let done = store.journal_finished_for("r1", 7).unwrap().unwrap();
        assert_eq!(done.outcome.as_deref(), Some("rolled_back"));
    }
}
