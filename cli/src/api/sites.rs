//! `site list|show|label|decommission|enable|rekey` (`site import`: [`super::site_import`]), `token enroll create|list|revoke`,
//! `token operator create|list|revoke` and `audit`: the fleet's members, who may join it,
//! who may operate it, and what was done.
//!
//! Requests and printing only; every rule (roles, label syntax, token limits) is the
//! coordinator's. Never prints a token except the one just created.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use fleetwave_shared::protocol::operator::{self as api, paths};
use jiff::Timestamp;

use super::output::{self, Table};
use super::{Client, ConnectArgs, encode};

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// List sites (filter by labels, state, installed version).
    List(SiteListArgs),
    /// Show one site: labels, versions installed per stream, health, rollout.
    Show(SiteIdArgs),
    /// Set or remove labels of a site (KEY=VALUE sets, KEY- removes).
    Label(SiteLabelArgs),
    /// Decommission a site: refused at once, sessions dropped.
    Decommission(SiteIdArgs),
    /// Re-enable a decommissioned site.
    Enable(SiteIdArgs),
    /// Let a re-imaged or replaced box enroll a new device key for an enrolled site, or a
    /// new box (its own `[box] id`) join it: prints a one-use enrollment token bound to
    /// the site (only such a token can replace a box's key or add a box; other tokens
    /// only create new sites).
    Rekey(SiteRekeyArgs),
    /// Hold a site at what it runs: no rollout takes it (an active rollout that had not
    /// started on it leaves it out of its gate) until `site unhold`.
    Hold(SiteHoldArgs),
    /// Lift a site's hold: it joins the active rollouts that select it.
    Unhold(SiteIdArgs),
    /// Import many sites from a CSV or JSON-lines file, all or nothing: lines with a
    /// device key pre-register the site, the others get one-use enrollment tokens
    /// (written to --tokens-out only).
    Import(super::site_import::SiteImportArgs),
    /// Import an air-gapped site's reports from the file `fleetwave-agent export-reports`
    /// wrote (verified against the site's device key; each event counts once).
    ImportReports(SiteImportReportsArgs),
}

