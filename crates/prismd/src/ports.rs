//! The port proxy: `ANY /v1/sandboxes/{id}/ports/{port}/{*path}` forwards HTTP (any method,
//! streamed bodies both ways) and WebSocket (any HTTP/1.1 upgrade) to `127.0.0.1:{port}` inside
//! the sandbox, through a tunnel the sandbox's agent opens over its control channel (so it works
//! in every network mode). [`proxy`] is the reusable core: other surfaces (the E2B one) call it
//! with a sandbox, a port and a request.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use prism_core::lifecycle::SandboxManager;
use prism_types::codes;

use crate::AppState;
use crate::error::AppError;

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

#[utoipa::path(get, path = "/v1/sandboxes/{id}/ports/{port}/{path}", tag = "ports",
    params(("id" = String, Path, description = "Sandbox id or name"),
           ("port" = u16, Path, description = "TCP port inside the sandbox (1..=65535)"),
           ("path" = String, Path, description = "Path forwarded to the server")),
    responses((status = 200, description = "The sandbox server's answer, unchanged (any method, any status; WebSocket upgrades are forwarded)"),
              (status = 400, description = "Port out of range", body = prism_types::ApiError),
              (status = 404, description = "No such sandbox", body = prism_types::ApiError),
              (status = 409, description = "The sandbox is not running", body = prism_types::ApiError),
              (status = 502, description = "Nothing listens on the port, or the server broke the exchange", body = prism_types::ApiError)))]
pub async fn port_proxy(State(st): State<AppState>, req: Request) -> Response {
    let Some((id, port, rest)) = split_path(req.uri()) else {
        return AppError::bad_request("expected /v1/sandboxes/{id}/ports/{port}/...")
            .into_response();
    };
    let port = match parse_port(&port) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let target = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    match proxy(&st.manager, &id, port, &target, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Parses a port path segment (1..=65535), else a 400 that says what to do.
pub fn parse_port(s: &str) -> Result<u16, AppError> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(AppError::bad_request(format!(
            "invalid port {s:?}: use a number from 1 to 65535"
        ))),
    }
}

/// `(id, port, "/rest")` of `/v1/sandboxes/{id}/ports/{port}[/rest]`, from the raw path (so the
/// forwarded path keeps its percent-encoding).
fn split_path(uri: &Uri) -> Option<(String, String, String)> {
    let tail = uri.path().strip_prefix("/v1/sandboxes/")?;
    let (id, tail) = tail.split_once('/')?;
    let tail = tail.strip_prefix("ports/")?;
    let (port, rest) = match tail.split_once('/') {
        Some((p, r)) => (p, format!("/{r}")),
        None => (tail, "/".to_string()),
    };
    let id = percent_decode(id)?;
    Some((id, port.to_string(), rest))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Forwards `req` to `127.0.0.1:port` in the sandbox as `target` (path and query) and returns
/// the server's answer; an upgrade (WebSocket) answered with 101 is spliced both ways.
pub async fn proxy(
    manager: &SandboxManager,
    id: &str,
    port: u16,
    target: &str,
    mut req: Request,
) -> Result<Response, AppError> {
    let tunnel = manager.open_port(id, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel))
        .await
        .map_err(|e| upstream(port, &e))?;
    tokio::spawn(async move {
        // The exchange's failures surface through the response or its body.
        let _ = conn.with_upgrades().await;
    });
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = target
        .parse()
        .map_err(|_| AppError::bad_request(format!("invalid forwarded path {target:?}")))?;
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.insert(header::HOST, host_value(port));
    let upstream_req = axum::http::Request::from_parts(parts, body);
    let mut resp = sender
        .send_request(upstream_req)
        .await
        .map_err(|e| upstream(port, &e))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(AppError::new(
                StatusCode::BAD_GATEWAY,
                codes::UPSTREAM_ERROR,
                format!("the server on port {port} switched protocols without being asked"),
            ));
        };
        let server_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) else {
                tracing::debug!(port, "port proxy upgrade failed");
                return;
            };
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                tracing::debug!(port, error = %e, "port proxy upgraded stream ended");
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::new(body)))
}

fn host_value(port: u16) -> HeaderValue {
    HeaderValue::from_str(&format!("localhost:{port}"))
        .unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (and those named by `Connection`); an upgrade keeps
/// `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "upgrade")
        .collect();
    for h in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        headers.remove(h);
    }
    headers.remove(header::CONNECTION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn upstream(port: u16, e: &hyper::Error) -> AppError {
    AppError::new(
        StatusCode::BAD_GATEWAY,
        codes::UPSTREAM_ERROR,
        format!("the server on port {port} in the sandbox broke the HTTP exchange: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_and_keep_encoding() {
        let u: Uri = "/v1/sandboxes/my%2Dbox/ports/8000/a%20b/c?x=1"
            .parse()
            .unwrap();
        assert_eq!(
            split_path(&u),
            Some(("my-box".into(), "8000".into(), "/a%20b/c".into()))
        );
        let u: Uri = "/v1/sandboxes/abc/ports/80".parse().unwrap();
        assert_eq!(
            split_path(&u),
            Some(("abc".into(), "80".into(), "/".into()))
        );
    }

    #[test]
    fn ports_out_of_range_are_refused() {
        for bad in ["0", "65536", "-1", "abc", "+80"] {
            assert_eq!(
                parse_port(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(parse_port("65535").unwrap(), 65535);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_but_upgrades_survive() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Secret"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        assert!(is_upgrade(&h));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(h.get("x-secret").is_none() && h.get(header::TE).is_none());
        strip_hop_by_hop(&mut plain, false);
        assert!(plain.get(header::CONNECTION).is_none() && plain.get(header::UPGRADE).is_none());
    }
}
