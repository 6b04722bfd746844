//! Port 49999: E2B's code interpreter (`/execute` NDJSON, `/contexts`), mapped onto Prism's
//! code contexts.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use prism_core::lifecycle::{now_ms, rfc3339};
use prism_types::code::{CodeContext, CodeEvent, CreateContextRequest, RunCodeRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{E2bError, unreachable_sandbox};
use crate::AppState;

/// Largest request body on this port (code and context requests are small).
const MAX_BODY: usize = 16 << 20;

type E2bResult<T> = Result<T, E2bError>;

/// Routes one request for port 49999 of sandbox `id`.
pub async fn route(st: &AppState, id: &str, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let out = match (&method, segs.as_slice()) {
        (&Method::GET, ["health"]) => Ok(StatusCode::NO_CONTENT.into_response()),
        (&Method::POST, ["execute"]) => execute(st, id, req).await,
        (&Method::POST, ["contexts"]) => create_context(st, id, req).await,
        (&Method::GET, ["contexts"]) => list_contexts(st, id).await,
        (&Method::DELETE, ["contexts", ctx]) => delete_context(st, id, ctx).await,
        (&Method::POST, ["contexts", ctx, "restart"]) => restart_context(st, id, ctx).await,
        (&Method::POST, ["contexts", ctx, "interrupt"]) => interrupt_context(st, id, ctx).await,
        _ => Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("the code interpreter has no {method} {path}"),
        )),
    };
    out.unwrap_or_else(IntoResponse::into_response)
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request) -> E2bResult<T> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| E2bError::bad_request(format!("could not read the body: {e}")))?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| E2bError::bad_request(format!("bad JSON body: {e}")))
}

/// E2B language names → Prism's canonical ones (unknown names pass through; the manager
/// rejects them).
fn language(l: &str) -> String {
    match l.to_ascii_lowercase().as_str() {
        "js" | "javascript" | "ts" | "typescript" | "node" | "nodejs" => "javascript".into(),
        "python" | "python3" | "py" => "python".into(),
        "bash" | "shell" | "sh" => "bash".into(),
        _ => l.to_string(),
    }
}

/// Interrupts the run's context if the client goes away before the run ended: the code
/// interpreter SDKs cancel an execution (their `timeout`, a KeyboardInterrupt) by closing the
/// `/execute` connection.
struct InterruptOnDisconnect {
    st: AppState,
    sandbox: String,
    context: String,
    ended: bool,
}

impl Drop for InterruptOnDisconnect {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (st, sandbox, context) = (
            self.st.clone(),
            std::mem::take(&mut self.sandbox),
            std::mem::take(&mut self.context),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(error) = st.manager.interrupt_context(&sandbox, &context).await {
                    tracing::debug!(message = "interrupt after disconnect failed", sandbox_id = %sandbox, %error);
                }
            });
        }
    }
}

#[derive(Debug, Deserialize)]
struct ExecuteRequest {
    code: String,
    context_id: Option<String>,
    language: Option<String>,
    env_vars: Option<BTreeMap<String, String>>,
}

