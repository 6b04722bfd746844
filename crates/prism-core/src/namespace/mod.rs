//! The default backend: a sandbox is a process tree in fresh user, pid, mount, ipc, uts, cgroup
//! and network namespaces (the network one usually made ahead, see `netpool.rs`), with an
//! overlay root over idmapped read-only host directories, limits from a cgroup, and
//! `prism-agent` as PID 1.

mod ahead;
mod devskel;
mod disk;
mod layout;
mod locate;
mod netpool;
mod plan;
mod slots;
mod spare;
mod teardown;
#[cfg(test)]
mod tests;
mod trash;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prism_sys::cgroup::{CgroupError, CgroupLimits, CgroupManager};
use prism_sys::ids::IdMap;
use prism_sys::launch::{LaunchConfig, launch};

use layout::read_uid_base;
pub use locate::locate_agent;
pub use netpool::{DEFAULT_NETNS_POOL, NetnsPool};
pub use plan::{MountPlan, PlanOptions, SandboxDirs, plan};
pub use slots::DEFAULT_ID_CLAIMS;
use slots::Slots;
pub use spare::DEFAULT_SPARE_DIRS;

use crate::runtime::{
    Runtime, RuntimeError, SandboxHandle, SandboxSpec, SandboxStats, WritableLayers,
};

/// Ids per sandbox (uids and gids 0..65535 inside).
pub const IDS_PER_SANDBOX: u32 = 65536;

/// Settings of the namespace runtime.
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    /// `<state>/sandboxes` holds one directory per sandbox.
    pub sandboxes_dir: PathBuf,
    /// Host path of the static `prism-agent` binary.
    pub agent_path: PathBuf,
    /// Network namespaces kept ready for starts (0: every sandbox makes its own at its clone);
    /// see `netpool.rs`.
    pub netns_pool: usize,
    /// Sandbox directories kept ready for first starts (0: each first start makes its own),
    /// see `spare.rs`; as many cgroup sets are made ahead where the cgroup manager can
    /// (`CgroupManager::keep_spares`).
    pub spare_dirs: usize,
    /// A sandbox's `fsync`/`sync` reach the disk, and each teardown syncs the filesystem of
    /// `sandboxes_dir` (overlayfs's default). Off by default: the writable layers are mounted
    /// `volatile`, so tearing a sandbox down does not flush every dirty page of that
    /// filesystem (the host's root fs, usually) and a sandbox cannot force such flushes; its
    /// files survive a daemon crash, not a host crash (see docs/security.md).
    pub fsync_sandboxes: bool,
    /// Where the runtime claims its sandboxes' host id ranges host-wide, so that two runtimes
    /// on one host never share one (`slots.rs`; default [`DEFAULT_ID_CLAIMS`]). `None`: ranges
    /// are unique within this runtime only.
    pub id_claims: Option<PathBuf>,
}

/// How long a start waits for the teardown of an earlier sandbox with the same id.
const TEARDOWN_WAIT: Duration = Duration::from_secs(30);

/// The namespace runtime.
#[derive(Debug)]
pub struct NamespaceRuntime {
    host: Arc<Host>,
    /// pidfds of the sandbox inits we started (our children, to reap).
    children: Mutex<HashMap<String, OwnedFd>>,
    teardowns: teardown::Teardowns,
    netns: NetnsPool,
    spares: spare::Spares,
}

/// What the runtime and its teardown thread share.
#[derive(Debug)]
struct Host {
    cfg: NamespaceConfig,
    cgroups: Box<dyn CgroupManager>,
    slots: Slots,
    trash: trash::Trash,
    /// The prepared `/dev` shared by every sandbox (none on a `nodev` state directory).
    dev_skeleton: Option<PathBuf>,
}

fn sys(op: &'static str) -> impl FnOnce(io::Error) -> RuntimeError {
    move |source| RuntimeError::Sys { op, source }
}

/// `[a-z0-9-]{1,64}`, not starting with '-'.
pub fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "invalid sandbox id {id:?}"
        )))
    }
}

