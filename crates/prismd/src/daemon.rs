//! The daemon around the router: it locks the state directory (one prismd per state dir),
//! opens the store, builds the runtime, recovers sandboxes left by a previous run, runs the
//! janitor, and serves until SIGTERM or SIGINT. Sandboxes keep running across a daemon restart
//! and are re-adopted by the next start.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use prism_core::Runtime;
use prism_core::lifecycle::{LifecycleError, ManagerConfig, ProtoAgents, SandboxManager};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::{AppState, app};

/// How long open streams (logs -f, terminals) may delay a graceful shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the daemon waits at exit for sandbox teardowns still running in the background.
const SHUTDOWN_SETTLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another prismd{pid} is already using the state directory {path}; stop it first or \
         pass a different --state-dir"
    )]
    AlreadyRunning { path: String, pid: String },
    #[error("cannot lock {path}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] prism_store::StoreError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::BuildError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Secrets(#[from] crate::auth::secrets::SecretsError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// The exclusive lock of a state directory, held for the daemon's life.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

/// Take `<state_dir>/prismd.lock` (flock, non-blocking) and write our pid into it.
pub fn lock_state_dir(state_dir: &Path) -> Result<StateLock, DaemonError> {
    let path = state_dir.join("prismd.lock");
    let lock_err = |source| DaemonError::Lock {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(DaemonError::AlreadyRunning {
                path: state_dir.display().to_string(),
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        Err((_, errno)) => return Err(lock_err(std::io::Error::from(errno))),
    };
    lock.set_len(0).map_err(lock_err)?;
    lock.rewind().map_err(lock_err)?;
    writeln!(lock, "{}", std::process::id()).map_err(lock_err)?;
    Ok(StateLock { _lock: lock, path })
}

/// Resolve on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Run the daemon with `runtime` until a shutdown signal.
pub async fn run(cfg: Config, runtime: Arc<dyn Runtime>) -> Result<(), DaemonError> {
    let sd = &cfg.state_dir;
    std::fs::create_dir_all(sd).map_err(|source| DaemonError::StateDir {
        path: sd.display().to_string(),
        source,
    })?;
    let _lock = lock_state_dir(sd)?;
    let durability = if cfg.fsync_state {
        prism_store::Durability::Disk
    } else {
        prism_store::Durability::Os
    };
    let store = Arc::new(prism_store::open(&sd.join("prism.db"), durability)?);
    let secrets = Arc::new(crate::auth::secrets::Secrets::open(sd, store.clone())?);
    let auth = Arc::new(
        crate::auth::Auth::new(cfg.auth, store.clone(), cfg.limits)?.with_secrets(secrets.clone()),
    );
    crate::auth::bootstrap(&auth, sd).map_err(|source| DaemonError::StateDir {
        path: sd.join(crate::auth::ADMIN_KEY_FILE).display().to_string(),
        source,
    })?;
    let mcfg = ManagerConfig {
        state_dir: sd.clone(),
        default_timeout_s: cfg.default_timeout_s,
        max_lifetime_s: cfg.max_lifetime_s,
        log_max_bytes: cfg.log_max_bytes,
        exec_output_limit: cfg.exec_output_limit,
        pools: cfg.pools.clone(),
        pool_min_available_bytes: cfg.pool_min_available_bytes,
        ..ManagerConfig::new(sd.clone())
    };
    let failed = store.fail_unfinished_templates(
        "the daemon stopped during the build",
        prism_core::lifecycle::now_ms(),
    )?;
    if failed > 0 {
        tracing::warn!(
            message = "template builds interrupted by a restart marked failed",
            count = failed
        );
    }
    let settle = runtime.clone();
    let manager = SandboxManager::new(
        store.clone(),
        runtime,
        Arc::new(ProtoAgents::default()),
        mcfg,
    )?;
    manager.set_secret_env(Arc::new(crate::auth::secrets::Provider(secrets)));
    manager.set_resolver(Arc::new(
        crate::resolver::ImageResolver::new(sd).with_templates(store.clone()),
    ));
    if cfg.network.enabled {
        set_up_networking(&manager, &cfg.network).await;
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: cfg.listen.to_string(),
            source,
        })?;
    let listen = listener.local_addr().unwrap_or(cfg.listen);
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let publish = Arc::new(crate::publish::Publisher::new(cfg.network.publish_address));

    // Recovery, then the janitor.
    let bg = {
        let manager = manager.clone();
        let ready = ready.clone();
        let stop = stop.clone();
        let every = Duration::from_secs(cfg.janitor_interval_s);
        let publish = publish.clone();
        tokio::spawn(async move {
            match manager.recover().await {
                Ok((adopted, failed)) => {
                    tracing::info!(message = "sandboxes recovered", adopted, failed);
                }
                Err(error) => tracing::error!(message = "recovery failed", %error),
            }
            manager.start_pools();
            // Host ports of the running sandboxes open again (recovery).
            tokio::spawn(publish.run(manager.clone(), stop.clone()));
            ready.store(true, Ordering::Release);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match manager.sweep().await {
                    Ok(r) if r != Default::default() => {
                        tracing::info!(
                            message = "janitor",
                            expired = r.expired.len(),
                            idled = r.idled.len(),
                            died = r.died.len(),
                            orphans = r.orphans.len(),
                            purged = r.purged
                        );
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(message = "janitor sweep failed", %error),
                }
            }
        })
    };

    let shutdown_manager = manager.clone();
    let shutdown_auth = auth.clone();
    let state = AppState {
        manager,
        ready,
        listen,
        auth,
        publish,
    };
    tracing::info!(message = "prismd listening", %listen, state_dir = %sd.display(), auth = cfg.auth);
    eprintln!("prismd listening on http://{listen}");
    let shutdown = stop.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!(message = "shutting down");
        shutdown.cancel();
    });
    let server = tokio::spawn(async move { server.await });
    tokio::select! {
        r = server => {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(DaemonError::Serve(e)),
                Err(e) => return Err(DaemonError::Serve(std::io::Error::other(e))),
            }
        }
        _ = async {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::info!(message = "open streams closed by shutdown");
        }
    }
    stop.cancel();
    // The audit records of every request answered are written before the daemon exits.
    shutdown_auth.audit().flush().await;
    let _ = bg.await;
    shutdown_manager.close_pools().await;
    if cfg.stop_sandboxes_on_shutdown {
        stop_all(&shutdown_manager).await;
    }
    // Destroys finish in the background: let them complete before exiting.
    let settled = tokio::task::spawn_blocking(move || settle.settle(SHUTDOWN_SETTLE)).await;
    if !matches!(settled, Ok(true)) {
        tracing::warn!(
            message = "some sandbox teardowns did not finish before exit (the janitor finishes them at the next start)"
        );
    }
    // And those of requests that ended during the shutdown (streams closed by it).
    shutdown_auth.audit().flush().await;
    Ok(())
}

