//! What the lifecycle needs from a sandbox's agent, as a trait: the real implementation speaks
//! prism-proto's Connect-RPC JSON over the agent's unix socket; tests use an in-memory fake.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use prism_types::code::{
    CodeContext, CodeEvent, CreateContextRequest, InvokeRequest, InvokeResult, RunCodeRequest,
};

/// Failures talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the sandbox's agent is unreachable: {0}")]
    Unavailable(String),
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the agent refused: {0}")]
    Remote(String),
    /// Nothing accepts TCP connections on the port inside the sandbox.
    #[error("{0}")]
    PortClosed(String),
}

/// A process to start inside the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcSpec {
    /// argv; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    /// Allocate a PTY of this size (cols, rows).
    pub pty: Option<(u16, u16)>,
    /// Keep stdin open for `send_stdin`.
    pub stdin: bool,
    /// A tag to find the process again with `connect` (the main process is `main`).
    pub tag: Option<String>,
}

/// One event of a running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// Terminal output (PTY processes).
    Pty(Bytes),
    /// The process ended: exit status, or the signal that killed it.
    End {
        exit_code: i32,
        signal: Option<i32>,
    },
}

/// A started (or re-attached) process and its event stream.
pub struct ProcStream {
    pub pid: u32,
    pub events: BoxStream<'static, Result<ProcEvent, AgentError>>,
}

impl std::fmt::Debug for ProcStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcStream")
            .field("pid", &self.pid)
            .finish()
    }
}

/// A directory entry or file status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub name: String,
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "other",
        }
    }
}

pub type AgentResult<T> = Result<T, AgentError>;

/// The agent of one sandbox.
pub trait Agent: Send + Sync {
    fn health(&self) -> BoxFuture<'_, AgentResult<()>>;
    fn spawn(&self, spec: ProcSpec) -> BoxFuture<'_, AgentResult<ProcStream>>;
    /// Re-attach to a running process by tag (after a daemon restart).
    fn connect_tag(&self, tag: &str) -> BoxFuture<'_, AgentResult<ProcStream>>;
    /// Write to a process's stdin (or its terminal, when `pty`).
    fn send_stdin(&self, pid: u32, data: Bytes, pty: bool) -> BoxFuture<'_, AgentResult<()>>;
    fn close_stdin(&self, pid: u32) -> BoxFuture<'_, AgentResult<()>>;
    fn signal(&self, pid: u32, signal: i32) -> BoxFuture<'_, AgentResult<()>>;
    fn resize(&self, pid: u32, cols: u16, rows: u16) -> BoxFuture<'_, AgentResult<()>>;
    fn stat(&self, path: &str) -> BoxFuture<'_, AgentResult<EntryInfo>>;
    fn list_dir(&self, path: &str) -> BoxFuture<'_, AgentResult<Vec<EntryInfo>>>;
    fn read_file(&self, path: &str) -> BoxFuture<'_, AgentResult<Bytes>>;
    /// Write a file, creating its parent directories.
    fn write_file(&self, path: &str, data: Bytes) -> BoxFuture<'_, AgentResult<()>>;
    fn remove(&self, path: &str) -> BoxFuture<'_, AgentResult<()>>;
    /// A tar archive of the directory `path` (entries relative to it).
    fn read_tar(&self, path: &str) -> BoxFuture<'_, AgentResult<Bytes>>;
    /// Unpack a tar archive into the directory `path` (created if missing).
    fn write_tar(&self, path: &str, tar: Bytes) -> BoxFuture<'_, AgentResult<()>>;

    /// A TCP connection to `127.0.0.1:port` inside the sandbox (the port proxy's tunnel).
    fn open_port(&self, _port: u16) -> BoxFuture<'_, AgentResult<PortTunnel>> {
        Box::pin(async { Err(AgentError::Remote("this agent has no port tunnels".into())) })
    }

    // ---- code contexts (see `super::code`); agents without them refuse ----

    fn create_context(
        &self,
        _req: CreateContextRequest,
    ) -> BoxFuture<'_, AgentResult<CodeContext>> {
        Box::pin(async { Err(no_code()) })
    }
    fn list_contexts(&self) -> BoxFuture<'_, AgentResult<Vec<CodeContext>>> {
        Box::pin(async { Err(no_code()) })
    }
    fn delete_context(&self, _id: &str) -> BoxFuture<'_, AgentResult<()>> {
        Box::pin(async { Err(no_code()) })
    }
    fn restart_context(&self, _id: &str) -> BoxFuture<'_, AgentResult<CodeContext>> {
        Box::pin(async { Err(no_code()) })
    }
    fn interrupt_context(&self, _id: &str) -> BoxFuture<'_, AgentResult<()>> {
        Box::pin(async { Err(no_code()) })
    }
    /// Runs code; the events end with `end`. `context_env` is the environment of the
    /// language's default context if the run creates it.
    fn run_code(
        &self,
        _req: RunCodeRequest,
        _context_env: BTreeMap<String, String>,
    ) -> BoxFuture<'_, AgentResult<CodeEvents>> {
        Box::pin(async { Err(no_code()) })
    }
    /// Calls a handler in a throw-away context with environment `env`.
    fn invoke(
        &self,
        _req: InvokeRequest,
        _env: BTreeMap<String, String>,
    ) -> BoxFuture<'_, AgentResult<InvokeResult>> {
        Box::pin(async { Err(no_code()) })
    }
}

/// A byte stream into the sandbox.
pub trait TunnelIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> TunnelIo for T {}

/// A TCP connection to a port inside the sandbox.
pub type PortTunnel = Box<dyn TunnelIo>;

/// The events of a code run.
pub type CodeEvents = BoxStream<'static, Result<CodeEvent, AgentError>>;

fn no_code() -> AgentError {
    AgentError::Remote("this agent has no code contexts".into())
}

/// Makes [`Agent`]s from agent socket paths.
pub trait AgentConnector: Send + Sync + 'static {
    fn connect(&self, socket: &Path) -> Arc<dyn Agent>;
}
