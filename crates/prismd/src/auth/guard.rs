//! The one place where requests are authenticated, rate-limited, scoped to their project and
//! audited. Applied by [`crate::app`] as a route layer over every API route, so it sees the
//! matched route template and its path parameters.

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prism_core::lifecycle::LifecycleError;
use prism_store::auth::AuditRecord;
use prism_types::auth::codes;

use super::Caller;
use crate::AppState;
use crate::error::AppError;

/// Request-id header: accepted from the client or generated, and returned.
pub const REQUEST_ID: &str = "x-request-id";

/// Path parameters that name a sandbox (ours, and the E2B surface's).
const SANDBOX_PARAMS: &[&str] = &["id", "sandboxID", "sandbox_id", "sandboxId"];

/// Set by a handler on its response when the request made a sandbox (for the audit record).
#[derive(Debug, Clone)]
pub struct AuditSandbox(pub String);

/// Routes a project key may call; every other route needs an admin key. Templates belong to
/// projects (the handlers scope every call to the caller's project); images are the node's.
fn project_may_call(method: &Method, route: &str) -> bool {
    route.starts_with("/v1/sandboxes")
        || route.starts_with("/v1/templates")
        || route.starts_with("/sandboxes")
        || route.starts_with("/v2/sandboxes")
        || route.starts_with("/v1/secrets")
        || route == "/v1/audit"
        || (method == Method::GET && route.starts_with("/v1/images"))
}

/// Requests recorded in the audit trail: every change, and interactive sessions.
fn audited(method: &Method, route: &str) -> bool {
    method != Method::GET || route.ends_with("/ws")
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
}

fn with_request_id(mut resp: Response, rid: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(rid) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

fn rate_limited(retry: std::time::Duration) -> Response {
    let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
    let mut resp = AppError::new(
        StatusCode::TOO_MANY_REQUESTS,
        codes::RATE_LIMITED,
        format!("too many requests for this API key; retry in {secs}s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Resolve the sandbox the path names and check that `caller` may touch it. `Ok(None)`: no
/// such sandbox (the handler answers 404 itself). Another project's sandbox is reported as
/// not found, so a tenant cannot even learn that it exists.
async fn owned_sandbox(
    st: &AppState,
    caller: &Caller,
    id_or_name: &str,
) -> Result<Option<String>, AppError> {
    let sb = match st.manager.get(id_or_name).await {
        Ok(sb) => sb,
        Err(LifecycleError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(project) = &caller.project else {
        return Ok(Some(sb.id));
    };
    let owner = match st.auth.store().owner_cached(&sb.id) {
        Some(owner) => owner,
        None => {
            let store = st.auth.store().clone();
            let id = sb.id.clone();
            tokio::task::spawn_blocking(move || store.owner(&id))
                .await
                .map_err(|e| AppError::from(LifecycleError::TaskFailed(e)))?
                .map_err(super::store_err)?
        }
    };
    if owner.as_deref() == Some(project.as_str()) {
        Ok(Some(sb.id))
    } else {
        Err(LifecycleError::NotFound(id_or_name.to_string()).into())
    }
}

/// The middleware.
pub async fn guard(
    State(st): State<AppState>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    let rid = request_id(&req);
    let method = req.method().clone();
    let route = matched
        .as_ref()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let caller = match st.auth.authenticate(req.headers()) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(message = "unauthenticated request", %method, %route, request_id = %rid);
            return with_request_id(e.into_response(), &rid);
        }
    };
    if !caller.is_admin() && !project_may_call(&method, &route) {
        let e = super::forbidden(
            "this route needs an admin API key; project keys may use \
                                  sandboxes, secrets and the audit trail of their project",
        );
        return with_request_id(e.into_response(), &rid);
    }
    if let Some(key) = &caller.key_id {
        let create = method == Method::POST && route == "/v1/sandboxes";
        if let Err(retry) = st.auth.limits.check(key, create) {
            return with_request_id(rate_limited(retry), &rid);
        }
    }
    let named = params.ok().and_then(|p| {
        p.iter()
            .find(|(k, _)| SANDBOX_PARAMS.contains(k))
            .map(|(_, v)| v.to_string())
    });
    let mut sandbox_id = None;
    if let Some(named) = named.filter(|_| route.contains("sandboxes/{")) {
        match owned_sandbox(&st, &caller, &named).await {
            Ok(id) => sandbox_id = id.or(Some(named)),
            Err(e) => {
                let resp = e.into_response();
                audit(
                    &st,
                    &caller,
                    &method,
                    &route,
                    Some(named),
                    resp.status(),
                    &rid,
                );
                return with_request_id(resp, &rid);
            }
        }
    }
    req.extensions_mut().insert(caller.clone());
    let span = tracing::info_span!("request", request_id = %rid, key_id = ?caller.key_id);
    let resp = tracing::Instrument::instrument(next.run(req), span).await;
    if audited(&method, &route) {
        let made = resp.extensions().get::<AuditSandbox>().map(|a| a.0.clone());
        audit(
            &st,
            &caller,
            &method,
            &route,
            made.or(sandbox_id),
            resp.status(),
            &rid,
        );
    }
    with_request_id(resp, &rid)
}

/// Queue the request's audit record (written by [`super::audit::AuditLog`]'s thread).
fn audit(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    route: &str,
    sandbox_id: Option<String>,
    status: StatusCode,
    rid: &str,
) {
    let rec = AuditRecord {
        seq: 0,
        at_ms: prism_core::lifecycle::now_ms(),
        key_id: caller.key_id.clone(),
        project: caller.project.clone(),
        action: format!("{method} {route}"),
        sandbox_id,
        status: status.as_u16(),
        request_id: Some(rid.to_string()),
    };
    st.auth.audit().append(rec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_keys_are_denied_by_default() {
        assert!(project_may_call(&Method::POST, "/v1/sandboxes/{id}/exec"));
        assert!(project_may_call(&Method::GET, "/v1/images"));
        assert!(!project_may_call(&Method::POST, "/v1/images/pull"));
        assert!(project_may_call(&Method::POST, "/v1/templates"));
        assert!(project_may_call(
            &Method::DELETE,
            "/v1/templates/{reference}"
        ));
        assert!(!project_may_call(&Method::POST, "/v1/api-keys"));
        assert!(!project_may_call(&Method::GET, "/v1/info"));
        assert!(!project_may_call(&Method::GET, "/v1/some-future-route"));
    }
}
