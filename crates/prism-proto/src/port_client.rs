//! [`AgentClient::open_port`]: a raw TCP tunnel to a port on the sandbox's loopback (see
//! [`crate::ports`]).

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::client::AgentClient;
use crate::error::{ProtoError, parse_error_body};
use crate::ports::{UPGRADE_PROTOCOL, port_path};

/// A byte stream to a TCP port inside the sandbox (`AsyncRead + AsyncWrite`).
pub type PortStream = TokioIo<Upgraded>;

impl AgentClient {
    /// Opens a TCP connection to `127.0.0.1:port` inside the sandbox, through the agent's
    /// control channel. A port nothing listens on is an `unavailable` [`ProtoError::Rpc`].
    pub async fn open_port(&self, port: u16) -> Result<PortStream, ProtoError> {
        let io = UnixStream::connect(self.socket_path())
            .await
            .map_err(ProtoError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            // Errors surface through the response or the upgraded stream.
            let _ = conn.with_upgrades().await;
        });
        let req = self
            .request(Method::GET, &port_path(port))
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, UPGRADE_PROTOCOL)
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = resp.into_body().collect().await?.to_bytes();
            return Err(parse_error_body(status.as_u16(), &bytes).into());
        }
        Ok(TokioIo::new(hyper::upgrade::on(resp).await?))
    }
}
