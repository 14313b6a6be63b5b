//! Backup and restore of the coordinator's state: a consistent copy of the SQLite file
//! (`VACUUM INTO`, safe while the coordinator serves) with the content-addressed
//! artifacts beside it, and the restore that puts such a copy back.
//!
//! Restore must never lose what it replaces: the current database files move to
//! `pre-restore-<time>/` in the data directory first. It refuses to run while something
//! listens on the coordinator's address, refuses a copy that fails SQLite's integrity
//! check, and refuses an artifact whose bytes do not match its SHA-256 name. It moves every
//! site's assignment sequence [`SEQUENCE_JUMP`] ahead: agents refuse a sequence they have
//! already seen (replay protection), and sequences issued after the backup was taken
//! would otherwise be issued again with other content.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::store::sqlite::SqliteStore;

/// How far a restore moves every site's assignment sequence ahead.
pub const SEQUENCE_JUMP: i64 = 1_000_000;

/// Why a backup or restore stopped. Nothing is half-replaced when it does.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{0}")]
    Refused(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn db_err(path: &Path) -> impl FnOnce(rusqlite::Error) -> BackupError + '_ {
    move |source| BackupError::Db {
        path: path.to_path_buf(),
        source,
    }
}

/// What a backup wrote.
#[derive(Debug)]
pub struct BackupReport {
    pub database: PathBuf,
    pub artifacts_copied: usize,
    pub artifacts_already_there: usize,
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    pub sites: u64,
    /// Where the replaced database files went, if there were any.
    pub previous: Option<PathBuf>,
    pub artifacts_copied: usize,
}

fn stamp(now: Timestamp) -> String {
    now.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Writes `<out_dir>/coordinator-<time>.db` (a consistent copy, checked) and copies every
/// artifact the copy may name into `<out_dir>/artifacts/` (existing files are kept).
/// The database is copied first, so the artifact copy holds everything it names.
pub fn backup(
    config: &Config,
    out_dir: &Path,
    now: Timestamp,
) -> Result<BackupReport, BackupError> {
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let source = config.database_path();
    let target = out_dir.join(format!("coordinator-{}.db", stamp(now)));
    if target.exists() {
        return Err(BackupError::Refused(format!(
            "{} already exists; a backup never overwrites one",
            target.display()
        )));
    }
    let conn = Connection::open_with_flags(&source, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(db_err(&source))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(db_err(&source))?;
    let target_str = target
        .to_str()
        .ok_or_else(|| BackupError::Refused(format!("{} is not valid UTF-8", target.display())))?;
    conn.execute("VACUUM INTO ?1", [target_str])
        .map_err(db_err(&source))?;
    drop(conn);
    check_integrity(&target)?;
    let (copied, there) =
        copy_artifacts(&config.artifact_dir(), &out_dir.join("artifacts"), false)?;
    Ok(BackupReport {
        database: target,
        artifacts_copied: copied,
        artifacts_already_there: there,
    })
}

/// Puts the backup `from` in place of the configured database (keeping the old files in
/// `pre-restore-<time>/`), moves every site's assignment sequence ahead, brings the schema
/// up to date, and copies artifacts from `artifacts` that are missing (each verified
/// against its SHA-256 name).
pub fn restore(
    config: &Config,
    from: &Path,
    artifacts: Option<&Path>,
    now: Timestamp,
) -> Result<RestoreReport, BackupError> {
    if let Err(e) = std::net::TcpListener::bind(config.listen)
        && e.kind() == io::ErrorKind::AddrInUse
    {
        return Err(BackupError::Refused(format!(
            "something listens on {} (the coordinator?): stop it first \
             (systemctl stop fleetwave-coordinator)",
            config.listen
        )));
    }
    check_integrity(from)?;
    let probe = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(db_err(from))?;
    let has_sites: bool = probe
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sites')",
            [],
            |r| r.get(0),
        )
        .map_err(db_err(from))?;
    drop(probe);
    if !has_sites {
        return Err(BackupError::Refused(format!(
            "{} is not a fleetwave coordinator database (no sites table)",
            from.display()
        )));
    }
    // Artifacts first: a failure here leaves the current database untouched.
    let artifacts_copied = match artifacts {
        Some(dir) => copy_artifacts(dir, &config.artifact_dir(), true)?.0,
        None => 0,
    };

    let db = config.database_path();
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let staged = dir.join(".restore-staged.db");
    copy_synced(from, &staged)?;
    let mut conn = Connection::open(&staged).map_err(db_err(&staged))?;
    let tx = conn.transaction().map_err(db_err(&staged))?;
    let sites = tx
        .execute(
            "UPDATE sites SET last_sequence = last_sequence + ?1",
            [SEQUENCE_JUMP],
        )
        .map_err(db_err(&staged))? as u64;
    tx.commit().map_err(db_err(&staged))?;
    conn.pragma_update(None, "journal_mode", "DELETE")
        .map_err(db_err(&staged))?;
    drop(conn);

    let mut previous = None;
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "coordinator.db".into());
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.join(format!("{name}{suffix}"));
        if file.exists() {
            let keep = previous
                .get_or_insert_with(|| dir.join(format!("pre-restore-{}", stamp(now))))
                .clone();
            fs::create_dir_all(&keep).map_err(io_err(&keep))?;
            let to = keep.join(format!("{name}{suffix}"));
            fs::rename(&file, &to).map_err(io_err(&file))?;
        }
    }
    fs::rename(&staged, &db).map_err(io_err(&db))?;
    sync_dir(&dir)?;
    // Migrations run here, so a backup from an older version is brought up to date now
    // and a failure shows before the service starts.
    SqliteStore::open(&db).map_err(|e| {
        BackupError::Refused(format!(
            "the restored database at {} does not open: {e}",
            db.display()
        ))
    })?;
    Ok(RestoreReport {
        sites,
        previous,
        artifacts_copied,
    })
}

