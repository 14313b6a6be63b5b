//! `fleetwave-coordinator migrate-store`: copies a coordinator's SQLite file into an empty
//! PostgreSQL database (the coordinator stopped), table by table, and proves the copy by
//! each table's row count and checksum read back from both sides.
//!
//! The PostgreSQL schema has the SQLite file's tables and columns (see
//! `postgres/schema_v1.sql`), so rows are copied value by value (COPY in binary form).
//! `site_labels` and `site_versions` are not copied: PostgreSQL's triggers derive them
//! from `sites`, and they are verified like every other table. Everything happens in one
//! PostgreSQL transaction: a copy that does not verify is not committed. It must never
//! write to the SQLite file.

use std::path::Path;

use ::postgres::binary_copy::BinaryCopyInWriter;
use ::postgres::types::{ToSql, Type};
use rusqlite::types::ValueRef;
use sha2::{Digest, Sha256};

use super::SqliteStore;
use super::postgres::{PgError, PgOptions, PgStore};

/// Why a migration stopped (nothing is committed to PostgreSQL then).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("SQLite file {path}: {message}")]
    Source { path: String, message: String },
    #[error("PostgreSQL: {0}")]
    Target(String),
    #[error(
        "the PostgreSQL database is not empty ({table} has {rows} rows): migrate-store fills a new, empty database"
    )]
    NotEmpty { table: String, rows: i64 },
    #[error("table {table}: {message}")]
    Table { table: String, message: String },
    #[error(
        "table {table} does not match after the copy: SQLite {source_rows} rows (sha256 {source_sum}), PostgreSQL {target_rows} rows (sha256 {target_sum}); nothing was committed"
    )]
    Mismatch {
        table: String,
        source_rows: u64,
        source_sum: String,
        target_rows: u64,
        target_sum: String,
    },
}

/// One table as copied and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    pub rows: u64,
    /// SHA-256 over the table's rows in primary-key order (the same on both sides).
    pub checksum: String,
    /// False for tables the target derives itself (filled by triggers, verified only).
    pub copied: bool,
}

/// Every table, parents before children (foreign keys).
const TABLES: &[&str] = &[
    "roots",
    "operator_tokens",
    "enrollment_tokens",
    "sites",
    "site_boxes",
    "session_nonces",
    "releases",
    "artifacts",
    "rollouts",
    "rollout_sites",
    "rollout_boxes",
    "assignments",
    "leases",
    "reports",
    "decisions",
    "audit_log",
    "site_labels",
    "site_versions",
    "freezes",
    "webhook_endpoints",
    "webhook_events",
    "webhook_deliveries",
    "webhook_attempts",
    "webhook_site_silences",
    "site_holds",
    "channels",
    "signal_values",
    "signal_latest",
];

/// Tables PostgreSQL fills itself from `sites` (triggers).
const DERIVED: &[&str] = &["site_labels", "site_versions"];

/// Identity columns whose sequence must continue after the copied ids.
const IDENTITIES: &[(&str, &str)] = &[
    ("decisions", "id"),
    ("audit_log", "id"),
    ("webhook_events", "id"),
    ("webhook_attempts", "id"),
    ("webhook_deliveries", "seq"),
];

/// A column's type as both sides store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Real,
    Text,
}

struct Column {
    name: String,
    kind: Kind,
}

