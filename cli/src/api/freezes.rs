//! `freeze list|add|end`: fleet-wide freezes, in which no site is granted a lease to
//! install. The coordinator's configuration file may hold some too (`[[freezes]]`); they
//! are listed with source `config` and are ended only by editing that file.
//!
//! Requests and printing only; every rule (roles, the longest freeze) is the coordinator's.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use fleetwave_shared::protocol::operator::{self as api, paths};
use jiff::{SignedDuration, Timestamp};

use super::output::{self, Table};
use super::sites::parse_secs;
use super::{Client, ConnectArgs, encode};

const ADD_EXAMPLES: &str = "\
Examples:
  fleetwave freeze add --for 4h --reason \"incident 1234\"
  fleetwave freeze add --start 2026-12-24T00:00:00Z --end 2026-12-27T00:00:00Z --reason christmas
  fleetwave freeze list
  fleetwave freeze end frz-3f9c2a1b7d04";

#[derive(Debug, Subcommand)]
pub enum FreezeCommand {
    /// List the freezes in force now and to come (the configuration file's too).
    List(FreezeListArgs),
    /// Add a freeze (operator role): in force at once, for every rollout.
    #[command(after_help = ADD_EXAMPLES)]
    Add(FreezeAddArgs),
    /// End a freeze now (operator role; not one from the configuration file).
    End(FreezeEndArgs),
}

#[derive(Debug, Args)]
pub struct FreezeListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("until").required(true).args(["end", "duration"])))]
pub struct FreezeAddArgs {
    /// When it ends (RFC 3339, e.g. 2026-11-30T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub end: Option<Timestamp>,
    /// How long it lasts from its start, e.g. 90m, 12h, 7d.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: Option<String>,
    /// When it begins (RFC 3339); now when left out.
    #[arg(long, value_name = "TIME")]
    pub start: Option<Timestamp>,
    /// Why installs stop (shown to operators and in the audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct FreezeEndArgs {
    /// The freeze id (frz-...).
    pub id: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn freeze(command: FreezeCommand) -> Result<()> {
    match command {
        FreezeCommand::List(args) => {
            let client = Client::connect(&args.connect)?;
            let list: api::FreezeList = client.get(paths::FREEZES)?;
            if args.connect.json {
                return output::json(&list);
            }
            let mut t = Table::new(&["ID", "STATE", "START", "END", "SOURCE", "BY", "REASON"]);
            for f in &list.freezes {
                t.row(vec![
                    f.id.clone(),
                    if f.active { "ACTIVE" } else { "upcoming" }.to_string(),
                    output::time(f.start),
                    output::time(f.end),
                    source(f.source).to_string(),
                    f.created_by.clone().unwrap_or_else(|| "-".into()),
                    f.reason.clone(),
                ]);
            }
            t.print()?;
            output::line(format!("{} freeze(s)", list.freezes.len()))
        }
        FreezeCommand::Add(args) => {
            let end = match (args.end, &args.duration) {
                (Some(end), None) => end,
                (None, Some(d)) => {
                    let secs = i64::try_from(parse_secs(d)?)
                        .map_err(|_| anyhow::anyhow!("--for {d:?} is too long"))?;
                    args.start
                        .unwrap_or_else(Timestamp::now)
                        .checked_add(SignedDuration::from_secs(secs))
                        .map_err(|_| anyhow::anyhow!("--for {d:?} is too long"))?
                }
                _ => bail!("give either --end TIME or --for DURATION"),
            };
            let req = api::CreateFreeze {
                start: args.start,
                end,
                reason: args.reason.clone(),
            };
            let client = Client::connect(&args.connect)?;
            let f: api::FreezeInfo = client.post(paths::FREEZES, &req)?;
            if args.connect.json {
                return output::json(&f);
            }
            output::line(format!(
                "freeze {} {} from {} to {}: {}",
                f.id,
                if f.active { "in force" } else { "scheduled" },
                output::time(f.start),
                output::time(f.end),
                f.reason
            ))
        }
        FreezeCommand::End(args) => {
            let client = Client::connect(&args.connect)?;
            let f: api::FreezeInfo = client.post(
                &format!("{}/{}/end", paths::FREEZES, encode(&args.id)),
                &serde_json::json!({}),
            )?;
            if args.connect.json {
                return output::json(&f);
            }
            output::line(format!(
                "freeze {} ended at {} ({})",
                f.id,
                output::opt_time(f.ended_at),
                f.reason
            ))
        }
    }
}

fn source(s: api::FreezeSource) -> &'static str {
    match s {
        api::FreezeSource::Config => "config",
        api::FreezeSource::Api => "api",
    }
}
