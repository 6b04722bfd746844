//! cgroup v1: one directory per hierarchy (`cpu`, `cpuacct`, `memory`, `pids`, `freezer`), plus
//! the cgroup2 hierarchy of a hybrid host, used only for `cgroup.kill`.
//!
//! `cpuset` is not joined (it would need `cpuset.cpus`/`cpuset.mems` copied from the parent and
//! buys nothing without CPU pinning), nor are `devices`, `blkio` or `name=systemd`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::io::Files;
use super::{
    CPU_PERIOD_US, CgroupError, CgroupLimits, CgroupManager, CgroupStats, CgroupVersion,
    DEFAULT_TIMEOUT, SharedIo, check_limits, cpu_quota_us, kill_until_empty, list_children,
    poll_until, remove_cgroup_dir, validate_id, validate_parent,
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
    parent: PathBuf,
    timeout: Duration,
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
            parent: validate_parent(parent)?,
            timeout: DEFAULT_TIMEOUT,
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

    /// The v1 mount points in use, without duplicates.
    fn v1_mounts(&self) -> Vec<&Path> {
        let h = &self.hierarchies;
        let mut mounts: Vec<&Path> = Vec::with_capacity(5);
        for m in [&h.cpu, &h.cpuacct, &h.memory, &h.pids, &h.freezer] {
            if !mounts.contains(&m.as_path()) {
                mounts.push(m);
            }
        }
        mounts
    }

    /// Every mount a cgroup may have a directory in.
    fn all_mounts(&self) -> Vec<&Path> {
        let mut mounts = self.v1_mounts();
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
        if self.io.exists(&self.dir(&self.hierarchies.freezer, id)) {
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

    /// Writes `state` to `freezer.state` and waits until it reads back.
    fn set_freezer(&self, id: &str, state: &str, timeout: Duration) -> Result<bool, CgroupError> {
        let path = self
            .dir(&self.hierarchies.freezer, id)
            .join("freezer.state");
        self.files().write(&path, state)?;
        poll_until(timeout, || Ok(self.files().read(&path)?.trim() == state))
    }

    /// Round 0 uses the hybrid host's `cgroup.kill` when there is one; later rounds (and hosts
    /// without it) freeze, SIGKILL every listed process, and thaw. Thawing always ends a round:
    /// a task killed while frozen by the v1 freezer only dies once thawed.
    fn kill_round(&self, id: &str, round: u32) -> Result<(), CgroupError> {
        let files = self.files();
        let freezer = self.dir(&self.hierarchies.freezer, id);
        let has_freezer = self.io.exists(&freezer);
        let kill_file = self
            .unified
            .as_deref()
            .map(|u| self.dir(u, id).join("cgroup.kill"));
        match kill_file {
            Some(kill_file) if round == 0 && self.io.exists(&kill_file) => {
                files.write(&kill_file, "1")?;
            }
            _ => {
                if has_freezer {
                    let budget = self.timeout.min(Duration::from_secs(1));
                    if !self.set_freezer(id, "FROZEN", budget)? {
                        tracing::debug!(cgroup = id, "freezer did not settle, killing anyway");
                    }
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
        for mount in &mounts {
            self.ensure_parent(mount)?;
            let dir = self.dir(mount, id);
            if self.files().create_dir(&dir)? {
                created.push(dir);
            }
        }
        let fresh = created.len() == mounts.len();
        if let Some(unified) = &self.unified {
            let dir = self.dir(unified, id);
            match self
                .ensure_parent(unified)
                .and_then(|()| self.files().create_dir(&dir))
            {
                Ok(true) => created.push(dir),
                Ok(false) => {}
                Err(error) => tracing::warn!(cgroup = id, %error, "cgroup2 hierarchy not usable"),
            }
        }
        if let Err(error) = self.apply(id, limits, fresh) {
            for dir in created.iter().rev() {
                let _ = self.io.remove_dir(dir);
            }
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
        if let Some(unified) = &self.unified {
            let procs = self.dir(unified, id).join("cgroup.procs");
            if self.io.exists(&procs)
                && let Err(error) = self.files().write(&procs, &value)
            {
                tracing::warn!(cgroup = id, %error, "cannot join the cgroup2 hierarchy");
            }
        }
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<Vec<u32>, CgroupError> {
        self.require(id)?;
        let dir = self.dir(&self.hierarchies.freezer, id);
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
        if self.set_freezer(id, "FROZEN", self.timeout)? {
            return Ok(());
        }
        // Leave no half-frozen cgroup behind.
        self.set_freezer(id, "THAWED", self.timeout)?;
        Err(CgroupError::Timeout {
            id: id.to_owned(),
            state: "frozen",
            waited: self.timeout,
        })
    }

    fn thaw(&self, id: &str) -> Result<(), CgroupError> {
        self.require(id)?;
        if self.set_freezer(id, "THAWED", self.timeout)? {
            Ok(())
        } else {
            Err(CgroupError::Timeout {
                id: id.to_owned(),
                state: "thawed",
                waited: self.timeout,
            })
        }
    }

    fn stats(&self, id: &str) -> Result<CgroupStats, CgroupError> {
        self.require(id)?;
        let files = self.files();
        let h = &self.hierarchies;
        let memory = self.dir(&h.memory, id);
        let limit = files.read_u64(&memory.join("memory.limit_in_bytes"))?;
        Ok(CgroupStats {
            cpu_usage_ns: files.read_u64(&self.dir(&h.cpuacct, id).join("cpuacct.usage"))?,
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
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut ids = Vec::new();
        for mount in self.all_mounts() {
            ids.extend(list_children(self.io.as_ref(), &mount.join(&self.parent))?);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    fn remove_parent(&self) -> Result<(), CgroupError> {
        for id in self.list()? {
            self.destroy(&id)?;
        }
        for mount in self.all_mounts() {
            remove_cgroup_dir(self.io.as_ref(), &mount.join(&self.parent), self.timeout)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::testing::FakeTree;

    const UNLIMITED: &str = "9223372036854771712\n";

    fn hybrid(unified: bool) -> (FakeTree, V1Manager) {
        let t = FakeTree::new();
        let cg = "/sys/fs/cgroup";
        for h in ["cpu", "cpuacct", "memory", "pids", "freezer"] {
            t.file(&format!("{cg}/{h}/cgroup.procs"), "");
        }
        t.file(&format!("{cg}/cpu/cpu.cfs_period_us"), "100000\n");
        t.file(&format!("{cg}/cpu/cpu.cfs_quota_us"), "-1\n");
        t.file(&format!("{cg}/cpuacct/cpuacct.usage"), "0\n");
        t.file(&format!("{cg}/memory/memory.limit_in_bytes"), UNLIMITED);
        t.file(
            &format!("{cg}/memory/memory.memsw.limit_in_bytes"),
            UNLIMITED,
        );
        t.file(&format!("{cg}/memory/memory.usage_in_bytes"), "0\n");
        t.file(
            &format!("{cg}/memory/memory.oom_control"),
            "oom_kill_disable 0\noom_kill 0\n",
        );
        t.file(&format!("{cg}/pids/pids.max"), "max\n");
        t.file(&format!("{cg}/pids/pids.current"), "0\n");
        t.file(&format!("{cg}/freezer/freezer.state"), "THAWED\n");
        let unified = unified.then(|| {
            for f in [
                "cgroup.procs",
                "cgroup.kill",
                "cgroup.freeze",
                "cgroup.events",
            ] {
                t.file(&format!("{cg}/unified/{f}"), "");
            }
            PathBuf::from(format!("{cg}/unified"))
        });
        let h = |name: &str| PathBuf::from(format!("{cg}/{name}"));
        let hierarchies = V1Hierarchies {
            cpu: h("cpu"),
            cpuacct: h("cpuacct"),
            memory: h("memory"),
            pids: h("pids"),
            freezer: h("freezer"),
        };
        let m = V1Manager::new(t.shared(), hierarchies, unified, "prism-test")
            .map(|m| m.with_timeout(Duration::from_millis(300)));
        match m {
            Ok(m) => (t, m),
            Err(e) => panic!("{e}"),
        }
    }

    const A: &str = "/sys/fs/cgroup/{}/prism-test/a";

    fn at(hierarchy: &str, file: &str) -> String {
        format!("{}/{file}", A.replace("{}", hierarchy))
    }

    fn limits() -> CgroupLimits {
        CgroupLimits {
            cpu_quota: Some(0.2),
            memory_bytes: Some(64 << 20),
            pids: Some(10),
        }
    }

    #[test]
    fn create_writes_limits_in_every_hierarchy() -> Result<(), CgroupError> {
        let (t, m) = hybrid(true);
        m.create("a", &limits())?;
        assert_eq!(t.read(&at("cpu", "cpu.cfs_period_us")), "10000");
        assert_eq!(t.read(&at("cpu", "cpu.cfs_quota_us")), "2000");
        assert_eq!(t.read(&at("memory", "memory.limit_in_bytes")), "67108864");
        assert_eq!(
            t.read(&at("memory", "memory.memsw.limit_in_bytes")),
            "67108864"
        );
        assert_eq!(t.read(&at("pids", "pids.max")), "10");
        for h in ["cpuacct", "freezer", "unified"] {
            assert!(t.exists(&at(h, "cgroup.procs")), "{h}");
        }
        assert_eq!(m.list()?, vec!["a".to_owned()]);
        Ok(())
    }

    #[test]
    fn create_again_converges_and_orders_memsw() -> Result<(), CgroupError> {
        let (t, m) = hybrid(false);
        m.create("a", &limits())?;
        // Growing: memsw must move first or the kernel (and the fake) says EINVAL.
        let bigger = CgroupLimits {
            memory_bytes: Some(128 << 20),
            ..limits()
        };
        m.create("a", &bigger)?;
        assert_eq!(t.read(&at("memory", "memory.limit_in_bytes")), "134217728");
        m.create("a", &CgroupLimits::default())?;
        assert_eq!(t.read(&at("cpu", "cpu.cfs_quota_us")), "-1");
        assert_eq!(t.read(&at("cpu", "cpu.cfs_period_us")), "100000");
        assert_eq!(t.read(&at("memory", "memory.limit_in_bytes")), UNLIMITED);
        assert_eq!(
            t.read(&at("memory", "memory.memsw.limit_in_bytes")),
            UNLIMITED
        );
        assert_eq!(t.read(&at("pids", "pids.max")), "max");
        // Shrinking again: memory first.
        m.create("a", &limits())?;
        assert_eq!(
            t.read(&at("memory", "memory.memsw.limit_in_bytes")),
            "67108864"
        );
        Ok(())
    }

    #[test]
    fn a_fresh_cgroup_gets_only_the_limits_that_are_set() -> Result<(), CgroupError> {
        let (t, m) = hybrid(true);
        m.create("a", &CgroupLimits::default())?;
        assert_eq!(
            t.writes(),
            Vec::<(String, String)>::new(),
            "defaults need no write"
        );
        let pids_only = CgroupLimits {
            pids: Some(10),
            ..Default::default()
        };
        m.create("b", &pids_only)?;
        let written: Vec<String> = t.writes().into_iter().map(|(p, _)| p).collect();
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(
            written[0].ends_with("pids/prism-test/b/pids.max"),
            "{written:?}"
        );
        // An existing cgroup converges: every limit is written again.
        m.create("b", &CgroupLimits::default())?;
        assert_eq!(t.read(&at("pids", "pids.max").replace("/a/", "/b/")), "max");
        Ok(())
    }

    #[test]
    fn failed_create_leaves_nothing() {
        let (t, m) = hybrid(true);
        t.fail_writes(&at("pids", "pids.max"), nix::libc::EACCES);
        let err = m.create("a", &limits());
        let Err(CgroupError::Write { path, source, .. }) = err else {
            panic!("expected a write error, got {err:?}");
        };
        assert!(path.ends_with("pids/prism-test/a/pids.max"));
        assert_eq!(source.raw_os_error(), Some(nix::libc::EACCES));
        assert!(!t.exists(&A.replace("{}", "memory")));
        assert!(!t.exists(&A.replace("{}", "unified")));
    }

    #[test]
    fn add_process_joins_every_hierarchy() -> Result<(), CgroupError> {
        let (t, m) = hybrid(true);
        assert!(matches!(
            m.add_process("a", 7),
            Err(CgroupError::NotFound(_))
        ));
        m.create("a", &CgroupLimits::default())?;
        assert!(matches!(
            m.add_process("a", 0),
            Err(CgroupError::InvalidPid(0))
        ));
        m.add_process("a", 7)?;
        for h in ["cpu", "cpuacct", "memory", "pids", "freezer", "unified"] {
            assert_eq!(t.read(&at(h, "cgroup.procs")), "7\n", "{h}");
        }
        assert_eq!(m.pids("a")?, vec![7]);
        assert!(matches!(m.pids("../a"), Err(CgroupError::InvalidId(_))));
        Ok(())
    }

    #[test]
    fn kill_all_uses_cgroup_kill_then_thaws() -> Result<(), CgroupError> {
        let (t, m) = hybrid(true);
        m.create("a", &CgroupLimits::default())?;
        m.add_process("a", 7)?;
        m.add_process("a", 8)?;
        m.kill_all("a")?;
        assert!(m.pids("a")?.is_empty());
        let writes = t.writes();
        let kill = writes.iter().position(|(p, _)| p.ends_with("cgroup.kill"));
        let thaw = writes.iter().position(|(_, v)| v == "THAWED");
        assert!(kill.is_some() && kill < thaw, "{writes:?}");
        assert!(
            !writes.iter().any(|(_, v)| v == "FROZEN"),
            "no freezer round needed"
        );
        Ok(())
    }

    #[test]
    fn kill_all_without_unified_freezes_kills_thaws() -> Result<(), CgroupError> {
        let (t, m) = hybrid(false);
        m.create("a", &CgroupLimits::default())?;
        m.add_process("a", 7)?;
        m.kill_all("a")?;
        assert_eq!(t.killed(), vec![7]);
        let states: Vec<String> = t
            .writes()
            .into_iter()
            .filter(|(p, _)| p.ends_with("freezer.state"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(states, vec!["FROZEN", "THAWED"]);
        Ok(())
    }

    #[test]
    fn kill_all_escalates_then_times_out_on_a_stuck_task() -> Result<(), CgroupError> {
        let (t, m) = hybrid(true);
        m.create("a", &CgroupLimits::default())?;
        m.add_process("a", 9)?;
        t.immortal(9);
        let err = m.kill_all("a");
        assert!(
            matches!(err, Err(CgroupError::Timeout { state: "empty", .. })),
            "{err:?}"
        );
        assert!(
            t.killed().len() >= 2,
            "cgroup.kill, then signals: {:?}",
            t.killed()
        );
        assert!(t.writes().iter().any(|(_, v)| v == "FROZEN"));
        Ok(())
    }

    #[test]
    fn stats_read_every_controller() -> Result<(), CgroupError> {
        let (t, m) = hybrid(false);
        m.create("a", &limits())?;
        t.file(&at("cpuacct", "cpuacct.usage"), "1234\n");
        t.file(&at("memory", "memory.usage_in_bytes"), "4096\n");
        t.file(
            &at("memory", "memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        t.file(&at("pids", "pids.current"), "2\n");
        assert_eq!(
            m.oom_kills("a")?,
            3,
            "the counter alone, from the same file"
        );
        let stats = m.stats("a")?;
        assert_eq!(
            stats,
            CgroupStats {
                cpu_usage_ns: 1234,
                memory_bytes: 4096,
                memory_limit_bytes: Some(64 << 20),
                pids: 2,
                oom_kills: 3
            }
        );
        t.file(&at("memory", "memory.limit_in_bytes"), UNLIMITED);
        assert_eq!(m.stats("a")?.memory_limit_bytes, None);
        t.file(&at("pids", "pids.current"), "garbage\n");
        assert!(matches!(m.stats("a"), Err(CgroupError::Parse { .. })));
        Ok(())
    }

    #[test]
    fn freeze_and_thaw_use_the_freezer() -> Result<(), CgroupError> {
        let (t, m) = hybrid(true);
        m.create("a", &CgroupLimits::default())?;
        m.freeze("a")?;
        assert_eq!(t.read(&at("freezer", "freezer.state")), "FROZEN");
        m.thaw("a")?;
        assert_eq!(t.read(&at("freezer", "freezer.state")), "THAWED");
        Ok(())
    }

    #[test]
    fn destroy_removes_every_directory_and_is_idempotent() -> Result<(), CgroupError> {
        let (t, m) = hybrid(true);
        m.create("a", &limits())?;
        m.create("b", &limits())?;
        m.add_process("a", 7)?;
        m.destroy("a")?;
        m.destroy("a")?;
        for h in ["cpu", "cpuacct", "memory", "pids", "freezer", "unified"] {
            assert!(!t.exists(&A.replace("{}", h)), "{h}");
        }
        assert_eq!(m.list()?, vec!["b".to_owned()]);
        Ok(())
    }

    #[test]
    fn remove_parent_destroys_children_then_the_parent_everywhere() -> Result<(), CgroupError> {
        let (t, m) = hybrid(true);
        m.remove_parent()?;
        m.create("a", &limits())?;
        m.add_process("a", 7)?;
        m.create("b", &limits())?;
        m.remove_parent()?;
        for h in ["cpu", "cpuacct", "memory", "pids", "freezer", "unified"] {
            assert!(!t.exists(&format!("/sys/fs/cgroup/{h}/prism-test")), "{h}");
        }
        assert!(m.list()?.is_empty());
        Ok(())
    }

    #[test]
    fn list_finds_leftovers_in_any_hierarchy() -> Result<(), CgroupError> {
        let (t, m) = hybrid(true);
        assert!(m.list()?.is_empty(), "missing parent lists nothing");
        t.file("/sys/fs/cgroup/pids/prism-test/orphan/cgroup.procs", "");
        assert_eq!(m.list()?, vec!["orphan".to_owned()]);
        m.destroy("orphan")?;
        assert!(m.list()?.is_empty());
        Ok(())
    }
}
