//! `POST /v1/images/import`: an image from a `docker save` tarball or a tar of an OCI image
//! layout directory, for hosts without a registry. The body is streamed to a temporary file in
//! the image store, unpacked by prism-images' safe unpacker, and removed afterwards.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use prism_images::{ImageStore, ImportError};
use prism_types::images::{PullImageResult, codes as img};
use prism_types::{ApiError, codes};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use utoipa::IntoParams;

use crate::error::{AppError, chain};
use crate::images::{ImagesState, image, pull_error, store_error};

/// Largest archive `POST /v1/images/import` accepts.
pub const MAX_IMPORT_BYTES: u64 = 8 << 30;

#[derive(Debug, Deserialize, IntoParams)]
pub struct ImportQuery {
    /// Reference to store the image under (default: the archive's own tag).
    pub reference: Option<String>,
}

fn import_error(e: ImportError) -> AppError {
    match e {
        ImportError::Store(s) => store_error(s),
        ImportError::Finish(p) => pull_error(p),
        ImportError::Reference(_) | ImportError::NoReference => AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::INVALID_REQUEST,
            chain(&e),
        ),
        _ => AppError::new(StatusCode::UNPROCESSABLE_ENTITY, img::BAD_IMAGE, chain(&e)),
    }
}

fn io_failed(e: &std::io::Error) -> AppError {
    tracing::error!(message = "image import spool failed", error = %e);
    AppError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        codes::INTERNAL,
        format!("could not spool the archive: {e}"),
    )
}

#[utoipa::path(post, path = "/v1/images/import", tag = "images", params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar",
        description = "`docker save` tarball, or a tar of an OCI image layout directory"),
    responses((status = 200, description = "Imported and unpacked", body = PullImageResult),
              (status = 413, description = "Archive too large", body = ApiError),
              (status = 422, description = "Not an image archive, unsafe entries, or no reference", body = ApiError)))]
pub async fn import(
    State(st): State<ImagesState>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> Result<Json<PullImageResult>, AppError> {
    let store = ImageStore::open(st.state_dir()).map_err(store_error)?;
    let spool = store.tmp_path("upload");
    let result = spool_and_import(&store, &spool, q.reference.as_deref(), body).await;
    if let Err(e) = tokio::fs::remove_file(&spool).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(message = "could not remove an import spool file", error = %e);
    }
    let rec = result?;
    tracing::info!(message = "image imported", reference = %rec.reference, digest = %rec.manifest_digest);
    Ok(Json(PullImageResult {
        image: image(&rec),
        blobs_downloaded: 0,
    }))
}

async fn spool_and_import(
    store: &ImageStore,
    spool: &std::path::Path,
    reference: Option<&str>,
    body: Body,
) -> Result<prism_images::ImageRecord, AppError> {
    let mut f = tokio::fs::File::create(spool)
        .await
        .map_err(|e| io_failed(&e))?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AppError::bad_request(format!("upload failed: {e}")))?;
        total += chunk.len() as u64;
        if total > MAX_IMPORT_BYTES {
            return Err(AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                format!("image archives are limited to {MAX_IMPORT_BYTES} bytes"),
            ));
        }
        f.write_all(&chunk).await.map_err(|e| io_failed(&e))?;
    }
    f.flush().await.map_err(|e| io_failed(&e))?;
    drop(f);
    if total == 0 {
        return Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::INVALID_REQUEST,
            "send the image archive (docker save tarball or OCI layout tar) as the body",
        ));
    }
    prism_images::import_docker_archive(store, spool, reference)
        .await
        .map_err(import_error)
}
