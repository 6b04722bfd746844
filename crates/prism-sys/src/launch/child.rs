//! The child side of [`super::launch`]: it shares the daemon's memory (`CLONE_VM`) and the
//! thread pointer of the thread that cloned it, which keeps running. So until `execveat` it makes
//! raw syscalls only (`crate::raw`: no libc function, no `errno`), allocates nothing, writes no
//! memory but its own stack, and has no way to panic (indices were checked in
//! [`Prepared::new`]). It never returns.

use std::os::fd::{AsRawFd, RawFd};

use super::prepare::{CStep, Prepared};
use crate::mount::{AT_EMPTY_PATH, MOVE_MOUNT_F_EMPTY_PATH};
use crate::raw::{check, sys};

/// At most this many idmapped trees per sandbox.
pub const MAX_TREES: usize = 128;

/// An errno value.
pub(super) type Errno = i32;

/// The kernel's answer without its value.
pub(super) fn ok(ret: isize) -> Result<(), Errno> {
    check(ret).map(|_| ())
}

/// Report `(step, errno)` to the parent and exit.
fn fail(sock: RawFd, step: usize, errno: Errno) -> ! {
    let s = (step as u32).to_ne_bytes();
    let e = errno.to_ne_bytes();
    let buf = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
    // SAFETY: writing a local buffer, then exit_group (no destructors, no atexit hooks: they
    // belong to the daemon's memory).
    unsafe {
        sys!(libc::SYS_write, sock, buf.as_ptr(), buf.len());
        loop {
            sys!(libc::SYS_exit_group, 127);
        }
    }
}

/// Wait for the parent's word that the child is in its cgroup (one byte; end-of-file means the
/// parent gave up).
///
/// # Safety
/// `sock` must be a valid socket.
unsafe fn wait_placed(sock: RawFd) -> Result<(), Errno> {
    let mut byte = 0u8;
    // SAFETY: reading one byte into a local.
    match check(unsafe { sys!(libc::SYS_read, sock, &mut byte as *mut u8, 1) })? {
        1 => Ok(()),
        _ => Err(libc::EPIPE),
    }
}

/// Receive up to [`MAX_TREES`] fds into `out`; returns how many arrived.
///
/// # Safety
/// `sock` must be a valid socket.
unsafe fn recv_fds(sock: RawFd, out: &mut [RawFd; MAX_TREES]) -> Result<usize, Errno> {
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
    let n = check(unsafe {
        sys!(
            libc::SYS_recvmsg,
            sock,
            &mut msg as *mut libc::msghdr,
            libc::MSG_CMSG_CLOEXEC
        )
    })?;
    if n != 1 {
        return Err(libc::EPROTO);
    }
    // SAFETY: CMSG_* (pure pointer arithmetic, no libc call) walk the control buffer the kernel
    // just filled.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Ok(0);
        }
        if (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(libc::EPROTO);
        }
        let data = libc::CMSG_DATA(cmsg) as *const RawFd;
        let len = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
        let count = (len / std::mem::size_of::<RawFd>()).min(MAX_TREES);
        for (i, slot) in out.iter_mut().enumerate().take(count) {
            *slot = std::ptr::read_unaligned(data.add(i));
        }
        Ok(count)
    }
}

