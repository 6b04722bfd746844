//! Project secrets: AES-256-GCM at rest under a master key, injected as environment variables
//! into the project's sandboxes at every process start, never returned, logged or audited.
//!
//! The master key is 32 bytes, hex, from `$PRISM_MASTER_KEY`, else `<state_dir>/master.key`
//! (made 0600 on first start). Each value is sealed with a fresh 96-bit random nonce and the
//! additional data `project \0 name`, so a ciphertext moved to another row does not open.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use prism_core::lifecycle::SecretEnv;
use prism_store::auth::SealedSecret;
use prism_store::{SandboxRecord, SqliteStore};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Environment variable holding the master key (64 hex digits).
pub const MASTER_KEY_ENV: &str = "PRISM_MASTER_KEY";
/// File in the state directory holding the master key.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Label linking a sandbox being created to its project until its owner is recorded.
pub const CREATE_LABEL: &str = "prism.create";

/// What a per-sandbox data-plane token opens (E2B's two tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `envdAccessToken`: the agent's process and filesystem API (and every port).
    Envd,
    /// `trafficAccessToken`: the sandbox's other ports (code interpreter, port proxy).
    Traffic,
}

impl TokenKind {
    fn message(self, id: &str) -> Vec<u8> {
        match self {
            // The envd token predates the kinds: its message stays the bare id.
            Self::Envd => id.as_bytes().to_vec(),
            Self::Traffic => format!("traffic:{id}").into_bytes(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("the master key must be 64 hex digits (32 bytes)")]
    BadMasterKey,
    #[error("cannot read or create the master key file {path}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the system random generator failed")]
    Random,
    #[error("secret {0:?} does not decrypt with this master key")]
    Open(String),
}

/// Sealing, opening and injection of secrets.
pub struct Secrets {
    key: LessSafeKey,
    /// Derives per-sandbox data-plane access tokens (E2B's `envdAccessToken`).
    token_key: ring::hmac::Key,
    rng: SystemRandom,
    store: Arc<SqliteStore>,
    /// Create markers ([`CREATE_LABEL`]) → project, while a create is in flight.
    pending: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

fn parse_hex32(s: &str) -> Result<[u8; 32], SecretsError> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return Err(SecretsError::BadMasterKey);
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o =
            u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| SecretsError::BadMasterKey)?;
    }
    Ok(out)
}

/// The master key: `env` if given, else the state directory's file, made on first use.
fn master_key(state_dir: &Path, env: Option<&str>) -> Result<[u8; 32], SecretsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(k) = env.filter(|k| !k.is_empty()) {
        return parse_hex32(k);
    }
    let path = state_dir.join(MASTER_KEY_FILE);
    let err = |source| SecretsError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_hex32(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| SecretsError::Random)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(err)?;
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(f, "{hex}").map_err(err)?;
            f.sync_all().map_err(err)?;
            tracing::info!(message = "secrets master key created", path = %path.display());
            Ok(key)
        }
        Err(e) => Err(err(e)),
    }
}

