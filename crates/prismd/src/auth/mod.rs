//! Who is calling: API keys, projects and the [`Caller`] every handler can ask for.
//!
//! A key is `prism_<id>_<secret>`: `<id>` (12 hex digits) names the record, `<secret>` is 256
//! random bits. Only the SHA-256 of the whole key is stored. A slow password hash (argon2)
//! protects low-entropy secrets chosen by people; these keys are 256-bit random strings, so
//! a plain SHA-256 is already beyond brute force and keeps checking a request at a hash
//! lookup. Keys live in memory (loaded at start, updated by create and revoke, both of which
//! write the store first), so a revoked key is refused by the very next request.
//!
//! Enforcement sits in one place, [`guard::guard`], a route layer over every API route: it
//! authenticates, rate-limits, refuses project keys on admin routes, and refuses (as "no such
//! sandbox") any route whose path names a sandbox of another project. Routes added later get
//! all of it by construction.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use prism_store::SqliteStore;
use prism_store::auth::ApiKeyRecord;
use prism_types::auth::{API_KEY_HEADER, codes};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::AppError;

pub mod audit;
pub mod guard;
pub mod limits;
pub mod routes;
pub mod secret_routes;
pub mod secrets;

pub use limits::Limits;

/// Who is calling (inserted by [`guard::guard`] into every request it lets through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's id; `None` when auth is off.
    pub key_id: Option<String>,
    /// `None`: admin (every project); `Some(p)`: only project `p`.
    pub project: Option<String>,
}

impl Caller {
    /// The caller when auth is off: an admin without a key.
    pub fn anonymous() -> Self {
        Caller {
            key_id: None,
            project: None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.project.is_none()
    }

    /// Refuse unless admin.
    pub fn require_admin(&self) -> Result<(), AppError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(forbidden("this needs an admin API key"))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Fail closed: a handler asking for the caller on a route the guard does not cover.
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            tracing::error!(message = "route is not behind the auth guard", path = %parts.uri.path());
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                prism_types::codes::INTERNAL,
                "this route is not behind the auth guard (see the daemon log)",
            )
        })
    }
}

pub(crate) fn unauthorized(message: &str) -> AppError {
    AppError::new(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, message)
}

pub(crate) fn forbidden(message: &str) -> AppError {
    AppError::new(StatusCode::FORBIDDEN, codes::FORBIDDEN, message)
}

/// A key as kept in memory.
#[derive(Debug, Clone)]
struct KeyEntry {
    hash: [u8; 32],
    project: Option<String>,
    revoked: bool,
}

/// Authentication state of the daemon.
pub struct Auth {
    enabled: bool,
    store: Arc<SqliteStore>,
    keys: RwLock<HashMap<String, KeyEntry>>,
    pub limits: limits::RateLimiter,
    rng: SystemRandom,
    /// Serialises the creates of each project (quota checks).
    project_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    secrets: Option<Arc<secrets::Secrets>>,
    audit: audit::AuditLog,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equality without an early exit (the compared values are hashes, so timing would reveal
/// little anyway).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn entry(rec: &ApiKeyRecord) -> Option<KeyEntry> {
    Some(KeyEntry {
        hash: unhex32(&rec.hash)?,
        project: rec.project.clone(),
        revoked: rec.revoked_at_ms.is_some(),
    })
}

/// Hex digits of a key's id and of its secret.
const KEY_ID_HEX: usize = 12;
const KEY_SECRET_HEX: usize = 64;

/// The same key in the E2B SDKs' format, `e2b_<hex>` (some SDK versions refuse any other
/// shape): `prism_<id>_<secret>` → `e2b_<id><secret>`.
pub fn e2b_form(key: &str) -> Option<String> {
    let (id, secret) = key.strip_prefix("prism_")?.split_once('_')?;
    (id.len() == KEY_ID_HEX && secret.len() == KEY_SECRET_HEX).then(|| format!("e2b_{id}{secret}"))
}

/// A presented key in Prism's own form: `e2b_<id><secret>` (see [`e2b_form`]) becomes
/// `prism_<id>_<secret>`; anything else is returned as it is.
fn canonical_key(key: &str) -> std::borrow::Cow<'_, str> {
    match key.strip_prefix("e2b_") {
        Some(hex)
            if hex.len() == KEY_ID_HEX + KEY_SECRET_HEX
                && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            let (id, secret) = hex.split_at(KEY_ID_HEX);
            format!("prism_{id}_{secret}").into()
        }
        _ => key.into(),
    }
}