/// Feeds one value into a table checksum: a type tag and the value's bytes, so that
/// NULL, 0 and "" all differ.
fn hash_value(h: &mut Sha256, v: Option<Value>) {
    match v {
        None => h.update([0u8]),
        Some(Value::Int(i)) => {
            h.update([1u8]);
            h.update(i.to_be_bytes());
        }
        Some(Value::Real(f)) => {
            h.update([2u8]);
            h.update(f.to_bits().to_be_bytes());
        }
        Some(Value::Text(t)) => {
            h.update([3u8]);
            h.update((t.len() as u64).to_be_bytes());
            h.update(t.as_bytes());
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Real(f64),
    Text(String),
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Copies the SQLite file at `from` into the empty PostgreSQL database `to` and verifies
/// every table. The file is first brought to the current schema (as a coordinator start
/// would); PostgreSQL's schema is created.
pub fn migrate_store(from: &Path, to: &PgOptions) -> Result<Vec<TableReport>, MigrateError> {
    let src_err = |message: String| MigrateError::Source {
        path: from.display().to_string(),
        message,
    };
    if !from.is_file() {
        return Err(src_err("no such file".into()));
    }
    drop(SqliteStore::open(from).map_err(|e| src_err(e.to_string()))?);
    let mut src = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| src_err(e.to_string()))?;
    // Holding SQLite's write lock for the whole copy: a coordinator still running cannot
    // change the file underneath (and this fails at once if one is writing).
    let src = src
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| {
            src_err(format!(
                "cannot lock it ({e}): stop the coordinator before migrating its state"
            ))
        })?;

    let target = PgStore::open(to).map_err(|e| MigrateError::Target(e.to_string()))?;
    let mut conn = target
        .connection()
        .map_err(|e| MigrateError::Target(e.to_string()))?;
    let mut tx = conn
        .transaction()
        .map_err(|e| MigrateError::Target(PgError(e).to_string()))?;
    let pg_err = |table: &str| {
        let table = table.to_string();
        move |e: ::postgres::Error| MigrateError::Table {
            table: table.clone(),
            message: format!("PostgreSQL: {}", PgError(e)),
        }
    };
    for table in TABLES {
        let rows: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {}", quote(table)), &[])
            .map_err(pg_err(table))?
            .get(0);
        if rows > 0 {
            return Err(MigrateError::NotEmpty {
                table: table.to_string(),
                rows,
            });
        }
    }

    let mut reports = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let columns = source_columns(&src, table, &mut tx)?;
        let key = primary_key(&src, table)?;
        let copied = !DERIVED.contains(table);
        if copied {
            copy_table(&src, &mut tx, table, &columns)?;
        }
        let (source_rows, source_sum) = source_checksum(&src, table, &columns, &key)?;
        let (target_rows, target_sum) = target_checksum(&mut tx, table, &columns, &key)?;
        if (source_rows, &source_sum) != (target_rows, &target_sum) {
            return Err(MigrateError::Mismatch {
                table: table.to_string(),
                source_rows,
                source_sum,
                target_rows,
                target_sum,
            });
        }
        reports.push(TableReport {
            table: table.to_string(),
            rows: source_rows,
            checksum: source_sum,
            copied,
        });
    }
    for (table, column) in IDENTITIES {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )
        .map_err(pg_err(table))?;
    }
    tx.commit()
        .map_err(|e| MigrateError::Target(format!("commit: {}", PgError(e))))?;
    Ok(reports)
}

/// The table's columns in SQLite, each with the type PostgreSQL declares for it (every
/// SQLite column must exist in PostgreSQL).
fn source_columns(
    src: &rusqlite::Transaction,
    table: &str,
    tx: &mut ::postgres::Transaction,
) -> Result<Vec<Column>, MigrateError> {
    let terr = |message: String| MigrateError::Table {
        table: table.to_string(),
        message,
    };
    let mut st = src
        .prepare(&format!(
            "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
        ))
        .map_err(|e| terr(format!("SQLite: {e}")))?;
    let names: Vec<String> = st
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| terr(format!("SQLite: {e}")))?;
    if names.is_empty() {
        return Err(terr("missing from the SQLite file".into()));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let row = tx
            .query_opt(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2",
                &[&table, &name],
            )
            .map_err(|e| terr(format!("PostgreSQL: {}", PgError(e))))?
            .ok_or_else(|| terr(format!("column {name} is missing in PostgreSQL")))?;
        let data_type: String = row.get(0);
        let kind = match data_type.as_str() {
            "bigint" | "integer" => Kind::Int,
            "double precision" | "real" => Kind::Real,
            "text" => Kind::Text,
            other => return Err(terr(format!("column {name}: unexpected type {other}"))),
        };
        out.push(Column { name, kind });
    }
    Ok(out)
}

