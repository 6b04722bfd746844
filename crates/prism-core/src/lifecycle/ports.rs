//! Exposed ports: the manager's side of the port proxy. A tunnel is a TCP connection to a port
//! on the sandbox's loopback, opened by the agent over its control channel, so it works in
//! every network mode (including `none`).

use super::agent::PortTunnel;
use super::manager::SandboxManager;
use super::{LifecycleError, validate};

impl SandboxManager {
    /// Opens a TCP connection to `127.0.0.1:port` inside a running sandbox.
    pub async fn open_port(
        &self,
        id_or_name: &str,
        port: u16,
    ) -> Result<PortTunnel, LifecycleError> {
        validate::port(port)?;
        let (_, _, agent) = self.running(id_or_name).await?;
        Ok(agent.open_port(port).await?)
    }
}