impl NamespaceConfig {
    /// Sandboxes in `sandboxes_dir`, the agent at `agent_path`, the default pools.
    pub fn new(sandboxes_dir: PathBuf, agent_path: PathBuf) -> Self {
        Self {
            sandboxes_dir,
            agent_path,
            netns_pool: DEFAULT_NETNS_POOL,
            spare_dirs: DEFAULT_SPARE_DIRS,
            fsync_sandboxes: false,
            id_claims: Some(PathBuf::from(DEFAULT_ID_CLAIMS)),
        }
    }
}

impl NamespaceRuntime {
    pub fn new(
        cfg: NamespaceConfig,
        cgroups: Box<dyn CgroupManager>,
    ) -> Result<Self, RuntimeError> {
        fs::create_dir_all(&cfg.sandboxes_dir).map_err(sys("creating the sandboxes directory"))?;
        // Each sandbox's directory (and the inodes made in it: its skeleton, the overlay's work
        // files, what the sandbox writes) in a block group of its own, away from the inodes
        // earlier sandboxes freed: ext4 without a journal skips every inode freed in the last
        // minutes when it allocates one, which made each new inode of a busy group cost ~0.4 ms.
        match prism_sys::fs::spread_subdirs(&cfg.sandboxes_dir) {
            Ok(spread) => tracing::debug!(message = "sandbox directories", spread),
            Err(error) => {
                tracing::warn!(message = "cannot spread the sandbox directories", %error)
            }
        }
        if !cfg.agent_path.is_file() {
            return Err(RuntimeError::InvalidSpec(format!(
                "agent binary {} not found (build it with `cargo build -p prism-agent --target x86_64-unknown-linux-musl`)",
                cfg.agent_path.display()
            )));
        }
        let trash =
            trash::Trash::new(&cfg.sandboxes_dir).map_err(sys("creating the trash directory"))?;
        let slots = Slots::new(
            cfg.id_claims
                .as_deref()
                .map(|dir| (dir, cfg.sandboxes_dir.as_path())),
        )
        .map_err(sys("creating the id-range claims directory"))?;
        // Directories of existing sandboxes keep their id ranges (dot-entries are ours: the
        // trash, the /dev skeleton, spares).
        if let Ok(entries) = fs::read_dir(&cfg.sandboxes_dir) {
            for e in entries.flatten() {
                if e.file_name().as_encoded_bytes().starts_with(b".") {
                    continue;
                }
                if let Some(base) = read_uid_base(&SandboxDirs {
                    root: e.path(),
                    quota: false,
                }) && let Err(error) = slots.take(base)
                {
                    tracing::error!(
                        message = "a sandbox's id range is claimed by another runtime",
                        sandbox = %e.file_name().to_string_lossy(),
                        %error
                    );
                }
            }
        }
        slots.sweep();
        let dev_skeleton = devskel::ensure(&cfg.sandboxes_dir);
        let netns = NetnsPool::isolated(cfg.netns_pool).map_err(sys("starting the netns pool"))?;
        // Cgroups made ahead where the manager can; without them creates make their own.
        if let Err(error) = cgroups.keep_spares(cfg.spare_dirs) {
            tracing::warn!(%error, "no cgroups made ahead");
        }
        let host = Arc::new(Host {
            dev_skeleton,
            cfg,
            cgroups,
            slots,
            trash,
        });
        let teardowns =
            teardown::Teardowns::new(host.clone()).map_err(sys("starting the teardown thread"))?;
        let spares = spare::Spares::new(&host, host.cfg.spare_dirs)
            .map_err(sys("starting the spare directories' thread"))?;
        Ok(Self {
            host,
            children: Mutex::new(HashMap::new()),
            teardowns,
            netns,
            spares,
        })
    }

    fn dirs(&self, id: &str) -> SandboxDirs {
        self.host.dirs(id)
    }

    /// The settings this runtime was made with.
    pub fn config(&self) -> &NamespaceConfig {
        &self.host.cfg
    }

    /// Network namespaces made ahead and ready for the next starts.
    pub fn netns_ready(&self) -> usize {
        self.netns.ready()
    }

