//! `POST /v1/bundles`: a bundle file for air-gapped sites, streamed as a plain tar in the
//! layout `fleetwave-agent import-bundle` reads (docs/agent.md, "Air-gapped sites"):
//! `manifest.json` first, then the root chain from version 1, the release, each site's
//! assignment, and every artifact once under `artifacts/<sha256>`.
//!
//! Which sites and which assignments is the engine's (`engine::bundles`); this module only
//! checks that the coordinator holds every artifact and writes the file. It never reads a
//! whole artifact into memory.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleetwave_shared::Artifact;
use fleetwave_shared::protocol::bundle::{
    BUNDLE_FORMAT, BUNDLE_SITES_HEADER, ExportBundle, FileDigest, Manifest,
};
use fleetwave_shared::protocol::operator::Permission;
use futures_util::StreamExt as _;

use crate::error::{ApiError, ApiJson};
use crate::http::auth::Operator;
use crate::state::AppState;

/// Most bytes of artifacts one bundle may carry (16 GiB, what an agent reads of a bundle
/// before it has verified the release).
pub const MAX_BUNDLE_ARTIFACT_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// One tar entry: a document in memory, or an artifact read from the artifact directory.
enum Content {
    Bytes(Bytes),
    /// A stored artifact, by SHA-256, read from the artifact store.
    Artifact(String),
}

struct Entry {
    name: String,
    size: u64,
    content: Content,
}

/// Bytes a tar entry takes: its header and its content padded to 512-byte blocks.
fn entry_bytes(size: u64) -> u64 {
    512 + size.div_ceil(512) * 512
}