/// `Ok` also when the answer is `EEXIST`.
fn exists_ok(ret: isize) -> Result<(), Errno> {
    match ok(ret) {
        Err(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Run one step.
///
/// # Safety
/// Raw syscalls on prepared C strings.
unsafe fn step(p: &Prepared, s: &CStep, trees: &[RawFd; MAX_TREES]) -> Result<(), Errno> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: every pointer comes from a CString of `p` that outlives this call.
    unsafe {
        match s {
            CStep::UnshareCgroup => ok(sys!(libc::SYS_unshare, libc::CLONE_NEWCGROUP)),
            CStep::MakeRootPrivate => ok(sys!(
                libc::SYS_mount,
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                null
            )),
            CStep::AttachTree { tree, target } => ok(sys!(
                libc::SYS_move_mount,
                trees.get(*tree).copied().unwrap_or(-1),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH
            )),
            CStep::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => ok(sys!(
                libc::SYS_mount,
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ref().map_or(null, |f| f.as_ptr()),
                *flags,
                data.as_ref().map_or(null, |d| d.as_ptr())
            )),
            CStep::Mkdir { path, mode } => exists_ok(sys!(
                libc::SYS_mkdirat,
                libc::AT_FDCWD,
                path.as_ptr(),
                *mode
            )),
            CStep::Touch { path, mode } => {
                let fd = check(sys!(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    *mode
                ))?;
                ok(sys!(libc::SYS_close, fd))
            }
            CStep::Symlink { target, link } => exists_ok(sys!(
                libc::SYS_symlinkat,
                target.as_ptr(),
                libc::AT_FDCWD,
                link.as_ptr()
            )),
            CStep::PivotRoot { new_root } => {
                ok(sys!(libc::SYS_chdir, new_root.as_ptr()))?;
                ok(sys!(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()))?;
                ok(sys!(libc::SYS_umount2, c".".as_ptr(), libc::MNT_DETACH))?;
                ok(sys!(libc::SYS_chdir, c"/".as_ptr()))
            }
            CStep::LoopbackUp => crate::netns::loopback_up(),
            CStep::Hostname(h) => ok(sys!(libc::SYS_sethostname, h.as_ptr(), h.as_bytes().len())),
            CStep::Mask { path } => mask(p, path),
            CStep::ReadOnly { path } => read_only(path),
        }
    }
}

/// `Some(is_dir)` for an existing path, `None` if it does not exist.
///
/// # Safety
/// `path` is a valid C string.
unsafe fn kind(path: &std::ffi::CStr) -> Result<Option<bool>, Errno> {
    // SAFETY: a zeroed stat is a valid buffer for the kernel's (x86_64: same layout) to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: stat into the local buffer.
    let rc = unsafe {
        sys!(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut st as *mut libc::stat,
            0
        )
    };
    match ok(rc) {
        Ok(()) => Ok(Some(st.st_mode & libc::S_IFMT == libc::S_IFDIR)),
        Err(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// # Safety
/// Raw mounts on prepared C strings.
unsafe fn mask(p: &Prepared, path: &std::ffi::CStr) -> Result<(), Errno> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: pointers come from C strings that outlive the call.
    unsafe {
        match kind(path)? {
            None => Ok(()),
            Some(true) => ok(sys!(
                libc::SYS_mount,
                p.tmpfs.as_ptr(),
                path.as_ptr(),
                p.tmpfs.as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                p.mask_opts.as_ptr()
            )),
            Some(false) => ok(sys!(
                libc::SYS_mount,
                p.dev_null.as_ptr(),
                path.as_ptr(),
                null,
                libc::MS_BIND,
                null
            )),
        }
    }
}

/// # Safety
/// Raw mounts on a prepared C string.
unsafe fn read_only(path: &std::ffi::CStr) -> Result<(), Errno> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: pointers come from C strings that outlive the call.
    unsafe {
        if kind(path)?.is_none() {
            return Ok(());
        }
        ok(sys!(
            libc::SYS_mount,
            path.as_ptr(),
            path.as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REC,
            null
        ))?;
        ok(sys!(
            libc::SYS_mount,
            null,
            path.as_ptr(),
            null,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            null
        ))
    }
}

/// The kernel's `struct sigaction` on x86_64 (not libc's).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Every signal's disposition back to the default (the child inherits the daemon's handlers,
/// which must never run on its shared memory; all signals are blocked until the exec).
///
/// # Safety
/// In the launch child.
unsafe fn default_handlers() {
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: a valid kernel sigaction for an 8-byte signal set.
            unsafe {
                sys!(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    0,
                    8
                );
            }
        }
    }
}

/// Place `fd` at `target` (not close-on-exec there).
///
/// # Safety
/// In the launch child, on its own fds.
unsafe fn place(fd: RawFd, target: RawFd) -> Result<(), Errno> {
    // SAFETY: fd-table operations on our own fds.
    unsafe {
        if fd == target {
            ok(sys!(libc::SYS_fcntl, fd, libc::F_SETFD, 0))
        } else {
            ok(sys!(libc::SYS_dup3, fd, target, 0))
        }
    }
}

/// Move `fd` above the low numbers (close-on-exec).
///
/// # Safety
/// In the launch child, on its own fds.
unsafe fn lift(fd: RawFd) -> Result<RawFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC on our own fd.
    check(unsafe { sys!(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, 64) }).map(|f| f as RawFd)
}

/// stdin/stdout `/dev/null`, stderr and fd 3 as prepared, the binary's fd lifted; every other fd
/// close-on-exec. Returns the binary's fd.
///
/// # Safety
/// In the launch child.
unsafe fn arrange_fds(p: &Prepared) -> Result<RawFd, Errno> {
    // SAFETY: fd-table operations on our own fds.
    unsafe {
        let exe = lift(p.exe.as_raw_fd())?;
        let fd3 = lift(p.fd3)?;
        let err = lift(p.stderr)?;
        let null = check(sys!(
            libc::SYS_openat,
            libc::AT_FDCWD,
            p.dev_null.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC,
            0
        ))? as RawFd;
        place(null, 0)?;
        place(null, 1)?;
        place(err, 2)?;
        place(fd3, 3)?;
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        ok(sys!(
            libc::SYS_close_range,
            4u32,
            u32::MAX,
            CLOSE_RANGE_CLOEXEC
        ))?;
        Ok(exe)
    }
}

