//! The launch clone: `clone3` with `CLONE_VM` from the calling thread, the child on a stack of
//! its own, so the daemon's page tables are neither copied nor write-protected (a fork-like
//! clone copies ~0.6 ms of page tables per 16 MiB of anonymous memory on this PVM host, and
//! then both sides fault on their next write to each page).
//!
//! The child runs at the same time as the calling thread, on the same memory and with the same
//! thread pointer, until its `execveat` (or its exit): see `child.rs` for what it may do. The
//! parent keeps everything the child reads (the `Prepared` launch, the stack) alive until it
//! knows the child left this memory: end-of-file or a report on the launch socket (the exec
//! switches to a new address space before it closes the close-on-exec fds, and an exit drops the
//! address space before the fds), or the child reaped after a kill.
//!
//! Around the clone: every signal blocked on the calling thread (the child starts with that
//! mask, resets every handler and unblocks right before the exec); the process's `dumpable`
//! flag restored afterwards (the child's `setresuid` changes the credentials of a task on the
//! daemon's memory, and the kernel then marks that memory not dumpable).

use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;

use super::prepare::Prepared;
use crate::raw::{check, sys};

/// Size of a child stack (lazily mapped; one guard page below it).
const STACK_SIZE: usize = 256 * 1024;
/// Top pages of a new stack mapped right away (a fault here costs 2.7 µs, a populate 1.9).
const POPULATED: usize = 4 * 4096;
/// Stacks kept for later launches (several launches may run at once on different threads).
const POOL: usize = 8;

/// An anonymous mapping for a child's stack, with a `PROT_NONE` guard page at its low end.
#[derive(Debug)]
pub(super) struct ChildStack {
    base: usize,
    len: usize,
}

static STACKS: Mutex<Vec<ChildStack>> = Mutex::new(Vec::new());

impl ChildStack {
    /// A stack from the pool, or a new one.
    pub(super) fn take() -> io::Result<Self> {
        let pooled = STACKS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(stack) => Ok(stack),
            None => Self::map(),
        }
    }

    /// Back to the pool. Only once the child that ran on it left this address space.
    pub(super) fn give_back(self) {
        let mut pool = STACKS.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL {
            pool.push(self);
        }
    }

    fn map() -> io::Result<Self> {
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
            return Err(io::Error::last_os_error());
        }
        let stack = Self {
            base: base as usize,
            len,
        };
        // SAFETY: the lowest page of our own mapping becomes the guard.
        if unsafe { libc::mprotect(base, page_size(), libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: prefaulting the top of our own mapping; a kernel without
        // MADV_POPULATE_WRITE (before 5.14) answers EINVAL and the child faults them instead.
        unsafe {
            libc::madvise(
                (stack.top() - POPULATED) as *mut libc::c_void,
                POPULATED,
                libc::MADV_POPULATE_WRITE,
            );
        }
        Ok(stack)
    }

    /// The (16-byte aligned) top of the stack.
    fn top(&self) -> usize {
        (self.base + self.len) & !15
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no child runs on it (see `give_back`, and every
        // stack is dropped only after its child left, or from the pool).
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

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

extern "C" fn child_entry(arg: usize) -> ! {
    // SAFETY: `arg` is the `Prepared` that `launch` keeps alive until this process has exec'd
    // or exited; this runs only in the freshly cloned child.
    unsafe { super::child::run(&*(arg as *const Prepared)) }
}

/// `clone3(flags | CLONE_VM | CLONE_PIDFD)` whose child runs `child::run(prepared)` on
/// `stack`. Returns the child's pid and stores its pidfd, or `-errno`.
///
/// # Safety
/// `prepared` and `stack` must stay alive and unchanged until the child has exec'd or exited
/// (see the module docs), and every signal must be blocked on the calling thread.
pub(super) unsafe fn clone_vm(
    flags: u64,
    stack: &ChildStack,
    prepared: &Prepared,
    pidfd: &mut RawFd,
) -> isize {
    // SAFETY: as the caller promised, for `child::run` on `prepared`.
    unsafe {
        clone_vm_into(
            flags,
            stack,
            prepared as *const Prepared as usize,
            child_entry,
            pidfd,
        )
    }
}

/// `clone3(flags | CLONE_VM | CLONE_PIDFD)` whose child calls `entry(arg)` on `stack`.
///
/// # Safety
/// What `entry` reads through `arg`, and `stack`, must stay alive and unchanged until the
/// child has exec'd or exited; `entry` must follow `child.rs`'s rules (raw syscalls only) and
/// never return; every signal must be blocked on the calling thread.
pub(super) unsafe fn clone_vm_into(
    flags: u64,
    stack: &ChildStack,
    arg: usize,
    entry: extern "C" fn(usize) -> !,
    pidfd: &mut RawFd,
) -> isize {
    let args = CloneArgs {
        flags: flags | (libc::CLONE_VM | libc::CLONE_PIDFD) as u64,
        pidfd: pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: (stack.top() - stack.base) as u64,
        ..CloneArgs::default()
    };
    let ret: isize;
    // SAFETY: the raw clone3 syscall. In the parent it returns the pid (or -errno) in rax and
    // clobbers rcx/r11 as every syscall does. In the child (rax 0) rsp is the top of the new
    // stack (16-byte aligned) and r12/r13 are copies of ours: it clears the frame pointer and
    // calls `entry(arg)`, which never returns (`ud2` guards that); it never touches
    // the parent's stack.
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
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") &args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry as usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The calling thread's signal mask while every signal is blocked; restored on drop.
pub(super) struct SignalsBlocked {
    old: u64,
}

impl SignalsBlocked {
    /// Block every signal on the calling thread (raw `rt_sigprocmask`: libc's
    /// `pthread_sigmask` leaves its two internal signals unblocked).
    pub(super) fn new() -> io::Result<Self> {
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: rt_sigprocmask on local 8-byte sets.
        let rc = unsafe {
            sys!(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all as *const u64,
                &mut old as *mut u64,
                8
            )
        };
        check(rc).map_err(io::Error::from_raw_os_error)?;
        Ok(Self { old })
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: rt_sigprocmask on a local 8-byte set.
        unsafe {
            sys!(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &self.old as *const u64,
                0,
                8
            );
        }
    }
}

/// Launches between their clone and the moment their child left this address space, and the
/// `dumpable` value read when none was.
static IN_FLIGHT: Mutex<(usize, i32)> = Mutex::new((0, 1));

/// A launch in flight; dropping it (once its child exec'd or died) puts back the `dumpable`
/// flag the process had before the first of the launches that overlap it.
pub(super) struct DumpableGuard(());

impl DumpableGuard {
    pub(super) fn new() -> Self {
        let mut state = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 {
            // SAFETY: prctl with integer arguments only.
            state.1 = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        }
        state.0 += 1;
        DumpableGuard(())
    }
}

impl Drop for DumpableGuard {
    fn drop(&mut self) {
        let mut state = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = state.0.saturating_sub(1);
        if state.1 == 0 || state.1 == 1 {
            // SAFETY: prctl with integer arguments only.
            unsafe {
                libc::prctl(libc::PR_SET_DUMPABLE, state.1 as libc::c_ulong, 0, 0, 0);
            }
        }
    }
}
