//! [`SandboxManager`]: creating sandboxes (cold or from a pool), recovery after a daemon
//! restart, and the bookkeeping every lifecycle action shares; stop, start, restart, destroy
//! and the TTL are in `control.rs`. Every state change is written to the store before the
//! action returns; per-sandbox async locks serialise actions on one sandbox.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures_util::StreamExt;
use prism_store::{Event, ListFilter, SandboxRecord, Store, StoreError};
use prism_types::{CreateSandboxRequest, Sandbox, SandboxState};
use tokio::sync::OwnedMutexGuard;

use super::agent::{Agent, AgentConnector, ProcEvent, ProcSpec, ProcStream};
use super::logs::LogHub;
use super::pool::{Member, PoolConfig, Pools};
use super::source::{self, RootfsResolver, Source};
use super::{LifecycleError, expiry, now_ms, rfc3339, templates, validate};
use crate::{Limits, Runtime, SandboxHandle, SandboxSpec};

/// Tag of every sandbox's main process in its agent.
pub(crate) const MAIN_TAG: &str = "main";

/// Settings of the manager (from the daemon's configuration).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub state_dir: PathBuf,
    /// TTL of a sandbox whose create request names none (seconds).
    pub default_timeout_s: u64,
    /// No sandbox lives longer than this after creation (seconds; 0 = unlimited).
    pub max_lifetime_s: u64,
    /// Budget of each sandbox's output log (both rotated files together).
    pub log_max_bytes: u64,
    /// Cap of stdout and of stderr of a buffered exec.
    pub exec_output_limit: usize,
    /// Destroyed records are purged this long after destruction (seconds).
    pub destroyed_retention_s: u64,
    /// Warm pools (see [`super::pool`]).
    pub pools: Vec<PoolConfig>,
    /// Pools shrink and stop refilling while the host's `MemAvailable` is below this
    /// (bytes; 0 = never).
    pub pool_min_available_bytes: u64,
}

impl ManagerConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        ManagerConfig {
            state_dir,
            default_timeout_s: prism_types::DEFAULT_TIMEOUT_S,
            max_lifetime_s: 24 * 3600,
            log_max_bytes: 8 << 20,
            exec_output_limit: 1 << 20,
            destroyed_retention_s: 7 * 24 * 3600,
            pools: Vec::new(),
            pool_min_available_bytes: 512 << 20,
        }
    }
}

/// What the manager keeps in memory about a sandbox that has a runtime.
pub(crate) struct Live {
    pub last_active: Instant,
    pub main_task: Option<tokio::task::AbortHandle>,
}

pub(crate) struct Inner {
    pub store: Arc<dyn Store>,
    pub runtime: Arc<dyn Runtime>,
    pub agents: Arc<dyn AgentConnector>,
    pub cfg: ManagerConfig,
    pub(crate) resolver: OnceLock<Arc<dyn RootfsResolver>>,
    pub(super) locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub live: Mutex<HashMap<String, Live>>,
    pub(super) logs: Mutex<HashMap<String, Arc<LogHub>>>,
    pub pools: Pools,
    pub(crate) secret_env: std::sync::OnceLock<Arc<dyn super::secret_env::SecretEnv>>,
    pub(crate) network: OnceLock<Arc<dyn super::network::SandboxNetwork>>,
}

/// The sandbox manager. Cheap to clone.
#[derive(Clone)]
pub struct SandboxManager {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The runtime limits of API resources.
pub(crate) fn limits_of(r: &prism_types::Resources) -> Limits {
    Limits {
        cpus: r.cpus,
        memory_bytes: r.memory_mb.map(|m| m << 20),
        pids: r.pids,
        disk_bytes: r.disk_mb.map(|m| m << 20),
    }
}

/// Run blocking work (store, runtime) off the async threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, LifecycleError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(LifecycleError::TaskFailed)
}