fn aad(project: &str, name: &str) -> Vec<u8> {
    [project.as_bytes(), b"\0", name.as_bytes()].concat()
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
pub fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && n.len() <= 128
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

impl Secrets {
    pub fn open(state_dir: &Path, store: Arc<SqliteStore>) -> Result<Self, SecretsError> {
        let env = std::env::var(MASTER_KEY_ENV).ok();
        Self::with_key(master_key(state_dir, env.as_deref())?, store)
    }

    pub fn with_key(key: [u8; 32], store: Arc<SqliteStore>) -> Result<Self, SecretsError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, &key).map_err(|_| SecretsError::BadMasterKey)?;
        let token_key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            ring::digest::digest(
                &ring::digest::SHA256,
                &[&b"prism envd token\0"[..], &key].concat(),
            )
            .as_ref(),
        );
        Ok(Secrets {
            key: LessSafeKey::new(unbound),
            token_key,
            rng: SystemRandom::new(),
            store,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// A data-plane token of sandbox `id` for `kind`: an HMAC under a key derived from the
    /// master key, so it survives restarts and needs no storage. The kinds give different
    /// tokens, so a leaked port (traffic) token does not open the sandbox's process API.
    pub fn access_token(&self, kind: TokenKind, id: &str) -> String {
        let tag = ring::hmac::sign(&self.token_key, &kind.message(id));
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is sandbox `id`'s token of `kind` (constant-time comparison).
    pub fn check_access_token(&self, kind: TokenKind, id: &str, token: &str) -> bool {
        let Some(bytes) = (0..token.len())
            .step_by(2)
            .map(|i| {
                token
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        ring::hmac::verify(&self.token_key, &kind.message(id), &bytes).is_ok()
    }

    pub fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    /// Encrypt `value` for `project`/`name`.
    pub fn seal(
        &self,
        project: &str,
        name: &str,
        value: &str,
    ) -> Result<SealedSecret, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut buf = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(project, name)),
                &mut buf,
            )
            .map_err(|_| SecretsError::Random)?;
        Ok(SealedSecret {
            project: project.to_string(),
            name: name.to_string(),
            nonce: nonce.to_vec(),
            ciphertext: buf,
            updated_at_ms: prism_core::lifecycle::now_ms(),
        })
    }

    /// Decrypt a stored secret.
    pub fn unseal(&self, s: &SealedSecret) -> Result<String, SecretsError> {
        let fail = || SecretsError::Open(s.name.clone());
        let nonce = Nonce::try_assume_unique_for_key(&s.nonce).map_err(|_| fail())?;
        let mut buf = s.ciphertext.clone();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(&s.project, &s.name)), &mut buf)
            .map_err(|_| fail())?;
        String::from_utf8(plain.to_vec()).map_err(|_| fail())
    }

    /// Register a create of `project` in flight; returns the marker to put in [`CREATE_LABEL`].
    pub fn begin_create(&self, project: &str) -> Result<String, SecretsError> {
        let mut m = [0u8; 16];
        self.rng.fill(&mut m).map_err(|_| SecretsError::Random)?;
        let marker: String = m.iter().map(|b| format!("{b:02x}")).collect();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(marker.clone(), project.to_string());
        Ok(marker)
    }

    pub fn end_create(&self, marker: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(marker);
    }

    /// The project of a sandbox whose owner is not recorded yet: its create marker's.
    fn pending_project(&self, rec: &SandboxRecord) -> Option<String> {
        rec.labels.get(CREATE_LABEL).and_then(|m| {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(m)
                .cloned()
        })
    }

    /// The decrypted secrets of the project owning `rec` (blocking: reads the store).
    fn env_blocking(&self, rec: &SandboxRecord) -> BTreeMap<String, String> {
        let project = match self.store.owner(&rec.id) {
            Ok(Some(p)) => Some(p),
            Ok(None) => self.pending_project(rec),
            Err(error) => {
                tracing::error!(message = "cannot look up a sandbox's project", sandbox_id = %rec.id, %error);
                None
            }
        };
        let Some(project) = project else {
            return BTreeMap::new();
        };
        match self.store.secrets(&project) {
            Ok(sealed) => self.open_all(&project, &sealed),
            Err(error) => {
                tracing::error!(message = "cannot read secrets", %project, %error);
                BTreeMap::new()
            }
        }
    }

    /// [`Self::env_blocking`] from the store's memory alone; `None` when it does not know
    /// the owner or the secrets (then the blocking read fills it).
    fn env_cached(&self, rec: &SandboxRecord) -> Option<BTreeMap<String, String>> {
        let project = match self.store.owner_cached(&rec.id)? {
            Some(p) => Some(p),
            None => self.pending_project(rec),
        };
        let Some(project) = project else {
            return Some(BTreeMap::new());
        };
        let sealed = self.store.secrets_cached(&project)?;
        Some(self.open_all(&project, &sealed))
    }

    fn open_all(&self, project: &str, sealed: &[SealedSecret]) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for s in sealed {
            match self.unseal(s) {
                Ok(v) => {
                    env.insert(s.name.clone(), v);
                }
                Err(error) => tracing::error!(message = "secret not injected", %project, %error),
            }
        }
        env
    }
}

/// The provider the manager calls at each process start.
#[derive(Debug, Clone)]
pub struct Provider(pub Arc<Secrets>);

impl SecretEnv for Provider {
    fn env<'a>(&'a self, rec: &'a SandboxRecord) -> BoxFuture<'a, BTreeMap<String, String>> {
        // Usually known from memory: no thread hand-off on the exec path.
        if let Some(env) = self.0.env_cached(rec) {
            return Box::pin(std::future::ready(env));
        }
        let secrets = self.0.clone();
        let rec = rec.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || secrets.env_blocking(&rec))
                .await
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_row() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let s = Secrets::with_key([7; 32], store.clone()).unwrap();
        let sealed = s.seal("p", "TOKEN", "hunter2").unwrap();
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(s.unseal(&sealed).unwrap(), "hunter2");
        let moved = SealedSecret {
            project: "other".into(),
            ..sealed.clone()
        };
        assert!(s.unseal(&moved).is_err());
        let other_key = Secrets::with_key([8; 32], store).unwrap();
        assert!(other_key.unseal(&sealed).is_err());
    }

    #[test]
    fn master_key_file_is_made_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k1 = master_key(dir.path(), None).unwrap();
        let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(master_key(dir.path(), None).unwrap(), k1);
        assert!(matches!(
            master_key(dir.path(), Some("abc")),
            Err(SecretsError::BadMasterKey)
        ));
    }

    #[test]
    fn names() {
        assert!(valid_name("OPENAI_API_KEY"));
        assert!(!valid_name("1X"));
        assert!(!valid_name("A-B"));
    }
}
