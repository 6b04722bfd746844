//! The daemon's [`RootfsResolver`]: sandboxes from OCI images in the store under
//! `<state>/images`, pulled anonymously on create when this node lacks them (pull private
//! images first with `POST /v1/images/pull` and credentials), and from built template versions
//! (their source's tree under their captured layers).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use prism_core::RootfsSpec;
use prism_core::lifecycle::source::{IMAGE_PREFIX, ProcessDefaults};
use prism_core::lifecycle::{
    ResolveError, ResolveErrorKind as K, Resolved, RootfsResolver, Source,
};
use prism_images::registry::RegistryError;
use prism_images::store::StoreError;
use prism_images::{
    Credentials, Digest, ImageRecord, ImageStore, PullError, Reference, RegistryClient,
};
use prism_store::SqliteStore;
use prism_store::templates::TemplateRecord;
use prism_types::templates::TemplateStatus;

use crate::error::chain;

/// Resolves `image` sources over the image store of a state directory, and template sources
/// over the template records of the state database (when given one).
pub struct ImageResolver {
    state_dir: PathBuf,
    templates: Option<Arc<SqliteStore>>,
}

impl ImageResolver {
    pub fn new(state_dir: &Path) -> Self {
        ImageResolver {
            state_dir: state_dir.to_path_buf(),
            templates: None,
        }
    }

    /// Also resolve stored templates.
    pub fn with_templates(mut self, store: Arc<SqliteStore>) -> Self {
        self.templates = Some(store);
        self
    }

