//! The `/v1/images` routes: pull from a registry, list, remove, prune. Thin handlers over
//! `prism_images`; the store lives under `<state>/images`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use prism_core::lifecycle::SandboxManager;
use prism_core::lifecycle::source::IMAGE_PREFIX;
use prism_images::registry::RegistryError;
use prism_images::store::StoreError;
use prism_images::{Credentials, Digest, ImageRecord, ImageStore, PullError, RegistryClient};
use prism_store::SqliteStore;
use prism_types::images::{
    Image, ImageList, PullEvent, PullImageRequest, PullImageResult, codes as img,
};
use prism_types::{ApiError, codes};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{AppError, chain};
use crate::extract::ApiJson;

type ApiResult<T> = Result<T, AppError>;

#[derive(Clone)]
pub struct ImagesState {
    state_dir: PathBuf,
    /// Sandboxes whose images prune must keep (none in unit tests of the routes alone).
    manager: Option<SandboxManager>,
    /// Template records whose layers and images prune must keep.
    templates: Option<Arc<SqliteStore>>,
}

/// The images routes, over the store in `state_dir`.
pub fn router(
    state_dir: &Path,
    manager: Option<SandboxManager>,
    templates: Option<Arc<SqliteStore>>,
) -> Router {
    Router::new()
        .route("/v1/images", get(list))
        .route("/v1/images/pull", post(pull))
        .route("/v1/images/prune", post(prune))
        .route(
            "/v1/images/import",
            post(crate::images_import::import).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/images/{*reference}", delete(remove))
        .with_state(ImagesState {
            state_dir: state_dir.to_path_buf(),
            manager,
            templates,
        })
}

impl ImagesState {
    pub(crate) fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

fn store(st: &ImagesState) -> ApiResult<ImageStore> {
    ImageStore::open(&st.state_dir).map_err(store_error)
}

pub(crate) fn store_error(e: StoreError) -> AppError {
    match &e {
        StoreError::Unpack { .. }
        | StoreError::DigestMismatch { .. }
        | StoreError::TooLarge { .. } => {
            AppError::new(StatusCode::UNPROCESSABLE_ENTITY, img::BAD_IMAGE, chain(&e))
        }
        _ => {
            tracing::error!(message = "image store failure", error = %chain(&e));
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                format!("{e} (see the daemon log)"),
            )
        }
    }
}

pub(crate) fn pull_error(e: PullError) -> AppError {
    let msg = chain(&e);
    let (status, code) = match e {
        PullError::Reference(_) => (StatusCode::UNPROCESSABLE_ENTITY, codes::INVALID_REQUEST),
        PullError::Store(s) | PullError::Registry(RegistryError::Store(s)) => {
            return store_error(s);
        }
        PullError::Registry(r) => match r {
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, img::IMAGE_NOT_FOUND),
            RegistryError::Auth(_) | RegistryError::InsecureRealm(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, img::REGISTRY_AUTH)
            }
            RegistryError::Unreachable { .. } | RegistryError::Body { .. } => {
                (StatusCode::BAD_GATEWAY, img::REGISTRY_UNREACHABLE)
            }
            RegistryError::TooLarge { .. } | RegistryError::ManifestDigest { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, img::BAD_IMAGE)
            }
            _ => (StatusCode::BAD_GATEWAY, img::REGISTRY_ERROR),
        },
        PullError::Manifest(_) | PullError::Config(..) | PullError::NestedIndex => {
            (StatusCode::UNPROCESSABLE_ENTITY, img::BAD_IMAGE)
        }
    };
    AppError::new(status, code, msg)
}

pub(crate) fn image(r: &ImageRecord) -> Image {
    let c = &r.config;
    Image {
        reference: r.reference.clone(),
        digest: r.manifest_digest.to_string(),
        layers: r.layers.len() as u64,
        size_bytes: r.size(),
        created: r.created,
        env: c.env.clone().unwrap_or_default(),
        entrypoint: c.entrypoint.clone().unwrap_or_default(),
        cmd: c.cmd.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        user: c.user.clone().filter(|u| !u.is_empty()),
    }
}

#[utoipa::path(post, path = "/v1/images/pull", tag = "images", request_body = PullImageRequest,
    responses((status = 200, description = "Pulled (or already here) and unpacked. With \
                `Accept: application/x-ndjson`: a stream of PullEvent lines (layer progress, \
                then `done` or `error`)", body = PullImageResult),
              (status = 404, description = "No such image in the registry", body = ApiError),
              (status = 422, description = "Bad reference, credentials refused, or a bad image", body = ApiError),
              (status = 502, description = "Registry unreachable or failing", body = ApiError)))]