async fn execute(st: &AppState, id: &str, req: Request) -> E2bResult<Response> {
    let req: ExecuteRequest = body_json(req).await?;
    let run = RunCodeRequest {
        code: req.code,
        language: match (&req.context_id, req.language.as_deref()) {
            (None, None) => Some("python".into()),
            (_, l) => l.map(language),
        },
        context_id: req.context_id,
        timeout_s: None,
        env: req.env_vars.unwrap_or_default(),
    };
    // The context that runs the code: the named one, or the language's default context.
    let context = match (&run.context_id, &run.language) {
        (Some(c), _) => c.clone(),
        (None, Some(l)) => format!("default-{l}"),
        (None, None) => String::new(),
    };
    let events = st
        .manager
        .run_code(id, run)
        .await
        .map_err(|e| unreachable_sandbox(id, e))?;
    let mut guard = InterruptOnDisconnect {
        st: st.clone(),
        sandbox: id.to_string(),
        context,
        ended: false,
    };
    let body = events.map(move |ev| {
        // The whole guard moves into the stream (not just the field), so it lives as long as
        // the response body.
        let guard = &mut guard;
        if matches!(ev, Ok(CodeEvent::End { .. }) | Err(_)) {
            guard.ended = true;
        }
        let line = match ev {
            Ok(ev) => e2b_line(ev),
            Err(e) => Some(json!({"type": "error", "name": "AgentError",
                                  "value": e.to_string(), "traceback": ""})),
        };
        let mut out = line.map(|v| v.to_string()).unwrap_or_default();
        if !out.is_empty() {
            out.push('\n');
        }
        Ok::<_, std::io::Error>(Bytes::from(out))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// One Prism code event as the code interpreter's NDJSON line (`None`: nothing to send).
pub fn e2b_line(ev: CodeEvent) -> Option<Value> {
    let now = rfc3339(now_ms());
    Some(match ev {
        CodeEvent::Stdout { text } => json!({"type": "stdout", "text": text, "timestamp": now}),
        CodeEvent::Stderr { text } => json!({"type": "stderr", "text": text, "timestamp": now}),
        CodeEvent::Result { data } => result(data, true),
        CodeEvent::Display { data } => result(data, false),
        CodeEvent::Error(e) => json!({"type": "error", "name": e.name, "value": e.value,
                                      "traceback": e.traceback}),
        CodeEvent::ExecutionCount { execution_count } => {
            json!({"type": "number_of_executions", "execution_count": execution_count})
        }
        CodeEvent::End { .. } => json!({"type": "end_of_execution"}),
    })
}

/// A result by MIME type in the code interpreter's field names.
fn result(data: BTreeMap<String, Value>, main: bool) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("type".into(), "result".into());
    out.insert("is_main_result".into(), main.into());
    let mut extra = serde_json::Map::new();
    for (mime, v) in data {
        let field = match mime.as_str() {
            "text/plain" => "text",
            "text/html" => "html",
            "text/markdown" => "markdown",
            "image/svg+xml" => "svg",
            "image/png" => "png",
            "image/jpeg" => "jpeg",
            "application/pdf" => "pdf",
            "text/latex" => "latex",
            "application/json" => "json",
            "application/javascript" => "javascript",
            _ => {
                extra.insert(mime, v);
                continue;
            }
        };
        out.insert(field.into(), v);
    }
    if !extra.is_empty() {
        out.insert("extra".into(), extra.into());
    }
    out.into()
}

fn context_json(c: &CodeContext) -> Value {
    json!({"id": c.id, "language": c.language, "cwd": c.cwd})
}

#[derive(Debug, Deserialize)]
struct NewContext {
    language: Option<String>,
    cwd: Option<String>,
}

async fn create_context(st: &AppState, id: &str, req: Request) -> E2bResult<Response> {
    let req: NewContext = body_json(req).await?;
    let ctx = st
        .manager
        .create_context(
            id,
            CreateContextRequest {
                language: language(req.language.as_deref().unwrap_or("python")),
                cwd: req.cwd,
                env: BTreeMap::new(),
            },
        )
        .await
        .map_err(|e| unreachable_sandbox(id, e))?;
    Ok(Json(context_json(&ctx)).into_response())
}

async fn list_contexts(st: &AppState, id: &str) -> E2bResult<Response> {
    let ctxs = st
        .manager
        .list_contexts(id)
        .await
        .map_err(|e| unreachable_sandbox(id, e))?;
    Ok(Json(ctxs.iter().map(context_json).collect::<Vec<_>>()).into_response())
}

async fn delete_context(st: &AppState, id: &str, ctx: &str) -> E2bResult<Response> {
    st.manager
        .delete_context(id, ctx)
        .await
        .map_err(|e| ctx_error(id, e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn restart_context(st: &AppState, id: &str, ctx: &str) -> E2bResult<Response> {
    st.manager
        .restart_context(id, ctx)
        .await
        .map_err(|e| ctx_error(id, e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn interrupt_context(st: &AppState, id: &str, ctx: &str) -> E2bResult<Response> {
    st.manager
        .interrupt_context(id, ctx)
        .await
        .map_err(|e| ctx_error(id, e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An unknown context stays a 404 (the SDK raises NotFound); the sandbox being gone is a 502.
fn ctx_error(id: &str, e: prism_core::lifecycle::LifecycleError) -> E2bError {
    match e {
        prism_core::lifecycle::LifecycleError::Agent(_) => E2bError::from(e),
        e => unreachable_sandbox(id, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_use_the_code_interpreter_field_names() {
        let mut data = BTreeMap::new();
        data.insert("text/plain".to_string(), json!("42"));
        data.insert("image/png".to_string(), json!("iVBOR"));
        data.insert("application/x-custom".to_string(), json!(1));
        let v = e2b_line(CodeEvent::Result { data }).unwrap();
        assert_eq!(v["type"], "result");
        assert_eq!(v["text"], "42");
        assert_eq!(v["png"], "iVBOR");
        assert_eq!(v["is_main_result"], true);
        assert_eq!(v["extra"]["application/x-custom"], 1);
        let v = e2b_line(CodeEvent::ExecutionCount { execution_count: 3 }).unwrap();
        assert_eq!(
            v,
            json!({"type": "number_of_executions", "execution_count": 3})
        );
        let v = e2b_line(CodeEvent::Stdout { text: "hi".into() }).unwrap();
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
