//! [`SqliteStore`]'s API keys, sandbox owners, sealed secrets and audit trail (tables of the
//! second migration). The audit table refuses UPDATE and DELETE through triggers.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, sql};
use crate::auth::{ApiKeyRecord, AuditFilter, AuditRecord, SealedSecret};
use crate::{StoreError, lock};

fn limit(n: usize) -> i64 {
    if n == 0 {
        -1
    } else {
        i64::try_from(n).unwrap_or(i64::MAX)
    }
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        project: r.get(2)?,
        hash: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked_at_ms: r.get(5)?,
    })
}

const KEY_COLUMNS: &str = "id, name, project, hash, created_at, revoked_at";

impl SqliteStore {
    /// Add an API key record.
    pub fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        lock(&self.conn)
            .execute(
                "INSERT INTO api_keys (id, name, project, hash, created_at, revoked_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    key.id,
                    key.name,
                    key.project,
                    key.hash,
                    key.created_at_ms,
                    key.revoked_at_ms
                ],
            )
            .map_err(sql("insert api key"))?;
        Ok(())
    }

    /// The key with this id (revoked or not).
    pub fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        lock(&self.conn)
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"),
                [id],
                key_row,
            )
            .optional()
            .map_err(sql("get api key"))
    }

    /// Keys in creation order; only project `p`'s with `Some(p)`.
    pub fn api_keys(&self, project: Option<&str>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE (?1 IS NULL OR project = ?1) \
                 ORDER BY created_at, id"
            ))
            .map_err(sql("list api keys"))?;
        let rows = stmt
            .query_map([project], key_row)
            .map_err(sql("list api keys"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list api keys"))
    }

    /// Mark a key revoked at `at_ms` (idempotent). `false` when there is no such key.
    pub fn revoke_api_key(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let conn = lock(&self.conn);
        conn.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, at_ms],
        )
        .map_err(sql("revoke api key"))?;
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM api_keys WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .map_err(sql("revoke api key"))?;
        Ok(n > 0)
    }

    /// Record that `project` owns `sandbox_id`.
    pub fn set_owner(&self, sandbox_id: &str, project: &str) -> Result<(), StoreError> {
        let conn = lock(&self.conn);
        conn.execute(
            "INSERT OR REPLACE INTO sandbox_owners (sandbox_id, project) VALUES (?1, ?2)",
            params![sandbox_id, project],
        )
        .map_err(sql("set owner"))?;
        self.cache.set_owner(sandbox_id, Some(project.to_string()));
        Ok(())
    }

    /// The project owning `sandbox_id`, if any (sandboxes made by admin keys have none).
    pub fn owner(&self, sandbox_id: &str) -> Result<Option<String>, StoreError> {
        if let Some(owner) = self.cache.owner(sandbox_id) {
            return Ok(owner);
        }
        let conn = lock(&self.conn);
        let owner: Option<String> = conn
            .prepare_cached("SELECT project FROM sandbox_owners WHERE sandbox_id = ?1")
            .and_then(|mut st| st.query_row([sandbox_id], |r| r.get(0)).optional())
            .map_err(sql("get owner"))?;
        self.cache.set_owner(sandbox_id, owner.clone());
        Ok(owner)
    }

    /// [`Self::owner`] from memory only: `None` when the cache does not know (no I/O).
    pub fn owner_cached(&self, sandbox_id: &str) -> Option<Option<String>> {
        self.cache.owner(sandbox_id)
    }

    /// Create or replace a project secret.
    pub fn put_secret(&self, s: &SealedSecret) -> Result<(), StoreError> {
        let conn = lock(&self.conn);
        conn.execute(
            "INSERT OR REPLACE INTO secrets (project, name, nonce, ciphertext, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.project, s.name, s.nonce, s.ciphertext, s.updated_at_ms],
        )
        .map_err(sql("put secret"))?;
        self.cache.forget_secrets(&s.project);
        Ok(())
    }

    /// A project's secrets, by name.
    pub fn secrets(&self, project: &str) -> Result<Vec<SealedSecret>, StoreError> {
        if let Some(s) = self.cache.secrets(project) {
            return Ok(s);
        }
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached(
                "SELECT project, name, nonce, ciphertext, updated_at FROM secrets \
                 WHERE project = ?1 ORDER BY name",
            )
            .map_err(sql("list secrets"))?;
        let rows = stmt
            .query_map([project], |r| {
                Ok(SealedSecret {
                    project: r.get(0)?,
                    name: r.get(1)?,
                    nonce: r.get(2)?,
                    ciphertext: r.get(3)?,
                    updated_at_ms: r.get(4)?,
                })
            })
            .map_err(sql("list secrets"))?;
        let out: Vec<SealedSecret> = rows
            .collect::<Result<_, _>>()
            .map_err(sql("list secrets"))?;
        self.cache.set_secrets(project, out.clone());
        Ok(out)
    }

    /// [`Self::secrets`] from memory only: `None` when the cache does not know (no I/O).
    pub fn secrets_cached(&self, project: &str) -> Option<Vec<SealedSecret>> {
        self.cache.secrets(project)
    }

    /// Remove a secret; `false` when it did not exist.
    pub fn delete_secret(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let conn = lock(&self.conn);
        let n = conn
            .execute(
                "DELETE FROM secrets WHERE project = ?1 AND name = ?2",
                params![project, name],
            )
            .map_err(sql("delete secret"))?;
        self.cache.forget_secrets(project);
        Ok(n > 0)
    }

    /// Append to the audit trail.
    pub fn append_audit(&self, a: &AuditRecord) -> Result<(), StoreError> {
        self.append_audits(std::slice::from_ref(a))
    }

    /// Append several records to the audit trail in one transaction (in order).
    pub fn append_audits(&self, batch: &[AuditRecord]) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(sql("begin"))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO audit (at, key_id, project, action, sandbox_id, status, \
                     request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql("append audit"))?;
            for a in batch {
                stmt.execute(params![
                    a.at_ms,
                    a.key_id,
                    a.project,
                    a.action,
                    a.sandbox_id,
                    a.status,
                    a.request_id
                ])
                .map_err(sql("append audit"))?;
            }
        }
        tx.commit().map_err(sql("commit"))
    }

    /// Audit records, oldest first.
    pub fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, at, key_id, project, action, sandbox_id, status, request_id \
                 FROM audit WHERE (?1 IS NULL OR project = ?1) \
                 AND (?2 IS NULL OR sandbox_id = ?2) AND (?3 IS NULL OR seq > ?3) \
                 ORDER BY seq LIMIT ?4",
            )
            .map_err(sql("read audit"))?;
        let rows = stmt
            .query_map(
                params![f.project, f.sandbox_id, f.after_seq, limit(f.limit)],
                |r| {
                    Ok(AuditRecord {
                        seq: r.get(0)?,
                        at_ms: r.get(1)?,
                        key_id: r.get(2)?,
                        project: r.get(3)?,
                        action: r.get(4)?,
                        sandbox_id: r.get(5)?,
                        status: r.get(6)?,
                        request_id: r.get(7)?,
                    })
                },
            )
            .map_err(sql("read audit"))?;
        rows.collect::<Result<_, _>>().map_err(sql("read audit"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{ListFilter, SandboxRecord, Store};

    fn key(id: &str, project: Option<&str>) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            name: format!("k-{id}"),
            project: project.map(str::to_string),
            hash: "00".into(),
            created_at_ms: 1,
            revoked_at_ms: None,
        }
    }

    #[test]
    fn keys_are_listed_by_project_and_revoked_once() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.insert_api_key(&key("a", None)).unwrap();
        s.insert_api_key(&key("b", Some("p1"))).unwrap();
        assert_eq!(s.api_keys(None).unwrap().len(), 2);
        assert_eq!(s.api_keys(Some("p1")).unwrap()[0].id, "b");
        assert!(s.revoke_api_key("b", 7).unwrap());
        assert!(s.revoke_api_key("b", 9).unwrap(), "idempotent");
        assert_eq!(s.api_key("b").unwrap().unwrap().revoked_at_ms, Some(7));
        assert!(!s.revoke_api_key("zz", 7).unwrap());
    }

    #[test]
    fn list_filters_by_owner() {
        let s = SqliteStore::open_in_memory().unwrap();
        for id in ["s1", "s2", "s3"] {
            s.insert(&SandboxRecord::new_for_test(id, None)).unwrap();
        }
        s.set_owner("s1", "a").unwrap();
        s.set_owner("s3", "b").unwrap();
        let only_a = |p: &str| {
            s.list(&ListFilter {
                project: Some(p.into()),
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
        };
        assert_eq!(only_a("a"), vec!["s1"]);
        assert_eq!(only_a("b"), vec!["s3"]);
        assert_eq!(s.list(&ListFilter::default()).unwrap().len(), 3);
        assert_eq!(s.owner("s2").unwrap(), None);
    }

    #[test]
    fn audit_is_append_only() {
        let s = SqliteStore::open_in_memory().unwrap();
        let rec = AuditRecord {
            seq: 0,
            at_ms: 5,
            key_id: Some("k".into()),
            project: Some("p".into()),
            action: "POST /v1/sandboxes".into(),
            sandbox_id: Some("s1".into()),
            status: 201,
            request_id: None,
        };
        s.append_audit(&rec).unwrap();
        s.append_audit(&AuditRecord {
            project: Some("q".into()),
            ..rec.clone()
        })
        .unwrap();
        let got = s
            .audit(&AuditFilter {
                project: Some("p".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].action, rec.action);
        let conn = lock(&s.conn);
        assert!(conn.execute("UPDATE audit SET status = 200", []).is_err());
        assert!(conn.execute("DELETE FROM audit", []).is_err());
    }

    #[test]
    fn secrets_round_trip_and_delete() {
        let s = SqliteStore::open_in_memory().unwrap();
        let sec = SealedSecret {
            project: "p".into(),
            name: "TOKEN".into(),
            nonce: vec![1; 12],
            ciphertext: vec![2; 20],
            updated_at_ms: 3,
        };
        s.put_secret(&sec).unwrap();
        assert_eq!(s.secrets("p").unwrap(), vec![sec]);
        assert!(s.secrets("q").unwrap().is_empty());
        assert!(s.delete_secret("p", "TOKEN").unwrap());
        assert!(!s.delete_secret("p", "TOKEN").unwrap());
    }
}
