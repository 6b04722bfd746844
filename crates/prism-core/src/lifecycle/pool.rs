//! Warm pools: per (template, resource shape), a configured number of started, idle sandboxes
//! whose agent has answered a health check. `create` claims one atomically when the request
//! fits the pool's shape, and a background task refills the pool. Members have no store record
//! until they are claimed, so after a daemon crash they are runtime leftovers without a record
//! and the janitor's orphan sweep destroys them; while the daemon lives, the orphan sweep skips
//! the ids the pools own. A member is handed out at most once (it leaves the pool when claimed)
//! and never after its PID 1 died. Under memory pressure (`MemAvailable` below the configured
//! floor) pools destroy their idle members and stop refilling until memory comes back.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prism_types::{CreateSandboxRequest, PoolInfo, Resources};

use futures_util::StreamExt;

use super::agent::{ProcEvent, ProcSpec};
use super::manager::{SandboxManager, blocking, lock};
use super::templates;
use crate::{SandboxHandle, SandboxSpec};

/// How often the refill task looks at memory and pool sizes without being woken.
const TICK: Duration = Duration::from_secs(2);
/// Pause after a failed member start before the next attempt.
const BACKOFF: Duration = Duration::from_secs(1);
/// How long a fresh member's agent may take to answer its health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// After a claim wakes the refill task, it waits this long before starting a replacement, so
/// the replacement's start (milliseconds of CPU) does not compete with the claimed sandbox's
/// first requests.
const REFILL_DELAY: Duration = Duration::from_millis(25);
/// Nice value of a member's start (the launch and the agent's start-up); the member's agent
/// is set back to 0 once started.
const REFILL_NICE: i32 = 10;

/// One pool's configuration: sandboxes of `template` with `resources`, `size` kept warm.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub template: String,
    pub resources: Resources,
    pub size: usize,
}

impl PoolConfig {
    /// Whether a validated create request can be served by a member of this pool: same
    /// template (no image) and resources, no name (the hostname is fixed at start), no network beyond
    /// loopback, the default security profile.
    pub fn fits(&self, spec: &CreateSandboxRequest) -> bool {
        spec.name.is_none()
            && spec
                .template
                .as_deref()
                .unwrap_or(prism_types::DEFAULT_TEMPLATE)
                == self.template
            && spec.resources == self.resources
            && spec.network.as_deref().unwrap_or("none") == "none"
            && spec
                .security
                .is_none_or(|s| s == prism_types::SecurityOptions::default())
    }
}

/// A started, healthy, never-used sandbox.
pub(crate) struct Member {
    pub id: String,
    pub handle: SandboxHandle,
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<Member>,
    starting: usize,
    claimed: u64,
    misses: u64,
    failures: u64,
}

struct Pool {
    cfg: PoolConfig,
    st: Mutex<PoolState>,
}

/// Every pool of a manager.
pub(crate) struct Pools {
    pools: Vec<Pool>,
    /// Ids of members (ready or starting): the orphan sweep leaves them alone.
    owned: Mutex<HashSet<String>>,
    wake: tokio::sync::Notify,
    /// Refill only while `MemAvailable` is at least this (bytes; 0 = never shrink).
    min_available: u64,
    /// Set when memory was short at the last look.
    pressure: Mutex<bool>,
    closed: Mutex<bool>,
}

