//! Types of the access-control API: API keys (`/v1/api-keys`), project secrets
//! (`/v1/secrets`) and the audit trail (`/v1/audit`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Error codes of authentication, authorisation, limits and quotas.
pub mod codes {
    /// No key, an unknown key or a revoked key (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// A valid key that may not do this (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// Too many requests or creates for this key; see `Retry-After` (429).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The project's quota (sandboxes, CPU, memory) would be exceeded (429).
    pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
}

/// Header carrying an API key (the E2B SDKs' header); `Authorization: Bearer` works as well.
pub const API_KEY_HEADER: &str = "x-api-key";

/// `POST /v1/api-keys` body. Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// A label for humans.
    pub name: String,
    /// The project the key is limited to; absent: an admin key (every project, key management).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// An API key's public description (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// `None`: admin key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; set once revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// `POST /v1/api-keys` answer: the only time the key is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    /// The secret key: send it as `Authorization: Bearer <key>` or `X-API-KEY: <key>`.
    pub key: String,
    /// The same key as `e2b_<hex>`, the form some E2B SDK versions insist on (`E2B_API_KEY`);
    /// prismd accepts either.
    #[serde(default)]
    pub e2b_key: String,
    #[serde(flatten)]
    pub info: ApiKey,
}

/// `PUT /v1/secrets/{name}` body. Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecretRequest {
    /// The value; injected as the environment variable `name` of the project's new sandboxes.
    pub value: String,
    /// Project (admin keys only; a project key always writes its own project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// A secret's public description (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    pub project: String,
    pub name: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// One record of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    /// RFC 3339.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `METHOD /route/template`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}
