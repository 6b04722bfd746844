//! [`AgentPool`]: keep-alive HTTP/1.1 connections to agents' unix sockets, reused across calls.
//!
//! Each socket is one pool key: its path, hex-encoded, is the host of the request URI, so one
//! pool serves every sandbox of a daemon and a sandbox never gets another's connection. A
//! connection goes back to the pool once its response body has been read to the end (a
//! streamed process holds its connection until the process ends; concurrent calls open more
//! connections). Idle connections are closed after [`IDLE_TIMEOUT`]; one whose agent went away
//! (destroyed or restarted sandbox) is seen closed and dropped, and the call connects again.

use std::ffi::OsString;
use std::future::Future;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixStream;

use crate::client::{AgentClient, ClientBody};
use crate::error::ProtoError;

/// How long an unused connection stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per agent (more can be open while calls run).
pub const MAX_IDLE_PER_AGENT: usize = 8;

pub(crate) type Http = legacy::Client<UnixConnector, ClientBody>;

/// Connection pool shared by the [`AgentClient`]s it makes. Cheap to clone (clones share it).
#[derive(Debug, Clone)]
pub struct AgentPool {
    http: Http,
}

impl Default for AgentPool {
    fn default() -> Self {
        let http = legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_AGENT)
            .pool_timer(TokioTimer::new())
            .build(UnixConnector);
        Self { http }
    }
}

impl AgentPool {
    /// A client of the agent at `socket_path` whose calls use this pool's connections.
    pub fn client(&self, socket_path: impl Into<PathBuf>) -> AgentClient {
        let socket = socket_path.into();
        let authority = socket_authority(&socket);
        AgentClient::with_http(socket, authority, self.http.clone())
    }
}

/// The pool key of a socket: its path in lowercase hex (a valid URI host of any length).
fn socket_authority(path: &Path) -> http::uri::Authority {
    let mut hex = String::with_capacity(path.as_os_str().len() * 2 + 1);
    for b in path.as_os_str().as_bytes() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    if hex.is_empty() {
        // An empty path never connects; keep the URI valid so the error is the connect's.
        hex.push('0');
    }
    http::uri::Authority::try_from(hex)
        .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn socket_path(host: &str) -> Option<PathBuf> {
    let digits = host.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = digits
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect::<Option<Vec<u8>>>()?;
    Some(PathBuf::from(OsString::from_vec(bytes)))
}

/// Connects to the unix socket named by the URI's host (see [`socket_authority`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnixConnector;

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send>>;

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let path = uri.host().and_then(socket_path);
        Box::pin(async move {
            let path = path.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an agent socket URI")
            })?;
            Ok(TokioIo::new(UnixStream::connect(path).await?))
        })
    }
}

/// A complete request body.
pub(crate) fn full(bytes: Bytes) -> ClientBody {
    UnsyncBoxBody::new(Full::new(bytes).map_err(|never| match never {}))
}

/// A failed pooled call: a connect failure stays [`ProtoError::Connect`] (with the socket's
/// `io::ErrorKind`), so callers that wait for an agent to come up see the same error as before.
pub(crate) fn client_error(e: legacy::Error) -> ProtoError {
    if !e.is_connect() {
        return ProtoError::Client(e);
    }
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return ProtoError::Connect(std::io::Error::new(io.kind(), io.to_string()));
        }
        cur = s.source();
    }
    ProtoError::Connect(std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_round_trip_through_the_authority() {
        for p in ["/run/prism/sbx-1/agent.sock", "/tmp/a b/é.sock", "rel"] {
            let a = socket_authority(Path::new(p));
            assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(socket_path(a.host()), Some(PathBuf::from(p)));
        }
        let long = format!("/{}", "x".repeat(200));
        let a = socket_authority(Path::new(&long));
        assert_eq!(socket_path(a.host()), Some(PathBuf::from(&long)));
        assert_eq!(socket_path("abc"), None);
        assert_eq!(socket_path("zz"), None);
    }
}
