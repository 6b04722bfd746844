//! Uploads are answered only after their whole body was read: an HTTP/1 server that answers
//! early closes the connection, and a client still sending gets `EPIPE` instead of the answer
//! (prismd's envd pass-through turned that into a 502 for the E2B SDK's multipart upload).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Agent;
use http::{Request, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Reads one HTTP/1 response with a `content-length` from `conn`: (status line, body).
async fn read_response(conn: &mut UnixStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                let status = head.lines().next().unwrap_or_default().to_string();
                return (status, body);
            }
        }
        let n = conn.read(&mut chunk).await.expect("read the answer");
        assert!(
            n > 0,
            "the agent closed the connection: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The E2B SDKs' multipart shape: the closing boundary is followed by `\r\n`, which multipart
/// parsers do not need. When it arrives late the agent must still read it, answer, and keep
/// the connection open for the next request.
#[tokio::test]
async fn a_multipart_upload_is_answered_after_its_epilogue_and_keeps_the_connection() {
    let agent = Agent::start();
    let dest = agent.path_str("mp/a.txt");
    let body = "--XB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
                Content-Type: application/octet-stream\r\n\r\nhello multipart\r\n--XB--\r\n";
    let head = format!(
        "POST /files?path={dest} HTTP/1.1\r\nhost: localhost\r\n\
         content-type: multipart/form-data; boundary=XB\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut conn = UnixStream::connect(agent.path("agent.sock"))
        .await
        .expect("connect");
    let (before, epilogue) = body.split_at(body.len() - 2);
    conn.write_all(format!("{head}{before}").as_bytes())
        .await
        .expect("send all but the epilogue");
    // An answer now would come before the body was read (the bug). The agent cannot answer
    // correctly before the last two bytes, so waiting cannot make a correct agent fail.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the agent answered (or closed) before the upload's body was complete: {early:?}"
    );
    conn.write_all(epilogue.as_bytes())
        .await
        .expect("send the epilogue");
    let (status, answer) = read_response(&mut conn).await;
    assert!(status.contains(" 200 "), "{status}: {answer}");
    assert!(answer.contains("a.txt"), "{answer}");
    assert_eq!(
        std::fs::read_to_string(agent.path("mp/a.txt")).expect("uploaded"),
        "hello multipart"
    );

    // The same connection serves the next request.
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("send the second request");
    let mut rest = [0u8; 64];
    let n = conn.read(&mut rest).await.expect("read the second answer");
    let second = String::from_utf8_lossy(&rest[..n]);
    assert!(second.starts_with("HTTP/1.1 2"), "{second}");
}

/// A refusal (here: the parent is a file) reaches a client that is still sending a body far
/// larger than the socket's buffers, as the refusal, not as a broken connection.
#[tokio::test]
async fn a_refused_upload_still_reads_the_body_and_sends_the_refusal() {
    let agent = Agent::start();
    std::fs::write(agent.path("plain"), b"a file").expect("file");
    let chunks =
        (0..64).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![7u8; 64 << 10]))));
    for (uri, ct) in [
        (
            format!("/files?path={}", agent.path_str("plain/x.bin")),
            "application/octet-stream",
        ),
        (
            format!("/tar?path={}", agent.path_str("plain/dir")),
            "application/x-tar",
        ),
    ] {
        let req = Request::post(&uri)
            .header(header::CONTENT_TYPE, ct)
            .body(StreamBody::new(futures_util::stream::iter(chunks.clone())))
            .expect("request");
        let resp = agent.client.raw(req).await.unwrap_or_else(|e| {
            panic!("{uri}: the refusal was lost, the connection broke instead: {e}")
        });
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert_ne!(status, StatusCode::OK, "{uri}: {body}");
        assert!(status.is_client_error(), "{uri}: {status} {body}");
        assert!(
            body.contains("plain"),
            "{uri}: the refusal names the path: {body}"
        );
    }
}