pub async fn pull(
    State(st): State<ImagesState>,
    headers: axum::http::HeaderMap,
    ApiJson(req): ApiJson<PullImageRequest>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let creds = match (req.username, req.password) {
        (Some(username), password) => Credentials::Basic {
            username,
            password: password.unwrap_or_default(),
        },
        (None, _) => Credentials::Anonymous,
    };
    let client = RegistryClient::new(creds).map_err(|e| pull_error(e.into()))?;
    let store = store(&st)?;
    let ndjson = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(crate::templates::routes::NDJSON));
    if !ndjson {
        return Ok(Json(pull_now(&store, &client, &req.reference, None).await?).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reference = req.reference;
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let progress = move |p: &prism_images::BlobProgress| {
            let _ = progress_tx.send(PullEvent::Progress {
                layer: p.digest.to_string(),
                bytes: p.bytes,
                total: p.total,
            });
        };
        let last = match pull_now(&store, &client, &reference, Some(&progress)).await {
            Ok(result) => PullEvent::Done { result },
            Err(e) => PullEvent::Error {
                code: e.body.code,
                message: e.body.message,
            },
        };
        let _ = tx.send(last);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(line)), rx))
    });
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::templates::routes::NDJSON,
        )],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

async fn pull_now(
    store: &ImageStore,
    client: &RegistryClient,
    reference: &str,
    progress: prism_images::registry::Progress<'_>,
) -> ApiResult<PullImageResult> {
    let report = prism_images::pull_with(store, client, reference, progress)
        .await
        .map_err(pull_error)?;
    tracing::info!(message = "image pulled", reference = %report.record.reference,
        digest = %report.record.manifest_digest, blobs_downloaded = report.blobs_downloaded);
    Ok(PullImageResult {
        image: image(&report.record),
        blobs_downloaded: report.blobs_downloaded as u64,
    })
}

#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, description = "Images on this node", body = ImageList)))]
pub async fn list(State(st): State<ImagesState>) -> ApiResult<Json<ImageList>> {
    let records = store(&st)?.list().map_err(store_error)?;
    Ok(Json(ImageList {
        images: records.iter().map(image).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/images/{reference}", tag = "images",
    params(("reference" = String, Path, description = "Image reference (may contain '/')")),
    responses((status = 204, description = "Removed; its layers go with the next prune"),
              (status = 404, description = "No such image", body = ApiError)))]
pub async fn remove(
    State(st): State<ImagesState>,
    axum::extract::Path(reference): axum::extract::Path<String>,
) -> ApiResult<StatusCode> {
    let key = prism_images::normalize(&reference).map_err(|e| {
        AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::INVALID_REQUEST,
            e.to_string(),
        )
    })?;
    if store(&st)?.remove(&key).map_err(store_error)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::new(
            StatusCode::NOT_FOUND,
            img::IMAGE_NOT_FOUND,
            format!("no image {key}"),
        ))
    }
}

/// What `POST /v1/images/prune` removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct PruneResult {
    pub layers: u64,
    pub blobs: u64,
}

#[utoipa::path(post, path = "/v1/images/prune", tag = "images",
    responses((status = 200, description = "Unreferenced layers and blobs removed", body = PruneResult)))]
pub async fn prune(State(st): State<ImagesState>) -> ApiResult<Json<PruneResult>> {
    let store = store(&st)?;
    let mut in_use: BTreeSet<Digest> = match &st.manager {
        Some(m) => m
            .sources_in_use()
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(IMAGE_PREFIX))
            .filter_map(|r| prism_images::Reference::parse(r).ok()?.digest)
            .collect(),
        None => BTreeSet::new(),
    };
    let (keep_layers, template_images) = match st.templates.clone() {
        Some(db) => tokio::task::spawn_blocking(move || crate::templates::Templates::keep(&db))
            .await
            .map_err(|_| store_error(StoreError::Join))?
            .map_err(prism_core::lifecycle::LifecycleError::Store)?,
        None => Default::default(),
    };
    in_use.extend(template_images);
    let gc = tokio::task::spawn_blocking(move || {
        store.prune_pins(&in_use)?;
        store.gc_keeping(&keep_layers)
    })
    .await
    .map_err(|_| store_error(StoreError::Join))?
    .map_err(store_error)?;
    Ok(Json(PruneResult {
        layers: gc.layers as u64,
        blobs: gc.blobs as u64,
    }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn call(app: Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap_or_else(|e| panic!("{e}"));
        let resp = app.oneshot(req).await.unwrap_or_else(|e| panic!("{e}"));
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn empty_list_bad_reference_unknown_image_and_dead_registry() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let app = router(dir.path(), None, None);
        let (s, b) = call(app.clone(), "GET", "/v1/images", "").await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, r#"{"images":[]}"#));
        let (s, b) = call(
            app.clone(),
            "POST",
            "/v1/images/pull",
            r#"{"reference":"BAD REF"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let (s, b) = call(app.clone(), "DELETE", "/v1/images/127.0.0.1:1/x/y:1", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
        assert!(b.contains(img::IMAGE_NOT_FOUND), "{b}");
        // Import: an empty body and a body that is no image archive are 422s.
        let (s, b) = call(app.clone(), "POST", "/v1/images/import", "").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let (s, b) = call(
            app.clone(),
            "POST",
            "/v1/images/import?reference=x/y:1",
            "not a tar",
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(b.contains(img::BAD_IMAGE), "{b}");
        // Port 1 on loopback: nothing listens.
        let (s, b) = call(
            app,
            "POST",
            "/v1/images/pull",
            r#"{"reference":"127.0.0.1:1/x:1"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{b}");
        assert!(b.contains(img::REGISTRY_UNREACHABLE), "{b}");
    }
}
