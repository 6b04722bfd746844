//! The v1 REST handlers: each parses, calls one manager function, and maps the result.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use prism_core::lifecycle::FileContent;
use prism_store::ListFilter;
use prism_types::{
    ApiError, CreateSandboxRequest, DaemonInfo, ExecRequest, ExecResult, FileEntry, Health,
    Sandbox, SandboxList, SandboxMetrics, SandboxState, SetTimeoutRequest,
};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Caller;
use crate::error::AppError;
use crate::extract::{ApiJson, ApiQuery};

type ApiResult<T> = Result<T, AppError>;

#[utoipa::path(get, path = "/healthz", tag = "daemon",
    responses((status = 200, description = "The daemon is alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "daemon",
    responses((status = 200, description = "Recovery is done and the store answers", body = Health),
              (status = 503, description = "Not ready yet", body = ApiError)))]
pub async fn readyz(State(st): State<AppState>) -> ApiResult<Json<Health>> {
    if !st.ready.load(std::sync::atomic::Ordering::Acquire) {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            prism_types::codes::UNAVAILABLE,
            "the daemon is still recovering its sandboxes",
        ));
    }
    st.manager.counts().await?;
    Ok(Json(Health {
        status: "ready".into(),
    }))
}

#[utoipa::path(get, path = "/v1/info", tag = "daemon",
    responses((status = 200, description = "What this daemon is", body = DaemonInfo)))]
pub async fn info(State(st): State<AppState>) -> ApiResult<Json<DaemonInfo>> {
    let counts = st.manager.counts().await?;
    let sandboxes: BTreeMap<String, u64> = counts
        .into_iter()
        .filter(|(s, _)| *s != SandboxState::Destroyed)
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    Ok(Json(DaemonInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        runtime: st.manager.runtime_name().into(),
        state_dir: st.manager.config().state_dir.display().to_string(),
        listen: st.listen.to_string(),
        sandboxes,
        pools: st.manager.pools(),
    }))
}

#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandboxRequest,
    responses((status = 201, description = "Created and running", body = Sandbox),
              (status = 400, description = "Malformed JSON", body = ApiError),
              (status = 409, description = "Name taken, or a host port to publish on is taken (`port_in_use`)", body = ApiError),
              (status = 422, description = "Invalid request", body = ApiError)))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(mut req): ApiJson<CreateSandboxRequest>,
) -> ApiResult<Response> {
    let held = st.publish.reserve(&mut req.publish)?;
    let made = crate::auth::routes::create_owned(&st, &caller, req).await;
    st.publish.adopt(&st.manager, made.as_ref().ok(), held);
    Ok(crate::auth::routes::created(made?))
}

/// Query of `GET /v1/sandboxes`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only sandboxes in this state (default: all but destroyed).
    pub state: Option<String>,
    /// `key=value`: only sandboxes with this label.
    pub label: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(ListQuery),
    responses((status = 200, description = "A page of sandboxes", body = SandboxList),
              (status = 400, description = "Bad filter", body = ApiError)))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<SandboxList>> {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(SandboxState::parse(s).ok_or_else(|| {
            AppError::bad_request(format!(
                "unknown state {s:?}: use creating, running, stopped, failed or destroyed"
            ))
        })?),
    };
    let label = match q.label.as_deref() {
        None => None,
        Some(l) => {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| AppError::bad_request("label filter must be key=value"))?;
            Some((k.to_string(), v.to_string()))
        }
    };
    if q.limit == Some(0) {
        return Err(AppError::bad_request("limit must be at least 1"));
    }
    let filter = ListFilter {
        state,
        label,
        limit: q.limit.unwrap_or(0),
        after_id: q.cursor,
        project: caller.project,
    };
    let (sandboxes, next_cursor) = st.manager.list(filter).await?;
    Ok(Json(SandboxList {
        sandboxes,
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, description = "The sandbox", body = Sandbox),
              (status = 404, description = "No such sandbox", body = ApiError)))]
pub async fn inspect(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(st.manager.get(&id).await?))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, description = "Destroyed (idempotent)", body = Sandbox),
              (status = 404, description = "No such sandbox", body = ApiError)))]
pub async fn destroy(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    let sb = st.manager.destroy(&id).await?;
    st.publish.close(&sb.id);
    Ok(Json(sb))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/stop", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, description = "Stopped (idempotent); the writable layer is kept", body = Sandbox),
              (status = 409, description = "Not stoppable in its state", body = ApiError)))]
pub async fn stop(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Sandbox>> {
    let sb = st.manager.stop(&id).await?;
    st.publish.close(&sb.id);
    Ok(Json(sb))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/start", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, description = "Running (idempotent)", body = Sandbox),
              (status = 409, description = "Not startable in its state, or a host port it publishes is taken (`port_in_use`)", body = ApiError)))]
