//! Raw Linux syscalls through inline assembly, for code that must not touch the calling
//! thread's thread-local storage: the launch child shares the daemon's memory (`CLONE_VM`) and
//! still has the thread pointer of the thread that cloned it, so libc's wrappers (which write
//! `errno`, and some of which check the thread's cancellation state) would write into a thread
//! that is running at the same time.
//!
//! Every function returns the kernel's raw answer: a value `>= 0`, or `-errno`; [`check`] turns
//! that into a `Result`. Nothing here allocates, panics or reads memory on its own.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("prism-sys's raw syscalls (and the launch clone) are written for x86_64 only");

use std::arch::asm;

/// The kernel's answer as `Ok(value)` or `Err(errno)`.
#[inline(always)]
pub(crate) fn check(ret: isize) -> Result<usize, i32> {
    if (-4095..0).contains(&ret) {
        Err(-(ret as i32))
    } else {
        Ok(ret as usize)
    }
}

/// # Safety
/// As for the syscall `nr` with these arguments.
#[inline(always)]
#[allow(
    dead_code,
    reason = "the set is complete; not every arity has a caller"
)]
pub(crate) unsafe fn syscall0(nr: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 syscall instruction clobbers rcx and r11 only; the caller answers for
    // what the syscall itself does.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// # Safety
/// As for the syscall `nr` with these arguments.
#[inline(always)]
pub(crate) unsafe fn syscall1(nr: usize, a1: usize) -> isize {
    let ret: isize;
    // SAFETY: see `syscall0`.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a1,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// # Safety
/// As for the syscall `nr` with these arguments.
#[inline(always)]
pub(crate) unsafe fn syscall2(nr: usize, a1: usize, a2: usize) -> isize {
    let ret: isize;
    // SAFETY: see `syscall0`.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a1, in("rsi") a2,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// # Safety
/// As for the syscall `nr` with these arguments.
#[inline(always)]
pub(crate) unsafe fn syscall3(nr: usize, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    // SAFETY: see `syscall0`.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a1, in("rsi") a2,
            in("rdx") a3, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// # Safety
/// As for the syscall `nr` with these arguments.
#[inline(always)]
pub(crate) unsafe fn syscall4(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    // SAFETY: see `syscall0`.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a1, in("rsi") a2,
            in("rdx") a3, in("r10") a4, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// # Safety
/// As for the syscall `nr` with these arguments.
#[inline(always)]
pub(crate) unsafe fn syscall5(
    nr: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
) -> isize {
    let ret: isize;
    // SAFETY: see `syscall0`.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a1, in("rsi") a2,
            in("rdx") a3, in("r10") a4, in("r8") a5,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// # Safety
/// As for the syscall `nr` with these arguments.
#[inline(always)]
#[allow(
    dead_code,
    reason = "the set is complete; not every arity has a caller"
)]
pub(crate) unsafe fn syscall6(
    nr: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> isize {
    let ret: isize;
    // SAFETY: see `syscall0`.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a1, in("rsi") a2,
            in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// `sys!(SYS_x, a, b, ...)`: the raw syscall with each argument cast `as usize` (pointers and
/// negative ints such as `AT_FDCWD` included; the kernel reads the low bits it needs).
macro_rules! sys {
    ($nr:expr) => {
        $crate::raw::syscall0($nr as usize)
    };
    ($nr:expr, $a:expr) => {
        $crate::raw::syscall1($nr as usize, $a as usize)
    };
    ($nr:expr, $a:expr, $b:expr) => {
        $crate::raw::syscall2($nr as usize, $a as usize, $b as usize)
    };
    ($nr:expr, $a:expr, $b:expr, $c:expr) => {
        $crate::raw::syscall3($nr as usize, $a as usize, $b as usize, $c as usize)
    };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr) => {
        $crate::raw::syscall4(
            $nr as usize,
            $a as usize,
            $b as usize,
            $c as usize,
            $d as usize,
        )
    };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr) => {
        $crate::raw::syscall5(
            $nr as usize,
            $a as usize,
            $b as usize,
            $c as usize,
            $d as usize,
            $e as usize,
        )
    };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr, $f:expr) => {
        $crate::raw::syscall6(
            $nr as usize,
            $a as usize,
            $b as usize,
            $c as usize,
            $d as usize,
            $e as usize,
            $f as usize,
        )
    };
}
pub(crate) use sys;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_errors_come_back_raw() {
        // SAFETY: getpid has no arguments and no effects.
        let pid = unsafe { sys!(libc::SYS_getpid) };
        assert_eq!(pid, std::process::id() as isize);
        // SAFETY: close of an fd that cannot be open.
        let rc = unsafe { sys!(libc::SYS_close, -1i32) };
        assert_eq!(check(rc), Err(libc::EBADF));
        assert_eq!(check(5), Ok(5));
    }
}
