//! The peers, each over the same root: host fork+exec and bubblewrap here, the OCI runtimes
//! (crun, runsc, podman) in [`crate::oci`].

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub fn available(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn package(system: &str) -> &'static str {
    match system {
        "bwrap" => "bubblewrap",
        "crun" => "crun",
        "runsc" => "runsc",
        "podman" => "podman",
        _ => "?",
    }
}

pub fn time_runs(
    warmup: usize,
    iterations: usize,
    mut once: impl FnMut() -> Result<()>,
) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let t = Instant::now();
        once()?;
        if i >= warmup {
            out.push(t.elapsed());
        }
    }
    Ok(out)
}

pub fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn fork_exec(warmup: usize, iterations: usize) -> Result<Vec<Duration>> {
    time_runs(warmup, iterations, || {
        run_ok(&mut Command::new("/bin/true"))
    })
}

/// bwrap with every namespace (user included), the host's /usr read-only and fresh /proc, /dev
/// and /tmp: the same view the `base` template gives.
pub fn bwrap(warmup: usize, iterations: usize) -> Result<Vec<Duration>> {
    time_runs(warmup, iterations, bwrap_once)
}

/// One bwrap run of `/bin/true` (see [`bwrap`]).
pub fn bwrap_once() -> Result<()> {
    {
        run_ok(Command::new("bwrap").args([
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "/bin/true",
        ]))
    }
}
