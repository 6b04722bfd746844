//! Cgroup management for sandboxes: cgroup v1 and v2 behind one [`CgroupManager`] trait.
//!
//! Every cgroup Prism creates lives under one parent (default [`DEFAULT_PARENT`], `prism`):
//! `/sys/fs/cgroup/prism/<id>` on v2, `/sys/fs/cgroup/<controller>/prism/<id>` on v1. [`detect`]
//! reads `/proc/self/mountinfo` and picks v2 when a cgroup2 mount has the `cpu`, `memory` and
//! `pids` controllers, v1 otherwise. On a hybrid host the v1 manager also joins the (empty) cgroup2
//! hierarchy so that `cgroup.kill` can kill the whole sandbox in one write.
//!
//! ```no_run
//! use prism_sys::cgroup::{self, CgroupLimits};
//!
//! # fn main() -> Result<(), prism_sys::cgroup::CgroupError> {
//! let cgroups = cgroup::detect(cgroup::DEFAULT_PARENT)?;
//! let limits = CgroupLimits { cpu_quota: Some(0.5), memory_bytes: Some(256 << 20), pids: Some(64) };
//! cgroups.create("sbx-1", &limits)?;
//! cgroups.add_process("sbx-1", 4242)?;
//! let stats = cgroups.stats("sbx-1")?;
//! println!("{} ns of CPU, {} OOM kills", stats.cpu_usage_ns, stats.oom_kills);
//! cgroups.destroy("sbx-1")?;
//! # Ok(())
//! # }
//! ```
//!
//! All kernel access goes through [`CgroupIo`], so the limit-writing logic is unit-tested against
//! a temp directory imitating a cgroup tree. [`FakeCgroupManager`] is an in-memory manager for
//! tests of the layers above.

mod detect;
mod fake;
mod io;
mod v1;
mod v2;

#[cfg(test)]
mod testing;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub use detect::{detect, detect_from_mountinfo};
pub use fake::{FakeCall, FakeCgroupManager};
pub use io::{CgroupIo, KernelIo};
pub use v1::{V1Hierarchies, V1Manager};
pub use v2::V2Manager;

/// Parent cgroup of every sandbox cgroup, unless configured otherwise.
pub const DEFAULT_PARENT: &str = "prism";

/// How long [`CgroupManager::kill_all`], freezing and thawing wait before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Resource limits of one sandbox. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    /// CPU bandwidth in cores (0.5 = half a core per 100 ms period).
    pub cpu_quota: Option<f64>,
    /// Memory limit in bytes (swap is disabled for sandboxes).
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
}

/// Resource usage of one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time consumed, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory currently charged, in bytes.
    pub memory_bytes: u64,
    /// Memory limit in bytes, `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Number of tasks currently in the cgroup.
    pub pids: u64,
    /// How many processes the kernel OOM killer killed in this cgroup (monotonic).
    pub oom_kills: u64,
}

/// Which cgroup flavour a manager drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy per-controller hierarchies; `unified_kill` tells whether a hybrid host's cgroup2
    /// hierarchy is joined for `cgroup.kill`.
    V1 {
        /// Whether the cgroup2 hierarchy of a hybrid host is used.
        unified_kill: bool,
    },
    /// The unified hierarchy.
    V2,
}