fn check_integrity(path: &Path) -> Result<(), BackupError> {
    if !path.is_file() {
        return Err(BackupError::Refused(format!(
            "{} does not exist or is not a file",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(db_err(path))?;
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(db_err(path))?;
    if verdict != "ok" {
        return Err(BackupError::Refused(format!(
            "{} fails SQLite's integrity check: {verdict}",
            path.display()
        )));
    }
    Ok(())
}

fn is_artifact_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Copies artifact files (names: 64 lower-case hex digits) missing in `to`. With
/// `verify`, every copied file's SHA-256 must equal its name. Returns (copied, already there).
fn copy_artifacts(from: &Path, to: &Path, verify: bool) -> Result<(usize, usize), BackupError> {
    if !from.exists() {
        return Ok((0, 0));
    }
    fs::create_dir_all(to).map_err(io_err(to))?;
    let (mut copied, mut there) = (0, 0);
    for entry in fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_artifact_name(&name) || !entry.path().is_file() {
            continue;
        }
        let target = to.join(&name);
        if target.exists() {
            there += 1;
            continue;
        }
        let staged = to.join(format!(".restore-{name}"));
        copy_synced(&entry.path(), &staged)?;
        if verify {
            let mut hasher = Sha256::new();
            let mut f = File::open(&staged).map_err(io_err(&staged))?;
            io::copy(&mut f, &mut hasher).map_err(io_err(&staged))?;
            let actual = hex::encode(hasher.finalize());
            if actual != name {
                let _ = fs::remove_file(&staged);
                return Err(BackupError::Refused(format!(
                    "artifact {} does not match its name (SHA-256 {actual}); nothing was restored",
                    entry.path().display()
                )));
            }
        }
        fs::rename(&staged, &target).map_err(io_err(&target))?;
        copied += 1;
    }
    sync_dir(to)?;
    Ok((copied, there))
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), BackupError> {
    let mut src = File::open(from).map_err(io_err(from))?;
    let mut dst = File::create(to).map_err(io_err(to))?;
    io::copy(&mut src, &mut dst).map_err(io_err(to))?;
    dst.flush().map_err(io_err(to))?;
    dst.sync_all().map_err(io_err(to))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
