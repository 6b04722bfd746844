//! The client's connection pool against a small HTTP/1.1 server on a unix socket that counts
//! the connections it accepts: calls reuse one connection, a call running while another holds
//! a connection opens a second, and a server that went away and came back is reconnected to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prism_proto::envelope;
use prism_proto::process::{ProcessEvent, StartEvent, StartResponse};
use prism_proto::{AgentPool, ProtoError};
use tokio::net::UnixListener;
use tokio::sync::Notify;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A server answering `GET /health` with 200 and `Process/Start` with a `start` event, then
/// the end of stream once `release` is notified.
struct Server {
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    fn start(path: &Path, release: Arc<Notify>) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let release = release.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let release = release.clone();
                    async move { Ok::<_, Infallible>(answer(req, release)) }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { accepted, task }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which closes every open connection.
        self.task.abort();
    }
}

fn answer(req: Request<Incoming>, release: Arc<Notify>) -> Response<Body> {
    if req.uri().path() == "/health" {
        let body = StreamBody::new(futures_util::stream::empty());
        return Response::new(UnsyncBoxBody::new(body));
    }
    let start = envelope::encode_message(&StartResponse {
        event: ProcessEvent::Start(StartEvent { pid: 7 }),
    })
    .unwrap();
    let frames = futures_util::stream::once(async move { start })
        .chain(futures_util::stream::once(async move {
            release.notified().await;
            envelope::encode_end(None)
        }))
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(UnsyncBoxBody::new(StreamBody::new(frames)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(envelope::CONTENT_TYPE_STREAM),
    );
    resp
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn calls_share_one_keep_alive_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let server = Server::start(&sock, Arc::new(Notify::new()));
    let pool = AgentPool::default();
    for _ in 0..20 {
        pool.client(&sock).health().await.unwrap();
    }
    assert_eq!(
        server.accepted(),
        1,
        "20 sequential calls used one connection"
    );
}

#[tokio::test]
async fn a_streaming_call_holds_its_connection_until_the_stream_ends() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let release = Arc::new(Notify::new());
    let server = Server::start(&sock, release.clone());
    let client = AgentPool::default().client(&sock);
    let mut events = client.start(&Default::default()).await.unwrap();
    assert!(matches!(
        events.next().await,
        Some(Ok(ProcessEvent::Start(StartEvent { pid: 7 })))
    ));
    // The stream is still open: a second call cannot wait for it and gets its own connection.
    client.health().await.unwrap();
    assert_eq!(server.accepted(), 2);
    release.notify_one();
    assert!(events.next().await.is_none(), "the stream ends cleanly");
    // Both connections are idle now; calls go on without connecting again.
    for _ in 0..5 {
        client.health().await.unwrap();
    }
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn a_restarted_agent_is_reconnected_and_a_missing_one_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let client = AgentPool::default().client(&sock);
    let first = Server::start(&sock, Arc::new(Notify::new()));
    client.health().await.unwrap();
    assert_eq!(first.accepted(), 1);
    drop(first);
    let _ = std::fs::remove_file(&sock);
    // The idle connection dies with the server; once the pool has seen it closed, a call
    // connects afresh and finds nobody (never a hang, never a success).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.health().await {
            Err(ProtoError::Connect(_)) => break,
            Err(_) => assert!(Instant::now() < deadline, "no connect error"),
            Ok(()) => panic!("a call succeeded with no server"),
        }
    }
    let second = Server::start(&sock, Arc::new(Notify::new()));
    let mut ok = false;
    for _ in 0..3 {
        ok |= client.health().await.is_ok();
    }
    assert!(ok, "calls to the new server succeed");
    wait_for("the new server's connection", || second.accepted() >= 1).await;
    for _ in 0..5 {
        client.health().await.unwrap();
    }
    assert_eq!(second.accepted(), 1, "one connection to the new server");
}
