//! `site import FILE --tokens-out FILE`: many sites at once from a CSV or JSON-lines file,
//! all or nothing (`POST /v1/sites/import`).
//!
//! The coordinator checks every line (and names each bad one); this command only reads the
//! file, refuses one over the coordinator's size limit before sending it, and writes the
//! enrollment tokens of the answer to the tokens file (mode 0600, never overwritten). It
//! never prints a token.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use fleetwave_shared::protocol::operator::{
    MAX_SITE_IMPORT_BYTES, SiteImport, SiteImportFormat, SiteImportResult, paths,
};

use super::sites::parse_secs;
use super::{Client, ConnectArgs, output};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// A header `site_id[,device_key][,label:KEY...]`, then one site per line.
    Csv,
    /// One JSON object per line: {"site_id", "labels", "device_key"}.
    Jsonl,
}

#[derive(Debug, Args)]
pub struct SiteImportArgs {
    /// The file: CSV (`site_id,label:region,label:tz,device_key`, one site per line) or
    /// JSON lines (`{"site_id": "...", "labels": {...}, "device_key": "<64 hex>"}`).
    /// A line with a device key pre-registers the site (its box opens sessions with that
    /// key); a line without gets a one-use enrollment token bound to the site and labels.
    pub file: PathBuf,
    /// Where to write the enrollment tokens: CSV `site_id,token`, mode 0600, a new file
    /// (never overwritten). The tokens are shown nowhere else.
    #[arg(long, value_name = "FILE")]
    pub tokens_out: PathBuf,
    /// The file's format (default: from its extension, .csv or .jsonl/.ndjson).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// How long the enrollment tokens are valid, e.g. 24h, 30d (at most 365d).
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub expires_in: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn format_of(args: &SiteImportArgs) -> Result<SiteImportFormat> {
    if let Some(f) = args.format {
        return Ok(match f {
            FormatArg::Csv => SiteImportFormat::Csv,
            FormatArg::Jsonl => SiteImportFormat::Jsonl,
        });
    }
    let ext = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv") => Ok(SiteImportFormat::Csv),
        Some("jsonl" | "ndjson") => Ok(SiteImportFormat::Jsonl),
        _ => bail!(
            "cannot tell the format of {} from its name: give --format csv or --format jsonl",
            args.file.display()
        ),
    }
}

/// Creates the tokens file (0600, refusing an existing one) before anything is sent, so
/// that an import never makes tokens with nowhere to put them.
fn create_tokens_file(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).with_context(|| {
        format!(
            "cannot create the tokens file {} (it is never overwritten: give a new name)",
            path.display()
        )
    })
}

pub fn site_import(args: SiteImportArgs) -> Result<()> {
    let format = format_of(&args)?;
    let expires_in_secs = parse_secs(&args.expires_in)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {} (UTF-8 text)", args.file.display()))?;
    let request = SiteImport {
        format,
        text,
        expires_in_secs: Some(expires_in_secs),
    };
    let size = serde_json::to_vec(&request)?.len();
    if size > MAX_SITE_IMPORT_BYTES {
        bail!(
            "{} makes a {} MiB request, over the coordinator's limit of {} MiB: split it into \
             smaller files (each is imported all or nothing)",
            args.file.display(),
            size.div_ceil(1024 * 1024),
            MAX_SITE_IMPORT_BYTES / (1024 * 1024)
        );
    }
    let client = Client::connect(&args.connect)?;
    let mut out = create_tokens_file(&args.tokens_out)?;
    let result: SiteImportResult = match client.post(paths::SITE_IMPORT, &request) {
        Ok(r) => r,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&args.tokens_out);
            return Err(e);
        }
    };
    let mut text = String::from("site_id,token\n");
    for t in &result.tokens {
        text.push_str(&format!("{},{}\n", t.site_id, t.token));
    }
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| {
            format!(
                "import {} is stored, but its tokens could not be written to {}: revoke them \
                 (`fleetwave token enroll list`) and import those sites again",
                result.import_id,
                args.tokens_out.display()
            )
        })?;
    if args.connect.json {
        return output::json(&serde_json::json!({
            "import_id": result.import_id,
            "sites": result.sites,
            "registered": result.registered,
            "tokens": result.tokens.len(),
            "tokens_out": args.tokens_out,
            "tokens_expire_at": result.tokens_expire_at,
        }));
    }
    output::line(format!(
        "imported {} site(s) (import {}): {} pre-registered with their device keys, {} \
         enrollment token(s) written to {}{}",
        result.sites,
        result.import_id,
        result.registered,
        result.tokens.len(),
        args.tokens_out.display(),
        result
            .tokens_expire_at
            .map(|t| format!(" (one use each, expire {})", output::time(t)))
            .unwrap_or_default()
    ))
}
