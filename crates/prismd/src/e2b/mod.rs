//! E2B compatibility: the surface the unmodified `e2b` and `e2b-code-interpreter` SDKs use,
//! on prismd's own port (see docs/e2b.md).
//!
//! - control plane ([`sandboxes`]): `/sandboxes`, `/v2/sandboxes`, … in E2B's JSON shapes,
//!   mapped onto the [`SandboxManager`](prism_core::lifecycle::SandboxManager);
//! - data plane ([`data_plane`]): a request carrying `E2b-Sandbox-Id` is routed by its
//!   `E2b-Sandbox-Port` header: 49983 (envd) is passed through unchanged to the sandbox's agent,
//!   which speaks envd's Connect-RPC services ([`envd`]); 49999 (the code interpreter) maps
//!   `/execute` and `/contexts` onto Prism's code contexts ([`code`]); any other port goes to
//!   [`sandbox_port`] (Prism's port proxy).

pub mod code;
pub mod envd;
pub mod network;
pub mod sandboxes;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::AppState;
use crate::auth::secrets::TokenKind;
use crate::error::AppError;

/// The port of envd (E2B's in-sandbox daemon) in `E2b-Sandbox-Port`.
pub const ENVD_PORT: u16 = 49983;
/// The port of E2B's code interpreter in `E2b-Sandbox-Port`.
pub const CODE_INTERPRETER_PORT: u16 = 49999;
/// The envd version we announce: the features the SDK gates on up to here are served by
/// prism-agent (default user, stdin close, octet-stream upload).
pub const ENVD_VERSION: &str = "0.5.7";

/// E2B's error body: `{"code": <HTTP status>, "message": "..."}`.
#[derive(Debug, Serialize)]
pub struct E2bError {
    #[serde(skip)]
    status: StatusCode,
    code: u16,
    pub(crate) message: String,
}

impl E2bError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        E2bError {
            status,
            code: status.as_u16(),
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<AppError> for E2bError {
    fn from(e: AppError) -> Self {
        E2bError::new(e.status, e.body.message)
    }
}

impl From<prism_core::lifecycle::LifecycleError> for E2bError {
    fn from(e: prism_core::lifecycle::LifecycleError) -> Self {
        AppError::from(e).into()
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(&self)).into_response()
    }
}

/// The control-plane routes.
pub fn router(state: AppState) -> Router {
    let sb = "/sandboxes/{id}";
    Router::new()
        .route(
            "/sandboxes",
            post(sandboxes::create).get(sandboxes::list_running),
        )
        .route(
            "/v2/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route(sb, get(sandboxes::info).delete(sandboxes::kill))
        .route(&format!("{sb}/connect"), post(sandboxes::connect))
        .route(&format!("/v2{sb}/connect"), post(sandboxes::connect))
        .route(&format!("{sb}/resume"), post(sandboxes::resume))
        .route(&format!("{sb}/pause"), post(sandboxes::pause))
        .route(&format!("{sb}/timeout"), post(sandboxes::set_timeout))
        .route(&format!("{sb}/refreshes"), post(sandboxes::refresh))
        .route(&format!("{sb}/metrics"), get(sandboxes::metrics))
        .route(&format!("{sb}/network"), axum::routing::put(network::set))
        .with_state(state)
}

/// Middleware in front of every route: requests carrying `E2b-Sandbox-Id` belong to a sandbox's
/// data plane and never reach the REST routes.
pub async fn data_plane(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(id) = header_str(req.headers(), "e2b-sandbox-id") else {
        return next.run(req).await;
    };
    let id = id.to_string();
    let port = match header_str(req.headers(), "e2b-sandbox-port").map(str::parse::<u16>) {
        None => ENVD_PORT,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            return E2bError::bad_request("E2b-Sandbox-Port must be a port number (1-65535)")
                .into_response();
        }
    };
    // Some SDK versions (e2b 2.26's connect) send control-plane calls with the data-plane
    // headers; envd has no such paths, so they go to the control plane as E2B's API serves them.
    let path = req.uri().path();
    if port == ENVD_PORT && (path.starts_with("/sandboxes/") || path.starts_with("/v2/sandboxes/"))
    {
        return next.run(req).await;
    }
    if let Err(e) = data_plane_allowed(&st, &id, port, req.headers()) {
        return e.into_response();
    }
    match port {
        ENVD_PORT => envd::proxy(&st, &id, req).await,
        CODE_INTERPRETER_PORT => code::route(&st, &id, req).await,
        port => sandbox_port(&st, &id, port, req).await,
    }
}

/// A data-plane token of sandbox `id` when auth is on (`envdAccessToken`,
/// `trafficAccessToken`).
pub fn access_token(st: &AppState, kind: TokenKind, id: &str) -> Option<String> {
    if !st.auth.enabled() {
        return None;
    }
    st.auth.secrets().map(|s| s.access_token(kind, id))
}

/// With auth on, data-plane requests carry one of the sandbox's tokens, as the SDKs send them
/// after create/connect: the envd token (`X-Access-Token`) opens every port; the traffic token
/// (`E2B-Traffic-Access-Token`, what the code interpreter SDK sends for its contexts) opens
/// every port but envd's. An admin API key opens everything.
fn data_plane_allowed(
    st: &AppState,
    id: &str,
    port: u16,
    headers: &HeaderMap,
) -> Result<(), E2bError> {
    if !st.auth.enabled() {
        return Ok(());
    }
    let presented = |header: &str, kind: TokenKind| {
        header_str(headers, header)
            .zip(st.auth.secrets())
            .is_some_and(|(token, s)| s.check_access_token(kind, id, token))
    };
    if presented("x-access-token", TokenKind::Envd)
        || (port != ENVD_PORT && presented("e2b-traffic-access-token", TokenKind::Traffic))
    {
        return Ok(());
    }
    match st.auth.authenticate(headers) {
        Ok(caller) if caller.project.is_none() => Ok(()),
        _ => Err(E2bError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "sandbox {id}: send its envdAccessToken (from create or connect) as \
                 X-Access-Token, its trafficAccessToken as E2B-Traffic-Access-Token (ports \
                 other than {ENVD_PORT}), or an admin API key"
            ),
        )),
    }
}

/// Traffic for any other port of a sandbox: Prism's port proxy (through the agent's tunnel, so
/// it works whatever the sandbox's network mode).
pub async fn sandbox_port(st: &AppState, id: &str, port: u16, req: Request) -> Response {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
    match crate::ports::proxy(&st.manager, id, port, &target, req).await {
        Ok(resp) => resp,
        Err(e) => E2bError::new(
            e.status,
            format!("port {port} of sandbox {id}: {}", e.body.message),
        )
        .into_response(),
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The data plane's answer when the sandbox cannot take traffic: like E2B's edge proxy, a 502
/// (the SDKs read it as "the sandbox timed out or was killed").
pub fn unreachable_sandbox(id: &str, e: prism_core::lifecycle::LifecycleError) -> E2bError {
    let e = E2bError::from(e);
    if matches!(e.status, StatusCode::NOT_FOUND | StatusCode::CONFLICT) {
        E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!("sandbox {id} is not running: {}", e.message),
        )
    } else {
        e
    }
}

#[cfg(test)]
mod tests;
