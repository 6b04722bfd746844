//! A sandbox's writable layer as a layer of the store: template builds run their setup
//! commands in a sandbox, stop it, and capture its overlay upper directory here.
//!
//! The upper directory is written by untrusted code, so it is read without following a single
//! symlink, turned into an OCI layer tar (uncompressed) on the way — ids shifted from the
//! sandbox's host range back to in-sandbox ids, overlay whiteouts (0/0 character devices) as
//! `.wh.NAME`, `user.overlay.opaque` directories as `.wh..wh..opq`, hard links as links — and
//! then unpacked by the same safe unpacker as pulled layers. The result is content-addressed
//! like any other layer, so a valid lower whatever the upper held.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::digest::{Digest, Hasher, HashingWriter};
use crate::manifest::Compression;
use crate::store::{ImageStore, StoreError};

/// Ids per sandbox: files outside `uid_base..uid_base + IDS` become `nobody`.
const IDS: u32 = 65536;
const NOBODY: u32 = 65534;
/// Deepest directory nesting captured.
const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read {} in the writable layer", .0.display())]
    Read(PathBuf, #[source] io::Error),
    #[error("{} is nested deeper than {MAX_DEPTH} directories", .0.display())]
    TooDeep(PathBuf),
    #[error("cannot write the captured layer")]
    Write(#[source] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A captured layer: its blob digest (also its unpacked directory's name) and tar size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub digest: Digest,
    pub size: u64,
}

/// Capture `upper` (files owned by `uid_base + id`) into the store as an uncompressed layer,
/// leaving out the paths in `skip` (relative, e.g. `etc/hostname`).
pub fn capture_layer(
    store: &ImageStore,
    upper: &Path,
    uid_base: u32,
    skip: &[&str],
) -> Result<Captured, CaptureError> {
    let _lock = store.lock(false)?;
    let tmp = store.tmp_path("capture");
    let result = write_tar(&tmp, upper, uid_base, skip);
    let (digest, size) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if store.has_blob(&digest) {
        let _ = fs::remove_file(&tmp);
    } else {
        store.commit_blob(&tmp, &digest, digest.clone(), size)?;
    }
    store.ensure_layer(&digest, Compression::None)?;
    Ok(Captured { digest, size })
}

fn write_tar(
    tmp: &Path,
    upper: &Path,
    uid_base: u32,
    skip: &[&str],
) -> Result<(Digest, u64), CaptureError> {
    let file = File::create(tmp).map_err(CaptureError::Write)?;
    let w = HashingWriter {
        inner: BufWriter::new(file),
        hasher: Hasher::default(),
    };
    let mut walk = Walk {
        tar: tar::Builder::new(w),
        upper: upper.to_path_buf(),
        uid_base,
        skip: skip.iter().map(PathBuf::from).collect(),
        links: HashMap::new(),
    };
    walk.walk()?;
    let mut w = walk.tar.into_inner().map_err(CaptureError::Write)?;
    w.flush().map_err(CaptureError::Write)?;
    let HashingWriter { inner, hasher } = w;
    let file = inner
        .into_inner()
        .map_err(|e| CaptureError::Write(e.into_error()))?;
    file.sync_all().map_err(CaptureError::Write)?;
    let size = hasher.len();
    Ok((hasher.finish(), size))
}

struct Walk<W: Write> {
    tar: tar::Builder<W>,
    upper: PathBuf,
    uid_base: u32,
    skip: Vec<PathBuf>,
    /// (dev, ino) of files with several links → the first path written.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> Walk<W> {
    fn id(&self, host: u32) -> u64 {
        match host.checked_sub(self.uid_base) {
            Some(id) if id < IDS => u64::from(id),
            _ => u64::from(NOBODY),
        }
    }

    fn header(&self, md: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(self.id(md.uid()));
        h.set_gid(self.id(md.gid()));
        h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
        h.set_size(0);
        h
    }

    fn read_err(&self, rel: &Path) -> impl FnOnce(io::Error) -> CaptureError + use<W> {
        let p = rel.to_path_buf();
        move |e| CaptureError::Read(p, e)
    }

    /// `user.*` xattrs of `path` other than overlay's, as PAX records.
    fn xattrs(&mut self, path: &Path) -> Result<Vec<(String, Vec<u8>)>, CaptureError> {
        let mut names = vec![0u8; 4096];
        let n = match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => n,
            Err(_) => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            if !name.starts_with("user.") || name.starts_with("user.overlay.") {
                continue;
            }
            let mut v = vec![0u8; 65536];
            if let Ok(len) = rustix::fs::lgetxattr(path, name, &mut v) {
                v.truncate(len);
                out.push((format!("SCHILY.xattr.{name}"), v));
            }
        }
        Ok(out)
    }

    fn pax(&mut self, records: &[(String, Vec<u8>)]) -> Result<(), CaptureError> {
        if records.is_empty() {
            return Ok(());
        }
        self.tar
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(CaptureError::Write)
    }

    fn empty_file(&mut self, rel: &Path) -> Result<(), CaptureError> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        self.tar
            .append_data(&mut h, rel, io::empty())
            .map_err(CaptureError::Write)
    }

    /// The names in directory `rel`, sorted (for a reproducible tar).
    fn list(&self, rel: &Path) -> Result<std::vec::IntoIter<std::ffi::OsString>, CaptureError> {
        let path = self.upper.join(rel);
        let mut names: Vec<_> = fs::read_dir(&path)
            .map_err(self.read_err(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(self.read_err(rel))?;
        names.sort();
        Ok(names.into_iter())
    }

    /// Every entry under the upper directory, parents before children, without recursion
    /// (the sandbox chooses the depth).
    fn walk(&mut self) -> Result<(), CaptureError> {
        let mut stack = vec![(PathBuf::new(), self.list(Path::new(""))?)];
        loop {
            let next = match stack.last_mut() {
                None => return Ok(()),
                Some((dir, names)) => names.next().map(|n| dir.join(n)),
            };
            let Some(child) = next else {
                stack.pop();
                continue;
            };
            if self.skip.contains(&child) {
                continue;
            }
            if self.entry(&child)? {
                if stack.len() >= MAX_DEPTH {
                    return Err(CaptureError::TooDeep(child));
                }
                let names = self.list(&child)?;
                stack.push((child, names));
            }
        }
    }

    /// Write one entry; `true` when it is a directory to descend into.
    fn entry(&mut self, rel: &Path) -> Result<bool, CaptureError> {
        use std::os::unix::fs::FileTypeExt;
        let path = self.upper.join(rel);
        let md = fs::symlink_metadata(&path).map_err(self.read_err(rel))?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            let name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
            let wh = rel.with_file_name(format!(".wh.{}", name.unwrap_or_default()));
            return self.empty_file(&wh).map(|()| false);
        }
        if ft.is_dir() {
            let x = self.xattrs(&path)?;
            self.pax(&x)?;
            let mut h = self.header(&md, tar::EntryType::Directory);
            self.tar
                .append_data(&mut h, rel, io::empty())
                .map_err(CaptureError::Write)?;
            if is_opaque(&path) {
                self.empty_file(&rel.join(".wh..wh..opq"))?;
            }
            return Ok(true);
        }
        if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(self.read_err(rel))?;
            let mut h = self.header(&md, tar::EntryType::Symlink);
            return self
                .tar
                .append_link(&mut h, rel, target)
                .map(|()| false)
                .map_err(CaptureError::Write);
        }
        if ft.is_fifo() {
            let mut h = self.header(&md, tar::EntryType::Fifo);
            return self
                .tar
                .append_data(&mut h, rel, io::empty())
                .map(|()| false)
                .map_err(CaptureError::Write);
        }
        if !ft.is_file() {
            tracing::debug!(message = "leaving a special file out of a captured layer", path = %rel.display());
            return Ok(false);
        }
        if md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut h = self.header(&md, tar::EntryType::Link);
                return self
                    .tar
                    .append_link(&mut h, rel, first)
                    .map(|()| false)
                    .map_err(CaptureError::Write);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        let x = self.xattrs(&path)?;
        self.pax(&x)?;
        let fd = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| CaptureError::Read(rel.to_path_buf(), e.into()))?;
        let file = File::from(fd);
        let mut h = self.header(&md, tar::EntryType::Regular);
        h.set_size(md.len());
        use std::io::Read;
        self.tar
            .append_data(&mut h, rel, file.take(md.len()))
            .map(|()| false)
            .map_err(CaptureError::Write)
    }
}

fn is_opaque(dir: &Path) -> bool {
    let mut v = [0u8; 4];
    ["user.overlay.opaque", "trusted.overlay.opaque"]
        .iter()
        .any(|name| matches!(rustix::fs::lgetxattr(dir, *name, &mut v), Ok(1) if v[0] == b'y'))
}

#[cfg(test)]
mod tests;