impl Pools {
    pub fn new(cfgs: &[PoolConfig], min_available: u64) -> Self {
        Pools {
            pools: cfgs
                .iter()
                .filter(|c| c.size > 0)
                .map(|c| Pool {
                    cfg: c.clone(),
                    st: Mutex::new(PoolState::default()),
                })
                .collect(),
            owned: Mutex::new(HashSet::new()),
            wake: tokio::sync::Notify::new(),
            min_available,
            pressure: Mutex::new(false),
            closed: Mutex::new(false),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Whether `id` is a pool member (ready or being started).
    pub fn owns(&self, id: &str) -> bool {
        lock(&self.owned).contains(id)
    }

    /// Take a ready member for `spec`, if a pool fits it. Counts a miss when a fitting pool
    /// is empty. The caller checks the member is alive.
    pub fn take(&self, spec: &CreateSandboxRequest) -> Option<Member> {
        let pool = self.pools.iter().find(|p| p.cfg.fits(spec))?;
        let mut st = lock(&pool.st);
        match st.ready.pop_front() {
            Some(m) => {
                st.claimed += 1;
                drop(st);
                lock(&self.owned).remove(&m.id);
                self.wake.notify_one();
                Some(m)
            }
            None => {
                st.misses += 1;
                self.wake.notify_one();
                None
            }
        }
    }

    /// What `prismctl info` shows.
    pub fn info(&self) -> Vec<PoolInfo> {
        let pressure = *lock(&self.pressure);
        self.pools
            .iter()
            .map(|p| {
                let st = lock(&p.st);
                PoolInfo {
                    template: p.cfg.template.clone(),
                    resources: p.cfg.resources,
                    size: p.cfg.size as u64,
                    ready: st.ready.len() as u64,
                    starting: st.starting as u64,
                    claimed: st.claimed,
                    misses: st.misses,
                    failures: st.failures,
                    memory_pressure: pressure,
                }
            })
            .collect()
    }

    /// The index of a pool that needs one more member, reserving the start.
    fn reserve(&self) -> Option<usize> {
        if *lock(&self.closed) || *lock(&self.pressure) {
            return None;
        }
        self.pools.iter().position(|p| {
            let mut st = lock(&p.st);
            let want = st.ready.len() + st.starting < p.cfg.size;
            if want {
                st.starting += 1;
            }
            want
        })
    }

    /// Every ready member, removed from the pools.
    fn drain(&self) -> Vec<Member> {
        let mut out = Vec::new();
        for p in &self.pools {
            out.extend(lock(&p.st).ready.drain(..));
        }
        out
    }
}

/// `MemAvailable` of /proc/meminfo in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

impl SandboxManager {
    /// Pool state for `GET /v1/info`.
    pub fn pools(&self) -> Vec<PoolInfo> {
        self.inner.pools.info()
    }

    /// Start the background task that keeps the pools filled. Does nothing without pools.
    pub fn start_pools(&self) {
        if self.inner.pools.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.refill_loop().await });
    }

    /// Destroy every idle member and stop refilling (daemon shutdown).
    pub async fn close_pools(&self) {
        *lock(&self.inner.pools.closed) = true;
        self.inner.pools.wake.notify_one();
        self.destroy_members(self.inner.pools.drain()).await;
    }

    /// A live member fitting `spec`, if any; dead members met on the way are destroyed.
    pub(crate) async fn claim(&self, spec: &CreateSandboxRequest) -> Option<Member> {
        while let Some(m) = self.inner.pools.take(spec) {
            // A non-blocking wait on the member's pidfd: made here, not on the blocking pool.
            match self.inner.runtime.reap(&m.handle) {
                Ok(None) => return Some(m),
                other => {
                    tracing::warn!(message = "discarding a dead pool member", sandbox_id = %m.id, ?other);
                    self.destroy_members(vec![m]).await;
                }
            }
        }
        None
    }

    async fn destroy_members(&self, members: Vec<Member>) {
        for m in members {
            let rt = self.inner.runtime.clone();
            let id = m.id.clone();
            if let Ok(Err(error)) = blocking(move || rt.destroy(&id)).await {
                tracing::warn!(message = "pool member cleanup failed", sandbox_id = %m.id, %error);
            }
            lock(&self.inner.pools.owned).remove(&m.id);
        }
    }

