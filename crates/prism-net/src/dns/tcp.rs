//! DNS over TCP (RFC 1035 §4.2.2, RFC 7766): each message is preceded by its length in two
//! bytes. Resolvers fall back to TCP for answers that do not fit a UDP datagram. Same source
//! check, policy, rate and sets as UDP; a connection carries queries one after another and
//! is closed when idle, malformed or over the rate. The upstream is asked over TCP too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Ctx, UPSTREAM_TIMEOUT, admit, wire};

/// TCP connections of one sandbox at once; more are closed at once (and counted dropped).
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may wait for its next query.
const IDLE: Duration = Duration::from_secs(10);

pub(super) async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    let bounded = crate::accept::Bounded {
        what: "dns tcp",
        sandbox_id: &ctx.id,
        sandbox: ctx.sandbox,
        max: MAX_CONNECTIONS,
    };
    let on_full = || {
        ctx.stats.dropped.fetch_add(1, Ordering::Relaxed);
    };
    crate::accept::serve(bounded, listener, on_full, |sock| {
        let ctx = ctx.clone();
        async move { connection(&ctx, sock).await }
    })
    .await;
}

async fn connection(ctx: &Ctx, mut sock: TcpStream) {
    loop {
        let Ok(Some(query)) = tokio::time::timeout(IDLE, read_msg(&mut sock)).await else {
            return;
        };
        ctx.stats.queries.fetch_add(1, Ordering::Relaxed);
        let (Some(q), true) = (wire::parse_query(&query), ctx.take_token()) else {
            ctx.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let decision = ctx
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .decide(&q.name);
        let answer = match decision {
            None => {
                ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(message = "dns name refused", sandbox_id = %ctx.id, name = %q.name, transport = "tcp");
                wire::refused(&query, &q)
            }
            Some(ports) => {
                let Some(a) = ask_upstream(ctx, &query).await else {
                    return;
                };
                let Some(a) = admit(ctx, &q, &ports, a).await else {
                    return;
                };
                a
            }
        };
        if write_msg(&mut sock, &answer).await.is_none() {
            return;
        }
    }
}

/// One length-prefixed message (at least a header's 12 bytes).
pub async fn read_msg<S: AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.ok()?;
    let n = usize::from(u16::from_be_bytes(len));
    if n < 12 {
        return None;
    }
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

pub async fn write_msg<S: AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> Option<()> {
    let n = u16::try_from(msg.len()).ok()?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await.ok()
}

async fn ask_upstream(ctx: &Ctx, query: &[u8]) -> Option<Vec<u8>> {
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut up = TcpStream::connect(ctx.upstream).await.ok()?;
        write_msg(&mut up, query).await?;
        let a = read_msg(&mut up).await?;
        (a[..2] == query[..2]).then_some(a)
    })
    .await
    .ok()?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_are_length_prefixed() {
        let msg = [7u8; 20];
        let mut out = Vec::new();
        write_msg(&mut out, &msg)
            .await
            .unwrap_or_else(|| panic!("write"));
        assert_eq!(&out[..2], &[0, 20]);
        let mut r = &out[..];
        assert_eq!(read_msg(&mut r).await, Some(msg.to_vec()));
        // Too short for a header, or cut off: nothing.
        let mut r = &[0u8, 3, 1, 2, 3][..];
        assert_eq!(read_msg(&mut r).await, None);
        let mut r = &out[..10];
        assert_eq!(read_msg(&mut r).await, None);
    }
}
