//! Replacing a single executable atomically while keeping the previous one, shared by the
//! Kubernetes executor (the k3s binary) and the agent's self-update.
//!
//! Files beside `<binary>`: `<binary>.fleetwave-new` (the verified new binary, staged on
//! the same filesystem), `<binary>.previous` (the one it replaced). Every change is a
//! rename of a fully written, synced file; this module never writes `<binary>` in place.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::app::blocking;
use super::{ExecError, Step};

fn with_suffix(binary: &Path, suffix: &str) -> PathBuf {
    let mut s = binary.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<binary>.fleetwave-new`.
pub fn new_path(binary: &Path) -> PathBuf {
    with_suffix(binary, ".fleetwave-new")
}

/// `<binary>.previous`.
pub fn previous_path(binary: &Path) -> PathBuf {
    with_suffix(binary, ".previous")
}

/// Lowercase hex SHA-256 of a file, or `None` if it cannot be read.
pub async fn file_sha256(path: &Path) -> Option<String> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&p).ok()?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).ok()?;
        Some(hex::encode(h.finalize()))
    })
    .await
    .ok()
    .flatten()
}

/// Copies `from` to `to` through a temp file (mode 0755, synced) and renames it into place.
async fn copy_into_place(from: &Path, to: &Path) -> Result<(), ExecError> {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    blocking(move || {
        let tmp = with_suffix(&to, ".fleetwave-tmp");
        std::fs::copy(&from, &tmp).map_err(|e| ExecError::io("copying to", &tmp, e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| ExecError::io("setting the mode of", &tmp, e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| ExecError::io("syncing", &tmp, e))?;
        std::fs::rename(&tmp, &to).map_err(|e| ExecError::io("renaming", &to, e))?;
        if let Some(dir) = to.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    })
    .await
}

/// Stages the verified artifact as `<binary>.fleetwave-new` unless `<binary>` or the staged
/// file already has `sha256`.
pub async fn stage(binary: &Path, verified_artifact: &Path, sha256: &str) -> Result<(), ExecError> {
    if file_sha256(binary).await.as_deref() == Some(sha256)
        || file_sha256(&new_path(binary)).await.as_deref() == Some(sha256)
    {
        return Ok(());
    }
    copy_into_place(verified_artifact, &new_path(binary)).await
}

/// Puts the staged binary in place, copying the running one to `<binary>.previous` first.
/// Returns false when `<binary>` already had `sha256` (nothing to do).
pub async fn replace(binary: &Path, sha256: &str, step: Step) -> Result<bool, ExecError> {
    let current = file_sha256(binary).await;
    if current.as_deref() == Some(sha256) {
        return Ok(false);
    }
    let staged = new_path(binary);
    if file_sha256(&staged).await.as_deref() != Some(sha256) {
        return Err(ExecError::Failed {
            step,
            message: format!(
                "{} is missing or not the verified artifact; run prepare",
                staged.display()
            ),
        });
    }
    let previous = previous_path(binary);
    if let Some(cur) = &current
        && file_sha256(&previous).await.as_deref() != Some(cur.as_str())
    {
        copy_into_place(binary, &previous).await?;
    }
    tokio::fs::rename(&staged, binary)
        .await
        .map_err(|e| ExecError::io("renaming into place", binary, e))?;
    if let Some(dir) = binary.parent() {
        super::download::sync_dir(dir).await;
    }
    Ok(true)
}

/// Puts `<binary>.previous` back. Returns false when `<binary>` already is that file.
pub async fn restore_previous(binary: &Path, step: Step) -> Result<bool, ExecError> {
    let previous = previous_path(binary);
    let Some(prev) = file_sha256(&previous).await else {
        return Err(ExecError::Failed {
            step,
            message: format!("no previous binary to restore at {}", previous.display()),
        });
    };
    if file_sha256(binary).await.as_deref() == Some(prev.as_str()) {
        return Ok(false);
    }
    copy_into_place(&previous, binary).await?;
    Ok(true)
}

/// Removes a leftover staged binary (after commit).
pub async fn clean_staged(binary: &Path) {
    let _ = tokio::fs::remove_file(new_path(binary)).await;
}
