//! Prism's namespace runtime, driven directly (no daemon): start, first exec through the agent,
//! destroy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use prism_core::namespace::{NamespaceConfig, NamespaceRuntime};
use prism_core::{Limits, RootfsSpec, Runtime, SandboxSpec};
use prism_proto::AgentClient;
use prism_proto::process::{ProcessConfig, ProcessEvent, StartRequest};

/// A namespace runtime keeping its sandboxes in `dir`, under the cgroup parent `parent`.
/// `PRISM_BENCH_NETNS_POOL=N` sets its pool of network namespaces made ahead (0: none, each
/// sandbox makes its own at its clone; default: the runtime's default).
pub fn runtime_in(dir: PathBuf, agent: &Path, parent: &str) -> Result<NamespaceRuntime> {
    let netns_pool = match std::env::var("PRISM_BENCH_NETNS_POOL") {
        Ok(n) => n.parse().context("PRISM_BENCH_NETNS_POOL")?,
        Err(_) => prism_core::namespace::DEFAULT_NETNS_POOL,
    };
    Ok(NamespaceRuntime::new(
        NamespaceConfig {
            sandboxes_dir: dir,
            agent_path: agent.to_path_buf(),
            netns_pool,
        },
        prism_sys::cgroup::detect(parent)?,
    )?)
}

pub fn agent_path(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-linux-musl");
    for profile in ["release", "debug"] {
        let p = root.join(profile).join("prism-agent");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no prism-agent built: run scripts/build --release (or pass --agent)")
}

type Parts = Vec<(&'static str, Vec<Duration>)>;

/// How long the bench waits for the runtime's background teardowns.
const SETTLE: Duration = Duration::from_secs(120);

/// `settled`: each sample also waits until the destroyed sandbox is completely gone (destroy
/// returns once it is killed; the rest of the teardown runs in the background). Without it, that
/// background work overlaps the next sample, as it does in a daemon.
pub fn create_exec_destroy(
    state: &Path,
    agent: &Path,
    rootfs: &RootfsSpec,
    warmup: usize,
    iterations: usize,
    settled: bool,
    mut between: Option<&mut dyn FnMut(bool) -> Result<()>>,
) -> Result<(Vec<Duration>, Parts)> {
    let parent = format!("prism-bench-{}", std::process::id());
    let runtime = runtime_in(state.join("sandboxes"), agent, &parent)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let req = StartRequest {
        process: Some(ProcessConfig {
            cmd: "/bin/true".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (mut total, mut start, mut exec, mut destroy) = (vec![], vec![], vec![], vec![]);
    let agent_stats = std::env::var_os(AGENT_STATS).is_some();
    let (mut agent_cpu, mut agent_faults) = (vec![], vec![]);
    for i in 0..warmup + iterations {
        let id = format!("bench-{i}");
        let spec = SandboxSpec {
            id: id.clone(),
            hostname: id.clone(),
            rootfs: rootfs.clone(),
            limits: Limits::default(),
            security: Default::default(),
        };
        let t0 = Instant::now();
        let handle = runtime.start(&spec)?;
        let t1 = Instant::now();
        // The agent has exec'd when start returns (the launch waits for it).
        let before = agent_stats.then(|| task_stats(handle.pid)).flatten();
        let client = AgentClient::new(&handle.agent_socket);
        let code = rt
            .block_on(async {
                let mut events = client.start(&req).await?;
                let mut code = None;
                while let Some(ev) = events.next().await {
                    if let ProcessEvent::End(e) = ev? {
                        code = Some(e.exit_code);
                    }
                }
                Ok::<_, prism_proto::ProtoError>(code)
            })
            .context("exec through the agent")?;
        if code != Some(0) {
            bail!("/bin/true in the sandbox ended with {code:?}");
        }
        let t2 = Instant::now();
        if let (Some((cpu0, faults0)), Some((cpu1, faults1))) = (before, task_stats(handle.pid))
            && i >= warmup
        {
            agent_cpu.push(cpu1.saturating_sub(cpu0));
            agent_faults.push(faults1.saturating_sub(faults0));
        }
        // Destroy is timed from here, without the reads.
        let t2d = if agent_stats { Instant::now() } else { t2 };
        runtime.destroy(&id)?;
        if settled && !runtime.settle(SETTLE) {
            bail!("the teardown of {id} did not finish in {SETTLE:?}");
        }
        let t3 = Instant::now();
        if let Some(f) = between.as_mut() {
            f(i >= warmup)?;
        }
        if i >= warmup {
            total.push(t3 - t0 - (t2d - t2));
            start.push(t1 - t0);
            exec.push(t2 - t1);
            destroy.push(t3 - t2d);
        }
    }
    if !runtime.settle(SETTLE) {
        bail!("teardowns did not finish in {SETTLE:?}");
    }
    drop(runtime);
    prism_sys::cgroup::detect(&parent)?.remove_parent()?;
    let last = if settled {
        "destroy + teardown"
    } else {
        "destroy"
    };
    let mut parts = vec![("start", start), ("first exec", exec), (last, destroy)];
    if agent_stats {
        agent_faults.sort_unstable();
        println!(
            "agent page faults from its exec to the first exec's end: p50 {} (n = {})",
            agent_faults
                .get(agent_faults.len() / 2)
                .copied()
                .unwrap_or_default(),
            agent_faults.len()
        );
        parts.push(("agent CPU to the first exec's end", agent_cpu));
    }
    Ok((total, parts))
}

/// Set (to anything) to also read the agent's CPU time and page faults from /proc, from just
/// after its exec to the end of the first exec. The read at the start of the first exec
/// (~0.05 ms) then counts in that row; destroy is timed without the second read.
const AGENT_STATS: &str = "PRISM_BENCH_AGENT_STATS";

/// A task's CPU time (`/proc/PID/schedstat`) and minor page faults (`/proc/PID/stat`).
fn task_stats(pid: u32) -> Option<(Duration, u64)> {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let cpu_ns: u64 = sched.split_whitespace().next()?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis: state is the first, minflt the eighth.
    let minflt: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(7)?
        .parse()
        .ok()?;
    Some((Duration::from_nanos(cpu_ns), minflt))
}
