//! [`SqliteStore`]'s template versions (tables of the third migration).

use prism_types::templates::TemplateStatus;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, sql};
use crate::templates::TemplateRecord;
use crate::{StoreError, lock};

const COLUMNS: &str = "name, version, project, status, spec, build, error, created_at, updated_at";

struct Raw {
    name: String,
    version: i64,
    project: Option<String>,
    status: String,
    spec: String,
    build: Option<String>,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

fn raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok(Raw {
        name: r.get(0)?,
        version: r.get(1)?,
        project: r.get(2)?,
        status: r.get(3)?,
        spec: r.get(4)?,
        build: r.get(5)?,
        error: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

impl Raw {
    fn decode(self) -> Result<TemplateRecord, StoreError> {
        let id = format!("template {}:{}", self.name, self.version);
        let corrupt = |source| StoreError::Corrupt {
            id: id.clone(),
            source,
        };
        let status = TemplateStatus::parse(&self.status)
            .ok_or_else(|| corrupt(serde::de::Error::custom("unknown status")))?;
        Ok(TemplateRecord {
            version: u32::try_from(self.version)
                .map_err(|_| corrupt(serde::de::Error::custom("bad version")))?,
            spec: serde_json::from_str(&self.spec).map_err(corrupt)?,
            build: match &self.build {
                Some(b) => Some(serde_json::from_str(b).map_err(corrupt)?),
                None => None,
            },
            name: self.name,
            project: self.project,
            status,
            error: self.error,
            created_at_ms: self.created_at,
            updated_at_ms: self.updated_at,
        })
    }
}

fn encode(rec: &TemplateRecord) -> Result<(String, Option<String>), StoreError> {
    let corrupt = |source| StoreError::Corrupt {
        id: format!("template {}", rec.reference()),
        source,
    };
    let spec = serde_json::to_string(&rec.spec).map_err(corrupt)?;
    let build = match &rec.build {
        Some(b) => Some(serde_json::to_string(b).map_err(corrupt)?),
        None => None,
    };
    Ok((spec, build))
}

impl SqliteStore {
    /// Add the next version of `rec.name` (status and times from `rec`; its `version` is
    /// ignored) and return it. A name belongs to the project that created its first version:
    /// a key of another project gets [`StoreError::TemplateOwned`]; an admin (`caller: None`)
    /// may add versions to any name, which keep the name's project.
    pub fn add_template_version(
        &self,
        rec: &TemplateRecord,
        caller: Option<&str>,
    ) -> Result<TemplateRecord, StoreError> {
        let (spec, build) = encode(rec)?;
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(sql("begin"))?;
        let existing: Option<(Option<String>, i64)> = tx
            .query_row(
                "SELECT project, last_version FROM template_names WHERE name = ?1",
                [&rec.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("get template name"))?;
        let (project, version) = match existing {
            Some((owner, last)) => {
                if caller.is_some() && caller != owner.as_deref() {
                    return Err(StoreError::TemplateOwned(rec.name.clone()));
                }
                tx.execute(
                    "UPDATE template_names SET last_version = ?2 WHERE name = ?1",
                    params![rec.name, last + 1],
                )
                .map_err(sql("bump template version"))?;
                (owner, last + 1)
            }
            None => {
                tx.execute(
                    "INSERT INTO template_names (name, project, last_version) VALUES (?1, ?2, 1)",
                    params![rec.name, caller],
                )
                .map_err(sql("insert template name"))?;
                (caller.map(str::to_string), 1)
            }
        };
        tx.execute(
            &format!(
                "INSERT INTO templates ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ),
            params![
                rec.name,
                version,
                project,
                rec.status.as_str(),
                spec,
                build,
                rec.error,
                rec.created_at_ms,
                rec.updated_at_ms
            ],
        )
        .map_err(sql("insert template"))?;
        tx.commit().map_err(sql("commit"))?;
        let mut out = rec.clone();
        out.project = project;
        out.version = u32::try_from(version).unwrap_or(u32::MAX);
        Ok(out)
    }

    /// Write the status, build, error and update time of an existing version.
    pub fn update_template(&self, rec: &TemplateRecord) -> Result<(), StoreError> {
        let (_, build) = encode(rec)?;
        let n = lock(&self.conn)
            .execute(
                "UPDATE templates SET status = ?3, build = ?4, error = ?5, updated_at = ?6 \
                 WHERE name = ?1 AND version = ?2",
                params![
                    rec.name,
                    rec.version,
                    rec.status.as_str(),
                    build,
                    rec.error,
                    rec.updated_at_ms
                ],
            )
            .map_err(sql("update template"))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "template {}",
                rec.reference()
            )));
        }
        Ok(())
    }

    /// One version; `version: None` = the newest `ready` one.
    pub fn template(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<TemplateRecord>, StoreError> {
        let conn = lock(&self.conn);
        let row = match version {
            Some(v) => conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM templates WHERE name = ?1 AND version = ?2"),
                    params![name, v],
                    raw,
                )
                .optional(),
            None => conn
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM templates WHERE name = ?1 AND status = 'ready' \
                         ORDER BY version DESC LIMIT 1"
                    ),
                    [name],
                    raw,
                )
                .optional(),
        }
        .map_err(sql("get template"))?;
        row.map(Raw::decode).transpose()
    }

    /// Every version (of one project's names when `project` is set), by name then version.
    pub fn templates(&self, project: Option<&str>) -> Result<Vec<TemplateRecord>, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM templates WHERE ?1 IS NULL OR project = ?1 \
                 ORDER BY name, version"
            ))
            .map_err(sql("list templates"))?;
        let rows = stmt
            .query_map([project], raw)
            .map_err(sql("list templates"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("list templates"))?;
        rows.into_iter().map(Raw::decode).collect()
    }

    /// Remove one version; `false` if there was none. The name keeps its version counter.
    pub fn delete_template(&self, name: &str, version: u32) -> Result<bool, StoreError> {
        let n = lock(&self.conn)
            .execute(
                "DELETE FROM templates WHERE name = ?1 AND version = ?2",
                params![name, version],
            )
            .map_err(sql("delete template"))?;
        Ok(n > 0)
    }

    /// After a restart: builds that were running are `failed` with `error`; returns how many.
    pub fn fail_unfinished_templates(&self, error: &str, now_ms: i64) -> Result<usize, StoreError> {
        lock(&self.conn)
            .execute(
                "UPDATE templates SET status = 'failed', error = ?1, updated_at = ?2 \
                 WHERE status = 'building'",
                params![error, now_ms],
            )
            .map_err(sql("fail unfinished templates"))
    }
}

