//! Templates: named, versioned, immutable sandbox definitions. Building one ([`build`]) runs
//! its setup commands once in a sandbox made from its source and captures what they wrote as a
//! read-only layer of the image store; sandboxes of the version then start from the source's
//! layers under that layer and pin `name:version` ([`crate::resolver`] turns it into a tree).
//! Records live in the state database; [`routes`] are the thin `/v1/templates` handlers.
//!
//! A version that a sandbox (in any state but destroyed) uses cannot be removed (409), so a
//! stopped sandbox always finds its tree again; `image prune` keeps every layer and image a
//! template version needs.

pub mod build;
pub mod routes;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use prism_core::lifecycle::{LifecycleError, SandboxManager, rfc3339};
use prism_images::Digest;
use prism_store::SqliteStore;
use prism_store::templates::TemplateRecord;
use prism_types::templates::{Template, codes as tpl};
use prism_types::{DEFAULT_TEMPLATE, codes};

use crate::error::AppError;

/// The daemon's templates: records in the state database, layers in the image store.
#[derive(Clone)]
pub struct Templates {
    state_dir: PathBuf,
    db: Arc<SqliteStore>,
    manager: SandboxManager,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    NotFound(String),
    #[error("template {0} is used by sandbox {1}: destroy the sandbox first")]
    InUse(String, String),
    #[error("template {reference} failed to build: {message}")]
    BuildFailed { reference: String, message: String },
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Store(#[from] prism_store::StoreError),
    #[error("a template task failed")]
    Task,
}

impl From<TemplateError> for AppError {
    fn from(e: TemplateError) -> Self {
        match e {
            TemplateError::NotFound(m) => {
                AppError::new(StatusCode::NOT_FOUND, codes::TEMPLATE_NOT_FOUND, m)
            }
            e @ TemplateError::InUse(..) => {
                AppError::new(StatusCode::CONFLICT, tpl::TEMPLATE_IN_USE, e.to_string())
            }
            e @ TemplateError::BuildFailed { .. } => AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                tpl::TEMPLATE_BUILD_FAILED,
                e.to_string(),
            ),
            TemplateError::Store(prism_store::StoreError::TemplateOwned(n)) => AppError::new(
                StatusCode::CONFLICT,
                codes::NAME_CONFLICT,
                format!("the template name {n:?} belongs to another project"),
            ),
            TemplateError::Lifecycle(l) => l.into(),
            TemplateError::Store(s) => LifecycleError::Store(s).into(),
            e @ TemplateError::Task => AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                e.to_string(),
            ),
        }
    }
}

/// The API view of a stored version.
pub fn to_api(r: &TemplateRecord) -> Template {
    let b = r.build.as_ref();
    Template {
        name: r.name.clone(),
        version: r.version,
        reference: r.reference(),
        status: r.status,
        error: r.error.clone(),
        source: b.map(|b| {
            b.source
                .strip_prefix(prism_core::lifecycle::source::IMAGE_PREFIX)
                .unwrap_or(&b.source)
                .to_string()
        }),
        layers: b
            .map(|b| b.layers.iter().map(|h| format!("sha256:{h}")).collect())
            .unwrap_or_default(),
        size_bytes: b.map_or(0, |b| b.size_bytes),
        project: r.project.clone(),
        spec: r.spec.clone(),
        created_at: rfc3339(r.created_at_ms),
        built_at: (r.status != prism_types::templates::TemplateStatus::Building)
            .then(|| rfc3339(r.updated_at_ms)),
    }
}

/// Whether a caller of `project` (`None` = admin) may see `rec`: its own and the admins'.
fn visible(project: Option<&str>, rec: &TemplateRecord) -> bool {
    project.is_none() || rec.project.is_none() || rec.project.as_deref() == project
}

/// Whether it may change (remove) it: only its own (admins: all).
fn owned(project: Option<&str>, rec: &TemplateRecord) -> bool {
    project.is_none() || rec.project.as_deref() == project
}

/// Refuse (404, as if unknown) a create by a `project` key from another project's template.
pub async fn check_use(
    db: &Arc<SqliteStore>,
    project: &str,
    template: &str,
) -> Result<(), AppError> {
    let Some((name, _)) = prism_types::templates::parse_reference(template) else {
        return Ok(()); // the resolver gives the precise error
    };
    if prism_core::lifecycle::templates::TEMPLATES.contains(&name) {
        return Ok(());
    }
    let (db, n) = (db.clone(), name.to_string());
    let recs = tokio::task::spawn_blocking(move || db.templates(None))
        .await
        .map_err(|_| TemplateError::Task)?
        .map_err(TemplateError::Store)?;
    if recs
        .iter()
        .any(|r| r.name == n && !visible(Some(project), r))
    {
        return Err(TemplateError::NotFound(format!("unknown template {name:?}")).into());
    }
    Ok(())
}

