//! The content-addressed image store under `<state>/images/`:
//! - `blobs/sha256/<hex>`: verified blobs (manifests, configs, compressed layers),
//! - `layers/<hex>/`: unpacked layers, named by their blob digest and shared between images,
//! - `records/<sha256 of the reference>.json`: one [`ImageRecord`] per reference,
//! - `tmp/`: downloads and unpacks in progress; only a verified, complete file or directory is
//!   renamed into place, so nothing half-written is ever used.
//!
//! A shared `flock` on `lock` is held while an image is added; garbage collection takes it
//! exclusively, so it never removes a blob a pull is about to reference.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher, HashingWriter};
use crate::manifest::{Compression, RunConfig};
use crate::unpack::{self, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store I/O on {}", .0.display())]
    Io(PathBuf, #[source] io::Error),
    #[error("blob {expected} has digest {actual} ({size} bytes)")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("blob {digest} is larger than its declared {limit} bytes")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("cannot unpack layer {digest}")]
    Unpack {
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("image record {} is corrupt", .0.display())]
    Record(PathBuf, #[source] serde_json::Error),
    #[error("layer {0} is missing from the store")]
    MissingLayer(Digest),
    #[error("a blocking store task failed")]
    Join,
}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(p.to_path_buf(), e)
}

/// One layer of an image, bottom first in [`ImageRecord::layers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub digest: Digest,
    pub compression: Compression,
    pub size: u64,
}

/// A pulled or imported image: ready to run (all its layers are unpacked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Normalised reference (`registry/repository:tag`).
    pub reference: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config: RunConfig,
    /// Bottom layer first, as in the manifest.
    pub layers: Vec<LayerRecord>,
    /// Seconds since the epoch.
    pub created: u64,
}

impl ImageRecord {
    /// Compressed size of all layers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub layers: usize,
    pub blobs: usize,
}