#[cfg(test)]
mod tests {
    use prism_types::templates::TemplateSpec;

    use super::*;

    fn rec(name: &str) -> TemplateRecord {
        TemplateRecord {
            name: name.into(),
            version: 0,
            project: None,
            status: TemplateStatus::Building,
            spec: TemplateSpec {
                name: name.into(),
                run: vec!["echo hi".into()],
                ..TemplateSpec::default()
            },
            build: None,
            error: None,
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    #[test]
    fn versions_count_up_are_never_reused_and_belong_to_a_project() {
        let s = SqliteStore::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        let v1 = s
            .add_template_version(&rec("py"), Some("p1"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((v1.version, v1.project.as_deref()), (1, Some("p1")));
        // No ready version yet.
        assert!(
            s.template("py", None)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
        let mut ready = v1.clone();
        ready.status = TemplateStatus::Ready;
        ready.build = Some(crate::templates::TemplateBuild {
            source: "base".into(),
            layers: vec!["ab".into()],
            ..Default::default()
        });
        s.update_template(&ready).unwrap_or_else(|e| panic!("{e}"));
        let got = s.template("py", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.as_ref(), Some(&ready));
        // An admin adds v2 (it stays p1's); another project may not.
        let v2 = s
            .add_template_version(&rec("py"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((v2.version, v2.project.as_deref()), (2, Some("p1")));
        assert!(matches!(
            s.add_template_version(&rec("py"), Some("p2")),
            Err(StoreError::TemplateOwned(_))
        ));
        // v2 is building: the latest ready is still v1.
        assert_eq!(
            s.template("py", None).ok().flatten().map(|r| r.version),
            Some(1)
        );
        assert!(s.delete_template("py", 2).unwrap_or_else(|e| panic!("{e}")));
        assert!(!s.delete_template("py", 2).unwrap_or_else(|e| panic!("{e}")));
        let v3 = s
            .add_template_version(&rec("py"), Some("p1"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v3.version, 3, "a removed version number is not reused");
        s.add_template_version(&rec("other"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.templates(Some("p1")).map(|v| v.len()).ok(), Some(2));
        assert_eq!(s.templates(None).map(|v| v.len()).ok(), Some(3));
        assert_eq!(s.fail_unfinished_templates("restarted", 9).ok(), Some(2));
        let v3 = s.template("py", Some(3)).ok().flatten();
        assert_eq!(
            v3.map(|r| (r.status, r.error)),
            Some((TemplateStatus::Failed, Some("restarted".into())))
        );
    }
}