impl Templates {
    pub fn new(state_dir: PathBuf, db: Arc<SqliteStore>, manager: SandboxManager) -> Self {
        Templates {
            state_dir,
            db,
            manager,
        }
    }

    async fn db<T, F>(&self, f: F) -> Result<T, TemplateError>
    where
        T: Send + 'static,
        F: FnOnce(&SqliteStore) -> Result<T, prism_store::StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        Ok(tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|_| TemplateError::Task)??)
    }

    /// Every version the caller may see, by name then version.
    pub async fn list(&self, project: Option<String>) -> Result<Vec<Template>, TemplateError> {
        let all = self.db(|d| d.templates(None)).await?;
        Ok(all
            .iter()
            .filter(|r| visible(project.as_deref(), r))
            .map(to_api)
            .collect())
    }

    /// The versions `reference` names: `name:v` one, `name` all of them (oldest first).
    async fn matching(
        &self,
        project: Option<&str>,
        reference: &str,
    ) -> Result<Vec<TemplateRecord>, TemplateError> {
        let not_found = || TemplateError::NotFound(format!("no template {reference:?}"));
        let (name, version) =
            prism_types::templates::parse_reference(reference).ok_or_else(not_found)?;
        let name = name.to_string();
        let recs = self.db(|d| d.templates(None)).await?;
        let out: Vec<_> = recs
            .into_iter()
            .filter(|r| r.name == name && version.is_none_or(|v| r.version == v))
            .filter(|r| visible(project, r))
            .collect();
        if out.is_empty() {
            return Err(not_found());
        }
        Ok(out)
    }

    /// One version: `name:v`, or the newest version (any status) of `name`.
    pub async fn get(
        &self,
        project: Option<String>,
        reference: &str,
    ) -> Result<Template, TemplateError> {
        let mut recs = self.matching(project.as_deref(), reference).await?;
        recs.pop()
            .map(|r| to_api(&r))
            .ok_or_else(|| TemplateError::NotFound(format!("no template {reference:?}")))
    }

    /// Remove `name:v` (or every version of `name`). Refused, and nothing removed, while a
    /// sandbox that is not destroyed uses one of them. Their layers go with the next
    /// `image prune`.
    pub async fn remove(
        &self,
        project: Option<String>,
        reference: &str,
    ) -> Result<Vec<Template>, TemplateError> {
        let recs = self.matching(project.as_deref(), reference).await?;
        if let Some(r) = recs.iter().find(|r| !owned(project.as_deref(), r)) {
            return Err(TemplateError::NotFound(format!(
                "no template {} of this project",
                r.reference()
            )));
        }
        let users = self.users().await?;
        for r in &recs {
            if let Some((_, id)) = users.iter().find(|(t, _)| *t == r.reference()) {
                return Err(TemplateError::InUse(r.reference(), id.clone()));
            }
        }
        let mut removed = Vec::new();
        for r in recs {
            let (n, v) = (r.name.clone(), r.version);
            if self.db(move |d| d.delete_template(&n, v)).await? {
                tracing::info!(message = "template removed", template = %r.reference());
                removed.push(to_api(&r));
            }
        }
        Ok(removed)
    }

    /// `(template key, sandbox id)` of every sandbox that is not destroyed.
    async fn users(&self) -> Result<Vec<(String, String)>, TemplateError> {
        let mut out = Vec::new();
        let mut filter = prism_store::ListFilter::default();
        loop {
            let (page, next) = self.manager.list(filter.clone()).await?;
            out.extend(page.into_iter().map(|s| (s.template, s.id)));
            match next {
                Some(c) => filter.after_id = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Layers and images every stored version needs: what `image prune` must keep.
    pub fn keep(
        db: &SqliteStore,
    ) -> Result<(Vec<Digest>, BTreeSet<Digest>), prism_store::StoreError> {
        let mut layers = Vec::new();
        let mut images = BTreeSet::new();
        for r in db.templates(None)? {
            let Some(b) = r.build else { continue };
            layers.extend(
                b.layers
                    .iter()
                    .filter_map(|h| Digest::parse(&format!("sha256:{h}")).ok()),
            );
            if b.source != DEFAULT_TEMPLATE
                && let Some(d) = b
                    .source
                    .strip_prefix(prism_core::lifecycle::source::IMAGE_PREFIX)
                    .and_then(|r| prism_images::Reference::parse(r).ok()?.digest)
            {
                images.insert(d);
            }
        }
        Ok((layers, images))
    }
}
