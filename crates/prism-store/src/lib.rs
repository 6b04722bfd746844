//! prism-store: durable state of a single `prismd` node.
//!
//! The [`Store`] trait is what the lifecycle code needs (sandbox records and their event trail);
//! [`SqliteStore`] implements it on SQLite in WAL mode. By default ([`Durability::Os`],
//! `synchronous=NORMAL`) a call that returns `Ok` has reached the operating system: it survives a
//! crash of the daemon, and the daemon acknowledges a change only after that; a power loss or
//! kernel crash may lose the last commits (the sandboxes they describe die with the host too).
//! [`Durability::Disk`] (`synchronous=FULL`) fsyncs every commit before returning, at one fsync
//! (milliseconds on a busy disk) per state change.
//!
//! ```
//! use prism_store::{SqliteStore, Store, SandboxRecord, ListFilter};
//! let store = SqliteStore::open_in_memory().unwrap();
//! let rec = SandboxRecord::new_for_test("0001", Some("web"));
//! store.insert(&rec).unwrap();
//! assert_eq!(store.find("web").unwrap().unwrap().id, "0001");
//! assert_eq!(store.list(&ListFilter::default()).unwrap().len(), 1);
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use prism_types::{CreateSandboxRequest, SandboxState};
use serde::{Deserialize, Serialize};

pub mod auth;
mod sqlite;
pub mod templates;

pub use sqlite::{Durability, SqliteStore};

/// One sandbox as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub name: Option<String>,
    pub state: SandboxState,
    pub template: String,
    /// The normalised create request (template, timeout and network filled in).
    pub spec: CreateSandboxRequest,
    /// The runtime's handle (JSON of `prism_core::SandboxHandle`) while the sandbox has one.
    pub handle: Option<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
    /// Isolation backend that runs the sandbox.
    pub runtime: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

impl SandboxRecord {
    /// A minimal `creating` record, for tests and examples.
    pub fn new_for_test(id: &str, name: Option<&str>) -> Self {
        SandboxRecord {
            id: id.to_string(),
            name: name.map(str::to_string),
            state: SandboxState::Creating,
            template: "base".into(),
            spec: CreateSandboxRequest::default(),
            handle: None,
            labels: BTreeMap::new(),
            runtime: "fake".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            started_at_ms: None,
            expires_at_ms: None,
            exit_code: None,
            error: None,
        }
    }
}

/// An entry of a sandbox's event trail (state transitions and notable actions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub sandbox_id: String,
    pub at_ms: i64,
    /// `created`, `transition`, `timeout_set`, `expired`, `adopted`, ...
    pub kind: String,
    pub from_state: Option<SandboxState>,
    pub to_state: Option<SandboxState>,
    pub message: String,
}

/// Which sandboxes `list` returns. `state: None` means every state except `destroyed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub state: Option<SandboxState>,
    pub label: Option<(String, String)>,
    /// At most this many (0 = no limit).
    pub limit: usize,
    /// Only ids greater than this one (ids are time-ordered).
    pub after_id: Option<String>,
    /// Only sandboxes owned by this project (see [`SqliteStore::set_owner`]).
    pub project: Option<String>,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the name {0:?} is taken by another sandbox")]
    NameConflict(String),
    #[error("sandbox {0} already exists")]
    DuplicateId(String),
    #[error("sandbox {0} is not in the store")]
    NotFound(String),
    #[error("the state database's disk is full")]
    Full,
    #[error("the template name {0:?} belongs to another project")]
    TemplateOwned(String),
    #[error("another prismd holds the state database")]
    Locked,
    #[error("stored record {id} is unreadable")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("state database {op} failed")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot open the state database at {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// Durable state of sandboxes. Calls block (disk I/O); async callers use `spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    /// Add a new record (and a `created` event). Fails on a clashing id or live name.
    fn insert(&self, rec: &SandboxRecord) -> Result<(), StoreError>;

    /// Replace a record; when its state changed, append a `transition` event with `message`.
    fn update(&self, rec: &SandboxRecord, message: &str) -> Result<(), StoreError>;

    /// Record by exact id.
    fn get(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError>;

    /// Record by exact id, else by the exact name of a sandbox that is not destroyed.
    fn find(&self, id_or_name: &str) -> Result<Option<SandboxRecord>, StoreError>;

    /// What [`Store::find`] would return, when the store can tell from memory alone (no I/O,
    /// never blocks on a write); `None` means "ask `find`". For callers on async threads.
    fn find_cached(&self, id_or_name: &str) -> Option<SandboxRecord> {
        let _ = id_or_name;
        None
    }

    /// Records in id order.
    fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxRecord>, StoreError>;

    /// Append an event that is not a state transition.
    fn add_event(&self, event: &Event) -> Result<(), StoreError>;

    /// The event trail of one sandbox, oldest first.
    fn events(&self, sandbox_id: &str) -> Result<Vec<Event>, StoreError>;

    /// Number of records per state.
    fn counts(&self) -> Result<BTreeMap<SandboxState, u64>, StoreError>;

    /// Delete `destroyed` records last updated before `before_ms` (and their events).
    fn purge_destroyed(&self, before_ms: i64) -> Result<usize, StoreError>;
}

/// Open (creating if needed) the SQLite store at `path`.
pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
    SqliteStore::open_with(path, durability)
}

/// Lock a mutex, recovering the data if a previous holder panicked (SQLite transactions roll
/// back on drop, so the connection is still consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
