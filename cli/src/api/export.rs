//! `fleetwave rollout export ID`: one self-contained file for a post-incident review of a
//! rollout (`GET /v1/rollouts/{id}/export`), as JSON or Markdown.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use fleetwave_shared::protocol::export::RolloutExport;
use fleetwave_shared::protocol::operator::paths;
use fleetwave_shared::protocol::{Event, EventBody};

use super::{Client, ConnectArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The coordinator's document as it came (`RolloutExport` in the OpenAPI document).
    Json,
    /// A report to read and to paste into an incident review.
    Markdown,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The rollout id.
    pub rollout: String,
    /// `markdown` (default) or `json`; `--json` is the same as `--format json`.
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: ExportFormat,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let path = format!("{}/{}/export", paths::ROLLOUTS, args.rollout);
    let doc: RolloutExport = client.get(&path)?;
    let format = if args.connect.json {
        ExportFormat::Json
    } else {
        args.format
    };
    let text = match format {
        ExportFormat::Json => serde_json::to_string_pretty(&doc)? + "\n",
        ExportFormat::Markdown => markdown(&doc),
    };
    match &args.out {
        Some(file) => {
            std::fs::write(file, text)
                .with_context(|| format!("cannot write {}", file.display()))?;
            eprintln!("wrote {} ({})", file.display(), args.rollout);
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Text inside a Markdown table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A fenced block that the text cannot close early.
fn fenced(out: &mut String, lang: &str, text: &str) {
    let mut fence = "```".to_string();
    while text.contains(&fence) {
        fence.push('`');
    }
    let _ = writeln!(out, "{fence}{lang}\n{}\n{fence}\n", text.trim_end());
}

fn event_line(e: &Event) -> String {
    let what = match &e.body {
        EventBody::Phase { phase, detail, .. } => match detail {
            Some(d) => format!("phase {} — {d}", phase.as_str()),
            None => format!("phase {}", phase.as_str()),
        },
        other => serde_json::to_value(other)
            .map(|v| v.to_string())
            .unwrap_or_default(),
    };
    format!("{}  {what}", e.at)
}

/// The review as Markdown: summary, waves, timeline, the sites that went wrong with their
/// reports, audit, versions, and the plan.
pub fn markdown(x: &RolloutExport) -> String {
    let r = &x.rollout;
    let mut out = String::new();
    let _ = writeln!(out, "# Rollout {} — {}\n", r.id, r.status);
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| release | {} (`{}` version {}, counter {}) |",
        cell(&x.release.id),
        cell(&x.release.name),
        cell(&x.release.version),
        x.release.counter
    );
    let _ = writeln!(out, "| status | {} |", r.status);
    if let Some(why) = &r.status_reason {
        let _ = writeln!(out, "| why | {} |", cell(why));
    }
    let _ = writeln!(
        out,
        "| created | {} by {} |",
        r.created_at,
        cell(&r.created_by)
    );
    let _ = writeln!(
        out,
        "| exported | {} by {} |\n",
        x.exported_at,
        cell(&x.exported_by)
    );

    let _ = writeln!(out, "## Waves\n");
    let _ = writeln!(
        out,
        "| # | wave | opened | passed | sites | succeeded | failed | silent | rolled back | in progress | pending | gate |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for w in &r.waves {
        let t = &w.tally;
        let when =
            |t: Option<jiff::Timestamp>| t.map(|t| t.to_string()).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            w.index,
            cell(&w.name),
            when(w.opened_at),
            when(w.passed_at),
            t.sites,
            t.succeeded,
            t.failed,
            t.silent,
            t.rolled_back,
            t.in_progress,
            t.pending,
            cell(&w.gate)
        );
    }

    let _ = writeln!(out, "\n## Timeline\n");
    for d in &r.decisions {
        let wave = d.wave.map(|w| format!(" (wave {w})")).unwrap_or_default();
        let _ = writeln!(out, "- {} **{}**{wave}: {}", d.at, d.kind, d.reason);
    }

    let _ = writeln!(
        out,
        "\n## Sites that failed, went silent or were rolled back\n"
    );
    if x.sites.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for s in &x.sites {
        let _ = writeln!(out, "### {} — {} (wave {})\n", s.site_id, s.state, s.wave);
        if let Some(f) = &s.failure {
            let _ = writeln!(out, "- the agent said: {f}");
        }
        if let Some(d) = &s.detail {
            let _ = writeln!(out, "- the gate said: {d}");
        }
        if let Some(p) = &s.phase {
            let _ = writeln!(out, "- last phase: {p}");
        }
        if let Some(t) = s.failed_at {
            let _ = writeln!(out, "- failed at: {t}");
        }
        let _ = writeln!(
            out,
            "- release before: {}; version now: {}\n",
            s.previous_release_id.as_deref().unwrap_or("unknown"),
            s.version_now.as_deref().unwrap_or("none")
        );
        if !s.reports.is_empty() {
            let lines: Vec<String> = s.reports.iter().map(event_line).collect();
            fenced(&mut out, "text", &lines.join("\n"));
        }
    }
    if x.sites_omitted > 0 {
        let _ = writeln!(
            out,
            "\n{} more sites failed, went silent or were rolled back (see `fleetwave rollout status {} --sites`).",
            x.sites_omitted, r.id
        );
    }

    let _ = writeln!(out, "\n## Audit\n");
    if x.audit.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for a in &x.audit {
        let detail = if a.detail.is_empty() {
            String::new()
        } else {
            format!(" — {}", a.detail)
        };
        let _ = writeln!(out, "- {} `{}` by {}{detail}", a.at, a.action, a.actor);
    }

    let _ = writeln!(out, "\n## Versions\n");
    let _ = writeln!(out, "| before (release) | sites |\n|---|---|");
    for (v, n) in &x.releases_before {
        let _ = writeln!(out, "| {} | {n} |", cell(v));
    }
    let _ = writeln!(
        out,
        "\n| now (version of `{}`) | sites |\n|---|---|",
        x.release.name
    );
    for (v, n) in &x.versions_now {
        let _ = writeln!(out, "| {} | {n} |", cell(v));
    }

    let _ = writeln!(out, "\n## Plan\n");
    let lang = match r.plan_format {
        fleetwave_shared::protocol::operator::PlanFormat::Json => "json",
        fleetwave_shared::protocol::operator::PlanFormat::Toml => "toml",
    };
    fenced(&mut out, lang, &r.plan);
    out
}
