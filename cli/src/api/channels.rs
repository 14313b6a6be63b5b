//! `channel list|show|create|set|resume|delete`: the release each set of sites should run,
//! and which sites are not on it yet, and why.
//!
//! Requests and printing only; every rule (overlaps, rollbacks, roles) is the
//! coordinator's.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use fleetwave_shared::protocol::channels as api;

use super::output::{self, Table};
use super::{Client, ConnectArgs, encode};

const CHANNELS: &str = "/v1/channels";

const CREATE_EXAMPLES: &str = "\
Examples:
  fleetwave channel create pos-emea --stream pos --label region=emea --release pos-2.5.0
  fleetwave channel create stores --stream pos --selector '{\"format\": \"store\", \"ring\": {\"not\": \"pig\"}}' \\
      --max-concurrent 5 --failure-budget 1 --window '{\"start\": \"02:00\", \"end\": \"05:00\"}'

A rollout that completes also sets (or creates) its channel: see the plan's `channel` key.";

const SET_EXAMPLES: &str = "\
Examples:
  fleetwave channel set pos-emea --release pos-2.6.0 --reason \"hotfix for receipts\"
  fleetwave channel set pos-emea --release pos-2.5.0 --rollback --reason \"2.6 breaks printers\"
  fleetwave channel set pos-emea --max-concurrent 20
  fleetwave channel set pos-emea --window '{\"start\": \"01:00\", \"end\": \"04:00\"}'";

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// List the channels: stream, selector, release, and how many sites are off it.
    List(ListArgs),
    /// One channel and its sites off its release, each with why.
    Show(ShowArgs),
    /// Create a channel (its selector must not take sites of another channel of the stream).
    #[command(after_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// Set a channel's release (backwards needs --rollback) or its limits; audited.
    #[command(after_help = SET_EXAMPLES)]
    Set(SetArgs),
    /// Resume a channel whose convergence paused (failed sites try again).
    Resume(NameArgs),
    /// Delete a channel; its convergence stops (installs under way finish).
    Delete(NameArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub name: String,
    /// Sites listed (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// List sites after this site id (the next page).
    #[arg(long)]
    pub after: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    /// The release stream (a release's name, e.g. pos).
    #[arg(long)]
    pub stream: String,
    /// A `key=value` selector entry (repeat for more; all must match).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// A selector as JSON, in the plan's syntax (instead of --label).
    #[arg(long, conflicts_with = "labels")]
    pub selector: Option<String>,
    /// The release its sites should run (published, of the stream).
    #[arg(long)]
    pub release: Option<String>,
    /// At most this many of its sites install at once (default 10).
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// Failures tolerated before its convergence pauses (default 0).
    #[arg(long)]
    pub failure_budget: Option<u32>,
    /// The maintenance window as JSON, in the plan's syntax.
    #[arg(long)]
    pub window: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    pub name: String,
    #[arg(long)]
    pub release: Option<String>,
    /// Say that moving to an older release (a lower counter) is meant: a rollback.
    #[arg(long)]
    pub rollback: bool,
    /// Why (in the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    #[arg(long)]
    pub failure_budget: Option<u32>,
    /// A new maintenance window as JSON, in the plan's syntax.
    #[arg(long, conflicts_with = "no_window")]
    pub window: Option<String>,
    /// Remove the window (installs at any time).
    #[arg(long)]
    pub no_window: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn path(name: &str) -> String {
    format!("{CHANNELS}/{}", encode(name))
}

fn json_arg<T: serde::de::DeserializeOwned>(flag: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).with_context(|| format!("{flag}: not valid JSON: {text}"))
}

fn convergence(c: &api::ChannelInfo) -> String {
    match &c.convergence {
        None => "idle".into(),
        Some(cv) if c.paused => format!("PAUSED ({})", cv.rollout_id),
        Some(cv) => format!("converging ({})", cv.rollout_id),
    }
}

fn describe(d: &api::ChannelDetail) -> Result<()> {
    let c = &d.channel;
    output::line(format!("channel {}", c.name))?;
    output::line(format!("  stream:         {}", c.stream))?;
    output::line(format!("  selector:       {}", c.selector_text))?;
    output::line(format!(
        "  release:        {}",
        match (&c.release_id, &c.release_version) {
            (Some(id), Some(v)) => format!("{id} ({v})"),
            (Some(id), None) => id.clone(),
            _ => "none (nothing converges)".into(),
        }
    ))?;
    output::line(format!(
        "  set:            {} by {} ({})",
        output::time(c.set_at),
        c.set_by,
        c.set_reason
    ))?;
    output::line(format!(
        "  limits:         {} at a time, failure budget {}",
        c.max_concurrent, c.failure_budget
    ))?;
    if let Some(w) = &c.window {
        output::line(format!("  window:         {w}"))?;
    }
    output::line(format!("  convergence:    {}", convergence(c)))?;
    if let Some(cv) = &c.convergence
        && c.paused
    {
        output::line(format!(
            "  paused because: {}",
            cv.reason.as_deref().unwrap_or("-")
        ))?;
    }
    let by: Vec<String> = d
        .off_by_reason
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    output::line(format!(
        "  off release:    {}{}",
        c.off_release,
        if by.is_empty() {
            String::new()
        } else {
            format!(" ({})", by.join(", "))
        }
    ))
}