    fn template_record(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<TemplateRecord>, ResolveError> {
        let Some(db) = &self.templates else {
            return Ok(None);
        };
        db.template(name, version).map_err(|e| {
            tracing::error!(message = "template lookup failed", error = %chain(&e));
            ResolveError::new(K::Internal, "template lookup failed (see the daemon log)")
        })
    }

    async fn resolve_template(&self, reference: String) -> Result<Resolved, ResolveError> {
        let (name, version) =
            prism_types::templates::parse_reference(&reference).ok_or_else(|| {
                ResolveError::new(
                    K::BadReference,
                    format!("template {reference:?} must be NAME or NAME:VERSION (a number)"),
                )
            })?;
        let rec = match self.template_record(name, version)? {
            Some(r) => r,
            None => {
                let msg = match version {
                    Some(v) => format!("no template {name}:{v}"),
                    None => format!(
                        "unknown template {name:?}: no ready version (built-in: base; \
                         list templates with `prismctl template ls`)"
                    ),
                };
                return Err(ResolveError::new(K::TemplateNotFound, msg));
            }
        };
        let build = match (&rec.status, &rec.build) {
            (TemplateStatus::Ready, Some(b)) => b.clone(),
            (status, _) => {
                let why = rec.error.as_deref().unwrap_or("");
                return Err(ResolveError::new(
                    K::TemplateNotReady,
                    format!(
                        "template {} is {}{}{why}",
                        rec.reference(),
                        status.as_str(),
                        if why.is_empty() { "" } else { ": " }
                    ),
                ));
            }
        };
        Ok(Resolved {
            pinned: rec.reference(),
            reference: rec.reference(),
            defaults: ProcessDefaults {
                env: build.env.into_iter().collect(),
                cmd: build.cmd.unwrap_or_default(),
                cwd: build.cwd,
                user: build.user,
                resources: rec.spec.resources,
                ports: rec.spec.ports.clone(),
            },
        })
    }

    /// The tree of a template version: its source's, under its captured layers.
    fn template_rootfs(&self, pinned: &str) -> Result<RootfsSpec, ResolveError> {
        let gone = || {
            ResolveError::new(
                K::NotFound,
                format!("the template {pinned:?} this sandbox was created from is gone"),
            )
        };
        let (name, version) = prism_types::templates::parse_reference(pinned)
            .and_then(|(n, v)| Some((n, v?)))
            .ok_or_else(gone)?;
        let rec = self
            .template_record(name, Some(version))?
            .ok_or_else(gone)?;
        let build = rec
            .build
            .filter(|_| rec.status == TemplateStatus::Ready)
            .ok_or_else(gone)?;
        let mut spec = if build.source == prism_types::DEFAULT_TEMPLATE {
            prism_core::template::base::ensure(&self.state_dir.join("templates"))
                .map_err(|e| ResolveError::new(K::Internal, format!("the base template: {e}")))?
        } else {
            self.rootfs(&build.source)?
        };
        let store = self.store()?;
        if build.layers.len() > spec.mounts.len() {
            return Err(ResolveError::new(
                K::BadImage,
                format!("template {pinned} has more layers than its source has mounts"),
            ));
        }
        for (mount, hex) in spec.mounts.iter_mut().zip(&build.layers) {
            let d = Digest::parse(&format!("sha256:{hex}"))
                .map_err(|e| ResolveError::new(K::BadImage, e.to_string()))?;
            if !store.has_layer(&d) {
                return Err(store_error(StoreError::MissingLayer(d)));
            }
            mount.lowers.insert(0, store.layer_dir(&d));
        }
        Ok(spec)
    }

    fn store(&self) -> Result<ImageStore, ResolveError> {
        ImageStore::open(&self.state_dir).map_err(store_error)
    }

    async fn resolve_image(&self, reference: String) -> Result<Resolved, ResolveError> {
        let r = Reference::parse(&reference)
            .map_err(|e| ResolveError::new(K::BadReference, e.to_string()))?;
        let store = self.store()?;
        let key = r.to_string();
        let local = {
            let (store, d) = (store.clone(), r.digest.clone());
            blocking(move || match d {
                Some(d) => store.pinned(&d),
                None => store.get(&key),
            })
            .await??
        };
        let rec = match local {
            Some(rec) => rec,
            None => {
                let client = RegistryClient::new(Credentials::Anonymous)
                    .map_err(|e| pull_error(&e.into()))?;
                let report = prism_images::pull(&store, &client, &reference)
                    .await
                    .map_err(|e| pull_error(&e))?;
                tracing::info!(message = "image pulled for a new sandbox",
                    reference = %report.record.reference, digest = %report.record.manifest_digest,
                    blobs_downloaded = report.blobs_downloaded);
                report.record
            }
        };
        let defaults = defaults(&rec);
        let pinned = blocking(move || store.pin(&rec)).await??;
        Ok(Resolved {
            pinned: format!("{IMAGE_PREFIX}{pinned}"),
            reference: pinned,
            defaults,
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<Result<T, ResolveError>, ResolveError> {
    tokio::task::spawn_blocking(move || f().map_err(store_error))
        .await
        .map_err(|e| ResolveError::new(K::Internal, format!("image store task failed: {e}")))
}

fn defaults(rec: &ImageRecord) -> ProcessDefaults {
    let d = prism_images::ProcessDefaults::from(&rec.config);
    ProcessDefaults {
        env: d.env,
        cmd: d.command,
        cwd: Some(d.cwd),
        user: d.user,
        ..Default::default()
    }
}

fn store_error(e: StoreError) -> ResolveError {
    match &e {
        StoreError::Unpack { .. }
        | StoreError::DigestMismatch { .. }
        | StoreError::TooLarge { .. }
        | StoreError::MissingLayer(_) => ResolveError::new(K::BadImage, chain(&e)),
        _ => {
            tracing::error!(message = "image store failure", error = %chain(&e));
            ResolveError::new(K::Internal, format!("{e} (see the daemon log)"))
        }
    }
}

/// The kind of a pull failure (shared with `POST /v1/images/pull`).
pub fn pull_kind(e: &PullError) -> K {
    match e {
        PullError::Reference(_) => K::BadReference,
        PullError::Store(_) | PullError::Registry(RegistryError::Store(_)) => K::Internal,
        PullError::Registry(r) => match r {
            RegistryError::NotFound(_) => K::NotFound,
            RegistryError::Auth(_) | RegistryError::InsecureRealm(_) => K::Auth,
            RegistryError::TooLarge { .. } | RegistryError::ManifestDigest { .. } => K::BadImage,
            _ => K::Unreachable,
        },
        PullError::Manifest(_) | PullError::Config(..) | PullError::NestedIndex => K::BadImage,
    }
}

fn pull_error(e: &PullError) -> ResolveError {
    match e {
        PullError::Store(s) | PullError::Registry(RegistryError::Store(s))
            if matches!(
                s,
                StoreError::Unpack { .. } | StoreError::DigestMismatch { .. }
            ) =>
        {
            ResolveError::new(K::BadImage, chain(e))
        }
        _ => ResolveError::new(pull_kind(e), chain(e)),
    }
}

impl RootfsResolver for ImageResolver {
    fn resolve(&self, source: Source) -> BoxFuture<'_, Result<Resolved, ResolveError>> {
        match source {
            Source::Image(r) => Box::pin(self.resolve_image(r)),
            Source::Template(r) => Box::pin(self.resolve_template(r)),
        }
    }

    fn rootfs(&self, pinned: &str) -> Result<RootfsSpec, ResolveError> {
        if !pinned.starts_with(IMAGE_PREFIX) {
            return self.template_rootfs(pinned);
        }
        let gone = || {
            ResolveError::new(
                K::NotFound,
                format!(
                    "the image {pinned:?} this sandbox was created from is gone from the store"
                ),
            )
        };
        let digest = pinned
            .strip_prefix(IMAGE_PREFIX)
            .and_then(|r| Reference::parse(r).ok())
            .and_then(|r| r.digest)
            .ok_or_else(gone)?;
        let store = self.store()?;
        let rec = store
            .pinned(&digest)
            .map_err(store_error)?
            .ok_or_else(gone)?;
        prism_images::rootfs(&store, &rec).map_err(store_error)
    }
}
