//! Small file-system helpers that need raw flags.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `path` as a C string for a syscall (a path with a NUL byte in it is invalid input).
pub(crate) fn cpath(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Open `path` with `O_PATH | O_CLOEXEC` (enough to exec it with `execveat`).
pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?
        .into())
}

/// Make the character device `path` with device number `rdev` (as `st_rdev` gives it) and
/// permission bits `mode` (umask applied).
pub fn mknod_char(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: mknod with a valid C string; no memory is handed to the kernel beyond it.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | (mode & 0o7777),
            rdev as libc::dev_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the filesystem holding `path` is mounted `nodev` (device nodes on it cannot be
/// opened).
pub fn is_nodev(path: &Path) -> io::Result<bool> {
    let c = cpath(path)?;
    // SAFETY: statvfs into a zeroed local struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a live out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_flag & libc::ST_NODEV != 0)
}

/// `lchown` a path to `uid:gid` (does not follow a final symlink).
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// The inode flag that makes ext2/3/4 place each new subdirectory of a directory the way it
/// places subdirectories of the filesystem's root: spread over the block groups (Orlov's
/// allocator, `chattr +T`) instead of next to the parent.
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Mark the directory `dir` as a top of directory hierarchies (`chattr +T`), so that the
/// subdirectories made in it land in different block groups. `Ok(false)` when the
/// filesystem has no such flag (tmpfs, xfs, btrfs...).
pub fn spread_subdirs(dir: &Path) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let d = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)?;
    let unsupported = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL)
        )
    };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int into the live local `flags`.
    if unsafe { libc::ioctl(d.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        let e = io::Error::last_os_error();
        return if unsupported(&e) { Ok(false) } else { Err(e) };
    }
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(true);
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int from the live local `flags`.
    if unsafe { libc::ioctl(d.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) } != 0 {
        let e = io::Error::last_os_error();
        return if unsupported(&e) { Ok(false) } else { Err(e) };
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Whether `lsattr -d` shows the top-directory flag on `dir`.
    fn shows_topdir(dir: &Path) -> bool {
        let out = std::process::Command::new("lsattr")
            .arg("-d")
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace().next().unwrap().contains('T')
    }

    #[test]
    fn spread_subdirs_marks_an_ext4_directory_and_is_a_no_op_on_tmpfs() {
        // /var/tmp is on the root filesystem (ext4 on our machines), /dev/shm a tmpfs.
        let ext4 = tempfile::tempdir_in("/var/tmp").unwrap();
        let statfs_ext4 = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(ext4.path())
            .output()
            .unwrap();
        if String::from_utf8_lossy(&statfs_ext4.stdout).trim() == "ext2/ext3" {
            assert!(!shows_topdir(ext4.path()));
            assert!(spread_subdirs(ext4.path()).unwrap());
            assert!(shows_topdir(ext4.path()));
            // Again: already marked.
            assert!(spread_subdirs(ext4.path()).unwrap());
        } else {
            eprintln!("SKIP (part): /var/tmp is not ext4 here, only the tmpfs half runs");
        }
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        assert!(!spread_subdirs(shm.path()).unwrap());
        assert!(spread_subdirs(&shm.path().join("missing")).is_err());
    }
}
