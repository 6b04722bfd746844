//! `/v1/secrets`: set, list (names only) and remove a project's secrets.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use prism_core::lifecycle::{LifecycleError, rfc3339};
use prism_types::ApiError;
use prism_types::auth::{SecretInfo, SetSecretRequest};
use serde::Deserialize;
use utoipa::IntoParams;

use super::secrets::{Secrets, valid_name};
use super::{Caller, store_err, valid_project};
use crate::AppState;
use crate::error::AppError;
use crate::extract::{ApiJson, ApiQuery};

type ApiResult<T> = Result<T, AppError>;

fn invalid(msg: String) -> AppError {
    AppError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        prism_types::codes::INVALID_REQUEST,
        msg,
    )
}

fn secrets(st: &AppState) -> ApiResult<std::sync::Arc<Secrets>> {
    st.auth.secrets().ok_or_else(|| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            prism_types::codes::UNAVAILABLE,
            "secrets are not available on this daemon",
        )
    })
}

/// The project a call is about: a project key's own; an admin names one.
fn project_of(caller: &Caller, named: Option<String>) -> ApiResult<String> {
    match (&caller.project, named) {
        (Some(own), None) => Ok(own.clone()),
        (Some(own), Some(p)) if *own == p => Ok(p),
        (Some(_), Some(_)) => Err(super::forbidden(
            "a project key manages its own project only",
        )),
        (None, Some(p)) if valid_project(&p) => Ok(p),
        (None, Some(p)) => Err(invalid(format!("invalid project {p:?}"))),
        (None, None) => Err(invalid(
            "an admin key must name the project (`project`, or prismctl's --project)".into(),
        )),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, prism_store::StoreError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::from(LifecycleError::TaskFailed(e)))?
        .map_err(store_err)
}

#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "auth", request_body = SetSecretRequest,
    params(("name" = String, Path, description = "Environment variable name")),
    responses((status = 204, description = "Stored (encrypted); injected into new processes"),
              (status = 422, description = "Invalid name or project", body = ApiError)))]
pub async fn set(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetSecretRequest>,
) -> ApiResult<StatusCode> {
    let secrets = secrets(&st)?;
    let project = project_of(&caller, req.project)?;
    if !valid_name(&name) {
        return Err(invalid(format!(
            "invalid secret name {name:?}: use an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
        )));
    }
    if req.value.len() > 64 << 10 {
        return Err(invalid("a secret value is at most 64 KiB".into()));
    }
    let sealed = secrets.seal(&project, &name, &req.value).map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            prism_types::codes::INTERNAL,
            e.to_string(),
        )
    })?;
    let store = secrets.store().clone();
    blocking(move || store.put_secret(&sealed)).await?;
    tracing::info!(message = "secret set", %project, %name);
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the secrets routes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProjectQuery {
    /// Project (admin keys; a project key always means its own).
    pub project: Option<String>,
}

#[utoipa::path(get, path = "/v1/secrets", tag = "auth", params(ProjectQuery),
    responses((status = 200, description = "Names of the project's secrets (never values)",
               body = Vec<SecretInfo>)))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ProjectQuery>,
) -> ApiResult<Json<Vec<SecretInfo>>> {
    let secrets = secrets(&st)?;
    let project = project_of(&caller, q.project)?;
    let store = secrets.store().clone();
    let p = project.clone();
    let all = blocking(move || store.secrets(&p)).await?;
    Ok(Json(
        all.into_iter()
            .map(|s| SecretInfo {
                project: s.project,
                name: s.name,
                updated_at: rfc3339(s.updated_at_ms),
            })
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "auth",
    params(("name" = String, Path, description = "Secret name"), ProjectQuery),
    responses((status = 204, description = "Removed"),
              (status = 404, description = "No such secret", body = ApiError)))]
pub async fn remove(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
) -> ApiResult<StatusCode> {
    let secrets = secrets(&st)?;
    let project = project_of(&caller, q.project)?;
    let store = secrets.store().clone();
    let (p, n) = (project.clone(), name.clone());
    if !blocking(move || store.delete_secret(&p, &n)).await? {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            prism_types::codes::NOT_FOUND,
            format!("project {project:?} has no secret {name:?}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
