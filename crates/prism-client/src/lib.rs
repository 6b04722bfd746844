//! prism-client: a typed async client of `prismd`'s v1 API, used by `prismctl` and the tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), prism_client::ClientError> {
//! let client = prism_client::Client::from_env()?;
//! let sb = client.create(&Default::default()).await?;
//! let out = client.exec(&sb.id, &prism_types::ExecRequest {
//!     command: Some("echo hi".into()),
//!     ..Default::default()
//! }).await?;
//! assert_eq!(out.stdout, "hi\n");
//! client.destroy(&sb.id).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use prism_types::{
    ApiError, CreateSandboxRequest, DaemonInfo, ExecRequest, ExecResult, FileEntry, Health,
    Sandbox, SandboxList, SandboxMetrics, SetTimeoutRequest,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

mod auth;
mod code;
mod ndjson;
mod templates;
mod ws;

pub use templates::BuildEvents;
pub use ws::{ExecWs, ExecWsReceiver, ExecWsSender, WsEvent};

/// Environment variable naming the daemon's base URL.
pub const API_ENV: &str = "PRISM_API";
/// Base URL when `PRISM_API` is unset.
pub const DEFAULT_API: &str = "http://127.0.0.1:8008";
/// The environment variable holding the API key.
pub const API_KEY_ENV: &str = "PRISM_API_KEY";

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid API URL {0:?}")]
    InvalidUrl(String),
    #[error("cannot reach prismd at {url}: is it running? start it with `prismd` (see README)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{} (HTTP {status})", error.message)]
    Api { status: u16, error: ApiError },
    #[error("HTTP request failed")]
    Http(#[from] reqwest::Error),
    #[error("WebSocket failed")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("unexpected answer from prismd: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API error code, when prismd answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    /// The HTTP status, when prismd answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What `read_path` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathContent {
    File(Bytes),
    Tar(Bytes),
    Dir(Vec<FileEntry>),
}

/// A client of one prismd.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
    api_key: Option<String>,
}

