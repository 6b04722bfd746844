//! The `Runtime` trait: what every isolation backend (namespaces today, microVMs later) offers the
//! daemon. Calls are blocking (they are syscalls and short waits); async callers wrap them in
//! `tokio::task::spawn_blocking`.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::security::SecurityProfile;

/// One overlay mount of the sandbox's root filesystem: `target` (absolute, inside the sandbox)
/// shows `lowers` (host directories, read-only, first = top) under a private writable upper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMount {
    pub target: PathBuf,
    pub lowers: Vec<PathBuf>,
}

/// The sandbox's root filesystem: the first mount must target `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    pub mounts: Vec<LayerMount>,
}

/// Resource limits. `None` = no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU quota in cores (0.5 = half a core).
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// Bytes the writable layer may hold.
    pub disk_bytes: Option<u64>,
}

/// Everything a backend needs to start a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Opaque id: `[a-z0-9-]{1,64}`; names the sandbox's directory and cgroup.
    pub id: String,
    pub hostname: String,
    pub rootfs: RootfsSpec,
    pub limits: Limits,
    /// Capabilities, seccomp, masked paths and rlimits (default: [`SecurityProfile::default`]).
    #[serde(default)]
    pub security: SecurityProfile,
}

/// What the daemon must persist to find a running sandbox again after its own restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxHandle {
    pub id: String,
    /// Host pid of the sandbox's PID 1 (prism-agent).
    pub pid: u32,
    /// `starttime` of that pid (field 22 of /proc/PID/stat): tells a recycled pid from ours.
    pub pid_start_time: u64,
    /// First host uid/gid of the sandbox's 65536-id range.
    pub uid_base: u32,
    /// Unix socket where prism-agent serves HTTP (reachable from the host only).
    pub agent_socket: PathBuf,
}

/// Usage counters of one sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxStats {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
    pub oom_kills: u64,
    pub disk_bytes: u64,
    /// Bytes the sandbox's processes (living and reaped) read from / wrote to storage.
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// A stopped sandbox's writable layers as the host sees them (see
/// [`Runtime::writable_layers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritableLayers {
    /// The upper directory of each mount of the sandbox's [`RootfsSpec`], in its order.
    pub uppers: Vec<PathBuf>,
    /// Host uid/gid that is id 0 inside the sandbox: files in the uppers are owned by
    /// `uid_base + id`.
    pub uid_base: u32,
}

/// Failures of a runtime backend.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("no free uid range for a new sandbox")]
    NoUidRange,
    #[error("{op} failed")]
    Sys {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox did not start: {0}")]
    StartFailed(String),
}

/// An isolation backend. Implementations: `namespace::NamespaceRuntime` (default).
pub trait Runtime: Send + Sync + 'static {
    /// Short backend name (`namespace`, `microvm`).
    fn name(&self) -> &'static str;

    /// Prepare the sandbox (directories, writable layer, cgroup) and start its PID 1, the agent.
    /// The agent socket accepts connections when this returns (the listening socket is made by
    /// the host before the sandbox starts). Calling it again after `stop` keeps the writable layer.
    fn start(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError>;

    /// Kill every process of the sandbox; keep its writable layer and cgroup settings.
    fn stop(&self, handle: &SandboxHandle) -> Result<(), RuntimeError>;

    /// Kill everything and remove the sandbox's cgroup, directories and uid range. Idempotent:
    /// destroying an unknown or half-created sandbox succeeds.
    fn destroy(&self, id: &str) -> Result<(), RuntimeError>;

    /// After a daemon restart: is this sandbox still running (same pid, same start time)? Marks
    /// its uid range as taken when it is.
    fn adopt(&self, handle: &SandboxHandle) -> Result<bool, RuntimeError>;

    /// A pidfd of the sandbox's PID 1: readable once it has exited.
    fn pidfd(&self, handle: &SandboxHandle) -> Result<OwnedFd, RuntimeError>;

    /// Collect PID 1's exit status if it was our child and has exited (non-blocking: a pool
    /// claim calls it on an async thread).
    fn reap(&self, handle: &SandboxHandle) -> Result<Option<i32>, RuntimeError>;

    /// Current usage counters.
    fn stats(&self, handle: &SandboxHandle) -> Result<SandboxStats, RuntimeError>;

    /// [`SandboxStats::oom_kills`] alone: read before and after every exec, on the async
    /// thread of the request, so it must be cheap and must not block (the full
    /// [`Runtime::stats`] also walks the writable layer for its disk usage).
    fn oom_kills(&self, handle: &SandboxHandle) -> Result<u64, RuntimeError> {
        self.stats(handle).map(|s| s.oom_kills)
    }

    /// Ids of sandboxes that have something on this host (directories, cgroups): the janitor
    /// destroys those with no record.
    fn leftovers(&self) -> Result<Vec<String>, RuntimeError>;

    /// Wait until every destroyed sandbox is completely gone from the host (a backend may
    /// finish a destroy in the background); false if something is still being torn down after
    /// `timeout`. Called before the daemon exits.
    fn settle(&self, timeout: std::time::Duration) -> bool {
        let _ = timeout;
        true
    }

    /// The writable layers of a stopped sandbox, to read (template builds capture them). The
    /// caller must not write there, and must not start the sandbox while it reads.
    fn writable_layers(&self, id: &str) -> Result<WritableLayers, RuntimeError> {
        Err(RuntimeError::InvalidSpec(format!(
            "the {} runtime cannot capture the writable layer of {id}",
            self.name()
        )))
    }
}
