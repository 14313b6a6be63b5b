//! `webhook list|add|show|remove|test|deliveries`: endpoints the coordinator POSTs fleet
//! events to, signed per Standard Webhooks. Admin role.
//!
//! Requests and printing only; every rule (URL, event types, roles) is the coordinator's.

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use fleetwave_shared::protocol::operator::{self as api, paths};

use super::output::{self, Table};
use super::{Client, ConnectArgs, encode};

const ADD_EXAMPLES: &str = "\
Event types: rollout.created, rollout.started, rollout.completed, rollout.halted,
rollout.rolled_back, rollout.aborted, wave.opened, gate.awaiting_approval, site.failed, site.silent,
freeze.added, freeze.ended.

Examples:
  fleetwave webhook add https://hooks.example.com/fleet --event rollout.halted --event rollout.rolled_back
  fleetwave webhook add https://hooks.slack.com/services/T0/B0/XXXX --format slack \\
      --event rollout.halted --event gate.awaiting_approval --description \"#fleet channel\"
  fleetwave webhook deliveries wh-3f9c2a1b7d04";

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// List the webhook endpoints (their secrets show as a hint only).
    List(WebhookListArgs),
    /// Register an endpoint; prints its signing secret, this once.
    #[command(after_help = ADD_EXAMPLES)]
    Add(WebhookAddArgs),
    /// Show one endpoint.
    Show(WebhookIdArgs),
    /// Remove an endpoint with its pending deliveries and delivery log.
    Remove(WebhookIdArgs),
    /// Send a webhook.test event to one endpoint (whatever its event types).
    Test(WebhookIdArgs),
    /// An endpoint's delivery log: the newest deliveries and attempts.
    Deliveries(WebhookIdArgs),
}

#[derive(Debug, Args)]
pub struct WebhookListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// The JSON event (type, timestamp, data).
    Json,
    /// {"text": "..."} for a Slack (or compatible) incoming webhook.
    Slack,
}

#[derive(Debug, Args)]
pub struct WebhookAddArgs {
    /// Where events are POSTed (https).
    #[arg(value_name = "URL")]
    pub endpoint: String,
    /// An event type to send (repeat for more; at least one).
    #[arg(long = "event", value_name = "TYPE", required = true)]
    pub events: Vec<String>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Accept a plain http:// URL (a receiver on a trusted network only).
    #[arg(long)]
    pub allow_insecure_http: bool,
    /// What the endpoint is for.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct WebhookIdArgs {
    /// The endpoint id (wh-...).
    pub id: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn path(id: &str) -> String {
    format!("{}/{}", paths::WEBHOOKS, encode(id))
}

fn format_name(f: api::WebhookFormat) -> &'static str {
    match f {
        api::WebhookFormat::Json => "json",
        api::WebhookFormat::Slack => "slack",
    }
}

