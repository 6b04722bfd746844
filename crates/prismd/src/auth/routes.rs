//! `/v1/api-keys` and `/v1/audit`, and [`create_owned`]: the create path every sandbox-making
//! route (ours, E2B's) goes through so that quotas apply and the caller's project owns it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use prism_core::lifecycle::{LifecycleError, rfc3339};
use prism_store::ListFilter;
use prism_store::auth::{ApiKeyRecord, AuditFilter};
use prism_types::auth::{ApiKey, AuditEntry, CreateApiKeyRequest, CreatedApiKey, codes};
use prism_types::{ApiError, CreateSandboxRequest, Sandbox, SandboxState};
use serde::Deserialize;
use utoipa::IntoParams;

use super::guard::AuditSandbox;
use super::{Caller, store_err, valid_project};
use crate::AppState;
use crate::error::AppError;
use crate::extract::{ApiJson, ApiQuery};

type ApiResult<T> = Result<T, AppError>;

fn view(rec: &ApiKeyRecord) -> ApiKey {
    ApiKey {
        id: rec.id.clone(),
        name: rec.name.clone(),
        project: rec.project.clone(),
        created_at: rfc3339(rec.created_at_ms),
        revoked_at: rec.revoked_at_ms.map(rfc3339),
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

#[utoipa::path(post, path = "/v1/api-keys", tag = "auth", request_body = CreateApiKeyRequest,
    responses((status = 201, description = "The key, shown this once", body = CreatedApiKey),
              (status = 403, description = "Not an admin key", body = ApiError),
              (status = 422, description = "Invalid name or project", body = ApiError)))]
pub async fn create_key(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    caller.require_admin()?;
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            prism_types::codes::INVALID_REQUEST,
            "name must be 1 to 200 characters",
        ));
    }
    if let Some(p) = &req.project
        && !valid_project(p)
    {
        return Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            prism_types::codes::INVALID_REQUEST,
            format!("invalid project {p:?}: use [A-Za-z0-9][A-Za-z0-9_.-], at most 63 characters"),
        ));
    }
    let auth = st.auth.clone();
    let (key, rec) =
        tokio::task::spawn_blocking(move || auth.create_key(&req.name, req.project.as_deref()))
            .await
            .map_err(|e| AppError::from(LifecycleError::TaskFailed(e)))??;
    tracing::info!(message = "API key created", key_id = %rec.id, project = ?rec.project);
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            e2b_key: super::e2b_form(&key).unwrap_or_default(),
            key,
            info: view(&rec),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/api-keys", tag = "auth",
    responses((status = 200, description = "Every key (never the secret)", body = Vec<ApiKey>),
              (status = 403, description = "Not an admin key", body = ApiError)))]
pub async fn list_keys(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<ApiKey>>> {
    caller.require_admin()?;
    let store = st.auth.store().clone();
    let keys = blocking(move || store.api_keys(None)).await?;
    Ok(Json(keys.iter().map(view).collect()))
}

#[utoipa::path(delete, path = "/v1/api-keys/{key_id}", tag = "auth",
    params(("key_id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked (idempotent); refused from the next request on"),
              (status = 404, description = "No such key", body = ApiError)))]
pub async fn revoke_key(
    State(st): State<AppState>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let auth = st.auth.clone();
    let id = key_id.clone();
    let found = tokio::task::spawn_blocking(move || auth.revoke_key(&id))
        .await
        .map_err(|e| AppError::from(LifecycleError::TaskFailed(e)))??;
    if !found {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            prism_types::codes::NOT_FOUND,
            format!("no API key {key_id:?}; list them with `prismctl api-key ls`"),
        ));
    }
    tracing::info!(message = "API key revoked", key_id = %key_id);
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only records about this sandbox id.
    pub sandbox: Option<String>,
    /// Only this project's records (admin keys; project keys always see their own).
    pub project: Option<String>,
    /// Only records after this `seq`.
    pub after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "auth", params(AuditQuery),
    responses((status = 200, description = "Audit records, oldest first", body = Vec<AuditEntry>)))]
