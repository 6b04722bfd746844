//! Types of the `/v1/images` API: pull, list and remove OCI images.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Error codes of the images API (besides the general ones).
pub mod codes {
    pub const IMAGE_NOT_FOUND: &str = "image_not_found";
    pub const REGISTRY_UNREACHABLE: &str = "registry_unreachable";
    pub const REGISTRY_AUTH: &str = "registry_auth";
    pub const REGISTRY_ERROR: &str = "registry_error";
    pub const BAD_IMAGE: &str = "bad_image";
}

/// `POST /v1/images/pull` body. Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImageRequest {
    /// `[registry[:port]/]repository[:tag][@sha256:…]`; registries on 127.0.0.0/8 or ::1 are
    /// reached over plain HTTP, all others over HTTPS.
    pub reference: String,
    /// Registry user (basic auth, or to obtain a bearer token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A pulled image, ready to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// Normalised reference, e.g. `registry-1.docker.io/library/busybox:latest`.
    pub reference: String,
    /// Digest of the image manifest.
    pub digest: String,
    pub layers: u64,
    /// Compressed size of the layers.
    pub size_bytes: u64,
    /// Seconds since the epoch when it was pulled.
    pub created: u64,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The answer to `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullImageResult {
    pub image: Image,
    /// Blobs fetched from the registry (0 when everything was cached).
    pub blobs_downloaded: u64,
}

/// `GET /v1/images`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// The answer to `POST /v1/images/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PruneImagesResult {
    /// Unpacked layers removed.
    pub layers: u64,
    /// Blobs (compressed layers, manifests, configs) removed.
    pub blobs: u64,
}

/// One line of the NDJSON stream of `POST /v1/images/pull` with
/// `Accept: application/x-ndjson`; the last line is `done` or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// Download progress of one layer blob (`bytes` of `total`).
    Progress {
        layer: String,
        bytes: u64,
        total: u64,
    },
    Done {
        result: PullImageResult,
    },
    Error {
        code: String,
        message: String,
    },
}
