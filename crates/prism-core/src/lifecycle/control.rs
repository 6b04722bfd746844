//! Actions on an existing sandbox: stop, start, restart, destroy, failing it, and its TTL.
//! Each takes the sandbox's lock, checks the state machine's plan and writes the new state to
//! the store before it returns.

use prism_store::SandboxRecord;
use prism_types::{Sandbox, SandboxState};

use super::manager::{SandboxManager, blocking, lock, to_api};
use super::state::{Action, Plan, plan};
use super::{LifecycleError, expiry, now_ms, validate};

impl SandboxManager {
    /// Forget in-memory state of a sandbox's processes (main log capture ends).
    pub(super) fn drop_live(&self, id: &str) {
        if let Some(l) = lock(&self.inner.live).remove(id)
            && let Some(t) = l.main_task
        {
            t.abort();
        }
        if let Some(hub) = lock(&self.inner.logs).get(id) {
            hub.close();
        }
    }

    /// Mark a locked sandbox failed and kill its processes (keeping its writable layer). A
    /// runtime error is logged, not returned: the sandbox is failed either way.
    pub(crate) async fn fail_locked(
        &self,
        rec: &mut SandboxRecord,
        why: &str,
    ) -> Result<(), LifecycleError> {
        if let Err(error) = self.halt_locked(rec).await {
            tracing::warn!(message = "stop of a failed sandbox failed", sandbox_id = %rec.id, %error);
        }
        self.settle_locked(rec, SandboxState::Failed, why).await
    }

    pub(super) async fn stop_locked(
        &self,
        rec: &mut SandboxRecord,
        why: &str,
    ) -> Result<(), LifecycleError> {
        self.halt_locked(rec).await?;
        self.settle_locked(rec, SandboxState::Stopped, why).await
    }

    /// End a locked sandbox's processes, its networking and its runtime (the writable layer
    /// stays).
    async fn halt_locked(&self, rec: &SandboxRecord) -> Result<(), LifecycleError> {
        self.drop_live(&rec.id);
        self.net_detach(&rec.id).await;
        if let Ok(h) = Self::handle_of(rec) {
            let rt = self.inner.runtime.clone();
            blocking(move || rt.stop(&h))
                .await?
                .map_err(|source| LifecycleError::Runtime { op: "stop", source })?;
        }
        Ok(())
    }

    /// Record that a locked sandbox no longer runs, in `state`.
    async fn settle_locked(
        &self,
        rec: &mut SandboxRecord,
        state: SandboxState,
        why: &str,
    ) -> Result<(), LifecycleError> {
        rec.state = state;
        rec.handle = None;
        rec.updated_at_ms = now_ms();
        self.save(rec, why).await
    }

    pub async fn stop(&self, id_or_name: &str) -> Result<Sandbox, LifecycleError> {
        self.stop_because(id_or_name, "stopped").await
    }

    pub(crate) async fn stop_because(
        &self,
        id_or_name: &str,
        why: &str,
    ) -> Result<Sandbox, LifecycleError> {
        let (_g, mut rec) = self.locked(id_or_name).await?;
        if plan(Action::Stop, rec.state)? == Plan::Proceed {
            self.stop_locked(&mut rec, why).await?;
            tracing::info!(message = "sandbox stopped", sandbox_id = %rec.id, reason = why);
        }
        Ok(to_api(&rec))
    }

    pub async fn start(&self, id_or_name: &str) -> Result<Sandbox, LifecycleError> {
        let (_g, rec) = self.locked(id_or_name).await?;
        if plan(Action::Start, rec.state)? == Plan::AlreadyDone {
            return Ok(to_api(&rec));
        }
        Ok(to_api(&self.start_locked(rec, "started").await?))
    }

    pub async fn restart(&self, id_or_name: &str) -> Result<Sandbox, LifecycleError> {
        let (_g, mut rec) = self.locked(id_or_name).await?;
        plan(Action::Restart, rec.state)?;
        if rec.state == SandboxState::Running {
            self.stop_locked(&mut rec, "restarting").await?;
        }
        Ok(to_api(&self.start_locked(rec, "restarted").await?))
    }

    pub async fn destroy(&self, id_or_name: &str) -> Result<Sandbox, LifecycleError> {
        self.destroy_because(id_or_name, "destroyed").await
    }

    pub(crate) async fn destroy_because(
        &self,
        id_or_name: &str,
        why: &str,
    ) -> Result<Sandbox, LifecycleError> {
        let (_g, mut rec) = self.locked(id_or_name).await?;
        if plan(Action::Destroy, rec.state)? == Plan::AlreadyDone {
            return Ok(to_api(&rec));
        }
        self.drop_live(&rec.id);
        self.net_detach(&rec.id).await;
        let rt = self.inner.runtime.clone();
        let id = rec.id.clone();
        blocking(move || rt.destroy(&id))
            .await?
            .map_err(|source| LifecycleError::Runtime {
                op: "destroy",
                source,
            })?;
        lock(&self.inner.logs).remove(&rec.id);
        let log_dir = self.inner.cfg.state_dir.join("logs").join(&rec.id);
        if let Err(error) = std::fs::remove_dir_all(&log_dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(message = "could not remove a sandbox log", sandbox_id = %rec.id, %error);
        }
        self.settle_locked(&mut rec, SandboxState::Destroyed, why)
            .await?;
        lock(&self.inner.locks).remove(&rec.id);
        tracing::info!(message = "sandbox destroyed", sandbox_id = %rec.id, reason = why);
        Ok(to_api(&rec))
    }

    /// The sandbox now expires `timeout_s` from now (0 = no TTL; the maximum lifetime holds).
    pub async fn set_timeout(
        &self,
        id_or_name: &str,
        timeout_s: u64,
    ) -> Result<Sandbox, LifecycleError> {
        let max = self.inner.cfg.max_lifetime_s;
        validate::ttl("timeout_s", timeout_s, max)?;
        let (_g, mut rec) = self.locked(id_or_name).await?;
        plan(Action::SetTimeout, rec.state)?;
        let now = now_ms();
        rec.spec.timeout_s = Some(timeout_s);
        rec.expires_at_ms = expiry(now, timeout_s, rec.created_at_ms, max);
        rec.updated_at_ms = now;
        self.save(&rec, "timeout set").await?;
        self.event(&rec.id, "timeout_set", format!("timeout_s={timeout_s}"))
            .await;
        Ok(to_api(&rec))
    }
}
