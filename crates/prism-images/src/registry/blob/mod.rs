//! Blob downloads: verified while streaming, retried on network errors, and resumed with an
//! HTTP `Range` request from the partial file an interrupted attempt — or an earlier pull that
//! failed — left in `tmp/partial-<hex>`. The digest is always computed over the whole blob
//! (the partial bytes are hashed again before resuming), and a blob that does not match is
//! deleted, so a bad partial is never kept.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::path::PathBuf;

use reqwest::StatusCode;
use rustix::fs::FlockOperation;
use tokio::io::AsyncWriteExt;

use super::{ATTEMPTS, Reference, RegistryClient, RegistryError};
use crate::digest::{Digest, Hasher};
use crate::manifest::Descriptor;
use crate::store::{ImageStore, StoreError};

/// How far the download of one blob is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProgress {
    pub digest: Digest,
    /// Bytes of the blob on disk so far (resumed bytes included).
    pub bytes: u64,
    pub total: u64,
}

/// A callback for download progress (called often; keep it cheap).
pub type Progress<'a> = Option<&'a (dyn Fn(&BlobProgress) + Send + Sync)>;

/// Report at most every this many bytes (and at the end).
const REPORT_EVERY: u64 = 256 << 10;

/// The file a download writes, with the hash of what it holds.
struct Partial {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Hasher,
}

fn write_err(p: &std::path::Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |e| RegistryError::Write(p.to_path_buf(), e)
}

impl Partial {
    /// The partial file of `digest`, locked, with its bytes hashed. When another download
    /// holds it, a private temporary file instead.
    async fn open(store: &ImageStore, desc: &Descriptor) -> Result<Partial, RegistryError> {
        let path = store
            .root()
            .join("tmp")
            .join(format!("partial-{}", desc.digest.hex()));
        let private = store.tmp_path("download");
        let size = desc.size;
        let opened = tokio::task::spawn_blocking(move || -> Result<_, RegistryError> {
            let open = |p: &PathBuf| {
                OpenOptions::new()
                    .create(true)
                    .read(true)
                    .write(true)
                    .truncate(false)
                    .open(p)
                    .map_err(write_err(p))
            };
            let mut f = open(&path)?;
            let path = match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => path,
                Err(_) => {
                    f = open(&private)?;
                    private
                }
            };
            let mut hasher = Hasher::default();
            let len = f.metadata().map_err(write_err(&path))?.len();
            if len > size {
                f.set_len(0).map_err(write_err(&path))?;
            } else {
                let mut buf = vec![0u8; 1 << 16];
                let mut rf = &f;
                loop {
                    let n = rf.read(&mut buf).map_err(write_err(&path))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
            }
            Ok((path, f, hasher))
        })
        .await
        .map_err(|_| RegistryError::Store(StoreError::Join))??;
        let (path, f, hasher) = opened;
        let mut file = tokio::fs::File::from_std(f);
        use tokio::io::AsyncSeekExt;
        file.seek(io::SeekFrom::End(0))
            .await
            .map_err(write_err(&path))?;
        Ok(Partial { path, file, hasher })
    }

    fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Start over: the server did not resume.
    async fn reset(&mut self) -> Result<(), RegistryError> {
        use tokio::io::AsyncSeekExt;
        self.file.set_len(0).await.map_err(write_err(&self.path))?;
        self.file
            .seek(io::SeekFrom::Start(0))
            .await
            .map_err(write_err(&self.path))?;
        self.hasher = Hasher::default();
        Ok(())
    }
}

/// The first byte offset of a `Content-Range: bytes START-END/TOTAL` header.
fn range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(reqwest::header::CONTENT_RANGE)?;
    let rest = v.to_str().ok()?.strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

