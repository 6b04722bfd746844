//! The accept loop shared by the per-sandbox TCP services on a sandbox's host end (DNS over TCP,
//! the name proxy): only the sandbox's own address is served, at most `max` connections at once
//! (more are closed at once and reported through `on_full`), and the connections live in a
//! `JoinSet`, so aborting the loop's task ends them all.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Who is served and how many at once.
pub(crate) struct Bounded<'a> {
    /// The service's name in logs.
    pub what: &'static str,
    /// The sandbox's id in logs.
    pub sandbox_id: &'a str,
    /// The only peer address served.
    pub sandbox: Ipv4Addr,
    /// Connections at once.
    pub max: usize,
}

/// Accepts until aborted, running `handle` for each admitted connection.
pub(crate) async fn serve<F, Fut>(
    b: Bounded<'_>,
    listener: TcpListener,
    on_full: impl Fn(),
    handle: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(b.max));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(message = "accept failed", service = b.what, sandbox_id = %b.sandbox_id, %error);
                // Out of fds or similar: back off instead of spinning on the error.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if peer.ip() != IpAddr::V4(b.sandbox) {
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            on_full();
            continue;
        };
        let conn = handle(sock);
        conns.spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
}
