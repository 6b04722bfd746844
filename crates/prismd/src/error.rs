//! `{code, message}` errors with the right status, for every failure the API can return.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prism_core::lifecycle::{AgentError, LifecycleError, ResolveError, ResolveErrorKind as K};
use prism_store::StoreError;
use prism_types::{ApiError, codes};

/// An error response.
#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub body: ApiError,
}

impl AppError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        AppError {
            status,
            body: ApiError::new(code, message),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, message)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// `err` and its sources as one sentence.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Whether an I/O error in `e`'s chain says the disk (or a quota) is full.
fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.raw_os_error(),
                Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
            )
        {
            return true;
        }
        cur = c.source();
    }
    false
}

fn store_error(e: &StoreError) -> AppError {
    match e {
        StoreError::Full => AppError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            codes::STORAGE_FULL,
            "the daemon's state disk is full; nothing was changed",
        ),
        StoreError::Locked => AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::UNAVAILABLE,
            "the state database is busy; retry",
        ),
        StoreError::NameConflict(n) => AppError::new(
            StatusCode::CONFLICT,
            codes::NAME_CONFLICT,
            format!("the name {n:?} is already used by another sandbox"),
        ),
        other => {
            tracing::error!(message = "state database failure", error = %chain(other));
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                "internal state database error (see the daemon log)",
            )
        }
    }
}

fn agent_error(e: &AgentError) -> AppError {
    match e {
        AgentError::NotFound(_) => {
            AppError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, e.to_string())
        }
        AgentError::InvalidArgument(_) => AppError::bad_request(e.to_string()),
        AgentError::PortClosed(_) => AppError::new(
            StatusCode::BAD_GATEWAY,
            codes::PORT_NOT_LISTENING,
            e.to_string(),
        ),
        AgentError::Unavailable(_) | AgentError::Remote(_) => AppError::new(
            StatusCode::BAD_GATEWAY,
            codes::AGENT_UNAVAILABLE,
            e.to_string(),
        ),
    }
}

/// Create from an image that could not be resolved: always 4xx except local failures.
fn resolve_error(e: &ResolveError) -> AppError {
    use prism_types::images::codes as img;
    let (status, code) = match e.kind {
        K::BadReference => (StatusCode::UNPROCESSABLE_ENTITY, codes::INVALID_REQUEST),
        K::NotFound => (StatusCode::NOT_FOUND, img::IMAGE_NOT_FOUND),
        K::Auth => (StatusCode::UNPROCESSABLE_ENTITY, img::REGISTRY_AUTH),
        K::Unreachable => (StatusCode::FAILED_DEPENDENCY, img::REGISTRY_UNREACHABLE),
        K::BadImage => (StatusCode::UNPROCESSABLE_ENTITY, img::BAD_IMAGE),
        K::TemplateNotFound => (StatusCode::NOT_FOUND, codes::TEMPLATE_NOT_FOUND),
        K::TemplateNotReady => (
            StatusCode::UNPROCESSABLE_ENTITY,
            prism_types::templates::codes::TEMPLATE_NOT_READY,
        ),
        K::Internal => (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL),
    };
    AppError::new(status, code, e.message.clone())
}

impl From<LifecycleError> for AppError {
    fn from(e: LifecycleError) -> Self {
        use LifecycleError as L;
        match &e {
            L::NotFound(_) => AppError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, e.to_string()),
            L::NameConflict(_) => {
                AppError::new(StatusCode::CONFLICT, codes::NAME_CONFLICT, e.to_string())
            }
            L::InvalidRequest(_) => AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::INVALID_REQUEST,
                e.to_string(),
            ),
            L::TemplateNotFound(_) => AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::TEMPLATE_NOT_FOUND,
                e.to_string(),
            ),
            L::Resolve(r) => resolve_error(r),
            L::NoImages => AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::INVALID_REQUEST,
                e.to_string(),
            ),
            L::InvalidState(_) => {
                AppError::new(StatusCode::CONFLICT, codes::INVALID_STATE, e.to_string())
            }
            L::Runtime { .. } if is_disk_full(&e) => AppError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                codes::STORAGE_FULL,
                format!("the host's disk is full: {}", chain(&e)),
            ),
            L::Runtime { .. } => {
                tracing::warn!(message = "runtime failure", error = %chain(&e));
                AppError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    codes::RUNTIME_ERROR,
                    chain(&e),
                )
            }
            L::Network(_) => {
                tracing::warn!(message = "network failure", error = %chain(&e));
                AppError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    codes::NETWORK_ERROR,
                    chain(&e),
                )
            }
            L::MainProcess(_) => AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::INVALID_REQUEST,
                chain(&e),
            ),
            L::Agent(a) => agent_error(a),
            L::Store(s) => store_error(s),
            L::Log { .. } | L::Template(_) | L::BadHandle(_) | L::TaskFailed(_) => {
                tracing::error!(message = "internal failure", error = %chain(&e));
                AppError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    codes::INTERNAL,
                    format!("{e} (see the daemon log)"),
                )
            }
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        match &r {
            JsonRejection::JsonDataError(_) => AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::INVALID_REQUEST,
                r.body_text(),
            ),
            JsonRejection::JsonSyntaxError(_) => {
                AppError::new(StatusCode::BAD_REQUEST, codes::INVALID_JSON, r.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => AppError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                codes::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with Content-Type: application/json",
            ),
            _ => AppError::new(r.status(), codes::INVALID_REQUEST, r.body_text()),
        }
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::bad_request(r.body_text())
    }
}