/// The primary key's columns (the order both sides are read in for the checksum).
fn primary_key(src: &rusqlite::Transaction, table: &str) -> Result<Vec<String>, MigrateError> {
    let terr = |e: rusqlite::Error| MigrateError::Table {
        table: table.to_string(),
        message: format!("SQLite: {e}"),
    };
    let mut st = src
        .prepare(&format!(
            "SELECT name FROM pragma_table_info('{table}') WHERE pk > 0 ORDER BY pk"
        ))
        .map_err(terr)?;
    let key: Vec<String> = st
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(terr)?;
    if key.is_empty() {
        return Err(MigrateError::Table {
            table: table.to_string(),
            message: "has no primary key to order its rows by".into(),
        });
    }
    Ok(key)
}

/// A SQLite value as the column's kind (an integer stored in a REAL column is read as a
/// real, as SQLite's affinity would).
fn source_value(table: &str, col: &Column, v: ValueRef<'_>) -> Result<Option<Value>, MigrateError> {
    let bad = |what: &str| MigrateError::Table {
        table: table.to_string(),
        message: format!(
            "column {}: {what} where {:?} is expected",
            col.name, col.kind
        ),
    };
    Ok(match (v, col.kind) {
        (ValueRef::Null, _) => None,
        (ValueRef::Integer(i), Kind::Int) => Some(Value::Int(i)),
        (ValueRef::Integer(i), Kind::Real) => Some(Value::Real(i as f64)),
        (ValueRef::Real(f), Kind::Real) => Some(Value::Real(f)),
        (ValueRef::Text(t), Kind::Text) => Some(Value::Text(
            String::from_utf8(t.to_vec()).map_err(|_| bad("text that is not UTF-8"))?,
        )),
        (ValueRef::Integer(_), _) => return Err(bad("an integer")),
        (ValueRef::Real(_), _) => return Err(bad("a real")),
        (ValueRef::Text(_), _) => return Err(bad("text")),
        (ValueRef::Blob(_), _) => return Err(bad("a blob")),
    })
}

