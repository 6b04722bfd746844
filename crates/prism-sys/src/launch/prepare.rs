//! Turn a [`LaunchConfig`] into C strings and pointer arrays before the clone, so the child never
//! allocates.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{Hardening, LaunchConfig, LaunchError, Step, cstring};

/// A step with every string already a `CString`.
#[derive(Debug)]
pub(crate) enum CStep {
    UnshareCgroup,
    MakeRootPrivate,
    AttachTree {
        tree: usize,
        target: CString,
    },
    Mount {
        source: CString,
        target: CString,
        fstype: Option<CString>,
        flags: u64,
        data: Option<CString>,
    },
    Mkdir {
        path: CString,
        mode: u32,
    },
    Touch {
        path: CString,
        mode: u32,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    PivotRoot {
        new_root: CString,
    },
    LoopbackUp,
    Hostname(CString),
    Mask {
        path: CString,
    },
    ReadOnly {
        path: CString,
    },
}

/// The launch, ready for the child.
#[derive(Debug)]
pub struct Prepared {
    pub(crate) steps: Vec<CStep>,
    pub(crate) exe: OwnedFd,
    pub(crate) fd3: RawFd,
    /// The child's end of the launch socket and the parent's (which the child closes); set by
    /// `launch` once the pair exists.
    pub(crate) sock: RawFd,
    pub(crate) parent_end: RawFd,
    pub(crate) stderr: RawFd,
    pub(crate) dev_null: CString,
    pub(crate) empty: CString,
    pub(crate) tmpfs: CString,
    pub(crate) mask_opts: CString,
    pub(crate) hardening: Hardening,
    /// Keep the strings alive: `argv`/`envp` point into them.
    _argv: Vec<CString>,
    _env: Vec<CString>,
    pub(crate) argv_ptrs: Vec<*const libc::c_char>,
    pub(crate) env_ptrs: Vec<*const libc::c_char>,
}

fn path(what: &str, p: &Path) -> Result<CString, LaunchError> {
    cstring(what, p.as_os_str().as_bytes())
}

impl Prepared {
    pub(crate) fn new(cfg: &LaunchConfig) -> Result<Self, LaunchError> {
        let mut steps = Vec::with_capacity(cfg.steps.len());
        for step in &cfg.steps {
            steps.push(match step {
                Step::UnshareCgroup => CStep::UnshareCgroup,
                Step::MakeRootPrivate => CStep::MakeRootPrivate,
                Step::AttachTree { tree, target } => {
                    if *tree >= cfg.trees.len() {
                        return Err(LaunchError::Nul(format!("tree index {tree} out of range")));
                    }
                    CStep::AttachTree {
                        tree: *tree,
                        target: path("tree target", target)?,
                    }
                }
                // The child gets the caller's mounts after the trees, in one batch.
                Step::AttachMount { mount, target } => {
                    if *mount >= cfg.mounts.len() {
                        return Err(LaunchError::Nul(format!(
                            "mount index {mount} out of range"
                        )));
                    }
                    CStep::AttachTree {
                        tree: cfg.trees.len() + mount,
                        target: path("mount target", target)?,
                    }
                }
                Step::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    data,
                } => CStep::Mount {
                    source: cstring("mount source", source.as_str())?,
                    target: path("mount target", target)?,
                    fstype: fstype
                        .as_deref()
                        .map(|f| cstring("fstype", f))
                        .transpose()?,
                    flags: *flags,
                    data: data
                        .as_deref()
                        .map(|d| cstring("mount data", d))
                        .transpose()?,
                },
                Step::Mkdir { path: p, mode } => CStep::Mkdir {
                    path: path("mkdir path", p)?,
                    mode: *mode,
                },
                Step::Touch { path: p, mode } => CStep::Touch {
                    path: path("file path", p)?,
                    mode: *mode,
                },
                Step::Symlink { target, link } => CStep::Symlink {
                    target: cstring("symlink target", target.as_str())?,
                    link: path("symlink", link)?,
                },
                Step::PivotRoot { new_root } => CStep::PivotRoot {
                    new_root: path("new root", new_root)?,
                },
                Step::LoopbackUp => CStep::LoopbackUp,
                Step::Hostname(h) => CStep::Hostname(cstring("hostname", h.as_str())?),
                Step::Mask { path: p } => CStep::Mask {
                    path: path("masked path", p)?,
                },
                Step::ReadOnly { path: p } => CStep::ReadOnly {
                    path: path("read-only path", p)?,
                },
            });
        }
        let exe = crate::fs::open_path(&cfg.exe).map_err(|source| LaunchError::Parent {
            op: "opening the sandbox init binary",
            source,
        })?;
        let argv: Vec<CString> = cfg
            .argv
            .iter()
            .map(|a| cstring("argv", a.as_str()))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = cfg
            .env
            .iter()
            .map(|e| cstring("env", e.as_str()))
            .collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<_> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        Ok(Self {
            steps,
            exe,
            fd3: cfg.fd3.as_raw_fd(),
            sock: -1,
            parent_end: -1,
            stderr: cfg.stderr.as_raw_fd(),
            dev_null: cstring("path", "/dev/null")?,
            empty: cstring("path", "")?,
            tmpfs: cstring("fstype", "tmpfs")?,
            mask_opts: cstring("mount data", "size=0,mode=555")?,
            hardening: cfg.hardening.clone(),
            _argv: argv,
            _env: env,
            argv_ptrs,
            env_ptrs,
        })
    }
}
