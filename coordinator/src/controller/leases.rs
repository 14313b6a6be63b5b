//! Leases: whether a site may start installing now.
//!
//! [`lease_decision`] checks, in order: the site's assignment (is it in an open wave, does
//! it act on the current assignment), the rollout's status, the site's deferral, fleet-wide
//! freezes, the plan's maintenance window in the site's own time zone, and the wave's and
//! the compartment's concurrency limits. A denial says why, in words, and when to ask
//! again. Pure: the counts of active leases and the time are arguments; this module never
//! touches the store or the clock.

use std::collections::BTreeMap;

use jiff::Timestamp;

use fleetwave_shared::protocol::LeaseDenied;
use fleetwave_shared::window::{Freeze, zone};

use super::RolloutStatus;
use crate::plan::{Compartment, RolloutPlan, TZ_LABEL};

/// The longest `retry_after_secs` a denial suggests: agents re-ask at least hourly.
pub const MAX_RETRY_AFTER_SECS: u32 = 3600;
/// Suggested wait when a concurrency limit is full.
pub const CONCURRENCY_RETRY_SECS: u32 = 30;
/// Suggested wait while the rollout is paused.
pub const PAUSED_RETRY_SECS: u32 = 60;
/// Suggested wait when the site's wave has not opened, or the rollout has stopped.
pub const NOT_OPEN_RETRY_SECS: u32 = 300;

/// Everything [`lease_decision`] needs to know, gathered by the server.
#[derive(Debug, Clone)]
pub struct LeaseContext<'a> {
    pub plan: &'a RolloutPlan,
    pub status: RolloutStatus,
    /// The highest wave opened so far (None: none yet).
    pub current_wave: Option<u32>,
    /// The wave the site belongs to (None: the rollout does not select it).
    pub site_wave: Option<u32>,
    pub site_labels: &'a BTreeMap<String, String>,
    /// Sequence of the site's current assignment in this rollout (None: none issued).
    pub assignment_sequence: Option<u64>,
    /// The sequence the agent asks a lease for.
    pub requested_sequence: u64,
    /// The site is deferred until then.
    pub deferred_until: Option<Timestamp>,
    /// Fleet-wide freezes from the coordinator's configuration.
    pub freezes: &'a [Freeze],
    /// The site already holds an unexpired lease for this rollout (a renewal): it is
    /// already counted, so concurrency limits do not apply to it again.
    pub holds_lease: bool,
    /// Unexpired leases held by other sites of the same wave.
    pub wave_active_leases: u32,
    /// Unexpired leases held by other sites of the rollout in the site's compartment
    /// (same value of the wave's compartment label, see [`compartment_of`]).
    pub compartment_active_leases: u32,
    /// Sites of the rollout in the site's compartment (for `max_percent`), the site
    /// included.
    pub compartment_sites: u32,
}

/// Why a lease was refused; `as_str` is the `reason` code agents receive.
pub use fleetwave_shared::protocol::LeaseDenialReason;

/// A refused lease: the reason code, a sentence, and when to ask again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease denied ({}): {message}; retry in {retry_after_secs}s", reason.as_str())]
pub struct LeaseDenial {
    pub reason: LeaseDenialReason,
    pub message: String,
    /// Seconds until asking again makes sense (1..=[`MAX_RETRY_AFTER_SECS`]).
    pub retry_after_secs: u32,
}

impl LeaseDenial {
    pub(crate) fn new(
        reason: LeaseDenialReason,
        message: String,
        retry_after_secs: u32,
    ) -> LeaseDenial {
        LeaseDenial {
            reason,
            message,
            retry_after_secs: retry_after_secs.clamp(1, MAX_RETRY_AFTER_SECS),
        }
    }

