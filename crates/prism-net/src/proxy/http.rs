//! The HTTP/1.x side of the proxy: every request's host is checked (not only the first one's,
//! so a kept-alive connection cannot switch to another virtual host), allowed requests go to
//! the original destination over one upstream connection.

use std::convert::Infallible;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::prefixed::Prefixed;
use super::{Ctx, SNIFF_MAX, SNIFF_TIMEOUT, connect, sniff};

type Body = BoxBody<Bytes, hyper::Error>;
type Upstream = Arc<tokio::sync::Mutex<Option<SendRequest<Incoming>>>>;

pub(super) async fn serve(ctx: Arc<Ctx>, client: Prefixed<TcpStream>, dst: SocketAddrV4) {
    let upstream: Upstream = Arc::default();
    let svc = hyper::service::service_fn(move |req| {
        let (ctx, upstream) = (ctx.clone(), upstream.clone());
        async move { Ok::<_, Infallible>(request(&ctx, &upstream, dst, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(SNIFF_TIMEOUT)
        .max_buf_size(SNIFF_MAX)
        .serve_connection(TokioIo::new(client), svc)
        .with_upgrades()
        .await;
}

/// The name a request is for: its one `Host` header, which must agree with the authority of
/// an absolute-form target when there is one.
pub(super) fn host_of<B>(req: &Request<B>) -> Option<String> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => sniff::normalize(h.to_str().ok()?)?,
        _ => return None,
    };
    match req.uri().authority() {
        Some(a) if sniff::normalize(a.as_str())? != host => None,
        _ => Some(host),
    }
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn request(
    ctx: &Ctx,
    upstream: &Upstream,
    dst: SocketAddrV4,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let name = host_of(&req);
    let Some(name) = name.filter(|n| ctx.allows(n, dst)) else {
        let shown = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(100)
            .collect::<String>();
        ctx.refused("http host", Some(&shown), dst);
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "prism: host {shown:?} is not allowed to {dst} by this sandbox's network policy\n"
            ),
        );
    };
    let mut guard = upstream.lock().await;
    if guard.as_ref().is_none_or(SendRequest::is_closed) {
        let Some(sock) = connect(dst).await else {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("prism: cannot connect to {dst}\n"),
            );
        };
        let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await
        else {
            return text(StatusCode::BAD_GATEWAY, format!("prism: {dst} failed\n"));
        };
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        *guard = Some(sender);
    }
    let Some(sender) = guard.as_mut() else {
        return text(StatusCode::BAD_GATEWAY, format!("prism: {dst} failed\n"));
    };
    if sender.ready().await.is_err() {
        *guard = None;
        return text(StatusCode::BAD_GATEWAY, format!("prism: {dst} closed\n"));
    }
    ctx.stats.passed.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(message = "proxied http request", sandbox_id = %ctx.id, %name, %dst);
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            *guard = None;
            return text(StatusCode::BAD_GATEWAY, format!("prism: {dst}: {e}\n"));
        }
    };
    drop(guard);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let server_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(s)) = (client_upgrade.await, server_upgrade.await) {
                let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
            }
        });
    }
    resp.map(BodyExt::boxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_host_is_the_one_host_header_agreeing_with_the_target() {
        assert_eq!(
            host_of(&req("/", &["Allowed.Test:80"])),
            Some("allowed.test".into())
        );
        assert_eq!(host_of(&req("/", &[])), None);
        assert_eq!(host_of(&req("/", &["a.test", "b.test"])), None);
        assert_eq!(
            host_of(&req("http://allowed.test/x", &["allowed.test"])),
            Some("allowed.test".into())
        );
        assert_eq!(
            host_of(&req("http://other.test/x", &["allowed.test"])),
            None
        );
        assert_eq!(host_of(&req("/", &["198.51.100.2"])), None);
    }
}
