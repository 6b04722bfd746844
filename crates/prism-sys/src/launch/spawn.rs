//! The clone of a sandbox's first process, posix_spawn-style: `CLONE_VM | CLONE_VFORK` on a
//! stack of its own, so the daemon's page tables are not copied (a fork-like clone copied them:
//! 1.2 ms for a 20 MiB process and 41 ms for a 200 MiB one on this PVM host, against ~15 µs
//! with `CLONE_VM`).
//!
//! The child shares the daemon's memory until its `execveat`, so it writes nothing but its own
//! stack (the child code already made only raw syscalls on memory prepared before the clone).
//! `CLONE_VFORK` suspends the cloning thread until that exec: the child runs on that thread's
//! thread-local storage (`errno`) while the thread is idle, and nothing else uses it meanwhile.
//! The cloning thread is a short-lived helper with every signal blocked (the child starts with
//! that mask and unblocks only after resetting every handler), so the calling thread stays free
//! to write the id maps, place the child in its cgroup and hand it its mounts while the child
//! waits for them.
//!
//! How the calling thread learns about the child: the kernel stores its pid and pidfd (through
//! `CLONE_PARENT_SETTID` / `CLONE_PIDFD`) before the child first runs, and the child's first act
//! is a one-byte hello on the launch socket. The helper holds the only parent-side copy of the
//! child's socket end and drops it once the clone returns, so the calling thread's reads end
//! (end-of-file) once the child has exec'd or died; a failed clone is reported on that socket
//! as a 4-byte errno.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::{Scope, ScopedJoinHandle};

use super::prepare::Prepared;

/// Size of the child's stack (mapped lazily; one guard page below it).
const STACK_SIZE: usize = 256 * 1024;

/// Message sizes on the launch socket, child side to parent side.
pub(super) const HELLO: usize = 1;
pub(super) const CLONE_FAILED: usize = 4;

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

