//! The adversarial suite: hostile programs run inside real sandboxes (as the sandbox's root,
//! the default user of an exec). Each test says what it attacks, asserts the concrete failure
//! (errno, kill reason) and checks the host's state afterwards. Results: docs/security.md.
//!
//! Payloads are python3 (ctypes reaches raw syscalls) and busybox/coreutils from the base
//! template, so the suite needs no compiler.

#[path = "../support/mod.rs"]
mod support;

mod flush;
mod kernel;
mod resources;
mod rootfs;

use prism_core::Limits;
use support::{Harness, Output};

/// Cases run one at a time: the CPU-hog case measures latency, and the others' fork, memory
/// and output bombs would be its noise.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run a python3 program inside the sandbox.
pub fn py(h: &Harness, client: &prism_proto::AgentClient, src: &str) -> Output {
    h.run(client, &["/usr/bin/python3", "-c", src])
}

/// `key=value` lines of a payload's stdout.
pub fn field<'a>(out: &'a Output, key: &str) -> Option<&'a str> {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

pub fn small() -> Limits {
    Limits {
        cpus: Some(1.0),
        memory_bytes: Some(256 << 20),
        pids: Some(256),
        disk_bytes: None,
    }
}

/// Host pids whose uid lies in the sandbox's id range.
pub fn host_pids_of(uid_base: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if let Some(uid) = uid
            && (uid_base..uid_base + 65536).contains(&uid)
        {
            pids.push(pid);
        }
    }
    pids
}