/// A held store lock (released on drop).
pub struct StoreLock(#[allow(dead_code)] File);

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Open (creating it, mode 0700) the store under `<state_dir>/images`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let root = state_dir.join("images");
        for d in ["", "blobs/sha256", "layers", "records", "pins", "tmp"] {
            let p = root.join(d);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(io_at(&p))?;
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(io_at(&root))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn layer_dir(&self, d: &Digest) -> PathBuf {
        self.root.join("layers").join(d.hex())
    }

    pub fn has_layer(&self, d: &Digest) -> bool {
        self.layer_dir(d).is_dir()
    }

    /// A fresh path under `tmp/` (nothing there yet).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Take the store lock: shared while adding an image, exclusive for garbage collection.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock, StoreError> {
        let p = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_at(&p))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        rustix::fs::flock(&f, op).map_err(|e| StoreError::Io(p.clone(), e.into()))?;
        Ok(StoreLock(f))
    }

    /// Move the downloaded file `tmp`, whose content hashed to `actual`, into place as `expected`.
    /// On a mismatch the file is deleted and nothing enters the store.
    pub fn commit_blob(
        &self,
        tmp: &Path,
        expected: &Digest,
        actual: Digest,
        size: u64,
    ) -> Result<(), StoreError> {
        if &actual != expected {
            let _ = fs::remove_file(tmp);
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
                size,
            });
        }
        let dst = self.blob_path(expected);
        fs::rename(tmp, &dst).map_err(io_at(&dst))
    }

    /// Copy `reader` into the store as blob `expected`, verifying its digest (and size, if known).
    pub fn write_blob(
        &self,
        reader: impl Read,
        expected: &Digest,
        max_size: Option<u64>,
    ) -> Result<(), StoreError> {
        if self.has_blob(expected) {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        let file = File::create(&tmp).map_err(io_at(&tmp))?;
        let mut w = HashingWriter {
            inner: file,
            hasher: Hasher::default(),
        };
        let limit = max_size.map_or(u64::MAX, |s| s.saturating_add(1));
        let copied = io::copy(&mut reader.take(limit), &mut w);
        let flushed = copied.and_then(|_| w.inner.sync_all());
        if let Err(e) = flushed {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io(tmp, e));
        }
        let size = w.hasher.len();
        if max_size.is_some_and(|m| size > m) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::TooLarge {
                digest: expected.clone(),
                limit: max_size.unwrap_or_default(),
            });
        }
        self.commit_blob(&tmp, expected, w.hasher.finish(), size)
    }

    /// Store `data` as a blob and return its digest.
    pub fn put_bytes(&self, data: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(data);
        self.write_blob(data, &d, Some(data.len() as u64))?;
        Ok(d)
    }

    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let mut out = Vec::new();
        File::open(&p)
            .and_then(|f| f.take(max).read_to_end(&mut out))
            .map_err(io_at(&p))?;
        Ok(out)
    }

    /// Unpack layer blob `digest` into `layers/<hex>/` unless it is there already.
    pub fn ensure_layer(
        &self,
        digest: &Digest,
        compression: Compression,
    ) -> Result<(), StoreError> {
        let dst = self.layer_dir(digest);
        if dst.is_dir() {
            return Ok(());
        }
        let blob = self.blob_path(digest);
        let file = File::open(&blob).map_err(io_at(&blob))?;
        let tmp = self.tmp_path("layer");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(io_at(&tmp))?;
        let result = match compression {
            Compression::None => unpack::unpack(io::BufReader::new(file), &tmp),
            Compression::Gzip => unpack::unpack(
                flate2::read::MultiGzDecoder::new(io::BufReader::new(file)),
                &tmp,
            ),
            Compression::Zstd => {
                match ruzstd::decoding::StreamingDecoder::new(io::BufReader::new(file)) {
                    Ok(dec) => unpack::unpack(dec, &tmp),
                    Err(e) => Err(UnpackError::Read(io::Error::other(e.to_string()))),
                }
            }
        };
        if let Err(source) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(StoreError::Unpack {
                digest: digest.clone(),
                source,
            });
        }
        if let Err(e) = fs::rename(&tmp, &dst) {
            let _ = fs::remove_dir_all(&tmp);
            // Another pull unpacked the same layer first: theirs is as good as ours.
            if !dst.is_dir() {
                return Err(StoreError::Io(dst, e));
            }
        }
        Ok(())
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        self.root
            .join("records")
            .join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    /// Save `rec` (replacing the record of the same reference). Written to a temporary file and
    /// renamed, so a crash leaves the old record or the new one.
    pub fn save(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        for l in &rec.layers {
            if !self.has_layer(&l.digest) {
                return Err(StoreError::MissingLayer(l.digest.clone()));
            }
        }
        let p = self.record_path(&rec.reference);
        let tmp = self.tmp_path("record");
        let json = serde_json::to_vec_pretty(rec).map_err(|e| StoreError::Record(p.clone(), e))?;
        File::create(&tmp)
            .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
            .map_err(io_at(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_at(&p))
    }

    /// The record of a normalised reference.
    pub fn get(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        let p = self.record_path(reference);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Record(p, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(p, e)),
        }
    }

    /// All images, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("records");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let p = e.map_err(io_at(&dir))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                let b = fs::read(&p).map_err(io_at(&p))?;
                out.push(serde_json::from_slice(&b).map_err(|e| StoreError::Record(p, e))?);
            }
        }
        out.sort_by(|a: &ImageRecord, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Forget the image `reference`; its layers stay until [`Self::gc`]. `false` if unknown.
    pub fn remove(&self, reference: &str) -> Result<bool, StoreError> {
        let p = self.record_path(reference);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io(p, e)),
        }
    }

    /// Remove layers and blobs no image or pin references, and leftovers in `tmp/`.
    /// Callers must not run it while a sandbox uses a layer of a removed image.
    pub fn gc(&self) -> Result<GcStats, StoreError> {
        self.gc_keeping(&[])
    }

    /// [`Self::gc`], also keeping the layers and blobs in `extra` (e.g. templates' layers).
    pub fn gc_keeping(&self, extra: &[Digest]) -> Result<GcStats, StoreError> {
        let _lock = self.lock(true)?;
        let mut keep: std::collections::HashSet<String> =
            extra.iter().map(|d| d.hex().to_string()).collect();
        for rec in self.list()?.into_iter().chain(self.pins()?) {
            keep.insert(rec.manifest_digest.hex().to_string());
            keep.insert(rec.config_digest.hex().to_string());
            keep.extend(rec.layers.iter().map(|l| l.digest.hex().to_string()));
        }
        let mut stats = GcStats::default();
        for (sub, is_layer) in [("layers", true), ("blobs/sha256", false)] {
            let dir = self.root.join(sub);
            for e in fs::read_dir(&dir).map_err(io_at(&dir))? {
                let e = e.map_err(io_at(&dir))?;
                if keep.contains(e.file_name().to_string_lossy().as_ref()) {
                    continue;
                }
                let p = e.path();
                if is_layer {
                    fs::remove_dir_all(&p).map_err(io_at(&p))?;
                    stats.layers += 1;
                } else {
                    fs::remove_file(&p).map_err(io_at(&p))?;
                    stats.blobs += 1;
                }
            }
        }
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_at(&tmp))? {
            let p = e.map_err(io_at(&tmp))?.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(io_at(&p))?;
        }
        Ok(stats)
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ImageStore {
    /// Copy `reader` into the store under whatever digest it has; returns it and the size.
    pub fn put_stream(&self, reader: impl Read) -> Result<(Digest, u64), StoreError> {
        let tmp = self.tmp_path("blob");
        let file = File::create(&tmp).map_err(io_at(&tmp))?;
        let mut w = HashingWriter {
            inner: file,
            hasher: Hasher::default(),
        };
        let mut reader = reader;
        if let Err(e) = io::copy(&mut reader, &mut w).and_then(|_| w.inner.sync_all()) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io(tmp, e));
        }
        let size = w.hasher.len();
        let d = w.hasher.finish();
        if self.has_blob(&d) {
            let _ = fs::remove_file(&tmp);
            return Ok((d, size));
        }
        self.commit_blob(&tmp, &d, d.clone(), size)?;
        Ok((d, size))
    }
}
