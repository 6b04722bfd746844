//! The janitor: one sweep destroys expired sandboxes (TTL or maximum lifetime), stops idle
//! ones, marks sandboxes whose PID 1 died as failed, destroys runtime leftovers that have no
//! live record (orphans), and purges old destroyed records. prismd runs a sweep periodically.

use std::time::Duration;

use prism_store::ListFilter;
use prism_types::SandboxState;

use super::manager::{SandboxManager, blocking, lock};
use super::{LifecycleError, now_ms};

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: Vec<String>,
    pub idled: Vec<String>,
    pub died: Vec<String>,
    pub orphans: Vec<String>,
    pub purged: usize,
}

impl SandboxManager {
    /// One janitor pass. Errors on single sandboxes are logged and do not stop the pass.
    pub async fn sweep(&self) -> Result<SweepReport, LifecycleError> {
        let mut report = SweepReport::default();
        let now = now_ms();
        let recs = self.store(|s| s.list(&ListFilter::default())).await?;
        for rec in &recs {
            if rec.expires_at_ms.is_some_and(|t| t <= now) {
                match self.destroy_because(&rec.id, "expired").await {
                    Ok(_) => report.expired.push(rec.id.clone()),
                    Err(error) => {
                        tracing::warn!(message = "expiry failed", sandbox_id = %rec.id, %error);
                    }
                }
                continue;
            }
            if rec.state != SandboxState::Running {
                continue;
            }
            if let Some(idle) = rec.spec.idle_timeout_s {
                let last = lock(&self.inner.live).get(&rec.id).map(|l| l.last_active);
                if last.is_some_and(|t| t.elapsed() >= Duration::from_secs(idle)) {
                    match self.stop_because(&rec.id, "idle timeout").await {
                        Ok(_) => report.idled.push(rec.id.clone()),
                        Err(error) => {
                            tracing::warn!(message = "idle stop failed", sandbox_id = %rec.id, %error);
                        }
                    }
                    continue;
                }
            }
            if !self.is_alive(rec).await && self.mark_dead(&rec.id).await {
                report.died.push(rec.id.clone());
            }
        }
        report.orphans = self.reap_orphans().await?;
        match self.reconcile_network().await {
            Ok(removed) => report.orphans.extend(removed),
            Err(error) => {
                tracing::warn!(message = "cleanup of leftover sandbox networks failed", %error)
            }
        }
        let retention = i64::try_from(self.inner.cfg.destroyed_retention_s.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let before = now.saturating_sub(retention);
        report.purged = self.store(move |s| s.purge_destroyed(before)).await?;
        Ok(report)
    }

    /// Whether a running sandbox's PID 1 is still there.
    async fn is_alive(&self, rec: &prism_store::SandboxRecord) -> bool {
        let Ok(handle) = Self::handle_of(rec) else {
            return false;
        };
        let rt = self.inner.runtime.clone();
        let verdict = blocking(move || match rt.reap(&handle) {
            Ok(Some(_)) => Ok(false),
            Ok(None) => rt.adopt(&handle),
            Err(e) => Err(e),
        })
        .await;
        // Runtime errors are not proof of death: keep the sandbox and retry next sweep.
        !matches!(verdict, Ok(Ok(false)))
    }

    async fn mark_dead(&self, id: &str) -> bool {
        let Ok((_g, mut rec)) = self.locked(id).await else {
            return false;
        };
        if rec.state != SandboxState::Running || self.is_alive(&rec).await {
            return false;
        }
        rec.error = Some("the sandbox's init process exited".into());
        match self.fail_locked(&mut rec, "init exited").await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(message = "could not mark a dead sandbox failed", sandbox_id = %id, %error);
                false
            }
        }
    }

    /// Destroy what the runtime has on the host for ids with no live record.
    async fn reap_orphans(&self) -> Result<Vec<String>, LifecycleError> {
        let rt = self.inner.runtime.clone();
        let leftovers = match blocking(move || rt.leftovers()).await? {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(message = "cannot list runtime leftovers", %error);
                return Ok(Vec::new());
            }
        };
        let mut reaped = Vec::new();
        for id in leftovers {
            if self.inner.pools.owns(&id) {
                continue;
            }
            let key = id.clone();
            let rec = self.store(move |s| s.get(&key)).await?;
            if rec.is_some_and(|r| r.state != SandboxState::Destroyed) {
                continue;
            }
            let rt = self.inner.runtime.clone();
            let key = id.clone();
            match blocking(move || rt.destroy(&key)).await? {
                Ok(()) => {
                    tracing::info!(message = "orphan destroyed", sandbox_id = %id);
                    reaped.push(id);
                }
                Err(error) => {
                    tracing::warn!(message = "orphan cleanup failed", sandbox_id = %id, %error)
                }
            }
        }
        Ok(reaped)
    }
}