    /// Sandbox directories made ahead and ready for the next first starts.
    pub fn spares_ready(&self) -> usize {
        self.spares.ready()
    }

    /// Give the sandbox its directory (first start: a spare renamed into place, or made here)
    /// and make what is missing of it; returns its id range and, from a spare, the agent's
    /// socket already bound and possibly its writable layers' overlays.
    fn prepare_dirs(
        &self,
        spec: &SandboxSpec,
        dirs: &SandboxDirs,
    ) -> Result<DirsReady, RuntimeError> {
        let shape = layout::shape(&spec.rootfs);
        let recorded = read_uid_base(dirs);
        let (base, listener, overlays) = match recorded {
            Some(base) => {
                self.host
                    .slots
                    .take(base)
                    .map_err(|e| RuntimeError::StartFailed(e.to_string()))?;
                (base, None, Vec::new())
            }
            None => match (!dirs.quota)
                .then(|| self.spares.install(dirs, &spec.rootfs))
                .flatten()
            {
                Some(s) => (s.base, Some(s.listener), s.overlays),
                None => {
                    let base = self
                        .host
                        .slots
                        .allocate()
                        .map_err(sys("claiming a host id range"))?
                        .ok_or(RuntimeError::NoUidRange)?;
                    layout::create_root(dirs, base)
                        .map_err(sys("creating the sandbox directory"))?;
                    (base, None, Vec::new())
                }
            },
        };
        if dirs.quota {
            disk::ensure_mounted(dirs, spec.limits.disk_bytes.unwrap_or(0), base)
                .map_err(|e| RuntimeError::StartFailed(error_chain(&e)))?;
        }
        if listener.is_none() {
            // A spare was built in this shape already; anything else may lack a part.
            layout::build(dirs, &shape, base).map_err(sys("creating the writable layer"))?;
        }
        if recorded.is_some() {
            layout::reset_workdirs(dirs, shape.len())
                .map_err(sys("resetting the writable layers' work directories"))?;
        } else {
            layout::write_identity(dirs, &spec.hostname, base)
                .map_err(sys("writing /etc identity files"))?;
        }
        let ids = IdMap {
            base,
            count: IDS_PER_SANDBOX,
        };
        Ok(DirsReady {
            ids,
            listener,
            overlays,
        })
    }

    fn launch(
        &self,
        spec: &SandboxSpec,
        dirs: &SandboxDirs,
        ready: DirsReady,
    ) -> Result<SandboxHandle, RuntimeError> {
        let DirsReady {
            ids,
            listener,
            overlays,
        } = ready;
        // A sandbox that must own its network namespace makes it at its clone.
        let netns = if spec.security.needs_own_netns() {
            None
        } else {
            self.netns.take()
        };
        let opts = PlanOptions {
            dev_skeleton: self.host.dev_skeleton.clone(),
            sysfs: spec.security.sysfs,
            premade_netns: netns.is_some(),
            fsync: self.host.cfg.fsync_sandboxes,
            premade_layers: !overlays.is_empty(),
        };
        let mut plan = plan(dirs, &spec.rootfs, &spec.hostname, &opts)?;
        plan.add_security(dirs, &spec.security)?;
        let hardening = spec.security.hardening(!self.host.cfg.fsync_sandboxes)?;
        let socket = dirs.agent_socket();
        let listener = match listener {
            Some(l) => l,
            None => {
                let _ = fs::remove_file(&socket);
                UnixListener::bind(&socket).map_err(sys("binding the agent socket"))?
            }
        };
        let stderr = fs::File::options()
            .create(true)
            .append(true)
            .open(dirs.agent_log())
            .map_err(sys("opening the agent log"))?;
        let cfg = LaunchConfig {
            ids,
            trees: plan.trees,
            device_tree: plan.device_tree,
            steps: plan.steps,
            exe: self.host.cfg.agent_path.clone(),
            argv: vec!["prism-agent".into(), "--listen-fd".into(), "3".into()],
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                format!("PRISM_SANDBOX_ID={}", spec.id),
                format!("HOSTNAME={}", spec.hostname),
            ],
            fd3: listener.into(),
            stderr: stderr.into(),
            hardening,
            netns,
            mounts: overlays,
        };
        let launched = launch(&cfg, &mut |pid| {
            self.host
                .cgroups
                .add_process(&spec.id, pid)
                .map_err(io::Error::other)
        })
        .map_err(|e| RuntimeError::StartFailed(error_chain(&e)))?;
        let pid_start_time = prism_sys::proc::start_time(launched.pid)
            .map_err(sys("reading the init's start time"))?;
        self.lock_children().insert(spec.id.clone(), launched.pidfd);
        Ok(SandboxHandle {
            id: spec.id.clone(),
            pid: launched.pid,
            pid_start_time,
            uid_base: ids.base,
            agent_socket: socket,
        })
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, HashMap<String, OwnedFd>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pidfd for the handle's process, if it is still the same process.
    fn open_pidfd(&self, handle: &SandboxHandle) -> Result<Option<OwnedFd>, RuntimeError> {
        let fd = match prism_sys::proc::pidfd_open(handle.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(prism_sys::proc::ESRCH) => return Ok(None),
            Err(e) => {
                return Err(RuntimeError::Sys {
                    op: "pidfd_open",
                    source: e,
                });
            }
        };
        match prism_sys::proc::start_time(handle.pid) {
            Ok(t) if t == handle.pid_start_time => Ok(Some(fd)),
            _ => Ok(None),
        }
    }

