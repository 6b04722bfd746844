//! prism-sys: every syscall and every `unsafe` block of Prism lives here, behind small safe
//! functions and traits that the rest of the workspace calls (and fakes in unit tests).
#![allow(unsafe_code)]

pub mod alloc;
pub mod caps;
pub mod cgroup;
pub mod exec;
pub mod fdpass;
pub mod fs;
pub mod ids;
pub mod launch;
pub mod loopdev;
pub mod mount;
pub mod netns;
pub mod proc;
pub(crate) mod raw;
pub mod sched;
pub mod seccomp;

/// For unit tests that need root: `true` (after a loud SKIP line naming `test`) when not root.
#[cfg(test)]
pub(crate) fn not_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP: {test}: NOT run: needs root");
    }
    !root
}