pub(crate) fn to_api(rec: &SandboxRecord) -> Sandbox {
    Sandbox {
        id: rec.id.clone(),
        name: rec.name.clone(),
        state: rec.state,
        template: rec.template.clone(),
        cmd: rec.spec.cmd.clone(),
        env: rec.spec.env.clone(),
        labels: rec.labels.clone(),
        resources: rec.spec.resources,
        network: rec.spec.network.clone().unwrap_or_default(),
        ports: rec.spec.ports.clone(),
        publish: rec.spec.publish.clone(),
        timeout_s: rec.spec.timeout_s.unwrap_or(0),
        idle_timeout_s: rec.spec.idle_timeout_s,
        created_at: rfc3339(rec.created_at_ms),
        updated_at: rfc3339(rec.updated_at_ms),
        started_at: rec.started_at_ms.map(rfc3339),
        expires_at: rec.expires_at_ms.map(rfc3339),
        exit_code: rec.exit_code,
        error: rec.error.clone(),
        runtime: rec.runtime.clone(),
    }
}

impl SandboxManager {
    /// A manager over these parts. Creates the base template skeleton under the state dir.
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn Runtime>,
        agents: Arc<dyn AgentConnector>,
        cfg: ManagerConfig,
    ) -> Result<Self, LifecycleError> {
        templates::rootfs(prism_types::DEFAULT_TEMPLATE, &cfg.state_dir)?;
        for p in &cfg.pools {
            templates::rootfs(&p.template, &cfg.state_dir)?;
        }
        let pools = Pools::new(&cfg.pools, cfg.pool_min_available_bytes);
        Ok(SandboxManager {
            inner: Arc::new(Inner {
                store,
                runtime,
                agents,
                cfg,
                resolver: OnceLock::new(),
                locks: Mutex::new(HashMap::new()),
                live: Mutex::new(HashMap::new()),
                logs: Mutex::new(HashMap::new()),
                pools,
                secret_env: std::sync::OnceLock::new(),
                network: OnceLock::new(),
            }),
        })
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.inner.cfg
    }

    pub fn runtime_name(&self) -> &'static str {
        self.inner.runtime.name()
    }

    /// Run a store call off the async threads.
    pub(crate) async fn store<T, F>(&self, f: F) -> Result<T, LifecycleError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.inner.store.clone();
        Ok(blocking(move || f(store.as_ref())).await??)
    }

    pub(crate) async fn save(&self, rec: &SandboxRecord, msg: &str) -> Result<(), LifecycleError> {
        let rec = rec.clone();
        let msg = msg.to_string();
        self.store(move |s| s.update(&rec, &msg)).await
    }

    pub(crate) async fn event(&self, id: &str, kind: &str, msg: String) {
        let ev = Event {
            sandbox_id: id.to_string(),
            at_ms: now_ms(),
            kind: kind.to_string(),
            from_state: None,
            to_state: None,
            message: msg,
        };
        if let Err(error) = self.store(move |s| s.add_event(&ev)).await {
            tracing::warn!(message = "could not record an event", %error);
        }
    }

    pub(crate) async fn lock_id(&self, id: &str) -> OwnedMutexGuard<()> {
        let m = lock(&self.inner.locks)
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// The record of `id_or_name`: from the store's memory when it has it (no thread
    /// hand-off), else read on the blocking pool.
    pub(crate) async fn record(&self, id_or_name: &str) -> Result<SandboxRecord, LifecycleError> {
        if let Some(rec) = self.inner.store.find_cached(id_or_name) {
            return Ok(rec);
        }
        let key = id_or_name.to_string();
        self.store(move |s| s.find(&key))
            .await?
            .ok_or_else(|| LifecycleError::NotFound(id_or_name.to_string()))
    }

    /// Lock a sandbox and read its record afresh under the lock.
    pub(crate) async fn locked(
        &self,
        id_or_name: &str,
    ) -> Result<(OwnedMutexGuard<()>, SandboxRecord), LifecycleError> {
        let id = self.record(id_or_name).await?.id;
        let guard = self.lock_id(&id).await;
        let key = id.clone();
        let rec = self
            .store(move |s| s.get(&key))
            .await?
            .ok_or(LifecycleError::NotFound(id))?;
        Ok((guard, rec))
    }

    pub(crate) fn handle_of(rec: &SandboxRecord) -> Result<SandboxHandle, LifecycleError> {
        rec.handle
            .clone()
            .and_then(|h| serde_json::from_value(h).ok())
            .ok_or_else(|| LifecycleError::BadHandle(rec.id.clone()))
    }

    pub(crate) fn agent_of(&self, handle: &SandboxHandle) -> Arc<dyn Agent> {
        self.inner.agents.connect(&handle.agent_socket)
    }

    pub(crate) fn log_hub(&self, id: &str) -> Result<Arc<LogHub>, LifecycleError> {
        let mut logs = lock(&self.inner.logs);
        if let Some(h) = logs.get(id) {
            return Ok(h.clone());
        }
        let dir = self.inner.cfg.state_dir.join("logs").join(id);
        let hub = LogHub::open(&dir, self.inner.cfg.log_max_bytes)
            .map_err(|source| LifecycleError::Log { op: "open", source })?;
        logs.insert(id.to_string(), hub.clone());
        Ok(hub)
    }

    /// Note API activity on a sandbox (for the idle timeout).
    pub(crate) fn touch(&self, id: &str) {
        if let Some(l) = lock(&self.inner.live).get_mut(id) {
            l.last_active = Instant::now();
        }
    }

    // ---- queries ----

    pub async fn get(&self, id_or_name: &str) -> Result<Sandbox, LifecycleError> {
        Ok(to_api(&self.record(id_or_name).await?))
    }

    /// A page of sandboxes and the cursor of the next page.
    pub async fn list(
        &self,
        mut filter: ListFilter,
    ) -> Result<(Vec<Sandbox>, Option<String>), LifecycleError> {
        let limit = if filter.limit == 0 {
            100
        } else {
            filter.limit.min(1000)
        };
        filter.limit = limit + 1;
        let mut recs = self.store(move |s| s.list(&filter)).await?;
        let more = recs.len() > limit;
        recs.truncate(limit);
        let next = if more {
            recs.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok((recs.iter().map(to_api).collect(), next))
    }

    pub async fn counts(
        &self,
    ) -> Result<std::collections::BTreeMap<SandboxState, u64>, LifecycleError> {
        self.store(|s| s.counts()).await
    }

    pub async fn events(&self, id_or_name: &str) -> Result<Vec<Event>, LifecycleError> {
        let id = self.record(id_or_name).await?.id;
        self.store(move |s| s.events(&id)).await
    }

    // ---- actions ----

    /// Create a sandbox and start it. The record is durable (state `creating`) before the
    /// runtime is asked for anything, so a crash at any point leaves something to clean.
    pub async fn create(&self, req: CreateSandboxRequest) -> Result<Sandbox, LifecycleError> {
        let cfg = &self.inner.cfg;
        let mut spec = validate::create(req, cfg.default_timeout_s, cfg.max_lifetime_s)?;
        let template = match spec.image.clone() {
            Some(image) => {
                let resolved = self.resolver()?.resolve(Source::Image(image)).await?;
                source::apply_defaults(&mut spec, resolved.defaults);
                spec.image = Some(resolved.reference);
                resolved.pinned
            }
            None => {
                let name = spec.template.clone().unwrap_or_default();
                if templates::TEMPLATES.contains(&name.as_str()) {
                    name
                } else {
                    // Without a resolver only the built-in templates exist.
                    let resolver = self
                        .inner
                        .resolver
                        .get()
                        .ok_or_else(|| LifecycleError::TemplateNotFound(name.clone()))?;
                    let resolved = resolver.resolve(Source::Template(name)).await?;
                    source::apply_defaults(&mut spec, resolved.defaults);
                    validate::resources(&spec.resources)?;
                    resolved.pinned
                }
            }
        };
        self.rootfs_of(&template)?;
        if let Some(member) = self.claim(&spec).await {
            return self.create_from_member(spec, member).await;
        }
        let now = now_ms();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let rec = SandboxRecord {
            id: id.clone(),
            name: spec.name.clone(),
            state: SandboxState::Creating,
            template,
            labels: spec.labels.clone(),
            expires_at_ms: expiry(now, spec.timeout_s.unwrap_or(0), now, cfg.max_lifetime_s),
            spec,
            handle: None,
            runtime: self.inner.runtime.name().to_string(),
            created_at_ms: now,
            updated_at_ms: now,
            started_at_ms: None,
            exit_code: None,
            error: None,
        };
        let ins = rec.clone();
        self.store(move |s| s.insert(&ins))
            .await
            .map_err(|e| match e {
                LifecycleError::Store(StoreError::NameConflict(n)) => {
                    LifecycleError::NameConflict(n)
                }
                e => e,
            })?;
        tracing::info!(message = "sandbox created", sandbox_id = %id);
        let _guard = self.lock_id(&id).await;
        let rec = self.start_locked(rec, "created").await?;
        Ok(to_api(&rec))
    }

    /// Create a sandbox from a warm pool member: one durable write (the record, already
    /// running), then its main process.
    async fn create_from_member(
        &self,
        spec: CreateSandboxRequest,
        member: Member,
    ) -> Result<Sandbox, LifecycleError> {
        let cfg = &self.inner.cfg;
        let now = now_ms();
        let id = member.id.clone();
        let mut rec = SandboxRecord {
            id: id.clone(),
            name: None,
            state: SandboxState::Running,
            template: spec.template.clone().unwrap_or_default(),
            labels: spec.labels.clone(),
            expires_at_ms: expiry(now, spec.timeout_s.unwrap_or(0), now, cfg.max_lifetime_s),
            spec,
            handle: serde_json::to_value(&member.handle).ok(),
            runtime: self.inner.runtime.name().to_string(),
            created_at_ms: now,
            updated_at_ms: now,
            started_at_ms: Some(now),
            exit_code: None,
            error: None,
        };
        let _guard = self.lock_id(&id).await;
        let ins = rec.clone();
        if let Err(e) = self.store(move |s| s.insert(&ins)).await {
            let rt = self.inner.runtime.clone();
            let _ = blocking(move || rt.destroy(&id)).await;
            return Err(e);
        }
        tracing::info!(message = "sandbox created from a warm pool", sandbox_id = %rec.id);
        self.activate(&mut rec, &member.handle).await?;
        Ok(to_api(&rec))
    }

    /// Start the runtime and the main process of a locked sandbox; on failure the sandbox is
    /// `failed`, cleaned of processes, and the error returned.
    pub(super) async fn start_locked(
        &self,
        mut rec: SandboxRecord,
        why: &str,
    ) -> Result<SandboxRecord, LifecycleError> {
        let cfg = &self.inner.cfg;
        let spec = SandboxSpec {
            id: rec.id.clone(),
            hostname: rec
                .name
                .clone()
                .unwrap_or_else(|| rec.id.chars().take(12).collect()),
            rootfs: self.rootfs_of(&rec.template)?,
            limits: limits_of(&rec.spec.resources),
            security: security_profile(rec.spec.security),
        };
        let rt = self.inner.runtime.clone();
        let started = blocking(move || rt.start(&spec)).await?;
        let handle = match started {
            Ok(h) => h,
            Err(source) => {
                tracing::warn!(message = "sandbox start failed", sandbox_id = %rec.id, error = %source);
                rec.error = Some(format!("start failed: {source}"));
                self.fail_locked(&mut rec, "start failed").await?;
                return Err(LifecycleError::Runtime {
                    op: "start",
                    source,
                });
            }
        };
        let now = now_ms();
        rec.handle = serde_json::to_value(&handle).ok();
        rec.state = SandboxState::Running;
        rec.started_at_ms = Some(now);
        rec.updated_at_ms = now;
        rec.exit_code = None;
        rec.error = None;
        if why != "created" {
            rec.expires_at_ms = expiry(
                now,
                rec.spec.timeout_s.unwrap_or(0),
                rec.created_at_ms,
                cfg.max_lifetime_s,
            );
        }
        if let Err(e) = self.save(&rec, why).await {
            // Not durable: do not leave a running sandbox behind an unacknowledged change.
            let rt = self.inner.runtime.clone();
            let h = handle.clone();
            let _ = blocking(move || rt.stop(&h)).await;
            return Err(e);
        }
        if let Err(e) = self.net_attach(&rec, &handle).await {
            tracing::warn!(message = "sandbox network setup failed", sandbox_id = %rec.id, error = %e);
            rec.error = Some(format!("network setup failed: {e}"));
            self.fail_locked(&mut rec, "network setup failed").await?;
            return Err(e);
        }
        self.activate(&mut rec, &handle).await?;
        Ok(rec)
    }

    /// Track a locked, durable, running sandbox and start its main process (if any); when that
    /// fails the sandbox is `failed` and the error returned.
    async fn activate(
        &self,
        rec: &mut SandboxRecord,
        handle: &SandboxHandle,
    ) -> Result<(), LifecycleError> {
        lock(&self.inner.live).insert(
            rec.id.clone(),
            Live {
                last_active: Instant::now(),
                main_task: None,
            },
        );
        if let Some(cmd) = rec.spec.cmd.clone() {
            let agent = self.agent_of(handle);
            let proc_spec = ProcSpec {
                argv: cmd,
                env: self.process_env(rec).await,
                cwd: rec.spec.cwd.clone(),
                user: rec.spec.user.clone(),
                tag: Some(MAIN_TAG.into()),
                ..ProcSpec::default()
            };
            match agent.spawn(proc_spec).await {
                Ok(ps) => self.capture_main(&rec.id, ps, true)?,
                Err(e) => {
                    rec.error = Some(format!("main process did not start: {e}"));
                    self.fail_locked(rec, "main process did not start").await?;
                    return Err(LifecycleError::MainProcess(e));
                }
            }
        }
        Ok(())
    }

    /// Copy a main process's output into the sandbox log; record its exit code at the end.
    pub(crate) fn capture_main(
        &self,
        id: &str,
        mut ps: ProcStream,
        fresh: bool,
    ) -> Result<(), LifecycleError> {
        let hub = self.log_hub(id)?;
        hub.reopen();
        if fresh {
            let note = format!("--- main process started (pid {}) ---\n", ps.pid);
            tracing::debug!(message = note.trim(), sandbox_id = %id);
        }
        let this = self.clone();
        let sid = id.to_string();
        let task = tokio::spawn(async move {
            let mut exit = None;
            while let Some(ev) = ps.events.next().await {
                match ev {
                    Ok(ProcEvent::Stdout(b) | ProcEvent::Stderr(b) | ProcEvent::Pty(b)) => {
                        if let Err(error) = hub.append(&b) {
                            tracing::warn!(message = "sandbox log write failed", sandbox_id = %sid, %error);
                        }
                    }
                    Ok(ProcEvent::End { exit_code, .. }) => {
                        exit = Some(exit_code);
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(message = "main process stream ended", sandbox_id = %sid, %error);
                        break;
                    }
                }
            }
            hub.close();
            if let Some(code) = exit {
                this.record_main_exit(&sid, code).await;
            }
        });
        if let Some(l) = lock(&self.inner.live).get_mut(id)
            && let Some(old) = l.main_task.replace(task.abort_handle())
        {
            old.abort();
        }
        Ok(())
    }

    async fn record_main_exit(&self, id: &str, code: i32) {
        let _g = self.lock_id(id).await;
        let key = id.to_string();
        let Ok(Some(mut rec)) = self.store(move |s| s.get(&key)).await else {
            return;
        };
        if rec.state != SandboxState::Running {
            return;
        }
        rec.exit_code = Some(code);
        rec.updated_at_ms = now_ms();
        if let Err(error) = self.save(&rec, "main process exited").await {
            tracing::warn!(message = "could not record the main process exit", sandbox_id = %id, %error);
        }
        self.event(id, "main_exited", format!("exit code {code}"))
            .await;
    }
}

/// The runtime's security profile for a request's security options.
fn security_profile(
    opts: Option<prism_types::SecurityOptions>,
) -> crate::security::SecurityProfile {
    let profile = crate::security::SecurityProfile::default();
    let Some(o) = opts else {
        return profile;
    };
    let mut profile = if o.allow_ptrace {
        profile.allow_ptrace()
    } else {
        profile
    };
    profile.sysfs = o.sysfs;
    profile
}
