//! The code-context calls of [`ProtoAgent`](super::proto_agent::ProtoAgent): prism-proto's
//! `/code/…` client, mapped to the API types. The agent's wire types and the API types have
//! the same JSON shape, so they convert through `serde_json::Value`.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use prism_proto::AgentClient;
use prism_proto::code as wire;
use prism_types::code::{
    CodeContext, CodeEvent, CreateContextRequest, InvokeRequest, InvokeResult, RunCodeRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::agent::{AgentError, AgentResult, CodeEvents};
use super::proto_agent::map_err;

/// Converts between two types of the same JSON shape.
fn convert<A: Serialize, B: DeserializeOwned>(a: &A) -> AgentResult<B> {
    serde_json::to_value(a)
        .and_then(serde_json::from_value)
        .map_err(|e| AgentError::Remote(format!("unexpected message from the agent: {e}")))
}

pub(super) async fn create_context(
    client: &AgentClient,
    req: CreateContextRequest,
) -> AgentResult<CodeContext> {
    let wire = wire::CreateContext {
        language: req.language,
        cwd: req.cwd,
        envs: req.env,
    };
    convert(&client.create_context(&wire).await.map_err(map_err)?)
}

pub(super) async fn list_contexts(client: &AgentClient) -> AgentResult<Vec<CodeContext>> {
    convert(&client.list_contexts().await.map_err(map_err)?)
}

pub(super) async fn restart_context(client: &AgentClient, id: String) -> AgentResult<CodeContext> {
    convert(&client.restart_context(&id).await.map_err(map_err)?)
}

pub(super) async fn run_code(
    client: &AgentClient,
    req: RunCodeRequest,
    context_env: BTreeMap<String, String>,
) -> AgentResult<CodeEvents> {
    let wire = wire::RunCode {
        code: req.code,
        context_id: req.context_id,
        language: req.language,
        timeout_s: req.timeout_s,
        envs: req.env,
        context_envs: context_env,
    };
    let events = client.run_code(&wire).await.map_err(map_err)?;
    Ok(events
        .map(|ev| match ev {
            Ok(ev) => convert::<_, CodeEvent>(&ev),
            Err(e) => Err(map_err(e)),
        })
        .boxed())
}

pub(super) async fn invoke(
    client: &AgentClient,
    req: InvokeRequest,
    env: BTreeMap<String, String>,
) -> AgentResult<InvokeResult> {
    let mut wire: wire::Invoke = convert(&req)?;
    wire.envs = env;
    convert(&client.invoke(&wire).await.map_err(map_err)?)
}
