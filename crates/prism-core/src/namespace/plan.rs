//! Pure planning of a sandbox's mounts: which host trees to idmap and which steps the sandbox's
//! first process runs before it execs the agent. No I/O, so it is unit-tested without root.

use std::path::{Path, PathBuf};

use prism_sys::launch::{Step, flags};

use crate::runtime::{RootfsSpec, RuntimeError};
use crate::security::SecurityProfile;

/// Where a sandbox's pieces live on the host (`<state>/sandboxes/<id>/…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDirs {
    pub root: PathBuf,
    /// The writable layers live on a size-limited filesystem image mounted at [`Self::disk`].
    pub quota: bool,
}

impl SandboxDirs {
    pub fn new(sandboxes_dir: &Path, id: &str) -> Self {
        Self {
            root: sandboxes_dir.join(id),
            quota: false,
        }
    }
    /// The same sandbox with its writable layers on its disk image.
    pub fn with_quota(mut self, quota: bool) -> Self {
        self.quota = quota;
        self
    }
    /// Where the upper and work directories live.
    pub fn layers(&self) -> PathBuf {
        if self.quota {
            self.disk()
        } else {
            self.root.clone()
        }
    }
    pub fn upper(&self, layer: usize) -> PathBuf {
        self.layers().join("upper").join(layer.to_string())
    }
    pub fn work(&self, layer: usize) -> PathBuf {
        self.layers().join("work").join(layer.to_string())
    }
    /// The sparse ext4 image holding the writable layers of a sandbox with a disk quota.
    pub fn disk_image(&self) -> PathBuf {
        self.root.join("disk.img")
    }
    /// Mount point of [`Self::disk_image`].
    pub fn disk(&self) -> PathBuf {
        self.root.join("disk")
    }
    pub fn lower(&self, layer: usize, index: usize) -> PathBuf {
        self.root.join("lower").join(format!("{layer}-{index}"))
    }
    pub fn rootfs(&self) -> PathBuf {
        self.root.join("rootfs")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }
    pub fn agent_log(&self) -> PathBuf {
        self.root.join("agent.log")
    }
    pub fn uid_file(&self) -> PathBuf {
        self.root.join("uid_base")
    }
}

/// The plan for one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Host directories to idmap; `Step::AttachTree { tree }` indexes into this.
    pub trees: Vec<PathBuf>,
    /// The tree whose device nodes stay usable (the prepared `/dev`), if any.
    pub device_tree: Option<usize>,
    pub steps: Vec<Step>,
}

/// The host's device nodes a sandbox's `/dev` has.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Symbolic links in a sandbox's `/dev`.
pub const DEV_LINKS: [(&str, &str); 5] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Choices of the runtime that shape a plan beyond the root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// A prepared host directory holding the sandbox's `/dev` (see `devskel.rs`), attached as
    /// one idmapped read-only tree instead of a tmpfs with one bind mount per device.
    pub dev_skeleton: Option<PathBuf>,
    /// Mount a read-only `/sys` (none by default).
    pub sysfs: bool,
    /// The sandbox starts in a network namespace made ahead (see `netpool.rs`), whose `lo` is
    /// up already (and which the sandbox could not configure: it is owned by the host).
    pub premade_netns: bool,
    /// Writable layers honour `fsync`/`syncfs` (overlayfs's default). Without it they are
    /// mounted `volatile`: a sandbox's syncs stop at the page cache, and its teardown (the
    /// overlay's unmount) no longer syncs the whole filesystem holding the state directory.
    pub fsync: bool,
    /// The overlays of the writable layers were mounted ahead by the host (with the sandbox's
    /// directory, `spare.rs`): overlay mount `i` is `LaunchConfig::mounts[i]`, attached where
    /// the child would have mounted it, and its lowers are not attached at all.
    pub premade_layers: bool,
}

fn overlay_safe(p: &Path) -> Result<String, RuntimeError> {
    let s = p
        .to_str()
        .ok_or_else(|| RuntimeError::InvalidSpec(format!("{} is not UTF-8", p.display())))?;
    if s.contains([',', ':', '\\', '\n']) || !p.is_absolute() {
        return Err(RuntimeError::InvalidSpec(format!(
            "{s} must be an absolute path without ',', ':' or '\\'"
        )));
    }
    Ok(s.to_string())
}

/// `target` (absolute, inside the sandbox) as a path under `rootfs`, refusing `..`.
fn under(rootfs: &Path, target: &Path) -> Result<PathBuf, RuntimeError> {
    use std::path::Component;
    let mut out = rootfs.to_path_buf();
    for c in target.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(RuntimeError::InvalidSpec(format!(
                    "mount target {} must be absolute and without '..'",
                    target.display()
                )));
            }
        }
    }
    Ok(out)
}

fn mount(source: &str, target: PathBuf, fstype: &str, flags: u64, data: Option<&str>) -> Step {
    Step::Mount {
        source: source.into(),
        target,
        fstype: Some(fstype.into()),
        flags,
        data: data.map(str::to_string),
    }
}

