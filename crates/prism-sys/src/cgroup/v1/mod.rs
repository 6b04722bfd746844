//! cgroup v1: one directory per hierarchy (`cpu`, `cpuacct`, `memory`, `pids`, `freezer`), plus
//! the cgroup2 hierarchy of a hybrid host.
//!
//! On a hybrid host whose cgroup2 hierarchy has `cgroup.freeze`, `cgroup.kill` and `cpu.stat`
//! (core files of every v2 cgroup, no controller needed: Linux 5.14+), that hierarchy freezes,
//! kills and counts CPU time, and the `cpuacct` and `freezer` hierarchies are left alone: a
//! sandbox then costs four cgroup directories and four joins instead of six. Directories a
//! sandbox still has in them (made before this) are found, emptied and removed all the same.
//!
//! `cpuset` is not joined (it would need `cpuset.cpus`/`cpuset.mems` copied from the parent and
//! buys nothing without CPU pinning), nor are `devices`, `blkio` or `name=systemd`.

mod spares;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::io::Files;
use super::{
    CPU_PERIOD_US, CgroupError, CgroupLimits, CgroupManager, CgroupStats, CgroupVersion,
    DEFAULT_TIMEOUT, SharedIo, check_limits, cpu_quota_us, freeze_or_thaw, kill_until_empty,
    list_children, poll_until, remove_cgroup_dir, validate_id, validate_parent,
};

/// v1 reports "unlimited" as a page-rounded `i64::MAX`; anything this large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// Mount points of the v1 hierarchies a [`V1Manager`] uses (comounted controllers share one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchies {
    /// `cpu` (CFS bandwidth).
    pub cpu: PathBuf,
    /// `cpuacct` (CPU usage).
    pub cpuacct: PathBuf,
    /// `memory`.
    pub memory: PathBuf,
    /// `pids`.
    pub pids: PathBuf,
    /// `freezer`.
    pub freezer: PathBuf,
}

/// A [`CgroupManager`] over cgroup v1 hierarchies.
#[derive(Debug)]
pub struct V1Manager {
    io: SharedIo,
    hierarchies: V1Hierarchies,
    /// cgroup2 mount of a hybrid host, joined for `cgroup.kill`.
    unified: Option<PathBuf>,
    /// Whether `unified` takes freezing, killing and CPU accounting (see the module docs),
    /// probed once under the parent cgroup.
    unified_core: std::sync::OnceLock<bool>,
    parent: PathBuf,
    timeout: Duration,
    /// Directory sets made ahead (see `spares.rs`), once [`CgroupManager::keep_spares`] ran.
    spares: Mutex<Option<spares::Spares>>,
}

impl V1Manager {
    /// A manager whose cgroups live in `<hierarchy>/<parent>/<id>`.
    pub fn new(
        io: SharedIo,
        hierarchies: V1Hierarchies,
        unified: Option<PathBuf>,
        parent: &str,
    ) -> Result<Self, CgroupError> {
        Ok(Self {
            io,
            hierarchies,
            unified,
            unified_core: std::sync::OnceLock::new(),
            parent: validate_parent(parent)?,
            timeout: DEFAULT_TIMEOUT,
            spares: Mutex::new(None),
        })
    }

