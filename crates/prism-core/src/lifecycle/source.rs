//! Where a sandbox's root filesystem comes from when it is not a built-in template: an OCI
//! image or a stored, versioned template. prism-core cannot depend on prism-images, so the
//! daemon implements [`RootfsResolver`] over its image store and template records and hands it
//! to the manager ([`super::SandboxManager::set_resolver`]).
//!
//! A source is resolved once, at create, into a *pinned* key that names exactly one tree (an
//! image's manifest digest, or `name:version` of a template); the key is what the sandbox
//! record keeps in `template`, so every later start of the sandbox gets the same filesystem
//! even if the tag moved or a newer template version was built since.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use prism_store::ListFilter;
use prism_types::SandboxState;

use super::manager::blocking;
use super::{LifecycleError, SandboxManager, templates};
use crate::RootfsSpec;

/// Prefix of the pinned key of an image source in a sandbox record's `template`.
pub const IMAGE_PREFIX: &str = "image:";

/// What a create request asks to start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI image reference as the user wrote it.
    Image(String),
    /// A stored template, `name` (newest ready version) or `name:version`.
    Template(String),
}

/// How the sandbox's processes start by default (from an image config or a template).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessDefaults {
    /// `KEY=VALUE` pairs in the image's order.
    pub env: Vec<(String, String)>,
    /// The main process when the request names none (empty = none).
    pub cmd: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    /// Resource limits (each field used when the request leaves it unset).
    pub resources: prism_types::Resources,
    /// Exposed ports (used when the request lists none).
    pub ports: Vec<u16>,
}

/// A resolved source.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Key kept in the sandbox record (`image:<repo>@sha256:…`); [`RootfsResolver::rootfs`]
    /// turns it into the same tree at every start.
    pub pinned: String,
    /// The user-facing pinned reference (`<repo>@sha256:…`).
    pub reference: String,
    pub defaults: ProcessDefaults,
}

/// Why a source could not be resolved; prismd maps the kind to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveErrorKind {
    /// The reference is malformed.
    BadReference,
    /// No such image (in the registry or, for a pinned key, in the store).
    NotFound,
    /// The registry refused the credentials.
    Auth,
    /// The registry could not be reached or failed.
    Unreachable,
    /// The image is malformed (bad manifest, digest mismatch, unsafe layer).
    BadImage,
    /// No such template (or no ready version of it).
    TemplateNotFound,
    /// The template version exists but is still building or failed.
    TemplateNotReady,
    /// Anything else (local I/O); details are in the daemon log.
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ResolveError {
    pub kind: ResolveErrorKind,
    pub message: String,
}

impl ResolveError {
    pub fn new(kind: ResolveErrorKind, message: impl Into<String>) -> Self {
        ResolveError {
            kind,
            message: message.into(),
        }
    }
}

/// Resolves image (and later template) sources into root filesystems.
pub trait RootfsResolver: Send + Sync + 'static {
    /// Resolve `source` for a new sandbox, fetching it if this node lacks it, and pin it so
    /// image garbage collection keeps its layers.
    fn resolve(&self, source: Source) -> BoxFuture<'_, Result<Resolved, ResolveError>>;
    /// The root filesystem of a pinned key (no network; called at every start).
    fn rootfs(&self, pinned: &str) -> Result<RootfsSpec, ResolveError>;
}

impl SandboxManager {
    /// Start sandboxes from images through `resolver` (set once, before serving requests).
    pub fn set_resolver(&self, resolver: Arc<dyn RootfsResolver>) {
        if self.inner.resolver.set(resolver).is_err() {
            tracing::warn!(message = "a rootfs resolver was already set; keeping the first");
        }
    }

    pub(crate) fn resolver(&self) -> Result<&Arc<dyn RootfsResolver>, LifecycleError> {
        self.inner.resolver.get().ok_or(LifecycleError::NoImages)
    }