/// Plan the mounts of a sandbox whose directories are `dirs`.
pub fn plan(
    dirs: &SandboxDirs,
    rootfs: &RootfsSpec,
    hostname: &str,
    opts: &PlanOptions,
) -> Result<MountPlan, RuntimeError> {
    let first = rootfs.mounts.first().ok_or_else(|| {
        RuntimeError::InvalidSpec("the root filesystem needs at least one layer".into())
    })?;
    if first.target != Path::new("/") {
        return Err(RuntimeError::InvalidSpec(
            "the first layer must target /".into(),
        ));
    }
    let root = dirs.rootfs();
    let mut trees = Vec::new();
    let mut steps = vec![Step::MakeRootPrivate];
    for (i, layer) in rootfs.mounts.iter().enumerate() {
        if layer.lowers.is_empty() {
            return Err(RuntimeError::InvalidSpec(format!(
                "layer {} has no lower directory",
                layer.target.display()
            )));
        }
        let target = under(&root, &layer.target)?;
        if i > 0 {
            steps.push(Step::Mkdir {
                path: target.clone(),
                mode: 0o755,
            });
        }
        if opts.premade_layers {
            steps.push(Step::AttachMount { mount: i, target });
            continue;
        }
        let mut lowers = Vec::new();
        for (j, host) in layer.lowers.iter().enumerate() {
            overlay_safe(host)?;
            let attach = dirs.lower(i, j);
            lowers.push(overlay_safe(&attach)?);
            steps.push(Step::AttachTree {
                tree: trees.len(),
                target: attach,
            });
            trees.push(host.clone());
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={},userxattr{}",
            lowers.join(":"),
            overlay_safe(&dirs.upper(i))?,
            overlay_safe(&dirs.work(i))?,
            if opts.fsync { "" } else { ",volatile" }
        );
        steps.push(mount(
            "overlay",
            target,
            "overlay",
            flags::NOSUID | flags::NODEV,
            Some(&data),
        ));
    }
    let at = |p: &str| root.join(p);
    let nosuid_nodev_noexec = flags::NOSUID | flags::NODEV | flags::NOEXEC;
    steps.push(Step::Mkdir {
        path: at("proc"),
        mode: 0o555,
    });
    steps.push(mount("proc", at("proc"), "proc", nosuid_nodev_noexec, None));
    if opts.sysfs {
        steps.push(Step::Mkdir {
            path: at("sys"),
            mode: 0o555,
        });
        steps.push(mount(
            "sysfs",
            at("sys"),
            "sysfs",
            nosuid_nodev_noexec | flags::RDONLY,
            None,
        ));
    }
    steps.push(Step::Mkdir {
        path: at("dev"),
        mode: 0o755,
    });
    let mut device_tree = None;
    if let Some(skeleton) = &opts.dev_skeleton {
        // One read-only tree with the devices, `pts`, `shm` and the links already in it.
        device_tree = Some(trees.len());
        steps.push(Step::AttachTree {
            tree: trees.len(),
            target: at("dev"),
        });
        trees.push(skeleton.clone());
    } else {
        dev_on_tmpfs(&mut steps, &at("dev"));
    }
    steps.push(mount(
        "devpts",
        at("dev/pts"),
        "devpts",
        flags::NOSUID | flags::NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    ));
    steps.push(mount(
        "shm",
        at("dev/shm"),
        "tmpfs",
        nosuid_nodev_noexec,
        Some("mode=1777"),
    ));
    steps.push(Step::Mkdir {
        path: at("tmp"),
        mode: 0o1777,
    });
    steps.push(mount(
        "tmpfs",
        at("tmp"),
        "tmpfs",
        flags::NOSUID | flags::NODEV,
        Some("mode=1777"),
    ));
    if !opts.premade_netns {
        steps.push(Step::LoopbackUp);
    }
    steps.push(Step::Hostname(hostname.to_string()));
    steps.push(Step::PivotRoot { new_root: root });
    // Last: it waits until the parent placed the sandbox in its cgroup (see `Step::UnshareCgroup`).
    steps.push(Step::UnshareCgroup);
    Ok(MountPlan {
        trees,
        device_tree,
        steps,
    })
}

/// `/dev` without a prepared skeleton: a tmpfs with one bind mount per device, the mount points
/// of `pts` and `shm`, and the usual links.
fn dev_on_tmpfs(steps: &mut Vec<Step>, dev: &Path) {
    steps.push(mount(
        "tmpfs",
        dev.to_path_buf(),
        "tmpfs",
        flags::NOSUID | flags::NOEXEC,
        Some("mode=755,size=64k"),
    ));
    for name in DEVICES {
        let target = dev.join(name);
        steps.push(Step::Touch {
            path: target.clone(),
            mode: 0o666,
        });
        steps.push(Step::Mount {
            source: format!("/dev/{name}"),
            target,
            fstype: None,
            flags: flags::BIND,
            data: None,
        });
    }
    steps.push(Step::Mkdir {
        path: dev.join("pts"),
        mode: 0o755,
    });
    steps.push(Step::Mkdir {
        path: dev.join("shm"),
        mode: 0o1777,
    });
    for (name, target) in DEV_LINKS {
        steps.push(Step::Symlink {
            target: target.into(),
            link: dev.join(name),
        });
    }
}

impl MountPlan {
    /// Add the profile's masked and read-only paths, right before the pivot into the new root
    /// (after `/proc`, `/sys` and `/dev` are mounted).
    pub fn add_security(
        &mut self,
        dirs: &SandboxDirs,
        profile: &SecurityProfile,
    ) -> Result<(), RuntimeError> {
        let root = dirs.rootfs();
        let mut extra = Vec::new();
        for p in &profile.masked_paths {
            extra.push(Step::Mask {
                path: under(&root, p)?,
            });
        }
        for p in &profile.readonly_paths {
            extra.push(Step::ReadOnly {
                path: under(&root, p)?,
            });
        }
        let at = self
            .steps
            .iter()
            .position(|s| matches!(s, Step::PivotRoot { .. }))
            .unwrap_or(self.steps.len());
        self.steps.splice(at..at, extra);
        Ok(())
    }
}
