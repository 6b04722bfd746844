//! Recovery after a daemon restart: running sandboxes are re-adopted (runtime check, agent
//! health, main-process log re-attached by tag); the others are marked failed and cleaned.

use std::time::Instant;

use prism_store::{ListFilter, SandboxRecord};
use prism_types::SandboxState;

use super::LifecycleError;
use super::manager::{Live, MAIN_TAG, SandboxManager, blocking, lock};

impl SandboxManager {
    /// After a daemon restart: re-adopt running sandboxes (and re-attach their main process's
    /// log), mark the rest failed and clean them. Returns (adopted, failed).
    pub async fn recover(&self) -> Result<(usize, usize), LifecycleError> {
        let recs = self.store(|s| s.list(&ListFilter::default())).await?;
        let (mut adopted, mut failed) = (0, 0);
        for rec in recs {
            let _g = self.lock_id(&rec.id).await;
            let mut rec = rec;
            match rec.state {
                SandboxState::Creating => {
                    // The runtime may have started it before the crash: clean it completely.
                    let rt = self.inner.runtime.clone();
                    let id = rec.id.clone();
                    if let Ok(Err(error)) = blocking(move || rt.destroy(&id)).await {
                        tracing::warn!(message = "cleanup of an interrupted creation failed", sandbox_id = %rec.id, %error);
                    }
                    rec.error =
                        Some("the daemon stopped while the sandbox was being created".into());
                    self.fail_locked(&mut rec, "interrupted creation").await?;
                    failed += 1;
                }
                SandboxState::Running => {
                    if self.readopt(&rec).await {
                        adopted += 1;
                    } else {
                        rec.error = Some("the sandbox was gone after a daemon restart".into());
                        self.fail_locked(&mut rec, "lost after daemon restart")
                            .await?;
                        failed += 1;
                    }
                }
                _ => {}
            }
        }
        if let Err(error) = self.reconcile_network().await {
            tracing::warn!(message = "cleanup of leftover sandbox networks failed", %error);
        }
        tracing::info!(message = "recovery done", adopted, failed);
        Ok((adopted, failed))
    }

    async fn readopt(&self, rec: &SandboxRecord) -> bool {
        let Ok(handle) = Self::handle_of(rec) else {
            return false;
        };
        let rt = self.inner.runtime.clone();
        let h = handle.clone();
        match blocking(move || rt.adopt(&h)).await {
            Ok(Ok(true)) => {}
            _ => return false,
        }
        let agent = self.agent_of(&handle);
        if let Err(error) = agent.health().await {
            tracing::warn!(message = "adopted sandbox's agent is unhealthy", sandbox_id = %rec.id, %error);
            return false;
        }
        // Links and rules survive a daemon restart; the DNS forwarder does not: attach again.
        if let Err(error) = self.net_attach(rec, &handle).await {
            tracing::warn!(message = "adopted sandbox's network could not be restored", sandbox_id = %rec.id, %error);
            return false;
        }
        lock(&self.inner.live).insert(
            rec.id.clone(),
            Live {
                last_active: Instant::now(),
                main_task: None,
            },
        );
        if rec.spec.cmd.is_some() && rec.exit_code.is_none() {
            match agent.connect_tag(MAIN_TAG).await {
                Ok(ps) => {
                    if let Err(error) = self.capture_main(&rec.id, ps, false) {
                        tracing::warn!(message = "cannot re-attach the sandbox log", sandbox_id = %rec.id, %error);
                    }
                }
                Err(error) => {
                    tracing::info!(message = "main process not re-attached", sandbox_id = %rec.id, %error);
                }
            }
        }
        self.event(&rec.id, "adopted", String::new()).await;
        true
    }
}
