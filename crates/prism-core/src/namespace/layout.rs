//! A sandbox's directory on the host: made at its first start (or ahead, see `spare.rs`),
//! kept across stop/start, discarded by its teardown.
//!
//! ```text
//! <sandboxes>/<id>/uid_base        first host id of its range
//!                  lower/<i>-<j>   mount points of the idmapped read-only lowers
//!                  upper/<i>       the writable layer of overlay mount i (owned by its root)
//!                  work/<i>        overlay's work directory for it
//!                  rootfs/         where the root is assembled
//!                  agent.sock      the agent's control socket, agent.log its stderr
//! ```

use super::plan::SandboxDirs;
use std::fs;
use std::io::{self, Write};

/// How many lower directories each overlay mount of a sandbox has (its directory's layout
/// depends on nothing else).
pub(super) type Shape = Vec<usize>;

/// The shape of a root filesystem.
pub(super) fn shape(rootfs: &crate::runtime::RootfsSpec) -> Shape {
    rootfs.mounts.iter().map(|m| m.lowers.len()).collect()
}

/// Make the sandbox's directory and record its id range.
pub(super) fn create_root(dirs: &SandboxDirs, base: u32) -> io::Result<()> {
    fs::create_dir_all(&dirs.root)?;
    fs::write(dirs.uid_file(), base.to_string())
}

/// Make whatever of the mount points and writable layers of `shape` is missing (the writable
/// ones owned by the sandbox's root, host id `base`).
pub(super) fn build(dirs: &SandboxDirs, shape: &[usize], base: u32) -> io::Result<()> {
    for (i, lowers) in shape.iter().enumerate() {
        for j in 0..*lowers {
            fs::create_dir_all(dirs.lower(i, j))?;
        }
        for d in [dirs.upper(i), dirs.work(i)] {
            if !d.exists() {
                fs::create_dir_all(&d)?;
                prism_sys::fs::lchown(&d, base, base)?;
            }
        }
    }
    fs::create_dir_all(dirs.rootfs())
}

/// Let a restart mount the writable layers again: remove each layer's `<workdir>/work`, the
/// overlay's scratch directory, which overlayfs empties and remakes at every mount anyway.
/// Two things in it would stop the restart: an overlay mounted `volatile` leaves
/// `work/incompat/volatile/dirty`, which overlayfs refuses (after a host crash the layer may
/// lack its last writes; within one boot nothing is lost, and after a crash the restart shows
/// the layer as the disk kept it, see docs/security.md); and an overlay the host mounted ahead
/// (`spare.rs`) made `work` as the host's root, which the overlay the sandbox mounts at the
/// restart may not clean up (it then mounts read-only). The sandbox never sees its workdirs:
/// what is there the kernel made.
pub(super) fn reset_workdirs(dirs: &SandboxDirs, layers: usize) -> io::Result<()> {
    for i in 0..layers {
        match fs::remove_dir_all(dirs.work(i).join("work")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The identity files of the sandbox's `/etc`, in its writable layer, owned by its root.
const IDENTITY: [&str; 2] = ["hostname", "hosts"];

/// Make `/etc` in the writable layer and empty identity files in it, owned by the sandbox's
/// root (a spare's; the first start fills them).
pub(super) fn empty_identity(dirs: &SandboxDirs, base: u32) -> io::Result<()> {
    let etc = dirs.upper(0).join("etc");
    fs::create_dir(&etc)?;
    prism_sys::fs::lchown(&etc, base, base)?;
    for name in IDENTITY {
        let path = etc.join(name);
        fs::File::create_new(&path)?;
        prism_sys::fs::lchown(&path, base, base)?;
    }
    Ok(())
}

/// Write `/etc/hostname` and `/etc/hosts` at a sandbox's first start: into the (empty) files a
/// spare brought, or new ones. Only at the first start: afterwards the files are the
/// sandbox's (it may have changed or removed them, or replaced `/etc` with a symlink, which
/// the host must not follow).
pub(super) fn write_identity(dirs: &SandboxDirs, hostname: &str, base: u32) -> io::Result<()> {
    let etc = dirs.upper(0).join("etc");
    if !etc.is_dir() {
        fs::create_dir(&etc)?;
        prism_sys::fs::lchown(&etc, base, base)?;
    }
    let h = hostname;
    let texts = [
        format!("{h}\n"),
        format!("127.0.0.1\tlocalhost {h}\n::1\tlocalhost ip6-localhost ip6-loopback {h}\n"),
    ];
    for (name, text) in IDENTITY.iter().zip(texts) {
        let path = etc.join(name);
        let existed = path.symlink_metadata().is_ok();
        // Writing into an existing file allocates no inode (on a busy ext4 without a journal
        // a new inode costs ~0.4 ms); the length is set in case an earlier attempt left more.
        let mut f = fs::File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        f.write_all(text.as_bytes())?;
        f.set_len(text.len() as u64)?;
        if !existed {
            prism_sys::fs::lchown(&path, base, base)?;
        }
    }
    Ok(())
}

/// The recorded id range of a sandbox's directory.
pub(super) fn read_uid_base(dirs: &SandboxDirs) -> Option<u32> {
    fs::read_to_string(dirs.uid_file())
        .ok()?
        .trim()
        .parse()
        .ok()
}
