//! Density: hold `count` idle sandboxes of the `base` template (started through the namespace
//! runtime, each agent answering its health check), measure the host memory they cost, then
//! destroy them all.
//!
//! Reported per sandbox: the drop of `MemAvailable` (everything: kernel objects of the
//! namespaces, mounts, cgroups, page tables, the agent's private memory), the sandbox's cgroup
//! memory charge, and the agent's RSS and PSS (PSS shares the static binary's pages among all
//! agents, so it is the agent's fair share of host memory).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prism_core::namespace::NamespaceRuntime;
use prism_core::{Limits, RootfsSpec, Runtime, SandboxHandle, SandboxSpec};
use prism_proto::AgentClient;

/// One line of the density table.
pub struct Line {
    pub count: usize,
    pub start: Duration,
    pub destroy: Duration,
    pub mem_available_kib: f64,
    pub cgroup_kib: f64,
    pub rss_kib: f64,
    pub pss_kib: f64,
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
        let before = settled_available()?;
        let mut handles = Vec::with_capacity(count);
        let t = Instant::now();
        let held = hold(&runtime, &rt, rootfs, count, &mut handles);
        let start = t.elapsed();
        let measured = held.and_then(|()| {
            let after = settled_available()?;
            let (mut cg, mut rss, mut pss) = (0u64, 0u64, 0u64);
            for h in &handles {
                cg += runtime.stats(h)?.memory_bytes / 1024;
                let (r, p) = rss_pss(h.pid);
                rss += r;
                pss += p;
            }
            Ok((before.saturating_sub(after), cg, rss, pss))
        });
        let t = Instant::now();
        for h in &handles {
            runtime.destroy(&h.id)?;
        }
        let destroy = t.elapsed();
        let (avail, cg, rss, pss) = measured?;
        let n = count.max(1) as f64;
        out.push(Line {
            count,
            start,
            destroy,
            mem_available_kib: avail as f64 / n,
            cgroup_kib: cg as f64 / n,
            rss_kib: rss as f64 / n,
            pss_kib: pss as f64 / n,
        });
    }
    prism_sys::cgroup::detect(&parent)?.remove_parent()?;
    Ok(out)
}

pub fn print(lines: &[Line]) {
    println!(
        "\n{:<10} {:>10} {:>12} {:>16} {:>12} {:>10} {:>10}",
        "density", "start s", "destroy s", "MemAvail KiB/sb", "cgroup KiB", "RSS KiB", "PSS KiB"
    );
    for l in lines {
        println!(
            "{:<10} {:>10.2} {:>12.2} {:>16.0} {:>12.0} {:>10.0} {:>10.0}",
            l.count,
            l.start.as_secs_f64(),
            l.destroy.as_secs_f64(),
            l.mem_available_kib,
            l.cgroup_kib,
            l.rss_kib,
            l.pss_kib
        );
    }
}
