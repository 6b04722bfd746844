//! The child side of [`super::launch`]: raw syscalls only, no allocation, never returns.

use std::os::fd::{AsRawFd, RawFd};

use super::prepare::{CStep, Prepared};
use crate::mount::{AT_EMPTY_PATH, MOVE_MOUNT_F_EMPTY_PATH};

/// At most this many idmapped trees per sandbox.
pub const MAX_TREES: usize = 128;

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Fork-like `clone3`: returns the child's pid in the parent, 0 in the child, -1 on error.
///
/// # Safety
/// The child shares nothing with the parent but a copy of its memory; it must only make
/// async-signal-safe calls (see the module docs).
pub(super) unsafe fn clone3(flags: u64, pidfd: &mut RawFd) -> libc::pid_t {
    let mut args = CloneArgs {
        flags,
        pidfd: pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size we pass; see the function's contract.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        ) as libc::pid_t
    }
}

/// Report `(step, errno)` to the parent and exit.
fn fail(sock: RawFd, step: usize, errno: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a local buffer; _exit never returns and runs no destructors or atexit hooks.
    unsafe {
        libc::write(sock, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

pub(super) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Receive up to [`MAX_TREES`] fds into `out`; returns how many arrived, or -1.
///
/// # Safety
/// `sock` must be a valid socket.
unsafe fn recv_fds(sock: RawFd, out: &mut [RawFd; MAX_TREES]) -> isize {
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // Aligned space for a cmsghdr plus MAX_TREES ints.
    let mut control = [0u64; 2 + MAX_TREES / 2 + 1];
    // SAFETY: zeroed msghdr is a valid "empty" value; we fill the fields we use.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points to live local buffers of the sizes stated.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n != 1 {
        return -1;
    }
    // SAFETY: CMSG_* walk the control buffer the kernel just filled.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return 0;
        }
        if (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return -1;
        }
        let data = libc::CMSG_DATA(cmsg) as *const RawFd;
        let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
        let count = (len / std::mem::size_of::<RawFd>()).min(MAX_TREES);
        for (i, slot) in out.iter_mut().enumerate().take(count) {
            *slot = std::ptr::read_unaligned(data.add(i));
        }
        count as isize
    }
}

/// Run one step; returns 0 or -1 with errno set.
///
/// # Safety
/// Raw syscalls on prepared C strings.
unsafe fn step(p: &Prepared, s: &CStep, trees: &[RawFd; MAX_TREES]) -> i32 {
    // SAFETY: every pointer comes from a CString that outlives this call.
    unsafe {
        match s {
            CStep::UnshareCgroup => libc::unshare(libc::CLONE_NEWCGROUP),
            CStep::MakeRootPrivate => libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            CStep::AttachTree { tree, target } => libc::syscall(
                libc::SYS_move_mount,
                trees[*tree],
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ) as i32,
            CStep::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                *flags,
                data.as_ref()
                    .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
            ),
            CStep::Mkdir { path, mode } => {
                let rc = libc::mkdir(path.as_ptr(), *mode);
                if rc != 0 && errno() == libc::EEXIST {
                    0
                } else {
                    rc
                }
            }
            CStep::Touch { path, mode } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    *mode,
                );
                if fd < 0 {
                    return -1;
                }
                libc::close(fd)
            }
            CStep::Symlink { target, link } => {
                let rc = libc::symlink(target.as_ptr(), link.as_ptr());
                if rc != 0 && errno() == libc::EEXIST {
                    0
                } else {
                    rc
                }
            }
            CStep::PivotRoot { new_root } => {
                if libc::chdir(new_root.as_ptr()) != 0 {
                    return -1;
                }
                if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
                    return -1;
                }
                if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
                    return -1;
                }
                libc::chdir(c"/".as_ptr())
            }
            CStep::LoopbackUp => loopback_up(),
            CStep::Hostname(h) => libc::sethostname(h.as_ptr(), h.as_bytes().len()),
            CStep::Mask { path } => mask(p, path),
            CStep::ReadOnly { path } => read_only(path),
        }
    }
}