    /// Sets how long kill, freeze, thaw and removal wait.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn files(&self) -> Files<'_> {
        Files {
            io: self.io.as_ref(),
        }
    }

    /// The cgroup2 mount when it freezes, kills and counts CPU time (probed once: the
    /// core files exist only below the root, so the parent is made for the probe).
    fn core(&self) -> Option<&Path> {
        let unified = self.unified.as_deref()?;
        let usable = *self.unified_core.get_or_init(|| {
            let dir = unified.join(&self.parent);
            self.ensure_parent(unified).is_ok()
                && ["cgroup.freeze", "cgroup.kill", "cpu.stat"]
                    .iter()
                    .all(|f| self.io.exists(&dir.join(f)))
        });
        usable.then_some(unified)
    }

    /// The v1 mount points a new sandbox gets a directory in, without duplicates.
    fn v1_mounts(&self) -> Vec<&Path> {
        let h = &self.hierarchies;
        let mut all = vec![&h.cpu, &h.memory, &h.pids];
        if self.core().is_none() {
            all.extend([&h.cpuacct, &h.freezer]);
        }
        dedup(all)
    }

    /// Every mount a cgroup may have a directory in.
    fn all_mounts(&self) -> Vec<&Path> {
        let h = &self.hierarchies;
        let mut mounts = dedup(vec![&h.cpu, &h.cpuacct, &h.memory, &h.pids, &h.freezer]);
        mounts.extend(self.unified.as_deref());
        mounts
    }

    fn dir(&self, mount: &Path, id: &str) -> PathBuf {
        mount.join(&self.parent).join(id)
    }

    /// Directories of `id` that exist.
    fn existing_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.all_mounts()
            .into_iter()
            .map(|m| self.dir(m, id))
            .filter(|d| self.io.exists(d))
            .collect()
    }

    fn require(&self, id: &str) -> Result<(), CgroupError> {
        validate_id(id)?;
        if self.io.exists(&self.dir(&self.hierarchies.memory, id)) {
            Ok(())
        } else {
            Err(CgroupError::NotFound(id.to_owned()))
        }
    }

    /// Creates `mount/<parent>` level by level.
    fn ensure_parent(&self, mount: &Path) -> Result<(), CgroupError> {
        let mut path = mount.to_path_buf();
        for component in self.parent.components() {
            path.push(component);
            self.files().create_dir(&path)?;
        }
        Ok(())
    }

    /// Writes `limits`. A `fresh` cgroup (every directory just made) holds the kernel's
    /// defaults, which are the "no limit" values: only the limits that are set are written.
    fn apply(&self, id: &str, limits: &CgroupLimits, fresh: bool) -> Result<(), CgroupError> {
        let files = self.files();

        let cpu = self.dir(&self.hierarchies.cpu, id);
        let (quota, period) = match limits.cpu_quota {
            Some(cores) => {
                let (q, p) = cpu_quota_us(cores)?;
                (q.to_string(), p)
            }
            None => ("-1".to_owned(), CPU_PERIOD_US),
        };
        if !fresh || limits.cpu_quota.is_some() {
            // Lower the quota first: a period shorter than the quota in place is refused
            // otherwise (a fresh cgroup has no quota).
            if !fresh {
                files.write(&cpu.join("cpu.cfs_quota_us"), "-1")?;
            }
            files.write(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
            files.write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
        }

        if !fresh || limits.memory_bytes.is_some() {
            self.apply_memory(id, limits.memory_bytes)?;
        }

        if !fresh || limits.pids.is_some() {
            let pids = self.dir(&self.hierarchies.pids, id);
            let max = limits
                .pids
                .map_or_else(|| "max".to_owned(), |n| n.to_string());
            files.write(&pids.join("pids.max"), &max)?;
        }
        Ok(())
    }

    /// `memory.memsw.limit_in_bytes` must never be below `memory.limit_in_bytes`: memory moves
    /// first (right when the limit shrinks); `EINVAL` means it grows, so memsw moves first.
    fn apply_memory(&self, id: &str, bytes: Option<u64>) -> Result<(), CgroupError> {
        let files = self.files();
        let dir = self.dir(&self.hierarchies.memory, id);
        let mem = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        let value = bytes.map_or_else(|| "-1".to_owned(), |b| b.to_string());
        if !self.io.exists(&memsw) {
            return files.write(&mem, &value);
        }
        match files.write(&mem, &value) {
            Ok(()) => files.write(&memsw, &value),
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(nix::libc::EINVAL) =>
            {
                files.write(&memsw, &value)?;
                files.write(&mem, &value)
            }
            Err(error) => Err(error),
        }
    }

    fn is_empty(&self, id: &str) -> Result<bool, CgroupError> {
        self.all_empty(&self.existing_dirs(id))
    }

    fn all_empty(&self, dirs: &[PathBuf]) -> Result<bool, CgroupError> {
        for dir in dirs {
            if !self
                .files()
                .read_pids(&dir.join("cgroup.procs"))?
                .is_empty()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Freezes or thaws `id` and waits until the kernel says it is done: through the cgroup2
    /// hierarchy when it takes freezing, else through `freezer.state`.
    fn set_frozen(&self, id: &str, frozen: bool, timeout: Duration) -> Result<bool, CgroupError> {
        if let Some(core) = self.core() {
            return self
                .files()
                .set_frozen(&self.dir(core, id), frozen, timeout);
        }
        let freezer = self.dir(&self.hierarchies.freezer, id);
        set_freezer(&self.files(), &freezer, frozen, timeout)
    }

    /// Round 0 uses the hybrid host's `cgroup.kill` when there is one; later rounds (and hosts
    /// without it) freeze, SIGKILL every listed process, and thaw. Thawing always ends a round:
    /// a task killed while frozen by the v1 freezer only dies once thawed. A `freezer`
    /// directory, where there is one, is the one used (its tasks are in it), else cgroup2's.
    fn kill_round(&self, id: &str, round: u32) -> Result<(), CgroupError> {
        let files = self.files();
        let freezer = self.dir(&self.hierarchies.freezer, id);
        let has_freezer = self.io.exists(&freezer);
        let core = self.core().map(|u| self.dir(u, id));
        let kill_file = self
            .unified
            .as_deref()
            .map(|u| self.dir(u, id).join("cgroup.kill"));
        match kill_file {
            Some(kill_file) if round == 0 && self.io.exists(&kill_file) => {
                files.write(&kill_file, "1")?;
            }
            _ => {
                let budget = self.timeout.min(Duration::from_secs(1));
                let settled = match (&core, has_freezer) {
                    (_, true) => set_freezer(&files, &freezer, true, budget)?,
                    (Some(dir), false) => files.set_frozen(dir, true, budget)?,
                    (None, false) => true,
                };
                if !settled {
                    tracing::debug!(cgroup = id, "freeze did not settle, killing anyway");
                }
                for dir in self.existing_dirs(id) {
                    for pid in files.read_pids(&dir.join("cgroup.procs"))? {
                        self.io
                            .kill(pid)
                            .map_err(|source| CgroupError::Kill { pid, source })?;
                    }
                }
            }
        }
        if has_freezer {
            files.write(&freezer.join("freezer.state"), "THAWED")?;
        } else if let Some(dir) = core.filter(|_| round > 0) {
            files.write(&dir.join("cgroup.freeze"), "0")?;
        }
        Ok(())
    }
}

impl CgroupManager for V1Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1 {
            unified_kill: self.unified.is_some(),
        }
    }

    fn create(&self, id: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
        validate_id(id)?;
        check_limits(limits)?;
        let mut created = Vec::new();
        let mounts = self.v1_mounts();
        if self.rename_spare(id, &mounts) {
            created.extend(mounts.iter().map(|m| self.dir(m, id)));
        } else {
            for mount in &mounts {
                self.ensure_parent(mount)?;
                let dir = self.dir(mount, id);
                if self.files().create_dir(&dir)? {
                    created.push(dir);
                }
            }
        }
        let fresh = created.len() == mounts.len();
        let unified = match self.core() {
            // It freezes and kills: the sandbox needs it.
            Some(core) => {
                let dir = self.dir(core, id);
                match self.files().create_dir(&dir) {
                    Ok(true) => {
                        created.push(dir);
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(error) => Err(error),
                }
            }
            None => {
                if let Some(unified) = &self.unified {
                    let dir = self.dir(unified, id);
                    match self
                        .ensure_parent(unified)
                        .and_then(|()| self.files().create_dir(&dir))
                    {
                        Ok(true) => created.push(dir),
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(cgroup = id, %error, "cgroup2 hierarchy not usable")
                        }
                    }
                }
                Ok(())
            }
        };
        if let Err(error) = unified.and_then(|()| self.apply(id, limits, fresh)) {
            for dir in created.iter().rev() {
                let _ = self.io.remove_dir(dir);
            }
            self.refill_spares();
            return Err(error);
        }
        Ok(())
    }

    fn add_process(&self, id: &str, pid: u32) -> Result<(), CgroupError> {
        if pid == 0 {
            return Err(CgroupError::InvalidPid(pid));
        }
        self.require(id)?;
        let value = pid.to_string();
        for mount in self.v1_mounts() {
            self.files()
                .write(&self.dir(mount, id).join("cgroup.procs"), &value)?;
        }
        if let Some(core) = self.core() {
            let joined = self
                .files()
                .write(&self.dir(core, id).join("cgroup.procs"), &value);
            self.refill_spares();
            return joined;
        }
        if let Some(unified) = &self.unified {
            let procs = self.dir(unified, id).join("cgroup.procs");
            if self.io.exists(&procs)
                && let Err(error) = self.files().write(&procs, &value)
            {
                tracing::warn!(cgroup = id, %error, "cannot join the cgroup2 hierarchy");
            }
        }
        self.refill_spares();
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<Vec<u32>, CgroupError> {
        self.require(id)?;
        let dir = self.dir(&self.hierarchies.memory, id);
        self.files().read_pids(&dir.join("cgroup.procs"))
    }

    fn kill_all(&self, id: &str) -> Result<(), CgroupError> {
        validate_id(id)?;
        if self.existing_dirs(id).is_empty() {
            return Err(CgroupError::NotFound(id.to_owned()));
        }
        kill_until_empty(
            id,
            self.timeout,
            || self.is_empty(id),
            |round| self.kill_round(id, round),
        )
    }

    fn freeze(&self, id: &str) -> Result<(), CgroupError> {
        self.require(id)?;
        freeze_or_thaw(id, self.timeout, true, |f| {
            self.set_frozen(id, f, self.timeout)
        })
    }

    fn thaw(&self, id: &str) -> Result<(), CgroupError> {
        self.require(id)?;
        freeze_or_thaw(id, self.timeout, false, |f| {
            self.set_frozen(id, f, self.timeout)
        })
    }

    fn stats(&self, id: &str) -> Result<CgroupStats, CgroupError> {
        self.require(id)?;
        let files = self.files();
        let h = &self.hierarchies;
        let memory = self.dir(&h.memory, id);
        let limit = files.read_u64(&memory.join("memory.limit_in_bytes"))?;
        let cpu_usage_ns = match self.core() {
            Some(core) => files
                .read_keyed(&self.dir(core, id).join("cpu.stat"), "usage_usec")?
                .unwrap_or(0)
                .saturating_mul(1_000),
            None => files.read_u64(&self.dir(&h.cpuacct, id).join("cpuacct.usage"))?,
        };
        Ok(CgroupStats {
            cpu_usage_ns,
            memory_bytes: files.read_u64(&memory.join("memory.usage_in_bytes"))?,
            memory_limit_bytes: (limit < V1_UNLIMITED).then_some(limit),
            pids: files.read_u64(&self.dir(&h.pids, id).join("pids.current"))?,
            // `oom_kill` appeared in Linux 4.13; older kernels do not count kills.
            oom_kills: files
                .read_keyed(&memory.join("memory.oom_control"), "oom_kill")?
                .unwrap_or(0),
        })
    }

    fn oom_kills(&self, id: &str) -> Result<u64, CgroupError> {
        validate_id(id)?;
        let path = self
            .dir(&self.hierarchies.memory, id)
            .join("memory.oom_control");
        Ok(self.files().read_keyed(&path, "oom_kill")?.unwrap_or(0))
    }

    fn destroy(&self, id: &str) -> Result<(), CgroupError> {
        validate_id(id)?;
        let dirs = self.existing_dirs(id);
        if dirs.is_empty() {
            return Ok(());
        }
        kill_until_empty(
            id,
            self.timeout,
            || self.all_empty(&dirs),
            |round| self.kill_round(id, round),
        )?;
        for dir in dirs {
            remove_cgroup_dir(self.io.as_ref(), &dir, self.timeout)?;
        }
        // A set taken by a start that never joined (it failed) is made up for here at last.
        self.refill_spares();
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut ids = self.children()?;
        ids.retain(|id| !id.starts_with(spares::PREFIX));
        Ok(ids)
    }

    fn keep_spares(&self, count: usize) -> Result<(), CgroupError> {
        let mut pool = self.lock_spares();
        drop(pool.take());
        if count == 0 {
            return Ok(());
        }
        let mounts = self.v1_mounts();
        for mount in &mounts {
            self.ensure_parent(mount)?;
        }
        let parents = mounts.iter().map(|m| m.join(&self.parent)).collect();
        let started = spares::Spares::start(Arc::clone(&self.io), parents, count)
            .map_err(CgroupError::Thread)?;
        *pool = Some(started);
        Ok(())
    }

    fn remove_parent(&self) -> Result<(), CgroupError> {
        // Stop the refill first (dropping the pool removes its sets); stale sets go below.
        drop(self.lock_spares().take());
        for id in self.children()? {
            self.destroy(&id)?;
        }
        for mount in self.all_mounts() {
            remove_cgroup_dir(self.io.as_ref(), &mount.join(&self.parent), self.timeout)?;
        }
        Ok(())
    }
}

impl V1Manager {
    fn lock_spares(&self) -> std::sync::MutexGuard<'_, Option<spares::Spares>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names under the parent in every hierarchy, spare sets included.
    fn children(&self) -> Result<Vec<String>, CgroupError> {
        let mut ids = Vec::new();
        for mount in self.all_mounts() {
            ids.extend(list_children(self.io.as_ref(), &mount.join(&self.parent))?);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// Writes `FROZEN` or `THAWED` to the v1 `freezer.state` in `dir` and waits until it reads
/// back.
fn set_freezer(
    files: &Files<'_>,
    dir: &Path,
    frozen: bool,
    timeout: Duration,
) -> Result<bool, CgroupError> {
    let state = if frozen { "FROZEN" } else { "THAWED" };
    let path = dir.join("freezer.state");
    files.write(&path, state)?;
    poll_until(timeout, || Ok(files.read(&path)?.trim() == state))
}

/// `mounts` without repeats (comounted controllers share a mount point).
fn dedup(mounts: Vec<&PathBuf>) -> Vec<&Path> {
    let mut out: Vec<&Path> = Vec::with_capacity(mounts.len());
    for m in mounts {
        if !out.contains(&m.as_path()) {
            out.push(m);
        }
    }
    out
}

#[cfg(test)]
mod tests;
