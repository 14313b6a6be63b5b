//! Prometheus metrics (`/metrics`, text format): polls, reports, rollouts and sites by
//! state, gate decisions, request latency, the wave controller's liveness. Recording a metric must never fail a request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

// Every label value comes from a closed set chosen by the code, never from what a client
// sent (a label per distinct value grows `/metrics` without bound): `&'static str` where
// the type can say so.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// A controller decision kind (`Decision::kind`, or one of the engine's own notes such as
/// `created`) or a report kind: constants of the code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// A request budget of the HTTP edge (`requests`, `long_polls`, `unauthenticated`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabel {
    pub budget: &'static str,
}

/// How long a site has not been seen: `15m`, `1h`, `24h`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinceLabel {
    pub since: &'static str,
}

/// A group-commit writer: `reports` or `leases`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriterLabel {
    pub writer: &'static str,
}

/// The thresholds of `fleetwave_sites_not_seen`, with their label.
pub const NOT_SEEN_SINCE: [(&str, i64); 3] = [("15m", 15 * 60), ("1h", 3600), ("24h", 86_400)];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// [`crate::http::edge::method_label`]: a known method or `other`.
    pub method: &'static str,
    /// The matched route's template (`/v1/sites/{id}`), never the path as sent.
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    /// Polls by result: `assignment`, `nothing`, `not_modified`.
    pub polls: Family<ResultLabel, Counter>,
    /// Report events received, by result: `accepted`, `duplicate`; `future_dated` (also
    /// counted as one of those) for events dated more than 5 minutes after they arrived.
    pub report_events: Family<ResultLabel, Counter>,
    /// Golden-signal minutes received with reports, by result: `stored`, or
    /// `dropped_streams` (the site already has the most streams the coordinator keeps).
    pub signal_minutes: Family<ResultLabel, Counter>,
    pub rollouts: Family<StateLabel, Gauge>,
    pub sites: Family<StateLabel, Gauge>,
    /// Controller decisions by kind (`open_wave`, `halt`, `complete`, ...).
    pub gate_decisions: Family<KindLabel, Counter>,
    pub leases: Family<ResultLabel, Counter>,
    pub requests: Family<RequestLabels, Histogram>,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// Connections closed after their answer because more than
    /// `limits.max_keepalive_connections` were open.
    pub keepalive_declined: Counter,
    /// TLS handshakes by kind: `full` or `resumed` (a session ticket).
    pub tls_handshakes: Family<ResultLabel, Counter>,
    /// Stored reports deleted past their retention period, by kind (`health`, `phase`, ...).
    pub reports_pruned: Family<KindLabel, Counter>,
    /// 1 while the wave controller runs and completes passes, 0 otherwise (set on every
    /// scrape from [`crate::liveness::Liveness`]).
    pub controller_up: Gauge,
    /// Restarts of the wave controller task after it died.
    pub controller_restarts: Counter,
    /// Rollouts halted because the controller could not evaluate them (an error or a
    /// panic while evaluating that one rollout).
    pub controller_rollout_failures: Counter,
    /// Sites whose agent gave up rolling back (newest phase `rollback_failed`).
    pub sites_rollback_failed: Gauge,
    /// Requests refused with 503 at the edge because a budget was full, by budget.
    pub requests_shed: Family<BudgetLabel, Counter>,
    /// Active sites not seen (no poll) for longer than `since`, or never (set on scrape).
    pub sites_not_seen: Family<SinceLabel, Gauge>,
    /// Waves whose gate passed and that wait for an operator's approval now.
    pub waves_awaiting_approval: Gauge,
    /// Seconds the longest-waiting of those has waited (0 when none waits).
    pub approval_wait_seconds: Gauge,
    /// Requests (report batches, lease grants) queued or being committed by a
    /// group-commit writer, by writer: a backlog that grows means the disk falls behind.
    pub group_commit_waiting: Family<WriterLabel, Gauge>,
    /// Webhook delivery attempts by outcome: `delivered`, `retrying` (failed, tried
    /// again later) or `failed` (failed for the last time).
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    /// Webhook deliveries waiting to be sent or retried.
    pub webhook_backlog: Gauge,
    /// How long each convergence pass over the channels took.
    pub convergence_pass_seconds: Histogram,
    /// Artifact bytes the coordinator streamed to clients itself.
    pub artifact_bytes_served: Counter,
    /// Artifact downloads answered with a redirect to a presigned object-store URL.
    pub artifact_redirects: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fleetwave");
        let polls = Family::<ResultLabel, Counter>::default();
        registry.register("polls", "Agent polls answered, by result", polls.clone());
        let report_events = Family::<ResultLabel, Counter>::default();
        registry.register(
            "report_events",
            "Report events received, by result",
            report_events.clone(),
        );
        let signal_minutes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "signal_minutes",
            "Golden-signal minutes received with reports, by result",
            signal_minutes.clone(),
        );
        let rollouts = Family::<StateLabel, Gauge>::default();
        registry.register("rollouts", "Rollouts by state", rollouts.clone());
        let sites = Family::<StateLabel, Gauge>::default();
        registry.register("sites", "Sites by state", sites.clone());
        let gate_decisions = Family::<KindLabel, Counter>::default();
        registry.register(
            "gate_decisions",
            "Wave controller decisions, by kind",
            gate_decisions.clone(),
        );
        let leases = Family::<ResultLabel, Counter>::default();
        registry.register(
            "leases",
            "Lease requests, by result (granted or the denial reason)",
            leases.clone(),
        );
        let requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            requests.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let keepalive_declined = Counter::default();
        registry.register(
            "keepalive_declined",
            "Connections closed after their answer because more than limits.max_keepalive_connections were open",
            keepalive_declined.clone(),
        );
        let tls_handshakes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed, by result: full, or resumed with a session ticket",
            tls_handshakes.clone(),
        );
        let reports_pruned = Family::<KindLabel, Counter>::default();
        registry.register(
            "reports_pruned",
            "Stored agent reports deleted past their retention period ([retention]), by kind",
            reports_pruned.clone(),
        );
        let controller_up = Gauge::default();
        registry.register(
            "controller_up",
            "1 while the wave controller runs and completes passes, 0 when it is not running or stuck",
            controller_up.clone(),
        );
        let controller_restarts = Counter::default();
        registry.register(
            "controller_restarts",
            "Restarts of the wave controller after it died (a panic or an unexpected return)",
            controller_restarts.clone(),
        );
        let controller_rollout_failures = Counter::default();
        registry.register(
            "controller_rollout_failures",
            "Rollouts halted because the wave controller could not evaluate them (an error or a panic)",
            controller_rollout_failures.clone(),
        );
        let sites_rollback_failed = Gauge::default();
        registry.register(
            "sites_rollback_failed",
            "Sites whose agent gave up rolling back (newest install phase rollback_failed): each needs an operator",
            sites_rollback_failed.clone(),
        );
        let requests_shed = Family::<BudgetLabel, Counter>::default();
        registry.register(
            "requests_shed",
            "Requests refused with 503 at the edge because a budget ([limits]) was full, by budget",
            requests_shed.clone(),
        );
        let sites_not_seen = Family::<SinceLabel, Gauge>::default();
        registry.register(
            "sites_not_seen",
            "Active sites that have not polled for longer than `since` (or never did)",
            sites_not_seen.clone(),
        );
        let waves_awaiting_approval = Gauge::default();
        registry.register(
            "waves_awaiting_approval",
            "Waves whose gate passed and that wait for an operator's approval",
            waves_awaiting_approval.clone(),
        );
        let approval_wait_seconds = Gauge::default();
        registry.register(
            "approval_wait_seconds",
            "How long the longest-waiting wave has waited for approval, in seconds (0: none waits)",
            approval_wait_seconds.clone(),
        );
        let group_commit_waiting = Family::<WriterLabel, Gauge>::default();
        registry.register(
            "group_commit_waiting",
            "Requests queued or being committed by a group-commit writer (reports, leases)",
            group_commit_waiting.clone(),
        );
        let webhook_deliveries = Family::<ResultLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by result: delivered, retrying (failed, tried again later) or failed (gave up)",
            webhook_deliveries.clone(),
        );
        let webhook_backlog = Gauge::default();
        registry.register(
            "webhook_backlog",
            "Webhook deliveries pending (waiting to be sent or retried)",
            webhook_backlog.clone(),
        );
        let convergence_pass_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "convergence_pass_seconds",
            "How long each convergence pass over the channels took",
            convergence_pass_seconds.clone(),
        );
        let artifact_bytes_served = Counter::default();
        registry.register(
            "artifact_bytes_served",
            "Artifact bytes the coordinator streamed to clients itself",
            artifact_bytes_served.clone(),
        );
        let artifact_redirects = Counter::default();
        registry.register(
            "artifact_redirects",
            "Artifact downloads answered with a redirect to a presigned object-store URL",
            artifact_redirects.clone(),
        );
        Metrics {
            registry,
            artifact_bytes_served,
            artifact_redirects,
            requests_shed,
            sites_not_seen,
            waves_awaiting_approval,
            approval_wait_seconds,
            group_commit_waiting,
            webhook_deliveries,
            webhook_backlog,
            convergence_pass_seconds,
            reports_pruned,
            controller_up,
            controller_restarts,
            controller_rollout_failures,
            sites_rollback_failed,
            connections_open,
            keepalive_declined,
            tls_handshakes,
            polls,
            report_events,
            signal_minutes,
            rollouts,
            sites,
            gate_decisions,
            leases,
            requests,
        }
    }

    pub fn count(family: &Family<ResultLabel, Counter>, result: &'static str, n: u64) {
        family.get_or_create(&ResultLabel { result }).inc_by(n);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