    /// The root filesystem of a record's `template` (a built-in template or a pinned source:
    /// an image key, or a template's `name:version`).
    pub(crate) fn rootfs_of(&self, template: &str) -> Result<RootfsSpec, LifecycleError> {
        if template.starts_with(IMAGE_PREFIX) || template.contains(':') {
            Ok(self.resolver()?.rootfs(template)?)
        } else {
            templates::rootfs(template, &self.inner.cfg.state_dir)
        }
    }

    /// Pinned sources (`template` keys: images and template versions) of every sandbox that
    /// is not destroyed: what image garbage collection and template removal must keep.
    pub async fn sources_in_use(&self) -> Result<BTreeSet<String>, LifecycleError> {
        let recs = self.store(|s| s.list(&ListFilter::default())).await?;
        Ok(recs
            .into_iter()
            .filter(|r| {
                r.state != SandboxState::Destroyed
                    && (r.template.starts_with(IMAGE_PREFIX) || r.template.contains(':'))
            })
            .map(|r| r.template)
            .collect())
    }

    /// A stopped sandbox's writable layers (to capture them as a template layer).
    pub async fn writable_layers(
        &self,
        id_or_name: &str,
    ) -> Result<crate::WritableLayers, LifecycleError> {
        let (_g, rec) = self.locked(id_or_name).await?;
        if rec.state != SandboxState::Stopped {
            return Err(LifecycleError::InvalidRequest(format!(
                "sandbox {} must be stopped to capture its writable layer",
                rec.id
            )));
        }
        let rt = self.inner.runtime.clone();
        blocking(move || rt.writable_layers(&rec.id))
            .await?
            .map_err(|source| LifecycleError::Runtime {
                op: "capture",
                source,
            })
    }
}

/// Apply image or template defaults to a create request: their env under the request's, their
/// command when the request has none, their working directory, user, each resource limit and
/// ports when the request names none.
pub fn apply_defaults(req: &mut prism_types::CreateSandboxRequest, d: ProcessDefaults) {
    let r = &mut req.resources;
    r.cpus = r.cpus.or(d.resources.cpus);
    r.memory_mb = r.memory_mb.or(d.resources.memory_mb);
    r.pids = r.pids.or(d.resources.pids);
    r.disk_mb = r.disk_mb.or(d.resources.disk_mb);
    if req.ports.is_empty() {
        req.ports = d.ports;
    }
    let mut env: BTreeMap<String, String> = d.env.into_iter().collect();
    env.append(&mut req.env);
    req.env = env;
    if req.cmd.is_none() && !d.cmd.is_empty() {
        req.cmd = Some(d.cmd);
    }
    if req.cwd.is_none() {
        req.cwd = d.cwd;
    }
    if req.user.is_none() {
        req.user = d.user;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wins_over_image_defaults() {
        let mut req = prism_types::CreateSandboxRequest {
            env: [("A".to_string(), "req".to_string())].into(),
            cwd: Some("/w".into()),
            resources: prism_types::Resources {
                memory_mb: Some(128),
                ..Default::default()
            },
            ..Default::default()
        };
        apply_defaults(
            &mut req,
            ProcessDefaults {
                env: vec![("A".into(), "img".into()), ("B".into(), "img".into())],
                cmd: vec!["sh".into()],
                cwd: Some("/app".into()),
                user: Some("1000".into()),
                resources: prism_types::Resources {
                    cpus: Some(2.0),
                    memory_mb: Some(512),
                    ..Default::default()
                },
                ports: vec![8080],
            },
        );
        assert_eq!(req.resources.cpus, Some(2.0));
        assert_eq!(req.ports, vec![8080]);
        assert_eq!(req.env["A"], "req");
        assert_eq!(req.env["B"], "img");
        assert_eq!(req.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(req.cwd.as_deref(), Some("/w"));
        assert_eq!(req.user.as_deref(), Some("1000"));
        assert_eq!(
            req.resources.memory_mb,
            Some(128),
            "the request's limit wins"
        );
        let mut req = prism_types::CreateSandboxRequest {
            cmd: Some(vec!["true".into()]),
            ..Default::default()
        };
        apply_defaults(&mut req, ProcessDefaults::default());
        assert_eq!(req.cmd, Some(vec!["true".to_string()]));
        assert_eq!(req.cwd, None);
    }
}