pub async fn start(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Sandbox>> {
    // A stopped sandbox's host ports are bound first: a taken one is a 409 and it stays stopped.
    let before = st.manager.get(&id).await?;
    let held = if before.state != prism_types::SandboxState::Running && !before.publish.is_empty() {
        let mut publish = before.publish;
        Some(st.publish.reserve(&mut publish)?)
    } else {
        None
    };
    let made = st.manager.start(&id).await;
    if let Some(held) = held {
        st.publish.adopt(&st.manager, made.as_ref().ok(), held);
    }
    let sb = made?;
    st.publish.kick();
    Ok(Json(sb))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/restart", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, description = "Restarted", body = Sandbox),
              (status = 409, description = "Not restartable in its state", body = ApiError)))]
pub async fn restart(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    let sb = st.manager.restart(&id).await?;
    st.publish.kick();
    Ok(Json(sb))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/timeout", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = SetTimeoutRequest,
    responses((status = 200, description = "New expiry set", body = Sandbox),
              (status = 422, description = "Beyond the maximum lifetime", body = ApiError)))]
pub async fn set_timeout(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetTimeoutRequest>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(st.manager.set_timeout(&id, req.timeout_s).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = ExecRequest,
    responses((status = 200, description = "The command ran (whatever its exit code)", body = ExecResult),
              (status = 409, description = "The sandbox is not running", body = ApiError),
              (status = 422, description = "Invalid request", body = ApiError)))]
pub async fn exec(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Json<ExecResult>> {
    Ok(Json(st.manager.exec(&id, req).await?))
}

/// Query of the files endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// Path inside the sandbox.
    pub path: String,
    /// `tar`: a directory is sent (GET) or received (PUT) as a tar archive.
    pub format: Option<String>,
}

fn wants_tar(
    q: &FilesQuery,
    headers: &HeaderMap,
    header_name: header::HeaderName,
) -> ApiResult<bool> {
    match q.format.as_deref() {
        Some("tar") => return Ok(true),
        Some("raw") => return Ok(false),
        Some(other) => {
            return Err(AppError::bad_request(format!(
                "unknown format {other:?}: use tar or raw"
            )));
        }
        None => {}
    }
    Ok(headers
        .get(header_name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-tar")))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id or name"), FilesQuery),
    responses((status = 200, description = "A file's bytes (application/octet-stream), a directory \
                as tar (?format=tar or Accept: application/x-tar), or a directory listing (JSON)",
               body = Vec<FileEntry>),
              (status = 404, description = "No such path", body = ApiError)))]
pub async fn files_get(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilesQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let tar = wants_tar(&q, &headers, header::ACCEPT)?;
    Ok(match st.manager.read_path(&id, &q.path, tar).await? {
        FileContent::File(b) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response()
        }
        FileContent::Tar(b) => ([(header::CONTENT_TYPE, "application/x-tar")], b).into_response(),
        FileContent::Dir(list) => Json(
            list.into_iter()
                .map(|e| FileEntry {
                    name: e.name,
                    path: e.path,
                    kind: e.kind.as_str().into(),
                    size: e.size,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
    })
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id or name"), FilesQuery),
    request_body(content = Vec<u8>, description = "File bytes, or a tar archive (Content-Type: \
                 application/x-tar or ?format=tar) unpacked into the directory `path`"),
    responses((status = 204, description = "Written"),
              (status = 409, description = "The sandbox is not running", body = ApiError)))]
pub async fn files_put(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilesQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let tar = wants_tar(&q, &headers, header::CONTENT_TYPE)?;
    st.manager.write_path(&id, &q.path, body, tar).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id or name"), FilesQuery),
    responses((status = 204, description = "Removed"),
              (status = 404, description = "No such path", body = ApiError)))]
pub async fn files_delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> ApiResult<StatusCode> {
    st.manager.remove_path(&id, &q.path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /v1/sandboxes/{id}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Keep the response open and stream new output until the main process ends or the
    /// sandbox stops.
    #[serde(default)]
    pub follow: bool,
    /// Start with the last N lines only.
    pub tail: Option<usize>,
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/logs", tag = "logs",
    params(("id" = String, Path, description = "Sandbox id or name"), LogsQuery),
    responses((status = 200, description = "The main process's stdout and stderr (chunked text)",
               content_type = "text/plain", body = String),
              (status = 404, description = "No such sandbox", body = ApiError)))]
pub async fn logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Response> {
    let stream = st.manager.logs(&id, q.tail, q.follow).await?;
    let body = Body::from_stream(stream.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics", tag = "logs",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, description = "Usage counters", body = SandboxMetrics),
              (status = 409, description = "The sandbox is not running", body = ApiError)))]
pub async fn metrics(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxMetrics>> {
    Ok(Json(st.manager.metrics(&id).await?))
}

/// One entry of a sandbox's event trail.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub at: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_state: Option<SandboxState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_state: Option<SandboxState>,
    pub message: String,
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/events", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, description = "State transitions and notable actions, oldest first",
               body = Vec<EventView>)))]
pub async fn events(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<EventView>>> {
    let evs = st.manager.events(&id).await?;
    Ok(Json(
        evs.into_iter()
            .map(|e| EventView {
                at: prism_core::lifecycle::rfc3339(e.at_ms),
                kind: e.kind,
                from_state: e.from_state,
                to_state: e.to_state,
                message: e.message,
            })
            .collect(),
    ))
}