impl Client {
    /// A client of the daemon at `base` (`http://127.0.0.1:8008`).
    pub fn new(base: &str) -> Result<Self> {
        let base = Url::parse(base).map_err(|_| ClientError::InvalidUrl(base.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::InvalidUrl(base.to_string()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()?;
        Ok(Client {
            base,
            http,
            api_key: None,
        })
    }

    /// Send `key` with every request (`Authorization: Bearer`).
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// A client of `$PRISM_API`, else of `http://127.0.0.1:8008`.
    pub fn from_env() -> Result<Self> {
        let url = std::env::var(API_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_API.to_string());
        Ok(Self::new(&url)?.with_api_key(std::env::var(API_KEY_ENV).ok()))
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `base` + path segments (each percent-encoded).
    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty();
            p.extend(segments);
        }
        u
    }

    fn sandbox_url(&self, id: &str, rest: &[&str]) -> Url {
        let mut segs = vec!["v1", "sandboxes", id];
        segs.extend_from_slice(rest);
        self.url(&segs)
    }

    async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() && !e.is_body() {
                ClientError::Unreachable {
                    url: self.base.to_string(),
                    source: e,
                }
            } else {
                ClientError::Http(e)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let error = serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|_| {
            ApiError::new("http_error", String::from_utf8_lossy(&body).into_owned())
        });
        Err(ClientError::Api {
            status: status.as_u16(),
            error,
        })
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        Ok(self.send(req).await?.json().await?)
    }

    fn req(&self, method: Method, url: Url) -> RequestBuilder {
        let req = self.http.request(method, url);
        match &self.api_key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    // ---- daemon ----

    pub async fn health(&self) -> Result<Health> {
        self.json(self.req(Method::GET, self.url(&["healthz"])))
            .await
    }

    pub async fn ready(&self) -> Result<Health> {
        self.json(self.req(Method::GET, self.url(&["readyz"])))
            .await
    }

    pub async fn info(&self) -> Result<DaemonInfo> {
        self.json(self.req(Method::GET, self.url(&["v1", "info"])))
            .await
    }

    // ---- lifecycle ----

    pub async fn create(&self, req: &CreateSandboxRequest) -> Result<Sandbox> {
        self.json(
            self.req(Method::POST, self.url(&["v1", "sandboxes"]))
                .json(req),
        )
        .await
    }

    /// One page of sandboxes (`state`, `label` = `k=v`, `limit`, `cursor` as in the API).
    pub async fn list(
        &self,
        state: Option<&str>,
        label: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<SandboxList> {
        let mut url = self.url(&["v1", "sandboxes"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = state {
                q.append_pair("state", s);
            }
            if let Some(l) = label {
                q.append_pair("label", l);
            }
            if let Some(l) = limit {
                q.append_pair("limit", &l.to_string());
            }
            if let Some(c) = cursor {
                q.append_pair("cursor", c);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.json(self.req(Method::GET, url)).await
    }

    /// Every sandbox matching the filters, following the cursors.
    pub async fn list_all(&self, state: Option<&str>, label: Option<&str>) -> Result<Vec<Sandbox>> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .list(state, label, Some(1000), cursor.as_deref())
                .await?;
            all.extend(page.sandboxes);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(all),
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Sandbox> {
        self.json(self.req(Method::GET, self.sandbox_url(id, &[])))
            .await
    }

    pub async fn destroy(&self, id: &str) -> Result<Sandbox> {
        self.json(self.req(Method::DELETE, self.sandbox_url(id, &[])))
            .await
    }

    async fn action(&self, id: &str, action: &str) -> Result<Sandbox> {
        self.json(self.req(Method::POST, self.sandbox_url(id, &[action])))
            .await
    }

    pub async fn stop(&self, id: &str) -> Result<Sandbox> {
        self.action(id, "stop").await
    }

    pub async fn start(&self, id: &str) -> Result<Sandbox> {
        self.action(id, "start").await
    }

    pub async fn restart(&self, id: &str) -> Result<Sandbox> {
        self.action(id, "restart").await
    }

    pub async fn set_timeout(&self, id: &str, timeout_s: u64) -> Result<Sandbox> {
        let body = SetTimeoutRequest { timeout_s };
        self.json(
            self.req(Method::POST, self.sandbox_url(id, &["timeout"]))
                .json(&body),
        )
        .await
    }

    /// Change the network mode (`none`, `open`, `allow=…`) of a sandbox.
    pub async fn set_network(&self, id: &str, network: &str) -> Result<Sandbox> {
        let body = prism_types::SetNetworkRequest {
            network: network.to_string(),
        };
        self.json(
            self.req(Method::PATCH, self.sandbox_url(id, &["network"]))
                .json(&body),
        )
        .await
    }

    // ---- processes ----

    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult> {
        self.json(
            self.req(Method::POST, self.sandbox_url(id, &["exec"]))
                .json(req),
        )
        .await
    }

    /// Open a streamed exec; see [`prism_types::ws`] for the protocol.
    pub async fn exec_ws(&self, id: &str, start: &prism_types::ws::ExecStart) -> Result<ExecWs> {
        let mut url = self.sandbox_url(id, &["exec", "ws"]);
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|()| ClientError::InvalidUrl(url.to_string()))?;
        ExecWs::connect(self, url, start).await
    }

    // ---- files ----

    fn files_url(&self, id: &str, path: &str, format: Option<&str>) -> Url {
        let mut url = self.sandbox_url(id, &["files"]);
        url.query_pairs_mut().append_pair("path", path);
        if let Some(f) = format {
            url.query_pairs_mut().append_pair("format", f);
        }
        url
    }

    /// A file's bytes, a directory's listing, or (with `tar`) a directory as a tar archive.
    pub async fn read_path(&self, id: &str, path: &str, tar: bool) -> Result<PathContent> {
        let url = self.files_url(id, path, tar.then_some("tar"));
        let resp = self.send(self.req(Method::GET, url)).await?;
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if ctype.starts_with("application/json") {
            return Ok(PathContent::Dir(resp.json().await?));
        }
        let bytes = resp.bytes().await?;
        Ok(if ctype.starts_with("application/x-tar") {
            PathContent::Tar(bytes)
        } else {
            PathContent::File(bytes)
        })
    }

    /// Write a file (parent directories are created).
    pub async fn write_file(&self, id: &str, path: &str, data: impl Into<Bytes>) -> Result<()> {
        let req = self
            .req(Method::PUT, self.files_url(id, path, None))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data.into());
        self.send(req).await.map(drop)
    }

    /// Unpack a tar archive into the directory `dir`.
    pub async fn write_tar(&self, id: &str, dir: &str, tar: impl Into<Bytes>) -> Result<()> {
        let req = self
            .req(Method::PUT, self.files_url(id, dir, None))
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(tar.into());
        self.send(req).await.map(drop)
    }

    pub async fn remove(&self, id: &str, path: &str) -> Result<()> {
        self.send(self.req(Method::DELETE, self.files_url(id, path, None)))
            .await
            .map(drop)
    }

    // ---- logs and metrics ----

    /// The sandbox's output log as a byte stream (`follow` keeps it open).
    pub async fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let mut url = self.sandbox_url(id, &["logs"]);
        if follow {
            url.query_pairs_mut().append_pair("follow", "true");
        }
        if let Some(n) = tail {
            url.query_pairs_mut().append_pair("tail", &n.to_string());
        }
        let resp = self.send(self.req(Method::GET, url)).await?;
        Ok(resp.bytes_stream().map_err(ClientError::Http).boxed())
    }

    pub async fn metrics(&self, id: &str) -> Result<SandboxMetrics> {
        self.json(self.req(Method::GET, self.sandbox_url(id, &["metrics"])))
            .await
    }

    // ---- images ----

    /// Pull an image into the daemon's store (returns when it is unpacked).
    pub async fn pull_image(
        &self,
        req: &prism_types::images::PullImageRequest,
    ) -> Result<prism_types::images::PullImageResult> {
        self.json(
            self.req(Method::POST, self.url(&["v1", "images", "pull"]))
                .json(req),
        )
        .await
    }

    /// [`Self::pull_image`] with per-layer download progress; the last event is `done` or
    /// `error`.
    pub async fn pull_image_stream(
        &self,
        req: &prism_types::images::PullImageRequest,
    ) -> Result<BoxStream<'static, Result<prism_types::images::PullEvent>>> {
        let req = self
            .req(Method::POST, self.url(&["v1", "images", "pull"]))
            .header("accept", "application/x-ndjson")
            .json(req);
        Ok(ndjson::events(self.send(req).await?))
    }

    pub async fn list_images(&self) -> Result<prism_types::images::ImageList> {
        self.json(self.req(Method::GET, self.url(&["v1", "images"])))
            .await
    }

    /// Forget an image (its layers go with the next prune, unless a sandbox uses them).
    pub async fn remove_image(&self, reference: &str) -> Result<()> {
        let mut u = self.url(&["v1", "images"]);
        u.set_path(&format!("{}/{}", u.path().trim_end_matches('/'), reference));
        self.send(self.req(Method::DELETE, u)).await?;
        Ok(())
    }

    /// Remove layers and blobs no image, template or live sandbox uses.
    pub async fn prune_images(&self) -> Result<prism_types::images::PruneImagesResult> {
        self.json(self.req(Method::POST, self.url(&["v1", "images", "prune"])))
            .await
    }

    /// Import a `docker save` tarball or a tar of an OCI layout (as `reference`, or the
    /// archive's own tag).
    pub async fn import_image(
        &self,
        archive: impl Into<Bytes>,
        reference: Option<&str>,
    ) -> Result<prism_types::images::PullImageResult> {
        let mut u = self.url(&["v1", "images", "import"]);
        if let Some(r) = reference {
            u.query_pairs_mut().append_pair("reference", r);
        }
        self.json(
            self.req(Method::POST, u)
                .header("content-type", "application/x-tar")
                .body(archive.into()),
        )
        .await
    }

    /// `true` when the error is an HTTP 404 from the API.
    pub fn is_not_found(e: &ClientError) -> bool {
        e.status() == Some(StatusCode::NOT_FOUND.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_and_encoded() {
        let c = Client::new("http://127.0.0.1:8008/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.sandbox_url("a b/c", &["exec"]).as_str(),
            "http://127.0.0.1:8008/v1/sandboxes/a%20b%2Fc/exec"
        );
        assert_eq!(
            c.files_url("x", "/a b&c", Some("tar")).as_str(),
            "http://127.0.0.1:8008/v1/sandboxes/x/files?path=%2Fa+b%26c&format=tar"
        );
        assert!(Client::new("not a url").is_err());
        assert!(Client::new("ftp://x").is_err());
    }

    #[tokio::test]
    async fn unreachable_daemons_get_a_helpful_error() {
        // Port 9 (discard) on loopback: nothing listens there.
        let c = Client::new("http://127.0.0.1:9").unwrap_or_else(|e| panic!("{e}"));
        let e = c
            .health()
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("cannot reach prismd at http://127.0.0.1:9/"),
            "{e}"
        );
        assert!(e.contains("start it with `prismd`"), "{e}");
    }
}
