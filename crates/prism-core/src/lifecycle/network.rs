//! Sandbox networking as the lifecycle sees it. prism-core does not set up links or firewall
//! rules itself: the daemon hands the manager a [`SandboxNetwork`] (prism-net behind it,
//! [`SandboxManager::set_networking`]). The manager attaches a sandbox's network after its
//! runtime started (the network namespace exists then), detaches it when the sandbox stops,
//! fails or goes, changes it at runtime ([`SandboxManager::set_network_mode`]), and removes what
//! belongs to sandboxes that are not running ([`SandboxManager::reconcile_network`]). Without a
//! `SandboxNetwork` every sandbox stays in `none` (loopback only) whatever it asks for.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use prism_store::{ListFilter, SandboxRecord};
use prism_types::network::NetworkMode;
use prism_types::{Sandbox, SandboxState};

use super::manager::{SandboxManager, to_api};
use super::state::{Action, plan};
use super::{LifecycleError, now_ms, validate};
use crate::SandboxHandle;

/// A failure of the host networking, as a sentence.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetworkError(pub String);

/// Traffic counters of a sandbox (as the sandbox sees them: rx = received by it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// DNS queries dropped by the rate limit.
    pub dns_dropped: u64,
    /// Connections and requests the name proxy refused.
    pub proxy_refused: u64,
}

/// What host networking has on this host: sandbox ids with rules or forwarders, and every
/// sandbox link (by interface name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetLeftovers {
    pub ids: Vec<String>,
    pub links: Vec<String>,
}

/// Host-side networking of sandboxes.
pub trait SandboxNetwork: Send + Sync + 'static {
    /// Give the running sandbox `id` (PID 1 = `pid`) the network of `mode`, replacing what it
    /// had; `None` removes it. Returns the address its resolver must use, if any.
    fn attach<'a>(
        &'a self,
        id: &'a str,
        pid: u32,
        mode: &'a NetworkMode,
    ) -> BoxFuture<'a, Result<Option<Ipv4Addr>, NetworkError>>;
    /// Remove everything of sandbox `id`; removing nothing succeeds.
    fn detach<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), NetworkError>>;
    /// Remove one sandbox link by name.
    fn remove_link<'a>(&'a self, ifname: &'a str) -> BoxFuture<'a, Result<(), NetworkError>>;
    /// The host interface name sandbox `id` would have.
    fn ifname(&self, id: &str) -> String;
    fn leftovers(&self) -> BoxFuture<'_, Result<NetLeftovers, NetworkError>>;
    fn counters(&self, id: &str) -> Option<NetCounters>;
}

/// The mode a record asks for (`none` when unreadable: the safe side).
pub(crate) fn mode_of(rec: &SandboxRecord) -> NetworkMode {
    rec.spec
        .network
        .as_deref()
        .and_then(|m| NetworkMode::parse(m).ok())
        .unwrap_or(NetworkMode::None)
}

impl SandboxManager {
    /// Use `net` for the networks of sandboxes (once; later calls are ignored).
    pub fn set_networking(&self, net: Arc<dyn SandboxNetwork>) {
        if self.inner.network.set(net).is_err() {
            tracing::warn!(message = "sandbox networking was already set; keeping the first");
        }
    }

    fn networking(&self) -> Option<&Arc<dyn SandboxNetwork>> {
        self.inner.network.get()
    }

    /// Attach the network of a locked, running sandbox and point its resolver at the Prism
    /// DNS forwarder.
    pub(crate) async fn net_attach(
        &self,
        rec: &SandboxRecord,
        handle: &SandboxHandle,
    ) -> Result<(), LifecycleError> {
        let mode = mode_of(rec);
        let Some(net) = self.networking() else {
            if mode != NetworkMode::None {
                tracing::warn!(message = "no sandbox networking on this daemon: the sandbox stays in none", sandbox_id = %rec.id);
            }
            return Ok(());
        };
        if mode == NetworkMode::None {
            return net.detach(&rec.id).await.map_err(LifecycleError::Network);
        }
        let ns = net
            .attach(&rec.id, handle.pid, &mode)
            .await
            .map_err(LifecycleError::Network)?;
        if let Some(ns) = ns {
            let agent = self.agent_of(handle);
            let text =
                format!("# written by Prism: the sandbox's DNS forwarder\nnameserver {ns}\n");
            // The file may be a symlink into the host's /run: replace it, never follow it.
            let _ = agent.remove("/etc/resolv.conf").await;
            agent
                .write_file("/etc/resolv.conf", Bytes::from(text))
                .await
                .map_err(LifecycleError::Agent)?;
        }
        Ok(())
    }

