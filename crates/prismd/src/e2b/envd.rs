//! Port 49983: E2B's envd. prism-agent serves envd's Connect-RPC `process.Process` and
//! `filesystem.Filesystem` services, `/files` and `/health` itself, so requests are passed
//! through unchanged, streaming both ways (no body is buffered here).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use prism_proto::AgentClient;

use super::E2bError;
use crate::AppState;

/// Headers that describe the client's connection to prismd, not the request.
const HOP_BY_HOP: &[header::HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Forwards `req` to the agent of sandbox `id` and streams its answer back.
pub async fn proxy(st: &AppState, id: &str, req: Request) -> Response {
    let socket = match st.manager.agent_socket(id).await {
        Ok(s) => s,
        Err(e) => return envd_error(super::unreachable_sandbox(id, e)),
    };
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = match path.parse::<Uri>() {
        Ok(u) => u,
        Err(_) => return envd_error(E2bError::bad_request("malformed request path")),
    };
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    let req = Request::from_parts(parts, body);
    match AgentClient::new(socket).raw(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => {
            tracing::warn!(message = "envd pass-through failed", sandbox_id = %id, error = %crate::error::chain(&e));
            envd_error(E2bError::new(
                StatusCode::BAD_GATEWAY,
                format!("the agent of sandbox {id} did not answer: {e}"),
            ))
        }
    }
}

/// E2B's JSON error (`{"code": <status>, "message"}`), which the SDK's envd clients turn into
/// the matching exception.
fn envd_error(e: E2bError) -> Response {
    e.into_response()
}

/// Sets the sandbox's environment variables in its agent (envd's `POST /init`), so that
/// processes and code contexts started through the pass-through see them, as on E2B.
pub async fn init_env(
    st: &AppState,
    id: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), E2bError> {
    if env.is_empty() {
        return Ok(());
    }
    let socket = st
        .manager
        .agent_socket(id)
        .await
        .map_err(|e| super::unreachable_sandbox(id, e))?;
    let body = serde_json::json!({ "envVars": env }).to_string();
    let req = Request::post("/init")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .map_err(|e| E2bError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let resp = AgentClient::new(socket).raw(req).await.map_err(|e| {
        E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!("the agent of sandbox {id} did not take its environment: {e}"),
        )
    })?;
    if !resp.status().is_success() {
        return Err(E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "the agent of sandbox {id} refused its environment ({})",
                resp.status()
            ),
        ));
    }
    Ok(())
}
