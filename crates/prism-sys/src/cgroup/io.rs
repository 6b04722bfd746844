//! Every interaction the cgroup managers have with the kernel: control files, directories and
//! signals. The managers only talk to [`CgroupIo`], so their logic runs against a fake tree.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::CgroupError;

/// The kernel operations a cgroup manager needs.
///
/// [`KernelIo`] is the real implementation; tests use a temp directory that imitates a cgroup
/// tree and a recording signal sender.
pub trait CgroupIo: Send + Sync + std::fmt::Debug {
    /// Reads a whole control file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes `value` to an existing control file in one `write(2)`.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Creates one cgroup directory (the parent must exist).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes one (empty) cgroup directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Renames a cgroup directory within its parent (v1 hierarchies allow it; cgroup2 answers
    /// `EPERM`). The default answers `Unsupported`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _ = (from, to);
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Whether a file or directory exists.
    fn exists(&self, path: &Path) -> bool;
    /// Names of the sub-directories (child cgroups) of `path`.
    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Sends SIGKILL to `pid`. A process that is already gone is not an error.
    fn kill(&self, pid: u32) -> io::Result<()>;
}

/// The real kernel: `/sys/fs/cgroup` files and `kill(2)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelIo;

impl CgroupIo for KernelIo {
    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut file = fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn kill(&self, pid: u32) -> io::Result<()> {
        let Ok(raw) = i32::try_from(pid) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pid out of range",
            ));
        };
        match kill(Pid::from_raw(raw), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(errno) => Err(io::Error::from(errno)),
        }
    }
}

/// Thin helpers that attach the path to every error.
#[derive(Debug, Clone)]
pub(crate) struct Files<'a> {
    pub(crate) io: &'a dyn CgroupIo,
}

impl Files<'_> {
    pub(crate) fn read(&self, path: &Path) -> Result<String, CgroupError> {
        self.io.read(path).map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    pub(crate) fn write(&self, path: &Path, value: &str) -> Result<(), CgroupError> {
        tracing::debug!(path = %path.display(), value, "cgroup write");
        self.io
            .write(path, value)
            .map_err(|source| CgroupError::Write {
                path: path.to_path_buf(),
                value: value.to_owned(),
                source,
            })
    }

    /// Creates `path`; returns whether it was created now (false: it already existed).
    pub(crate) fn create_dir(&self, path: &Path) -> Result<bool, CgroupError> {
        match self.io.create_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(CgroupError::CreateDir {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Reads a `u64` from a single-value file; `max` reads as `None`.
    pub(crate) fn read_u64_or_max(&self, path: &Path) -> Result<Option<u64>, CgroupError> {
        let text = self.read(path)?;
        let text = text.trim();
        if text == "max" {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| parse_error(path, text))
    }

    /// Reads a `u64` from a single-value file.
    pub(crate) fn read_u64(&self, path: &Path) -> Result<u64, CgroupError> {
        self.read_u64_or_max(path)?
            .ok_or_else(|| parse_error(path, "max"))
    }

    /// Reads `key value` lines (`cpu.stat`, `memory.events`, `memory.oom_control`) and returns the
    /// value of `key`, or `None` when the key is absent.
    pub(crate) fn read_keyed(&self, path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
        let text = self.read(path)?;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            if fields.next() == Some(key) {
                let value = fields.next().unwrap_or_default();
                return value.parse().map(Some).map_err(|_| parse_error(path, line));
            }
        }
        Ok(None)
    }

    /// Reads the pids listed in a `cgroup.procs` file.
    pub(crate) fn read_pids(&self, path: &Path) -> Result<Vec<u32>, CgroupError> {
        let text = self.read(path)?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| l.parse().map_err(|_| parse_error(path, l)))
            .collect()
    }

    /// cgroup2: writes `cgroup.freeze` in `dir` and waits for its `cgroup.events` to report
    /// `frozen <value>`.
    pub(crate) fn set_frozen(
        &self,
        dir: &Path,
        frozen: bool,
        timeout: std::time::Duration,
    ) -> Result<bool, CgroupError> {
        let value = u64::from(frozen);
        self.write(&dir.join("cgroup.freeze"), &value.to_string())?;
        let events = dir.join("cgroup.events");
        super::poll_until(timeout, || {
            Ok(self.read_keyed(&events, "frozen")? == Some(value))
        })
    }
}

pub(crate) fn parse_error(path: &Path, content: &str) -> CgroupError {
    CgroupError::Parse {
        path: PathBuf::from(path),
        content: content.chars().take(64).collect(),
    }
}
