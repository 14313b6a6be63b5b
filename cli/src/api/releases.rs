//! `release publish|list|show`, `artifact upload` and `root publish|list`: putting signed
//! documents and artifacts on the coordinator, and reading back what it holds.
//!
//! Envelopes are sent exactly as signed offline (the coordinator verifies them against the
//! fleet root and refuses what does not verify); artifacts are hashed locally and streamed.
//! This module never signs anything and never reads a private key.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::{self as api, paths};

use super::output::{self, Table};
use super::{Client, ConnectArgs, encode};

#[derive(Debug, Args)]
pub struct EnvelopeFileArgs {
    /// The signed envelope (JSON) as written by `fleetwave release sign` / `root sign`.
    #[arg(value_name = "ENVELOPE")]
    pub envelope: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ReleaseShowArgs {
    /// The release id, e.g. pos-2.4.0.
    pub release: String,
    /// Also print the signed envelope.
    #[arg(long)]
    pub envelope: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct ArtifactUploadArgs {
    /// The artifact file (e.g. a .tar.gz); streamed, never loaded whole.
    pub file: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn read_envelope(path: &PathBuf) -> Result<Envelope> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Envelope::from_json(&bytes)
        .with_context(|| format!("{} is not a DSSE envelope", path.display()))
}

pub fn release_publish(args: EnvelopeFileArgs) -> Result<()> {
    let envelope = read_envelope(&args.envelope)?;
    let client = Client::connect(&args.connect)?;
    let info: api::ReleaseInfo = client.post(paths::RELEASES, &envelope)?;
    if args.connect.json {
        return output::json(&info);
    }
    output::line(format!(
        "published release {} ({} {}, kind {}, counter {}); digest {}",
        info.id, info.name, info.version, info.kind, info.counter, info.digest
    ))
}

pub fn release_list(args: ListArgs) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let list: api::ReleaseList = client.get(paths::RELEASES)?;
    if args.connect.json {
        return output::json(&list);
    }
    let mut t = Table::new(&[
        "RELEASE",
        "STREAM",
        "VERSION",
        "KIND",
        "COUNTER",
        "PUBLISHED",
        "BY",
    ]);
    for r in &list.releases {
        t.row(vec![
            r.id.clone(),
            r.name.clone(),
            r.version.clone(),
            r.kind.clone(),
            r.counter.to_string(),
            output::time(r.published_at),
            r.published_by.clone(),
        ]);
    }
    t.print()
}

pub fn release_show(args: ReleaseShowArgs) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let r: api::ReleaseInfo =
        client.get(&format!("{}/{}", paths::RELEASES, encode(&args.release)))?;
    if args.connect.json {
        return output::json(&r);
    }
    let mut text = format!(
        "release {}\n  stream:     {}\n  version:    {}\n  kind:       {}\n  counter:    {}\n  digest:     {}\n  published:  {} by {}\n",
        r.id,
        r.name,
        r.version,
        r.kind,
        r.counter,
        r.digest,
        output::time(r.published_at),
        r.published_by
    );
    // The payload the release managers signed (shown, not verified here: the coordinator
    // verified it when it was published, and every agent verifies it again).
    if let Ok(payload) = STANDARD.decode(&r.envelope.payload)
        && let Ok(doc) = serde_json::from_slice::<fleetwave_shared::docs::Release>(&payload)
    {
        text.push_str(&format!(
            "  expires:    {}\n  artifacts:\n",
            output::time(doc.expires)
        ));
        for a in &doc.artifacts {
            text.push_str(&format!(
                "    {}  {} bytes  sha256 {}  {}\n",
                a.name, a.length, a.sha256, a.url
            ));
        }
    }
    print!("{text}");
    if args.envelope {
        output::json(&r.envelope)?;
    }
    Ok(())
}

pub fn artifact_upload(args: ArtifactUploadArgs) -> Result<()> {
    let (_, sha256) = crate::manifest::hash_file(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let client = Client::connect(&args.connect)?;
    let info: api::ArtifactInfo =
        client.put_file(&format!("/v1/artifacts/{sha256}"), &args.file)?;
    if args.connect.json {
        return output::json(&info);
    }
    output::line(format!("sha256 {}", info.sha256))?;
    output::line(format!("length {}", info.length))?;
    output::line(format!("url    {}", info.url))?;
    eprintln!(
        "uploaded {}: in a release manifest write url = \"{}\" (or \"/v1/artifacts/{{sha256}}\" with file = \"{}\")",
        args.file.display(),
        info.url,
        args.file.display()
    );
    Ok(())
}

pub fn root_publish(args: EnvelopeFileArgs) -> Result<()> {
    let envelope = read_envelope(&args.envelope)?;
    let client = Client::connect(&args.connect)?;
    let info: api::RootInfo = client.post(paths::ROOTS, &envelope)?;
    if args.connect.json {
        return output::json(&info);
    }
    output::line(format!(
        "published root version {} (expires {}); agents follow it on their next poll",
        info.version,
        output::time(info.expires)
    ))
}

pub fn root_list(args: ListArgs) -> Result<()> {
    let client = Client::connect(&args.connect)?;
    let list: api::RootList = client.get(paths::ROOTS)?;
    if args.connect.json {
        return output::json(&list);
    }
    let mut t = Table::new(&["VERSION", "EXPIRES"]);
    for r in &list.roots {
        t.row(vec![r.version.to_string(), output::time(r.expires)]);
    }
    t.print()
}
