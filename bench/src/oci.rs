//! The OCI peers over the `base` skeleton with the host's `/usr` bind-mounted read-only:
//! crun (rootful, no user namespace), runsc (gVisor, `--platform=ptrace`: its KVM platform hangs
//! on this machine's paravirtual KVM), and podman (`--cgroup-manager=cgroupfs`, explicit
//! `nofile`/`nproc` ulimits of 1024: crun cannot raise the hard limits here and fails with EPERM even at them). All run in a private
//! mount namespace where the empty cgroup2 mount of a hybrid host is hidden (crun 1.8, also
//! under podman, refuses hybrid hierarchies otherwise); the timing loop runs in a worker process
//! inside that namespace (`prism-bench --peer-worker`) and reports nanoseconds as JSON.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::peers::{run_ok, time_runs};

fn config(root: &Path) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": root, "readonly": true},
        "hostname": "peer",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=64k"]},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ]
        }
    })
}

/// Samples of `system` (crun, runsc or podman) over `skeleton`.
pub fn run(
    system: &str,
    state: &Path,
    skeleton: &Path,
    warmup: usize,
    iterations: usize,
) -> Result<Vec<Duration>> {
    let bundle = state.join(format!("{system}-bundle"));
    std::fs::create_dir_all(&bundle)?;
    let root = if system == "podman" {
        // podman writes /etc/hosts, /run… into a `--rootfs`: give it its own copy.
        let copy = bundle.join("rootfs");
        run_ok(Command::new("cp").arg("-a").arg(skeleton).arg(&copy))?;
        copy
    } else {
        skeleton.to_path_buf()
    };
    std::fs::write(bundle.join("config.json"), config(&root).to_string())?;
    let me = std::env::current_exe()?;
    let script = format!(
        "umount -l /sys/fs/cgroup/unified 2>/dev/null; exec '{}' --peer-worker {system} --bundle '{}' --warmup {warmup} --iterations {iterations}",
        me.display(),
        bundle.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()?;
    if !out.status.success() {
        bail!("{system}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let nanos: Vec<u64> =
        serde_json::from_slice(&out.stdout).with_context(|| format!("{system} worker output"))?;
    Ok(nanos.into_iter().map(Duration::from_nanos).collect())
}

fn hard_limit(resource: nix::sys::resource::Resource) -> u64 {
    nix::sys::resource::getrlimit(resource).map_or(1024, |(_, hard)| hard)
}

/// The timing loop, inside the mount namespace `run` prepared.
pub fn worker(system: &str, bundle: &Path, warmup: usize, iterations: usize) -> Result<()> {
    use nix::sys::resource::Resource;
    let tag = std::process::id();
    let ulimits = [
        format!(
            "nofile={0}:{0}",
            hard_limit(Resource::RLIMIT_NOFILE).min(1024)
        ),
        format!(
            "nproc={0}:{0}",
            hard_limit(Resource::RLIMIT_NPROC).min(1024)
        ),
    ];
    let mut n = 0;
    let samples = time_runs(warmup, iterations, || {
        n += 1;
        let name = format!("bench-{tag}-{n}");
        let mut cmd = match system {
            "crun" => {
                let mut c = Command::new("crun");
                c.args(["run", "--bundle"]).arg(bundle).arg(&name);
                c
            }
            "runsc" => {
                let mut c = Command::new("runsc");
                c.args(["--platform=ptrace", "--network=none", "run", "--bundle"])
                    .arg(bundle)
                    .arg(&name);
                c
            }
            "podman" => {
                let mut c = Command::new("podman");
                c.args(["--cgroup-manager=cgroupfs", "run", "--rm", "--network=none"])
                    .args(["--name", &name])
                    .args(["--ulimit", &ulimits[0], "--ulimit", &ulimits[1]])
                    .args(["-v", "/usr:/usr:ro", "--rootfs"])
                    .arg(bundle.join("rootfs"))
                    .arg("/bin/true");
                c
            }
            other => bail!("no OCI peer {other:?}"),
        };
        run_ok(&mut cmd)
    })?;
    let nanos: Vec<u64> = samples.iter().map(|d| d.as_nanos() as u64).collect();
    println!("{}", serde_json::to_string(&nanos)?);
    Ok(())
}
