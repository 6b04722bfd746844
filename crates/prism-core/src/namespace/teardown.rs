//! Destroy in two halves. The caller's half is short: the sandbox's init gets `SIGKILL` (the
//! kernel then kills everything in its pid namespace) and the sandbox is marked as being torn
//! down. The other half runs on one background thread: wait for the init to be reaped (the
//! kernel tears the pid and mount namespaces down meanwhile), remove the cgroup, unmount the disk
//! image, move the directory into the trash and only then release the uid range.
//!
//! Until that second half is done the sandbox's id stays reserved: a start with the same id
//! waits for it ([`Teardowns::wait_for`]), a second destroy is a no-op, and
//! [`crate::Runtime::leftovers`] does not report it (it is not an orphan, its cleanup is under
//! way). If the daemon dies before a teardown finished, what is left is an ordinary leftover
//! (an id with a cgroup or a directory and no live record) that the janitor destroys after the
//! restart.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Host, error_chain};
use crate::runtime::RuntimeError;

/// One sandbox to finish tearing down.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) id: String,
    /// The init's pidfd when it is our child (it was killed already; it is reaped here).
    pub(super) pidfd: Option<OwnedFd>,
}

/// Ids whose teardown has not finished, and a condition signalled whenever one finishes.
#[derive(Debug, Default)]
struct Pending {
    ids: Mutex<HashSet<String>>,
    changed: Condvar,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn done(&self, id: &str) {
        self.lock().remove(id);
        self.changed.notify_all();
    }

    /// Wait until `gone(ids)` holds or `timeout` passes; returns whether it held.
    fn wait(&self, timeout: Duration, gone: impl Fn(&HashSet<String>) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ids = self.lock();
        while !gone(&ids) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            ids = match self.changed.wait_timeout(ids, deadline - now) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// The background half of destroy.
#[derive(Debug)]
pub(super) struct Teardowns {
    pending: Arc<Pending>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Teardowns {
    pub(super) fn new(host: Arc<Host>) -> io::Result<Self> {
        let pending = Arc::new(Pending::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let done = pending.clone();
        let worker = std::thread::Builder::new()
            .name("prism-teardown".into())
            .spawn(move || {
                for job in rx {
                    finish(&host, job, &done);
                }
            })?;
        Ok(Self {
            pending,
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Mark `id` as being torn down; false if it already is (its teardown is under way, and a
    /// second one must not start: it could outlive the first and hit a new sandbox of that id).
    pub(super) fn reserve(&self, id: &str) -> bool {
        self.pending.lock().insert(id.to_string())
    }

    /// Hand the job of a [`Self::reserve`]d id to the worker (or finish it here if the worker
    /// is gone).
    pub(super) fn submit(&self, host: &Host, job: Job) -> Result<(), RuntimeError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let job = match tx.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        drop(tx);
        let id = job.id.clone();
        let result = host.finish_destroy(&id, job.pidfd);
        self.pending.done(&id);
        result
    }

    /// Ids whose teardown is under way.
    pub(super) fn pending(&self) -> HashSet<String> {
        self.pending.lock().clone()
    }

    /// Wait until `id` is not being torn down; false after `timeout`.
    pub(super) fn wait_for(&self, id: &str, timeout: Duration) -> bool {
        self.pending.wait(timeout, |ids| !ids.contains(id))
    }

    /// Wait until no teardown is under way; false after `timeout`.
    pub(super) fn wait_all(&self, timeout: Duration) -> bool {
        self.pending.wait(timeout, HashSet::is_empty)
    }
}

fn finish(host: &Host, job: Job, pending: &Pending) {
    let id = job.id.clone();
    if let Err(error) = host.finish_destroy(&id, job.pidfd) {
        tracing::warn!(message = "sandbox teardown failed (the janitor retries it)", sandbox_id = %id, error = %error_chain(&error));
    }
    pending.done(&id);
}

impl Drop for Teardowns {
    /// Finish what is queued before the runtime goes away.
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(worker) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::namespace::{NamespaceConfig, slots::Slots, trash::Trash};

    #[test]
    fn an_id_is_reserved_once_until_its_teardown_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandboxes = dir.path().join("sandboxes");
        std::fs::create_dir_all(sandboxes.join("a")).expect("mkdir");
        let host = Arc::new(Host {
            cgroups: Box::new(prism_sys::cgroup::FakeCgroupManager::new()),
            slots: Slots::default(),
            trash: Trash::new(&sandboxes).expect("trash"),
            dev_skeleton: None,
            cfg: NamespaceConfig {
                netns_pool: 0,
                spare_dirs: 0,
                ..NamespaceConfig::new(sandboxes.clone(), PathBuf::from("/nonexistent"))
            },
        });
        let t = Teardowns::new(host.clone()).expect("teardowns");
        assert!(t.reserve("a"));
        assert!(
            !t.reserve("a"),
            "a second teardown of the same id must not start"
        );
        assert!(t.pending().contains("a"));
        let job = Job {
            id: "a".into(),
            pidfd: None,
        };
        t.submit(&host, job).expect("submit");
        assert!(t.wait_for("a", Duration::from_secs(10)));
        assert!(t.wait_all(Duration::from_secs(10)));
        assert!(
            !sandboxes.join("a").exists(),
            "the directory went to the trash"
        );
        assert!(t.reserve("a"), "free again once done");
    }
}