pub async fn export_bundle(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(req): ApiJson<ExportBundle>,
) -> Result<Response, ApiError> {
    op.require(Permission::Operate)?;
    let now = app.now();
    // Every stored artifact's length, read once (one listing of the object store), so that
    // the check below runs before the engine records the export.
    let stored = app.artifacts.inventory().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("artifact store: {e}"),
        )
        .with_retry_after(5)
    })?;
    let root = app
        .trust
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .current
        .clone();
    let roots = app
        .trust
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .envelopes
        .clone();
    let (docs, artifacts) = app
        .engine
        .export_bundle(&req, &op.actor(), |release| {
            stored_artifacts(&root, release, &stored, now)
        })
        .await?;

    let json = |bytes: Vec<u8>| Bytes::from(bytes);
    let mut entries: Vec<(String, Bytes)> = Vec::new();
    let mut manifest = Manifest {
        format: BUNDLE_FORMAT.to_string(),
        roots: Vec::new(),
        assignment: None,
        assignments: BTreeMap::new(),
        release: "release.json".into(),
        files: BTreeMap::new(),
    };
    for (i, env) in roots.iter().enumerate() {
        let name = format!("roots/{}.json", i + 1);
        manifest.roots.push(name.clone());
        entries.push((name, json(env.to_json())));
    }
    entries.push(("release.json".into(), json(docs.release.to_json())));
    let single = req.site.is_some();
    for (site, env) in &docs.assignments {
        let name = if single {
            "assignment.json".to_string()
        } else {
            format!("assignments/{site}.json")
        };
        if single {
            manifest.assignment = Some(name.clone());
        } else {
            manifest.assignments.insert(site.clone(), name.clone());
        }
        entries.push((name, json(env.to_json())));
    }
    let mut tar_entries = Vec::with_capacity(entries.len() + artifacts.len() + 1);
    for (name, b) in entries {
        manifest.files.insert(
            name.clone(),
            FileDigest {
                sha256: fleetwave_shared::sha256_hex(&b),
                size: b.len() as u64,
            },
        );
        tar_entries.push(Entry {
            name,
            size: b.len() as u64,
            content: Content::Bytes(b),
        });
    }
    for a in &artifacts {
        let name = format!("artifacts/{}", a.sha256);
        manifest.files.insert(
            name.clone(),
            FileDigest {
                sha256: a.sha256.clone(),
                size: a.length,
            },
        );
        tar_entries.push(Entry {
            name,
            size: a.length,
            content: Content::Artifact(a.sha256.clone()),
        });
    }
    let manifest_bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).expect("serializes"));
    tar_entries.insert(
        0,
        Entry {
            name: "manifest.json".into(),
            size: manifest_bytes.len() as u64,
            content: Content::Bytes(manifest_bytes),
        },
    );
    let mut headers = Vec::with_capacity(tar_entries.len());
    for e in &tar_entries {
        headers.push(tar_header(&e.name, e.size, now.as_second())?);
    }
    let total: u64 = tar_entries.iter().map(|e| entry_bytes(e.size)).sum::<u64>() + 1024;
    let sites = docs.assignments.len();
    let target = req.site.clone().unwrap_or_else(|| docs.rollout_id.clone());
    op.audit(
        &app,
        "bundle.export",
        &target,
        format!(
            "{sites} site(s) of rollout {} wave {}, {} artifact(s), {total} bytes, valid until {}",
            docs.rollout_id,
            docs.wave,
            artifacts.len(),
            docs.expires
        ),
    )
    .await?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let store = app.artifacts.clone();
    tokio::spawn(async move {
        if let Err(e) = write_tar(&store, tar_entries, headers, &tx).await {
            tracing::warn!("bundle export stopped: {e}");
            let _ = tx.send(Err(e)).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    h.insert(BUNDLE_SITES_HEADER, HeaderValue::from(sites));
    Ok(response)
}

/// The release's artifacts, each once, after checking that the release verifies against
/// the current root (as the agent will check it) and that the coordinator stores every
/// artifact with its signed length; at most [`MAX_BUNDLE_ARTIFACT_BYTES`] in all.
fn stored_artifacts(
    root: &fleetwave_shared::verify::Verified<fleetwave_shared::docs::Root>,
    release: &fleetwave_shared::Envelope,
    stored: &std::collections::HashMap<String, u64>,
    now: jiff::Timestamp,
) -> Result<Vec<Artifact>, String> {
    let verified = fleetwave_shared::verify::verify_release(root, release, now)
        .map_err(|e| format!("the release does not verify against the current root: {e}"))?;
    let release = verified.into_inner();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut total = 0u64;
    for a in release.artifacts {
        if !seen.insert(a.sha256.clone()) {
            continue;
        }
        match stored.get(&a.sha256) {
            Some(&len) if len == a.length => {}
            Some(&len) => {
                return Err(format!(
                    "artifact {} ({}) is stored here with {} bytes, the release signs {}: \
                     upload it again",
                    a.name, a.sha256, len, a.length
                ));
            }
            None => {
                return Err(format!(
                    "artifact {} ({}) is not stored on this coordinator (the release fetches it \
                     from {}): upload it (`fleetwave artifact upload`) to export a bundle",
                    a.name, a.sha256, a.url
                ));
            }
        }
        total = total.saturating_add(a.length);
        if total > MAX_BUNDLE_ARTIFACT_BYTES {
            return Err(format!(
                "the release's artifacts add up to more than {MAX_BUNDLE_ARTIFACT_BYTES} bytes, \
                 more than an agent reads of one bundle"
            ));
        }
        out.push(a);
    }
    Ok(out)
}

/// A ustar header for a regular file.
fn tar_header(name: &str, size: u64, mtime: i64) -> Result<[u8; 512], ApiError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).map_err(|e| {
        ApiError::bad_request(format!(
            "bundle entry {name:?} cannot be named in a tar: {e}"
        ))
    })?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime.max(0) as u64);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(*h.as_bytes())
}

/// Writes the tar stream to `tx`: each header, the content padded to 512 bytes, then the
/// two zero blocks that end a tar. An artifact that changed length on disk since the check
/// stops the stream (the agent would refuse the bundle anyway).
async fn write_tar(
    store: &crate::artifact_store::ArtifactStore,
    entries: Vec<Entry>,
    headers: Vec<[u8; 512]>,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), std::io::Error> {
    let send = |b: Bytes| async move {
        tx.send(Ok(b))
            .await
            .map_err(|_| std::io::Error::other("the client went away"))
    };
    for (e, h) in entries.into_iter().zip(headers) {
        send(Bytes::copy_from_slice(&h)).await?;
        match e.content {
            Content::Bytes(b) => send(b).await?,
            Content::Artifact(sha) => {
                let mut stream = store.read(&sha, 0, e.size).await?;
                let mut left = e.size;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    if chunk.len() as u64 > left {
                        return Err(std::io::Error::other(format!(
                            "artifact {sha} is longer than its signed length"
                        )));
                    }
                    left -= chunk.len() as u64;
                    send(chunk).await?;
                }
                if left > 0 {
                    return Err(std::io::Error::other(format!(
                        "artifact {sha} is shorter than its signed length"
                    )));
                }
            }
        }
        let pad = (512 - (e.size % 512) as usize) % 512;
        if pad > 0 {
            send(Bytes::from(vec![0u8; pad])).await?;
        }
    }
    send(Bytes::from(vec![0u8; 1024])).await
}