/// An anonymous mapping for the child's stack, with a guard page at its low end.
pub(super) struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is only handed to the kernel (as the child's stack) and unmapped on drop;
// no Rust reference into it exists.
unsafe impl Send for ChildStack {}
// SAFETY: as above; `&ChildStack` only reads the address and length.
unsafe impl Sync for ChildStack {}

impl ChildStack {
    pub(super) fn new() -> std::io::Result<Self> {
        let len = STACK_SIZE + page_size();
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the first page of our own mapping becomes inaccessible (the guard).
        if unsafe { libc::mprotect(base, page_size(), libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The (16-byte aligned) top of the stack.
    fn top(&self) -> u64 {
        (self.base as u64 + self.len as u64) & !15
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; the child that used it has exec'd or exited
        // (the helper thread that cloned it was joined before this drop).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

/// What the child's entry point gets (lives on the helper thread's stack, which stays put
/// while the child runs: the helper is suspended by `CLONE_VFORK`).
struct ChildArgs<'a> {
    prepared: &'a Prepared,
    sock: RawFd,
    parent_end: RawFd,
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the `ChildArgs` the helper passed, alive until this process execs or
    // exits; this runs only in the freshly cloned child (see `super::child::run`).
    unsafe {
        let args = &*(arg as *const ChildArgs<'_>);
        super::child::run(args.prepared, args.sock, args.parent_end)
    }
}

/// Where the kernel reports the child: pid and pidfd, -1 until the clone stored them.
pub(super) struct Spawned {
    pub(super) pid: AtomicI32,
    pub(super) pidfd: AtomicI32,
}

impl Spawned {
    pub(super) fn new() -> Self {
        Self {
            pid: AtomicI32::new(-1),
            pidfd: AtomicI32::new(-1),
        }
    }

    /// The child's pidfd, once (the caller owns it from then on).
    pub(super) fn take_pidfd(&self) -> Option<OwnedFd> {
        let fd = self.pidfd.swap(-1, Ordering::SeqCst);
        // SAFETY: the kernel stored a new pidfd here that nothing else owns; swapping -1 in
        // makes this the only owner.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Start the helper thread that clones the child (`flags`: the namespaces; `CLONE_VM`,
/// `CLONE_VFORK`, `CLONE_PIDFD` and `CLONE_PARENT_SETTID` are added). `child_sock` moves to
/// the helper. The handle yields the clone's raw result (pid or -errno).
pub(super) fn start<'scope>(
    scope: &'scope Scope<'scope, '_>,
    prepared: &'scope Prepared,
    stack: &'scope ChildStack,
    spawned: &'scope Spawned,
    flags: u64,
    child_sock: OwnedFd,
    parent_end: RawFd,
) -> std::io::Result<ScopedJoinHandle<'scope, i64>> {
    std::thread::Builder::new()
        .name("prism-launch".into())
        .stack_size(64 * 1024)
        .spawn_scoped(scope, move || {
            let args = ChildArgs {
                prepared,
                sock: child_sock.as_raw_fd(),
                parent_end,
            };
            // SAFETY: blocking every signal of this helper thread only; the child inherits the
            // mask and resets the handlers before unblocking.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            }
            let mut clone_args = CloneArgs {
                flags: flags
                    | (libc::CLONE_VM
                        | libc::CLONE_VFORK
                        | libc::CLONE_PIDFD
                        | libc::CLONE_PARENT_SETTID) as u64,
                pidfd: spawned.pidfd.as_ptr() as u64,
                parent_tid: spawned.pid.as_ptr() as u64,
                exit_signal: libc::SIGCHLD as u64,
                stack: stack.base as u64,
                stack_size: stack.top() - stack.base as u64,
                ..CloneArgs::default()
            };
            // SAFETY: the child runs `child_entry` on `stack` with `args`, both alive until it
            // execs or exits (this thread is suspended until then); see the module docs.
            let rc = unsafe {
                clone_on_stack(
                    &mut clone_args,
                    child_entry,
                    &args as *const ChildArgs<'_> as *mut libc::c_void,
                )
            };
            if rc < 0 {
                let errno = (-rc) as i32;
                // SAFETY: writing a local buffer to our end of the launch socket.
                unsafe {
                    libc::write(
                        child_sock.as_raw_fd(),
                        errno.to_ne_bytes().as_ptr().cast(),
                        CLONE_FAILED,
                    );
                }
            }
            drop(child_sock);
            rc
        })
}

/// `clone3` whose child calls `entry(arg)` on the stack given in `args` and never returns.
/// Returns the pid in the parent, or -errno.
///
/// # Safety
/// `args` must describe a valid stack; `entry` must never return; see the module docs.
#[cfg(target_arch = "x86_64")]
unsafe fn clone_on_stack(
    args: &mut CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the raw clone3 syscall. In the parent it returns the pid (or -errno) in rax and
    // clobbers rcx/r11 as every syscall does. In the child (rax 0) rsp is the top of the new
    // stack (16-byte aligned), r12/r13 are copies of ours: it clears the frame pointer and
    // calls `entry(arg)`, which never returns (`ud2` guards that).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Other architectures: a fork-like clone3 (no `CLONE_VM`), the child calls `entry` directly.
///
/// # Safety
/// As for the x86_64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone_on_stack(
    args: &mut CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> i64 {
    args.flags &= !((libc::CLONE_VM | libc::CLONE_VFORK) as u64);
    args.stack = 0;
    args.stack_size = 0;
    // SAFETY: a fork-like clone3; the child only runs `entry`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc == 0 {
        entry(arg)
    }
    if rc < 0 {
        -(super::child::errno() as i64)
    } else {
        rc
    }
}

/// Whether this process was dumpable before its first launch.
static DUMPABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Record whether the daemon is dumpable (call before the first clone).
pub(super) fn note_dumpable() {
    DUMPABLE.get_or_init(|| {
        // SAFETY: prctl without pointers.
        unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
    });
}

/// The child's `setresuid` to the sandbox's root changed the credentials of a task sharing
/// the daemon's memory, and the kernel then marks that memory (the daemon's) not dumpable: put
/// it back as it was before the first launch.
pub(super) fn restore_dumpable() {
    if DUMPABLE.get() == Some(&true) {
        // SAFETY: prctl without pointers.
        unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        }
    }
}
