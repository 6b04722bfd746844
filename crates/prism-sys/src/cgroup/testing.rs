//! A temp directory that imitates cgroupfs, for unit tests of the managers without root.
//!
//! Paths are virtual absolute paths (`/sys/fs/cgroup/...`) mapped under a temp dir. New
//! directories inherit their parent's control files, like cgroupfs; writes to a few files have
//! the kernel's side effects (`cgroup.procs`, `cgroup.kill`, `cgroup.freeze`, memsw ordering).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::SharedIo;
use super::io::CgroupIo;

const MAX: i128 = 9_223_372_036_854_771_712;

#[derive(Debug, Default)]
struct Record {
    writes: Vec<(String, String)>,
    killed: Vec<u32>,
    failures: Vec<(String, i32)>,
    immortal: Vec<u32>,
}

#[derive(Debug, Clone)]
pub(crate) struct FakeIo {
    root: PathBuf,
    record: Arc<Mutex<Record>>,
}

#[derive(Debug)]
pub(crate) struct FakeTree {
    _dir: tempfile::TempDir,
    io: FakeIo,
}

impl FakeTree {
    pub(crate) fn new() -> Self {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("tempdir: {e}"),
        };
        let io = FakeIo {
            root: dir.path().to_path_buf(),
            record: Arc::default(),
        };
        Self { _dir: dir, io }
    }

    pub(crate) fn io(&self) -> FakeIo {
        self.io.clone()
    }

    pub(crate) fn shared(&self) -> SharedIo {
        Arc::new(self.io.clone())
    }

    /// Creates a file (and its directories) with `content`.
    pub(crate) fn file(&self, path: &str, content: &str) {
        let real = self.io.real(Path::new(path));
        if let Some(parent) = real.parent() {
            must(fs::create_dir_all(parent));
        }
        must(fs::write(real, content));
    }

    pub(crate) fn read(&self, path: &str) -> String {
        must(fs::read_to_string(self.io.real(Path::new(path))))
    }

    pub(crate) fn exists(&self, path: &str) -> bool {
        self.io.real(Path::new(path)).exists()
    }

    /// Writes so far as `(path, value)`, in order.
    pub(crate) fn writes(&self) -> Vec<(String, String)> {
        self.io.lock().writes.clone()
    }

    pub(crate) fn killed(&self) -> Vec<u32> {
        self.io.lock().killed.clone()
    }

    /// Makes every later write to `path` fail with `errno`.
    pub(crate) fn fail_writes(&self, path: &str, errno: i32) {
        self.io.lock().failures.push((path.to_owned(), errno));
    }

    /// A process that survives SIGKILL (a stuck task).
    pub(crate) fn immortal(&self, pid: u32) {
        self.io.lock().immortal.push(pid);
    }
}

fn must<T>(r: io::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("fake tree: {e}"),
    }
}

impl FakeIo {
    pub(crate) fn real(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes `pid` from every `cgroup.procs` of the tree, as its death would.
    fn reap(&self, dir: &Path, pid: u32) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                self.reap(&entry.path(), pid)?;
            } else if entry.file_name() == "cgroup.procs" {
                let kept: String = fs::read_to_string(entry.path())?
                    .lines()
                    .filter(|l| l.trim() != pid.to_string())
                    .map(|l| format!("{l}\n"))
                    .collect();
                fs::write(entry.path(), kept)?;
            }
        }
        Ok(())
    }

    fn sigkill(&self, pid: u32) -> io::Result<()> {
        let immortal = {
            let mut record = self.lock();
            record.killed.push(pid);
            record.immortal.contains(&pid)
        };
        if immortal {
            Ok(())
        } else {
            self.reap(&self.root, pid)
        }
    }
}

/// Parses a v1 memory limit (`-1` is unlimited).
fn limit(text: &str) -> i128 {
    match text.trim().parse::<i128>() {
        Ok(-1) | Err(_) => MAX,
        Ok(v) => v,
    }
}

/// What the kernel reads back after a v1 memory limit write (`-1` becomes a page-rounded max).
fn shown_limit(value: &str) -> String {
    if value.trim() == "-1" {
        "9223372036854771712\n".to_owned()
    } else {
        value.to_owned()
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EINVAL)
}

impl CgroupIo for FakeIo {
    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(self.real(path))
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let shown = path.to_string_lossy().into_owned();
        {
            let mut record = self.lock();
            if let Some((_, errno)) = record.failures.iter().find(|(p, _)| *p == shown) {
                return Err(io::Error::from_raw_os_error(*errno));
            }
            record.writes.push((shown, value.to_owned()));
        }
        let real = self.real(path);
        if !real.is_file() {
            return Err(io::Error::from_raw_os_error(nix::libc::ENOENT));
        }
        let dir = real.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = real
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        match name {
            "cgroup.procs" => {
                let mut procs = fs::read_to_string(&real)?;
                procs.push_str(&format!("{}\n", value.trim()));
                fs::write(&real, procs)
            }
            "cgroup.kill" => {
                let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
                for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
                    self.sigkill(pid)?;
                }
                Ok(())
            }
            "cgroup.freeze" => {
                fs::write(&real, value)?;
                let events = format!("populated 0\nfrozen {}\n", value.trim());
                fs::write(dir.join("cgroup.events"), events)
            }
            "memory.limit_in_bytes" => {
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() && limit(value) > limit(&fs::read_to_string(memsw)?) {
                    return Err(einval());
                }
                fs::write(&real, shown_limit(value))
            }
            "memory.memsw.limit_in_bytes" => {
                let mem = fs::read_to_string(dir.join("memory.limit_in_bytes"))?;
                if limit(value) < limit(&mem) {
                    return Err(einval());
                }
                fs::write(&real, shown_limit(value))
            }
            _ => fs::write(&real, value),
        }
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let real = self.real(path);
        fs::create_dir(&real)?;
        let Some(parent) = real.parent() else {
            return Ok(());
        };
        for entry in fs::read_dir(parent)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name();
            let content = match name.to_str().unwrap_or_default() {
                "cgroup.procs" => String::new(),
                "cgroup.events" => "populated 0\nfrozen 0\n".to_owned(),
                "cgroup.freeze" => "0\n".to_owned(),
                "cgroup.subtree_control" => "\n".to_owned(),
                "freezer.state" => "THAWED\n".to_owned(),
                _ => fs::read_to_string(entry.path())?,
            };
            fs::write(real.join(name), content)?;
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let real = self.real(path);
        for entry in fs::read_dir(&real)? {
            if entry?.file_type()?.is_dir() {
                return Err(io::Error::from_raw_os_error(nix::libc::ENOTEMPTY));
            }
        }
        let procs = fs::read_to_string(real.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            return Err(io::Error::from_raw_os_error(nix::libc::EBUSY));
        }
        fs::remove_dir_all(real)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let to = self.real(to);
        if to.exists() {
            return Err(io::Error::from_raw_os_error(nix::libc::EEXIST));
        }
        fs::rename(self.real(from), to)
    }

    fn exists(&self, path: &Path) -> bool {
        self.real(path).exists()
    }

    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.real(path))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn kill(&self, pid: u32) -> io::Result<()> {
        self.sigkill(pid)
    }
}
