//! The sandbox lifecycle: the state machine ([`state`]), request checks ([`validate`]), the
//! agent abstraction ([`agent`]), the per-sandbox output log ([`logs`]) and the
//! [`SandboxManager`], which turns typed actions into calls on the [`Runtime`](crate::Runtime),
//! the [`Store`](prism_store::Store) and the sandbox's agent. HTTP lives in `prismd`, not here.

pub mod agent;
mod code;
mod code_agent;
mod control;
mod exec;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod janitor;
pub mod logs;
mod manager;
#[cfg(test)]
mod manager_tests;
pub mod network;
#[cfg(test)]
mod network_tests;
mod passthrough;
mod pool;
#[cfg(test)]
mod pool_tests;
mod ports;
pub mod proto_agent;
mod recover;
mod secret_env;
pub mod source;
#[cfg(test)]
mod source_tests;
pub mod state;
pub mod templates;
pub mod validate;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use agent::{
    Agent, AgentConnector, AgentError, CodeEvents, PortTunnel, ProcEvent, ProcSpec, ProcStream,
    TunnelIo,
};
pub use exec::{ExecSession, FileContent, ProcEvents};
pub use janitor::SweepReport;
pub use manager::{ManagerConfig, SandboxManager};
pub use network::{NetCounters, NetLeftovers, NetworkError, SandboxNetwork};
pub use pool::PoolConfig;
pub use proto_agent::ProtoAgents;
pub use secret_env::SecretEnv;
pub use source::{ResolveError, ResolveErrorKind, Resolved, RootfsResolver, Source};
pub use state::{Action, InvalidState, Plan};

use crate::RuntimeError;

/// Failures of lifecycle actions. prismd maps each to an HTTP status and an error code.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no sandbox with id or name {0:?}")]
    NotFound(String),
    #[error("the name {0:?} is already used by another sandbox")]
    NameConflict(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unknown template {0:?} (available: base)")]
    TemplateNotFound(String),
    #[error(transparent)]
    Resolve(#[from] source::ResolveError),
    #[error("this daemon cannot start sandboxes from images (no image store configured)")]
    NoImages,
    #[error(transparent)]
    InvalidState(#[from] InvalidState),
    #[error("the runtime could not {op} the sandbox")]
    Runtime {
        op: &'static str,
        #[source]
        source: RuntimeError,
    },
    #[error("the main process did not start")]
    MainProcess(#[source] AgentError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] prism_store::StoreError),
    #[error("the template could not be prepared")]
    Template(#[source] std::io::Error),
    #[error("sandbox log {op} failed")]
    Log {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("stored runtime handle of sandbox {0} is unreadable")]
    BadHandle(String),
    #[error("sandbox networking failed: {0}")]
    Network(#[source] network::NetworkError),
    #[error("a background task failed")]
    TaskFailed(#[source] tokio::task::JoinError),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 text of a Unix-milliseconds timestamp.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// When a sandbox expires: `timeout_s` from `now` (0 = no TTL), never after `created + max
/// lifetime` (0 = unlimited).
pub fn expiry(now_ms: i64, timeout_s: u64, created_ms: i64, max_lifetime_s: u64) -> Option<i64> {
    let secs = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let ttl = (timeout_s > 0).then(|| now_ms.saturating_add(secs(timeout_s)));
    let cap = (max_lifetime_s > 0).then(|| created_ms.saturating_add(secs(max_lifetime_s)));
    match (ttl, cap) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_takes_the_earlier_limit() {
        assert_eq!(expiry(1000, 0, 0, 0), None);
        assert_eq!(expiry(1000, 5, 0, 0), Some(6000));
        assert_eq!(expiry(1000, 0, 0, 10), Some(10_000));
        assert_eq!(expiry(1000, 60, 0, 10), Some(10_000));
        assert_eq!(expiry(1000, 2, 0, 10), Some(3000));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert!(now_ms() > 1_600_000_000_000);
    }
}
