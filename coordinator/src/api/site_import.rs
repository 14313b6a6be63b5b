//! `POST /v1/sites/import`: many sites at once, from a CSV or JSON-lines file, all or
//! nothing.
//!
//! Each line either pre-registers a site with its device key (active at once; the box
//! opens sessions with that key, no token) or, without a key, gets a one-use enrollment
//! token bound to the site and its labels. The whole file is checked first ([`parse`]:
//! site ids, labels and keys by the same rules as enrollment and tokens, duplicates in the
//! file; then sites that exist already) and a refusal names every bad line and field.
//! Then it is stored one transaction per [`IMPORT_CHUNK`] lines, so that agents' reports
//! are written between chunks; a chunk that still finds one of its sites taken (an agent
//! enrolled it meanwhile) removes what the earlier chunks stored, so that nothing of the
//! import stays. One audit entry per import, with its counts.
//!
//! It never shows a token anywhere but in its answer, and never replaces an enrolled
//! site's key (that is `rekey`).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fleetwave_shared::keys::{KeyError, canonical_bytes, parse_public_key};
use fleetwave_shared::protocol::operator::{
    self as wire, MAX_SITE_IMPORT_BYTES, Permission, SiteImport, SiteImportFormat, SiteImportResult,
};
use serde::Deserialize;

use super::agent::valid_site_id;
use super::operator::{label_problem, new_enrollment_token, token_expiry};
use crate::error::{ApiError, ApiJson};
use crate::http::auth::{Operator, token_hash};
use crate::state::{AppState, random_hex};
use crate::store::{ImportedSite, ImportedToken, StoreError};

/// Lines stored per transaction.
pub const IMPORT_CHUNK: usize = 5_000;

/// Problems listed in a refusal; the rest are counted.
const LISTED_PROBLEMS: usize = 20;

/// One site of an import file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportLine {
    /// The line's number in the file, from 1.
    pub line: usize,
    pub site_id: String,
    pub labels: BTreeMap<String, String>,
    /// The device public key, 64 lowercase hex; None: the site gets an enrollment token.
    pub device_key: Option<String>,
}

/// What is wrong with one line of an import file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    pub line: usize,
    /// The field at fault: `site_id`, `device_key`, `label:KEY` (CSV), `labels.KEY`
    /// (JSON lines), `header` or `line`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for LineProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, {}: {}", self.line, self.field, self.message)
    }
}

fn problem(line: usize, field: impl Into<String>, message: impl Into<String>) -> LineProblem {
    LineProblem {
        line,
        field: field.into(),
        message: message.into(),
    }
}

/// The file's lines that say something: numbered from 1, without blank lines and `#`
/// comments, without a trailing `\r`.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        })
}

