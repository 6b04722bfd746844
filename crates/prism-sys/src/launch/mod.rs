//! Start a sandbox's first process: clone it into new namespaces, map its ids, hand it idmapped
//! views of host directories, let it run a prepared list of mount steps, pivot into its new root
//! and exec.
//!
//! The parent (a thread of the multi-threaded daemon) prepares every string and buffer before the
//! clone; the child shares the daemon's memory (`CLONE_VM`, see `clone.rs`) and makes only raw
//! syscalls — no libc function, no allocation, no locks, no writes but to its own stack — until
//! `execveat` (see `child.rs`).
//!
//! Parent and child talk over a `SOCK_SEQPACKET` pair: the parent sends the idmapped mount trees
//! (`SCM_RIGHTS`) once the id maps are written, then places the child in its cgroup while the
//! child mounts (two cores work at once), then sends one byte: the child waits for it before
//! its cgroup namespace, limits and exec ([`Step::UnshareCgroup`]). The child answers with
//! nothing on success (its end is close-on-exec, so the parent reads end-of-file once the exec
//! happened) or with `(step, errno)` on failure.

mod child;
mod clone;
mod harden;
mod prepare;
mod userns;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::ids::IdMap;
pub use harden::{Hardening, Rlimit};
pub use prepare::Prepared;
pub use userns::userns_with;

/// One thing the child does, in order, before it execs. Paths are as the child sees them at
/// that moment (host paths before `PivotRoot`, sandbox paths after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `unshare(CLONE_NEWCGROUP)`. The parent places the child in its cgroup while the child
    /// runs its steps; this step (or, without it, the end of the steps) waits for that. Put it
    /// late so that the mounts before it overlap the placement.
    UnshareCgroup,
    /// Make every mount private so nothing propagates back to the host.
    MakeRootPrivate,
    /// Attach the `tree`-th idmapped tree (see [`LaunchConfig::trees`]) at `target`.
    AttachTree {
        tree: usize,
        target: PathBuf,
    },
    /// Attach the `mount`-th detached mount the caller made (see [`LaunchConfig::mounts`]) at
    /// `target`.
    AttachMount {
        mount: usize,
        target: PathBuf,
    },
    /// `mount(2)`.
    Mount {
        source: String,
        target: PathBuf,
        fstype: Option<String>,
        flags: u64,
        data: Option<String>,
    },
    Mkdir {
        path: PathBuf,
        mode: u32,
    },
    /// Create an empty regular file (a bind-mount target).
    Touch {
        path: PathBuf,
        mode: u32,
    },
    Symlink {
        target: String,
        link: PathBuf,
    },
    /// `pivot_root(new_root, new_root)`, detach the old root, `chdir("/")`.
    PivotRoot {
        new_root: PathBuf,
    },
    /// Bring the loopback interface of the new network namespace up.
    LoopbackUp,
    Hostname(String),
    /// Hide `path` if it exists: an empty read-only tmpfs over a directory, `/dev/null` over
    /// anything else.
    Mask {
        path: PathBuf,
    },
    /// Make `path` read-only if it exists (a read-only bind mount of itself).
    ReadOnly {
        path: PathBuf,
    },
}

/// Mount flags the planner may use in [`Step::Mount`].
pub mod flags {
    pub const RDONLY: u64 = libc::MS_RDONLY;
    pub const NOSUID: u64 = libc::MS_NOSUID;
    pub const NODEV: u64 = libc::MS_NODEV;
    pub const NOEXEC: u64 = libc::MS_NOEXEC;
    pub const BIND: u64 = libc::MS_BIND;
    pub const REC: u64 = libc::MS_REC;
    pub const REMOUNT: u64 = libc::MS_REMOUNT;
}

