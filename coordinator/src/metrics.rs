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
    /// Webhook delivery attempts by outcome: `delivered`, `retrying` (failed, tried
    /// again later) or `failed` (failed for the last time).
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    /// Webhook deliveries waiting to be sent or retried.
    pub webhook_backlog: Gauge,
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
        Metrics {
            registry,
            webhook_deliveries,
            webhook_backlog,
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
