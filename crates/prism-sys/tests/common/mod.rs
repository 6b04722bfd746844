//! Shared by the launch tests: a minimal launch of `/bin/true` in fresh namespaces.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, MutexGuard};

use prism_sys::ids::IdMap;
use prism_sys::launch::{Hardening, LaunchConfig, launch};

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

macro_rules! require_root {
    () => {
        if !common::is_root() {
            // Straight to the stderr handle: libtest's capture would hide an eprintln!.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!(
                    "SKIP: launch integration test at line {} NOT run: needs root\n",
                    line!()
                )
                .as_bytes(),
            );
            return;
        }
    };
}
pub(crate) use require_root;

/// The tests of one binary one at a time (they count fds and check process-wide flags).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn dev_null() -> OwnedFd {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("/dev/null")
        .into()
}

/// `/bin/true` in new namespaces, its root mapped to a high host range, no steps.
pub fn config() -> LaunchConfig {
    LaunchConfig {
        ids: IdMap {
            base: 3_900_000_000,
            count: 65536,
        },
        trees: Vec::new(),
        device_tree: None,
        steps: Vec::new(),
        exe: "/bin/true".into(),
        argv: vec!["true".into()],
        env: Vec::new(),
        fd3: dev_null(),
        stderr: dev_null(),
        hardening: Hardening::default(),
        netns: None,
        mounts: Vec::new(),
    }
}

/// Launch `/bin/true` and reap it; it must exit 0.
pub fn run_true() {
    let cfg = config();
    let launched = launch(&cfg, &mut |_| Ok(())).expect("launch");
    let status = prism_sys::proc::pidfd_wait(&launched.pidfd).expect("wait");
    assert!(
        matches!(status, prism_sys::proc::ExitStatus::Exited(0)),
        "{status:?}"
    );
    let _ = std::io::stderr().flush();
}
