//! Unpacking a verified artifact into a directory, refusing anything that could escape it.
//!
//! Refused, with the entry named: absolute paths, `..` components, entries written through
//! a symlink, symlinks that are absolute or point above the directory, hard links to
//! anything outside it, and device files, FIFOs or other special entries. Checks run
//! before each entry is written; the tar crate's own `unpack_in` guard runs as a second
//! layer. Blocking code: call it from `spawn_blocking`. Only ever called on files whose
//! length and SHA-256 were verified.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::ExecError;

/// The artifact's format (install parameter `format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A gzip-compressed tar archive.
    TarGz,
    /// A single file, copied as `file_name` with `mode`.
    File,
}

impl Format {
    /// From the install parameter, else from the artifact's name (`.tar.gz`/`.tgz` → tar.gz,
    /// anything else → a single file).
    pub fn pick(param: Option<&str>, artifact_name: &str) -> Result<Format, ExecError> {
        match param {
            Some("tar.gz") | Some("tgz") => Ok(Format::TarGz),
            Some("file") => Ok(Format::File),
            Some(other) => Err(ExecError::BadParams {
                key: "format".into(),
                message: format!("unknown format {other:?} (expected \"tar.gz\" or \"file\")"),
            }),
            None if artifact_name.ends_with(".tar.gz") || artifact_name.ends_with(".tgz") => {
                Ok(Format::TarGz)
            }
            None => Ok(Format::File),
        }
    }
}

fn unsafe_entry(artifact: &str, entry: &str, message: impl Into<String>) -> ExecError {
    ExecError::UnsafeArchive {
        artifact: artifact.to_string(),
        entry: entry.to_string(),
        message: message.into(),
    }
}

/// A relative path made only of normal components (`.` dropped), or why not.
fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(out)
}

/// Checks a symlink target: relative, `..` only as leading components, and not above the
/// root from the link's directory.
fn check_symlink_target(link_rel: &Path, target: &Path) -> Result<(), &'static str> {
    let depth = link_rel.components().count().saturating_sub(1);
    let mut ups = 0usize;
    let mut seen_normal = false;
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err("links to an absolute path"),
            Component::CurDir => {}
            Component::ParentDir => {
                if seen_normal {
                    return Err("links through '..' after a directory name");
                }
                ups += 1;
            }
            Component::Normal(_) => seen_normal = true,
        }
    }
    if ups > depth {
        return Err("links outside the install directory");
    }
    Ok(())
}

/// Refuses writing through a symlink: every existing ancestor of `rel` under `root` must be
/// a real directory.
fn check_no_symlink_ancestor(root: &Path, rel: &Path) -> Result<(), &'static str> {
    let mut p = root.to_path_buf();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() && i + 1 < n => {
                return Err("would be written through a symlink");
            }
            Ok(m) if m.file_type().is_symlink() => {
                // Replacing a symlink by a later entry of the same name is fine only if the
                // new entry is not written through it; tar removes it first.
            }
            Ok(m) if !m.is_dir() && i + 1 < n => return Err("has a file as a parent directory"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// Unpacks the tar.gz at `archive` into `dest` (which must exist and be empty). `artifact`
/// names the artifact in errors.
pub fn unpack_tar_gz(archive: &Path, dest: &Path, artifact: &str) -> Result<(), ExecError> {
    let file = fs::File::open(archive).map_err(|e| ExecError::io("opening", archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    tar.set_preserve_permissions(false);
    tar.set_preserve_ownerships(false);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    let entries = tar.entries().map_err(|e| corrupt(artifact, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(artifact, e))?;
        let raw = entry.path().map_err(|e| corrupt(artifact, e))?.into_owned();
        let shown = raw.display().to_string();
        let rel = safe_relative(&raw).map_err(|m| unsafe_entry(artifact, &shown, m))?;
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::Directory => {}
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| corrupt(artifact, e))?
                    .ok_or_else(|| {
                        unsafe_entry(artifact, &shown, "is a symlink without a target")
                    })?;
                check_symlink_target(&rel, &target).map_err(|m| {
                    unsafe_entry(artifact, &shown, format!("{m} ({})", target.display()))
                })?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| corrupt(artifact, e))?
                    .ok_or_else(|| {
                        unsafe_entry(artifact, &shown, "is a hard link without a target")
                    })?;
                let trel = safe_relative(&target)
                    .map_err(|m| unsafe_entry(artifact, &shown, format!("hard link target {m}")))?;
                check_no_symlink_ancestor(dest, &trel)
                    .map_err(|m| unsafe_entry(artifact, &shown, format!("hard link target {m}")))?;
                let meta = fs::symlink_metadata(dest.join(&trel)).map_err(|_| {
                    unsafe_entry(
                        artifact,
                        &shown,
                        "is a hard link to a file not in the archive",
                    )
                })?;
                if !meta.is_file() {
                    return Err(unsafe_entry(
                        artifact,
                        &shown,
                        "is a hard link to a non-file",
                    ));
                }
            }
            T::Char | T::Block | T::Fifo => {
                return Err(unsafe_entry(artifact, &shown, "is a device file or FIFO"));
            }
            other => {
                return Err(unsafe_entry(
                    artifact,
                    &shown,
                    format!("has unsupported entry type {other:?}"),
                ));
            }
        }
        check_no_symlink_ancestor(dest, &rel).map_err(|m| unsafe_entry(artifact, &shown, m))?;
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => return Err(unsafe_entry(artifact, &shown, "escapes the directory")),
            Err(e) => {
                if let Some(inner) = io_source(&e)
                    && super::is_disk_full(inner)
                {
                    return Err(ExecError::DiskFull {
                        path: dest.to_path_buf(),
                        message: e.to_string(),
                    });
                }
                return Err(unsafe_entry(
                    artifact,
                    &shown,
                    format!("cannot be unpacked: {e}"),
                ));
            }
        }
    }
    Ok(())
}

