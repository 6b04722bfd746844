//! API keys and the audit trail.

use prism_types::auth::{ApiKey, AuditEntry, CreateApiKeyRequest, CreatedApiKey};
use reqwest::Method;

use crate::{Client, Result};

impl Client {
    /// Make a key (admin keys only); the answer holds the secret, shown this once.
    pub async fn create_api_key(&self, req: &CreateApiKeyRequest) -> Result<CreatedApiKey> {
        let url = self.url(&["v1", "api-keys"]);
        self.json(self.req(Method::POST, url).json(req)).await
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        self.json(self.req(Method::GET, self.url(&["v1", "api-keys"])))
            .await
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<()> {
        let url = self.url(&["v1", "api-keys", id]);
        self.send(self.req(Method::DELETE, url)).await.map(|_| ())
    }

    /// Audit records after `after` (oldest first), optionally of one sandbox.
    pub async fn audit(
        &self,
        sandbox: Option<&str>,
        after: Option<i64>,
        limit: Option<usize>,
    ) -> Result<Vec<AuditEntry>> {
        let mut url = self.url(&["v1", "audit"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = sandbox {
                q.append_pair("sandbox", s);
            }
            if let Some(a) = after {
                q.append_pair("after", &a.to_string());
            }
            if let Some(l) = limit {
                q.append_pair("limit", &l.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.json(self.req(Method::GET, url)).await
    }
}

impl Client {
    /// Set a project secret (`project`: admin keys only).
    pub async fn set_secret(&self, name: &str, value: &str, project: Option<&str>) -> Result<()> {
        let url = self.url(&["v1", "secrets", name]);
        let body = prism_types::auth::SetSecretRequest {
            value: value.to_string(),
            project: project.map(str::to_string),
        };
        self.send(self.req(Method::PUT, url).json(&body))
            .await
            .map(|_| ())
    }

    /// Names of a project's secrets.
    pub async fn list_secrets(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<prism_types::auth::SecretInfo>> {
        let mut url = self.url(&["v1", "secrets"]);
        if let Some(p) = project {
            url.query_pairs_mut().append_pair("project", p);
        }
        self.json(self.req(Method::GET, url)).await
    }

    pub async fn remove_secret(&self, name: &str, project: Option<&str>) -> Result<()> {
        let mut url = self.url(&["v1", "secrets", name]);
        if let Some(p) = project {
            url.query_pairs_mut().append_pair("project", p);
        }
        self.send(self.req(Method::DELETE, url)).await.map(|_| ())
    }
}
