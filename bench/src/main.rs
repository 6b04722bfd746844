//! prism-bench: Prism measured side by side with its peers on this machine.
//!
//! Rows (`--only` picks some; all by default), each printed with p50/p95/p99 and ratios:
//! - `create → first exec → destroy` of a sandbox running `/bin/true` over the same root
//!   filesystem (the `base` template's skeleton plus the host's `/usr`): Prism's namespace
//!   runtime (`prism`, and `image` over an OCI image), Prism through prismd (`api`, `pooled`),
//!   bubblewrap, crun, runsc (gVisor, ptrace platform), podman, and plain fork+exec as the floor;
//! - `throughput`: creates/s (cold and from a warm pool) and execs/s under N concurrent clients
//!   through prismd;
//! - `density`: host memory per idle sandbox while holding 100, 500, 1000 of them;
//! - `stream`: bytes/s of stdout from a sandbox to a WebSocket client vs a host pipe.
//!
//! Never asserts a time. Peers that are not installed are reported absent
//! (`bench/install-peers.sh` installs them from Debian's packages).

mod api;
mod density;
mod image;
mod oci;
mod peers;
mod prism;
mod stats;
mod stream;
mod throughput;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;

const ALL: &str = "fork,prism,prism-settled,prism-idle,interleaved,interleaved-settled,image,api,pooled,template,bwrap,crun,runsc,podman,throughput,density,stream";

#[derive(Parser, Debug)]
#[command(about = "Prism vs. peers: latency, throughput, density, streaming")]
struct Args {
    /// Measured iterations per system (create → exec → destroy rows).
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// Unmeasured iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Comma-separated subset of: fork, prism, prism-settled (each sample also waits for the
    /// background teardown), prism-idle (settled, then `--idle-ms` of idle time before the next
    /// sample: creates on a daemon that is not saturated), interleaved (`prism` and `bwrap` samples alternating, so both see
    /// the same load), interleaved-settled (`prism-settled` and `bwrap` alternating), image, api, pooled, template, bwrap, crun,
    /// runsc, podman (create → first exec → destroy; `api`, `pooled` and `template` go through a
    /// real prismd, `pooled` with a warm pool of `base`, `template` from a built template vs
    /// `base`; `image` is `prism` over an OCI image's layers), throughput, density, stream.
    #[arg(long, default_value = ALL)]
    only: String,
    /// Idle time between the samples of `prism-idle`, in milliseconds.
    #[arg(long, default_value_t = 20)]
    idle_ms: u64,
    /// Iterations for the slow peers (runsc, podman).
    #[arg(long, default_value_t = 20)]
    slow_iterations: usize,
    /// Concurrent clients of the throughput rows.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    clients: Vec<usize>,
    /// Measured rounds of N simultaneous creates per N.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Buffered execs per client in the execs/s row.
    #[arg(long, default_value_t = 20)]
    execs: usize,
    /// Idle sandboxes to hold in the density rows.
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000")]
    density: Vec<usize>,
    /// Bytes of stdout to stream (MiB).
    #[arg(long, default_value_t = 1024)]
    stream_mib: u64,
    /// Streaming runs (the median is shown).
    #[arg(long, default_value_t = 3)]
    stream_runs: usize,
    /// The static agent (default: target/x86_64-unknown-linux-musl/release, then debug).
    #[arg(long, env = "PRISM_AGENT")]
    agent: Option<PathBuf>,
    /// Where the bench keeps its state (the rootfs skeleton, the sandboxes' directories and
    /// writable layers) for every row. On a tmpfs (`/dev/shm`) the rows no longer include the
    /// host disk's write-back: an overlay's teardown syncs the filesystem holding its writable
    /// layer, with everything else dirty on it.
    #[arg(long, default_value = "/var/tmp")]
    state_dir: PathBuf,
    /// Allocate and touch this many MiB before the rows and keep them until the end: a stand-in
    /// for a daemon's heap (prismd idles at ~20 MiB RSS; the bench itself has under 1 MiB of
    /// anonymous memory), so that a launch clone that copies the caller's page tables pays for it.
    #[arg(long, default_value_t = 0)]
    ballast_mib: usize,
    /// Internal: run an OCI peer in a loop (inside a mount namespace without the cgroup2 mount).
    #[arg(long, hide = true)]
    peer_worker: Option<String>,
    /// Internal: the OCI bundle of `--peer-worker`.
    #[arg(long, hide = true)]
    bundle: Option<PathBuf>,
}

