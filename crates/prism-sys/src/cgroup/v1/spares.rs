//! v1 cgroup directories made ahead. Making a sandbox's v1 directories (`cpu`, `memory`, `pids`)
//! costs ~0.25 ms of `mkdir` on this host (`memory` alone ~0.14: a memcg's per-CPU state), a
//! rename ~0.02 per directory; so a background thread at a low priority keeps a few sets ready
//! under neutral names (`_spare-<pid>-<n>`, which no sandbox id has: see `V1Manager::create`)
//! and a create renames one set to the sandbox's id. The cgroup2 directory of a hybrid host is
//! still made at create (cgroup2 refuses renames with `EPERM`).
//!
//! A spare is used once: sandboxes never get a directory another sandbox used, so their
//! counters (OOM kills, CPU time, the memory high-water mark) start at zero. Spares of a
//! process that is gone (a daemon that was killed) are removed when the next pool starts, and
//! the pool removes its own when it is dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::V1Manager;
use crate::cgroup::SharedIo;

/// Names of spare sets start with this.
pub(super) const PREFIX: &str = "_spare-";

/// Nice value of the refill thread.
const REFILL_NICE: i32 = 10;

/// How long the refill thread rests after a failure before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Numbers spare names across every pool of this process (two managers may share a parent).
static NEXT: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct State {
    ready: Vec<String>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a set is taken and when the pool stops.
    wake: Condvar,
    io: SharedIo,
    /// `<mount>/<parent>` of every v1 hierarchy a sandbox gets a directory in.
    parents: Vec<PathBuf>,
    want: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the set `name` in every hierarchy; on failure remove what was made.
    fn make(&self, name: &str) -> std::io::Result<()> {
        for (i, parent) in self.parents.iter().enumerate() {
            if let Err(error) = self.io.create_dir(&parent.join(name)) {
                for made in &self.parents[..i] {
                    let _ = self.io.remove_dir(&made.join(name));
                }
                return Err(error);
            }
        }
        Ok(())
    }

    fn remove(&self, name: &str) {
        for parent in &self.parents {
            let _ = self.io.remove_dir(&parent.join(name));
        }
    }
}

/// A pool of spare v1 directory sets, refilled in the background. Dropping it stops the thread
/// and removes the sets nobody took.
pub(super) struct Spares {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spares")
            .field("ready", &self.shared.lock().ready.len())
            .field("want", &self.shared.want)
            .finish()
    }
}

impl Spares {
    /// Keep `want` sets ready under `parents` (each `<mount>/<parent>`, which must exist), after
    /// removing the sets of processes that are gone.
    pub(super) fn start(io: SharedIo, parents: Vec<PathBuf>, want: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            io,
            parents,
            want,
        });
        remove_stale(&shared);
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("prism-cgroup-spares".into())
                .spawn(move || refill(&shared))?
        };
        Ok(Self {
            shared,
            worker: Some(worker),
        })
    }

    /// A ready set's name, if there is one (never waits). The caller renames it (in every
    /// hierarchy) or removes it, and calls [`Spares::refill`] once its start is past its own
    /// cgroup work.
    pub(super) fn take(&self) -> Option<String> {
        self.shared.lock().ready.pop()
    }

    /// Let the refill thread make up for the sets taken. Not at once in `take`: its `mkdir`s
    /// take the kernel's `cgroup_mutex`, and the start that took a set still renames it and
    /// joins its cgroups (measured: a rename waiting behind a refill's `mkdir` took 5x longer).
    pub(super) fn refill(&self) {
        self.shared.wake.notify_all();
    }

    /// How many sets are ready.
    pub(super) fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let left = std::mem::take(&mut self.shared.lock().ready);
        for name in left {
            self.shared.remove(&name);
        }
    }
}

fn refill(shared: &Shared) {
    if let Err(error) = crate::sched::set_thread_nice(0, REFILL_NICE) {
        tracing::debug!(%error, "cannot lower the cgroup refill thread's priority");
    }
    let pid = std::process::id();
    loop {
        let name = {
            let mut state = shared.lock();
            while !state.stop && state.ready.len() >= shared.want {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.stop {
                return;
            }
            format!("{PREFIX}{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
        };
        match shared.make(&name) {
            Ok(()) => {
                let mut state = shared.lock();
                if state.stop {
                    drop(state);
                    shared.remove(&name);
                    return;
                }
                state.ready.push(name);
            }
            Err(error) => {
                tracing::debug!(%error, "cannot make a spare cgroup");
                let state = shared.lock();
                drop(
                    shared
                        .wake
                        .wait_timeout_while(state, RETRY_AFTER, |s| !s.stop)
                        .unwrap_or_else(|p| p.into_inner()),
                );
            }
        }
    }
}

/// The pid a spare's name carries, if it is a spare's name.
pub(super) fn owner(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Remove the spare sets of processes that no longer exist.
fn remove_stale(shared: &Shared) {
    let Some(first) = shared.parents.first() else {
        return;
    };
    let Ok(names) = shared.io.list_dirs(first) else {
        return;
    };
    for name in names {
        if let Some(pid) = owner(&name)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            shared.remove(&name);
        }
    }
}

impl V1Manager {
    /// Give `id` (which has no directory yet) a spare set, renamed in every one of `mounts`.
    /// `false` (and nothing changed for `id`) when there is none or a rename failed.
    pub(super) fn rename_spare(&self, id: &str, mounts: &[&Path]) -> bool {
        if id.starts_with(PREFIX) || self.io.exists(&self.dir(&self.hierarchies.memory, id)) {
            return false;
        }
        let Some(name) = self.lock_spares().as_ref().and_then(|s| s.take()) else {
            return false;
        };
        for (i, mount) in mounts.iter().enumerate() {
            if let Err(error) = self
                .io
                .rename(&self.dir(mount, &name), &self.dir(mount, id))
            {
                tracing::debug!(cgroup = id, %error, "cannot rename a spare cgroup");
                for done in &mounts[..i] {
                    let _ = self.io.rename(&self.dir(done, id), &self.dir(done, &name));
                }
                for mount in mounts {
                    let _ = self.io.remove_dir(&self.dir(mount, &name));
                }
                return false;
            }
        }
        true
    }

    /// The start that took a spare set is past its cgroup work (see `Spares::refill`).
    pub(super) fn refill_spares(&self) {
        if let Some(spares) = self.lock_spares().as_ref() {
            spares.refill();
        }
    }

    /// How many spare sets are ready (for tests).
    pub fn spares_ready(&self) -> usize {
        self.lock_spares().as_ref().map_or(0, Spares::ready)
    }
}