/// Close every fd above 2 but the four the child works with. The clone copied the daemon's
/// whole fd table, and each copy is a reference: a file the daemon closes meanwhile stays open
/// here, and its last `close` (at the exec, deferred to the return to user space) would free it
/// in the sandbox's start. The trash's walk over a torn-down sandbox holds directory fds; with
/// `discard` on the host's filesystem, freeing those directories there waited for the disk
/// (0.2-0.35 ms per start, seen in tracefs's `ext4_free_blocks` from `prism-agent` at its exec).
///
/// # Safety
/// In the launch child, first thing.
unsafe fn close_inherited(p: &Prepared) {
    let mut keep = [p.sock, p.exe.as_raw_fd(), p.fd3, p.stderr];
    // Sorted without allocating (insertion sort of four).
    for i in 1..keep.len() {
        let mut j = i;
        while j > 0 && keep[j - 1] > keep[j] {
            keep.swap(j - 1, j);
            j -= 1;
        }
    }
    let mut from: u32 = 3;
    for fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd > from {
            // SAFETY: closing copies of the daemon's fds in our own table.
            unsafe { sys!(libc::SYS_close_range, from, fd - 1, 0) };
        }
        from = from.max(fd.saturating_add(1));
    }
    // SAFETY: as above.
    unsafe { sys!(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// The whole child: receive the trees, become the sandbox's root, run the steps, exec.
///
/// # Safety
/// Must be called only in the child right after the launch clone, with every signal blocked.
pub(super) unsafe fn run(p: &Prepared) -> ! {
    let base = p.steps.len();
    let sock = p.sock;
    // SAFETY: raw syscalls on fds and buffers prepared before the clone.
    unsafe {
        // `parent_end` goes with the rest.
        close_inherited(p);
        default_handlers();
        sys!(libc::SYS_umask, 0);
        let mut trees = [-1 as RawFd; MAX_TREES];
        if let Err(e) = recv_fds(sock, &mut trees) {
            fail(sock, base, e);
        }
        // Raw syscalls also because glibc's set*id broadcast the change to every thread it
        // believes exists, i.e. the daemon's.
        if let Err(e) = ok(sys!(libc::SYS_setresgid, 0, 0, 0))
            .and_then(|()| ok(sys!(libc::SYS_setgroups, 0, 0)))
            .and_then(|()| ok(sys!(libc::SYS_setresuid, 0, 0, 0)))
        {
            fail(sock, base + 1, e);
        }
        // The parent places the child in its cgroup while the mounts run; the cgroup namespace
        // (rooted at the cgroup the child is in) and everything after the steps wait for it.
        let mut placed = false;
        for (i, s) in p.steps.iter().enumerate() {
            if matches!(s, CStep::UnshareCgroup) && !placed {
                if let Err(e) = wait_placed(sock) {
                    fail(sock, base + 6, e);
                }
                placed = true;
            }
            if let Err(e) = step(p, s, &trees) {
                fail(sock, i, e);
            }
        }
        if !placed && let Err(e) = wait_placed(sock) {
            fail(sock, base + 6, e);
        }
        if let Err(e) = super::harden::limits_and_caps(&p.hardening) {
            fail(sock, base + 4, e);
        }
        for fd in trees.iter().filter(|fd| **fd >= 0) {
            sys!(libc::SYS_close, *fd);
        }
        let exe = match arrange_fds(p) {
            Ok(fd) => fd,
            Err(e) => fail(sock, base + 2, e),
        };
        sys!(libc::SYS_umask, 0o022);
        if let Some(prog) = &p.hardening.seccomp
            && let Err(e) = crate::seccomp::install(prog)
        {
            fail(sock, base + 5, e);
        }
        let none: u64 = 0;
        sys!(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            0,
            8
        );
        let rc = sys!(
            libc::SYS_execveat,
            exe,
            p.empty.as_ptr(),
            p.argv_ptrs.as_ptr(),
            p.env_ptrs.as_ptr(),
            AT_EMPTY_PATH
        );
        fail(sock, base + 3, check(rc).err().unwrap_or(libc::EIO))
    }
}