/// `Some(is_dir)` for an existing path, `None` if it does not exist, `Err` on other errors.
///
/// # Safety
/// `path` is a valid C string.
unsafe fn kind(path: &std::ffi::CStr) -> Result<Option<bool>, ()> {
    // SAFETY: stat into a zeroed local buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::stat(path.as_ptr(), &mut st) != 0 {
            return if errno() == libc::ENOENT {
                Ok(None)
            } else {
                Err(())
            };
        }
        Ok(Some(st.st_mode & libc::S_IFMT == libc::S_IFDIR))
    }
}

/// # Safety
/// Raw mounts on prepared C strings.
unsafe fn mask(p: &Prepared, path: &std::ffi::CStr) -> i32 {
    // SAFETY: pointers come from C strings that outlive the call.
    unsafe {
        match kind(path) {
            Err(()) => -1,
            Ok(None) => 0,
            Ok(Some(true)) => libc::mount(
                p.tmpfs.as_ptr(),
                path.as_ptr(),
                p.tmpfs.as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                p.mask_opts.as_ptr().cast(),
            ),
            Ok(Some(false)) => libc::mount(
                p.dev_null.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ),
        }
    }
}

/// # Safety
/// Raw mounts on a prepared C string.
unsafe fn read_only(path: &std::ffi::CStr) -> i32 {
    // SAFETY: pointers come from C strings that outlive the call.
    unsafe {
        match kind(path) {
            Err(()) => -1,
            Ok(None) => 0,
            Ok(Some(_)) => {
                if libc::mount(
                    path.as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return -1;
                }
                libc::mount(
                    std::ptr::null(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            }
        }
    }
}

/// # Safety
/// Raw ioctls on a local socket.
unsafe fn loopback_up() -> i32 {
    // SAFETY: a zeroed ifreq is valid; the name fits in IFNAMSIZ.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return -1;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) != 0 {
            libc::close(fd);
            return -1;
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut req);
        libc::close(fd);
        rc
    }
}

/// The whole child: receive the trees, become the sandbox's root, run the steps, exec.
///
/// # Safety
/// Must be called only in the child right after [`clone3`].
pub(super) unsafe fn run(p: &Prepared, sock: RawFd, parent_end: RawFd) -> ! {
    let base = p.steps.len();
    // SAFETY: raw syscalls on fds and buffers prepared before the clone.
    unsafe {
        libc::close(parent_end);
        libc::umask(0);
        let mut trees = [-1 as RawFd; MAX_TREES];
        if recv_fds(sock, &mut trees) < 0 {
            fail(sock, base, errno());
        }
        // Raw syscalls, not libc's wrappers: glibc's set*id broadcast the change to every thread
        // it believes exists, and after a raw clone it still believes in the parent's threads
        // (it would wait forever for them).
        if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
            || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
        {
            fail(sock, base + 1, errno());
        }
        for (i, s) in p.steps.iter().enumerate() {
            if step(p, s, &trees) != 0 {
                fail(sock, i, errno());
            }
        }
        if super::harden::limits_and_caps(&p.hardening) != 0 {
            fail(sock, base + 4, errno());
        }
        for fd in trees.iter().filter(|fd| **fd >= 0) {
            libc::close(*fd);
        }
        // Move what we keep above the low numbers before filling 0..=3.
        let exe = libc::fcntl(p.exe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64);
        let fd3 = libc::fcntl(p.fd3, libc::F_DUPFD_CLOEXEC, 64);
        let err = libc::fcntl(p.stderr, libc::F_DUPFD_CLOEXEC, 64);
        let null = libc::open(p.dev_null.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if exe < 0 || fd3 < 0 || err < 0 || null < 0 {
            fail(sock, base + 2, errno());
        }
        if libc::dup2(null, 0) < 0
            || libc::dup2(null, 1) < 0
            || libc::dup2(err, 2) < 0
            || libc::dup2(fd3, 3) < 0
        {
            fail(sock, base + 2, errno());
        }
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
            fail(sock, base + 2, errno());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::umask(0o022);
        if let Some(prog) = &p.hardening.seccomp
            && crate::seccomp::install(prog) != 0
        {
            fail(sock, base + 5, errno());
        }
        libc::syscall(
            libc::SYS_execveat,
            exe,
            p.empty.as_ptr(),
            p.argv_ptrs.as_ptr(),
            p.env_ptrs.as_ptr(),
            AT_EMPTY_PATH,
        );
        fail(sock, base + 3, errno())
    }
}