    async fn refill_loop(&self) {
        let pools = &self.inner.pools;
        loop {
            if *lock(&pools.closed) {
                return;
            }
            self.check_memory().await;
            match pools.reserve() {
                Some(i) => {
                    let ok = self.start_member(i).await;
                    if !ok {
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
                None => {
                    if tokio::time::timeout(TICK, pools.wake.notified())
                        .await
                        .is_ok()
                    {
                        tokio::time::sleep(REFILL_DELAY).await;
                    }
                }
            }
        }
    }

    /// Look at `MemAvailable`; under the floor, destroy idle members and pause refills.
    async fn check_memory(&self) {
        let pools = &self.inner.pools;
        if pools.min_available == 0 {
            return;
        }
        let short = mem_available().is_some_and(|a| a < pools.min_available);
        let was = std::mem::replace(&mut *lock(&pools.pressure), short);
        if short {
            let idle = pools.drain();
            if !was || !idle.is_empty() {
                tracing::warn!(
                    message = "memory pressure: pools shrink",
                    destroyed = idle.len(),
                    min_available = pools.min_available
                );
            }
            self.destroy_members(idle).await;
        } else if was {
            tracing::info!(message = "memory pressure over: pools refill");
        }
    }

    /// Start one member of pool `i` (reserved by `reserve`). False when it failed.
    async fn start_member(&self, i: usize) -> bool {
        let pools = &self.inner.pools;
        let pool = &pools.pools[i];
        let id = uuid::Uuid::now_v7().simple().to_string();
        lock(&pools.owned).insert(id.clone());
        let started = self.start_member_runtime(&id, &pool.cfg).await;
        // Decide under the lock, clean up after it.
        let (keep, ok) = {
            let mut st = lock(&pool.st);
            st.starting -= 1;
            match started {
                Ok(handle) if !*lock(&pools.closed) => {
                    st.ready.push_back(Member {
                        id: id.clone(),
                        handle,
                    });
                    (true, true)
                }
                Ok(_) => (false, true),
                Err(error) => {
                    st.failures += 1;
                    tracing::warn!(message = "pool member start failed", template = %pool.cfg.template, %error);
                    (false, false)
                }
            }
        };
        if !keep {
            let rt = self.inner.runtime.clone();
            let key = id.clone();
            let _ = blocking(move || rt.destroy(&key)).await;
            lock(&pools.owned).remove(&id);
        }
        ok
    }

    async fn start_member_runtime(
        &self,
        id: &str,
        cfg: &PoolConfig,
    ) -> Result<SandboxHandle, String> {
        let rootfs = templates::rootfs(&cfg.template, &self.inner.cfg.state_dir)
            .map_err(|e| e.to_string())?;
        let spec = SandboxSpec {
            id: id.to_string(),
            hostname: id.chars().take(12).collect(),
            rootfs,
            limits: super::manager::limits_of(&cfg.resources),
            security: crate::security::SecurityProfile::default(),
        };
        let rt = self.inner.runtime.clone();
        let handle = low_priority(move || rt.start(&spec))
            .await?
            .map_err(|e| e.to_string())?;
        // The member inherited the refill's low priority: its agent gets the normal one back
        // before it serves anything (threads it starts later inherit that).
        if lowered()
            && let Err(error) = prism_sys::sched::set_process_nice(handle.pid, 0)
        {
            tracing::warn!(message = "pool member keeps the refill's low CPU priority", sandbox_id = %id, %error);
        }
        let agent = self.agent_of(&handle);
        match tokio::time::timeout(HEALTH_TIMEOUT, agent.health()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("agent unhealthy: {e}")),
            Err(_) => return Err("agent did not answer its health check in time".into()),
        }
        // Warm the agent's exec path once (its first fork and page faults), so the claimed
        // sandbox's first exec costs what later ones do. Best effort: the outcome is ignored.
        let warm = async {
            let spec = ProcSpec {
                argv: vec!["/bin/true".into()],
                ..ProcSpec::default()
            };
            if let Ok(mut ps) = agent.spawn(spec).await {
                while let Some(ev) = ps.events.next().await {
                    match ev {
                        // Read to the end, so the connection stays open for the first exec.
                        Ok(ProcEvent::End { .. }) => {
                            super::exec::drain(&mut ps.events).await;
                            break;
                        }
                        Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
        };
        let _ = tokio::time::timeout(HEALTH_TIMEOUT, warm).await;
        Ok(handle)
    }
}

/// Whether refills run at [`REFILL_NICE`] (only where the priority can be given back).
fn lowered() -> bool {
    prism_sys::sched::can_raise_priority()
}

/// Run a member's start on a thread of its own at [`REFILL_NICE`], so it yields the CPU to
/// the requests of sandboxes in use (a claim's first exec above all). The sandbox's processes
/// inherit the value; the caller resets them.
async fn low_priority<T, F>(f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("prism-refill".into())
        .spawn(move || {
            if lowered()
                && let Err(error) = prism_sys::sched::set_thread_nice(0, REFILL_NICE)
            {
                tracing::debug!(message = "refill runs at the normal priority", %error);
            }
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a refill thread: {e}"))?;
    rx.await.map_err(|_| "the refill thread failed".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert!(mem_available().is_some_and(|b| b > 0));
    }

    #[test]
    fn only_unnamed_same_shape_loopback_requests_fit() {
        let cfg = PoolConfig {
            template: "base".into(),
            resources: Resources::default(),
            size: 2,
        };
        let base = CreateSandboxRequest {
            template: Some("base".into()),
            network: Some("none".into()),
            ..Default::default()
        };
        assert!(cfg.fits(&base));
        assert!(cfg.fits(&CreateSandboxRequest::default()));
        let named = CreateSandboxRequest {
            name: Some("web".into()),
            ..base.clone()
        };
        assert!(!cfg.fits(&named));
        let other = CreateSandboxRequest {
            template: Some("python".into()),
            ..base.clone()
        };
        assert!(!cfg.fits(&other));
        let bigger = CreateSandboxRequest {
            resources: Resources {
                memory_mb: Some(512),
                ..Resources::default()
            },
            ..base.clone()
        };
        assert!(!cfg.fits(&bigger));
        let open = CreateSandboxRequest {
            network: Some("open".into()),
            ..base
        };
        assert!(!cfg.fits(&open));
    }
}