pub async fn audit(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let filter = AuditFilter {
        project: caller.project.clone().or(q.project),
        sandbox_id: q.sandbox,
        after_seq: q.after,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    // Every request answered before this one is in the trail.
    st.auth.audit().flush().await;
    let store = st.auth.store().clone();
    let recs = blocking(move || store.audit(&filter)).await?;
    Ok(Json(
        recs.into_iter()
            .map(|r| AuditEntry {
                seq: r.seq,
                at: rfc3339(r.at_ms),
                key_id: r.key_id,
                project: r.project,
                action: r.action,
                sandbox_id: r.sandbox_id,
                status: r.status,
                request_id: r.request_id,
            })
            .collect(),
    ))
}

fn quota_error(message: String) -> AppError {
    AppError::new(
        StatusCode::TOO_MANY_REQUESTS,
        codes::QUOTA_EXCEEDED,
        message,
    )
}

/// Refuse `req` if it would take `project` beyond its quota.
async fn check_quota(st: &AppState, project: &str, req: &CreateSandboxRequest) -> ApiResult<()> {
    let l = st.auth.limits.limits;
    if l.max_sandboxes == 0 && l.max_cpus <= 0.0 && l.max_memory_mb == 0 {
        return Ok(());
    }
    let mut live: Vec<Sandbox> = Vec::new();
    let mut after_id = None;
    loop {
        let (page, next) = st
            .manager
            .list(ListFilter {
                project: Some(project.to_string()),
                after_id: after_id.take(),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        live.extend(
            page.into_iter()
                // Stopped sandboxes count: `start` does not pass through this check.
                .filter(|s| !matches!(s.state, SandboxState::Failed | SandboxState::Destroyed)),
        );
        match next {
            Some(n) => after_id = Some(n),
            None => break,
        }
    }
    let n = live.len() as u64;
    if l.max_sandboxes > 0 && n >= l.max_sandboxes {
        return Err(quota_error(format!(
            "project {project:?} already has {n} sandboxes, its quota is {}; destroy one first",
            l.max_sandboxes
        )));
    }
    if l.max_cpus > 0.0 {
        let used: f64 = live.iter().filter_map(|s| s.resources.cpus).sum();
        let want = req.resources.cpus.unwrap_or(0.0);
        if req.resources.cpus.is_none() || used + want > l.max_cpus {
            return Err(quota_error(format!(
                "project {project:?} uses {used} of its {} CPUs and this sandbox asks for {}; \
                 set resources.cpus within the quota",
                l.max_cpus,
                req.resources
                    .cpus
                    .map_or("no limit".to_string(), |c| c.to_string())
            )));
        }
    }
    if l.max_memory_mb > 0 {
        let used: u64 = live.iter().filter_map(|s| s.resources.memory_mb).sum();
        let want = req.resources.memory_mb.unwrap_or(0);
        if req.resources.memory_mb.is_none() || used + want > l.max_memory_mb {
            return Err(quota_error(format!(
                "project {project:?} uses {used} of its {} MiB and this sandbox asks for {}; \
                 set resources.memory_mb within the quota",
                l.max_memory_mb,
                req.resources
                    .memory_mb
                    .map_or("no limit".to_string(), |m| format!("{m} MiB"))
            )));
        }
    }
    Ok(())
}

/// Create a sandbox for `caller`: quota check, create, record the owner. Creates of one project
/// are serialised so that two concurrent requests cannot both take the last slot.
pub async fn create_owned(
    st: &AppState,
    caller: &Caller,
    req: CreateSandboxRequest,
) -> ApiResult<Sandbox> {
    let Some(project) = caller.project.clone() else {
        return Ok(st.manager.create(req).await?);
    };
    if let Some(t) = &req.template {
        crate::templates::check_use(st.auth.store(), &project, t).await?;
    }
    let lock = st.auth.project_lock(&project);
    let _held = lock.lock().await;
    check_quota(st, &project, &req).await?;
    let mut req = req;
    // Mark the create so the secret provider knows the project before the owner is recorded.
    let marker = match st.auth.secrets() {
        Some(s) => {
            let m = s.begin_create(&project).map_err(|e| {
                AppError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    prism_types::codes::INTERNAL,
                    e.to_string(),
                )
            })?;
            req.labels
                .insert(super::secrets::CREATE_LABEL.into(), m.clone());
            Some((s, m))
        }
        None => None,
    };
    let made = st.manager.create(req).await;
    let store = st.auth.store().clone();
    let owned = match &made {
        Ok(sb) => {
            let (id, p) = (sb.id.clone(), project.clone());
            blocking(move || store.set_owner(&id, &p)).await
        }
        Err(_) => Ok(()),
    };
    if let Some((s, m)) = marker {
        s.end_create(&m);
    }
    let sb = made?;
    if let Err(e) = owned {
        // Never leave an unowned sandbox made by a tenant: take it down again.
        let _ = st.manager.destroy(&sb.id).await;
        return Err(e);
    }
    Ok(sb)
}

/// The response of a create: 201 with the sandbox, marked for the audit record.
pub fn created(sb: Sandbox) -> Response {
    let id = sb.id.clone();
    (StatusCode::CREATED, Extension(AuditSandbox(id)), Json(sb)).into_response()
}