/// The key's id, from `prism_<id>_<secret>`.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("prism_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some(id)
}

/// The key a request presents: `Authorization: Bearer <key>` or `X-API-KEY: <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(k.trim());
        }
    }
    headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A project name: `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`.
pub fn valid_project(p: &str) -> bool {
    let mut chars = p.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && p.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Auth {
    /// Load the keys of `store`. `enabled: false` lets every request through as an admin.
    pub fn new(
        enabled: bool,
        store: Arc<SqliteStore>,
        limits: Limits,
    ) -> Result<Self, prism_store::StoreError> {
        let mut keys = HashMap::new();
        for rec in store.api_keys(None)? {
            match entry(&rec) {
                Some(e) => {
                    keys.insert(rec.id.clone(), e);
                }
                None => {
                    tracing::warn!(message = "unreadable API key hash; key ignored", key_id = %rec.id)
                }
            }
        }
        Ok(Auth {
            enabled,
            audit: audit::AuditLog::start(store.clone()),
            store,
            keys: RwLock::new(keys),
            limits: limits::RateLimiter::new(limits),
            rng: SystemRandom::new(),
            project_locks: Default::default(),
            secrets: None,
        })
    }

    /// Serve project secrets from `s`.
    pub fn with_secrets(mut self, s: Arc<secrets::Secrets>) -> Self {
        self.secrets = Some(s);
        self
    }

    pub fn secrets(&self) -> Option<Arc<secrets::Secrets>> {
        self.secrets.clone()
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    /// The audit trail's writer.
    pub fn audit(&self) -> &audit::AuditLog {
        &self.audit
    }

    /// Who presents these headers. With auth off, everyone is [`Caller::anonymous`].
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AppError> {
        if !self.enabled {
            return Ok(Caller::anonymous());
        }
        let key = presented_key(headers).ok_or_else(|| {
            unauthorized(
                "an API key is required: send Authorization: Bearer <key> or X-API-KEY: <key> \
                 (prismctl reads PRISM_API_KEY)",
            )
        })?;
        let invalid = || unauthorized("invalid or revoked API key");
        let key = canonical_key(key);
        let key = key.as_ref();
        let id = key_id(key).ok_or_else(invalid)?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let e = keys.get(id).ok_or_else(invalid)?;
        let presented = sha256(key.as_bytes());
        if e.revoked || !same(&presented, &e.hash) {
            return Err(invalid());
        }
        Ok(Caller {
            key_id: Some(id.to_string()),
            project: e.project.clone(),
        })
    }

    fn random(&self, n: usize) -> Result<Vec<u8>, AppError> {
        let mut buf = vec![0u8; n];
        self.rng.fill(&mut buf).map_err(|_| {
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                prism_types::codes::INTERNAL,
                "the system random generator failed",
            )
        })?;
        Ok(buf)
    }

    /// Make, store and return a new key (the only time the secret exists outside the caller).
    pub fn create_key(
        &self,
        name: &str,
        project: Option<&str>,
    ) -> Result<(String, ApiKeyRecord), AppError> {
        let id = hex(&self.random(KEY_ID_HEX / 2)?);
        let key = format!("prism_{id}_{}", hex(&self.random(KEY_SECRET_HEX / 2)?));
        let hash = sha256(key.as_bytes());
        let rec = ApiKeyRecord {
            id: id.clone(),
            name: name.to_string(),
            project: project.map(str::to_string),
            hash: hex(&hash),
            created_at_ms: prism_core::lifecycle::now_ms(),
            revoked_at_ms: None,
        };
        self.store.insert_api_key(&rec).map_err(store_err)?;
        self.keys.write().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            KeyEntry {
                hash,
                project: rec.project.clone(),
                revoked: false,
            },
        );
        Ok((key, rec))
    }

    /// Revoke a key (durably first, then in memory). `false`: no such key.
    pub fn revoke_key(&self, id: &str) -> Result<bool, AppError> {
        let found = self
            .store
            .revoke_api_key(id, prism_core::lifecycle::now_ms())
            .map_err(store_err)?;
        if let Some(e) = self
            .keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            e.revoked = true;
        }
        Ok(found)
    }

    /// The create lock of `project`.
    pub fn project_lock(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.project_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(project.to_string())
            .or_default()
            .clone()
    }

    /// Whether a live admin key exists.
    pub fn has_admin_key(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|e| e.project.is_none() && !e.revoked)
    }
}

