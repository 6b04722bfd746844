//! CPU priority (nice values) of threads and processes. On Linux the nice value belongs to a
//! thread and is inherited by the threads and processes it creates.

use std::io;

/// Whether this process may give a thread back a higher priority than it has (root, or
/// `CAP_SYS_NICE`; only root is checked): without it, lowering a priority is one way.
pub fn can_raise_priority() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Set the nice value of thread `tid` (0: the calling thread).
pub fn set_thread_nice(tid: i32, nice: i32) -> io::Result<()> {
    // SAFETY: plain syscall; `who` is a thread id (PRIO_PROCESS applies to one thread on
    // Linux). The `which` argument's type differs between libc targets, hence the cast.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, tid as libc::id_t, nice) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set the nice value of every thread of process `pid` (threads it starts later inherit the
/// value of their creator). A thread that exits meanwhile is skipped.
pub fn set_process_nice(pid: u32, nice: i32) -> io::Result<()> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        match set_thread_nice(tid, nice) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The nice value of thread `tid` (0: the calling thread), from `/proc`.
pub fn thread_nice(tid: i32) -> io::Result<i32> {
    let path = if tid == 0 {
        "/proc/thread-self/stat".to_string()
    } else {
        format!("/proc/self/task/{tid}/stat")
    };
    let stat = std::fs::read_to_string(path)?;
    // Field 19 is the nice value; fields after the command's closing ')' start at 3.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other("unreadable /proc stat"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_thread_lowers_its_priority_and_its_children_inherit_it() {
        let base = thread_nice(0).unwrap();
        let low = (base + 7).min(19);
        let got = std::thread::spawn(move || {
            set_thread_nice(0, low).unwrap();
            let own = thread_nice(0).unwrap();
            let child = std::thread::spawn(|| thread_nice(0).unwrap())
                .join()
                .unwrap();
            (own, child)
        })
        .join()
        .unwrap();
        assert_eq!(got, (low, low));
        // Other threads keep theirs.
        assert_eq!(thread_nice(0).unwrap(), base);
    }

    #[test]
    fn a_process_gets_a_nice_value_on_every_thread() {
        if !can_raise_priority() {
            eprintln!("SKIP a_process_gets_a_nice_value_on_every_thread: needs root");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        set_process_nice(pid, 5).unwrap();
        let read = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let rest = stat.rsplit_once(')').unwrap().1.to_string();
            rest.split_whitespace()
                .nth(16)
                .unwrap()
                .parse::<i32>()
                .unwrap()
        };
        assert_eq!(read(), 5);
        set_process_nice(pid, 0).unwrap();
        assert_eq!(read(), 0);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
