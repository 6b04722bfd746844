//! prism-types: the types of Prism's v1 REST and WebSocket API, shared by `prismd`, its typed
//! client and the CLI. Serde for the wire, `utoipa::ToSchema` for the generated OpenAPI document.
//! No I/O lives here.
//!
//! ```
//! use prism_types::{CreateSandboxRequest, SandboxState};
//! let req: CreateSandboxRequest = serde_json::from_str(r#"{"name":"web","timeout_s":60}"#).unwrap();
//! assert_eq!(req.name.as_deref(), Some("web"));
//! assert!(serde_json::from_str::<CreateSandboxRequest>(r#"{"nmae":"typo"}"#).is_err());
//! assert_eq!(serde_json::to_string(&SandboxState::Running).unwrap(), "\"running\"");
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod auth;
pub mod code;
pub mod images;
pub mod network;
pub mod templates;
pub mod ws;

/// Default sandbox time-to-live when a create request does not say (seconds).
pub const DEFAULT_TIMEOUT_S: u64 = 300;
/// Template used when a create request names none.
pub const DEFAULT_TEMPLATE: &str = "base";
/// Network mode used when a create request names none.
pub const DEFAULT_NETWORK: &str = "none";

/// Where a sandbox is in its life.
///
/// `creating → running ⇄ stopped → destroyed`; any live state may go to `failed`, and `failed`
/// sandboxes can be started again or destroyed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Creating,
    Running,
    Stopped,
    Failed,
    Destroyed,
}

impl SandboxState {
    /// All states, in life order.
    pub const ALL: [SandboxState; 5] = [
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Stopped,
        SandboxState::Failed,
        SandboxState::Destroyed,
    ];

    /// The lowercase wire name (`running`).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Stopped => "stopped",
            SandboxState::Failed => "failed",
            SandboxState::Destroyed => "destroyed",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Option<SandboxState> {
        SandboxState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resource limits of a sandbox. Absent = no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU quota in cores (0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Size limit of the writable layer in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// `POST /v1/sandboxes` body. Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Unique among sandboxes that are not destroyed: `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Template to start from (default `base`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// OCI image to start from instead of a template (`registry/repo:tag` or `repo@sha256:…`);
    /// pulled if this node does not have it. The image's Env, Cmd, WorkingDir and User are the
    /// defaults of `env`, `cmd`, `cwd` and `user`. The sandbox keeps the pinned digest
    /// (`repo@sha256:…`) here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The sandbox's main process (argv). Its stdout and stderr are the sandbox's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory of the main process and default of every exec (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User (`name`, `uid` or `uid:gid`) of the main process and default of every exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Environment of the main process and default environment of every exec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Free-form key/value labels (filter with `?label=k=v`). `metadata` is accepted as an alias.
    #[serde(
        default,
        alias = "metadata",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    /// Time to live in seconds from creation (default 300; 0 = no TTL). The sandbox is destroyed
    /// when it expires; `POST /v1/sandboxes/{id}/timeout` extends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Stop the sandbox after this many seconds without API activity (exec, files, terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// Network mode: `none` (default), `open`, or `allow=CIDR|DOMAIN,...` (stored; enforced by
    /// the network layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// TCP ports inside the sandbox to expose through the daemon's proxy at
    /// `/v1/sandboxes/{id}/ports/{port}/` (1..=65535; any port is reachable there, these are
    /// the ones listed by `prismctl port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Sandbox ports published on host ports (`prismctl run -p 18000:8000`): the daemon
    /// listens on `host_ip:host_port` while the sandbox runs and forwards each TCP connection
    /// to `port` inside it (through its agent, so it works in every network mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PublishedPort>,
    /// Relaxations of the default security profile (absent = the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityOptions>,
}

/// One published port: `host_ip:host_port` on the host → `port` in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    /// Host port (1..=65535).
    pub host_port: u16,
    /// Port inside the sandbox (1..=65535).
    pub port: u16,
    /// Host address to listen on (default: the daemon's `publish_address`, 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// Per-sandbox relaxations of the default security profile (see docs/threat-model.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityOptions {
    /// Allow `ptrace` between the sandbox's own processes (debuggers, strace). The agent
    /// (PID 1) stays untraceable.
    #[serde(default)]
    pub allow_ptrace: bool,
    /// Mount a read-only `/sys` (the sandbox's own sysfs). Off by default: sandboxes have no
    /// `/sys`.
    #[serde(default)]
    pub sysfs: bool,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    /// Opaque id (32 lowercase hex characters, time-ordered).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub state: SandboxState,
    pub template: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    pub network: String,
    /// Exposed ports (see [`CreateSandboxRequest::ports`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Published host ports (see [`CreateSandboxRequest::publish`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PublishedPort>,
    /// TTL in seconds (0 = none).
    pub timeout_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// RFC 3339 timestamps.
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the TTL runs out (absent = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Exit code of the main process, once it has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the sandbox failed (or the last error of a lifecycle action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Isolation backend (`namespace`, ...).
    pub runtime: String,
}

/// `GET /v1/sandboxes` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<Sandbox>,
    /// Pass as `?cursor=` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/sandboxes/{id}/timeout` body: the sandbox now expires `timeout_s` from now
/// (0 = never).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeoutRequest {
    pub timeout_s: u64,
}

/// `POST /v1/sandboxes/{id}/exec` body: exactly one of `cmd` (argv) and `command` (run by
/// `/bin/sh -c`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User name inside the sandbox (default: the template's default user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Text written to the process's stdin, which is then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Kill the process after this many seconds (default 60; at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

/// How a buffered exec ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exit status; `-1` when the process was killed by a signal.
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    /// The exec's `timeout_s` ran out and the process was killed.
    pub timed_out: bool,
    /// The sandbox's OOM killer fired during the exec.
    #[serde(default)]
    pub oom_killed: bool,
    /// stdout or stderr exceeded the output cap and was cut.
    pub truncated: bool,
}

/// Usage counters of a sandbox (`GET /v1/sandboxes/{id}/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxMetrics {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
    pub oom_kills: u64,
    pub disk_bytes: u64,
    /// Bytes read from / written to storage by the sandbox's processes since it started.
    #[serde(default)]
    pub io_read_bytes: u64,
    #[serde(default)]
    pub io_write_bytes: u64,
    /// Traffic of the sandbox's network link (absent in `none` mode: loopback only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkCounters>,
}

