//! The first exec's timeline: `CLOCK_MONOTONIC` stamps of the agent's start-up and of the first
//! process it runs, for measuring where a fresh sandbox's first exec goes (issue 2).
//!
//! Every mark keeps its first occurrence only, so the stamps describe the agent's start and
//! its first request. Taking one is a vDSO clock read (no syscall), cheap enough to do always.
//! They are written to the agent's stderr (the sandbox's `agent.log`) only when a
//! `Process.Start` request carries the [`HEADER`] (`prism-bench` sends it with
//! `PRISM_BENCH_TIMELINE=1`): one line, just before that process's end event is sent, so a
//! client that has seen the end finds the line in the log. `CLOCK_MONOTONIC` is the same
//! clock inside and outside the sandbox, so the stamps line up with the client's. A second
//! line tells how much of the start-up arena (`prism_sys::alloc`) was used by then.

use std::sync::atomic::{AtomicU64, Ordering};

/// The request header that asks for the timeline line (value `1`).
pub const HEADER: &str = "prism-timeline";

/// The points of the timeline, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `main` was entered.
    Main,
    /// The async runtime is built.
    Runtime,
    /// The accept loop is about to wait for the first connection.
    Serving,
    /// A connection was accepted.
    Accepted,
    /// A `Process.Start` request was read and parsed.
    Parsed,
    /// The process was spawned.
    Spawned,
    /// The reaper saw the process's exit status.
    ExitSeen,
    /// Its end event was handed to the connection.
    EndSent,
}

const MARKS: [Mark; 8] = [
    Mark::Main,
    Mark::Runtime,
    Mark::Serving,
    Mark::Accepted,
    Mark::Parsed,
    Mark::Spawned,
    Mark::ExitSeen,
    Mark::EndSent,
];

impl Mark {
    fn name(self) -> &'static str {
        match self {
            Mark::Main => "main",
            Mark::Runtime => "runtime",
            Mark::Serving => "serving",
            Mark::Accepted => "accepted",
            Mark::Parsed => "parsed",
            Mark::Spawned => "spawned",
            Mark::ExitSeen => "exit_seen",
            Mark::EndSent => "end_sent",
        }
    }
}

static STAMPS: [AtomicU64; MARKS.len()] = [const { AtomicU64::new(0) }; MARKS.len()];

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or_default()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or_default())
}

/// Records `mark` now, unless it was recorded before.
pub fn mark(mark: Mark) {
    let slot = &STAMPS[mark as usize];
    if slot.load(Ordering::Relaxed) == 0 {
        let _ = slot.compare_exchange(0, now_ns(), Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The line written to stderr: `prism-agent timeline: main=NS runtime=NS …` (0: not reached).
pub fn line() -> String {
    let mut out = String::from("prism-agent timeline:");
    for m in MARKS {
        out.push_str(&format!(
            " {}={}",
            m.name(),
            STAMPS[m as usize].load(Ordering::Relaxed)
        ));
    }
    out.push('\n');
    out
}

/// Writes [`line`] to stderr, and a second line with the bytes of the start-up arena used so
/// far (`prism-agent arena: used=N of M`, see `prism_sys::alloc`).
pub fn write() {
    use std::io::Write as _;
    let arena = format!(
        "prism-agent arena: used={} of {}\n",
        crate::ALLOC.used(),
        crate::ARENA_BYTES
    );
    // Best effort: a debugging aid with nowhere else to go.
    let _ = std::io::stderr()
        .lock()
        .write_all((line() + &arena).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_their_first_time_and_print_in_order() {
        mark(Mark::Accepted);
        let first = STAMPS[Mark::Accepted as usize].load(Ordering::Relaxed);
        assert_ne!(first, 0);
        mark(Mark::Accepted);
        assert_eq!(
            STAMPS[Mark::Accepted as usize].load(Ordering::Relaxed),
            first
        );
        let l = line();
        assert!(l.starts_with("prism-agent timeline: main="), "{l}");
        assert!(l.contains(&format!(" accepted={first} ")), "{l}");
        let names: Vec<&str> = l
            .trim_end()
            .split(' ')
            .skip(2)
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .collect();
        assert_eq!(names, MARKS.map(Mark::name).to_vec());
    }
}