fn select_list(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| quote(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copies a table's rows in insertion order (rowid), with COPY ... FROM STDIN (BINARY).
fn copy_table(
    src: &rusqlite::Transaction,
    tx: &mut ::postgres::Transaction,
    table: &str,
    columns: &[Column],
) -> Result<(), MigrateError> {
    let terr = |message: String| MigrateError::Table {
        table: table.to_string(),
        message,
    };
    let list = select_list(columns);
    // WITHOUT ROWID tables have no rowid: their key order then.
    let order = match src.prepare(&format!("SELECT rowid FROM {} LIMIT 0", quote(table))) {
        Ok(_) => "rowid".to_string(),
        Err(_) => primary_key(src, table)?
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut st = src
        .prepare(&format!(
            "SELECT {list} FROM {} ORDER BY {order}",
            quote(table)
        ))
        .map_err(|e| terr(format!("SQLite: {e}")))?;
    let types: Vec<Type> = columns
        .iter()
        .map(|c| match c.kind {
            Kind::Int => Type::INT8,
            Kind::Real => Type::FLOAT8,
            Kind::Text => Type::TEXT,
        })
        .collect();
    let sink = tx
        .copy_in(&format!(
            "COPY {} ({list}) FROM STDIN (FORMAT binary)",
            quote(table)
        ))
        .map_err(|e| terr(format!("PostgreSQL: {}", PgError(e))))?;
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    let mut rows = st.query([]).map_err(|e| terr(format!("SQLite: {e}")))?;
    while let Some(r) = rows.next().map_err(|e| terr(format!("SQLite: {e}")))? {
        let mut ints: Vec<Option<i64>> = Vec::with_capacity(columns.len());
        let mut reals: Vec<Option<f64>> = Vec::with_capacity(columns.len());
        let mut texts: Vec<Option<String>> = Vec::with_capacity(columns.len());
        for (i, col) in columns.iter().enumerate() {
            let v = source_value(
                table,
                col,
                r.get_ref(i).map_err(|e| terr(format!("SQLite: {e}")))?,
            )?;
            match col.kind {
                Kind::Int => ints.push(match v {
                    Some(Value::Int(x)) => Some(x),
                    _ => None,
                }),
                Kind::Real => reals.push(match v {
                    Some(Value::Real(x)) => Some(x),
                    _ => None,
                }),
                Kind::Text => texts.push(match v {
                    Some(Value::Text(x)) => Some(x),
                    _ => None,
                }),
            }
        }
        let (mut i, mut f, mut t) = (0, 0, 0);
        let values: Vec<&(dyn ToSql + Sync)> = columns
            .iter()
            .map(|c| -> &(dyn ToSql + Sync) {
                match c.kind {
                    Kind::Int => {
                        i += 1;
                        &ints[i - 1]
                    }
                    Kind::Real => {
                        f += 1;
                        &reals[f - 1]
                    }
                    Kind::Text => {
                        t += 1;
                        &texts[t - 1]
                    }
                }
            })
            .collect();
        writer
            .write(&values)
            .map_err(|e| terr(format!("PostgreSQL: {}", PgError(e))))?;
    }
    writer
        .finish()
        .map_err(|e| terr(format!("PostgreSQL: {}", PgError(e))))?;
    Ok(())
}

fn order_by(key: &[String]) -> String {
    key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
}

/// The SQLite table's row count and checksum (rows in primary-key order).
fn source_checksum(
    src: &rusqlite::Transaction,
    table: &str,
    columns: &[Column],
    key: &[String],
) -> Result<(u64, String), MigrateError> {
    let terr = |e: rusqlite::Error| MigrateError::Table {
        table: table.to_string(),
        message: format!("SQLite: {e}"),
    };
    let mut st = src
        .prepare(&format!(
            "SELECT {} FROM {} ORDER BY {}",
            select_list(columns),
            quote(table),
            order_by(key)
        ))
        .map_err(terr)?;
    let mut rows = st.query([]).map_err(terr)?;
    let (mut h, mut n) = (Sha256::new(), 0u64);
    while let Some(r) = rows.next().map_err(terr)? {
        for (i, col) in columns.iter().enumerate() {
            hash_value(
                &mut h,
                source_value(table, col, r.get_ref(i).map_err(terr)?)?,
            );
        }
        n += 1;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// The PostgreSQL table's row count and checksum, read back the same way.
fn target_checksum(
    tx: &mut ::postgres::Transaction,
    table: &str,
    columns: &[Column],
    key: &[String],
) -> Result<(u64, String), MigrateError> {
    let terr = |e: ::postgres::Error| MigrateError::Table {
        table: table.to_string(),
        message: format!("PostgreSQL: {}", PgError(e)),
    };
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        select_list(columns),
        quote(table),
        order_by(key)
    );
    let mut h = Sha256::new();
    let mut n = 0u64;
    // In portions, so that a large table (reports) is never held in memory whole.
    let portal = tx.bind(sql.as_str(), &[]).map_err(terr)?;
    loop {
        let rows = tx.query_portal(&portal, 10_000).map_err(terr)?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            for (i, col) in columns.iter().enumerate() {
                let v = match col.kind {
                    Kind::Int => r.get::<_, Option<i64>>(i).map(Value::Int),
                    Kind::Real => r.get::<_, Option<f64>>(i).map(Value::Real),
                    Kind::Text => r.get::<_, Option<String>>(i).map(Value::Text),
                };
                hash_value(&mut h, v);
            }
            n += 1;
        }
    }
    Ok((n, hex::encode(h.finalize())))
}
