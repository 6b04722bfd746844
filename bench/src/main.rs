//! prism-bench: Prism measured side by side with its peers on this machine.
//!
//! `create → first exec → destroy` of a sandbox running `/bin/true` over the same root filesystem
//! (the `base` template's skeleton plus the host's `/usr`): Prism's namespace runtime, bubblewrap,
//! crun (with the cgroup2 mount hidden, as crun 1.8 refuses hybrid hierarchies), and plain
//! fork+exec on the host as the floor. Prints medians, p95 and ratios; never asserts a time.

mod api;
mod image;
mod peers;
mod prism;
mod stats;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Prism vs. peers: create → first exec → destroy")]
struct Args {
    /// Measured iterations per system.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// Unmeasured iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Comma-separated subset of: fork,prism,image,api,pooled,template,bwrap,crun (`api`,
    /// `pooled` and `template` go through a real prismd, `pooled` with a warm pool of `base`,
    /// `template` from a built template vs `base`; `image` is `prism` over an OCI image's
    /// layers instead of the `base` template).
    #[arg(
        long,
        default_value = "fork,prism,image,api,pooled,template,bwrap,crun"
    )]
    only: String,
    /// The static agent (default: target/x86_64-unknown-linux-musl/release, then debug).
    #[arg(long, env = "PRISM_AGENT")]
    agent: Option<PathBuf>,
    /// Internal: run crun in a loop (inside a mount namespace without the cgroup2 mount).
    #[arg(long, hide = true)]
    crun_worker: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(bundle) = &args.crun_worker {
        return peers::crun_worker(bundle, args.warmup, args.iterations);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("prism-bench needs root (namespaces, cgroups)");
    }
    let state = tempfile::Builder::new()
        .prefix("prism-bench-")
        .tempdir_in("/var/tmp")
        .context("state dir")?;
    let rootfs = prism_core::template::base::ensure(&state.path().join("templates"))?;
    let skeleton = rootfs.mounts[0].lowers[0].clone();
    let systems: Vec<&str> = args.only.split(',').map(str::trim).collect();
    let mut rows: Vec<stats::Row> = Vec::new();
    println!(
        "create → first exec (/bin/true) → destroy; {} iterations after {} warm-up; {} cores",
        args.iterations,
        args.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for system in systems {
        let result = match system {
            "fork" => Some(peers::fork_exec(args.warmup, args.iterations)),
            "prism" => {
                let agent = prism::agent_path(args.agent.clone())?;
                let (total, parts) = prism::create_exec_destroy(
                    state.path(),
                    &agent,
                    &rootfs,
                    args.warmup,
                    args.iterations,
                )?;
                for (name, samples) in parts {
                    rows.push(stats::Row::new(&format!("  prism: {name}"), samples));
                }
                Some(Ok(total))
            }
            "image" => {
                let agent = prism::agent_path(args.agent.clone())?;
                let image_rootfs = image::rootfs(state.path())?;
                let (total, parts) = prism::create_exec_destroy(
                    state.path(),
                    &agent,
                    &image_rootfs,
                    args.warmup,
                    args.iterations,
                )?;
                for (name, samples) in parts {
                    rows.push(stats::Row::new(&format!("  image: {name}"), samples));
                }
                Some(Ok(total))
            }
            "api" => {
                let agent = prism::agent_path(args.agent.clone())?;
                match api::run(state.path(), &agent, args.warmup, args.iterations) {
                    Ok((cycle, round_trip)) => {
                        rows.push(stats::Row::new("api: exec round trip", round_trip));
                        Some(Ok(cycle))
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            "pooled" => {
                let agent = prism::agent_path(args.agent.clone())?;
                match api::run_pooled(state.path(), &agent, args.warmup, args.iterations) {
                    Ok((cycle, first)) => {
                        rows.push(stats::Row::new("pooled: create → first exec", first));
                        Some(Ok(cycle))
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            "template" => {
                let agent = prism::agent_path(args.agent.clone())?;
                match api::run_template(state.path(), &agent, args.warmup, args.iterations) {
                    Ok((tpl, base)) => {
                        rows.push(stats::Row::new("api base: create → first exec", base));
                        // The `template` row: create --template → first exec.
                        Some(Ok(tpl))
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            "bwrap" => {
                peers::available("bwrap").then(|| peers::bwrap(args.warmup, args.iterations))
            }
            "crun" => peers::available("crun")
                .then(|| peers::crun(state.path(), &skeleton, args.warmup, args.iterations)),
            other => bail!("unknown system {other:?}"),
        };
        match result {
            Some(Ok(samples)) => rows.push(stats::Row::new(system, samples)),
            Some(Err(e)) => println!("{system}: failed: {e:#}"),
            None => println!(
                "{system}: not installed (apt-get install {})",
                peers::package(system)
            ),
        }
    }
    stats::print_table(&rows);
    Ok(())
}