/// Give the manager host networking; without it (not root, no nft) sandboxes stay in `none`.
async fn set_up_networking(manager: &SandboxManager, n: &crate::config::NetSettings) {
    let pool = match prism_net::Pool::parse(&n.pool) {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(message = "sandbox networking disabled", %error);
            return;
        }
    };
    let cfg = prism_net::NetConfig {
        table: n.table.clone(),
        pool,
        upstream_dns: n.dns_upstream,
        dns_rate: n.dns_rate,
        proxy_port: n.proxy_port,
    };
    match prism_net::Network::new(cfg).await {
        Ok(net) => {
            tracing::info!(message = "sandbox networking ready", pool = %n.pool, table = %n.table);
            manager.set_networking(Arc::new(crate::network::HostNetwork(net)));
        }
        Err(error) => tracing::error!(
            message = "sandbox networking unavailable: open and allow sandboxes get loopback only",
            error = %crate::error::chain(&error)
        ),
    }
}

/// Stop every running sandbox (the `stop_sandboxes_on_shutdown` policy).
async fn stop_all(manager: &SandboxManager) {
    let mut after_id = None;
    loop {
        let filter = prism_store::ListFilter {
            state: Some(prism_types::SandboxState::Running),
            after_id: after_id.take(),
            ..Default::default()
        };
        let (page, next) = match manager.list(filter).await {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(message = "cannot list sandboxes to stop them", %error);
                return;
            }
        };
        for sb in page {
            match manager.stop(&sb.id).await {
                Ok(_) => tracing::info!(message = "stopped on shutdown", sandbox_id = %sb.id),
                Err(error) => {
                    tracing::warn!(message = "cannot stop on shutdown", sandbox_id = %sb.id, %error)
                }
            }
        }
        match next {
            Some(cursor) => after_id = Some(cursor),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let first = lock_state_dir(dir.path());
        assert!(first.is_ok());
        let second = lock_state_dir(dir.path());
        let msg = second
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("another prismd"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        assert!(
            lock_state_dir(dir.path()).is_ok(),
            "released with its holder"
        );
    }
}
