//! prismd: the Prism daemon. An axum router over the sandbox manager of prism-core: thin
//! handlers ([`api`], [`ws`]), `{code, message}` errors ([`error`]), layered configuration
//! ([`config`]), and the process around them ([`daemon`]: state-dir lock, recovery, janitor,
//! graceful shutdown). [`runtime::build`] is the one place that picks the isolation backend.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use prism_core::lifecycle::SandboxManager;
use prism_types::codes;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub mod api;
pub mod auth;
pub mod code;
pub mod config;
pub mod daemon;
pub mod e2b;
pub mod error;
pub mod extract;
pub mod images;
pub mod images_import;
pub mod metrics;
pub mod network;
pub mod ports;
pub mod publish;
pub mod resolver;
pub mod runtime;
pub mod templates;
pub mod ws;

use error::AppError;

/// Largest upload accepted by `PUT .../files` (bytes).
pub const MAX_UPLOAD_BYTES: usize = 512 << 20;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub manager: SandboxManager,
    /// Set once recovery after start-up is done (`/readyz`).
    pub ready: Arc<AtomicBool>,
    pub listen: SocketAddr,
    /// API keys, limits, audit; off (everyone is admin) unless configured or listening publicly.
    pub auth: Arc<auth::Auth>,
    /// Published host ports.
    pub publish: Arc<publish::Publisher>,
}

/// The OpenAPI document, generated from the handlers and the prism-types schemas.
#[derive(OpenApi)]
#[openapi(
    info(title = "Prism API", description = "Sandboxes for untrusted code: lifecycle, exec, files, logs."),
    paths(
        api::healthz, api::readyz, api::info,
        api::create, api::list, api::inspect, api::destroy,
        api::stop, api::start, api::restart, api::set_timeout, api::events,
        network::set_network,
        api::exec, ws::exec_ws,
        api::files_get, api::files_put, api::files_delete,
        api::logs, api::metrics,
        images::pull, images::list, images::remove, images::prune, images_import::import,
        code::run_code, code::create_context, code::list_contexts, code::delete_context,
        code::restart_context, code::interrupt_context, code::invoke,
        ports::port_proxy,
        auth::routes::create_key, auth::routes::list_keys, auth::routes::revoke_key,
        auth::routes::audit, metrics::scrape,
        auth::secret_routes::set, auth::secret_routes::list, auth::secret_routes::remove,
        templates::routes::create, templates::routes::list, templates::routes::inspect,
        templates::routes::remove,
    ),
    components(schemas(
        prism_types::ws::ExecStart, prism_types::ws::ClientMessage, prism_types::ws::ServerEvent,
        prism_types::ws::SignalSpec, prism_types::PoolInfo, prism_types::templates::BuildEvent,
    )),
    tags(
        (name = "sandboxes", description = "Lifecycle"),
        (name = "processes", description = "Buffered and streamed exec"),
        (name = "code", description = "Stateful code contexts and handler invocation"),
        (name = "files", description = "Files and directories (tar)"),
        (name = "logs", description = "Output log and metrics"),
        (name = "daemon", description = "Health and information"),
        (name = "images", description = "OCI images: pull, list, remove, prune"),
        (name = "templates", description = "Versioned templates: build, list, inspect, remove"),
        (name = "ports", description = "HTTP and WebSocket proxy to servers inside a sandbox"),
        (name = "auth", description = "API keys, project secrets and the audit trail"),
    )
)]
pub struct ApiDoc;

async fn route_not_found(uri: axum::http::Uri) -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        codes::ROUTE_NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let sandbox = "/v1/sandboxes/{id}";
    let images = images::router(
        &state.manager.config().state_dir,
        Some(state.manager.clone()),
        Some(state.auth.store().clone()),
    );
    let templates = templates::routes::router(templates::Templates::new(
        state.manager.config().state_dir.clone(),
        state.auth.store().clone(),
        state.manager.clone(),
    ));
    let open = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .with_state(state.clone());
    let guard = axum::middleware::from_fn_with_state(state.clone(), auth::guard::guard);
    let api = Router::new()
        .route("/v1/info", get(api::info))
        .route(
            "/v1/api-keys",
            post(auth::routes::create_key).get(auth::routes::list_keys),
        )
        .route(
            "/v1/api-keys/{key_id}",
            axum::routing::delete(auth::routes::revoke_key),
        )
        .route("/v1/audit", get(auth::routes::audit))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/secrets", get(auth::secret_routes::list))
        .route(
            "/v1/secrets/{name}",
            axum::routing::put(auth::secret_routes::set).delete(auth::secret_routes::remove),
        )
        .route("/v1/sandboxes", post(api::create).get(api::list))
        .route(sandbox, get(api::inspect).delete(api::destroy))
        .route(&format!("{sandbox}/stop"), post(api::stop))
        .route(&format!("{sandbox}/start"), post(api::start))
        .route(&format!("{sandbox}/restart"), post(api::restart))
        .route(&format!("{sandbox}/timeout"), post(api::set_timeout))
        .route(
            &format!("{sandbox}/network"),
            axum::routing::patch(network::set_network),
        )
        .route(&format!("{sandbox}/events"), get(api::events))
        .route(&format!("{sandbox}/exec"), post(api::exec))
        .route(&format!("{sandbox}/exec/ws"), get(ws::exec_ws))
        .route(
            &format!("{sandbox}/files"),
            get(api::files_get)
                .put(api::files_put)
                .delete(api::files_delete)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route(&format!("{sandbox}/code"), post(code::run_code))
        .route(
            &format!("{sandbox}/contexts"),
            post(code::create_context).get(code::list_contexts),
        )
        .route(
            &format!("{sandbox}/contexts/{{ctx}}"),
            axum::routing::delete(code::delete_context),
        )
        .route(
            &format!("{sandbox}/contexts/{{ctx}}/restart"),
            post(code::restart_context),
        )
        .route(
            &format!("{sandbox}/contexts/{{ctx}}/interrupt"),
            post(code::interrupt_context),
        )
        .route(&format!("{sandbox}/invoke"), post(code::invoke))
        .route(&format!("{sandbox}/logs"), get(api::logs))
        .route(&format!("{sandbox}/metrics"), get(api::metrics))
        .route(
            &format!("{sandbox}/ports/{{port}}"),
            axum::routing::any(ports::port_proxy),
        )
        .route(
            &format!("{sandbox}/ports/{{port}}/"),
            axum::routing::any(ports::port_proxy),
        )
        .route(
            &format!("{sandbox}/ports/{{port}}/{{*path}}"),
            axum::routing::any(ports::port_proxy),
        )
        .with_state(state.clone());
    // Every route merged above `route_layer` is behind the auth guard (new routes included).
    metrics::init();
    let guarded = Router::new()
        .merge(api)
        .merge(images)
        .merge(templates)
        .merge(e2b::router(state.clone()))
        .route_layer(guard)
        .route_layer(axum::middleware::from_fn(metrics::track));
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .merge(open)
        .merge(guarded)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state, e2b::data_plane))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

#[cfg(test)]
mod tests;