impl RegistryClient {
    /// Download blob `desc` into `store` unless it is there; `true` if it was downloaded.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        store: &ImageStore,
    ) -> Result<bool, RegistryError> {
        self.fetch_blob_with(r, desc, store, None).await
    }

    /// [`Self::fetch_blob`], reporting progress to `progress`.
    pub async fn fetch_blob_with(
        &self,
        r: &Reference,
        desc: &Descriptor,
        store: &ImageStore,
        progress: Progress<'_>,
    ) -> Result<bool, RegistryError> {
        if store.has_blob(&desc.digest) {
            return Ok(false);
        }
        // A resumed download that does not verify is fetched once more from the start.
        for fresh in [false, true] {
            let mut part = Partial::open(store, desc).await?;
            if fresh {
                part.reset().await?;
            }
            let resumed = part.len() > 0;
            let mut last = None;
            for attempt in 1..=ATTEMPTS {
                match self.fetch_into(r, desc, &mut part, progress).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.transient() && attempt < ATTEMPTS => {
                        tracing::warn!(message = "blob download failed, resuming", digest = %desc.digest,
                            attempt, bytes = part.len(), error = %e);
                        last = Some(e);
                    }
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = last {
                // Let the writes already handed to the file land first: a tokio `File` dropped
                // with a write in flight finishes it in the background, so the partial file
                // would still grow after this returns (and a next pull resume from a length
                // that is already stale).
                let _ = part.file.flush().await;
                // Keep what arrived for the next pull, unless the content itself was wrong.
                if !e.transient() {
                    let _ = tokio::fs::remove_file(&part.path).await;
                }
                return Err(e);
            }
            part.file.flush().await.map_err(write_err(&part.path))?;
            part.file.sync_all().await.map_err(write_err(&part.path))?;
            let Partial { path, file, hasher } = part;
            drop(file);
            let size = hasher.len();
            match store.commit_blob(&path, &desc.digest, hasher.finish(), size) {
                Ok(()) => return Ok(true),
                Err(StoreError::DigestMismatch { .. }) if resumed && !fresh => {
                    tracing::warn!(message = "resumed blob did not verify; downloading it again", digest = %desc.digest);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::NotFound(desc.digest.to_string()))
    }

    /// One request for the rest of the blob, appended to `part`.
    async fn fetch_into(
        &self,
        r: &Reference,
        desc: &Descriptor,
        part: &mut Partial,
        progress: Progress<'_>,
    ) -> Result<(), RegistryError> {
        let what = format!("blob {}", desc.digest);
        if part.len() == desc.size && desc.size > 0 {
            return Ok(()); // all there already; the digest check decides
        }
        let url = Self::url(r, "blobs", &desc.digest.to_string());
        let from = part.len();
        let mut resp = self.get_from(r, &url, "*/*", &what, from).await?;
        if from > 0 {
            if resp.status() == StatusCode::PARTIAL_CONTENT && range_start(&resp) == Some(from) {
                tracing::info!(message = "resuming a blob download", digest = %desc.digest, from);
            } else {
                part.reset().await?;
            }
        }
        let report = |bytes| {
            if let Some(p) = progress {
                p(&BlobProgress {
                    digest: desc.digest.clone(),
                    bytes,
                    total: desc.size,
                });
            }
        };
        report(part.len());
        let mut reported = part.len();
        while let Some(chunk) = resp.chunk().await.map_err(|source| RegistryError::Body {
            what: what.clone(),
            source,
        })? {
            if part.len() + chunk.len() as u64 > desc.size {
                return Err(RegistryError::TooLarge {
                    what: what.clone(),
                    limit: desc.size,
                });
            }
            part.file
                .write_all(&chunk)
                .await
                .map_err(write_err(&part.path))?;
            part.hasher.update(&chunk);
            if part.len() - reported >= REPORT_EVERY {
                reported = part.len();
                report(reported);
            }
        }
        // Flushed before the next attempt appends, or the commit syncs.
        part.file.flush().await.map_err(write_err(&part.path))?;
        report(part.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
