//! What the daemon and the local commands share: configuration, state, trust, identity,
//! and the reports they queue.

use ed25519_dalek::SigningKey;
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::{EventBody, Phase};
use fleetwave_shared::trust::{Accepted, TrustState};

use super::{AGENT_VERSION, DaemonError};
use crate::client::{self, Session};
use crate::clock::Clock;
use crate::config::Config;
use crate::readiness::Health;
use crate::state::{StateError, Store};

/// What the daemon and the local commands share: configuration, state, trust, identity.
pub struct Context {
    pub config: Config,
    pub store: Store,
    pub trust: TrustState,
    pub site_id: String,
    /// Where the time comes from (the system's, or a test's).
    pub clock: Clock,
}

/// The trust state as stored (the stored root verified again).
fn load_trust(store: &Store, config: &Config) -> Result<TrustState, DaemonError> {
    let saved = store
        .trust()?
        .ok_or_else(|| DaemonError::NotEnrolled(config.agent.state_dir.display().to_string()))?;
    let mut trust = TrustState::restore(saved).map_err(|e| DaemonError::Trust(e.to_string()))?;
    // State saved before the trust state remembered what ran: the releases committed
    // here are in `installed` (only ever written after a verified commit).
    for installed in store.installed()? {
        if trust.ran_releases.contains_key(&installed.stream) {
            continue;
        }
        let committed = [&installed.previous_release, &installed.release];
        for release in committed.into_iter().flatten() {
            trust.remember_ran(&installed.stream, &release.digest());
        }
    }
    Ok(trust)
}

impl Context {
    /// Takes in what another process (an `import-bundle` while the daemon runs) may have
    /// advanced in the stored trust state: a newer root, the newest accepted assignment's
    /// sequence and digest, the trusted time. Without it, the daemon's next save would put
    /// back an older sequence high-water mark and let that assignment be replayed. The
    /// rest stays the daemon's own (replacing it all with the stored state lost what the
    /// daemon holds between its saves: a rollback assignment to the previous release was
    /// then never applied).
    pub fn reload_trust(&mut self) -> Result<(), DaemonError> {
        let stored = load_trust(&self.store, &self.config)?;
        if stored.root().version > self.trust.root().version {
            self.trust = stored;
            return Ok(());
        }
        if stored.last_sequence > self.trust.last_sequence {
            self.trust.last_sequence = stored.last_sequence;
            self.trust.last_assignment = stored.last_assignment;
        }
        if stored.trusted_time > self.trust.trusted_time {
            self.trust.trusted_time = stored.trusted_time;
        }
        Ok(())
    }

    /// Opens the state and restores the trust state (which verifies the stored root again).
    pub fn open(config: Config) -> Result<Context, DaemonError> {
        Context::open_with_clock(config, Clock::system())
    }

    /// [`Context::open`] reading the time from `clock`.
    pub fn open_with_clock(config: Config, clock: Clock) -> Result<Context, DaemonError> {
        let store = Store::open(&config.agent.state_dir)?;
        let trust = load_trust(&store, &config)?;
        let site_id = if config.agent.site_id.is_empty() {
            store.meta("site_id")?.ok_or_else(|| {
                DaemonError::NotEnrolled(config.agent.state_dir.display().to_string())
            })?
        } else {
            config.agent.site_id.clone()
        };
        Ok(Context {
            config,
            store,
            trust,
            site_id,
            clock,
        })
    }

    pub fn device_key(&self) -> Result<SigningKey, DaemonError> {
        let path = self.config.device_key_path();
        fleetwave_shared::keys::read_private_key(&path).map_err(|e| DaemonError::DeviceKey {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// A session with the coordinator, or `None` for an air-gapped box (no URL).
    pub fn session(&self) -> Result<Option<Session>, DaemonError> {
        if self.config.coordinator.url.trim().is_empty() {
            return Ok(None);
        }
        let http = client::http_client(&self.config.coordinator)?;
        Ok(Some(
            Session::with_coordinators(
                http,
                &self.config.coordinator.urls(),
                &self.site_id,
                self.device_key()?,
            )
            .with_clock(self.clock.clone())
            .with_box(self.store.meta("box_id")?),
        ))
    }

    pub fn health(&self) -> Result<Health, DaemonError> {
        Health::new(self.config.health.clone(), &self.config.staging_dir())
            .map(|h| h.with_clock(self.clock.clone()))
            .map_err(|e| DaemonError::Health(e.to_string()))
    }

    /// Queues a report.
    pub fn report(&self, body: EventBody) -> Result<String, StateError> {
        self.store
            .outbox_push(body, self.clock.now(), self.config.outbox.max_events)
    }

    pub fn phase(
        &self,
        rollout_id: Option<&str>,
        release_id: &str,
        phase: Phase,
        detail: Option<String>,
    ) -> Result<(), StateError> {
        tracing::info!(
            release_id,
            phase = phase.as_str(),
            detail = detail.as_deref().unwrap_or(""),
            "install phase"
        );
        self.report(EventBody::Phase {
            rollout_id: rollout_id.map(str::to_string),
            release_id: release_id.to_string(),
            phase,
            detail,
        })?;
        Ok(())
    }

    /// Re-checks stored envelopes with the trust core at the current time.
    pub fn evaluate(
        &self,
        assignment: &Envelope,
        release: &Envelope,
    ) -> Result<Accepted, fleetwave_shared::Refusal> {
        self.trust.evaluate(
            &self.site_id,
            assignment,
            release,
            self.clock.now(),
            AGENT_VERSION,
        )
    }

    /// Accepts a verified assignment: trust state and assignment persisted together.
    pub fn accept(&mut self, accepted: &Accepted) -> Result<(), StateError> {
        self.trust.accept(accepted);
        self.store.save_accepted(
            accepted.assignment.envelope(),
            accepted.release.envelope(),
            &self.trust.persisted(),
            self.clock.now(),
        )
    }

    /// Reports a refusal (never acted on).
    pub fn refuse(
        &self,
        refusal: &fleetwave_shared::Refusal,
        assignment: Option<&Envelope>,
    ) -> Result<(), StateError> {
        let (rollout_id, sequence) = assignment
            .and_then(peek_assignment)
            .map(|a| (Some(a.rollout_id), Some(a.sequence)))
            .unwrap_or((None, None));
        tracing::warn!(code = refusal.code(), "refused: {refusal}");
        self.report(EventBody::Refusal {
            code: refusal.code().to_string(),
            message: refusal.to_string(),
            rollout_id,
            sequence,
        })?;
        Ok(())
    }

    /// Queues one `installed` event per stream (what is on the box now).
    pub fn report_installed(&self) -> Result<(), StateError> {
        for i in self.store.installed()? {
            self.report(EventBody::Installed {
                name: i.stream.clone(),
                release_id: Some(i.release_id.clone()),
                version: Some(i.version.clone()),
                previous_release_id: i.previous_release_id.clone(),
            })?;
        }
        Ok(())
    }
}

/// Reads an assignment's fields without verifying it, only to label a refusal report.
pub(super) fn peek_assignment(envelope: &Envelope) -> Option<fleetwave_shared::Assignment> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&envelope.payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
