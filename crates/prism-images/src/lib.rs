//! OCI images for Prism: pull from a registry, keep blobs and unpacked layers in a
//! content-addressed store, and turn an image into a sandbox root filesystem.
//!
//! ```no_run
//! # async fn demo(state: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! use prism_images::{Credentials, ImageStore, RegistryClient};
//! let store = ImageStore::open(state)?;
//! let client = RegistryClient::new(Credentials::Anonymous)?;
//! let report = prism_images::pull(&store, &client, "127.0.0.1:5000/app:1").await?;
//! let rootfs = prism_images::rootfs(&store, &report.record)?; // a prism_core::RootfsSpec
//! let defaults = prism_images::ProcessDefaults::from(&report.record.config);
//! # let _ = (rootfs, defaults); Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod capture;
pub mod digest;
pub mod import;
pub mod manifest;
pub mod pins;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use import::{ImportError, import_docker_archive, import_oci_layout};
pub use pull::{PullError, PullReport, pull, pull_with};
pub use reference::Reference;
pub use registry::{BlobProgress, Credentials, RegistryClient, RegistryError};
pub use rootfs::{ProcessDefaults, rootfs};
pub use store::{GcStats, ImageRecord, ImageStore, StoreError};

/// Normalise a user's reference (`busybox` → `registry-1.docker.io/library/busybox:latest`) to
/// the key records are stored under.
pub fn normalize(reference: &str) -> Result<String, reference::BadReference> {
    Reference::parse(reference).map(|r| r.to_string())
}
