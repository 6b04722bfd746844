//! Code contexts and handler invocation: `POST /v1/sandboxes/{id}/code` (an NDJSON stream of
//! [`CodeEvent`]s), `/v1/sandboxes/{id}/contexts` and `POST /v1/sandboxes/{id}/invoke`.
//!
//! ```
//! use prism_types::code::{CodeEvent, RunCodeRequest};
//! let req: RunCodeRequest = serde_json::from_str(r#"{"code":"1+1","language":"python"}"#).unwrap();
//! assert_eq!(req.language.as_deref(), Some("python"));
//! let ev: CodeEvent = serde_json::from_str(r#"{"type":"stdout","text":"hi\n"}"#).unwrap();
//! assert_eq!(ev, CodeEvent::Stdout { text: "hi\n".into() });
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/sandboxes/{id}/code`: run code in a context (`context_id`), or in the default
/// context of `language` (created on first use).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCodeRequest {
    pub code: String,
    /// `python`, `javascript` (`js`, `node`) or `bash` (`shell`, `sh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    /// Seconds before the run is interrupted (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Environment variables for this run only: set before the code runs (also for the
    /// processes it starts) and restored to their previous values (or unset) after it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// `POST /v1/sandboxes/{id}/contexts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContextRequest {
    /// `python`, `javascript` (`js`, `node`) or `bash` (`shell`, `sh`).
    pub language: String,
    /// Working directory (default: the user's home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A code context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodeContext {
    pub id: String,
    pub language: String,
    pub cwd: String,
    pub user: String,
    /// Pid of the context's driver process inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// An error raised by the code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodeError {
    /// Exception class (`ZeroDivisionError`, `TypeError`, `KeyboardInterrupt`, `Timeout`, …).
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub traceback: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Ok,
    Error,
    Interrupted,
    Timeout,
    /// The driver died or was killed; the context's state is lost.
    Crashed,
}

/// One line of the NDJSON stream of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CodeEvent {
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    /// The value of the last expression by MIME type: `text/plain` always; `text/html`,
    /// `image/png` (base64), `image/svg+xml`, `application/json` (a JSON value), … when offered.
    Result {
        #[schema(value_type = Object)]
        data: BTreeMap<String, serde_json::Value>,
    },
    /// Rich output shown during the run (`display(obj)`, matplotlib figures).
    Display {
        #[schema(value_type = Object)]
        data: BTreeMap<String, serde_json::Value>,
    },
    Error(CodeError),
    ExecutionCount {
        execution_count: u64,
    },
    /// The last event.
    End {
        status: RunStatus,
        duration_ms: u64,
    },
}

/// `POST /v1/sandboxes/{id}/invoke`: call `handler(event)` from `code` or the file `path`
/// in a fresh, throw-away context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// `python` or `javascript`.
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A file inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Function name (default `handler`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

/// Output of an invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvokeLogs {
    pub stdout: String,
    pub stderr: String,
}

/// Answer of `POST /v1/sandboxes/{id}/invoke`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InvokeResult {
    /// The handler's return value (`null` on error).
    #[schema(value_type = Object)]
    pub result: serde_json::Value,
    pub logs: InvokeLogs,
    pub duration_ms: u64,
    /// Set when the handler raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CodeError>,
}
