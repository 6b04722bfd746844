//! Code contexts (ours, not envd): JSON REST under `/code/…` on the agent.
//!
//! - `POST /code/contexts` [`CreateContext`] → 201 [`ContextInfo`]; `GET /code/contexts` →
//!   `[ContextInfo]`; `DELETE /code/contexts/{id}`; `POST /code/contexts/{id}/restart` and
//!   `/interrupt`.
//! - `POST /code/run` [`RunCode`] → `application/x-ndjson`, one [`CodeEvent`] per line, the last
//!   one `end`.
//! - `POST /code/invoke` [`Invoke`] → [`InvokeResult`].
//!
//! Errors before a stream starts are `{"code","message"}` with a Connect status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Content type of the run stream.
pub const CONTENT_TYPE_NDJSON: &str = "application/x-ndjson";

/// `POST /code/contexts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateContext {
    /// `python`, `javascript` (or `js`, `node`), `bash` (or `shell`, `sh`).
    pub language: String,
    /// Working directory (default: the user's home).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
}

/// A code context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub cwd: String,
    pub user: String,
    /// Pid of the running driver (`None` until the first run after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// `POST /code/run`: `context_id`, or `language` (its default context, created on first use).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunCode {
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Seconds before the run is interrupted (default 300; 0 = the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Set for this run only, restored afterwards.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    /// Without `context_id`: the environment of the language's default context, if this run
    /// creates it (the sandbox's variables and secrets).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub context_envs: BTreeMap<String, String>,
}

/// `POST /code/invoke`: calls `handler(event)` in a fresh, throw-away context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Invoke {
    pub language: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Function name (default `handler`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    pub event: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// The environment of the throw-away context (the sandbox's variables and secrets).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
}

/// An error raised by code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeError {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub traceback: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Ok,
    /// The code raised (see the `error` event).
    Error,
    /// Stopped by an interrupt request.
    Interrupted,
    /// Stopped because `timeout_s` passed.
    Timeout,
    /// The driver died or had to be killed; the context's state is lost.
    Crashed,
}

/// One event of a run (a line of the NDJSON stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CodeEvent {
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    /// The value of the last expression: MIME type → data (`text/plain` always; images are
    /// base64; `application/json` is a JSON value).
    Result {
        data: BTreeMap<String, serde_json::Value>,
    },
    /// Rich output shown during the run (`display(obj)`, matplotlib figures).
    Display {
        data: BTreeMap<String, serde_json::Value>,
    },
    Error(CodeError),
    ExecutionCount {
        execution_count: u64,
    },
    End {
        status: RunStatus,
        duration_ms: u64,
    },
}

/// Answer of `POST /code/invoke`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvokeResult {
    /// The handler's JSON result (`null` on error).
    pub result: serde_json::Value,
    /// What the handler printed.
    pub logs: InvokeLogs,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CodeError>,
}

/// Output of an invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeLogs {
    pub stdout: String,
    pub stderr: String,
}
