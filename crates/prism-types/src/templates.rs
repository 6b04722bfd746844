//! Types of the `/v1/templates` API: named, versioned, immutable sandbox definitions whose
//! setup commands run once, at build time, and whose result is a read-only layer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Resources;

/// Error codes of the templates API (besides the general ones).
pub mod codes {
    /// A setup command failed (or the build sandbox did); the message carries its output.
    pub const TEMPLATE_BUILD_FAILED: &str = "template_build_failed";
    /// The named version exists but is not ready (still building, or failed).
    pub const TEMPLATE_NOT_READY: &str = "template_not_ready";
    /// The version is used by a sandbox that is not destroyed.
    pub const TEMPLATE_IN_USE: &str = "template_in_use";
}

/// `POST /v1/templates`: a template definition. Posting a name that exists makes a new version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// `[a-z0-9][a-z0-9_.-]{0,62}`; `base` is reserved.
    pub name: String,
    /// What the template starts from: `base` (default) or an OCI image reference (pulled
    /// anonymously if this node lacks it; the template keeps its digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Setup commands (`/bin/sh -c` lines), run once, in order, at build time, as the image's
    /// user (root for `base`). The files they leave become the template's layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run: Vec<String>,
    /// Environment of the setup commands and default environment of the template's sandboxes
    /// (over the image's, under the create request's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Default resources of the template's sandboxes (each field: the create request wins).
    #[serde(default)]
    pub resources: Resources,
    /// Default exposed ports (used when the create request lists none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Default main process (argv) of the template's sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Vec<String>>,
    /// Default working directory of the template's sandboxes (setup commands run in the
    /// image's WorkingDir, else `/`; they may `cd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Default user of the template's sandboxes (setup commands run as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Network of the build sandbox (default `none`; e.g. `open` for `pip install`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_network: Option<String>,
    /// Limit of each setup command in seconds (default 600, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_timeout_s: Option<u64>,
}

/// Where a template version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TemplateStatus {
    Building,
    Ready,
    Failed,
}

impl TemplateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateStatus::Building => "building",
            TemplateStatus::Ready => "ready",
            TemplateStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "building" => Some(TemplateStatus::Building),
            "ready" => Some(TemplateStatus::Ready),
            "failed" => Some(TemplateStatus::Failed),
            _ => None,
        }
    }
}

/// One version of a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub name: String,
    /// 1, 2, 3… in creation order; never reused.
    pub version: u32,
    /// `name:version`: what sandboxes of this version show as their `template`.
    pub reference: String,
    pub status: TemplateStatus,
    /// Why the build failed (with the failing command's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The pinned source: `base` or `registry/repo@sha256:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Digests of the captured layers (one per mount of the source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// Bytes of the captured layers (uncompressed tar).
    #[serde(default)]
    pub size_bytes: u64,
    /// The project that owns it (`None`: made by an admin, visible to admin keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub spec: TemplateSpec,
    pub created_at: String,
    /// When the build ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_at: Option<String>,
}

/// `GET /v1/templates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

/// One line of the NDJSON progress stream of `POST /v1/templates` (with
/// `Accept: application/x-ndjson`); the last line is `done` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BuildEvent {
    /// The build of `reference` began.
    Started {
        reference: String,
    },
    /// Setup command `index` (0-based) of `total` starts.
    Step {
        index: usize,
        total: usize,
        command: String,
    },
    /// Output of the running setup command (stdout and stderr).
    Output {
        data: String,
    },
    /// The writable layer is being captured.
    Capturing,
    Done {
        template: Box<Template>,
    },
    Error {
        code: String,
        message: String,
    },
}

/// A `name[:version]` reference: `version` is `N` or `vN`; none = the latest ready version.
pub fn parse_reference(r: &str) -> Option<(&str, Option<u32>)> {
    match r.split_once(':') {
        None => Some((r, None)),
        Some((name, v)) => {
            let v = v.strip_prefix('v').unwrap_or(v);
            v.parse().ok().filter(|n| *n > 0).map(|n| (name, Some(n)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_events() {
        assert_eq!(parse_reference("py"), Some(("py", None)));
        assert_eq!(parse_reference("py:3"), Some(("py", Some(3))));
        assert_eq!(parse_reference("py:v2"), Some(("py", Some(2))));
        assert_eq!(parse_reference("py:x"), None);
        assert_eq!(parse_reference("py:0"), None);
        let ev = BuildEvent::Step {
            index: 0,
            total: 2,
            command: "true".into(),
        };
        let j = serde_json::to_string(&ev).unwrap_or_default();
        assert_eq!(
            j,
            r#"{"event":"step","index":0,"total":2,"command":"true"}"#
        );
        assert!(serde_json::from_str::<TemplateSpec>(r#"{"name":"a","frm":"x"}"#).is_err());
    }
}
