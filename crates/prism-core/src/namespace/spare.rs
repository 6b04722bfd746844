//! Sandbox directories made ahead ("spares"). A first start used to make its directory's
//! skeleton itself: about fifteen new inodes (directories, the id-range file, the identity
//! files, the agent's socket and log) and a `chown` of the writable ones. On a busy ext4
//! without a journal each new inode costs ~0.4 ms (the allocator skips every inode freed in
//! the last minutes), ~4 ms a start. A background thread at a low priority now keeps a few
//! complete skeletons ready as `<sandboxes>/.spare-<n>`, each with its id range already
//! taken and its agent socket already bound; a first start renames one into place (one
//! rename: no inode is allocated) and fills the two identity files.
//!
//! A spare is made for the shape of the last root filesystem started (how many lowers each
//! overlay mount has); a start of another shape makes its own directory as before and the
//! pool is remade in the new shape. Spares left by a daemon that died are discarded at the
//! next start of the runtime (their sockets have no listener any more).
//!
//! A spare also brings its writable layers' overlays, mounted (detached) by the host for the
//! lowers of that last root filesystem (`premade`): the overlay mount's own inode work (its
//! `work/` directory, the `O_TMPFILE` and whiteout checks, the `volatile` mark; ~0.4 ms a mount
//! on a busy ext4 without a journal) is then done here instead of in the sandbox's start. A
//! start with other lowers uses the directory and mounts its overlays itself.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prism_sys::ids::IdMap;

use super::ahead::Ahead;
use super::layout::{self, Shape};
use super::plan::SandboxDirs;
use super::{Host, IDS_PER_SANDBOX};

/// The host directories of each overlay mount of a root filesystem (`RootfsSpec::mounts`).
pub(super) type Lowers = Vec<Vec<PathBuf>>;

/// The lowers of a root filesystem.
pub(super) fn lowers(rootfs: &crate::runtime::RootfsSpec) -> Lowers {
    rootfs.mounts.iter().map(|m| m.lowers.clone()).collect()
}

/// Spare directories kept ready by default.
pub const DEFAULT_SPARE_DIRS: usize = 2;

/// Name prefix of a spare in the sandboxes directory (a dot-entry: not a sandbox).
const PREFIX: &str = ".spare-";

/// Longest path a unix socket can be bound or reached at (`sun_path` holds 108 bytes).
const SOCKET_PATH_MAX: usize = 107;

/// A complete sandbox directory not yet given to a sandbox. Dropped unused, it is discarded
/// and its id range released.
pub(super) struct Spare {
    host: Arc<Host>,
    dirs: SandboxDirs,
    shape: Shape,
    /// What `overlays` were mounted over (empty without them), and the directories' (device,
    /// inode) then: a path may name another directory by the time of the start (an image
    /// pruned and pulled again, a template rebuilt).
    lowers: Lowers,
    lower_ids: Vec<(u64, u64)>,
    /// Overlay mount `i` of the writable layer `upper/i` (detached), or none.
    overlays: Vec<OwnedFd>,
    base: u32,
    listener: Option<UnixListener>,
}

/// What a start gets from a spare.
pub(super) struct Installed {
    pub(super) base: u32,
    /// Bound at the sandbox's `agent.sock` (the rename moved the socket's inode with it).
    pub(super) listener: UnixListener,
    /// The writable layers' overlays, mounted ahead for this start's lowers (or none).
    pub(super) overlays: Vec<OwnedFd>,
}

/// The overlays of `dirs`'s writable layers over `lowers`, detached: the lowers idmapped
/// through a user namespace of the range at `base` (the sandbox's own does not exist yet; an
/// idmap depends on the mapping alone).
fn premade(
    host: &Host,
    dirs: &SandboxDirs,
    lowers: &Lowers,
    base: u32,
) -> io::Result<Vec<OwnedFd>> {
    let ns = prism_sys::launch::userns_with(&IdMap {
        base,
        count: IDS_PER_SANDBOX,
    })?;
    let volatile = !host.cfg.fsync_sandboxes;
    let mut overlays = Vec::with_capacity(lowers.len());
    for (i, layer) in lowers.iter().enumerate() {
        let trees = layer
            .iter()
            .map(|p| prism_sys::mount::idmapped_tree(p, &ns, false))
            .collect::<io::Result<Vec<_>>>()?;
        overlays.push(prism_sys::mount::overlay(
            &trees,
            &dirs.upper(i),
            &dirs.work(i),
            volatile,
        )?);
    }
    Ok(overlays)
}

/// The (device, inode) of every lower directory, in order.
fn dir_ids(lowers: &Lowers) -> io::Result<Vec<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    lowers
        .iter()
        .flatten()
        .map(|p| fs::metadata(p).map(|m| (m.dev(), m.ino())))
        .collect()
}

impl Spare {
    fn make(host: &Arc<Host>, want: &Want, name: &str) -> io::Result<Self> {
        let shape = &want.shape;
        let base = host
            .slots
            .allocate()?
            .ok_or_else(|| io::Error::other("no free id range"))?;
        let dirs = SandboxDirs::new(&host.cfg.sandboxes_dir, name);
        // From here on a failure drops the half-made spare, which discards it.
        let mut spare = Self {
            host: host.clone(),
            dirs,
            shape: shape.clone(),
            lowers: Vec::new(),
            lower_ids: Vec::new(),
            overlays: Vec::new(),
            base,
            listener: None,
        };
        let d = &spare.dirs;
        layout::create_root(d, base)?;
        layout::build(d, shape, base)?;
        layout::empty_identity(d, base)?;
        fs::File::create_new(d.agent_log())?;
        spare.listener = Some(UnixListener::bind(d.agent_socket())?);
        if want.premade.load(Ordering::Relaxed) && want.lowers.len() == shape.len() {
            let made = dir_ids(&want.lowers)
                .and_then(|ids| Ok((ids, premade(host, &spare.dirs, &want.lowers, base)?)));
            match made {
                Ok((ids, overlays)) => {
                    spare.overlays = overlays;
                    spare.lowers = want.lowers.clone();
                    spare.lower_ids = ids;
                }
                Err(error) if prism_sys::mount::unsupported(&error) => {
                    // An older kernel (no overlay layers as fds): starts mount them.
                    want.premade.store(false, Ordering::Relaxed);
                    tracing::info!(message = "overlays are not mounted ahead", %error);
                }
                // E.g. a lower removed since that start: this spare goes without.
                Err(error) => tracing::debug!(message = "no overlays made ahead", %error),
            }
        }
        Ok(spare)
    }