    /// Kill every process of the sandbox and reap its init if it was ours.
    ///
    /// Killing the init of a pid namespace makes the kernel kill every other process in it, and
    /// the init is only reaped once they are all gone: so waiting for the init usually leaves the
    /// cgroup empty already, and the cgroup sweep after it is for anything that was not.
    fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        let child = self.lock_children().remove(id);
        if let Some(fd) = child {
            let _ = prism_sys::proc::pidfd_kill(&fd, prism_sys::proc::SIGKILL);
            let _ = prism_sys::proc::pidfd_wait(&fd);
        }
        match self.host.cgroups.kill_all(id) {
            Ok(()) | Err(CgroupError::NotFound(_)) => Ok(()),
            Err(e) => Err(RuntimeError::StartFailed(error_chain(&e))),
        }
    }
}

/// A sandbox's directory made ready for its start (see `prepare_dirs`).
struct DirsReady {
    ids: IdMap,
    /// The agent's socket, already bound (from a spare).
    listener: Option<UnixListener>,
    /// Its writable layers' overlays, mounted ahead (from a spare), or none.
    overlays: Vec<OwnedFd>,
}

impl Host {
    fn dirs(&self, id: &str) -> SandboxDirs {
        let dirs = SandboxDirs::new(&self.cfg.sandboxes_dir, id);
        let quota = disk::has_quota(&dirs);
        dirs.with_quota(quota)
    }

