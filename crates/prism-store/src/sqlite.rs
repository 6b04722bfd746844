//! SQLite implementation of [`Store`]: one connection behind a mutex (SQLite serialises writers
//! anyway), WAL, `synchronous=NORMAL` or `FULL` ([`Durability`]), schema migrations keyed by
//! `PRAGMA user_version`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use prism_types::SandboxState;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};

use crate::{Event, ListFilter, SandboxRecord, Store, StoreError, lock};

/// Schema migrations; entry `i` moves the database from `user_version = i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sandboxes (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT,
    state         TEXT NOT NULL,
    template      TEXT NOT NULL,
    spec          TEXT NOT NULL,
    handle        TEXT,
    labels        TEXT NOT NULL DEFAULT '{}',
    runtime       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    started_at    INTEGER,
    expires_at    INTEGER,
    exit_code     INTEGER,
    error         TEXT
) STRICT;
CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes(name)
    WHERE name IS NOT NULL AND state != 'destroyed';
CREATE INDEX sandboxes_state ON sandboxes(state);
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id  TEXT NOT NULL,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT,
    message     TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX events_sandbox ON events(sandbox_id, seq);
"#,
    r#"
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    project     TEXT,
    hash        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
CREATE TABLE sandbox_owners (
    sandbox_id  TEXT PRIMARY KEY NOT NULL,
    project     TEXT NOT NULL
) STRICT;
CREATE INDEX sandbox_owners_project ON sandbox_owners(project);
CREATE TABLE secrets (
    project     TEXT NOT NULL,
    name        TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (project, name)
) STRICT;
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    key_id      TEXT,
    project     TEXT,
    action      TEXT NOT NULL,
    sandbox_id  TEXT,
    status      INTEGER NOT NULL,
    request_id  TEXT
) STRICT;
CREATE INDEX audit_sandbox ON audit(sandbox_id, seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"#,
    r#"
CREATE TABLE template_names (
    name          TEXT PRIMARY KEY NOT NULL,
    project       TEXT,
    last_version  INTEGER NOT NULL
) STRICT;
CREATE TABLE templates (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    project     TEXT,
    status      TEXT NOT NULL,
    spec        TEXT NOT NULL,
    build       TEXT,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
) STRICT;
"#,
];

const COLUMNS: &str = "id, name, state, template, spec, handle, labels, runtime, created_at, \
                       updated_at, started_at, expires_at, exit_code, error";

/// When a committed transaction is safe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: a commit is in the operating system when the call returns (it
    /// survives a crash of the daemon); WAL is fsynced at checkpoints, so a power loss or kernel
    /// crash may lose the last commits (never corrupts the database). The sandboxes of those
    /// commits die with the host anyway; recovery treats what is left as orphans. No fsync on
    /// the create path.
    #[default]
    Os,
    /// `synchronous=FULL`: every commit is fsynced before the call returns (one fsync per
    /// state change on the create/destroy path).
    Disk,
}

/// The SQLite store. Hot rows (live sandbox records, their owners, project secrets) are also
/// kept in memory, written through on every change ([`cache`]); `*_cached` calls answer from
/// memory only and never block on I/O. One store per database file: writes by another
/// process or store over the same file would not be seen (prismd holds its state directory's
/// lock).
pub struct SqliteStore {
    conn: Mutex<Connection>,
    cache: cache::Cache,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| match source.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full,
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => StoreError::Locked,
        _ => StoreError::Sqlite { op, source },
    }
}

