//! Pull an image from a registry into the store, and the steps shared with imports.

use std::sync::Arc;

use crate::digest::Digest;
use crate::manifest::{
    Compression, ConfigBlob, Descriptor, Document, MAX_DOCUMENT, Manifest, ManifestError,
};
use crate::reference::{BadReference, Reference};
use crate::registry::{Progress, RegistryClient, RegistryError};
use crate::store::{ImageRecord, ImageStore, LayerRecord, StoreError, now_unix};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] BadReference),
    #[error("registry request failed")]
    Registry(#[from] RegistryError),
    #[error("bad manifest")]
    Manifest(#[from] ManifestError),
    #[error("image store failed")]
    Store(#[from] StoreError),
    #[error("image config {0} is malformed")]
    Config(Digest, #[source] serde_json::Error),
    #[error("the index points to another index")]
    NestedIndex,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub record: ImageRecord,
    /// Blobs fetched from the registry (0 when everything was cached).
    pub blobs_downloaded: usize,
}

/// Pull `reference` (e.g. `127.0.0.1:5000/app:1`, `debian:bookworm`) into `store`.
pub async fn pull(
    store: &ImageStore,
    client: &RegistryClient,
    reference: &str,
) -> Result<PullReport, PullError> {
    pull_with(store, client, reference, None).await
}

/// [`pull`], reporting the download progress of the config and each layer to `progress`.
pub async fn pull_with(
    store: &ImageStore,
    client: &RegistryClient,
    reference: &str,
    progress: Progress<'_>,
) -> Result<PullReport, PullError> {
    let r = Reference::parse(reference)?;
    let _lock = store.lock(false)?;
    let (mut body, mut ct, mut digest) = client.fetch_manifest(&r, &r.manifest_ref()).await?;
    let mut doc = Document::parse(&body, ct.as_deref())?;
    if let Document::Index(idx) = &doc {
        let pick = idx.pick_amd64()?.digest.to_string();
        (body, ct, digest) = client.fetch_manifest(&r, &pick).await?;
        doc = Document::parse(&body, ct.as_deref())?;
    }
    let Document::Manifest(manifest) = doc else {
        return Err(PullError::NestedIndex);
    };
    let mut downloaded = 0;
    let size_ok = |d: &Descriptor| d.size <= MAX_DOCUMENT;
    if !size_ok(&manifest.config) {
        return Err(RegistryError::TooLarge {
            what: format!("config {}", manifest.config.digest),
            limit: MAX_DOCUMENT,
        }
        .into());
    }
    downloaded += usize::from(
        client
            .fetch_blob_with(&r, &manifest.config, store, progress)
            .await?,
    );
    for layer in &manifest.layers {
        Compression::of_media_type(&layer.media_type)?;
        if !store.has_layer(&layer.digest) {
            downloaded += usize::from(client.fetch_blob_with(&r, layer, store, progress).await?);
        }
    }
    store.put_bytes(&body)?;
    let record = finish(store, r.to_string(), digest, &manifest).await?;
    Ok(PullReport {
        record,
        blobs_downloaded: downloaded,
    })
}

/// With the config and layer blobs in the store: unpack the layers (once each) and save the
/// record under `reference`. The record is written last, so a failure leaves no image behind.
pub(crate) async fn finish(
    store: &ImageStore,
    reference: String,
    manifest_digest: Digest,
    manifest: &Manifest,
) -> Result<ImageRecord, PullError> {
    let cfg_bytes = store.read_blob(&manifest.config.digest, MAX_DOCUMENT)?;
    let cfg: ConfigBlob = serde_json::from_slice(&cfg_bytes)
        .map_err(|e| PullError::Config(manifest.config.digest.clone(), e))?;
    let mut layers = Vec::new();
    for l in &manifest.layers {
        layers.push(LayerRecord {
            digest: l.digest.clone(),
            compression: Compression::of_media_type(&l.media_type)?,
            size: l.size,
        });
    }
    let shared = Arc::new((store.clone(), layers.clone()));
    tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        let (store, layers) = &*shared;
        for l in layers {
            store.ensure_layer(&l.digest, l.compression)?;
        }
        Ok(())
    })
    .await
    .map_err(|_| StoreError::Join)??;
    let record = ImageRecord {
        reference,
        manifest_digest,
        config_digest: manifest.config.digest.clone(),
        config: cfg.config.unwrap_or_default(),
        layers,
        created: now_unix(),
    };
    store.save(&record)?;
    Ok(record)
}
