//! Port tunnels: `GET /ports/{port}` with `Upgrade: prism-tcp` opens a TCP connection to
//! `127.0.0.1:{port}` (then `[::1]:{port}`) inside the sandbox and, once it is up, answers
//! `101 Switching Protocols` and splices the upgraded control-channel connection with it. This
//! is how the host reaches servers in the sandbox without any network path into it (every
//! network mode, including `none`).

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prism_proto::ports::{UPGRADE_PROTOCOL, parse_port_path};
use prism_proto::{Code, ConnectError};
use tokio::net::TcpStream;

use crate::server::RespBody;

/// Handles a tunnel request; the splice runs on its own task after the 101 answer.
pub async fn open(mut req: Request<Incoming>) -> Result<Response<RespBody>, ConnectError> {
    let port = parse_port_path(req.uri().path())
        .map_err(|e| ConnectError::new(Code::InvalidArgument, e.to_string()))?;
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
    if !wants_upgrade {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            format!("a port tunnel needs `Upgrade: {UPGRADE_PROTOCOL}`"),
        ));
    }
    let mut tcp = connect(port).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut host = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut host, &mut tcp).await {
                    tracing::debug!(port, error = %e, "port tunnel ended with an error");
                }
            }
            Err(e) => tracing::debug!(port, error = %e, "port tunnel upgrade failed"),
        }
    });
    let mut resp = Response::new(Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    Ok(resp)
}

/// Connects to the port on the sandbox's loopback, IPv4 first.
async fn connect(port: u16) -> Result<TcpStream, ConnectError> {
    let v4 = TcpStream::connect(("127.0.0.1", port)).await;
    let err = match v4 {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    if let Ok(s) = TcpStream::connect(("::1", port)).await {
        return Ok(s);
    }
    Err(ConnectError::new(
        Code::Unavailable,
        format!("nothing accepts connections on port {port} inside the sandbox ({err})"),
    ))
}
