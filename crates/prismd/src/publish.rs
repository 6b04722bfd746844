//! Published host ports (`prismctl run -p 18000:8000`, `publish` at create): while a sandbox
//! runs, the daemon listens on each `host_ip:host_port` and forwards every TCP connection to
//! the port inside the sandbox through its agent (`SandboxManager::open_port`, the same
//! tunnel as the port proxy), so it works in every network mode.
//!
//! The create handler binds the host ports before the sandbox is made (a taken port is a
//! `409 port_in_use` and no sandbox); stop and destroy close them at once. A reconcile loop
//! (every [`RECONCILE`], and when kicked) opens them for running sandboxes that have none —
//! after a daemon restart, or a start — and closes those of sandboxes that no longer run (the
//! janitor's stops, TTL expiry).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use prism_core::lifecycle::SandboxManager;
use prism_store::ListFilter;
use prism_types::{PublishedPort, Sandbox, SandboxState, codes};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::AppError;

/// How often running sandboxes and open host ports are compared.
pub const RECONCILE: Duration = Duration::from_secs(2);
/// Connections through one published port at once; more are closed.
const MAX_CONNECTIONS: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Host listeners bound for a sandbox that is being created.
pub struct Held(Vec<(PublishedPort, std::net::TcpListener)>);

/// Every published port of this daemon.
pub struct Publisher {
    default_ip: IpAddr,
    /// Sandbox id → its listener tasks.
    open: Mutex<HashMap<String, Vec<tokio::task::AbortHandle>>>,
    /// Host addresses bound by a create in progress (the reconcile loop leaves them alone).
    reserved: Mutex<HashSet<SocketAddr>>,
    /// Sandboxes whose ports could not be opened (warned once).
    warned: Mutex<HashSet<String>>,
    kick: Notify,
}

