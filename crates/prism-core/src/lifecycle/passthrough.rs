//! Protocol pass-through: hands out the agent endpoint of a running sandbox so that a front
//! end speaking the agent's own wire protocol (prismd's E2B data plane) can forward requests
//! unchanged instead of re-implementing each RPC.

use std::path::PathBuf;

use super::LifecycleError;
use super::manager::SandboxManager;

impl SandboxManager {
    /// The unix socket of the agent of a running sandbox; counts as activity for the idle
    /// timeout. Errors like every other in-sandbox action (not found, not running).
    pub async fn agent_socket(&self, id_or_name: &str) -> Result<PathBuf, LifecycleError> {
        let (_, handle, _) = self.running(id_or_name).await?;
        Ok(handle.agent_socket)
    }
}