/// Manages the cgroups of sandboxes, identified by `id`, under one parent.
pub trait CgroupManager: Send + Sync + std::fmt::Debug {
    /// Which cgroup flavour this manager drives.
    fn version(&self) -> CgroupVersion;
    /// Creates the cgroup of `id` (if missing) and applies `limits`; `None` limits are reset to
    /// unlimited, so calling it again converges an existing cgroup to `limits`.
    fn create(&self, id: &str, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Moves process `pid` (and its future children) into the cgroup of `id`.
    fn add_process(&self, id: &str, pid: u32) -> Result<(), CgroupError>;
    /// Processes (thread-group ids) currently in the cgroup of `id`.
    fn pids(&self, id: &str) -> Result<Vec<u32>, CgroupError>;
    /// SIGKILLs every process of the cgroup, race-free against forks, and returns once the cgroup
    /// is empty ([`CgroupError::Timeout`] after the manager's timeout).
    fn kill_all(&self, id: &str) -> Result<(), CgroupError>;
    /// Freezes every process of the cgroup; returns once they are all frozen.
    fn freeze(&self, id: &str) -> Result<(), CgroupError>;
    /// Thaws a frozen cgroup.
    fn thaw(&self, id: &str) -> Result<(), CgroupError>;
    /// Current resource usage of the cgroup.
    fn stats(&self, id: &str) -> Result<CgroupStats, CgroupError>;
    /// [`CgroupStats::oom_kills`] alone (one file read where the manager can), for hot paths.
    fn oom_kills(&self, id: &str) -> Result<u64, CgroupError> {
        self.stats(id).map(|s| s.oom_kills)
    }
    /// Kills every process and removes the cgroup from every hierarchy. A missing cgroup is fine.
    fn destroy(&self, id: &str) -> Result<(), CgroupError>;
    /// Ids of the cgroups present under the parent, in any hierarchy (for orphan cleanup).
    fn list(&self) -> Result<Vec<String>, CgroupError>;
    /// Destroys every cgroup under the parent, then the parent itself in every hierarchy (for
    /// tests and benchmarks that use a parent of their own). A missing parent is fine.
    fn remove_parent(&self) -> Result<(), CgroupError>;
    /// Keep `count` cgroups made ahead for later [`CgroupManager::create`]s, where the manager
    /// can (v1 hierarchies: see `v1/spares.rs`); 0 stops. The default does nothing.
    fn keep_spares(&self, count: usize) -> Result<(), CgroupError> {
        let _ = count;
        Ok(())
    }
}

/// Errors of the cgroup managers.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The sandbox id is not a safe single path component.
    #[error("invalid cgroup id {0:?}")]
    InvalidId(String),
    /// The parent is not a relative path of safe components.
    #[error("invalid cgroup parent {0:?}")]
    InvalidParent(String),
    /// A limit is out of range.
    #[error("invalid {0} limit")]
    InvalidLimit(&'static str),
    /// Pid 0 (or one out of range) cannot be added.
    #[error("invalid pid {0}")]
    InvalidPid(u32),
    /// The cgroup does not exist.
    #[error("cgroup {0:?} does not exist")]
    NotFound(String),
    /// Reading a control file failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a control file failed.
    #[error("cannot write {value:?} to {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Creating a cgroup directory failed.
    #[error("cannot create {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Removing a cgroup directory failed.
    #[error("cannot remove {}", path.display())]
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Listing a directory failed.
    #[error("cannot list {}", path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A control file holds something unexpected.
    #[error("unexpected content {content:?} in {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending text (truncated).
        content: String,
    },
    /// Signalling a process failed.
    #[error("cannot kill process {pid}")]
    Kill {
        /// The process.
        pid: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup did not reach the wanted state in time.
    #[error("cgroup {id:?} not {state} after {waited:?}")]
    Timeout {
        /// The sandbox id.
        id: String,
        /// The state waited for (`empty`, `frozen`, `thawed`).
        state: &'static str,
        /// How long was waited.
        waited: Duration,
    },
    /// The thread that makes cgroups ahead could not start.
    #[error("cannot start the thread that makes cgroups ahead")]
    Thread(#[source] std::io::Error),
    /// No cgroup hierarchy with the needed controllers is mounted.
    #[error("no usable cgroup hierarchy: {0}")]
    Unsupported(String),
}

/// Checks that `id` is one safe path component: `[A-Za-z0-9_.-]`, 1..=128 bytes, not `.`/`..`.
pub fn validate_id(id: &str) -> Result<(), CgroupError> {
    if is_safe_component(id) {
        Ok(())
    } else {
        Err(CgroupError::InvalidId(id.to_owned()))
    }
}

fn validate_parent(parent: &str) -> Result<PathBuf, CgroupError> {
    if !parent.is_empty() && parent.split('/').all(is_safe_component) {
        Ok(PathBuf::from(parent))
    } else {
        Err(CgroupError::InvalidParent(parent.to_owned()))
    }
}

fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// CFS period of a sandbox without a CPU quota (the kernel's default), in microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// CFS period of a sandbox with a quota of at least [`SHORT_PERIOD_MIN_CORES`]. A short period
/// keeps a throttled hog's bursts short: with 100 ms, 8 busy threads under a 0.5-core quota
/// run both cores flat for 25 ms at a time and a neighbour's exec latency went to 2.5-3.8x;
/// with 10 ms it stayed at 1.2-1.9x (adversarial `cpu_hog_does_not_starve_a_neighbour`, 2 cores).
const SHORT_CPU_PERIOD_US: u64 = 10_000;
/// Below this quota the short period would need less than the kernel's 1 ms minimum quota.
const SHORT_PERIOD_MIN_CORES: f64 = 0.1;

/// Converts a quota in cores to `(quota, period)` in microseconds (kernel minimum quota 1 ms).
fn cpu_quota_us(cores: f64) -> Result<(u64, u64), CgroupError> {
    if !cores.is_finite() || cores <= 0.0 || cores > 4096.0 {
        return Err(CgroupError::InvalidLimit("cpu"));
    }
    let period = if cores >= SHORT_PERIOD_MIN_CORES {
        SHORT_CPU_PERIOD_US
    } else {
        CPU_PERIOD_US
    };
    // Bounded above by 4096 cores * 100_000 us, far below u64::MAX.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let quota = (cores * period as f64).round() as u64;
    Ok((quota.max(1_000), period))
}

fn check_limits(limits: &CgroupLimits) -> Result<(), CgroupError> {
    if let Some(cores) = limits.cpu_quota {
        cpu_quota_us(cores)?;
    }
    if limits.memory_bytes == Some(0) || limits.memory_bytes.is_some_and(|b| b > i64::MAX as u64) {
        return Err(CgroupError::InvalidLimit("memory"));
    }
    if limits.pids == Some(0) || limits.pids.is_some_and(|p| p > i64::MAX as u64) {
        return Err(CgroupError::InvalidLimit("pids"));
    }
    Ok(())
}

/// Calls `done` until it returns true or `timeout` passes; returns whether it became true.
fn poll_until(
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Shared handle on the I/O implementation.
type SharedIo = Arc<dyn CgroupIo>;

/// Freeze (`frozen`) or thaw a cgroup through `set`, which waits for the state and answers
/// whether it was reached. A freeze that does not settle is undone (no cgroup is left
/// half-frozen) and reported as a timeout, as is a thaw that does not settle.
fn freeze_or_thaw(
    id: &str,
    timeout: Duration,
    frozen: bool,
    mut set: impl FnMut(bool) -> Result<bool, CgroupError>,
) -> Result<(), CgroupError> {
    if set(frozen)? {
        return Ok(());
    }
    if frozen {
        set(false)?;
    }
    Err(CgroupError::Timeout {
        id: id.to_owned(),
        state: if frozen { "frozen" } else { "thawed" },
        waited: timeout,
    })
}

/// Runs kill rounds until `is_empty` holds or `timeout` passes. `kill_round` gets the round
/// number, so a manager can escalate (for example from `cgroup.kill` to freezer + signals).
fn kill_until_empty(
    id: &str,
    timeout: Duration,
    mut is_empty: impl FnMut() -> Result<bool, CgroupError>,
    mut kill_round: impl FnMut(u32) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut round = 0;
    loop {
        if is_empty()? {
            return Ok(());
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(CgroupError::Timeout {
                id: id.to_owned(),
                state: "empty",
                waited: elapsed,
            });
        }
        tracing::debug!(cgroup = id, round, "kill round");
        kill_round(round)?;
        round += 1;
        let slice = (timeout - elapsed).min(Duration::from_millis(250));
        poll_until(slice, &mut is_empty)?;
    }
}

/// Removes a cgroup directory; missing is fine, `EBUSY` (tasks still leaving) is retried.
fn remove_cgroup_dir(io: &dyn CgroupIo, path: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let mut last = None;
    let removed = poll_until(timeout, || match io.remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
            last = Some(e);
            Ok(false)
        }
        Err(source) => Err(CgroupError::RemoveDir {
            path: path.to_path_buf(),
            source,
        }),
    })?;
    match (removed, last) {
        (false, Some(source)) => Err(CgroupError::RemoveDir {
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(()),
    }
}

/// Names of the sub-directories of `path`; a missing directory has none.
fn list_children(io: &dyn CgroupIo, path: &Path) -> Result<Vec<String>, CgroupError> {
    match io.list_dirs(path) {
        Ok(names) => Ok(names),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::List {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_safe_components() {
        for ok in ["sbx-1", "a", "A_b.c", &"x".repeat(128)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            "../x",
            &"x".repeat(129),
            "a\n",
        ] {
            assert!(
                matches!(validate_id(bad), Err(CgroupError::InvalidId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn parents_may_nest_but_not_escape() {
        assert!(validate_parent("prism").is_ok());
        assert!(validate_parent("system.slice/prism").is_ok());
        for bad in ["", "/prism", "prism/", "a/../b", "a//b"] {
            assert!(validate_parent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_quota_converts_cores_to_microseconds() {
        assert_eq!(cpu_quota_us(0.2).ok(), Some((2_000, 10_000)));
        assert_eq!(cpu_quota_us(2.0).ok(), Some((20_000, 10_000)));
        assert_eq!(
            cpu_quota_us(0.05).ok(),
            Some((5_000, 100_000)),
            "long period"
        );
        assert_eq!(
            cpu_quota_us(0.001).ok(),
            Some((1_000, 100_000)),
            "kernel minimum"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert!(cpu_quota_us(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_reject_zero() {
        let zero_mem = CgroupLimits {
            memory_bytes: Some(0),
            ..Default::default()
        };
        let zero_pids = CgroupLimits {
            pids: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            check_limits(&zero_mem),
            Err(CgroupError::InvalidLimit("memory"))
        ));
        assert!(matches!(
            check_limits(&zero_pids),
            Err(CgroupError::InvalidLimit("pids"))
        ));
        assert!(check_limits(&CgroupLimits::default()).is_ok());
    }

    #[test]
    fn poll_until_times_out_and_succeeds() -> Result<(), CgroupError> {
        let mut n = 0;
        assert!(poll_until(Duration::from_secs(1), || {
            n += 1;
            Ok(n >= 3)
        })?);
        assert!(!poll_until(Duration::from_millis(5), || Ok(false))?);
        Ok(())
    }
}
