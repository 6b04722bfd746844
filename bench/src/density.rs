//! Density: hold `count` idle sandboxes of the `base` template (started through the namespace
//! runtime, each agent answering its health check), measure the host memory they cost, then
//! destroy them all.
//!
//! Reported per sandbox: the drop of `MemAvailable` (everything: kernel objects of the
//! namespaces, mounts, cgroups, page tables, the agent's private memory), the sandbox's cgroup
//! memory charge, and the agent's RSS and PSS (PSS shares the static binary's pages among all
//! agents, so it is the agent's fair share of host memory), and the growth of the kernel's own
//! memory (`Slab` + `KernelStack` + `PageTables` of /proc/meminfo), which no cgroup is charged
//! with in full. Each `MemAvailable` reading follows `sync`, a drop of the clean caches and a
//! settle, so that page cache moved by other work on the machine counts less.
//!
//! The `netns` line holds the same number of bare network namespaces (only `lo`, made by
//! `unshare(CLONE_NEWNET)` on a short-lived thread, kept by an fd): the part of a sandbox's
//! kernel memory that is its network namespace.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prism_core::namespace::NamespaceRuntime;
use prism_core::{Limits, RootfsSpec, Runtime, SandboxHandle, SandboxSpec};
use prism_proto::AgentClient;

/// One line of the density table.
pub struct Line {
    pub what: &'static str,
    pub count: usize,
    pub start: Duration,
    pub destroy: Duration,
    pub mem_available_kib: f64,
    pub cgroup_kib: f64,
    pub rss_kib: f64,
    pub pss_kib: f64,
    pub kernel_kib: f64,
}

/// Kernel memory not attributable to a process: slab, kernel stacks, page tables (KiB).
fn kernel_kib() -> Result<u64> {
    Ok(meminfo("Slab:")? + meminfo("KernelStack:")? + meminfo("PageTables:")?)
}

/// Write back dirty pages and drop clean caches (page cache, dentries, inodes), so that the
/// readings that follow count less of what other processes cached meanwhile.
fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("density: cannot drop caches: {e}");
    }
}

/// `(MemAvailable, kernel memory)` after dropping caches and letting them settle.
fn reading() -> Result<(u64, u64)> {
    drop_caches();
    let avail = settled_available()?;
    Ok((avail, kernel_kib()?))
}

fn meminfo(key: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    kib_field(&text, key).with_context(|| format!("{key} in /proc/meminfo"))
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `(Rss, Pss)` of a process in KiB.
fn rss_pss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (
        kib_field(&text, "Rss:").unwrap_or(0),
        kib_field(&text, "Pss:").unwrap_or(0),
    )
}

/// `MemAvailable` once it stopped moving (the trash thread and page reclaim settle).
fn settled_available() -> Result<u64> {
    let mut last = meminfo("MemAvailable:")?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = meminfo("MemAvailable:")?;
        if now.abs_diff(last) < 1024 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

fn hold(
    runtime: &NamespaceRuntime,
    rt: &tokio::runtime::Runtime,
    rootfs: &RootfsSpec,
    count: usize,
    handles: &mut Vec<SandboxHandle>,
) -> Result<()> {
    for i in 0..count {
        let id = format!("density-{i}");
        let spec = SandboxSpec {
            id: id.clone(),
            hostname: id,
            rootfs: rootfs.clone(),
            limits: Limits::default(),
            security: Default::default(),
        };
        let h = runtime
            .start(&spec)
            .with_context(|| format!("sandbox {i} of {count}"))?;
        handles.push(h.clone());
        rt.block_on(AgentClient::new(&h.agent_socket).health())
            .with_context(|| format!("health of sandbox {i}"))?;
    }
    Ok(())
}

/// Hold each count in turn.
pub fn run(state: &Path, agent: &Path, rootfs: &RootfsSpec, counts: &[usize]) -> Result<Vec<Line>> {
    let parent = format!("prism-bench-density-{}", std::process::id());
    let runtime = crate::prism::runtime_in(state.join("density"), agent, &parent)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = Vec::new();
    for &count in counts {
        let (before, kernel_before) = reading()?;
        let mut handles = Vec::with_capacity(count);
        let t = Instant::now();
        let held = hold(&runtime, &rt, rootfs, count, &mut handles);
        let start = t.elapsed();
        let measured = held.and_then(|()| {
            let (after, kernel_after) = reading()?;
            let (mut cg, mut rss, mut pss) = (0u64, 0u64, 0u64);
            for h in &handles {
                cg += runtime.stats(h)?.memory_bytes / 1024;
                let (r, p) = rss_pss(h.pid);
                rss += r;
                pss += p;
            }
            Ok((
                before.saturating_sub(after),
                cg,
                rss,
                pss,
                kernel_after.saturating_sub(kernel_before),
            ))
        });
        let t = Instant::now();
        for h in &handles {
            runtime.destroy(&h.id)?;
        }
        // Destroy returns once a sandbox is killed: count until all are gone.
        if !runtime.settle(Duration::from_secs(600)) {
            anyhow::bail!("the teardown of {count} sandboxes did not finish");
        }
        let destroy = t.elapsed();
        let (avail, cg, rss, pss, kernel) = measured?;
        let n = count.max(1) as f64;
        out.push(Line {
            what: "sandboxes",
            count,
            start,
            destroy,
            mem_available_kib: avail as f64 / n,
            cgroup_kib: cg as f64 / n,
            rss_kib: rss as f64 / n,
            pss_kib: pss as f64 / n,
            kernel_kib: kernel as f64 / n,
        });
        match bare_netns(count) {
            Ok(line) => out.push(line),
            Err(e) => println!("density: bare network namespaces: {e:#}"),
        }
    }
    drop(runtime);
    prism_sys::cgroup::detect(&parent)?.remove_parent()?;
    Ok(out)
}

/// Hold `count` bare network namespaces and measure them like the sandboxes.
fn bare_netns(count: usize) -> Result<Line> {
    let (before, kernel_before) = reading()?;
    let t = Instant::now();
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let ns = std::thread::spawn(|| -> Result<std::fs::File> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(std::fs::File::open("/proc/thread-self/ns/net")?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))??;
        held.push(ns);
    }
    let start = t.elapsed();
    let (after, kernel_after) = reading()?;
    let t = Instant::now();
    drop(held);
    let n = count.max(1) as f64;
    Ok(Line {
        what: "netns",
        count,
        start,
        destroy: t.elapsed(),
        mem_available_kib: before.saturating_sub(after) as f64 / n,
        cgroup_kib: 0.0,
        rss_kib: 0.0,
        pss_kib: 0.0,
        kernel_kib: kernel_after.saturating_sub(kernel_before) as f64 / n,
    })
}

pub fn print(lines: &[Line]) {
    println!(
        "\n{:<16} {:>8} {:>10} {:>16} {:>12} {:>10} {:>10} {:>14}",
        "density",
        "start s",
        "destroy s",
        "MemAvail KiB/sb",
        "cgroup KiB",
        "RSS KiB",
        "PSS KiB",
        "kernel KiB/sb"
    );
    for l in lines {
        println!(
            "{:<16} {:>8.2} {:>10.2} {:>16.0} {:>12.0} {:>10.0} {:>10.0} {:>14.0}",
            format!("{} {}", l.count, l.what),
            l.start.as_secs_f64(),
            l.destroy.as_secs_f64(),
            l.mem_available_kib,
            l.cgroup_kib,
            l.rss_kib,
            l.pss_kib,
            l.kernel_kib
        );
    }
}
