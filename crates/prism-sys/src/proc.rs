//! Process handles: pidfds, signals, exit status, identity of a pid across restarts.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The signal that cannot be caught.
pub const SIGKILL: i32 = libc::SIGKILL;
/// "No such process".
pub const ESRCH: i32 = libc::ESRCH;

/// `pidfd_open(pid)`.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Send `sig` through a pidfd (no pid-reuse race). ESRCH (already gone) is success.
pub fn pidfd_kill(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

fn waitid_pidfd(pidfd: &OwnedFd, flags: i32) -> io::Result<Option<ExitStatus>> {
    // SAFETY: zeroed siginfo is valid; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: P_PIDFD waitid on a valid pidfd with a valid siginfo pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | flags,
            )
        };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    // SAFETY: after a successful waitid, si_pid/si_status are valid to read.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if info.si_code == libc::CLD_EXITED {
        ExitStatus::Exited(status)
    } else {
        ExitStatus::Signaled(status)
    }))
}

/// Block until our child behind `pidfd` exits; reap it.
pub fn pidfd_wait(pidfd: &OwnedFd) -> io::Result<ExitStatus> {
    waitid_pidfd(pidfd, 0)?.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
}

/// Reap our child behind `pidfd` if it has exited. `ECHILD` (not our child) gives `Ok(None)`.
pub fn pidfd_try_wait(pidfd: &OwnedFd) -> io::Result<Option<ExitStatus>> {
    match waitid_pidfd(pidfd, libc::WNOHANG) {
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(None),
        other => other,
    }
}

/// Wait until the process behind `pidfd` has exited (the pidfd becomes readable), without reaping
/// it. Returns whether it exited within `timeout`.
pub fn pidfd_wait_exit(pidfd: &OwnedFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: poll on one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Whether the calling process is dumpable (`PR_GET_DUMPABLE` is 1).
pub fn dumpable() -> bool {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

/// Make the calling process non-dumpable: processes without `CAP_SYS_PTRACE` can no longer
/// ptrace it or read its memory, fds or `/proc/PID/root` (the agent calls this at start).
pub fn set_undumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mark every open fd from `first` up close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`), so
/// no fd the process inherited leaks into what it spawns later (the agent calls this at start;
/// every fd Rust opens afterwards is close-on-exec already).
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with integer arguments only; it changes fd flags, not memory.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Field 22 (`starttime`, clock ticks since boot) of `/proc/PID/stat`.
pub fn start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| io::Error::other("unparsable /proc/PID/stat"))
}

/// Storage I/O of a process (`/proc/PID/io`): bytes it caused to be read from and written to
/// the storage layer, its own plus those of the children it has reaped (the kernel folds a
/// reaped child's counters into its parent's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// `/proc/PID/io` of `pid` (root reads it for any process).
pub fn io_counters(pid: u32) -> io::Result<IoCounters> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    Ok(parse_io(&text))
}

fn parse_io(text: &str) -> IoCounters {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    IoCounters {
        read_bytes: field("read_bytes"),
        write_bytes: field("write_bytes"),
    }
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let line = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(line), Some(98765));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn io_counters_parse_and_ours_are_readable() {
        let text = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\n\
                    write_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(
            parse_io(text),
            IoCounters {
                read_bytes: 4096,
                write_bytes: 8192
            }
        );
        assert_eq!(parse_io(""), IoCounters::default());
        assert!(io_counters(std::process::id()).is_ok());
    }

    #[test]
    fn our_own_start_time_is_stable() {
        let pid = std::process::id();
        assert_eq!(start_time(pid).ok(), start_time(pid).ok());
        assert!(start_time(pid).is_ok());
    }
}
