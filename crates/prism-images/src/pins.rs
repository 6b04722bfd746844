//! Pins: images that sandboxes run from, kept by manifest digest independently of tags. A
//! sandbox created from `app:1` keeps the exact tree it started with even if `app:1` is pulled
//! again (moving the tag) or removed: its pin holds a copy of the record, and
//! [`ImageStore::gc`] keeps the layers of every pin. The daemon drops pins no sandbox uses
//! with [`ImageStore::prune_pins`] before collecting garbage.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;

use crate::digest::Digest;

/// Pins younger than this survive [`ImageStore::prune_pins`] even when unused.
pub const PIN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
use crate::reference::Reference;
use crate::store::{ImageRecord, ImageStore, StoreError};

impl ImageStore {
    fn pin_path(&self, manifest: &Digest) -> PathBuf {
        self.root()
            .join("pins")
            .join(format!("{}.json", manifest.hex()))
    }

    /// Pin `rec` and return its pinned reference (`registry/repository@sha256:…`).
    pub fn pin(&self, rec: &ImageRecord) -> Result<String, StoreError> {
        let _lock = self.lock(false)?;
        let mut pinned = rec.clone();
        pinned.reference = match Reference::parse(&rec.reference) {
            Ok(r) => format!("{}/{}@{}", r.registry, r.repository, rec.manifest_digest),
            Err(_) => format!("{}@{}", rec.reference, rec.manifest_digest),
        };
        let p = self.pin_path(&rec.manifest_digest);
        let dir = self.root().join("pins");
        fs::create_dir_all(&dir).map_err(|e| StoreError::Io(dir.clone(), e))?;
        let tmp = self.tmp_path("pin");
        let json =
            serde_json::to_vec_pretty(&pinned).map_err(|e| StoreError::Record(p.clone(), e))?;
        File::create(&tmp)
            .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
            .map_err(|e| StoreError::Io(tmp.clone(), e))?;
        fs::rename(&tmp, &p).map_err(|e| StoreError::Io(p.clone(), e))?;
        Ok(pinned.reference)
    }

    /// The pinned record of a manifest digest.
    pub fn pinned(&self, manifest: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        let p = self.pin_path(manifest);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Record(p, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(p, e)),
        }
    }

    /// All pinned records.
    pub fn pins(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root().join("pins");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io(dir, e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let p = e.map_err(|e| StoreError::Io(dir.clone(), e))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                let b = fs::read(&p).map_err(|e| StoreError::Io(p.clone(), e))?;
                out.push(serde_json::from_slice(&b).map_err(|e| StoreError::Record(p, e))?);
            }
        }
        Ok(out)
    }

    /// Drop the pins whose manifest digest is not in `in_use` and that were not (re)written in
    /// the last [`PIN_GRACE`] (a sandbox being created has a pin before its record exists);
    /// returns how many were dropped.
    pub fn prune_pins(&self, in_use: &BTreeSet<Digest>) -> Result<usize, StoreError> {
        let _lock = self.lock(true)?;
        let mut dropped = 0;
        for rec in self.pins()? {
            let p = self.pin_path(&rec.manifest_digest);
            let fresh = fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < PIN_GRACE);
            if !in_use.contains(&rec.manifest_digest) && !fresh {
                fs::remove_file(&p).map_err(|e| StoreError::Io(p, e))?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::manifest::{Compression, RunConfig};
    use crate::store::LayerRecord;

    fn record(store: &ImageStore, name: &str) -> ImageRecord {
        let layer = Digest::of(name.as_bytes());
        fs::create_dir_all(store.layer_dir(&layer).join("bin")).unwrap();
        ImageRecord {
            reference: format!("127.0.0.1:5000/{name}:1"),
            manifest_digest: Digest::of(format!("m-{name}").as_bytes()),
            config_digest: Digest::of(format!("c-{name}").as_bytes()),
            config: RunConfig::default(),
            layers: vec![LayerRecord {
                digest: layer,
                compression: Compression::Gzip,
                size: 1,
            }],
            created: 0,
        }
    }

    fn age(store: &ImageStore, rec: &ImageRecord) {
        let old = std::time::SystemTime::now() - PIN_GRACE - std::time::Duration::from_secs(5);
        File::options()
            .write(true)
            .open(store.pin_path(&rec.manifest_digest))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn pins_keep_layers_until_unused_and_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let (a, b) = (record(&store, "a"), record(&store, "b"));
        let pinned = store.pin(&a).unwrap();
        assert_eq!(pinned, format!("127.0.0.1:5000/a@{}", a.manifest_digest));
        store.pin(&b).unwrap();
        assert_eq!(
            store.pinned(&a.manifest_digest).unwrap().map(|r| r.layers),
            Some(a.layers.clone())
        );
        // No image record references either layer; the pins keep both.
        assert_eq!(store.gc().unwrap().layers, 0);
        // Unused but fresh pins survive (a create may be in flight).
        assert_eq!(store.prune_pins(&BTreeSet::new()).unwrap(), 0);
        age(&store, &a);
        age(&store, &b);
        let in_use = BTreeSet::from([a.manifest_digest.clone()]);
        assert_eq!(store.prune_pins(&in_use).unwrap(), 1);
        assert!(store.pinned(&b.manifest_digest).unwrap().is_none());
        assert_eq!(store.gc().unwrap().layers, 1);
        assert!(store.has_layer(&a.layers[0].digest));
        assert!(!store.has_layer(&b.layers[0].digest));
    }
}