/// Everything [`launch`] needs.
#[derive(Debug)]
pub struct LaunchConfig {
    pub ids: IdMap,
    /// Host directories to clone as read-only mounts idmapped into the sandbox's user namespace.
    pub trees: Vec<PathBuf>,
    /// The index in `trees` of the one tree whose device nodes stay usable (a prepared `/dev`
    /// holding only safe devices); every other tree is `nodev`.
    pub device_tree: Option<usize>,
    pub steps: Vec<Step>,
    /// Host path of the binary to exec (opened before the clone, so it need not exist inside).
    pub exe: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    /// Becomes fd 3 of the new process (the agent's listening socket).
    pub fd3: OwnedFd,
    /// Becomes fd 2 (stderr) of the new process; stdin and stdout are `/dev/null`.
    pub stderr: OwnedFd,
    /// Limits, capabilities and seccomp applied right before the exec.
    pub hardening: Hardening,
    /// A network namespace made ahead (`crate::netns::create_isolated`) for the sandbox to
    /// start in, instead of a new one of its own (`CLONE_NEWNET`).
    pub netns: Option<OwnedFd>,
    /// Detached mounts made by the caller (e.g. the overlays of a sandbox directory made
    /// ahead, `crate::mount::overlay`), handed to the child with the trees.
    pub mounts: Vec<OwnedFd>,
}

/// A started sandbox init.
#[derive(Debug)]
pub struct Launched {
    pub pid: u32,
    pub pidfd: OwnedFd,
}

/// Failures of [`launch`].
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0} contains a NUL byte")]
    Nul(String),
    #[error("too many idmapped trees ({0}, at most {max})", max = child::MAX_TREES)]
    TooManyTrees(usize),
    #[error("{op} failed")]
    Parent {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("setting up the sandbox failed at step {step} ({what})")]
    Child {
        step: usize,
        what: String,
        #[source]
        source: io::Error,
    },
}

fn parent_err(op: &'static str) -> impl FnOnce(io::Error) -> LaunchError {
    move |source| LaunchError::Parent { op, source }
}

/// Start the process described by `cfg`. `on_spawn(pid)` runs in the parent after the id maps are
/// written and before the child may continue (place it in its cgroup there). If anything fails,
/// the child is killed and reaped before this returns.
pub fn launch(
    cfg: &LaunchConfig,
    on_spawn: &mut dyn FnMut(u32) -> io::Result<()>,
) -> Result<Launched, LaunchError> {
    if cfg.trees.len() + cfg.mounts.len() > child::MAX_TREES {
        return Err(LaunchError::TooManyTrees(
            cfg.trees.len() + cfg.mounts.len(),
        ));
    }
    let t0 = std::time::Instant::now();
    // Boxed: the child reads it through a pointer until it has exec'd or exited.
    let mut prepared = Box::new(Prepared::new(cfg)?);
    let (parent_sock, child_sock) = seqpacket_pair().map_err(parent_err("socketpair"))?;
    prepared.sock = child_sock.as_raw_fd();
    prepared.parent_end = parent_sock.as_raw_fd();
    let mut flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC) as u64;
    // With a namespace made ahead, this thread stands in it for the clone (the child inherits
    // it) and goes back right after, also when the clone failed.
    let in_netns = match &cfg.netns {
        Some(ns) => Some(
            crate::netns::ThreadNetns::enter(std::os::fd::AsFd::as_fd(ns))
                .map_err(parent_err("joining the network namespace"))?,
        ),
        None => {
            flags |= libc::CLONE_NEWNET as u64;
            None
        }
    };
    let stack = clone::ChildStack::take().map_err(parent_err("mapping the child's stack"))?;
    let dumpable = clone::DumpableGuard::new();
    let mut pidfd: RawFd = -1;
    let pid = {
        let blocked = clone::SignalsBlocked::new().map_err(parent_err("blocking signals"))?;
        // SAFETY: every signal is blocked on this thread (until `blocked` drops, right after);
        // `prepared` and `stack` live until the child has exec'd or exited: below, the success
        // path returns only after end-of-file on the launch socket, the error path only after
        // the child was killed and reaped.
        let pid = unsafe { clone::clone_vm(flags, &stack, &prepared, &mut pidfd) };
        drop(blocked);
        pid
    };
    drop(in_netns);
    if pid < 0 {
        stack.give_back();
        drop(dumpable);
        return Err(LaunchError::Parent {
            op: "clone3",
            source: io::Error::from_raw_os_error(-pid as i32),
        });
    }
    drop(child_sock);
    // SAFETY: clone3 stored a new pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let pid = pid as u32;
    let launched = Launched { pid, pidfd };
    let cloned = t0.elapsed();
    let outcome = parent_side(cfg, pid, &parent_sock, on_spawn);
    if outcome.is_err() {
        let _ = crate::proc::pidfd_kill(&launched.pidfd, libc::SIGKILL);
        let _ = crate::proc::pidfd_wait(&launched.pidfd);
    }
    // The child has exec'd (end-of-file), or reported a failure and was reaped: it no longer
    // runs on this memory.
    stack.give_back();
    drop(prepared);
    drop(dumpable);
    match outcome {
        Ok(t) => {
            tracing::debug!(
                message = "launch timing",
                pid,
                premade_netns = cfg.netns.is_some(),
                clone_us = cloned.as_micros() as u64,
                maps_us = t[0].as_micros() as u64,
                cgroup_us = t[1].as_micros() as u64,
                trees_us = t[2].as_micros() as u64,
                child_us = t[3].as_micros() as u64,
            );
            Ok(launched)
        }
        Err(err) => Err(err),
    }
}