impl SqliteStore {
    /// Open or create the database file at `path` and bring its schema up to date, with the
    /// default [`Durability`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::default())
    }

    /// [`Self::open`] with the given durability.
    pub fn open_with(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::init(conn, Some(durability))
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql("open"))?;
        Self::init(conn, None)
    }

    /// `wal`: the file's durability (None: in memory, no WAL).
    fn init(conn: Connection, wal: Option<Durability>) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("busy_timeout"))?;
        if wal.is_some() {
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(sql("journal_mode"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(message = "SQLite refused WAL mode", %mode);
            }
        }
        let sync = match wal {
            Some(Durability::Os) => "NORMAL",
            Some(Durability::Disk) | None => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"
        ))
        .map_err(sql("pragmas"))?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
            cache: cache::Cache::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql("user_version"))?;
        let from = usize::try_from(version).unwrap_or(usize::MAX);
        for (i, step) in MIGRATIONS.iter().enumerate().skip(from) {
            let tx = conn.transaction().map_err(sql("migrate"))?;
            tx.execute_batch(step).map_err(sql("migrate"))?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(sql("migrate"))?;
            tx.commit().map_err(sql("migrate"))?;
            tracing::info!(message = "state database migrated", version = i + 1);
        }
        Ok(())
    }

    /// Current schema version (tests).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        lock(&self.conn)
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql("user_version"))
    }
}

impl SqliteStore {
    /// Decode a row and keep it in the cache. Called while the caller still holds the
    /// connection's lock, so no write can slip in between the read and the fill.
    fn fill(&self, raw: Option<RawRow>) -> Result<Option<SandboxRecord>, StoreError> {
        let rec = raw.map(RawRow::into_record).transpose()?;
        if let Some(r) = &rec {
            self.cache.put(r, None);
        }
        Ok(rec)
    }
}

struct RawRow {
    id: String,
    name: Option<String>,
    state: String,
    template: String,
    spec: String,
    handle: Option<String>,
    labels: String,
    runtime: String,
    created_at: i64,
    updated_at: i64,
    started_at: Option<i64>,
    expires_at: Option<i64>,
    exit_code: Option<i32>,
    error: Option<String>,
}

fn raw_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        name: r.get(1)?,
        state: r.get(2)?,
        template: r.get(3)?,
        spec: r.get(4)?,
        handle: r.get(5)?,
        labels: r.get(6)?,
        runtime: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        started_at: r.get(10)?,
        expires_at: r.get(11)?,
        exit_code: r.get(12)?,
        error: r.get(13)?,
    })
}

impl RawRow {
    fn into_record(self) -> Result<SandboxRecord, StoreError> {
        let id = self.id;
        let corrupt = |source| StoreError::Corrupt {
            id: id.clone(),
            source,
        };
        let state = SandboxState::parse(&self.state)
            .ok_or_else(|| corrupt(serde::de::Error::custom("unknown state")))?;
        let spec = serde_json::from_str(&self.spec).map_err(corrupt)?;
        let handle = match self.handle {
            Some(h) => Some(serde_json::from_str(&h).map_err(corrupt)?),
            None => None,
        };
        let labels = serde_json::from_str(&self.labels).map_err(corrupt)?;
        Ok(SandboxRecord {
            id,
            name: self.name,
            state,
            template: self.template,
            spec,
            handle,
            labels,
            runtime: self.runtime,
            created_at_ms: self.created_at,
            updated_at_ms: self.updated_at,
            started_at_ms: self.started_at,
            expires_at_ms: self.expires_at,
            exit_code: self.exit_code,
            error: self.error,
        })
    }
}

struct Encoded {
    spec: String,
    handle: Option<String>,
    labels: String,
}

fn encode(rec: &SandboxRecord) -> Result<Encoded, StoreError> {
    let corrupt = |source| StoreError::Corrupt {
        id: rec.id.clone(),
        source,
    };
    Ok(Encoded {
        spec: serde_json::to_string(&rec.spec).map_err(corrupt)?,
        handle: match &rec.handle {
            Some(h) => Some(serde_json::to_string(h).map_err(corrupt)?),
            None => None,
        },
        labels: serde_json::to_string(&rec.labels).map_err(corrupt)?,
    })
}

/// Map a constraint failure of an insert/update to the clash it reports.
fn clash(rec: &SandboxRecord, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| {
        if source.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
            let text = source.to_string();
            if text.contains("sandboxes.name") {
                return StoreError::NameConflict(rec.name.clone().unwrap_or_default());
            }
            if text.contains("sandboxes.id") {
                return StoreError::DuplicateId(rec.id.clone());
            }
        }
        sql(op)(source)
    }
}