/// Traffic counters of a sandbox's network link, as the sandbox sees it (`rx` = received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// DNS queries the Prism resolver dropped (over the per-sandbox rate).
    pub dns_dropped: u64,
    /// Connections and HTTP requests the name proxy of an `allow` sandbox refused (a TLS
    /// server name or HTTP host not allowed towards that address).
    #[serde(default)]
    pub proxy_refused: u64,
}

/// `PATCH /v1/sandboxes/{id}/network` body: the new mode (`none`, `open`, `allow=…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetNetworkRequest {
    pub network: String,
}

/// `GET /v1/info`: what this daemon is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DaemonInfo {
    pub version: String,
    pub runtime: String,
    pub state_dir: String,
    pub listen: String,
    /// Number of sandboxes per state (destroyed excluded).
    pub sandboxes: BTreeMap<String, u64>,
    /// Warm pools (empty when none is configured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolInfo>,
}

/// One warm pool: idle, started sandboxes of a template and resource shape that `create`
/// claims instead of starting one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolInfo {
    pub template: String,
    pub resources: Resources,
    /// Configured number of idle sandboxes.
    pub size: u64,
    /// Idle sandboxes ready to be claimed.
    pub ready: u64,
    /// Sandboxes being started to refill the pool.
    pub starting: u64,
    /// Creates served from the pool since the daemon started.
    pub claimed: u64,
    /// Fitting creates that found the pool empty and took the cold path.
    pub misses: u64,
    /// Pool sandboxes that failed to start.
    pub failures: u64,
    /// True while the host is short of memory: the pool is emptied and not refilled.
    pub memory_pressure: bool,
}

/// `/healthz` and `/readyz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// One entry of a directory listing (`GET /v1/sandboxes/{id}/files?path=DIR`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub name: String,
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
}

/// Every error the API returns: a stable machine code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Stable code, e.g. `not_found`, `invalid_request`, `conflict`.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

/// The error codes the API uses.
pub mod codes {
    pub const NOT_FOUND: &str = "not_found";
    pub const ROUTE_NOT_FOUND: &str = "route_not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const INVALID_JSON: &str = "invalid_json";
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const NAME_CONFLICT: &str = "name_conflict";
    /// A host port to publish on is taken.
    pub const PORT_IN_USE: &str = "port_in_use";
    pub const INVALID_STATE: &str = "invalid_state";
    pub const TEMPLATE_NOT_FOUND: &str = "template_not_found";
    pub const AGENT_UNAVAILABLE: &str = "agent_unavailable";
    /// Nothing accepts connections on the proxied port inside the sandbox.
    pub const PORT_NOT_LISTENING: &str = "port_not_listening";
    /// The proxied server broke the HTTP exchange.
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    pub const RUNTIME_ERROR: &str = "runtime_error";
    /// The host could not set up or change a sandbox's network.
    pub const NETWORK_ERROR: &str = "network_error";
    pub const STORAGE_FULL: &str = "storage_full";
    pub const INTERNAL: &str = "internal";
    pub const UNAVAILABLE: &str = "unavailable";
}