    /// Remove the network of a sandbox (errors are logged: the janitor retries).
    pub(crate) async fn net_detach(&self, id: &str) {
        if let Some(net) = self.networking()
            && let Err(error) = net.detach(id).await
        {
            tracing::warn!(message = "could not remove a sandbox's network", sandbox_id = %id, %error);
        }
    }

    /// Traffic counters of a sandbox, when it has a network.
    pub(crate) fn net_counters(&self, id: &str) -> Option<NetCounters> {
        self.networking()?.counters(id)
    }

    /// Change the network mode of a sandbox. A running sandbox gets the new network at once
    /// (no restart); a stopped one at its next start. The mode is recorded.
    pub async fn set_network_mode(
        &self,
        id_or_name: &str,
        mode: &str,
    ) -> Result<Sandbox, LifecycleError> {
        validate::network(mode)?;
        let (_g, mut rec) = self.locked(id_or_name).await?;
        plan(Action::SetNetwork, rec.state)?;
        let old = rec.spec.network.clone();
        rec.spec.network = Some(mode.to_string());
        if rec.state == SandboxState::Running {
            if mode != "none" && self.networking().is_none() {
                return Err(LifecycleError::InvalidRequest(
                    "this daemon has no sandbox networking: only none is available".into(),
                ));
            }
            let handle = Self::handle_of(&rec)?;
            if let Err(e) = self.net_attach(&rec, &handle).await {
                // Put the previous network back as well as we can.
                let mut back = rec.clone();
                back.spec.network = old;
                let _ = self.net_attach(&back, &handle).await;
                return Err(e);
            }
        }
        rec.updated_at_ms = now_ms();
        self.save(&rec, "network changed").await?;
        self.event(&rec.id, "network_changed", format!("network={mode}"))
            .await;
        tracing::info!(message = "sandbox network changed", sandbox_id = %rec.id, network = mode);
        Ok(to_api(&rec))
    }

    /// Remove host networking of every sandbox that is not running with a network (after a
    /// daemon crash, or a sandbox whose PID 1 died). Each sandbox is checked under its lock,
    /// so a concurrent start or mode change is never undone. Returns what was removed.
    pub async fn reconcile_network(&self) -> Result<Vec<String>, LifecycleError> {
        let Some(net) = self.networking().cloned() else {
            return Ok(Vec::new());
        };
        let left = net.leftovers().await.map_err(LifecycleError::Network)?;
        let recs = self.store(|s| s.list(&ListFilter::default())).await?;
        let by_if: HashMap<String, &str> = recs
            .iter()
            .map(|r| (net.ifname(&r.id), r.id.as_str()))
            .collect();
        let mut removed = Vec::new();
        // id → its link, when it has one.
        let mut ids: BTreeMap<String, Option<String>> =
            left.ids.into_iter().map(|i| (i, None)).collect();
        for l in left.links {
            match by_if.get(&l) {
                Some(id) => {
                    ids.insert(id.to_string(), Some(l));
                }
                None => {
                    net.remove_link(&l).await.map_err(LifecycleError::Network)?;
                    removed.push(l);
                }
            }
        }
        for (id, link) in ids {
            let known = recs.iter().any(|r| r.id == id);
            let _g = if known {
                Some(self.lock_id(&id).await)
            } else {
                None
            };
            let key = id.clone();
            let rec = self.store(move |s| s.get(&key)).await?;
            let keep = rec.is_some_and(|r| {
                r.state == SandboxState::Running && mode_of(&r) != NetworkMode::None
            });
            if !keep {
                net.detach(&id).await.map_err(LifecycleError::Network)?;
                if let Some(l) = link {
                    net.remove_link(&l).await.map_err(LifecycleError::Network)?;
                }
                removed.push(id);
            }
        }
        if !removed.is_empty() {
            tracing::info!(
                message = "leftover sandbox networks removed",
                count = removed.len()
            );
        }
        Ok(removed)
    }
}