fn addr_of(p: &PublishedPort, default_ip: IpAddr) -> SocketAddr {
    let ip = p
        .host_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(default_ip);
    SocketAddr::new(ip, p.host_port)
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl Publisher {
    /// Published ports without an address listen on `default_ip`.
    pub fn new(default_ip: IpAddr) -> Self {
        Publisher {
            default_ip,
            open: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            warned: Mutex::new(HashSet::new()),
            kick: Notify::new(),
        }
    }

    /// Check `list`, fill in the default address, and bind every host port (before the
    /// sandbox is created). A port that is taken: `409 port_in_use`.
    pub fn reserve(&self, list: &mut [PublishedPort]) -> Result<Held, AppError> {
        prism_core::lifecycle::validate::publish(list)?;
        let mut held = Vec::new();
        for p in list.iter_mut() {
            let addr = addr_of(p, self.default_ip);
            p.host_ip = Some(addr.ip().to_string());
            let l = bind(addr).map_err(|e| {
                let (status, code) = if e.kind() == std::io::ErrorKind::AddrInUse {
                    (StatusCode::CONFLICT, codes::PORT_IN_USE)
                } else {
                    (StatusCode::UNPROCESSABLE_ENTITY, codes::INVALID_REQUEST)
                };
                AppError::new(
                    status,
                    code,
                    format!("cannot publish on host port {addr}: {e}"),
                )
            })?;
            held.push((p.clone(), l));
        }
        lock(&self.reserved).extend(held.iter().map(|(p, _)| addr_of(p, self.default_ip)));
        Ok(Held(held))
    }

    /// The host ports of sandbox `sb`, bound by [`Publisher::reserve`], start forwarding.
    /// Without a sandbox (its create failed) they are released.
    pub fn adopt(&self, manager: &SandboxManager, sb: Option<&Sandbox>, held: Held) {
        let addrs: Vec<SocketAddr> = held
            .0
            .iter()
            .map(|(p, _)| addr_of(p, self.default_ip))
            .collect();
        if let Some(sb) = sb.filter(|_| !held.0.is_empty()) {
            let mut tasks = Vec::new();
            for (p, l) in held.0 {
                match TcpListener::from_std(l) {
                    Ok(l) => tasks.push(spawn(manager, &sb.id, p.port, l)),
                    Err(error) => {
                        tracing::warn!(message = "published port lost", sandbox_id = %sb.id, %error)
                    }
                }
            }
            if let Some(old) = lock(&self.open).insert(sb.id.clone(), tasks) {
                old.iter().for_each(tokio::task::AbortHandle::abort);
            }
        }
        let mut r = lock(&self.reserved);
        for a in addrs {
            r.remove(&a);
        }
    }

    /// Close the host ports of sandbox `id` (stopped or destroyed).
    pub fn close(&self, id: &str) {
        if let Some(tasks) = lock(&self.open).remove(id) {
            tasks.iter().for_each(tokio::task::AbortHandle::abort);
        }
        lock(&self.warned).remove(id);
    }

    /// Reconcile soon (a sandbox was started).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// The reconcile loop, until `stop`.
    pub async fn run(self: Arc<Self>, manager: SandboxManager, stop: CancellationToken) {
        loop {
            if let Err(error) = self.reconcile(&manager).await {
                tracing::warn!(message = "published ports not reconciled", error = %crate::error::chain(&error));
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(RECONCILE) => {}
            }
        }
        let all: Vec<String> = lock(&self.open).keys().cloned().collect();
        for id in all {
            self.close(&id);
        }
    }

    async fn reconcile(
        &self,
        manager: &SandboxManager,
    ) -> Result<(), prism_core::lifecycle::LifecycleError> {
        let mut running = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = manager
                .list(ListFilter {
                    state: Some(SandboxState::Running),
                    limit: 1000,
                    after_id: after,
                    ..Default::default()
                })
                .await?;
            running.extend(page.into_iter().filter(|s| !s.publish.is_empty()));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let ids: HashSet<&str> = running.iter().map(|s| s.id.as_str()).collect();
        let gone: Vec<String> = lock(&self.open)
            .keys()
            .filter(|id| !ids.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.close(&id);
        }
        for sb in &running {
            if lock(&self.open).contains_key(&sb.id) {
                continue;
            }
            let addrs: Vec<SocketAddr> = sb
                .publish
                .iter()
                .map(|p| addr_of(p, self.default_ip))
                .collect();
            if addrs.iter().any(|a| lock(&self.reserved).contains(a)) {
                continue;
            }
            let mut held = Vec::new();
            let mut failed = None;
            for (p, a) in sb.publish.iter().zip(&addrs) {
                match bind(*a) {
                    Ok(l) => held.push((p.clone(), l)),
                    Err(e) => {
                        failed = Some((*a, e));
                        break;
                    }
                }
            }
            if let Some((addr, error)) = failed {
                if lock(&self.warned).insert(sb.id.clone()) {
                    tracing::warn!(message = "cannot publish a sandbox port; retrying", sandbox_id = %sb.id, %addr, %error);
                }
                continue;
            }
            lock(&self.warned).remove(&sb.id);
            lock(&self.reserved).extend(addrs.iter().copied());
            self.adopt(manager, Some(sb), Held(held));
        }
        Ok(())
    }
}

fn spawn(
    manager: &SandboxManager,
    id: &str,
    port: u16,
    listener: TcpListener,
) -> tokio::task::AbortHandle {
    let (manager, id) = (manager.clone(), id.to_string());
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let mut sock = match listener.accept().await {
                Ok((s, _)) => s,
                Err(error) => {
                    tracing::debug!(message = "published port accept failed", sandbox_id = %id, %error);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (manager, id) = (manager.clone(), id.clone());
            conns.spawn(async move {
                let _permit = permit;
                match manager.open_port(&id, port).await {
                    Ok(mut tunnel) => {
                        let _ = tokio::io::copy_bidirectional(&mut sock, &mut tunnel).await;
                    }
                    Err(error) => {
                        tracing::debug!(message = "published port: nothing to connect to", sandbox_id = %id, port, %error);
                    }
                }
            });
        }
    })
    .abort_handle()
}
