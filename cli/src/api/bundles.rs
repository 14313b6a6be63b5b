//! `bundle export`: a bundle file for air-gapped sites, carried to them on a USB stick and
//! imported there with `fleetwave-agent import-bundle FILE`.
//!
//! Requests and printing only; which sites, which assignments and every limit are the
//! coordinator's.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use fleetwave_shared::protocol::bundle::{BUNDLE_SITES_HEADER, ExportBundle};

use super::output;
use super::sites::parse_labels;
use super::{Client, ConnectArgs};

const EXPORT_EXAMPLES: &str = "\
Examples:
  fleetwave bundle export --site store-0042 --out store-0042.fwbundle
  fleetwave bundle export --rollout ro-3f9c2a1b --wave 1 --label region=north --out north.fwbundle

The file is a tar: manifest.json (with every entry's SHA-256 and size), the root chain,
the release, each site's signed assignment (valid for the plan's bundle_validity) and each
artifact once. On the box: fleetwave-agent import-bundle FILE.";

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Export a bundle for air-gapped sites (operator role): one site, or every site of a
    /// rollout's opened wave (optionally those with given labels).
    #[command(after_help = EXPORT_EXAMPLES)]
    Export(BundleExportArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["site", "rollout"])))]
pub struct BundleExportArgs {
    /// The site the bundle is for (its current assignment's rollout and wave).
    #[arg(long, value_name = "ID")]
    pub site: Option<String>,
    /// The rollout whose wave the bundle is for (with --wave).
    #[arg(long, value_name = "ID", requires = "wave")]
    pub rollout: Option<String>,
    /// The wave (from 0), with --rollout.
    #[arg(long, value_name = "N", requires = "rollout")]
    pub wave: Option<u32>,
    /// Only the wave's sites with this label (key=value; repeat for several).
    #[arg(long = "label", value_name = "KEY=VALUE", requires = "rollout")]
    pub labels: Vec<String>,
    /// Where to write the bundle (written to FILE.partial first).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn bundle(command: BundleCommand) -> Result<()> {
    match command {
        BundleCommand::Export(args) => export(args),
    }
}

fn export(args: BundleExportArgs) -> Result<()> {
    if args.out.is_dir() {
        bail!(
            "--out {} is a directory: name the bundle file",
            args.out.display()
        );
    }
    let req = ExportBundle {
        site: args.site.clone(),
        rollout: args.rollout.clone(),
        wave: args.wave,
        labels: parse_labels(&args.labels)?,
    };
    let client = Client::connect(&args.connect)?;
    let started = Instant::now();
    let (bytes, headers) = client.post_to_file("/v1/bundles", &req, &args.out)?;
    let elapsed = started.elapsed();
    let sites: u64 = headers
        .get(BUNDLE_SITES_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if args.connect.json {
        return output::json(&serde_json::json!({
            "file": args.out,
            "bytes": bytes,
            "sites": sites,
            "seconds": elapsed.as_secs_f64(),
        }));
    }
    println!(
        "wrote {} ({bytes} bytes, {:.1} MiB) for {sites} site(s) in {:.2} s",
        args.out.display(),
        bytes as f64 / (1024.0 * 1024.0),
        elapsed.as_secs_f64()
    );
    Ok(())
}
