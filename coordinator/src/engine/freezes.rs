//! Fleet freezes: the configuration file's (read at start, read-only) and those created
//! through the API (stored). The lease decision reads their union from memory
//! ([`Engine::effective_freezes`]), updated as soon as a stored freeze is created or
//! ended: no restart.

use std::sync::Arc;

use fleetwave_shared::protocol::operator::{FreezeInfo, FreezeSource};
use fleetwave_shared::window::Freeze;
use jiff::{SignedDuration, Timestamp};

use super::{Engine, EngineError};
use crate::config::freeze_problem;
use crate::store::FreezeRecord;

/// The id prefix of the configuration file's freezes (`config-0` is the first).
pub const CONFIG_PREFIX: &str = "config-";
/// The longest a reason may be, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// How far ahead a freeze may start: ten years.
pub const MAX_START_AHEAD_DAYS: i64 = 3653;

/// The stored freezes still in force or to come, as the engine keeps them.
pub struct Freezes {
    /// Not ended early, in the order of their start.
    stored: Vec<FreezeRecord>,
    /// The configuration's freezes followed by the stored ones: what leases read.
    effective: Arc<Vec<Freeze>>,
}

impl Freezes {
    /// Nothing stored yet: the configuration's freezes alone.
    pub fn new(config: Arc<Vec<Freeze>>) -> Freezes {
        Freezes {
            stored: Vec::new(),
            effective: config,
        }
    }
}

fn config_info(i: usize, f: &Freeze, now: Timestamp) -> FreezeInfo {
    FreezeInfo {
        id: format!("{CONFIG_PREFIX}{i}"),
        start: f.start,
        end: f.end,
        reason: f.reason.clone(),
        source: FreezeSource::Config,
        active: f.contains(now),
        created_by: None,
        created_at: None,
        ended_at: None,
        ended_by: None,
    }
}

pub fn stored_info(f: &FreezeRecord, now: Timestamp) -> FreezeInfo {
    FreezeInfo {
        id: f.id.clone(),
        start: f.start,
        end: f.end,
        reason: f.reason.clone(),
        source: FreezeSource::Api,
        active: f.ended_at.is_none() && f.start <= now && now < f.end,
        created_by: Some(f.created_by.clone()),
        created_at: Some(f.created_at),
        ended_at: f.ended_at,
        ended_by: f.ended_by.clone(),
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::InvalidFreeze {
        field,
        message: message.into(),
    }
}

impl Engine {
    /// The freezes a lease decision reads: the configuration's and the stored ones.
    pub fn effective_freezes(&self) -> Arc<Vec<Freeze>> {
        self.freezes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .effective
            .clone()
    }

    fn set_stored_freezes(&self, mut stored: Vec<FreezeRecord>) {
        stored.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        let mut effective = self.settings.freezes.clone();
        effective.extend(stored.iter().map(|f| Freeze {
            start: f.start,
            end: f.end,
            reason: f.reason.clone(),
        }));
        *self.freezes.write().unwrap_or_else(|e| e.into_inner()) = Freezes {
            stored,
            effective: Arc::new(effective),
        };
    }

    fn stored_freezes(&self) -> Vec<FreezeRecord> {
        self.freezes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .stored
            .clone()
    }

    /// Reads the stored freezes still in force or to come (at start).
    pub async fn load_freezes(&self) -> Result<(), EngineError> {
        let _guard = self.freeze_lock.lock().await;
        let now = self.clock.now();
        let stored = self.db.run(move |s| s.open_freezes(now)).await?;
        self.set_stored_freezes(stored);
        Ok(())
    }

    /// The freezes in force now and those to come (the configuration's too), earliest
    /// start first.
    pub fn list_freezes(&self) -> Vec<FreezeInfo> {
        let now = self.clock.now();
        let mut out: Vec<FreezeInfo> = self
            .settings
            .freezes
            .iter()
            .enumerate()
            .filter(|(_, f)| f.end > now)
            .map(|(i, f)| config_info(i, f, now))
            .collect();
        out.extend(
            self.stored_freezes()
                .iter()
                .filter(|f| f.end > now)
                .map(|f| stored_info(f, now)),
        );
        out.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        out
    }

    /// Creates a freeze (from now when `start` is None), in force for the next lease
    /// decision once stored.
    pub async fn create_freeze(
        &self,
        start: Option<Timestamp>,
        end: Timestamp,
        reason: &str,
        actor: &str,
    ) -> Result<FreezeRecord, EngineError> {
        let now = self.clock.now();
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(invalid(
                "reason",
                "must not be empty: say why installs stop",
            ));
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(invalid(
                "reason",
                format!("must be at most {MAX_REASON_CHARS} characters"),
            ));
        }
        let start = start.unwrap_or(now);
        if start.duration_since(now) > SignedDuration::from_hours(24 * MAX_START_AHEAD_DAYS) {
            return Err(invalid(
                "start",
                format!("must be at most {MAX_START_AHEAD_DAYS} days from now"),
            ));
        }
        if let Some(problem) = freeze_problem(start, end) {
            return Err(invalid("end", problem));
        }
        if end <= now {
            return Err(invalid(
                "end",
                format!("must be in the future (it is {now} now)"),
            ));
        }
        let record = FreezeRecord {
            id: format!("frz-{}", crate::ids::random_hex(6)),
            start,
            end,
            reason: reason.to_string(),
            created_by: actor.to_string(),
            created_at: now,
            ended_at: None,
            ended_by: None,
        };
        let _guard = self.freeze_lock.lock().await;
        let r = record.clone();
        self.db.run(move |s| s.create_freeze(&r)).await?;
        let mut stored = self.stored_freezes();
        // Freezes that ended by themselves no longer count: drop them here.
        stored.retain(|f| f.end > now);
        stored.push(record.clone());
        self.set_stored_freezes(stored);
        Ok(record)
    }

    /// Ends a stored freeze now; the configuration's cannot be ended here.
    pub async fn end_freeze(&self, id: &str, actor: &str) -> Result<FreezeRecord, EngineError> {
        if let Some(i) = id
            .strip_prefix(CONFIG_PREFIX)
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.settings.freezes.len())
        {
            return Err(EngineError::FreezeFromConfig(format!("{CONFIG_PREFIX}{i}")));
        }
        let _guard = self.freeze_lock.lock().await;
        let now = self.clock.now();
        let (i, who) = (id.to_string(), actor.to_string());
        let ended = self
            .db
            .run(move |s| s.end_freeze(&i, now, &who))
            .await
            .map_err(|e| match e {
                crate::store::StoreError::NotFound(_) => {
                    EngineError::FreezeNotFound(id.to_string())
                }
                other => other.into(),
            })?;
        let stored = self
            .stored_freezes()
            .into_iter()
            .filter(|f| f.id != id && f.end > now)
            .collect();
        self.set_stored_freezes(stored);
        // Leases refused during the freeze are asked for again on their own.
        self.wake_controller();
        Ok(ended)
    }
}
