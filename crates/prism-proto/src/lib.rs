//! The wire protocol between the host and `prism-agent`, and the host-side client.
//!
//! The agent speaks envd's Connect-RPC JSON protocol (the in-sandbox daemon of E2B), so the
//! unmodified E2B SDK works through a pass-through proxy:
//! - unary RPCs: `POST /<package>.<Service>/<Method>`, `Content-Type: application/json`, JSON in
//!   and out; errors are non-2xx responses with `{"code":"not_found","message":"…"}`;
//! - streaming RPCs: `Content-Type: application/connect+json`, bodies made of [`envelope`]s;
//! - REST: `GET|POST /files?path=`, `GET|PUT /tar?path=` (ours), `GET /health`;
//! - code contexts (ours): JSON and NDJSON under `/code/` ([`code`]);
//! - raw process output (ours, asked for with a header): [`raw_output`].
//!
//! Messages ([`process`], [`filesystem`]) use the protobuf JSON mapping: lowerCamelCase fields,
//! bytes as base64, enums by proto name, int64 as strings, default values omitted.
//!
//! ```no_run
//! # async fn demo() -> Result<(), prism_proto::ProtoError> {
//! use futures_util::StreamExt;
//! use prism_proto::process::{ProcessConfig, ProcessEvent, StartRequest};
//!
//! let agent = prism_proto::AgentClient::new("/run/prism/sbx-1/agent.sock");
//! let req = StartRequest {
//!     process: Some(ProcessConfig { cmd: "echo".into(), args: vec!["hi".into()], ..Default::default() }),
//!     ..Default::default()
//! };
//! let mut events = agent.start(&req).await?;
//! while let Some(event) = events.next().await {
//!     if let ProcessEvent::End(end) = event? {
//!         assert_eq!(end.exit_code, 0);
//!     }
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod code;
mod code_client;
mod conn_pool;
pub mod envelope;
pub mod error;
pub mod filesystem;
mod json;
mod port_client;
pub mod ports;
pub mod process;
pub mod raw_output;

pub use client::{AgentClient, ByteStream, RpcStream};
pub use conn_pool::AgentPool;
pub use error::{Code, ConnectError, ProtoError};
pub use json::{decode_base64, format_rfc3339};
pub use port_client::PortStream;
