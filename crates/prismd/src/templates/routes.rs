//! The `/v1/templates` handlers: each parses, calls one [`Templates`] function, maps the result.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prism_types::ApiError;
use prism_types::templates::{BuildEvent, Template, TemplateList, TemplateSpec};

use super::{TemplateError, Templates};
use crate::auth::Caller;
use crate::error::AppError;
use crate::extract::ApiJson;

type ApiResult<T> = Result<T, AppError>;

pub const NDJSON: &str = "application/x-ndjson";

/// The templates routes (mount them behind the auth guard).
pub fn router(t: Templates) -> Router {
    Router::new()
        .route("/v1/templates", post(create).get(list))
        .route("/v1/templates/{reference}", get(inspect).delete(remove))
        .with_state(t)
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON))
}

fn line(ev: &BuildEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = TemplateSpec,
    responses((status = 201, description = "Built: the new version (ready). With \
                `Accept: application/x-ndjson`, 200 and a stream of BuildEvent lines whose \
                last is `done` or `error`", body = Template),
              (status = 404, description = "The source image does not exist", body = ApiError),
              (status = 409, description = "The name belongs to another project", body = ApiError),
              (status = 422, description = "Invalid definition, or a setup command failed \
                (`template_build_failed`; the version is kept as `failed`)", body = ApiError)))]
pub async fn create(
    State(t): State<Templates>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<TemplateSpec>,
) -> ApiResult<Response> {
    if !wants_ndjson(&headers) {
        let tpl = t.create(caller.project, spec, None).await?;
        return Ok((StatusCode::CREATED, Json(tpl)).into_response());
    }
    // Check the definition before answering 200, so a bad one is still a plain 4xx.
    prism_core::lifecycle::templates::spec(spec.clone(), 0)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let done = tokio::spawn(async move { t.create(caller.project, spec, Some(tx)).await });
    let progress =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
        );
    // The final line: `done` was sent by the build; a failure becomes an `error` line.
    let last = futures_util::stream::once(async move {
        match done.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                let e = AppError::from(e);
                Some(BuildEvent::Error {
                    code: e.body.code,
                    message: e.body.message,
                })
            }
            Err(_) => Some(BuildEvent::Error {
                code: prism_types::codes::INTERNAL.into(),
                message: TemplateError::Task.to_string(),
            }),
        }
    });
    use futures_util::StreamExt;
    let body = progress
        .map(Some)
        .chain(last)
        .filter_map(|ev| async move { ev.map(|ev| Ok::<_, std::io::Error>(line(&ev))) });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, NDJSON)],
        Body::from_stream(body),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, description = "Every version the caller may see", body = TemplateList)))]
pub async fn list(State(t): State<Templates>, caller: Caller) -> ApiResult<Json<TemplateList>> {
    Ok(Json(TemplateList {
        templates: t.list(caller.project).await?,
    }))
}

#[utoipa::path(get, path = "/v1/templates/{reference}", tag = "templates",
    params(("reference" = String, Path, description = "`name` (its newest version) or `name:version`")),
    responses((status = 200, description = "The version", body = Template),
              (status = 404, description = "No such template", body = ApiError)))]
pub async fn inspect(
    State(t): State<Templates>,
    caller: Caller,
    Path(reference): Path<String>,
) -> ApiResult<Json<Template>> {
    Ok(Json(t.get(caller.project, &reference).await?))
}

#[utoipa::path(delete, path = "/v1/templates/{reference}", tag = "templates",
    params(("reference" = String, Path, description = "`name:version`, or `name` for every version")),
    responses((status = 200, description = "The removed versions", body = TemplateList),
              (status = 404, description = "No such template", body = ApiError),
              (status = 409, description = "A sandbox uses it (nothing removed)", body = ApiError)))]
pub async fn remove(
    State(t): State<Templates>,
    caller: Caller,
    Path(reference): Path<String>,
) -> ApiResult<Json<TemplateList>> {
    Ok(Json(TemplateList {
        templates: t.remove(caller.project, &reference).await?,
    }))
}
