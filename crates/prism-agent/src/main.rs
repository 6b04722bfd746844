//! `prism-agent`: PID 1 of every Prism sandbox. It serves envd's Connect-RPC JSON protocol
//! (`process.Process`, `filesystem.Filesystem`) plus `/files`, `/tar`, `/health` and code
//! contexts (`/code/…`) over HTTP/1.1
//! on a unix socket, spawns and reaps processes, and moves files.
//!
//! `prism-agent --listen-fd N` serves on an inherited listening socket; `--listen PATH` binds
//! one (development and tests). See README.md for the protocol and user selection.
#![forbid(unsafe_code)]

mod args;
mod code;
mod env;
mod fdio;
mod files;
mod fsops;
mod log;
mod paths;
mod ports;
mod process;
mod reaper;
mod server;
mod timeline;
mod upload;
mod users;
mod watch;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

/// Small allocations of the start-up and the first requests come from one static arena
/// (`prism_sys::alloc`): consecutive `.bss` pages instead of a fresh mapping per size class.
#[global_allocator]
static ALLOC: prism_sys::alloc::StartupArena<ARENA_BYTES> = prism_sys::alloc::StartupArena::new();
/// The start-up arena's size.
const ARENA_BYTES: usize = 96 * 1024;

fn main() -> anyhow::Result<()> {
    timeline::mark(timeline::Mark::Main);
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(args::Parsed::Run(a)) => a,
        Ok(args::Parsed::Help) => {
            print!("{}", args::USAGE);
            return Ok(());
        }
        Ok(args::Parsed::Version) => {
            println!("prism-agent {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Err(e) => {
            eprintln!("prism-agent: {e}\n\n{}", args::USAGE);
            std::process::exit(2);
        }
    };
    log::init();
    // Sandbox code runs as the same (namespace) root as the agent: without this it could
    // ptrace the agent or read its memory and fds through /proc/1.
    if let Err(error) = prism_sys::proc::set_undumpable() {
        tracing::warn!(message = "cannot make the agent non-dumpable", %error);
    }
    // Nothing the agent was born with may reach the processes it spawns (they are started
    // without a pre-exec hook when possible; see process/spawn.rs). The listening fd is taken
    // (and re-made close-on-exec) later.
    prism_sys::proc::cloexec_from(3).context("cannot mark inherited fds close-on-exec")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .thread_keep_alive(Duration::from_secs(5))
        .build()
        .context("cannot build the runtime")?;
    timeline::mark(timeline::Mark::Runtime);
    runtime.block_on(run(args))
}

async fn run(args: args::Args) -> anyhow::Result<()> {
    let listener = match (&args.listen, args.listen_fd) {
        (Some(path), _) => bind(path)?,
        (None, Some(fd)) => {
            let owned = take_fd(fd).with_context(|| format!("cannot take listening fd {fd}"))?;
            let std_listener = std::os::unix::net::UnixListener::from(owned);
            std_listener.set_nonblocking(true)?;
            UnixListener::from_std(std_listener)?
        }
        (None, None) => anyhow::bail!("--listen or --listen-fd is required"),
    };
    // The agent's own environment is the base of every process's environment.
    let base_env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("PRISM_AGENT_"))
        .collect();

    let base_env = Arc::new(env::BaseEnv::new(base_env));

    let reaper = Arc::new(reaper::Reaper::default());
    let app = Arc::new(server::App {
        processes: process::Processes::new(reaper.clone(), base_env.clone()),
        contexts: code::Contexts::new(reaper.clone(), base_env.clone()),
        env: base_env,
        watchers: Arc::new(watch::Watchers::default()),
        accounts: users::Accounts::default(),
    });
    // Install the SIGCHLD handler before anything can be spawned.
    let sigchld = signal(SignalKind::child())?;
    tokio::spawn(reaper::run(reaper, sigchld));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(pid = std::process::id(), "prism-agent serving");
    warm_up(&app);
    timeline::mark(timeline::Mark::Serving);

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    timeline::mark(timeline::Mark::Accepted);
                    let app = app.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| server::handle(app.clone(), req));
                        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades();
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::task::yield_now().await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    app.processes
        .shutdown(Duration::from_secs(args.shutdown_grace_secs))
        .await;
    Ok(())
}

/// Work done before the first connection is accepted (time the runtime usually spends
/// finishing the sandbox's start and the client connecting) instead of in the first request:
/// read the account databases into their cache (see `users`).
fn warm_up(app: &server::App) {
    let _ = app.accounts.lookup("root");
}

/// Binds a fresh socket at `path`, replacing a stale socket file.
fn bind(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(md) = std::fs::symlink_metadata(path)
        && md.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))
}

/// Takes ownership of an inherited fd: the agent keeps a close-on-exec duplicate and the
/// original number is closed (0/1/2 are pointed at /dev/null), so no child inherits it.
fn take_fd(fd: i32) -> anyhow::Result<OwnedFd> {
    if fd > 2 {
        // Move it onto stdin, where std lends it to us safely; then close the original.
        nix::unistd::dup2(fd, 0).context("dup2")?;
        nix::unistd::close(fd).context("close")?;
        return take_fd(0);
    }
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let owned = match fd {
        0 => std::io::stdin().as_fd().try_clone_to_owned()?,
        1 => std::io::stdout().as_fd().try_clone_to_owned()?,
        2 => std::io::stderr().as_fd().try_clone_to_owned()?,
        _ => anyhow::bail!("invalid fd {fd}"),
    };
    match fd {
        0 => rustix::stdio::dup2_stdin(&devnull)?,
        1 => rustix::stdio::dup2_stdout(&devnull)?,
        _ => rustix::stdio::dup2_stderr(&devnull)?,
    }
    Ok(owned)
}
