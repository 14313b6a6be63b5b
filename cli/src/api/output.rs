//! How the online commands print: aligned plain-text tables and short lines for people,
//! pretty JSON for scripts (`--json`). Printing only; never decides anything.

use std::io::Write as _;

use anyhow::Result;
use jiff::Timestamp;
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints one line on stdout.
pub fn line(text: impl AsRef<str>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.as_ref())?;
    Ok(())
}

/// A plain table: a header row and rows, columns padded to the widest cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, with a trailing newline.
    pub fn render(&self, indent: &str) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i >= widths.len() {
                    widths.push(0);
                }
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::from(indent);
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(self.render("").as_bytes())?;
        Ok(())
    }
}

/// A timestamp to the second, UTC.
pub fn time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// An optional timestamp, `-` when absent.
pub fn opt_time(t: Option<Timestamp>) -> String {
    t.map(time).unwrap_or_else(|| "-".to_string())
}

/// How long ago, coarse: `4s ago`, `3m ago`, `2h ago`, `5d ago`.
pub fn ago(t: Option<Timestamp>, now: Timestamp) -> String {
    let Some(t) = t else {
        return "never".to_string();
    };
    let secs = now.duration_since(t).as_secs().max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// `k=v,k2=v2`, sorted by key.
pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_trailing_space() {
        let mut t = Table::new(&["ID", "STATE", "LABELS"]);
        t.row(vec!["pig-1".into(), "active".into(), "cohort=pig".into()]);
        t.row(vec!["general-10".into(), "-".into(), String::new()]);
        assert_eq!(
            t.render(""),
            "ID          STATE   LABELS\npig-1       active  cohort=pig\ngeneral-10  -\n"
        );
    }

    #[test]
    fn ago_is_coarse() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let t = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        assert_eq!(ago(t("2026-01-01T11:59:55Z"), now), "5s ago");
        assert_eq!(ago(t("2026-01-01T11:00:00Z"), now), "1h ago");
        assert_eq!(ago(None, now), "never");
    }
}