fn io_source(e: &io::Error) -> Option<&io::Error> {
    if e.raw_os_error().is_some() {
        return Some(e);
    }
    e.get_ref()
        .and_then(|inner| inner.source())
        .and_then(|s| s.downcast_ref::<io::Error>())
        .or(Some(e))
}

fn corrupt(artifact: &str, e: io::Error) -> ExecError {
    ExecError::UnsafeArchive {
        artifact: artifact.to_string(),
        entry: String::new(),
        message: format!("is not a readable tar.gz archive: {e}"),
    }
}

/// Copies the single-file artifact `from` into `dest/<file_name>` with `mode`, synced.
pub fn place_file(from: &Path, dest: &Path, file_name: &str, mode: u32) -> Result<(), ExecError> {
    use std::os::unix::fs::PermissionsExt;
    let to = dest.join(file_name);
    fs::copy(from, &to).map_err(|e| ExecError::io("copying to", &to, e))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))
        .map_err(|e| ExecError::io("setting the mode of", &to, e))?;
    Ok(())
}

/// fsync every file and directory under `dir` so the unpacked tree survives a power cut
/// before it is renamed into place.
pub fn sync_tree(dir: &Path) -> Result<(), ExecError> {
    let meta = fs::symlink_metadata(dir).map_err(|e| ExecError::io("reading", dir, e))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir).map_err(|e| ExecError::io("reading", dir, e))? {
            let entry = entry.map_err(|e| ExecError::io("reading", dir, e))?;
            sync_tree(&entry.path())?;
        }
    }
    let f = fs::File::open(dir).map_err(|e| ExecError::io("opening", dir, e))?;
    f.sync_all().map_err(|e| ExecError::io("syncing", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_are_checked_lexically() {
        let l = Path::new("a/b/link");
        assert!(check_symlink_target(l, Path::new("../../x")).is_ok());
        assert!(check_symlink_target(l, Path::new("../../../x")).is_err());
        assert!(check_symlink_target(l, Path::new("/etc/passwd")).is_err());
        assert!(check_symlink_target(l, Path::new("c/../../..")).is_err());
        assert!(check_symlink_target(Path::new("link"), Path::new("bin/app")).is_ok());
        assert!(check_symlink_target(Path::new("link"), Path::new("..")).is_err());
    }

    #[test]
    fn formats_are_picked_from_params_or_names() {
        assert_eq!(Format::pick(None, "app.tar.gz").unwrap(), Format::TarGz);
        assert_eq!(Format::pick(None, "k3s").unwrap(), Format::File);
        assert_eq!(Format::pick(Some("file"), "x.tgz").unwrap(), Format::File);
        assert!(Format::pick(Some("zip"), "x").is_err());
    }
}
