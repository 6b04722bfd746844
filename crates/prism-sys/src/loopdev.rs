//! Loop devices for per-sandbox filesystem images (the disk quota of a writable layer): attach an
//! image with auto-clear, mount it, and unmount it. With auto-clear the kernel detaches the loop
//! device by itself once the last mount of it is gone, so a lazy unmount is the whole teardown —
//! also for mounts a crashed daemon left behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::fs::cpath;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device; the open handle keeps it attached until the mount holds it.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    _dev: File,
}

/// Attach `image` to a free loop device with auto-clear.
pub fn attach(image: &Path) -> io::Result<LoopDevice> {
    let backing = OpenOptions::new().read(true).write(true).open(image)?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another process may take the free device between GET_FREE and CONFIGURE: retry.
    for _ in 0..16 {
        // SAFETY: ioctl without a pointer argument.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new().read(true).write(true).open(&path)?;
        // SAFETY: an all-zero loop_config is valid; we set the fields we use.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads a loop_config of the layout above.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &cfg) };
        if rc == 0 {
            return Ok(LoopDevice { path, _dev: dev });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ResourceBusy,
        "no free loop device",
    ))
}

/// Mount the ext4 filesystem on `dev` at `target` (nosuid, nodev).
pub fn mount_ext4(dev: &LoopDevice, target: &Path) -> io::Result<()> {
    let src = cpath(&dev.path)?;
    let dst = cpath(target)?;
    // SAFETY: C strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            c"ext4".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `path` is the root of a mount other than its parent's (compares device numbers).
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (
        std::fs::symlink_metadata(path),
        path.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Lazily unmount every mount stacked at `target`; a no-op when nothing is mounted there.
pub fn unmount_all(target: &Path) -> io::Result<()> {
    let dst = cpath(target)?;
    for _ in 0..64 {
        if !is_mount_point(target) {
            return Ok(());
        }
        // SAFETY: C string that outlives the call.
        let rc = unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                return Ok(());
            }
            return Err(err);
        }
    }
    Ok(())
}
