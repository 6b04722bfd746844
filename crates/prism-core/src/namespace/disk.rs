//! The disk quota of a sandbox's writable layers: a sparse ext4 image of `disk_bytes` under the
//! sandbox directory, loop-mounted by the host at `<sandbox>/disk`, holding the overlay's upper
//! and work directories. Writes past its size fail with `ENOSPC` inside the sandbox; the host
//! filesystem and other sandboxes never see the pressure. The image survives stop/start (it is
//! unmounted on stop and mounted again on start) and is removed on destroy.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use super::plan::SandboxDirs;

/// Smallest image we make (ext4 needs room for its own metadata).
pub const MIN_DISK_BYTES: u64 = 4 << 20;

/// Failures of the disk quota.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("creating the disk image failed")]
    Create(#[source] io::Error),
    #[error("mkfs.ext4 failed: {0}")]
    Mkfs(String),
    #[error("attaching the disk image to a loop device failed")]
    Attach(#[source] io::Error),
    #[error("mounting the disk image failed")]
    Mount(#[source] io::Error),
    #[error("unmounting the disk image failed")]
    Unmount(#[source] io::Error),
}

/// Whether this sandbox's writable layers live on a disk image (decided at its first start).
pub fn has_quota(dirs: &SandboxDirs) -> bool {
    dirs.disk_image().is_file()
}

/// Make the image (first start) and mount it at `dirs.disk()` unless it is mounted already
/// (a daemon restart with the sandbox still running).
pub fn ensure_mounted(dirs: &SandboxDirs, bytes: u64, owner: u32) -> Result<(), DiskError> {
    let image = dirs.disk_image();
    if !image.is_file() {
        make_image(&image, bytes.max(MIN_DISK_BYTES), owner)?;
    }
    let target = dirs.disk();
    fs::create_dir_all(&target).map_err(DiskError::Mount)?;
    if prism_sys::loopdev::is_mount_point(&target) {
        return Ok(());
    }
    let dev = prism_sys::loopdev::attach(&image).map_err(DiskError::Attach)?;
    prism_sys::loopdev::mount_ext4(&dev, &target).map_err(DiskError::Mount)?;
    // Dropping `dev` closes our handle: from now on the mount alone keeps the device attached.
    Ok(())
}

/// Unmount the image if it is mounted; its loop device detaches by itself (auto-clear).
pub fn unmount(dirs: &SandboxDirs) -> Result<(), DiskError> {
    let target = dirs.disk();
    if !target.exists() {
        return Ok(());
    }
    prism_sys::loopdev::unmount_all(&target).map_err(DiskError::Unmount)
}

fn make_image(image: &Path, bytes: u64, owner: u32) -> Result<(), DiskError> {
    let tmp = image.with_extension("img.new");
    let file = fs::File::create(&tmp).map_err(DiskError::Create)?;
    file.set_len(bytes).map_err(DiskError::Create)?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E"])
        .arg(format!(
            "root_owner={owner}:{owner},lazy_itable_init=1,nodiscard"
        ))
        .arg(&tmp)
        .output()
        .map_err(|e| DiskError::Mkfs(format!("cannot run it ({e}); install e2fsprogs")))?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(DiskError::Mkfs(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    fs::rename(&tmp, image).map_err(DiskError::Create)
}
