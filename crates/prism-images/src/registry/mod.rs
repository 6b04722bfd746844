//! OCI distribution v2 client: manifests and blobs over HTTPS (plain HTTP only for loopback
//! registries), anonymous, basic or bearer-token auth, digests verified while streaming.

mod auth;
mod blob;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};
use tokio::sync::Mutex;

pub use auth::{Challenge, Credentials, parse_challenge};
pub use blob::{BlobProgress, Progress};

use crate::digest::Digest;
use crate::manifest;
use crate::reference::Reference;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("registry {registry} is unreachable")]
    Unreachable {
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry {0} refused the credentials")]
    Auth(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("registry answered {status} for {what}")]
    Status { status: StatusCode, what: String },
    #[error("token realm {0:?} must be https (plain http only on loopback)")]
    InsecureRealm(String),
    #[error("malformed token response")]
    Token(#[source] reqwest::Error),
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("manifest {expected} has digest {actual}")]
    ManifestDigest { expected: Digest, actual: Digest },
    #[error("download of {what} failed")]
    Body {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot store the download")]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// Worth another try (network trouble, not a refusal or bad content).
    fn transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Body { .. } => true,
            Self::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

#[derive(Clone)]
enum Auth {
    Basic,
    Bearer(String),
}

/// A registry client; cheap to share (`&self` everywhere).
pub struct RegistryClient {
    http: reqwest::Client,
    creds: Credentials,
    /// `registry/repository` → how requests authenticate after a challenge.
    auth: Mutex<HashMap<String, Auth>>,
}

/// Blob download attempts before giving up on network errors.
const ATTEMPTS: usize = 3;

impl RegistryClient {
    pub fn new(creds: Credentials) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("prism/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(RegistryError::Client)?;
        Ok(Self {
            http,
            creds,
            auth: Mutex::new(HashMap::new()),
        })
    }

    fn url(r: &Reference, kind: &str, reference: &str) -> String {
        let scheme = if r.is_loopback() { "http" } else { "https" };
        format!(
            "{scheme}://{}/v2/{}/{kind}/{reference}",
            r.registry, r.repository
        )
    }

    fn apply(&self, req: reqwest::RequestBuilder, auth: Option<&Auth>) -> reqwest::RequestBuilder {
        match (auth, &self.creds) {
            (Some(Auth::Bearer(t)), _) => req.bearer_auth(t),
            (Some(Auth::Basic), Credentials::Basic { username, password }) => {
                req.basic_auth(username, Some(password))
            }
            _ => req,
        }
    }

    /// GET `url`, answering one auth challenge; returns a successful response.
    async fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: &str,
        what: &str,
    ) -> Result<Response, RegistryError> {
        self.get_from(r, url, accept, what, 0).await
    }

    /// [`Self::get`] asking for the bytes from offset `from` on (a `Range` request) when it is
    /// not 0; the server may still answer the whole body (200).
    async fn get_from(
        &self,
        r: &Reference,
        url: &str,
        accept: &str,
        what: &str,
        from: u64,
    ) -> Result<Response, RegistryError> {
        let key = format!("{}/{}", r.registry, r.repository);
        let mut auth = self.auth.lock().await.get(&key).cloned();
        for attempt in 0..2 {
            let mut req = self.http.get(url).header(ACCEPT, accept);
            if from > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            let req = self.apply(req, auth.as_ref());
            let resp = req
                .send()
                .await
                .map_err(|source| RegistryError::Unreachable {
                    registry: r.registry.clone(),
                    source,
                })?;
            let status = resp.status();
            if status != StatusCode::UNAUTHORIZED {
                return match status {
                    s if s.is_success() => Ok(resp),
                    StatusCode::NOT_FOUND => Err(RegistryError::NotFound(what.to_string())),
                    StatusCode::FORBIDDEN => Err(RegistryError::Auth(r.registry.clone())),
                    status => Err(RegistryError::Status {
                        status,
                        what: what.to_string(),
                    }),
                };
            }
            if attempt == 1 {
                break;
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            let next = match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => Auth::Bearer(self.token(r, &realm, service, scope).await?),
                Some(Challenge::Basic) if self.creds != Credentials::Anonymous => Auth::Basic,
                _ => return Err(RegistryError::Auth(r.registry.clone())),
            };
            self.auth.lock().await.insert(key.clone(), next.clone());
            auth = Some(next);
        }
        Err(RegistryError::Auth(r.registry.clone()))
    }

    async fn token(
        &self,
        r: &Reference,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Result<String, RegistryError> {
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", r.repository));
        let mut params = vec![("scope", scope)];
        params.extend(service.map(|s| ("service", s)));
        let url = Url::parse_with_params(realm, &params)
            .map_err(|_| RegistryError::InsecureRealm(realm.to_string()))?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(RegistryError::InsecureRealm(realm.to_string()));
        }
        let req = self.apply(self.http.get(url), Some(&Auth::Basic));
        let resp = req
            .send()
            .await
            .map_err(|source| RegistryError::Unreachable {
                registry: realm.to_string(),
                source,
            })?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::Auth(r.registry.clone()));
            }
            status => {
                return Err(RegistryError::Status {
                    status,
                    what: "token".into(),
                });
            }
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = resp.json().await.map_err(RegistryError::Token)?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| RegistryError::Auth(r.registry.clone()))
    }

    /// Fetch a manifest or index by tag or digest. Returns its bytes, content type and digest
    /// (verified when `reference` is a digest).
    pub async fn fetch_manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>, Digest), RegistryError> {
        let what = format!("manifest {}/{}:{reference}", r.registry, r.repository);
        let resp = self
            .get(
                r,
                &Self::url(r, "manifests", reference),
                manifest::ACCEPT,
                &what,
            )
            .await?;
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_limited(resp, manifest::MAX_DOCUMENT, &what).await?;
        let actual = Digest::of(&body);
        if let Ok(expected) = Digest::parse(reference)
            && expected != actual
        {
            return Err(RegistryError::ManifestDigest { expected, actual });
        }
        Ok((body, ct, actual))
    }
}

async fn read_limited(
    mut resp: Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        what: what.to_string(),
        limit,
    };
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| RegistryError::Body {
        what: what.to_string(),
        source,
    })? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