/// `mib` MiB of anonymous memory, every page written (so each one is mapped).
fn ballast(mib: usize) -> Vec<u8> {
    let mut heap = vec![0u8; mib << 20];
    for page in heap.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(heap)
}

/// Raise the soft `nofile` limit to the hard one (density holds many sandboxes).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    // `PRISM_BENCH_LOG=prism_sys=debug,prism_core=debug` prints the runtime's per-step timings.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("PRISM_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    if let Some(system) = &args.peer_worker {
        let bundle = args.bundle.as_deref().context("--bundle")?;
        return oci::worker(system, bundle, args.warmup, args.iterations);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("prism-bench needs root (namespaces, cgroups)");
    }
    raise_nofile();
    let _ballast = ballast(args.ballast_mib);
    let state = tempfile::Builder::new()
        .prefix("prism-bench-")
        .tempdir_in(&args.state_dir)
        .context("state dir")?;
    let rootfs = prism_core::template::base::ensure(&state.path().join("templates"))?;
    let skeleton = rootfs.mounts[0].lowers[0].clone();
    let systems: Vec<&str> = args.only.split(',').map(str::trim).collect();
    if let Some(bad) = systems.iter().find(|s| !ALL.split(',').any(|a| a == **s)) {
        bail!("unknown row {bad:?}; pick from {ALL}");
    }
    let agent = || prism::agent_path(args.agent.clone());
    let mut rows: Vec<stats::Row> = Vec::new();
    let mut tput = Vec::new();
    let mut dens = Vec::new();
    let mut streamed = None;
    let mut interleaved = Vec::new();
    println!(
        "prism-bench: {} iterations after {} warm-up ({} for runsc/podman); {} cores",
        args.iterations,
        args.warmup,
        args.slow_iterations,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for system in systems {
        let result = match system {
            "fork" => Some(peers::fork_exec(args.warmup, args.iterations)),
            "prism" | "prism-settled" | "prism-idle" | "image" => {
                let fs = if system == "image" {
                    image::rootfs(state.path())?
                } else {
                    rootfs.clone()
                };
                let (total, parts) = prism::create_exec_destroy(
                    state.path(),
                    &agent()?,
                    &fs,
                    args.warmup,
                    args.iterations,
                    match system {
                        "prism-settled" => prism::Wait::Teardown,
                        "prism-idle" => {
                            prism::Wait::Idle(std::time::Duration::from_millis(args.idle_ms))
                        }
                        _ => prism::Wait::Nothing,
                    },
                    None,
                )?;
                for (name, samples) in parts {
                    // Indented parts get no ratios; the target's part does.
                    let indent = if name == prism::CREATE_AND_TRUE {
                        ""
                    } else {
                        "  "
                    };
                    rows.push(stats::Row::new(
                        &format!("{indent}{system}: {name}"),
                        samples,
                    ));
                }
                Some(Ok(total))
            }
            "interleaved" | "interleaved-settled" => {
                if !peers::available("bwrap") {
                    println!("{system}: bwrap is not installed");
                    continue;
                }
                let mut bw = Vec::new();
                let mut bwrap_sample = |measured: bool| -> Result<()> {
                    let t = std::time::Instant::now();
                    peers::bwrap_once()?;
                    if measured {
                        bw.push(t.elapsed());
                    }
                    Ok(())
                };
                let (total, parts) = prism::create_exec_destroy(
                    state.path(),
                    &agent()?,
                    &rootfs,
                    args.warmup,
                    args.iterations,
                    if system == "interleaved" {
                        prism::Wait::Nothing
                    } else {
                        prism::Wait::Teardown
                    },
                    Some(&mut bwrap_sample),
                )?;
                let p50 = |v: &[std::time::Duration]| {
                    stats::Row::new("", v.to_vec())
                        .percentile(0.5)
                        .as_secs_f64()
                };
                let created = parts
                    .iter()
                    .find(|(n, _)| *n == prism::CREATE_AND_TRUE)
                    .map(|(_, v)| p50(v) / p50(&bw));
                let ratio = (p50(&total) / p50(&bw), created);
                rows.push(stats::Row::new(&format!("{system}: bwrap"), bw));
                interleaved.push((system, ratio));
                Some(Ok(total))
            }
            "api" => Some(
                api::run(state.path(), &agent()?, args.warmup, args.iterations).map(
                    |(cycle, round_trip)| {
                        rows.push(stats::Row::new("api: exec round trip", round_trip));
                        cycle
                    },
                ),
            ),
            "pooled" => Some(
                api::run_pooled(state.path(), &agent()?, args.warmup, args.iterations).map(
                    |(cycle, first)| {
                        rows.push(stats::Row::new("pooled: create → first exec", first));
                        cycle
                    },
                ),
            ),
            "template" => Some(
                api::run_template(state.path(), &agent()?, args.warmup, args.iterations).map(
                    |(tpl, base)| {
                        rows.push(stats::Row::new("api base: create → first exec", base));
                        // The `template` row: create --template → first exec.
                        tpl
                    },
                ),
            ),
            "bwrap" => {
                peers::available("bwrap").then(|| peers::bwrap(args.warmup, args.iterations))
            }
            "crun" | "runsc" | "podman" => peers::available(system).then(|| {
                let n = if system == "crun" {
                    args.iterations
                } else {
                    args.slow_iterations
                };
                oci::run(system, state.path(), &skeleton, args.warmup, n)
            }),
            "throughput" => {
                let a = agent()?;
                for pooled in [false, true] {
                    match throughput::creates(state.path(), &a, &args.clients, args.rounds, pooled)
                    {
                        Ok(l) => tput.extend(l),
                        Err(e) => println!("throughput (pooled: {pooled}): failed: {e:#}"),
                    }
                }
                match throughput::execs(state.path(), &a, &args.clients, args.execs) {
                    Ok(l) => tput.extend(l),
                    Err(e) => println!("throughput (execs): failed: {e:#}"),
                }
                continue;
            }
            "density" => {
                match density::run(state.path(), &agent()?, &rootfs, &args.density) {
                    Ok(l) => dens = l,
                    Err(e) => println!("density: failed: {e:#}"),
                }
                continue;
            }
            "stream" => {
                let bytes = args.stream_mib << 20;
                match stream::run(state.path(), &agent()?, bytes, args.stream_runs) {
                    Ok(r) => streamed = Some((bytes, r)),
                    Err(e) => println!("stream: failed: {e:#}"),
                }
                continue;
            }
            other => bail!("unknown system {other:?}"),
        };
        match result {
            Some(Ok(samples)) => rows.push(stats::Row::new(system, samples)),
            Some(Err(e)) => println!("{system}: failed: {e:#}"),
            None => println!(
                "{system}: not installed (bench/install-peers.sh, or apt-get install {})",
                peers::package(system)
            ),
        }
    }
    if !rows.is_empty() {
        stats::print_table(&rows);
    }
    for (system, (ratio, created)) in interleaved {
        println!("{system}: prism p50 / bwrap p50 (samples alternating) = {ratio:.2}x");
        if let Some(c) = created {
            println!("{system}: create + true p50 / bwrap p50 (samples alternating) = {c:.2}x");
        }
    }
    if !tput.is_empty() {
        throughput::print(&tput);
    }
    if !dens.is_empty() {
        density::print(&dens);
    }
    if let Some((bytes, (host, ws))) = streamed {
        stream::print(bytes, &host, &ws);
    }
    Ok(())
}