fn describe(w: &api::WebhookInfo) -> Result<()> {
    output::line(format!("webhook {}", w.id))?;
    output::line(format!("  url:          {}", w.url))?;
    output::line(format!("  events:       {}", w.events.join(", ")))?;
    output::line(format!("  format:       {}", format_name(w.format)))?;
    if w.allow_insecure_http {
        output::line("  plain http:   allowed")?;
    }
    if !w.description.is_empty() {
        output::line(format!("  description:  {}", w.description))?;
    }
    output::line(format!("  secret:       {}", w.secret_hint))?;
    output::line(format!(
        "  created:      {} by {}",
        output::time(w.created_at),
        w.created_by
    ))?;
    output::line(format!(
        "  deliveries:   {} pending, {} delivered, {} failed",
        w.pending, w.delivered, w.failed
    ))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub fn webhook(command: WebhookCommand) -> Result<()> {
    match command {
        WebhookCommand::List(args) => {
            let client = Client::connect(&args.connect)?;
            let list: api::WebhookList = client.get(paths::WEBHOOKS)?;
            if args.connect.json {
                return output::json(&list);
            }
            let mut t = Table::new(&[
                "ID",
                "URL",
                "EVENTS",
                "FORMAT",
                "PENDING",
                "DELIVERED",
                "FAILED",
                "SECRET",
            ]);
            for w in &list.webhooks {
                t.row(vec![
                    w.id.clone(),
                    w.url.clone(),
                    w.events.join(","),
                    format_name(w.format).to_string(),
                    w.pending.to_string(),
                    w.delivered.to_string(),
                    w.failed.to_string(),
                    w.secret_hint.clone(),
                ]);
            }
            t.print()?;
            output::line(format!("{} webhook(s)", list.webhooks.len()))
        }
        WebhookCommand::Add(args) => {
            let req = api::CreateWebhook {
                url: args.endpoint.clone(),
                events: args.events.clone(),
                format: match args.format {
                    Format::Json => api::WebhookFormat::Json,
                    Format::Slack => api::WebhookFormat::Slack,
                },
                allow_insecure_http: args.allow_insecure_http,
                description: args.description.clone(),
            };
            let client = Client::connect(&args.connect)?;
            let created: api::CreatedWebhook = client.post(paths::WEBHOOKS, &req)?;
            if args.connect.json {
                return output::json(&created);
            }
            describe(&created.webhook)?;
            output::line("")?;
            output::line(format!(
                "signing secret (shown only now): {}",
                created.secret
            ))?;
            output::line(
                "Give it to the receiver: it verifies each request's webhook-signature with it.",
            )
        }
        WebhookCommand::Show(args) => {
            let client = Client::connect(&args.connect)?;
            let w: api::WebhookInfo = client.get(&path(&args.id))?;
            if args.connect.json {
                return output::json(&w);
            }
            describe(&w)
        }
        WebhookCommand::Remove(args) => {
            let client = Client::connect(&args.connect)?;
            client.delete(&path(&args.id))?;
            if args.connect.json {
                return output::json(&serde_json::json!({"removed": args.id}));
            }
            output::line(format!("webhook {} removed", args.id))
        }
        WebhookCommand::Test(args) => {
            let client = Client::connect(&args.connect)?;
            let queued: api::WebhookTestQueued =
                client.post(&format!("{}/test", path(&args.id)), &serde_json::json!({}))?;
            if args.connect.json {
                return output::json(&queued);
            }
            output::line(format!(
                "test event queued as {}; see `fleetwave webhook deliveries {}`",
                queued.webhook_id, args.id
            ))
        }
        WebhookCommand::Deliveries(args) => {
            let client = Client::connect(&args.connect)?;
            let log: api::WebhookDeliveries =
                client.get(&format!("{}/deliveries", path(&args.id)))?;
            if args.connect.json {
                return output::json(&log);
            }
            let mut t = Table::new(&[
                "WEBHOOK-ID",
                "EVENT",
                "STATE",
                "ATTEMPTS",
                "NEXT",
                "LAST STATUS",
                "LAST ERROR",
            ]);
            for d in &log.deliveries {
                t.row(vec![
                    d.id.clone(),
                    d.event_type.clone(),
                    d.state.clone(),
                    d.attempts.to_string(),
                    output::opt_time(d.next_attempt_at),
                    opt(d.last_status),
                    d.last_error.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            output::line("Deliveries (newest first):")?;
            t.print()?;
            let mut t = Table::new(&[
                "AT",
                "WEBHOOK-ID",
                "EVENT",
                "ATTEMPT",
                "STATUS",
                "MS",
                "OUTCOME",
                "ERROR",
            ]);
            for a in &log.attempts {
                t.row(vec![
                    output::time(a.at),
                    a.delivery_id.clone(),
                    a.event_type.clone(),
                    a.attempt.to_string(),
                    opt(a.status),
                    a.duration_ms.to_string(),
                    a.outcome.clone(),
                    a.error.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            output::line("Attempts (newest first):")?;
            t.print()
        }
    }
}
