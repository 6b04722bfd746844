//! The in-memory copy of hot rows that [`super::SqliteStore`] keeps next to SQLite: the records
//! of sandboxes that are not destroyed (with their owner) and each project's sealed secrets.
//!
//! Coherence: the database stays the truth (a restart, even after a kill -9, reads it again).
//! Every write updates the cache after its commit and while it still holds the connection's
//! lock, and every fill from a read happens under that lock too, so a fill cannot put back a
//! row that a concurrent write replaced. Readers of the cache take only the cache's own lock,
//! never the connection's: a hit costs no I/O and never waits for a write in progress.
//! Destroyed records are not kept (their lookups read the database), so the cache holds at
//! most the live sandboxes.

use std::collections::HashMap;
use std::sync::Mutex;

use prism_types::SandboxState;

use crate::auth::SealedSecret;
use crate::{SandboxRecord, lock};

struct Entry {
    rec: SandboxRecord,
    /// The owning project: `None` not looked up yet, `Some(None)` owned by no project.
    owner: Option<Option<String>>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, Entry>,
    /// Name → id of the cached live records that have a name.
    names: HashMap<String, String>,
    /// Project → its sealed secrets by name (the result of `secrets(project)`).
    secrets: HashMap<String, Vec<SealedSecret>>,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Cache {
    inner: Mutex<Inner>,
}

/// Sandbox ids are 32 lowercase hex digits (uuid v7, simple form); names never look like one.
fn looks_like_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Cache {
    /// The record of `id`, if cached.
    pub fn get(&self, id: &str) -> Option<SandboxRecord> {
        lock(&self.inner).records.get(id).map(|e| e.rec.clone())
    }

    /// The record `find(id_or_name)` would return, if the cache knows it without doubt: a
    /// cached id, or a cached live name that cannot also be an uncached id.
    pub fn find(&self, id_or_name: &str) -> Option<SandboxRecord> {
        let inner = lock(&self.inner);
        if let Some(e) = inner.records.get(id_or_name) {
            return Some(e.rec.clone());
        }
        if looks_like_id(id_or_name) {
            return None;
        }
        let id = inner.names.get(id_or_name)?;
        inner.records.get(id).map(|e| e.rec.clone())
    }

    /// Keep `rec` as the current row of its id (a destroyed record is dropped instead).
    /// `owner`: its owner when the caller read it with the row (else the one cached is kept).
    pub fn put(&self, rec: &SandboxRecord, owner: Option<Option<String>>) {
        let mut inner = lock(&self.inner);
        let old = inner.records.remove(&rec.id);
        if let Some(old_name) = old.as_ref().and_then(|e| e.rec.name.as_ref())
            && inner.names.get(old_name) == Some(&rec.id)
        {
            inner.names.remove(old_name);
        }
        if rec.state == SandboxState::Destroyed {
            return;
        }
        let owner = owner.or_else(|| old.and_then(|e| e.owner));
        if let Some(name) = &rec.name {
            inner.names.insert(name.clone(), rec.id.clone());
        }
        inner.records.insert(
            rec.id.clone(),
            Entry {
                rec: rec.clone(),
                owner,
            },
        );
    }

    /// The owner of a cached record, if looked up before.
    pub fn owner(&self, id: &str) -> Option<Option<String>> {
        lock(&self.inner)
            .records
            .get(id)
            .and_then(|e| e.owner.clone())
    }

    /// Note the owner of `id` (kept only while its record is cached).
    pub fn set_owner(&self, id: &str, project: Option<String>) {
        if let Some(e) = lock(&self.inner).records.get_mut(id) {
            e.owner = Some(project);
        }
    }

    pub fn secrets(&self, project: &str) -> Option<Vec<SealedSecret>> {
        lock(&self.inner).secrets.get(project).cloned()
    }

    pub fn set_secrets(&self, project: &str, secrets: Vec<SealedSecret>) {
        lock(&self.inner)
            .secrets
            .insert(project.to_string(), secrets);
    }

    /// Forget a project's secrets (after a change; the next read fills them again).
    pub fn forget_secrets(&self, project: &str) {
        lock(&self.inner).secrets.remove(project);
    }

    /// Forget everything (tests that change rows behind the store's back).
    #[cfg(test)]
    pub fn clear(&self) {
        *lock(&self.inner) = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rec(id: &str, name: Option<&str>, state: SandboxState) -> SandboxRecord {
        SandboxRecord {
            state,
            ..SandboxRecord::new_for_test(id, name)
        }
    }

    #[test]
    fn names_follow_renames_and_destruction() {
        let c = Cache::default();
        c.put(&rec("a", Some("web"), SandboxState::Running), Some(None));
        assert_eq!(c.find("web").unwrap().id, "a");
        assert_eq!(c.owner("a"), Some(None));
        c.set_owner("a", Some("p".into()));
        c.put(&rec("a", Some("api"), SandboxState::Running), None);
        assert!(c.find("web").is_none());
        assert_eq!(c.find("api").unwrap().id, "a");
        assert_eq!(c.owner("a"), Some(Some("p".into())));
        // The name moves to a new sandbox after the old one is destroyed.
        c.put(&rec("a", Some("api"), SandboxState::Destroyed), None);
        assert!(c.get("a").is_none() && c.find("api").is_none());
        c.put(&rec("b", Some("api"), SandboxState::Creating), Some(None));
        assert_eq!(c.find("api").unwrap().id, "b");
        // An owner is never kept for a record the cache does not hold.
        c.set_owner("zz", Some("p".into()));
        assert_eq!(c.owner("zz"), None);
    }

    #[test]
    fn an_id_shaped_key_is_never_answered_by_name() {
        let c = Cache::default();
        let idlike = "0123456789abcdef0123456789abcdef";
        c.put(&rec("x", Some(idlike), SandboxState::Running), Some(None));
        assert!(c.find(idlike).is_none());
    }
}
