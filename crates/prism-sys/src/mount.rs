//! The new mount API pieces the parent needs: idmapped, read-only clones of host directories.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::fs::cpath;

pub(crate) const AT_EMPTY_PATH: libc::c_int = 0x1000;
pub(crate) const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached, read-only, nosuid clone of the mount at `path`, with ids mapped through `userns`
/// (host id 0 shows as the namespace's root), and `nodev` unless `devices`. Non-recursive:
/// submounts of `path` are not part of the view.
pub fn idmapped_tree(path: &Path, userns: &OwnedFd, devices: bool) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: open_tree with a valid C string; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is new and ours.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP
            | MOUNT_ATTR_RDONLY
            | MOUNT_ATTR_NOSUID
            | if devices { 0 } else { MOUNT_ATTR_NODEV },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our tree fd with a correctly sized mount_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_SET_FD: libc::c_uint = 5;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// A detached overlay mount (nosuid, nodev): `lowers` (mounts such as [`idmapped_tree`]s,
/// topmost first) under the writable `upper`, with `work` as its work directory, overlayfs's
/// xattrs in the `user.` namespace (`userxattr`, as for an overlay mounted inside a user
/// namespace), and `volatile` when asked. Needs a kernel that takes overlay layers as fds
/// (`lowerdir+` with `FSCONFIG_SET_FD`); elsewhere this fails and callers mount as before.
pub fn overlay(
    lowers: &[OwnedFd],
    upper: &Path,
    work: &Path,
    volatile: bool,
) -> io::Result<OwnedFd> {
    let last = |rc: libc::c_long| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let (upper, work) = (cpath(upper)?, cpath(work)?);
    // SAFETY: fsopen with a valid C string; returns a new fd or -1.
    let fs = last(unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: the fd is new and ours.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    let config = |cmd: libc::c_uint,
                  key: Option<&std::ffi::CStr>,
                  value: *const libc::c_char,
                  aux: libc::c_int| {
        // SAFETY: fsconfig on our context fd with valid C strings (or null where the command
        // takes none) that outlive the call.
        last(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                key.map_or(std::ptr::null(), |k| k.as_ptr()),
                value,
                aux,
            )
        })
    };
    let null = std::ptr::null();
    for lower in lowers {
        config(FSCONFIG_SET_FD, Some(c"lowerdir+"), null, lower.as_raw_fd())?;
    }
    config(FSCONFIG_SET_STRING, Some(c"upperdir"), upper.as_ptr(), 0)?;
    config(FSCONFIG_SET_STRING, Some(c"workdir"), work.as_ptr(), 0)?;
    config(FSCONFIG_SET_FLAG, Some(c"userxattr"), null, 0)?;
    if volatile {
        config(FSCONFIG_SET_FLAG, Some(c"volatile"), null, 0)?;
    }
    config(FSCONFIG_CMD_CREATE, None, null, 0)?;
    // SAFETY: fsmount of our created context; returns a new mount fd or -1.
    let mnt = last(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV) as libc::c_uint,
        )
    })?;
    // SAFETY: the fd is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as i32) })
}

/// Whether [`idmapped_tree`] or [`overlay`] failed because this kernel cannot do it (layers
/// as fds, the new mount API, idmapped mounts: `EINVAL`, `ENOSYS`, `EOPNOTSUPP`), rather than
/// for these directories. Errors not from the kernel (a path that is no C string) are not.
pub fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kernels_refusals_count_as_unsupported() {
        for errno in [libc::EINVAL, libc::ENOSYS, libc::EOPNOTSUPP] {
            assert!(unsupported(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        assert!(!unsupported(&io::Error::from_raw_os_error(libc::ENOENT)));
        let not_a_c_string = cpath(Path::new("a\0b")).expect_err("a NUL byte");
        assert_eq!(not_a_c_string.kind(), io::ErrorKind::InvalidInput);
        assert!(!unsupported(&not_a_c_string));
    }
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_detached_overlay_over_an_idmapped_lower_reads_it_and_writes_the_upper() {
        if crate::not_root(
            "a_detached_overlay_over_an_idmapped_lower_reads_it_and_writes_the_upper",
        ) {
            return;
        }
        let map = crate::ids::IdMap {
            base: 3_800_100_000,
            count: 65536,
        };
        let ns = crate::launch::userns_with(&map).expect("userns");
        let dir = tempfile::tempdir().expect("tempdir");
        let (lower, upper, work) = (
            dir.path().join("l"),
            dir.path().join("u"),
            dir.path().join("w"),
        );
        for d in [&lower, &upper, &work] {
            std::fs::create_dir(d).expect("dir");
        }
        std::fs::write(lower.join("f"), b"lower").expect("file");
        let tree = idmapped_tree(&lower, &ns, false).expect("tree");
        let mnt = overlay(&[tree], &upper, &work, true).expect("overlay");
        let at = |name: &str| format!("/proc/self/fd/{}/{name}", mnt.as_raw_fd());
        assert_eq!(std::fs::read(at("f")).expect("read"), b"lower");
        // The lower's root-owned file shows as the range's root (the idmap).
        assert_eq!(std::fs::metadata(at("f")).expect("stat").uid(), map.base);
        std::fs::write(at("new"), b"upper").expect("write");
        assert_eq!(
            std::fs::read(upper.join("new")).expect("in upper"),
            b"upper"
        );
        assert!(!lower.join("new").exists());
        // The work dir got overlayfs's volatile mark.
        assert!(work.join("work/incompat/volatile/dirty").exists());
    }
}
