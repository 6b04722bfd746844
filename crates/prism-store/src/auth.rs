//! Records of the access-control side of a node: API keys (stored as a hash, never the key),
//! which project owns which sandbox, project secrets (sealed by the daemon before they reach
//! the store) and the append-only audit trail. [`crate::SqliteStore`] implements them.

use serde::{Deserialize, Serialize};

/// An API key as stored: the key itself is shown once at creation and only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// `None`: an admin key (every project); `Some(p)`: a key of project `p` only.
    pub project: Option<String>,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A project secret, encrypted by the daemon (the store never sees the plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub project: String,
    pub name: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub updated_at_ms: i64,
}

/// One entry of the audit trail: who did what to which sandbox, when, with which outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the trail (assigned by the store; ignored on append).
    pub seq: i64,
    pub at_ms: i64,
    /// The API key used (`None` when auth is off).
    pub key_id: Option<String>,
    /// The caller's project (`None` for admin keys and when auth is off).
    pub project: Option<String>,
    /// `METHOD /route/template`, e.g. `POST /v1/sandboxes/{id}/exec`.
    pub action: String,
    pub sandbox_id: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    pub request_id: Option<String>,
}

/// Which audit records to return, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub project: Option<String>,
    pub sandbox_id: Option<String>,
    /// Only records after this sequence number.
    pub after_seq: Option<i64>,
    /// At most this many (0 = no limit).
    pub limit: usize,
}
