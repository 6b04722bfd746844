//! Records of templates: named, versioned definitions built into a read-only layer.
//! [`crate::SqliteStore`] keeps them (tables of the third migration). Version numbers of a name
//! are never reused, even after the newest version is removed, so a sandbox pinned to
//! `name:3` can never silently get another tree.

use std::collections::BTreeMap;

use prism_types::templates::{TemplateSpec, TemplateStatus};
use serde::{Deserialize, Serialize};

/// What a finished build produced: everything a sandbox of the version needs, with no network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateBuild {
    /// The pinned source key: `base` or `image:<repo>@sha256:…`.
    pub source: String,
    /// Hex sha256 digests of the captured layers, one per mount of the source's root
    /// filesystem (in the same order).
    pub layers: Vec<String>,
    pub size_bytes: u64,
    /// Defaults of the version's sandboxes: the image's config under the spec's.
    pub env: BTreeMap<String, String>,
    pub cmd: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub user: Option<String>,
}

/// One version of a template as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub name: String,
    pub version: u32,
    /// Owner (`None`: an admin's).
    pub project: Option<String>,
    pub status: TemplateStatus,
    pub spec: TemplateSpec,
    /// Set when the build succeeded.
    pub build: Option<TemplateBuild>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl TemplateRecord {
    /// `name:version`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}