/// Checks an import file: every site id, label and key, and that no site id or key
/// appears twice. Returns the sites in file order, or every problem found.
pub fn parse(format: SiteImportFormat, text: &str) -> Result<Vec<ImportLine>, Vec<LineProblem>> {
    let (lines, mut problems) = match format {
        SiteImportFormat::Csv => parse_csv(text)?,
        SiteImportFormat::Jsonl => parse_jsonl(text),
    };
    if lines.is_empty() && problems.is_empty() {
        return Err(vec![problem(
            0,
            "file",
            "the file lists no sites (blank lines and # comments are skipped)",
        )]);
    }
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(lines.len());
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for l in &lines {
        let first = *ids.entry(&l.site_id).or_insert(l.line);
        if first != l.line {
            problems.push(problem(
                l.line,
                "site_id",
                format!("site {} is listed twice (first on line {first})", l.site_id),
            ));
        }
        if let Some(key) = &l.device_key {
            let first = *keys.entry(key).or_insert(l.line);
            if first != l.line {
                problems.push(problem(
                    l.line,
                    "device_key",
                    format!("the same device key is on line {first}: every box has its own key"),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(lines)
    } else {
        problems.sort_by_key(|p| p.line);
        Err(problems)
    }
}

/// Checks one site's fields; `label_field` names a label in a problem.
fn check_site(
    line: usize,
    site_id: &str,
    labels: BTreeMap<String, String>,
    device_key: Option<&str>,
    label_field: impl Fn(&str) -> String,
    problems: &mut Vec<LineProblem>,
) -> Option<ImportLine> {
    let before = problems.len();
    if !valid_site_id(site_id) {
        problems.push(problem(
            line,
            "site_id",
            format!("{site_id:?} must match [a-z0-9][a-z0-9._-]{{0,62}}"),
        ));
    }
    for (k, v) in &labels {
        if let Some(p) = label_problem(k, v) {
            problems.push(problem(line, label_field(k), p));
        }
    }
    let device_key = match device_key {
        None => None,
        Some(hex) => match parse_public_key(hex) {
            Ok(key) => Some(hex::encode(canonical_bytes(&key))),
            Err(e) => {
                let why = match e {
                    KeyError::BadPublicHex => "is not 64 lowercase hex characters",
                    KeyError::WeakKey => "is a weak (small-order) key",
                    KeyError::NonCanonical => "is not the canonical encoding of its point",
                    _ => "is not a valid point",
                };
                problems.push(problem(
                    line,
                    "device_key",
                    format!("{why}: it must be the box's ed25519 public key in hex"),
                ));
                None
            }
        },
    };
    (problems.len() == before).then(|| ImportLine {
        line,
        site_id: site_id.to_string(),
        labels,
        device_key,
    })
}

/// The header's columns.
enum Column {
    SiteId,
    DeviceKey,
    Label(String),
}

type Parsed = (Vec<ImportLine>, Vec<LineProblem>);

fn parse_csv(text: &str) -> Result<Parsed, Vec<LineProblem>> {
    let mut rows = content_lines(text);
    let Some((header_line, header)) = rows.next() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut columns = Vec::new();
    let mut header_problems = Vec::new();
    for name in header.split(',').map(str::trim) {
        let column = match name {
            "site_id" => Column::SiteId,
            "device_key" => Column::DeviceKey,
            _ => match name.strip_prefix("label:") {
                Some(key) => {
                    if let Some(p) = label_problem(key, "") {
                        header_problems.push(problem(header_line, "header", p));
                    }
                    Column::Label(key.to_string())
                }
                None => {
                    header_problems.push(problem(
                        header_line,
                        "header",
                        format!(
                            "unknown column {name:?}: the columns are site_id, device_key \
                             (optional) and label:KEY (one per label)"
                        ),
                    ));
                    continue;
                }
            },
        };
        columns.push((name, column));
    }
    for (i, (name, _)) in columns.iter().enumerate() {
        if columns[..i].iter().any(|(n, _)| n == name) {
            header_problems.push(problem(
                header_line,
                "header",
                format!("column {name:?} appears twice"),
            ));
        }
    }
    if !columns.iter().any(|(_, c)| matches!(c, Column::SiteId)) {
        header_problems.push(problem(
            header_line,
            "header",
            "no site_id column: the first line must name the columns, e.g. \
             site_id,label:region,label:tz",
        ));
    }
    if !header_problems.is_empty() {
        return Err(header_problems);
    }
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for (n, row) in rows {
        let cells: Vec<&str> = row.split(',').map(str::trim).collect();
        if cells.len() != columns.len() {
            problems.push(problem(
                n,
                "line",
                format!(
                    "{} fields, but the header (line {header_line}) names {}",
                    cells.len(),
                    columns.len()
                ),
            ));
            continue;
        }
        if cells.iter().any(|c| c.contains('"')) {
            problems.push(problem(
                n,
                "line",
                "quoted fields are not read: no site id, label or key contains a comma, \
                 so write the values without quotes",
            ));
            continue;
        }
        let (mut site_id, mut device_key, mut labels) = ("", None, BTreeMap::new());
        for ((_, column), cell) in columns.iter().zip(&cells) {
            match column {
                Column::SiteId => site_id = cell,
                Column::DeviceKey if !cell.is_empty() => device_key = Some(*cell),
                Column::DeviceKey => {}
                Column::Label(_) if cell.is_empty() => {}
                Column::Label(k) => {
                    labels.insert(k.clone(), cell.to_string());
                }
            }
        }
        if let Some(line) = check_site(
            n,
            site_id,
            labels,
            device_key,
            |k| format!("label:{k}"),
            &mut problems,
        ) {
            lines.push(line);
        }
    }
    Ok((lines, problems))
}

/// One line of a JSON-lines import.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSite {
    site_id: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    device_key: Option<String>,
}

fn parse_jsonl(text: &str) -> Parsed {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for (n, row) in content_lines(text) {
        let site: JsonSite = match serde_json::from_str(row) {
            Ok(s) => s,
            Err(e) => {
                problems.push(problem(
                    n,
                    "line",
                    format!("not a site object {{\"site_id\", \"labels\", \"device_key\"}}: {e}"),
                ));
                continue;
            }
        };
        if let Some(line) = check_site(
            n,
            &site.site_id,
            site.labels,
            site.device_key.as_deref(),
            |k| format!("labels.{k}"),
            &mut problems,
        ) {
            lines.push(line);
        }
    }
    (lines, problems)
}

/// 422 `invalid_import`: the problems, the first [`LISTED_PROBLEMS`] in words.
fn refused(problems: &[LineProblem]) -> ApiError {
    let mut listed: Vec<String> = problems
        .iter()
        .take(LISTED_PROBLEMS)
        .map(ToString::to_string)
        .collect();
    if problems.len() > LISTED_PROBLEMS {
        listed.push(format!(
            "and {} more problem(s)",
            problems.len() - LISTED_PROBLEMS
        ));
    }
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_import",
        format!(
            "the import was refused and nothing was stored: {}",
            listed.join("; ")
        ),
    )
}

fn already_enrolled(line: usize, site: &str) -> LineProblem {
    problem(
        line,
        "site_id",
        format!(
            "site {site} is already enrolled (an enrolled site's key is replaced only with \
             `fleetwave site rekey {site}`)"
        ),
    )
}

/// `POST /v1/sites/import`.
pub async fn import_sites(
    State(app): State<AppState>,
    op: Operator,
    req: Result<ApiJson<SiteImport>, ApiError>,
) -> Result<(StatusCode, Json<SiteImportResult>), ApiError> {
    op.require(Permission::Operate)?;
    let ApiJson(req) = req.map_err(|e| match e.status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            e.status,
            "payload_too_large",
            format!(
                "a site import is at most {} MiB: split the file into smaller files \
                 (each is imported all or nothing)",
                MAX_SITE_IMPORT_BYTES / (1024 * 1024)
            ),
        ),
        _ => e,
    })?;
    let now = app.now();
    let format = req.format;
    let lines = tokio::task::spawn_blocking(move || parse(format, &req.text))
        .await
        .map_err(|e| ApiError::internal(format!("the import check failed: {e}")))?
        .map_err(|p| refused(&p))?;
    let line_of: HashMap<String, usize> =
        lines.iter().map(|l| (l.site_id.clone(), l.line)).collect();
    let ids: Vec<String> = lines.iter().map(|l| l.site_id.clone()).collect();
    let existing = app.db.run(move |s| s.existing_sites(&ids)).await?;
    if !existing.is_empty() {
        let mut problems: Vec<LineProblem> = existing
            .iter()
            .map(|id| already_enrolled(line_of[id], id))
            .collect();
        problems.sort_by_key(|p| p.line);
        return Err(refused(&problems));
    }
    let needs_tokens = lines.iter().any(|l| l.device_key.is_none());
    let expires_at = token_expiry(now, req.expires_in_secs)?;
    let actor = op.actor();
    let import_id = format!("imp-{}", random_hex(6));
    // Each chunk: its sites with keys, its tokens, and the tokens' secrets by site.
    let chunks = tokio::task::spawn_blocking(move || {
        lines
            .chunks(IMPORT_CHUNK)
            .map(|chunk| {
                let mut sites = Vec::new();
                let mut tokens = Vec::new();
                let mut secrets = Vec::new();
                for l in chunk {
                    match &l.device_key {
                        Some(key) => sites.push(ImportedSite {
                            id: l.site_id.clone(),
                            device_key: key.clone(),
                            labels: l.labels.clone(),
                            at: now,
                        }),
                        None => {
                            let (record, secret) = new_enrollment_token(
                                l.labels.clone(),
                                Some(l.site_id.clone()),
                                1,
                                now,
                                expires_at,
                                actor.clone(),
                            );
                            tokens.push(ImportedToken {
                                token_hash: token_hash(&secret),
                                record,
                            });
                            secrets.push(wire::ImportedToken {
                                site_id: l.site_id.clone(),
                                token: secret,
                            });
                        }
                    }
                }
                (sites, tokens, secrets)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("the import failed: {e}")))?;
    let total: u64 = chunks
        .iter()
        .map(|(s, t, _)| (s.len() + t.len()) as u64)
        .sum();
    let mut stored_sites: Vec<String> = Vec::new();
    let mut stored_tokens: Vec<String> = Vec::new();
    let mut answer_tokens = Vec::new();
    for (sites, tokens, secrets) in chunks {
        let site_ids: Vec<String> = sites.iter().map(|s| s.id.clone()).collect();
        let token_ids: Vec<String> = tokens.iter().map(|t| t.record.id.clone()).collect();
        let stored = app.db.run(move |s| s.import_sites(&sites, &tokens)).await;
        if let Err(e) = stored {
            let (undo_sites, undo_tokens) = (stored_sites.clone(), stored_tokens.clone());
            let undone = app
                .db
                .run(move |s| s.undo_site_import(&undo_sites, &undo_tokens))
                .await;
            return Err(match (e, undone) {
                (StoreError::SiteExists(site), Ok(())) => {
                    refused(&[already_enrolled(line_of[&site], &site)])
                }
                (e, Ok(())) => e.into(),
                (e, Err(undo)) => ApiError::internal(format!(
                    "import {import_id} failed part way ({e}) and what it stored could not be \
                     removed ({undo}): {} sites and {} enrollment tokens of it are stored; \
                     revoke the tokens and decommission the sites, or restore a backup",
                    stored_sites.len(),
                    stored_tokens.len()
                )),
            });
        }
        stored_sites.extend(site_ids);
        stored_tokens.extend(token_ids);
        answer_tokens.extend(secrets);
    }
    let registered = stored_sites.len() as u64;
    op.audit(
        &app,
        "site.import",
        &import_id,
        format!(
            "{total} sites from a {} file: {registered} pre-registered with device keys, {} \
             enrollment tokens (one use each{})",
            match format {
                SiteImportFormat::Csv => "CSV",
                SiteImportFormat::Jsonl => "JSON lines",
            },
            stored_tokens.len(),
            if needs_tokens {
                format!(", expire {expires_at}")
            } else {
                String::new()
            }
        ),
    )
    .await?;
    if registered > 0 {
        join_rollouts(&app, &stored_sites).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(SiteImportResult {
            import_id,
            sites: total,
            registered,
            tokens: answer_tokens,
            tokens_expire_at: needs_tokens.then_some(expires_at),
        }),
    ))
}

/// Pre-registered sites join the active rollouts that select them, as enrolled sites
/// do; with no active rollout (a fleet being seeded) only a convergence pass is asked
/// for, so that channels take them.
async fn join_rollouts(app: &AppState, sites: &[String]) -> Result<(), ApiError> {
    let rollouts = app.db.run(|s| s.list_rollouts()).await?;
    if rollouts.iter().any(|r| r.status.is_active()) {
        for site in sites {
            app.engine.join_rollouts(site).await?;
        }
    }
    app.engine.converge_soon();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const KEY2: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";

    fn csv(text: &str) -> Result<Vec<ImportLine>, Vec<LineProblem>> {
        parse(SiteImportFormat::Csv, text)
    }

    #[test]
    fn csv_lines_with_and_without_keys() {
        let lines = csv(&format!(
            "site_id,label:region,device_key,label:tz\r\n\n# a comment\nstore-1,eu,{KEY},Europe/Paris\nstore-2,us,,\n"
        ))
        .unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].line, 4);
        assert_eq!(lines[0].device_key.as_deref(), Some(KEY));
        assert_eq!(lines[0].labels["tz"], "Europe/Paris");
        assert_eq!(lines[1].device_key, None);
        assert_eq!(
            lines[1].labels,
            BTreeMap::from([("region".to_string(), "us".to_string())])
        );
    }

    #[test]
    fn every_bad_line_is_named_with_its_field() {
        let problems = csv(&format!(
            "site_id,label:region,device_key\nStore-1,eu,\nstore-2,a=b,\nstore-3,eu,abc\nstore-2,eu,\nstore-4,eu\nstore-5,eu,{KEY}\nstore-6,eu,{KEY}\n"
        ))
        .unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 5, "{text:#?}");
        assert!(
            text[0].starts_with("line 2, site_id: \"Store-1\""),
            "{}",
            text[0]
        );
        assert!(text[1].starts_with("line 3, label:region:"), "{}", text[1]);
        assert!(text[2].starts_with("line 4, device_key:"), "{}", text[2]);
        assert!(
            text[3].starts_with("line 6, line: 2 fields, but the header"),
            "{}",
            text[3]
        );
        assert_eq!(
            text[4],
            "line 8, device_key: the same device key is on line 7: every box has its own key"
        );
        // store-2 twice: the second is refused only when the first was readable.
        let dup = csv("site_id\nstore-2\nstore-2\n").unwrap_err();
        assert_eq!(
            dup[0].to_string(),
            "line 3, site_id: site store-2 is listed twice (first on line 2)"
        );
    }

    #[test]
    fn headers_that_do_not_name_the_columns_are_refused() {
        let p = csv("region,site\nstore-1,eu\n").unwrap_err();
        assert!(
            p.iter()
                .any(|p| p.message.contains("unknown column \"region\""))
        );
        assert!(p.iter().any(|p| p.message.contains("no site_id column")));
        let p = csv("site_id,label:a,label:a\n").unwrap_err();
        assert!(p[0].message.contains("appears twice"), "{:?}", p);
        let p = csv("# only a comment\n").unwrap_err();
        assert!(p[0].message.contains("no sites"), "{:?}", p);
    }

    #[test]
    fn json_lines() {
        let text = format!(
            "{{\"site_id\":\"store-1\",\"labels\":{{\"region\":\"eu\"}},\"device_key\":\"{KEY2}\"}}\n{{\"site_id\":\"store-2\"}}\n{{\"site_id\":\"store-3\",\"colour\":\"red\"}}\n{{\"site_id\":\"store-4\",\"labels\":{{\"re gion\":\"eu\"}}}}\n"
        );
        let p = parse(SiteImportFormat::Jsonl, &text).unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].line, p[0].field.as_str()), (3, "line"));
        assert!(p[0].message.contains("unknown field `colour`"), "{p:?}");
        assert_eq!((p[1].line, p[1].field.as_str()), (4, "labels.re gion"));
        let ok = parse(
            SiteImportFormat::Jsonl,
            text.lines().take(2).collect::<Vec<_>>().join("\n").as_str(),
        )
        .unwrap();
        assert_eq!(ok[0].device_key.as_deref(), Some(KEY2));
        assert_eq!(ok[1].labels, BTreeMap::new());
    }
}
