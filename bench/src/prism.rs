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
/// sandbox makes its own at its clone; default: the runtime's default), and
/// `PRISM_BENCH_SPARE_DIRS=N` its sandbox directories made ahead.
pub fn runtime_in(dir: PathBuf, agent: &Path, parent: &str) -> Result<NamespaceRuntime> {
    let pool = |var: &str, default: usize| -> Result<usize> {
        match std::env::var(var) {
            Ok(n) => n.parse().with_context(|| var.to_string()),
            Err(_) => Ok(default),
        }
    };
    Ok(NamespaceRuntime::new(
        NamespaceConfig {
            netns_pool: pool(
                "PRISM_BENCH_NETNS_POOL",
                prism_core::namespace::DEFAULT_NETNS_POOL,
            )?,
            spare_dirs: pool(
                "PRISM_BENCH_SPARE_DIRS",
                prism_core::namespace::DEFAULT_SPARE_DIRS,
            )?,
            ..NamespaceConfig::new(dir, agent.to_path_buf())
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

/// What a sample waits for after its destroy (not counted in `total` beyond the teardown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Nothing: the background teardown and the pools' refills overlap the next sample, as in a
    /// daemon creating back to back.
    Nothing,
    /// The destroyed sandbox completely gone (destroy returns once it is killed; the rest of the
    /// teardown runs in the background). Counted.
    Teardown,
    /// The teardown (counted), then an idle gap (not counted) in which the runtime refills what
    /// it makes ahead: a create on a daemon that is not saturated.
    Idle(Duration),
}

/// Create → first exec → destroy samples; `wait` says what each sample waits for after its
/// destroy.
pub fn create_exec_destroy(
    state: &Path,
    agent: &Path,
    rootfs: &RootfsSpec,
    warmup: usize,
    iterations: usize,
    wait: Wait,
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
    let mut created = vec![];
    let agent_stats = std::env::var_os(AGENT_STATS).is_some();
    let timeline = std::env::var_os(TIMELINE).is_some();
    let mut timelines: Vec<Vec<(String, u64)>> = vec![];
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
        let mut stamps = Stamps::new(timeline);
        let mut client = AgentClient::new(&handle.agent_socket);
        if timeline {
            client = client.with_header(
                http::HeaderName::from_static("prism-timeline"),
                http::HeaderValue::from_static("1"),
            );
        }
        let code = rt
            .block_on(async {
                let mut events = client.start(&req).await?;
                stamps.mark("bench: response head");
                let mut code = None;
                while let Some(ev) = events.next().await {
                    match ev? {
                        ProcessEvent::Start(_) => stamps.mark("bench: start event"),
                        ProcessEvent::End(e) => {
                            stamps.mark("bench: end event");
                            code = Some(e.exit_code);
                        }
                        _ => {}
                    }
                }
                stamps.mark("bench: stream done");
                Ok::<_, prism_proto::ProtoError>(code)
            })
            .context("exec through the agent")?;
        if timeline && i >= warmup {
            timelines.push(stamps.with_agent(&handle.agent_socket));
        }
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
        if wait != Wait::Nothing && !runtime.settle(SETTLE) {
            bail!("the teardown of {id} did not finish in {SETTLE:?}");
        }
        let t3 = Instant::now();
        if let Wait::Idle(gap) = wait {
            std::thread::sleep(gap);
        }
        if let Some(f) = between.as_mut() {
            if wait == Wait::Teardown {
                // The other system's sample starts once this runtime's work is done (untimed):
                // the sandbox's directory deleted, the spares and network namespaces made again.
                wait_quiet(&runtime, &state.join("sandboxes"));
            }
            f(i >= warmup)?;
        }
        if i >= warmup {
            total.push(t3 - t0 - (t2d - t2));
            start.push(t1 - t0);
            exec.push(t2 - t1);
            created.push(t2 - t0);
            destroy.push(t3 - t2d);
        }
    }
    if !runtime.settle(SETTLE) {
        bail!("teardowns did not finish in {SETTLE:?}");
    }
    drop(runtime);
    prism_sys::cgroup::detect(&parent)?.remove_parent()?;
    let last = if wait != Wait::Nothing {
        "destroy + teardown"
    } else {
        "destroy"
    };
    let mut parts = vec![
        ("start", start),
        ("first exec", exec),
        (CREATE_AND_TRUE, created),
        (last, destroy),
    ];
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
    if timeline {
        print_timeline(&timelines);
    }
    Ok((total, parts))
}

/// Until the trash is empty and the pools are full again (5 s at most, then says so: the next
/// sample of the other system would not start on a quiet machine).
fn wait_quiet(runtime: &NamespaceRuntime, sandboxes: &Path) {
    let cfg = runtime.config();
    let deadline = Instant::now() + Duration::from_secs(5);
    let trash = sandboxes.join(".trash");
    let quiet = || {
        runtime.spares_ready() >= cfg.spare_dirs
            && runtime.netns_ready() >= cfg.netns_pool
            && std::fs::read_dir(&trash).is_ok_and(|mut d| d.next().is_none())
    };
    while !quiet() {
        if Instant::now() > deadline {
            eprintln!("prism-bench: the runtime was not quiet after 5 s; sampling anyway");
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The part that is issue 2's target as worded: a cold create and `true` in it (start + first
/// exec of each sample), without the destroy. Printed with ratios, unlike the other parts.
pub const CREATE_AND_TRUE: &str = "create + true";

/// Set (to anything) to print the first exec's timeline: `CLOCK_MONOTONIC` stamps of the
/// bench and of the agent (which logs them when the request carries `prism-timeline: 1`), as
/// offsets from `start` returning. Costs the agent one write to its log per sandbox.
const TIMELINE: &str = "PRISM_BENCH_TIMELINE";

/// `CLOCK_MONOTONIC` in nanoseconds (the clock of the agent's stamps, too).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or_default() * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or_default()
        })
        .unwrap_or_default()
}

/// The bench's stamps of one first exec, from `start` returning.
struct Stamps {
    on: bool,
    list: Vec<(String, u64)>,
}

impl Stamps {
    fn new(on: bool) -> Self {
        let list = if on {
            vec![("bench: start returned".to_string(), monotonic_ns())]
        } else {
            vec![]
        };
        Self { on, list }
    }

    fn mark(&mut self, name: &str) {
        if self.on {
            self.list.push((name.to_string(), monotonic_ns()));
        }
    }

    /// Adds the agent's stamps, from the last timeline line of its log (next to its socket).
    fn with_agent(mut self, socket: &Path) -> Vec<(String, u64)> {
        let log = socket.with_file_name("agent.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("prism-agent timeline:"))
        {
            for (k, v) in line.split_whitespace().filter_map(|kv| kv.split_once('=')) {
                if let Ok(ns) = v.parse::<u64>()
                    && ns > 0
                {
                    self.list.push((format!("agent: {k}"), ns));
                }
            }
        }
        self.list
    }
}

/// Per stamp: the median offset from `start` returning, and the median step from the stamp
/// before it (in the order of the median offsets).
fn print_timeline(runs: &[Vec<(String, u64)>]) {
    let mut names: Vec<String> = vec![];
    for run in runs {
        for (n, _) in run {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let offset = |run: &[(String, u64)], name: &str| -> Option<i64> {
        let base = run.first()?.1;
        let t = run.iter().find(|(n, _)| n == name)?.1;
        Some(i64::try_from(t).ok()? - i64::try_from(base).ok()?)
    };
    let median = |mut v: Vec<i64>| -> Option<i64> {
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let mut rows: Vec<(String, i64)> = names
        .iter()
        .filter_map(|n| {
            let v: Vec<i64> = runs.iter().filter_map(|r| offset(r, n)).collect();
            median(v).map(|m| (n.clone(), m))
        })
        .collect();
    rows.sort_by_key(|(_, m)| *m);
    println!(
        "first exec timeline (n = {}; ms from start returning, p50; step = p50 of the per-run step from the row above):",
        runs.len()
    );
    let mut prev: Option<&str> = None;
    for (name, m) in &rows {
        let step = prev.and_then(|p| {
            median(
                runs.iter()
                    .filter_map(|r| Some(offset(r, name)? - offset(r, p)?))
                    .collect(),
            )
        });
        let step = step.map_or(String::new(), |s| format!("  step {:+.3}", s as f64 / 1e6));
        println!("  {name:<24} {:+.3}{step}", *m as f64 / 1e6);
        prev = Some(name);
    }
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