    /// The background half of destroy: reap the killed init (`pidfd`, if it was our child),
    /// kill whatever is left in the cgroup and remove it, unmount the disk image, discard the
    /// directory, and release the uid range last.
    fn finish_destroy(&self, id: &str, pidfd: Option<OwnedFd>) -> Result<(), RuntimeError> {
        let t0 = std::time::Instant::now();
        if let Some(fd) = pidfd {
            let _ = prism_sys::proc::pidfd_wait(&fd);
        }
        let t1 = std::time::Instant::now();
        self.cgroups
            .destroy(id)
            .map_err(|e| RuntimeError::StartFailed(error_chain(&e)))?;
        let t2 = std::time::Instant::now();
        let dirs = self.dirs(id);
        disk::unmount(&dirs).map_err(|e| RuntimeError::StartFailed(error_chain(&e)))?;
        let base = read_uid_base(&dirs);
        self.trash
            .discard(&dirs.root)
            .map_err(sys("removing the sandbox directory"))?;
        if let Some(base) = base {
            self.slots.release(base);
        }
        tracing::debug!(
            message = "teardown timing",
            sandbox_id = %id,
            exit_us = (t1 - t0).as_micros() as u64,
            cgroup_us = (t2 - t1).as_micros() as u64,
            dirs_us = t2.elapsed().as_micros() as u64,
        );
        Ok(())
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn cgroup_limits(spec: &SandboxSpec) -> CgroupLimits {
    CgroupLimits {
        cpu_quota: spec.limits.cpus,
        memory_bytes: spec.limits.memory_bytes,
        pids: spec.limits.pids,
    }
}

fn dir_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            total += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

impl Runtime for NamespaceRuntime {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn start(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        validate_id(&spec.id)?;
        if !self.teardowns.wait_for(&spec.id, TEARDOWN_WAIT) {
            return Err(RuntimeError::StartFailed(format!(
                "the previous sandbox {} is still being torn down",
                spec.id
            )));
        }
        let dirs = self.dirs(&spec.id);
        // The quota is decided at the first start: an existing image keeps being used.
        let quota = dirs.quota || spec.limits.disk_bytes.is_some();
        let dirs = dirs.with_quota(quota);
        let t0 = std::time::Instant::now();
        let ready = match self.prepare_dirs(spec, &dirs) {
            Ok(prepared) => prepared,
            Err(e) => {
                let _ = disk::unmount(&dirs);
                return Err(e);
            }
        };
        let premade_layers = !ready.overlays.is_empty();
        let t1 = std::time::Instant::now();
        self.host
            .cgroups
            .create(&spec.id, &cgroup_limits(spec))
            .map_err(|e| RuntimeError::InvalidSpec(error_chain(&e)))?;
        let t2 = std::time::Instant::now();
        match self.launch(spec, &dirs, ready) {
            Ok(h) => {
                tracing::debug!(
                    message = "start timing",
                    sandbox_id = %spec.id,
                    premade_layers,
                    dirs_us = (t1 - t0).as_micros() as u64,
                    cgroup_us = (t2 - t1).as_micros() as u64,
                    launch_us = t2.elapsed().as_micros() as u64,
                );
                Ok(h)
            }
            Err(e) => {
                let _ = self.kill(&spec.id);
                let _ = disk::unmount(&dirs);
                Err(e)
            }
        }
    }

    fn stop(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        validate_id(&handle.id)?;
        if let Some(fd) = self.open_pidfd(handle)? {
            let _ = prism_sys::proc::pidfd_kill(&fd, prism_sys::proc::SIGKILL);
            // Not our child after a daemon restart: wait for its exit without reaping it.
            let _ = prism_sys::proc::pidfd_wait_exit(&fd, std::time::Duration::from_secs(5));
        }
        self.kill(&handle.id)?;
        let dirs = self.dirs(&handle.id);
        let _ = fs::remove_file(dirs.agent_socket());
        disk::unmount(&dirs).map_err(|e| RuntimeError::StartFailed(error_chain(&e)))?;
        Ok(())
    }

    /// Kills the sandbox and returns; the rest of the teardown (reaping, cgroup, mounts,
    /// directories, uid range) finishes in the background (see `teardown.rs`). A start with the
    /// same id waits for it; [`NamespaceRuntime::settle`] waits for all of them.
    fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        if !self.teardowns.reserve(id) {
            return Ok(());
        }
        let pidfd = self.lock_children().remove(id);
        if let Some(fd) = &pidfd {
            // Killing a pid namespace's init kills every process in it.
            let _ = prism_sys::proc::pidfd_kill(fd, prism_sys::proc::SIGKILL);
        }
        self.teardowns.submit(
            &self.host,
            teardown::Job {
                id: id.to_string(),
                pidfd,
            },
        )
    }

    fn settle(&self, timeout: Duration) -> bool {
        self.teardowns.wait_all(timeout)
    }

    fn adopt(&self, handle: &SandboxHandle) -> Result<bool, RuntimeError> {
        validate_id(&handle.id)?;
        if let Err(error) = self.host.slots.take(handle.uid_base) {
            // It runs in that range either way; the other runtime's sandbox shares it.
            tracing::error!(
                message = "an adopted sandbox's id range is claimed by another runtime",
                sandbox = %handle.id,
                %error
            );
        }
        Ok(self.open_pidfd(handle)?.is_some())
    }

    fn pidfd(&self, handle: &SandboxHandle) -> Result<OwnedFd, RuntimeError> {
        self.open_pidfd(handle)?
            .ok_or_else(|| RuntimeError::NotFound(handle.id.clone()))
    }

    fn reap(&self, handle: &SandboxHandle) -> Result<Option<i32>, RuntimeError> {
        let mut children = self.lock_children();
        let Some(fd) = children.get(&handle.id) else {
            return Ok(None);
        };
        let status = prism_sys::proc::pidfd_try_wait(fd).map_err(sys("waitid"))?;
        Ok(status.map(|s| {
            children.remove(&handle.id);
            match s {
                prism_sys::proc::ExitStatus::Exited(c) => c,
                prism_sys::proc::ExitStatus::Signaled(sig) => 128 + sig,
            }
        }))
    }

    fn stats(&self, handle: &SandboxHandle) -> Result<SandboxStats, RuntimeError> {
        let c = self
            .host
            .cgroups
            .stats(&handle.id)
            .map_err(|e| RuntimeError::NotFound(error_chain(&e)))?;
        // Every process of the sandbox is in its cgroup, and the counters of the dead ones are
        // folded into whoever reaped them (ultimately the agent, PID 1): the sum over the living
        // is the sandbox's total.
        let mut io = prism_sys::proc::IoCounters::default();
        for pid in self.host.cgroups.pids(&handle.id).unwrap_or_default() {
            if let Ok(c) = prism_sys::proc::io_counters(pid) {
                io.read_bytes += c.read_bytes;
                io.write_bytes += c.write_bytes;
            }
        }
        Ok(SandboxStats {
            io_read_bytes: io.read_bytes,
            io_write_bytes: io.write_bytes,
            cpu_usage_ns: c.cpu_usage_ns,
            memory_bytes: c.memory_bytes,
            memory_limit_bytes: c.memory_limit_bytes,
            pids: c.pids,
            oom_kills: c.oom_kills,
            disk_bytes: dir_usage(&self.dirs(&handle.id).layers().join("upper")),
        })
    }

    fn oom_kills(&self, handle: &SandboxHandle) -> Result<u64, RuntimeError> {
        self.host
            .cgroups
            .oom_kills(&handle.id)
            .map_err(|e| RuntimeError::NotFound(error_chain(&e)))
    }

    fn leftovers(&self) -> Result<Vec<String>, RuntimeError> {
        let mut ids: Vec<String> = self
            .host
            .cgroups
            .list()
            .map_err(|e| RuntimeError::StartFailed(error_chain(&e)))?;
        if let Ok(entries) = fs::read_dir(&self.host.cfg.sandboxes_dir) {
            ids.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        ids.sort();
        ids.dedup();
        // A sandbox whose teardown is under way is no orphan.
        let pending = self.teardowns.pending();
        ids.retain(|id| validate_id(id).is_ok() && !pending.contains(id));
        Ok(ids)
    }

    fn writable_layers(&self, id: &str) -> Result<WritableLayers, RuntimeError> {
        validate_id(id)?;
        let dirs = self.dirs(id);
        if self.lock_children().contains_key(id) {
            return Err(RuntimeError::InvalidSpec(format!(
                "sandbox {id} is running: stop it before capturing its writable layer"
            )));
        }
        let uid_base = read_uid_base(&dirs).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if dirs.quota {
            // A stopped sandbox's disk image is unmounted: mount it again (host side only;
            // the next start or the destroy finds it mounted and unmounts it).
            disk::ensure_mounted(&dirs, 0, uid_base)
                .map_err(|e| RuntimeError::StartFailed(error_chain(&e)))?;
        }
        let uppers = (0..)
            .map(|i| dirs.upper(i))
            .take_while(|p| p.is_dir())
            .collect();
        Ok(WritableLayers { uppers, uid_base })
    }
}