fn insert_event(tx: &rusqlite::Transaction<'_>, ev: &Event) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO events (sandbox_id, at, kind, from_state, to_state, message) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            ev.sandbox_id,
            ev.at_ms,
            ev.kind,
            ev.from_state.map(SandboxState::as_str),
            ev.to_state.map(SandboxState::as_str),
            ev.message
        ])
    })
    .map_err(sql("insert event"))?;
    Ok(())
}

impl Store for SqliteStore {
    fn insert(&self, rec: &SandboxRecord) -> Result<(), StoreError> {
        let enc = encode(rec)?;
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(sql("begin"))?;
        tx.prepare_cached(&format!(
            "INSERT INTO sandboxes ({COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))
        .and_then(|mut st| {
            st.execute(params![
                rec.id,
                rec.name,
                rec.state.as_str(),
                rec.template,
                enc.spec,
                enc.handle,
                enc.labels,
                rec.runtime,
                rec.created_at_ms,
                rec.updated_at_ms,
                rec.started_at_ms,
                rec.expires_at_ms,
                rec.exit_code,
                rec.error
            ])
        })
        .map_err(clash(rec, "insert"))?;
        insert_event(
            &tx,
            &Event {
                sandbox_id: rec.id.clone(),
                at_ms: rec.created_at_ms,
                kind: "created".into(),
                from_state: None,
                to_state: Some(rec.state),
                message: String::new(),
            },
        )?;
        // The owner row, if any (none for a fresh id; read so the cache never guesses).
        let owner: Option<String> = tx
            .prepare_cached("SELECT project FROM sandbox_owners WHERE sandbox_id = ?1")
            .and_then(|mut st| st.query_row([&rec.id], |r| r.get(0)).optional())
            .map_err(sql("get owner"))?;
        tx.commit().map_err(sql("commit"))?;
        self.cache.put(rec, Some(owner));
        Ok(())
    }

    fn update(&self, rec: &SandboxRecord, message: &str) -> Result<(), StoreError> {
        let enc = encode(rec)?;
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(sql("begin"))?;
        let old: Option<(String, i64)> = tx
            .prepare_cached("SELECT state, created_at FROM sandboxes WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([&rec.id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(sql("read state"))?;
        let Some((old, created_at_ms)) = old else {
            return Err(StoreError::NotFound(rec.id.clone()));
        };
        tx.prepare_cached(
            "UPDATE sandboxes SET name = ?2, state = ?3, template = ?4, spec = ?5, handle = ?6, \
             labels = ?7, runtime = ?8, updated_at = ?9, started_at = ?10, expires_at = ?11, \
             exit_code = ?12, error = ?13 WHERE id = ?1",
        )
        .and_then(|mut st| {
            st.execute(params![
                rec.id,
                rec.name,
                rec.state.as_str(),
                rec.template,
                enc.spec,
                enc.handle,
                enc.labels,
                rec.runtime,
                rec.updated_at_ms,
                rec.started_at_ms,
                rec.expires_at_ms,
                rec.exit_code,
                rec.error
            ])
        })
        .map_err(clash(rec, "update"))?;
        let old_state = SandboxState::parse(&old);
        if old_state != Some(rec.state) {
            insert_event(
                &tx,
                &Event {
                    sandbox_id: rec.id.clone(),
                    at_ms: rec.updated_at_ms,
                    kind: "transition".into(),
                    from_state: old_state,
                    to_state: Some(rec.state),
                    message: message.to_string(),
                },
            )?;
        }
        tx.commit().map_err(sql("commit"))?;
        // The cache holds the row as stored (an update never changes the creation time).
        self.cache.put(
            &SandboxRecord {
                created_at_ms,
                ..rec.clone()
            },
            None,
        );
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        if let Some(rec) = self.cache.get(id) {
            return Ok(Some(rec));
        }
        let conn = lock(&self.conn);
        let raw = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"))
            .and_then(|mut st| st.query_row([id], raw_row).optional())
            .map_err(sql("get"))?;
        self.fill(raw)
    }

    fn find(&self, id_or_name: &str) -> Result<Option<SandboxRecord>, StoreError> {
        if let Some(rec) = self.cache.find(id_or_name) {
            return Ok(Some(rec));
        }
        if let Some(rec) = self.get(id_or_name)? {
            return Ok(Some(rec));
        }
        let conn = lock(&self.conn);
        let raw = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM sandboxes WHERE name = ?1 AND state != 'destroyed'"
            ))
            .and_then(|mut st| st.query_row([id_or_name], raw_row).optional())
            .map_err(sql("find"))?;
        self.fill(raw)
    }

    fn find_cached(&self, id_or_name: &str) -> Option<SandboxRecord> {
        self.cache.find(id_or_name)
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxRecord>, StoreError> {
        let conn = lock(&self.conn);
        let state = filter.state.map(SandboxState::as_str);
        let (lk, lv) = match &filter.label {
            Some((k, v)) => (Some(k.as_str()), Some(v.as_str())),
            None => (None, None),
        };
        let limit = if filter.limit == 0 {
            -1
        } else {
            i64::try_from(filter.limit).unwrap_or(i64::MAX)
        };
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM sandboxes WHERE \
                 ((?1 IS NULL AND state != 'destroyed') OR state = ?1) \
                 AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(sandboxes.labels) \
                      WHERE json_each.key = ?2 AND json_each.value = ?3)) \
                 AND (?4 IS NULL OR id > ?4) \
                 AND (?6 IS NULL OR id IN \
                      (SELECT sandbox_id FROM sandbox_owners WHERE project = ?6)) \
                 ORDER BY id LIMIT ?5"
            ))
            .map_err(sql("list"))?;
        let rows = stmt
            .query_map(
                params![state, lk, lv, filter.after_id, limit, filter.project],
                raw_row,
            )
            .map_err(sql("list"))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(sql("list"))?.into_record()?);
        }
        Ok(out)
    }

    fn add_event(&self, event: &Event) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(sql("begin"))?;
        insert_event(&tx, event)?;
        tx.commit().map_err(sql("commit"))
    }

    fn events(&self, sandbox_id: &str) -> Result<Vec<Event>, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached(
                "SELECT sandbox_id, at, kind, from_state, to_state, message FROM events \
                 WHERE sandbox_id = ?1 ORDER BY seq",
            )
            .map_err(sql("events"))?;
        let rows = stmt
            .query_map([sandbox_id], |r| {
                let from: Option<String> = r.get(3)?;
                let to: Option<String> = r.get(4)?;
                Ok(Event {
                    sandbox_id: r.get(0)?,
                    at_ms: r.get(1)?,
                    kind: r.get(2)?,
                    from_state: from.as_deref().and_then(SandboxState::parse),
                    to_state: to.as_deref().and_then(SandboxState::parse),
                    message: r.get(5)?,
                })
            })
            .map_err(sql("events"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql("events"))
    }

    fn counts(&self) -> Result<BTreeMap<SandboxState, u64>, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached("SELECT state, COUNT(*) FROM sandboxes GROUP BY state")
            .map_err(sql("counts"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(sql("counts"))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (state, n) = row.map_err(sql("counts"))?;
            if let Some(state) = SandboxState::parse(&state) {
                out.insert(state, u64::try_from(n).unwrap_or(0));
            }
        }
        Ok(out)
    }

    fn purge_destroyed(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(sql("begin"))?;
        tx.execute(
            "DELETE FROM events WHERE sandbox_id IN (SELECT id FROM sandboxes \
             WHERE state = 'destroyed' AND updated_at < ?1)",
            [before_ms],
        )
        .map_err(sql("purge"))?;
        let n = tx
            .execute(
                "DELETE FROM sandboxes WHERE state = 'destroyed' AND updated_at < ?1",
                [before_ms],
            )
            .map_err(sql("purge"))?;
        tx.commit().map_err(sql("commit"))?;
        Ok(n)
    }
}

mod auth;
mod cache;
mod templates;

#[cfg(test)]
mod tests;
