//! The child reaper. On every SIGCHLD it calls `wait(WNOHANG)` (= `waitpid(-1)`) until nothing is left,
//! hands the statuses of our own processes to whoever registered them, and drops the rest
//! (orphans re-parented to us when we are PID 1).
//!
//! All spawning and all reaping happen on the runtime's single thread, and a spawned pid is
//! registered before the spawning code yields, so no exit can be reaped before its waiter
//! exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustix::process::WaitOptions;
use tokio::signal::unix::Signal;
use tokio::sync::oneshot;

/// Routes exit statuses to the tasks waiting for them.
#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<i32>>>,
}

impl Reaper {
    /// Registers interest in `pid`'s exit status.
    pub fn register(&self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(pid, tx);
        }
        rx
    }

    /// Reaps every child that has exited.
    pub fn reap_all(&self) {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let raw = pid.as_raw_nonzero().get();
                    let waiter = self.waiters.lock().ok().and_then(|mut w| w.remove(&raw));
                    match waiter {
                        Some(tx) => {
                            crate::timeline::mark(crate::timeline::Mark::ExitSeen);
                            let _ = tx.send(status.as_raw());
                        }
                        None => tracing::debug!(pid = raw, "reaped an orphan"),
                    }
                }
                Ok(None) => return,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::CHILD) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            }
        }
    }
}

/// Runs the reaper until the runtime stops.
pub async fn run(reaper: Arc<Reaper>, mut sigchld: Signal) {
    loop {
        reaper.reap_all();
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

/// Go's names of Linux signals, as `os.ProcessState.String()` prints them.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        16 => "stack fault",
        17 => "child exited",
        18 => "continued",
        19 => "stopped (signal)",
        20 => "stopped",
        21 => "stopped (tty input)",
        22 => "stopped (tty output)",
        23 => "urgent I/O condition",
        24 => "CPU time limit exceeded",
        25 => "file size limit exceeded",
        26 => "virtual timer expired",
        27 => "profiling timer expired",
        28 => "window changed",
        29 => "I/O possible",
        30 => "power failure",
        31 => "bad system call",
        n => return format!("signal {n}"),
    };
    name.to_string()
}

/// The end event for a raw wait status, as envd reports it (Go's `os.ProcessState`).
pub fn end_event(status: Option<i32>) -> prism_proto::process::EndEvent {
    use prism_proto::process::EndEvent;
    let Some(status) = status else {
        return EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: Some("exit status lost".into()),
        };
    };
    if status & 0x7f == 0 {
        let code = (status >> 8) & 0xff;
        let text = format!("exit status {code}");
        EndEvent {
            exit_code: code,
            exited: true,
            error: (code != 0).then(|| text.clone()),
            status: text,
        }
    } else {
        let sig = status & 0x7f;
        let core = if status & 0x80 != 0 {
            " (core dumped)"
        } else {
            ""
        };
        let text = format!("signal: {}{core}", signal_name(sig));
        EndEvent {
            exit_code: -1,
            exited: false,
            error: Some(text.clone()),
            status: text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_mirror_go() {
        let e = end_event(Some(1 << 8));
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (1, true, "exit status 1")
        );
        assert_eq!(e.error.as_deref(), Some("exit status 1"));
        let e = end_event(Some(0));
        assert_eq!((e.exit_code, e.error), (0, None));
        let e = end_event(Some(9));
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (-1, false, "signal: killed")
        );
        let e = end_event(Some(11 | 0x80));
        assert_eq!(e.status, "signal: segmentation fault (core dumped)");
    }
}