#[derive(Debug, Args)]
pub struct SiteImportReportsArgs {
    /// The report file.
    pub file: std::path::PathBuf,
    /// The site it is for (default: the site the file names; the coordinator checks the
    /// device signature either way).
    #[arg(long, value_name = "ID")]
    pub site: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct SiteHoldArgs {
    /// The site id.
    pub site: String,
    /// Why (shown wherever the site is, and in the audit log).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct SiteRekeyArgs {
    /// The site id.
    pub site: String,
    /// Validity, e.g. 30m, 24h, 7d.
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub expires_in: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct SiteListArgs {
    /// Only sites with these labels, e.g. --label cohort=pig --label region=eu.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// active or decommissioned.
    #[arg(long)]
    pub state: Option<String>,
    /// Only sites that report this version installed.
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct SiteIdArgs {
    /// The site id.
    pub site: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct SiteLabelArgs {
    /// The site id.
    pub site: String,
    /// KEY=VALUE to set a label, KEY- to remove it.
    #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
    pub changes: Vec<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn site(command: SiteCommand) -> Result<()> {
    match command {
        SiteCommand::ImportReports(args) => import_reports(args),
        SiteCommand::List(args) => site_list(args),
        SiteCommand::Show(args) => {
            let client = Client::connect(&args.connect)?;
            let site: api::SiteInfo =
                client.get(&format!("{}/{}", paths::SITES, encode(&args.site)))?;
            print_site(&site, args.connect.json)
        }
        SiteCommand::Label(args) => {
            let mut change = api::RelabelSite::default();
            for c in &args.changes {
                if let Some((k, v)) = c.split_once('=') {
                    change.set.insert(k.to_string(), v.to_string());
                } else if let Some(k) = c.strip_suffix('-') {
                    change.remove.push(k.to_string());
                } else {
                    bail!("label change {c:?} must be KEY=VALUE (set) or KEY- (remove)");
                }
            }
            let client = Client::connect(&args.connect)?;
            let site: api::SiteInfo = client.post(
                &format!("{}/{}/labels", paths::SITES, encode(&args.site)),
                &change,
            )?;
            print_site(&site, args.connect.json)
        }
        SiteCommand::Decommission(args) => site_state(args, "decommission"),
        SiteCommand::Enable(args) => site_state(args, "reenable"),
        SiteCommand::Unhold(args) => site_state(args, "unhold"),
        SiteCommand::Import(args) => super::site_import::site_import(args),
        SiteCommand::Hold(args) => {
            let client = Client::connect(&args.connect)?;
            let site: api::SiteInfo = client.post(
                &format!("{}/{}/hold", paths::SITES, encode(&args.site)),
                &api::HoldSite {
                    reason: args.reason.clone(),
                },
            )?;
            print_site(&site, args.connect.json)
        }
        SiteCommand::Rekey(args) => {
            let req = api::RekeySite {
                expires_in_secs: Some(parse_secs(&args.expires_in)?),
            };
            let client = Client::connect(&args.connect)?;
            let created: api::EnrollmentTokenCreated = client.post(
                &format!("{}/{}/rekey", paths::SITES, encode(&args.site)),
                &req,
            )?;
            if args.connect.json {
                return output::json(&created);
            }
            output::line(&created.token)?;
            eprintln!(
                "enrollment token {} for site {} (one use, expires {}): on the new box run \
                 `fleetwave-agent enroll --site {} --token <the line above>` (a box of a site \
                 with several: its own `[box] id` in the agent's configuration); the replaced \
                 box's current device key works until then. It is not shown again",
                created.id,
                args.site,
                output::time(created.expires_at),
                args.site
            );
            Ok(())
        }
    }
}

fn site_state(args: SiteIdArgs, action: &str) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let site: api::SiteInfo = client.post(
        &format!("{}/{}/{action}", paths::SITES, encode(&args.site)),
        &serde_json::json!({}),
    )?;
    if args.connect.json {
        return output::json(&site);
    }
    output::line(format!("site {} is now {}", site.id, site.state.as_str()))
}

fn site_list(args: SiteListArgs) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let mut query = Vec::new();
    if !args.labels.is_empty() {
        for l in &args.labels {
            if !l.contains('=') {
                bail!("--label {l:?} must be KEY=VALUE");
            }
        }
        query.push(format!("label={}", encode(&args.labels.join(","))));
    }
    if let Some(s) = &args.state {
        query.push(format!("state={}", encode(s)));
    }
    if let Some(v) = &args.version {
        query.push(format!("version={}", encode(v)));
    }
    let sites = client.get_all(paths::SITES, &query, |page: api::SiteList| {
        (page.sites, page.next_after)
    })?;
    if args.connect.json {
        return output::json(&sites);
    }
    let now = Timestamp::now();
    let mut table = Table::new(&[
        "SITE", "STATE", "VERSIONS", "HEALTH", "SEEN", "ROLLOUT", "LABELS",
    ]);
    for s in &sites {
        table.row(vec![
            s.id.clone(),
            if s.hold.is_some() {
                format!("{} (held)", s.state.as_str())
            } else {
                s.state.as_str().to_string()
            },
            versions(&s.installed),
            health(s.healthy).to_string(),
            output::ago(s.last_seen, now),
            s.rollout_id.clone().unwrap_or_else(|| "-".into()),
            output::labels(&s.labels),
        ]);
    }
    table.print()?;
    output::line(format!("{} site(s)", sites.len()))
}

/// `demo=1.1.0 pos=2.4.0`, or `-`.
pub fn versions(installed: &BTreeMap<String, api::InstalledInfo>) -> String {
    if installed.is_empty() {
        return "-".to_string();
    }
    installed
        .iter()
        .map(|(stream, i)| format!("{stream}={}", i.version.as_deref().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn health(h: Option<bool>) -> &'static str {
    match h {
        Some(true) => "healthy",
        Some(false) => "UNHEALTHY",
        None => "-",
    }
}

fn print_site(s: &api::SiteInfo, json: bool) -> Result<()> {
    if json {
        return output::json(s);
    }
    let now = Timestamp::now();
    let mut text = format!(
        "site {}\n  state:       {}\n  labels:      {}\n  agent:       {}\n  enrolled:    {}\n  last seen:   {} ({})\n  health:      {}{}\n",
        s.id,
        s.state.as_str(),
        output::labels(&s.labels),
        s.agent_version,
        output::time(s.enrolled_at),
        output::opt_time(s.last_seen),
        output::ago(s.last_seen, now),
        health(s.healthy),
        s.health_at
            .map(|t| format!(" (at {})", output::time(t)))
            .unwrap_or_default(),
    );
    if let Some(d) = s.deferred_until {
        text.push_str(&format!("  deferred:    until {}\n", output::time(d)));
    }
    if let Some(h) = &s.hold {
        text.push_str(&format!(
            "  HELD:        {} (by {}, since {})\n",
            h.reason,
            h.held_by,
            output::time(h.held_at)
        ));
    }
    text.push_str(&format!(
        "  rollout:     {}\n  device key:  {}\n  installed:\n",
        s.rollout_id.as_deref().unwrap_or("-"),
        s.device_key
    ));
    if s.installed.is_empty() {
        text.push_str("    nothing reported yet\n");
    }
    for (stream, i) in &s.installed {
        text.push_str(&format!(
            "    {stream}: {} (release {}, previous {}, at {})\n",
            i.version.as_deref().unwrap_or("?"),
            i.release_id.as_deref().unwrap_or("-"),
            i.previous_release_id.as_deref().unwrap_or("-"),
            output::time(i.at)
        ));
    }
    text.push_str(&boxes_text(&s.boxes, now));
    print!("{text}");
    Ok(())
}

/// The `boxes:` section of `site show` (empty for a one-box site): one line per box, in
/// the order the active rollout installs them.
fn boxes_text(boxes: &[api::SiteBoxInfo], now: Timestamp) -> String {
    if boxes.is_empty() {
        return String::new();
    }
    let mut text = String::from("  boxes (in install order):\n");
    for b in boxes {
        let versions: Vec<String> = b
            .installed
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        text.push_str(&format!(
            "    {} ({}): {}; phase {}; installed {}; last report {} ({})\n",
            b.box_id,
            if b.role.is_empty() {
                "no role"
            } else {
                b.role.as_str()
            },
            b.state,
            b.phase.as_deref().unwrap_or("-"),
            if versions.is_empty() {
                "-".to_string()
            } else {
                versions.join(", ")
            },
            output::opt_time(b.last_report_at),
            output::ago(b.last_report_at, now),
        ));
    }
    text
}

// ---------------------------------------------------------------------------------------
// tokens

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// One-time enrollment tokens that let agents join the fleet.
    #[command(subcommand)]
    Enroll(EnrollTokenCommand),
    /// Operator tokens (admin only).
    #[command(subcommand)]
    Operator(OperatorTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum EnrollTokenCommand {
    /// Create an enrollment token; prints the secret once.
    Create(EnrollCreateArgs),
    /// List enrollment tokens (never their secrets).
    List(ConnectOnly),
    /// Revoke an enrollment token by id.
    Revoke(TokenIdArgs),
}

#[derive(Debug, Subcommand)]
pub enum OperatorTokenCommand {
    /// Create an operator token with a role; prints the secret once.
    Create(OperatorCreateArgs),
    /// List operator tokens (never their secrets).
    List(ConnectOnly),
    /// Revoke an operator token by id.
    Revoke(TokenIdArgs),
}

#[derive(Debug, Args)]
pub struct ConnectOnly {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct TokenIdArgs {
    /// The token id (et-... or ot-...), not the secret.
    pub id: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct EnrollCreateArgs {
    /// A label every site enrolled with this token gets; repeat.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Only this site id may enroll with the token.
    #[arg(long)]
    pub site: Option<String>,
    /// How many enrollments the token allows.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Validity, e.g. 30m, 24h, 7d.
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub expires_in: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct OperatorCreateArgs {
    /// Who or what uses the token (shown in the audit log), e.g. ci-deploy.
    #[arg(long)]
    pub name: String,
    /// viewer, operator, release_manager or admin.
    #[arg(long, value_parser = parse_role)]
    pub role: api::OperatorRole,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn parse_role(s: &str) -> std::result::Result<api::OperatorRole, String> {
    api::OperatorRole::parse(s)
        .ok_or_else(|| format!("{s:?} is not a role: viewer, operator, release_manager or admin"))
}

/// `30s`, `10m`, `24h`, `7d` → seconds.
pub fn parse_secs(s: &str) -> Result<u64> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a duration; write it like 30m, 24h or 7d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("{s:?} is not a duration; write it like 30m, 24h or 7d"),
    };
    Ok(n * mult)
}

pub fn parse_labels(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--label {p:?} must be KEY=VALUE");
        };
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

pub fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Enroll(EnrollTokenCommand::Create(args)) => {
            let req = api::CreateEnrollmentToken {
                labels: parse_labels(&args.labels)?,
                site_id: args.site.clone(),
                expires_in_secs: Some(parse_secs(&args.expires_in)?),
                uses: Some(args.uses),
            };
            let client = Client::connect(&args.connect)?;
            let created: api::EnrollmentTokenCreated =
                client.post(paths::ENROLLMENT_TOKENS, &req)?;
            if args.connect.json {
                return output::json(&created);
            }
            output::line(&created.token)?;
            eprintln!(
                "enrollment token {} ({} use(s), expires {}): give the line above to `fleetwave-agent enroll --token`; it is not shown again",
                created.id,
                created.uses,
                output::time(created.expires_at)
            );
            Ok(())
        }
        TokenCommand::Enroll(EnrollTokenCommand::List(args)) => {
            let client = Client::connect(&args.connect)?;
            let list: api::EnrollmentTokenList = client.get(paths::ENROLLMENT_TOKENS)?;
            if args.connect.json {
                return output::json(&list);
            }
            let now = Timestamp::now();
            let mut t = Table::new(&["ID", "STATE", "USES LEFT", "EXPIRES", "SITE", "LABELS"]);
            for tok in &list.tokens {
                let state = if tok.revoked {
                    "revoked"
                } else if tok.expires_at <= now {
                    "expired"
                } else if tok.uses_left == 0 {
                    "used up"
                } else {
                    "usable"
                };
                t.row(vec![
                    tok.id.clone(),
                    state.into(),
                    format!("{}/{}", tok.uses_left, tok.uses_total),
                    output::time(tok.expires_at),
                    tok.site_id.clone().unwrap_or_else(|| "any".into()),
                    output::labels(&tok.labels),
                ]);
            }
            t.print()
        }
        TokenCommand::Enroll(EnrollTokenCommand::Revoke(args)) => {
            let client = Client::connect(&args.connect)?;
            client.post_empty::<()>(
                &format!("{}/{}/revoke", paths::ENROLLMENT_TOKENS, encode(&args.id)),
                None,
            )?;
            revoked(&args)
        }
        TokenCommand::Operator(OperatorTokenCommand::Create(args)) => {
            let req = api::CreateOperatorToken {
                name: args.name.clone(),
                role: args.role,
            };
            let client = Client::connect(&args.connect)?;
            let created: api::OperatorTokenCreated = client.post(paths::OPERATOR_TOKENS, &req)?;
            if args.connect.json {
                return output::json(&created);
            }
            output::line(&created.token)?;
            eprintln!(
                "operator token {} for {:?} with role {}: it is not shown again",
                created.id,
                created.name,
                created.role.as_str()
            );
            Ok(())
        }
        TokenCommand::Operator(OperatorTokenCommand::List(args)) => {
            let client = Client::connect(&args.connect)?;
            let list: api::OperatorTokenList = client.get(paths::OPERATOR_TOKENS)?;
            if args.connect.json {
                return output::json(&list);
            }
            let mut t = Table::new(&["ID", "NAME", "ROLE", "STATE", "CREATED", "BY"]);
            for tok in &list.tokens {
                t.row(vec![
                    tok.id.clone(),
                    tok.name.clone(),
                    tok.role.as_str().into(),
                    if tok.revoked { "revoked" } else { "active" }.into(),
                    output::time(tok.created_at),
                    tok.created_by.clone(),
                ]);
            }
            t.print()
        }
        TokenCommand::Operator(OperatorTokenCommand::Revoke(args)) => {
            let client = Client::connect(&args.connect)?;
            client.post_empty::<()>(
                &format!("{}/{}/revoke", paths::OPERATOR_TOKENS, encode(&args.id)),
                None,
            )?;
            revoked(&args)
        }
    }
}

fn revoked(args: &TokenIdArgs) -> Result<()> {
    if args.connect.json {
        return output::json(&serde_json::json!({ "id": args.id, "revoked": true }));
    }
    output::line(format!("revoked {}", args.id))
}

// ---------------------------------------------------------------------------------------
// audit

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many entries, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only entries older than this entry id (paging).
    #[arg(long)]
    pub before: Option<i64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn audit(args: AuditArgs) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let mut path = format!("{}?limit={}", paths::AUDIT, args.limit.clamp(1, 1000));
    if let Some(b) = args.before {
        path.push_str(&format!("&before={b}"));
    }
    let list: api::AuditList = client.get(&path)?;
    if args.connect.json {
        return output::json(&list);
    }
    let mut t = Table::new(&["ID", "AT", "ACTOR", "ACTION", "TARGET", "FROM", "DETAIL"]);
    for e in &list.entries {
        t.row(vec![
            e.id.to_string(),
            output::time(e.at),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone(),
            e.remote.clone(),
            e.detail.clone(),
        ]);
    }
    t.print()?;
    if let Some(next) = list.next_before {
        output::line(format!("older entries: --before {next}"))?;
    }
    Ok(())
}

/// Largest report file read (the coordinator's envelope limit, base64, and some room).
const MAX_REPORT_FILE_BYTES: u64 = 2 * 1024 * 1024;

fn import_reports(args: SiteImportReportsArgs) -> Result<()> {
    use anyhow::Context as _;
    use base64::Engine as _;
    use fleetwave_shared::protocol::report_file::{ReportFile, ReportImport};
    let path = &args.file;
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > MAX_REPORT_FILE_BYTES {
        bail!(
            "{} is {len} bytes, over the {MAX_REPORT_FILE_BYTES}-byte limit of a report file",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let envelope = fleetwave_shared::Envelope::from_json(&bytes).with_context(|| {
        format!(
            "{} is not a report file (a signed envelope from `fleetwave-agent export-reports`)",
            path.display()
        )
    })?;
    let site = match args.site {
        Some(site) => site,
        // Only to address the request: the coordinator verifies the signature first.
        None => base64::engine::general_purpose::STANDARD
            .decode(&envelope.payload)
            .ok()
            .and_then(|p| serde_json::from_slice::<ReportFile>(&p).ok())
            .map(|f| f.site_id)
            .with_context(|| format!("{} names no site: give --site ID", path.display()))?,
    };
    let client = Client::connect(&args.connect)?;
    let done: ReportImport = client.post(
        &format!("{}/{}/reports/import", paths::SITES, encode(&site)),
        &envelope,
    )?;
    if args.connect.json {
        return output::json(&done);
    }
    println!(
        "site {}: {} event(s) in the file, {} applied, {} already known",
        done.site_id, done.events, done.applied, done.duplicates
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_show_lists_each_box_of_a_site_with_its_state() {
        let now: Timestamp = "2026-12-05T07:00:00Z".parse().unwrap();
        assert_eq!(boxes_text(&[], now), "");
        let boxes = [
            api::SiteBoxInfo {
                box_id: "srv".into(),
                role: "server".into(),
                installed: [("k3s".to_string(), "1.31.2".to_string())].into(),
                phase: Some("committed".into()),
                last_report_at: Some("2026-12-05T06:59:00Z".parse().unwrap()),
                state: "succeeded".into(),
            },
            api::SiteBoxInfo {
                box_id: "agt-1".into(),
                role: String::new(),
                installed: Default::default(),
                phase: None,
                last_report_at: None,
                state: "waiting".into(),
            },
        ];
        let text = boxes_text(&boxes, now);
        assert!(text.starts_with("  boxes (in install order):\n"), "{text}");
        assert!(
            text.contains("    srv (server): succeeded; phase committed; installed k3s 1.31.2;"),
            "{text}"
        );
        assert!(
            text.contains("    agt-1 (no role): waiting; phase -; installed -;"),
            "{text}"
        );
    }

    #[test]
    fn durations_and_labels_parse_or_say_what_is_wrong() {
        assert_eq!(parse_secs("30m").unwrap(), 1800);
        assert_eq!(parse_secs("7d").unwrap(), 604800);
        assert!(parse_secs("ten").unwrap_err().to_string().contains("24h"));
        assert!(parse_secs("5").is_err());
        let l = parse_labels(&["cohort=pig".into(), "city=tulsa".into()]).unwrap();
        assert_eq!(l["cohort"], "pig");
        assert!(parse_labels(&["cohort".into()]).is_err());
    }
}