    /// The body agents receive (inside `error`, with `Retry-After`).
    pub fn to_protocol(&self) -> LeaseDenied {
        LeaseDenied {
            reason: self.reason,
            message: self.message.clone(),
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// The compartment a site falls in for a wave: the wave's compartment label and the
/// site's value of it (sites without the label share the value `""`). None: the wave has
/// no compartment limit.
pub fn compartment_of<'p>(
    plan: &'p RolloutPlan,
    wave: u32,
    labels: &BTreeMap<String, String>,
) -> Option<(&'p str, String)> {
    let c = plan.wave(wave)?.compartment.as_ref()?;
    Some((
        c.label.as_str(),
        labels.get(&c.label).cloned().unwrap_or_default(),
    ))
}

/// How many sites of a compartment with `sites` sites may hold a lease at once: `max`,
/// or `max_percent` of the sites rounded down but never less than one.
pub fn compartment_limit(c: &Compartment, sites: u32) -> u32 {
    match (c.max, c.max_percent) {
        (Some(n), _) => n,
        (None, Some(p)) => (((p * sites as f64) / 100.0 + 1e-9).floor() as u32).max(1),
        (None, None) => u32::MAX,
    }
}

fn secs_until(now: Timestamp, later: Timestamp) -> u32 {
    let secs = later.duration_since(now).as_secs();
    secs.clamp(1, MAX_RETRY_AFTER_SECS as i64) as u32
}

/// Grants (`Ok`) or refuses a lease for one site at `now`.
pub fn lease_decision(ctx: &LeaseContext<'_>, now: Timestamp) -> Result<(), LeaseDenial> {
    use LeaseDenialReason as R;
    let deny = |r, m: String, s| Err(LeaseDenial::new(r, m, s));

    // The rollout's state.
    match ctx.status {
        RolloutStatus::Running | RolloutStatus::Completed => {}
        RolloutStatus::Paused => {
            return deny(
                R::RolloutPaused,
                format!("rollout {:?} is paused by an operator", ctx.plan.name),
                PAUSED_RETRY_SECS,
            );
        }
        RolloutStatus::Pending | RolloutStatus::Scheduled => {
            return deny(
                R::NotAssigned,
                format!("rollout {:?} has not started", ctx.plan.name),
                NOT_OPEN_RETRY_SECS,
            );
        }
        s @ (RolloutStatus::Halted | RolloutStatus::Aborted | RolloutStatus::RolledBack) => {
            return deny(
                R::RolloutHalted,
                format!(
                    "rollout {:?} is {}; nothing new starts",
                    ctx.plan.name,
                    s.as_str().replace('_', " ")
                ),
                MAX_RETRY_AFTER_SECS,
            );
        }
    }

    // The site's assignment.
    let Some(wave) = ctx.site_wave else {
        return deny(
            R::NotAssigned,
            format!("rollout {:?} does not include this site", ctx.plan.name),
            MAX_RETRY_AFTER_SECS,
        );
    };
    let wave_name = ctx.plan.wave(wave).map(|w| w.name.as_str()).unwrap_or("?");
    if ctx.current_wave.is_none_or(|c| wave > c) {
        return deny(
            R::NotAssigned,
            format!("the site's wave {wave} ({wave_name:?}) has not opened yet"),
            NOT_OPEN_RETRY_SECS,
        );
    }
    match ctx.assignment_sequence {
        None => {
            return deny(
                R::NotAssigned,
                "the site has no assignment in this rollout yet; poll first".into(),
                1,
            );
        }
        Some(seq) if seq != ctx.requested_sequence => {
            return deny(
                R::StaleAssignment,
                format!(
                    "the lease asks for assignment {} but the current one is {seq}; poll again",
                    ctx.requested_sequence
                ),
                1,
            );
        }
        Some(_) => {}
    }

    // The site's own deferral.
    if let Some(until) = ctx.deferred_until
        && until > now
    {
        return deny(
            R::Deferred,
            format!("the site is deferred until {until}"),
            secs_until(now, until),
        );
    }

    // Fleet-wide freezes: wait until the chain of overlapping freezes ends.
    if let Some(first) = ctx.freezes.iter().find(|f| f.contains(now)) {
        let mut end = first.end;
        while let Some(next) = ctx.freezes.iter().find(|f| f.contains(end)) {
            end = next.end;
        }
        let why = if first.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", first.reason)
        };
        return deny(
            R::Frozen,
            format!("fleet-wide freeze{why} until {end}"),
            secs_until(now, end),
        );
    }

    // The plan's window, in the site's own time zone.
    if let Some(window) = &ctx.plan.window {
        let tz_name = ctx
            .site_labels
            .get(TZ_LABEL)
            .map(String::as_str)
            .unwrap_or("UTC");
        let tz = match zone(tz_name) {
            Ok(tz) => tz,
            Err(e) => {
                return deny(
                    R::OutsideWindow,
                    format!(
                        "cannot place the site's window: label {TZ_LABEL}: {e}; fix the \
                         site's label"
                    ),
                    MAX_RETRY_AFTER_SECS,
                );
            }
        };
        let open = window
            .contains(&tz, now)
            .and_then(|inside| Ok((inside, window.next_open(&tz, now)?)));
        match open {
            Ok((true, _)) => {}
            Ok((false, next)) => {
                return deny(
                    R::OutsideWindow,
                    format!(
                        "outside the maintenance window {}-{} ({tz_name}); it opens at {}",
                        window.start,
                        window.end,
                        next.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M %Z")
                    ),
                    secs_until(now, next),
                );
            }
            Err(e) => {
                return deny(
                    R::OutsideWindow,
                    format!("the plan's window cannot be used: {e}"),
                    MAX_RETRY_AFTER_SECS,
                );
            }
        }
    }

    // Concurrency: a renewal is already counted.
    if !ctx.holds_lease
        && let Some(w) = ctx.plan.wave(wave)
    {
        if let Some(max) = w.max_concurrent
            && ctx.wave_active_leases >= max
        {
            return deny(
                R::ConcurrencyLimit,
                format!(
                    "wave {wave} ({wave_name:?}) already has {} of {max} sites installing",
                    ctx.wave_active_leases
                ),
                CONCURRENCY_RETRY_SECS,
            );
        }
        if let Some(c) = &w.compartment {
            let limit = compartment_limit(c, ctx.compartment_sites);
            if ctx.compartment_active_leases >= limit {
                let value = ctx
                    .site_labels
                    .get(&c.label)
                    .map(String::as_str)
                    .unwrap_or("(none)");
                return deny(
                    R::ConcurrencyLimit,
                    format!(
                        "{}={value} already has {} of {limit} sites installing",
                        c.label, ctx.compartment_active_leases
                    ),
                    CONCURRENCY_RETRY_SECS,
                );
            }
        }
    }
    Ok(())
}