pub fn channel(command: ChannelCommand) -> Result<()> {
    match command {
        ChannelCommand::List(args) => {
            let client = Client::connect(&args.connect)?;
            let list: api::ChannelList = client.get(CHANNELS)?;
            if args.connect.json {
                return output::json(&list);
            }
            let mut t = Table::new(&[
                "NAME",
                "STREAM",
                "SELECTOR",
                "RELEASE",
                "OFF",
                "CONVERGENCE",
                "SET BY",
            ]);
            for c in &list.channels {
                t.row(vec![
                    c.name.clone(),
                    c.stream.clone(),
                    c.selector_text.clone(),
                    c.release_id.clone().unwrap_or_else(|| "-".into()),
                    c.off_release.to_string(),
                    convergence(c),
                    c.set_by.clone(),
                ]);
            }
            t.print()?;
            output::line(format!("{} channel(s)", list.channels.len()))
        }
        ChannelCommand::Show(args) => {
            let client = Client::connect(&args.connect)?;
            let mut url = format!("{}?limit={}", path(&args.name), args.limit);
            if let Some(a) = &args.after {
                url.push_str(&format!("&after={}", encode(a)));
            }
            let d: api::ChannelDetail = client.get(&url)?;
            if args.connect.json {
                return output::json(&d);
            }
            describe(&d)?;
            if d.off.is_empty() {
                return Ok(());
            }
            output::line("")?;
            output::line("Sites off the channel's release, and why:")?;
            let mut t = Table::new(&["SITE", "RUNS", "REASON", "LAST SEEN", "WHY"]);
            for o in &d.off {
                let mut seen = output::opt_time(o.last_seen);
                if o.offline {
                    seen.push_str(" (offline)");
                }
                let mut why = o.detail.clone();
                if let Some(until) = o.deferred_until {
                    why.push_str(&format!("; deferred until {}", output::time(until)));
                }
                t.row(vec![
                    o.site_id.clone(),
                    o.version.clone().unwrap_or_else(|| "-".into()),
                    o.reason.clone(),
                    seen,
                    why,
                ]);
            }
            t.print()?;
            if let Some(next) = &d.next_after {
                output::line(format!(
                    "more: fleetwave channel show {} --after {next}",
                    args.name
                ))?;
            }
            Ok(())
        }
        ChannelCommand::Create(args) => {
            let selector: BTreeMap<String, serde_json::Value> = match &args.selector {
                Some(text) => json_arg("--selector", text)?,
                None => args
                    .labels
                    .iter()
                    .map(|l| {
                        l.split_once('=')
                            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                            .with_context(|| format!("--label {l}: write it as key=value"))
                    })
                    .collect::<Result<_>>()?,
            };
            let req = api::CreateChannel {
                name: args.name.clone(),
                stream: args.stream.clone(),
                selector,
                release: args.release.clone(),
                max_concurrent: args.max_concurrent,
                failure_budget: args.failure_budget,
                window: args
                    .window
                    .as_deref()
                    .map(|w| json_arg("--window", w))
                    .transpose()?,
            };
            let client = Client::connect(&args.connect)?;
            let d: api::ChannelDetail = client.post(CHANNELS, &req)?;
            if args.connect.json {
                return output::json(&d);
            }
            describe(&d)
        }
        ChannelCommand::Set(args) => {
            let req = api::ChangeChannel {
                release: args.release.clone(),
                rollback: args.rollback,
                reason: args.reason.clone(),
                max_concurrent: args.max_concurrent,
                failure_budget: args.failure_budget,
                window: args
                    .window
                    .as_deref()
                    .map(|w| json_arg("--window", w))
                    .transpose()?,
                clear_window: args.no_window,
            };
            let client = Client::connect(&args.connect)?;
            let d: api::ChannelDetail = client.post(&format!("{}/set", path(&args.name)), &req)?;
            if args.connect.json {
                return output::json(&d);
            }
            describe(&d)
        }
        ChannelCommand::Resume(args) => {
            let client = Client::connect(&args.connect)?;
            let r: api::ChannelResumed = client.post(
                &format!("{}/resume", path(&args.name)),
                &serde_json::json!({}),
            )?;
            if args.connect.json {
                return output::json(&r);
            }
            output::line(format!("channel {}: {}", r.channel, r.outcome))
        }
        ChannelCommand::Delete(args) => {
            let client = Client::connect(&args.connect)?;
            client.delete(&path(&args.name))?;
            if args.connect.json {
                return output::json(&serde_json::json!({"deleted": args.name}));
            }
            output::line(format!("channel {} deleted", args.name))
        }
    }
}