pub(crate) fn store_err(e: prism_store::StoreError) -> AppError {
    AppError::from(prism_core::lifecycle::LifecycleError::Store(e))
}

/// With auth on and no live admin key: make one, print it once on stderr and write it 0600 to
/// `<state_dir>/admin.key` for prismctl on this host. Returns the path written.
pub fn bootstrap(
    auth: &Auth,
    state_dir: &std::path::Path,
) -> Result<Option<std::path::PathBuf>, std::io::Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !auth.enabled() || auth.has_admin_key() {
        return Ok(None);
    }
    let (key, rec) = auth
        .create_key("bootstrap", None)
        .map_err(|e| std::io::Error::other(e.body.message))?;
    let path = state_dir.join(ADMIN_KEY_FILE);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(f, "{key}")?;
    eprintln!(
        "prismd: created the bootstrap admin API key {} (shown once; also written to {}):\n{key}",
        rec.id,
        path.display()
    );
    tracing::info!(message = "bootstrap admin API key created", key_id = %rec.id, path = %path.display());
    Ok(Some(path))
}

/// The file in the state directory holding the bootstrap admin key.
pub const ADMIN_KEY_FILE: &str = "admin.key";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn auth() -> Auth {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        Auth::new(true, store, Limits::default()).unwrap()
    }

    fn bearer(k: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {k}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn keys_authenticate_until_revoked() {
        let a = auth();
        let (key, rec) = a.create_key("ci", Some("p1")).unwrap();
        assert!(!rec.hash.contains(&key[6..]), "only the hash is stored");
        let c = a.authenticate(&bearer(&key)).unwrap();
        assert_eq!(c.project.as_deref(), Some("p1"));
        let mut h = HeaderMap::new();
        h.insert(API_KEY_HEADER, key.parse().unwrap());
        assert_eq!(a.authenticate(&h).unwrap(), c);
        // Same id, different secret.
        let forged = format!("prism_{}_{}", rec.id, "0".repeat(64));
        assert!(a.authenticate(&bearer(&forged)).is_err());
        assert!(a.authenticate(&HeaderMap::new()).is_err());
        // The E2B form of the same key is the same key; a forged one is not.
        let e2b = e2b_form(&key).unwrap();
        assert!(e2b.starts_with("e2b_") && e2b[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a.authenticate(&bearer(&e2b)).unwrap(), c);
        let forged = format!("e2b_{}{}", rec.id, "0".repeat(64));
        assert!(a.authenticate(&bearer(&forged)).is_err());
        assert!(a.authenticate(&bearer("e2b_00")).is_err());
        assert!(a.revoke_key(&rec.id).unwrap());
        assert!(a.authenticate(&bearer(&e2b)).is_err());
        assert_eq!(
            a.authenticate(&bearer(&key)).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        // Reloading from the store keeps it revoked.
        let b = Auth::new(true, a.store().clone(), Limits::default()).unwrap();
        assert!(b.authenticate(&bearer(&key)).is_err());
    }

    #[test]
    fn auth_off_is_anonymous_admin() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let a = Auth::new(false, store, Limits::default()).unwrap();
        assert!(a.authenticate(&HeaderMap::new()).unwrap().is_admin());
    }

    #[test]
    fn project_names() {
        assert!(valid_project("team-a.prod_1"));
        assert!(!valid_project(""));
        assert!(!valid_project("-x"));
        assert!(!valid_project("a/b"));
    }
}
