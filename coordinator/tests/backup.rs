//! Backup and restore over real SQLite files: a backup taken while the store holds
//! uncheckpointed writes has them; a restore brings back exactly the backup, keeps the
//! replaced files, moves assignment sequences ahead, and refuses bad input without
//! touching the current database.

use std::path::Path;

use fleetwave_coordinator::backup::{SEQUENCE_JUMP, backup, restore};
use fleetwave_coordinator::config::Config;
use fleetwave_coordinator::init::{InitOptions, init};
use fleetwave_coordinator::store::{OperatorTokenRecord, SqliteStore, Store};
use fleetwave_shared::protocol::operator::OperatorRole;
use jiff::Timestamp;

fn setup(dir: &Path) -> Config {
    let out = init(&InitOptions::dev_loopback(dir.to_path_buf())).unwrap();
    Config::load(&out.config).unwrap()
}

fn token(store: &SqliteStore, name: &str) {
    store
        .create_operator_token(
            &format!("hash-of-{name}"),
            &OperatorTokenRecord {
                id: name.into(),
                name: name.into(),
                role: OperatorRole::Viewer,
                created_at: Timestamp::now(),
                created_by: "test".into(),
                revoked: false,
            },
        )
        .unwrap();
}

fn token_names(db: &Path) -> Vec<String> {
    let store = SqliteStore::open(db).unwrap();
    let mut names: Vec<String> = store
        .list_operator_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    names
}

fn last_sequence(db: &Path, site: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT last_sequence FROM sites WHERE id = ?1",
        [site],
        |r| r.get(0),
    )
    .unwrap()
}

/// A site row as enrollment leaves it, with 7 assignments issued.
fn add_site(db: &Path, id: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at, last_sequence)
         VALUES (?1, 'key', '{\"city\":\"oslo\"}', 'active', '0.1.0', 0, 7)",
        [id],
    )
    .unwrap();
}

fn artifact(dir: &Path, bytes: &[u8]) -> String {
    let name = fleetwave_shared::sha256_hex(bytes);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(&name), bytes).unwrap();
    name
}

#[test]
fn restore_brings_back_the_backup_and_moves_sequences_ahead() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(&tmp.path().join("coord"));
    let db = config.database_path();
    let store = SqliteStore::open(&db).unwrap();
    token(&store, "before");
    add_site(&db, "site-a");
    let art = artifact(&config.artifact_dir(), b"release bytes");
    // The store stays open (as in a serving coordinator): its writes sit in the WAL.
    let backups = tmp.path().join("backups");
    let taken = Timestamp::now();
    let report = backup(&config, &backups, taken).unwrap();
    assert_eq!(report.artifacts_copied, 1);
    assert!(backups.join("artifacts").join(&art).is_file());
    token(&store, "after");
    drop(store);

    // Taken again in the same second: the same name is refused, never overwritten.
    let err = backup(&config, &backups, taken).unwrap_err();
    assert!(err.to_string().contains("never overwrites"), "{err}");

    std::fs::remove_dir_all(config.artifact_dir()).unwrap();
    let r = restore(
        &config,
        &report.database,
        Some(&backups.join("artifacts")),
        Timestamp::now(),
    )
    .unwrap();
    assert_eq!(r.sites, 1);
    assert_eq!(r.artifacts_copied, 1);
    assert!(config.artifact_dir().join(&art).is_file());
    assert_eq!(token_names(&db), vec!["before".to_string()]);
    assert_eq!(last_sequence(&db, "site-a"), 7 + SEQUENCE_JUMP);
    // The dashboard's indexed facts came along with the site.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let city: String = conn
        .query_row(
            "SELECT value FROM site_labels WHERE site_id = 'site-a' AND key = 'city'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(city, "oslo");
    // The replaced database is kept, with what happened after the backup.
    let previous = r.previous.expect("the old files are kept");
    let kept = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&previous).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), kept.path().join(f.file_name())).unwrap();
    }
    let kept_db = kept.path().join(db.file_name().unwrap());
    assert_eq!(
        token_names(&kept_db),
        vec!["after".to_string(), "before".to_string()]
    );
}

#[test]
fn restore_refuses_bad_input_and_leaves_the_database_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = setup(&tmp.path().join("coord"));
    let db = config.database_path();
    let store = SqliteStore::open(&db).unwrap();
    token(&store, "current");
    drop(store);
    let backups = tmp.path().join("backups");
    let good = backup(&config, &backups, Timestamp::now())
        .unwrap()
        .database;

    // Not a database at all.
    let junk = tmp.path().join("junk.db");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let err = restore(&config, &junk, None, Timestamp::now()).unwrap_err();
    assert!(err.to_string().contains("junk.db"), "{err}");

    // A database, but not a coordinator's.
    let other = tmp.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute("CREATE TABLE t (x)", [])
        .unwrap();
    let err = restore(&config, &other, None, Timestamp::now()).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a fleetwave coordinator database"),
        "{err}"
    );

    // An artifact whose bytes do not match its name.
    let bad_artifacts = tmp.path().join("bad-artifacts");
    let name = fleetwave_shared::sha256_hex(b"the real bytes");
    std::fs::create_dir_all(&bad_artifacts).unwrap();
    std::fs::write(bad_artifacts.join(&name), b"tampered bytes").unwrap();
    let err = restore(&config, &good, Some(&bad_artifacts), Timestamp::now()).unwrap_err();
    assert!(err.to_string().contains("does not match its name"), "{err}");
    assert!(!config.artifact_dir().join(&name).exists());

    // A coordinator (or anything) listening on the configured address.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.listen = listener.local_addr().unwrap();
    let err = restore(&config, &good, None, Timestamp::now()).unwrap_err();
    assert!(err.to_string().contains("stop it first"), "{err}");

    // Through all of it the current database stayed where and what it was.
    assert_eq!(token_names(&db), vec!["current".to_string()]);
    assert!(
        !std::fs::read_dir(db.parent().unwrap()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("pre-restore")),
        "nothing was moved aside"
    );
}