fn parent_side(
    cfg: &LaunchConfig,
    pid: u32,
    sock: &OwnedFd,
    on_spawn: &mut dyn FnMut(u32) -> io::Result<()>,
) -> Result<[std::time::Duration; 4], LaunchError> {
    let mut t = std::time::Instant::now();
    let mut lap = || {
        let now = std::time::Instant::now();
        let d = now - t;
        t = now;
        d
    };
    cfg.ids
        .write_maps(pid)
        .map_err(parent_err("writing id maps"))?;
    let maps = lap();
    // The trees first: the child mounts them while this thread places it in its cgroup.
    let userns = crate::ids::open_userns(pid).map_err(parent_err("opening the user namespace"))?;
    let mut trees = Vec::with_capacity(cfg.trees.len());
    for (i, path) in cfg.trees.iter().enumerate() {
        trees.push(
            crate::mount::idmapped_tree(path, &userns, cfg.device_tree == Some(i))
                .map_err(parent_err("making an idmapped mount"))?,
        );
    }
    let fds: Vec<_> = trees
        .iter()
        .map(AsFd::as_fd)
        .chain(cfg.mounts.iter().map(AsFd::as_fd))
        .collect();
    crate::fdpass::send_fds(sock, &fds).map_err(parent_err("handing mounts to the sandbox"))?;
    drop(fds);
    drop(trees);
    let made = lap();
    on_spawn(pid).map_err(parent_err("placing the sandbox"))?;
    let cgroup = lap();
    // SAFETY: sending one byte from a local; MSG_NOSIGNAL: a child that already failed and
    // closed its end makes this fail with EPIPE instead of raising SIGPIPE.
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            [1u8].as_ptr().cast(),
            1,
            libc::MSG_NOSIGNAL,
        )
    };
    // A failed send leaves the child's report (read below) as the answer.
    let _ = sent;
    let mut report = [0u8; 8];
    let read = |report: &mut [u8; 8]| {
        // SAFETY: reading into a local buffer of the stated length.
        unsafe { libc::read(sock.as_raw_fd(), report.as_mut_ptr().cast(), report.len()) }
    };
    let mut n = read(&mut report);
    // A child that failed before reading the placement byte closed its end with that byte
    // unread, which the kernel reports here once as ECONNRESET; its report is still queued.
    if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECONNRESET) {
        n = read(&mut report);
    }
    match n {
        0 => Ok([maps, cgroup, made, lap()]),
        8 => {
            let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
            let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
            Err(LaunchError::Child {
                step,
                what: describe_step(cfg, step),
                source: io::Error::from_raw_os_error(errno),
            })
        }
        _ => Err(LaunchError::Parent {
            op: "reading the sandbox's start report",
            source: io::Error::last_os_error(),
        }),
    }
}

fn describe_step(cfg: &LaunchConfig, step: usize) -> String {
    match cfg.steps.get(step) {
        Some(s) => format!("{s:?}"),
        None => match step.checked_sub(cfg.steps.len()) {
            Some(0) => "receiving mounts".into(),
            Some(1) => "switching to the sandbox's root user".into(),
            Some(2) => "arranging file descriptors".into(),
            Some(3) => "exec of the sandbox's init".into(),
            Some(4) => "setting limits and capabilities".into(),
            Some(5) => "installing the seccomp filter".into(),
            Some(6) => "waiting to be placed in the cgroup".into(),
            _ => "unknown".into(),
        },
    }
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into the array on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(crate) fn cstring(what: &str, s: impl Into<Vec<u8>>) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::Nul(what.to_string()))
}