    /// Rename the spare to `dirs.root` (which must not exist yet); its overlays come along if
    /// they were made over `lowers`.
    fn install(mut self, dirs: &SandboxDirs, lowers: &Lowers) -> io::Result<Installed> {
        fs::rename(&self.dirs.root, &dirs.root)?;
        let listener = self
            .listener
            .take()
            .ok_or_else(|| io::Error::other("spare without a socket"))?;
        // Installed: no longer ours to discard.
        self.dirs.root = PathBuf::new();
        let same = self.lowers == *lowers && dir_ids(lowers).is_ok_and(|ids| ids == self.lower_ids);
        let overlays = if same {
            std::mem::take(&mut self.overlays)
        } else {
            Vec::new()
        };
        Ok(Installed {
            base: self.base,
            listener,
            overlays,
        })
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // Unmounted (nothing else holds them) before the directory goes.
        self.overlays.clear();
        if self.dirs.root.as_os_str().is_empty() {
            return;
        }
        if let Err(error) = self.host.trash.discard(&self.dirs.root) {
            tracing::warn!(message = "cannot discard a spare directory", path = %self.dirs.root.display(), %error);
            // Its id range stays taken: a directory that may still hold files of that range.
            return;
        }
        self.host.slots.release(self.base);
    }
}

/// What the pool makes spares for: the last root filesystem started.
struct Want {
    shape: Shape,
    lowers: Lowers,
    /// Overlays are mounted ahead (until the kernel refuses once).
    premade: Arc<AtomicBool>,
}

/// The pool of spares.
pub(super) struct Spares {
    pool: Ahead<Spare>,
    /// What the pool makes spares for (the lowers unknown until the first start).
    want: Arc<Mutex<(Shape, Lowers)>>,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spares")
            .field("ready", &self.pool.ready())
            .finish()
    }
}

impl Spares {
    /// A pool of `size` spares (none when 0), in the shape of `base`'s root filesystem
    /// (two overlay mounts of one lower each) until a start of another shape.
    pub(super) fn new(host: &Arc<Host>, size: usize) -> io::Result<Self> {
        discard_leftovers(host);
        let want = Arc::new(Mutex::new((vec![1, 1], Vec::new())));
        let premade = Arc::new(AtomicBool::new(true));
        let (h, w) = (host.clone(), want.clone());
        // Names unique across runtimes over the same directory (a restarted daemon's spares
        // never meet the old ones' names, which may still be on their way to the trash).
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let seq = AtomicU64::new(0);
        let make = Box::new(move || {
            let (shape, lowers) = w.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let want = Want {
                shape,
                lowers,
                premade: premade.clone(),
            };
            let n = seq.fetch_add(1, Ordering::Relaxed);
            Spare::make(&h, &want, &format!("{PREFIX}{nonce:x}-{n}"))
        });
        Ok(Self {
            pool: Ahead::new("prism-spare-dirs", "sandbox directory", size, make)?,
            want,
        })
    }

    /// Put a ready spare of `shape` in place as `dirs.root` (a first start's directory, not
    /// there yet). `None` when there is none of that shape or it could not be moved: the
    /// caller makes the directory itself.
    pub(super) fn install(
        &self,
        dirs: &SandboxDirs,
        rootfs: &crate::runtime::RootfsSpec,
    ) -> Option<Installed> {
        if dirs.agent_socket().as_os_str().len() > SOCKET_PATH_MAX {
            // Unreachable at its final path: the caller's own bind reports it.
            return None;
        }
        let (shape, lowers) = (layout::shape(rootfs), self::lowers(rootfs));
        {
            let mut want = self.want.lock().unwrap_or_else(|p| p.into_inner());
            if want.0 != shape {
                *want = (shape, lowers);
                drop(want);
                self.pool.clear();
                return None;
            }
            // The same shape over other lowers: this spare's directory serves, the next ones
            // get overlays over these lowers.
            want.1 = lowers.clone();
        }
        let spare = self.pool.take()?;
        if spare.shape != shape {
            return None;
        }
        match spare.install(dirs, &lowers) {
            Ok(installed) => Some(installed),
            Err(error) => {
                tracing::debug!(message = "cannot use a spare directory", %error);
                None
            }
        }
    }

    /// Spares ready now.
    pub(super) fn ready(&self) -> usize {
        self.pool.ready()
    }
}

/// Discard the spares a daemon that is gone left behind.
fn discard_leftovers(host: &Host) {
    let Ok(entries) = fs::read_dir(&host.cfg.sandboxes_dir) else {
        return;
    };
    for e in entries.flatten() {
        if is_spare(&e.file_name())
            && let Err(error) = host.trash.discard(&e.path())
        {
            tracing::warn!(message = "cannot discard an old spare directory", path = %e.path().display(), %error);
        }
    }
}

fn is_spare(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(PREFIX))
}
