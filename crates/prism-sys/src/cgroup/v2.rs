//! cgroup v2: one directory per sandbox in the unified hierarchy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::io::Files;
use super::{
    CPU_PERIOD_US, CgroupError, CgroupLimits, CgroupManager, CgroupStats, CgroupVersion,
    DEFAULT_TIMEOUT, SharedIo, check_limits, cpu_quota_us, freeze_or_thaw, kill_until_empty,
    list_children, remove_cgroup_dir, validate_id, validate_parent,
};

/// Controllers enabled for sandbox cgroups.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// A [`CgroupManager`] over the cgroup v2 unified hierarchy.
#[derive(Debug)]
pub struct V2Manager {
    io: SharedIo,
    root: PathBuf,
    parent: PathBuf,
    timeout: Duration,
}

impl V2Manager {
    /// A manager whose cgroups live in `<root>/<parent>/<id>`.
    pub fn new(io: SharedIo, root: PathBuf, parent: &str) -> Result<Self, CgroupError> {
        Ok(Self {
            io,
            root,
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

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(&self.parent).join(id)
    }

    fn require(&self, id: &str) -> Result<PathBuf, CgroupError> {
        validate_id(id)?;
        let dir = self.dir(id);
        if self.io.exists(&dir) {
            Ok(dir)
        } else {
            Err(CgroupError::NotFound(id.to_owned()))
        }
    }

    /// Enables the sandbox controllers for the children of `dir`, if not yet enabled.
    fn delegate(&self, dir: &Path) -> Result<(), CgroupError> {
        let path = dir.join("cgroup.subtree_control");
        let enabled = self.files().read(&path)?;
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        let missing: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| !enabled.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.files().write(&path, &missing.join(" "))
    }

    /// Creates `<root>/<parent>` level by level, delegating the controllers down to it.
    fn ensure_parent(&self) -> Result<(), CgroupError> {
        let mut path = self.root.clone();
        self.delegate(&path)?;
        for component in self.parent.components() {
            path.push(component);
            self.files().create_dir(&path)?;
            self.delegate(&path)?;
        }
        Ok(())
    }

    fn apply(&self, dir: &Path, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let files = self.files();
        let (quota, period) = match limits.cpu_quota {
            Some(cores) => {
                let (q, p) = cpu_quota_us(cores)?;
                (q.to_string(), p)
            }
            None => ("max".to_owned(), CPU_PERIOD_US),
        };
        files.write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;

        let memory = limits
            .memory_bytes
            .map_or_else(|| "max".to_owned(), |b| b.to_string());
        files.write(&dir.join("memory.max"), &memory)?;
        // Absent when the kernel does not account swap.
        let swap = dir.join("memory.swap.max");
        if self.io.exists(&swap) {
            files.write(&swap, "0")?;
        }

        let pids = limits
            .pids
            .map_or_else(|| "max".to_owned(), |n| n.to_string());
        files.write(&dir.join("pids.max"), &pids)
    }

    fn is_empty(&self, dir: &Path) -> Result<bool, CgroupError> {
        Ok(self
            .files()
            .read_pids(&dir.join("cgroup.procs"))?
            .is_empty())
    }

    fn set_frozen(&self, dir: &Path, frozen: bool, timeout: Duration) -> Result<bool, CgroupError> {
        self.files().set_frozen(dir, frozen, timeout)
    }

    /// `cgroup.kill` (Linux 5.14+) kills every task atomically; older kernels freeze, signal
    /// every listed process and thaw (v2 delivers SIGKILL to frozen tasks).
    fn kill_round(&self, id: &str, dir: &Path) -> Result<(), CgroupError> {
        let kill_file = dir.join("cgroup.kill");
        if self.io.exists(&kill_file) {
            return self.files().write(&kill_file, "1");
        }
        let budget = self.timeout.min(Duration::from_secs(1));
        if !self.set_frozen(dir, true, budget)? {
            tracing::debug!(cgroup = id, "freeze did not settle, killing anyway");
        }
        for pid in self.files().read_pids(&dir.join("cgroup.procs"))? {
            self.io
                .kill(pid)
                .map_err(|source| CgroupError::Kill { pid, source })?;
        }
        self.files().write(&dir.join("cgroup.freeze"), "0")
    }
}

impl CgroupManager for V2Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn create(&self, id: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
        validate_id(id)?;
        check_limits(limits)?;
        self.ensure_parent()?;
        let dir = self.dir(id);
        let created = self.files().create_dir(&dir)?;
        if let Err(error) = self.apply(&dir, limits) {
            if created {
                let _ = self.io.remove_dir(&dir);
            }
            return Err(error);
        }
        Ok(())
    }

    fn add_process(&self, id: &str, pid: u32) -> Result<(), CgroupError> {
        if pid == 0 {
            return Err(CgroupError::InvalidPid(pid));
        }
        let dir = self.require(id)?;
        self.files()
            .write(&dir.join("cgroup.procs"), &pid.to_string())
    }

    fn pids(&self, id: &str) -> Result<Vec<u32>, CgroupError> {
        let dir = self.require(id)?;
        self.files().read_pids(&dir.join("cgroup.procs"))
    }

    fn kill_all(&self, id: &str) -> Result<(), CgroupError> {
        let dir = self.require(id)?;
        kill_until_empty(
            id,
            self.timeout,
            || self.is_empty(&dir),
            |_round| self.kill_round(id, &dir),
        )
    }

    fn freeze(&self, id: &str) -> Result<(), CgroupError> {
        let dir = self.require(id)?;
        freeze_or_thaw(id, self.timeout, true, |f| {
            self.set_frozen(&dir, f, self.timeout)
        })
    }

    fn thaw(&self, id: &str) -> Result<(), CgroupError> {
        let dir = self.require(id)?;
        freeze_or_thaw(id, self.timeout, false, |f| {
            self.set_frozen(&dir, f, self.timeout)
        })
    }

    fn stats(&self, id: &str) -> Result<CgroupStats, CgroupError> {
        let dir = self.require(id)?;
        let files = self.files();
        let usage_usec = files
            .read_keyed(&dir.join("cpu.stat"), "usage_usec")?
            .unwrap_or(0);
        Ok(CgroupStats {
            cpu_usage_ns: usage_usec.saturating_mul(1_000),
            memory_bytes: files.read_u64(&dir.join("memory.current"))?,
            memory_limit_bytes: files.read_u64_or_max(&dir.join("memory.max"))?,
            pids: files.read_u64(&dir.join("pids.current"))?,
            oom_kills: files
                .read_keyed(&dir.join("memory.events"), "oom_kill")?
                .unwrap_or(0),
        })
    }

    fn oom_kills(&self, id: &str) -> Result<u64, CgroupError> {
        let dir = self.require(id)?;
        Ok(self
            .files()
            .read_keyed(&dir.join("memory.events"), "oom_kill")?
            .unwrap_or(0))
    }

    fn destroy(&self, id: &str) -> Result<(), CgroupError> {
        validate_id(id)?;
        let dir = self.dir(id);
        if !self.io.exists(&dir) {
            return Ok(());
        }
        self.kill_all(id)?;
        remove_cgroup_dir(self.io.as_ref(), &dir, self.timeout)
    }

    fn list(&self) -> Result<Vec<String>, CgroupError> {
        list_children(self.io.as_ref(), &self.root.join(&self.parent))
    }

    fn remove_parent(&self) -> Result<(), CgroupError> {
        for id in self.list()? {
            self.destroy(&id)?;
        }
        remove_cgroup_dir(
            self.io.as_ref(),
            &self.root.join(&self.parent),
            self.timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::testing::FakeTree;

    const ROOT: &str = "/sys/fs/cgroup";
    const A: &str = "/sys/fs/cgroup/prism-test/a";

    fn unified(with_kill: bool) -> (FakeTree, V2Manager) {
        let t = FakeTree::new();
        let mut files = vec![
            ("cgroup.procs", ""),
            ("cgroup.controllers", "cpuset cpu io memory pids\n"),
            ("cgroup.subtree_control", "cpu\n"),
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cpu.max", "max 100000\n"),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\n"),
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("memory.current", "0\n"),
            ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
            ("pids.max", "max\n"),
            ("pids.current", "0\n"),
        ];
        if with_kill {
            files.push(("cgroup.kill", ""));
        }
        for (name, content) in files {
            t.file(&format!("{ROOT}/{name}"), content);
        }
        let m = V2Manager::new(t.shared(), PathBuf::from(ROOT), "prism-test")
            .map(|m| m.with_timeout(Duration::from_millis(300)));
        match m {
            Ok(m) => (t, m),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn create_delegates_controllers_and_writes_limits() -> Result<(), CgroupError> {
        let (t, m) = unified(true);
        let limits = CgroupLimits {
            cpu_quota: Some(1.5),
            memory_bytes: Some(64 << 20),
            pids: Some(10),
        };
        m.create("a", &limits)?;
        // The root already had cpu: only the missing controllers are added.
        assert!(t.writes().contains(&(
            format!("{ROOT}/cgroup.subtree_control"),
            "+memory +pids".to_owned()
        )));
        assert_eq!(
            t.read(&format!("{ROOT}/prism-test/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(t.read(&format!("{A}/cpu.max")), "15000 10000");
        assert_eq!(t.read(&format!("{A}/memory.max")), "67108864");
        assert_eq!(t.read(&format!("{A}/memory.swap.max")), "0");
        assert_eq!(t.read(&format!("{A}/pids.max")), "10");
        m.create("a", &CgroupLimits::default())?;
        assert_eq!(t.read(&format!("{A}/cpu.max")), "max 100000");
        assert_eq!(t.read(&format!("{A}/memory.max")), "max");
        assert_eq!(t.read(&format!("{A}/pids.max")), "max");
        Ok(())
    }

    #[test]
    fn invalid_limits_create_nothing() {
        let (t, m) = unified(true);
        let bad = CgroupLimits {
            cpu_quota: Some(f64::NAN),
            ..Default::default()
        };
        assert!(matches!(
            m.create("a", &bad),
            Err(CgroupError::InvalidLimit("cpu"))
        ));
        assert!(!t.exists(A));
    }

    #[test]
    fn kill_all_writes_cgroup_kill() -> Result<(), CgroupError> {
        let (t, m) = unified(true);
        m.create("a", &CgroupLimits::default())?;
        m.add_process("a", 11)?;
        assert_eq!(m.pids("a")?, vec![11]);
        m.kill_all("a")?;
        assert!(m.pids("a")?.is_empty());
        assert!(t.writes().iter().any(|(p, _)| p.ends_with("a/cgroup.kill")));
        Ok(())
    }

    #[test]
    fn kill_all_without_cgroup_kill_freezes_and_signals() -> Result<(), CgroupError> {
        let (t, m) = unified(false);
        m.create("a", &CgroupLimits::default())?;
        m.add_process("a", 11)?;
        m.add_process("a", 12)?;
        m.kill_all("a")?;
        assert_eq!(t.killed(), vec![11, 12]);
        let freezes: Vec<String> = t
            .writes()
            .into_iter()
            .filter(|(p, _)| p.ends_with("cgroup.freeze"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(freezes, vec!["1", "0"]);
        Ok(())
    }

    #[test]
    fn freeze_waits_for_events() -> Result<(), CgroupError> {
        let (t, m) = unified(true);
        m.create("a", &CgroupLimits::default())?;
        m.freeze("a")?;
        assert!(t.read(&format!("{A}/cgroup.events")).contains("frozen 1"));
        m.thaw("a")?;
        assert!(t.read(&format!("{A}/cgroup.events")).contains("frozen 0"));
        Ok(())
    }

    #[test]
    fn stats_parse_v2_files() -> Result<(), CgroupError> {
        let (t, m) = unified(true);
        m.create("a", &CgroupLimits::default())?;
        t.file(&format!("{A}/cpu.stat"), "usage_usec 250\nuser_usec 200\n");
        t.file(&format!("{A}/memory.current"), "8192\n");
        t.file(&format!("{A}/memory.events"), "oom 2\noom_kill 1\n");
        t.file(&format!("{A}/pids.current"), "3\n");
        assert_eq!(
            m.oom_kills("a")?,
            1,
            "the counter alone, from memory.events"
        );
        let stats = m.stats("a")?;
        assert_eq!(
            stats,
            CgroupStats {
                cpu_usage_ns: 250_000,
                memory_bytes: 8192,
                memory_limit_bytes: None,
                pids: 3,
                oom_kills: 1
            }
        );
        Ok(())
    }

    #[test]
    fn destroy_and_list() -> Result<(), CgroupError> {
        let (t, m) = unified(true);
        assert!(m.list()?.is_empty());
        m.create("a", &CgroupLimits::default())?;
        m.add_process("a", 5)?;
        assert_eq!(m.list()?, vec!["a".to_owned()]);
        m.destroy("a")?;
        m.destroy("a")?;
        assert!(!t.exists(A));
        assert!(m.list()?.is_empty());
        assert!(matches!(m.stats("a"), Err(CgroupError::NotFound(_))));
        Ok(())
    }
}
